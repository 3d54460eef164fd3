//! The `skiff-agent` binary: parses the command line and hands it to the library.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    // One TLS stack: rustls with ring, installed before anything builds a TLS config.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // `skiff-… status | head`: stdout closed early is the reader's choice, not a crash.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default_hook(info);
    }));

    let cli = skiff_agent::cli::Cli::parse();
    match skiff_agent::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", skiff_proto::error_chain(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}
