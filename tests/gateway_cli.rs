//! `keel gateway` as its own process: per-core workers answer, the admin endpoints
//! show the gateway's metrics in the process's one Prometheus recorder, and SIGTERM
//! stops it cleanly.
#![allow(clippy::unwrap_used)]

use std::io::Read as _;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http.get(format!("{base}/_keel/health")).send().await.is_ok_and(|r| r.status() == 200) {
        assert!(child.try_wait().unwrap().is_none(), "keel gateway exited early");
        assert!(Instant::now() < deadline, "keel gateway never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..8 {
        // A new connection each time, so both workers get some.
        let response = reqwest::Client::new().get(format!("{base}/api/x")).send().await.unwrap();
        assert!(response.status().is_server_error(), "{}", response.status());
        let kind = response.headers()["content-type"].to_str().unwrap().to_owned();
        assert_eq!(kind, "application/problem+json");
    }
    let metrics =
        http.get(format!("{base}/_keel/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("keel_gateway_requests_total"), "{metrics}");

    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "keel gateway did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(status.success(), "keel gateway exited with {status}: {stderr}");
    assert!(stderr.contains("(2 workers)"), "{stderr}");
    // Keel's recorder is the process's one: nothing else was installed first.
    assert!(!stderr.contains("metrics recorder"), "{stderr}");
}
