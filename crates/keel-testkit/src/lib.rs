//! Keel's conformance suites: one set of cases per seam, run against every backend.
//!
//! Layout:
//! - [`bus`]: the bus suite. A backend crate implements [`bus::BusFactory`] and calls
//!   [`bus_conformance!`] in a test file; every case then runs as its own test.
//! - [`store`]: the store suite. A store crate implements [`store::StoreFactory`] and
//!   calls [`store_conformance!`]; the cases include the ordering traps of DESIGN 2.2.
//! - [`projections`]: the projection and inbox suite for SQL stores
//!   ([`projection_conformance!`]).
//! - [`postgres`]: a fresh PostgreSQL database per test.
//! - [`process`]: running a Keel binary as its own process (ready, SIGTERM).
//! - [`queueing`]: requests' transactions queue behind the work in flight.
//! - [`relay`]: timing the relay's delivery of a backlog, for the bus benches.
//! - [`upcasting`]: the event type (version 2, with a step from 1) and the old and
//!   future envelopes the upcasting cases of every suite use.
//! - [`util`]: helpers the cases share (unique names, polling waits, sample events).
//!
//! Cases assert on what arrives, never on how fast: waits poll with generous deadlines
//! that only a lost message runs into.

pub mod bus;
pub mod postgres;
pub mod process;
pub mod projections;
pub mod queueing;
pub mod relay;
pub mod store;
pub mod upcasting;
pub mod util;
