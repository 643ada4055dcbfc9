#![doc = include_str!("../README.md")]
//!
//! ## This crate
//!
//! The `keel` package is the facade over Keel's crates (re-exported below), the home
//! of the `keel` command line, and the owner of the end-to-end tests in `tests/`.

pub use keel_bus as bus;
pub use keel_core as core;
pub use keel_memory as memory;
