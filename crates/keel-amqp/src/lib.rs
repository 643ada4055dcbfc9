//! Keel's RabbitMQ bus backend (work in progress).
