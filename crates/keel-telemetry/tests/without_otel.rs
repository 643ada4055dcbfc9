//! Without the `otel` feature (run with `cargo test -p keel-telemetry` and no features;
//! `--all-features` compiles nothing here): a configured OTLP endpoint is refused naming
//! the feature, and the trace helpers are no-ops. Own test binary: `init_with` installs
//! the global subscriber.
#![cfg(not(feature = "otel"))]
#![allow(clippy::unwrap_used)]

use keel_core::TraceContext;
use keel_telemetry::{TelemetryConfig, TelemetryError, continue_trace, current_trace, init_with};

#[test]
fn an_otlp_endpoint_without_the_feature_is_refused_naming_it() {
    let config = TelemetryConfig {
        service_name: "keel-telemetry-no-otel".to_owned(),
        default_filter: "info".to_owned(),
        otlp_endpoint: Some("http://127.0.0.1:4318".to_owned()),
    };
    let error = init_with(config.clone()).unwrap_err();
    assert!(matches!(error, TelemetryError::OtelFeatureMissing));
    let message = error.to_string();
    assert!(message.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{message}");
    assert!(message.contains("`otel` feature"), "{message}");

    // Nothing was installed by the refusal: logging alone still starts.
    let guard = init_with(TelemetryConfig { otlp_endpoint: None, ..config }).unwrap();
    assert!(!guard.exporting());
    let parent =
        TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
    let span = tracing::info_span!("no.otel");
    continue_trace(&span, &parent);
    assert_eq!(span.in_scope(current_trace), None);
    guard.shutdown().unwrap();
}
