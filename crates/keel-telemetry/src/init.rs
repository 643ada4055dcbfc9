//! The process's `tracing` subscriber and, when an OTLP endpoint is configured (and the
//! `otel` feature is on), the OpenTelemetry pipeline behind it.

#[cfg(feature = "otel")]
use opentelemetry::trace::TracerProvider as _;
#[cfg(feature = "otel")]
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
#[cfg(feature = "otel")]
use opentelemetry_sdk::Resource;
#[cfg(feature = "otel")]
use opentelemetry_sdk::propagation::TraceContextPropagator;
#[cfg(feature = "otel")]
use opentelemetry_sdk::trace::SdkTracerProvider;
#[cfg(feature = "otel")]
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::error::{Result, TelemetryError};

/// The standard variable naming the OTLP collector's base URL
/// (e.g. `http://127.0.0.1:4318`); spans go to `<base>/v1/traces`.
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

#[cfg(feature = "otel")]
/// Crates whose spans the OpenTelemetry layer ignores: the exporter's own HTTP stack
/// would otherwise feed every export back into the next batch.
const NOT_EXPORTED: &[&str] = &[
    "h2",
    "hyper",
    "hyper_util",
    "opentelemetry",
    "opentelemetry_http",
    "opentelemetry_otlp",
    "opentelemetry_sdk",
    "reqwest",
    "tower",
];

#[cfg(feature = "otel")]
/// The most detailed spans (and span events) exported over OTLP, whatever the log
/// filter: Keel's request and message spans are `info` spans, and the `debug` and
/// `trace` detail of libraries would swamp the collector.
const EXPORTED_LEVEL: LevelFilter = LevelFilter::INFO;

/// What [`init_with`] sets up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// The `service.name` resource attribute of exported spans.
    pub service_name: String,
    /// The filter used when `RUST_LOG` is unset or invalid (e.g. `info,keel=debug`).
    pub default_filter: String,
    /// The OTLP/HTTP collector's base URL; `None` exports nothing.
    pub otlp_endpoint: Option<String>,
}

impl TelemetryConfig {
    /// A configuration whose OTLP endpoint comes from `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn from_env(service_name: &str, default_filter: &str) -> Self {
        Self {
            service_name: service_name.to_owned(),
            default_filter: default_filter.to_owned(),
            otlp_endpoint: std::env::var(OTEL_EXPORTER_OTLP_ENDPOINT)
                .ok()
                .filter(|endpoint| !endpoint.trim().is_empty()),
        }
    }
}

/// Installs the global subscriber as [`TelemetryConfig::from_env`] describes it: log
/// lines to stderr filtered by `RUST_LOG` (else `default_filter`), and spans exported
/// over OTLP/HTTP (protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT` is set: those at
/// `info` and above, whatever the log filter says. Keep the guard
/// alive for the life of the process; dropping it flushes the spans still buffered.
///
/// Fails with [`TelemetryError::AlreadyInitialised`] when a global subscriber exists
/// (a second call never panics and leaves the first setup in place).
pub fn init(service_name: &str, default_filter: &str) -> Result<TelemetryGuard> {
    init_with(TelemetryConfig::from_env(service_name, default_filter))
}

