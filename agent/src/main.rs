//! The `skiff-agent` binary: parses the command line and hands it to the library.

use std::process::ExitCode;

use clap::Parser as _;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // One TLS stack: rustls with ring, installed before anything builds a TLS config.
    let _ = rustls::crypto::ring::default_provider().install_default();
    skiff_proto::exit_quietly_when_stdout_closes();

    let cli = skiff_agent::cli::Cli::parse();
    match skiff_agent::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", skiff_proto::error_chain(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}
