//! Keel's Kafka bus backend (work in progress).
