//! The skiff hub: turns Git commits into signed, reproducible bundles.
//!
//! - [`cli`]: the command line.
//! - [`sign`]: signing keys.
//! - [`git`]: trees at exact commits, read with the `git` CLI.
//! - [`render`]: which files of a tree become a bundle, validated as Kubernetes would read them.
//! - [`build`]: render → bundle → statement → signed envelope → files.

pub mod build;
pub mod cli;
pub mod git;
pub mod render;
pub mod sign;
