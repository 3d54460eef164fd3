//! The skiff agent: pulls signed bundles, verifies them, applies them, and keeps the last
//! good state when the hub is gone.
//!
//! - [`cli`]: the command line.
//! - [`verify`]: loading trusted keys and checking a bundle against them.

pub mod cli;
pub mod verify;
