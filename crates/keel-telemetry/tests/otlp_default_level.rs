//! Spans reach the collector whatever the log level (own test binary: `init_with`
//! installs the global subscriber). The `keel` binary logs at `warn` by default and
//! Keel's spans are `info` spans: with one filter for every layer, none was exported.
#![cfg(feature = "otel")]
#![allow(clippy::unwrap_used)]

use std::sync::mpsc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{StatusCode, Uri};
use keel_core::TraceContext;
use keel_telemetry::{TelemetryConfig, continue_trace, current_trace, init_with};

#[test]
fn info_spans_are_exported_when_logging_only_warnings() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (tx, rx) = mpsc::channel::<(String, Bytes)>();
    let app = axum::Router::new().fallback(move |uri: Uri, body: Bytes| {
        let tx = tx.clone();
        async move {
            let _ = tx.send((uri.path().to_owned(), body));
            StatusCode::OK
        }
    });
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move { axum::serve(listener, app).await });

    // The `keel` binary's default filter (RUST_LOG unset).
    let guard = init_with(TelemetryConfig {
        service_name: "keel-telemetry-default-level".to_owned(),
        default_filter: "warn".to_owned(),
        otlp_endpoint: Some(format!("http://{addr}")),
    })
    .unwrap();

    let incoming = TraceContext::new_root();
    {
        let span = tracing::info_span!("request.at.info");
        continue_trace(&span, &incoming);
        let _entered = span.enter();
        let current = current_trace();
        assert_eq!(
            current.map(|t| t.trace_id()),
            Some(incoming.trace_id()),
            "the info span is not recorded by the OpenTelemetry layer"
        );
        // A debug span is neither logged nor exported.
        tracing::debug_span!("detail.at.debug").in_scope(|| {});
    }
    guard.shutdown().unwrap();

    let trace_id = hex_bytes(&incoming.trace_id());
    let mut exported = Vec::new();
    while let Ok((path, body)) = rx.recv_timeout(Duration::from_secs(30)) {
        assert_eq!(path, "/v1/traces");
        exported.push(body);
        if exported.iter().any(|b| contains(b, &trace_id)) {
            break;
        }
    }
    assert!(
        exported.iter().any(|b| contains(b, &trace_id) && contains(b, b"request.at.info")),
        "no span of the trace reached the collector ({} export request(s))",
        exported.len()
    );
    assert!(!exported.iter().any(|b| contains(b, b"detail.at.debug")), "debug spans are exported");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
}
