#![doc = include_str!("../README.md")]
//!
//! ## This crate
//!
//! The `keel` package is the facade over Keel's crates (re-exported below), the home
//! of the `keel` command line, and the owner of the end-to-end tests in `tests/`.
//!
//! Layout: [`config`] reads `KEEL_*` settings; [`backends`] opens the configured store
//! and bus; [`cli`] parses the command line and [`commands`] carries it out;
//! [`projections`] names the projections `keel projections rebuild` knows; [`up`] runs
//! the whole example system in one process (`keel up`).

pub mod backends;
pub mod cli;
pub mod commands;
pub use keel_runtime::config;
pub mod projections;
pub mod up;

pub use keel_bus as bus;
pub use keel_core as core;
pub use keel_memory as memory;
pub use keel_store as store;
