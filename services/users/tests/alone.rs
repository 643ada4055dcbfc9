//! The users service as its own process (`keel-users`): it starts from the KEEL_*
//! settings on its own SQLite database, serves the API behind the service kit, and
//! stops cleanly on SIGTERM.
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::process::{Command, Stdio};

use keel_testkit::process::{stop_with_sigterm, wait_until_ok};

#[tokio::test]
async fn runs_alone_and_stops_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("keel-users-alone-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel-users"))
        .current_dir(&dir)
        .env("KEEL_DATABASE_URL", format!("sqlite://{}/keel.db", dir.display()))
        .env("KEEL_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env_remove("KEEL_BUS_URL")
        .env_remove("KEEL_CONSUL_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_until_ok(&mut child, &format!("{base}/health"), "keel-users").await;
    let http = reqwest::Client::new();
    let created = http
        .post(format!("{base}/api/users"))
        .json(&serde_json::json!({ "name": "Alan", "email": "alan@example.com" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let body: serde_json::Value = created.json().await.unwrap();
    let id = body["id"].as_str().unwrap();
    let fetched = http.get(format!("{base}/api/users/{id}")).send().await.unwrap();
    assert_eq!(fetched.status(), 200);
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("http_requests_total"), "{metrics}");

    let status = stop_with_sigterm(&mut child, "keel-users").await;
    assert!(status.success(), "keel-users exited with {status}");
    let _ = std::fs::remove_dir_all(&dir);
}
