//! The example system's shared contract: the domain events its services (users,
//! products, orders) exchange, their topics and their streams, so each subscriber decodes
//! exactly what the writer appended. The plumbing the services use (one database seam,
//! JSON validation, idempotency keys, inbox consumers) is Keel's public API, through
//! the `keel` facade, as any user's service would use it.
//!
//! # Layout
//!
//! - [`events`]: the events, [`events::topics`] and [`events::stream_id`].

pub mod events;
