//! The `keel` command line (`keel-cli`, binary `keel`), and the owner of the
//! end-to-end tests in `tests/`. Libraries depend on the `keel` facade
//! (`crates/keel`) instead.
//!
//! Layout: [`config`] reads `KEEL_*` settings; [`backends`] opens the configured store
//! and bus; [`cli`] parses the command line and [`commands`] carries it out
//! ([`groups`]: `keel groups`, consumer groups seen from outside; [`timers`]:
//! `keel timers`, the store's durable timers);
//! [`console`] wires the web console (`keel-console`) for `keel up` and `keel console`;
//! [`projections`] names the projections `keel projections rebuild` knows; [`up`] runs
//! the whole example system in one process (`keel up`).

pub mod backends;
pub mod cli;
pub mod commands;
pub mod console;
pub mod groups;
pub use keel_runtime::config;
pub mod projections;
pub mod timers;
pub mod up;
