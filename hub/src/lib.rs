//! The skiff hub: turns Git commits into signed, reproducible bundles.
//!
//! - [`cli`]: the command line.
//! - [`sign`]: signing keys.
//! - [`git`]: trees at exact commits, read with the `git` CLI.
//! - [`render`]: which files of a tree become a bundle, validated as Kubernetes would read them.
//! - [`build`]: render → bundle → statement → signed envelope → files.
//! - [`assign`]: each cluster's assignment (channels, pins, values) as plain data.

pub mod api;
pub mod assign;
pub mod build;
pub mod cli;
pub mod client;
pub mod config;
pub mod fleet;
pub mod git;
pub mod ignore;
pub mod preview;
pub mod process;
pub mod render;
pub mod rollout;
pub mod serve;
pub mod sign;
pub mod sources;
pub mod store;
pub mod telemetry;
pub mod trust;
pub mod ui;
pub mod yaml;