/// [`init`] with an explicit configuration.
///
/// Also sets the global OpenTelemetry propagator to W3C TraceContext and, when
/// exporting, the global tracer provider. The exporter runs on the SDK's batch thread
/// with a blocking HTTP client, so this works with or without a Tokio runtime.
///
/// Without the `otel` feature, a configured OTLP endpoint fails with
/// [`TelemetryError::OtelFeatureMissing`] (nothing is installed) rather than
/// silently exporting nothing.
pub fn init_with(config: TelemetryConfig) -> Result<TelemetryGuard> {
    let (filter, bad_rust_log) = env_filter(&config.default_filter)?;
    // Colour only on a terminal: logs redirected to a file or a pipe carry no escape codes.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(filter);
    #[cfg(feature = "otel")]
    let guard = {
        let provider = config.otlp_endpoint.as_deref().map(|e| provider(&config, e)).transpose()?;
        // A filter per layer: the log filter decides what is printed, never what is
        // exported (with one global filter, `keel`'s default `warn` hid every `info` span
        // from the collector).
        let otel = provider.as_ref().map(|provider| {
            let targets = NOT_EXPORTED
                .iter()
                .fold(Targets::new().with_default(EXPORTED_LEVEL), |targets, target| {
                    targets.with_target(*target, LevelFilter::OFF)
                });
            tracing_opentelemetry::layer().with_tracer(provider.tracer("keel")).with_filter(targets)
        });
        let subscriber = tracing_subscriber::registry().with(fmt).with(otel);
        if tracing::subscriber::set_global_default(subscriber).is_err() {
            if let Some(provider) = provider {
                // Nothing was recorded through it; stop its batch thread.
                let _ = provider.shutdown();
            }
            return Err(TelemetryError::AlreadyInitialised);
        }
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        if let Some(provider) = &provider {
            opentelemetry::global::set_tracer_provider(provider.clone());
        }
        TelemetryGuard { provider }
    };
    #[cfg(not(feature = "otel"))]
    let guard = {
        if config.otlp_endpoint.is_some() {
            return Err(TelemetryError::OtelFeatureMissing);
        }
        let subscriber = tracing_subscriber::registry().with(fmt);
        if tracing::subscriber::set_global_default(subscriber).is_err() {
            return Err(TelemetryError::AlreadyInitialised);
        }
        TelemetryGuard {}
    };
    // Forward `log` records (from crates that use it) unless someone else owns `log`.
    let _ = tracing_log::LogTracer::init();
    if let Some(error) = bad_rust_log {
        tracing::warn!(%error, filter = %config.default_filter, "invalid RUST_LOG; using the default filter");
    }
    tracing::debug!(
        service = %config.service_name,
        otlp = config.otlp_endpoint.as_deref().unwrap_or("off"),
        "telemetry initialised"
    );
    Ok(guard)
}

/// `RUST_LOG` if set and valid, else the default (and why `RUST_LOG` was rejected). The
/// default is checked either way, so a typo in it fails at once, not on some later host.
fn env_filter(
    default_filter: &str,
) -> Result<(EnvFilter, Option<tracing_subscriber::filter::FromEnvError>)> {
    let default = EnvFilter::try_new(default_filter)
        .map_err(|source| TelemetryError::Filter { filter: default_filter.to_owned(), source })?;
    match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(value) if !value.trim().is_empty() => match EnvFilter::try_from_default_env() {
            Ok(filter) => Ok((filter, None)),
            Err(error) => Ok((default, Some(error))),
        },
        _ => Ok((default, None)),
    }
}

#[cfg(feature = "otel")]
fn provider(config: &TelemetryConfig, endpoint: &str) -> Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{}/v1/traces", endpoint.trim().trim_end_matches('/')))
        .build()?;
    let resource = Resource::builder().with_service_name(config.service_name.clone()).build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}

/// Keeps the span export pipeline alive; dropping it (or [`TelemetryGuard::shutdown`])
/// exports the spans still buffered and stops the exporter. Without OTLP export it
/// does nothing.
#[derive(Debug)]
#[must_use = "dropping the guard stops span export"]
pub struct TelemetryGuard {
    #[cfg(feature = "otel")]
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are exported over OTLP.
    pub fn exporting(&self) -> bool {
        #[cfg(feature = "otel")]
        return self.provider.is_some();
        #[cfg(not(feature = "otel"))]
        false
    }

    /// Flushes and stops the exporter, reporting a failed final export. Blocks until
    /// the batch thread is done: from async code, call it in `spawn_blocking`.
    pub fn shutdown(self) -> Result<()> {
        #[cfg(feature = "otel")]
        {
            let mut guard = self;
            if let Some(provider) = guard.provider.take() {
                provider.shutdown()?;
            }
        }
        #[cfg(not(feature = "otel"))]
        let _ = self;
        Ok(())
    }
}

#[cfg(feature = "otel")]
impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "OpenTelemetry span export did not shut down cleanly");
        }
    }
}
