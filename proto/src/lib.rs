//! What the skiff hub and agent must agree on.
//!
//! - [`bundle`]: the deterministic bundle tarball (writer, reader, limits).
//! - [`statement`]: the signed statement that names a bundle.
//! - [`dsse`]: the DSSE envelope that carries a signed statement.
//! - [`keys`]: Ed25519 keys in PKCS#8 / SPKI PEM and their key ids.
//! - [`verify`]: the trust set and the numbered verification steps of `FORMAT.md`.
//! - [`manifest`]: Kubernetes manifests read the way Kubernetes reads them.
//! - [`assignment`]: the signed per-cluster assignment (channels, pins, values).
//! - [`values`]: substitution of a cluster's values into manifests.
//! - [`objects`]: a bundle's objects as applied (substituted, namespaced, labelled).
//!
//! No I/O here beyond readers and writers handed in by the caller, and no async runtime;
//! the two small helpers both binaries' `main` uses ([`error_chain`],
//! [`exit_quietly_when_stdout_closes`]) are the exception.

pub mod api;
pub mod assignment;
pub mod bundle;
pub mod config;
pub mod digest;
pub mod dsse;
pub mod keys;
pub mod manifest;
pub mod objects;
pub mod root;
pub mod statement;
pub mod values;
pub mod verify;
pub mod window;

pub use digest::Sha256Digest;

/// For the command-line tools: a write to a closed standard output (`skiff-hub status |
/// head`) ends the process quietly with success: the reader chose to stop, nothing failed.
/// Other panics go to the default hook.
pub fn exit_quietly_when_stdout_closes() {
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
}

/// An error and its causes in one line, each said once: a cause whose text the message so
/// far already holds is left out (many errors repeat their source in their own message).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = c.source();
    }
    message
}

#[cfg(test)]
mod chain_tests {
    #[derive(Debug, thiserror::Error)]
    #[error("listening on 127.0.0.1:80: {source}")]
    struct Bind {
        source: std::io::Error,
    }

    #[test]
    fn causes_are_said_once() {
        let e = Bind {
            source: std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "Address already in use (os error 98)",
            ),
        };
        assert_eq!(
            super::error_chain(&e),
            "listening on 127.0.0.1:80: Address already in use (os error 98)"
        );
        let wrapped = anyhow::Error::new(e).context("starting the hub");
        assert_eq!(
            super::error_chain(wrapped.as_ref()),
            "starting the hub: listening on 127.0.0.1:80: Address already in use (os error 98)"
        );
    }
}
