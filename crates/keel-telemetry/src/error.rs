//! The crate's error type.

/// `Result` with [`TelemetryError`] as the default error.
pub type Result<T, E = TelemetryError> = std::result::Result<T, E>;

/// Why telemetry could not be set up or shut down.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// A global `tracing` subscriber is already installed (by an earlier [`crate::init`]
    /// or by someone else); the existing one stays in place.
    #[error("a global tracing subscriber is already installed")]
    AlreadyInitialised,
    /// The default filter is not a valid `EnvFilter` directive list.
    #[error("invalid log filter `{filter}`: {source}")]
    Filter {
        /// The default filter as given.
        filter: String,
        #[source]
        /// Why it did not parse.
        source: tracing_subscriber::filter::ParseError,
    },
    /// An OTLP endpoint is configured (`OTEL_EXPORTER_OTLP_ENDPOINT`) but this build has
    /// no OpenTelemetry: turn on the `otel` feature (of `keel`, or `keel-telemetry`), or
    /// unset the variable.
    #[error(
        "OTEL_EXPORTER_OTLP_ENDPOINT is set, but span export needs the `otel` feature \
         (of `keel` or `keel-telemetry`), which this build lacks; turn it on or unset the variable"
    )]
    OtelFeatureMissing,
    /// The OTLP span exporter could not be built (bad endpoint, no HTTP client).
    #[cfg(feature = "otel")]
    #[error("cannot build the OTLP span exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// Flushing or shutting down the tracer provider failed (e.g. the collector is
    /// unreachable); spans still buffered are lost.
    #[cfg(feature = "otel")]
    #[error("cannot shut down the OpenTelemetry tracer provider: {0}")]
    Shutdown(#[from] opentelemetry_sdk::error::OTelSdkError),
}
