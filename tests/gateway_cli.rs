//! `keel gateway` as its own process: per-core workers answer, the admin endpoints
//! show the gateway's metrics in the process's one Prometheus recorder, and SIGTERM
//! stops it cleanly.
#![allow(clippy::unwrap_used)]

use std::io::Read as _;
use std::net::TcpListener;
use std::process::{Command, Stdio};

use keel_testkit::process::{stop_with_sigterm, wait_until_ok};

#[tokio::test]
async fn keel_gateway_serves_per_core_and_stops_on_sigterm() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // An upstream nobody listens on: every proxied request is a gateway error.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["gateway", "--listen", &format!("127.0.0.1:{port}"), "--workers", "2"])
        .args(["--route", &format!("/api=http://127.0.0.1:{closed}")])
        .env_remove("KEEL_CONSUL_URL")
        .env_remove("KEEL_JWT_SECRET")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_until_ok(&mut child, &format!("{base}/_keel/health"), "keel gateway").await;
    for _ in 0..8 {
        // A new connection each time, so both workers get some.
        let response = reqwest::Client::new().get(format!("{base}/api/x")).send().await.unwrap();
        assert!(response.status().is_server_error(), "{}", response.status());
        let kind = response.headers()["content-type"].to_str().unwrap().to_owned();
        assert_eq!(kind, "application/problem+json");
    }
    let metrics =
        reqwest::get(format!("{base}/_keel/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("keel_gateway_requests_total"), "{metrics}");

    let status = stop_with_sigterm(&mut child, "keel gateway").await;
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(status.success(), "keel gateway exited with {status}: {stderr}");
    assert!(stderr.contains("(2 workers)"), "{stderr}");
    // Keel's recorder is the process's one: nothing else was installed first.
    assert!(!stderr.contains("metrics recorder"), "{stderr}");
}
