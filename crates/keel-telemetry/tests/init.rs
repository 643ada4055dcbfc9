//! The global subscriber (own test binary: it is per process).
#![allow(clippy::unwrap_used)]

use keel_telemetry::{TelemetryConfig, TelemetryError, current_trace, init, init_with};

#[test]
fn init_rejects_a_bad_filter_and_a_second_call_without_panicking() {
    let bad = TelemetryConfig {
        service_name: "keel-telemetry-init".to_owned(),
        default_filter: "info,keel=notalevel".to_owned(),
        otlp_endpoint: None,
    };
    assert!(matches!(init_with(bad), Err(TelemetryError::Filter { .. })));

    let guard = init_with(TelemetryConfig {
        service_name: "keel-telemetry-init".to_owned(),
        default_filter: "info".to_owned(),
        otlp_endpoint: None,
    })
    .unwrap();
    assert!(!guard.exporting());
    // Without OTLP there is no OpenTelemetry layer: no W3C context on spans.
    assert_eq!(tracing::info_span!("after.init").in_scope(current_trace), None);

    assert!(matches!(
        init("keel-telemetry-init", "debug"),
        Err(TelemetryError::AlreadyInitialised)
    ));
    assert!(matches!(init("keel-telemetry-init", "info"), Err(TelemetryError::AlreadyInitialised)));
    guard.shutdown().unwrap();
}
