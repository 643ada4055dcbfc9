//! OTLP/HTTP export to a local stand-in collector (own test binary: `init_with`
//! installs the global subscriber).
#![cfg(feature = "otel")]
#![allow(clippy::unwrap_used)]

use std::sync::mpsc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use keel_core::TraceContext;
use keel_telemetry::{TelemetryConfig, continue_trace, current_trace, init_with};

struct Received {
    method: Method,
    path: String,
    content_type: Option<String>,
    body: Bytes,
}

#[test]
fn spans_reach_the_collector_when_the_guard_shuts_down() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (tx, rx) = mpsc::channel();
    let app = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                let content_type =
                    headers.get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
                let _ =
                    tx.send(Received { method, path: uri.path().to_owned(), content_type, body });
                StatusCode::OK
            }
        },
    );
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move { axum::serve(listener, app).await });

    let guard = init_with(TelemetryConfig {
        service_name: "keel-telemetry-otlp-test".to_owned(),
        default_filter: "info".to_owned(),
        otlp_endpoint: Some(format!("http://{addr}/")),
    })
    .unwrap();
    assert!(guard.exporting());

    let incoming = TraceContext::new_root();
    {
        let span = tracing::info_span!("otlp.test");
        continue_trace(&span, &incoming);
        let _entered = span.enter();
        assert_eq!(current_trace().unwrap().trace_id(), incoming.trace_id());
    }
    guard.shutdown().unwrap();

    let received = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(received.method, Method::POST);
    assert_eq!(received.path, "/v1/traces");
    assert_eq!(received.content_type.as_deref(), Some("application/x-protobuf"));
    // Protobuf carries the trace id as its 16 raw bytes, the service name as a string.
    let trace_id = hex_bytes(&incoming.trace_id());
    assert!(received.body.windows(16).any(|w| w == trace_id), "trace id not in the export");
    assert!(received.body.windows(24).any(|w| w == b"keel-telemetry-otlp-test"));
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
}
