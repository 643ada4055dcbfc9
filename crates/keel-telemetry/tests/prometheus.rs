//! The process-wide Prometheus recorder.
#![allow(clippy::unwrap_used)]

use keel_telemetry::{prometheus, render_metrics};

#[test]
fn renders_a_counter_incremented_through_the_macros() {
    let handle = prometheus();
    metrics::counter!("keel_telemetry_test_published_total", "topic" => "orders").increment(3);
    let text = handle.render();
    assert!(text.contains(r#"keel_telemetry_test_published_total{topic="orders"} 3"#), "{text}");
    assert!(std::ptr::eq(handle, prometheus()), "one handle per process");
}

#[test]
fn latency_histograms_are_rendered_with_buckets() {
    prometheus();
    metrics::histogram!("keel_telemetry_test_latency_seconds").record(0.003);
    metrics::histogram!("keel_telemetry_test_latency_seconds").record(2.0);
    let text = render_metrics();
    assert!(
        text.contains(r#"keel_telemetry_test_latency_seconds_bucket{le="0.0025"} 0"#),
        "{text}"
    );
    assert!(text.contains(r#"keel_telemetry_test_latency_seconds_bucket{le="0.005"} 1"#), "{text}");
    assert!(text.contains(r#"keel_telemetry_test_latency_seconds_bucket{le="+Inf"} 2"#), "{text}");
    assert!(text.contains("keel_telemetry_test_latency_seconds_count 2"), "{text}");
}
