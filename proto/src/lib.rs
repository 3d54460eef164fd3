//! What the skiff hub and agent must agree on.
//!
//! - [`bundle`]: the deterministic bundle tarball (writer, reader, limits).
//! - [`statement`]: the signed statement that names a bundle.
//! - [`dsse`]: the DSSE envelope that carries a signed statement.
//! - [`keys`]: Ed25519 keys in PKCS#8 / SPKI PEM and their key ids.
//! - [`verify`]: the trust set and the numbered verification steps of `FORMAT.md`.
//! - [`manifest`]: Kubernetes manifests read the way Kubernetes reads them.
//!
//! No I/O here beyond readers and writers handed in by the caller, and no async runtime.

pub mod api;
pub mod bundle;
pub mod config;
pub mod digest;
pub mod dsse;
pub mod keys;
pub mod manifest;
pub mod statement;
pub mod verify;

pub use digest::Sha256Digest;
