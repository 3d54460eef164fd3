//! The skiff agent: pulls signed bundles, verifies them, applies them, and keeps the last
//! good state when the hub is gone.
//!
//! - [`config`]: the configuration file, environment and flags.
//! - [`source`]: the hub client, mirrors and the import folder.
//! - [`store`]: the local store (accepted bundles, inventories, the report outbox).
//! - [`apply`]: ordering, pruning, and the `kube` and `dir` appliers.
//! - [`agent`]: the flow, fetch → verify → store → apply → report.
//! - [`status`]: `skiff-agent status` and report export, offline.
//! - [`telemetry`]: logs and the metrics listener.
//! - [`cli`]: the command line.
//! - [`verify`]: loading trusted keys and checking a bundle against them.

pub mod agent;
pub mod apply;
pub mod cli;
pub mod config;
pub mod drift;
pub mod hold;
pub mod source;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod verify;
