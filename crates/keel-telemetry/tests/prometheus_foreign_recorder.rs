//! `prometheus()` when another global recorder was installed first (own test binary:
//! the global recorder is per process).
#![allow(clippy::unwrap_used)]

use metrics_exporter_prometheus::PrometheusBuilder;

#[test]
fn still_returns_a_working_handle_that_does_not_see_the_macros() {
    let foreign = PrometheusBuilder::new().build_recorder();
    let foreign_handle = foreign.handle();
    metrics::set_global_recorder(foreign).unwrap();

    let ours = keel_telemetry::prometheus();
    metrics::counter!("keel_telemetry_test_foreign_total").increment(1);
    assert!(foreign_handle.render().contains("keel_telemetry_test_foreign_total 1"));
    assert!(!ours.render().contains("keel_telemetry_test_foreign_total"));
}
