//! Tests that run a Keel binary as its own process: wait until it answers, stop it as
//! an orchestrator would (SIGTERM), and see how it exited.

use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use crate::util::PATIENCE;

/// Polls `GET url` until it answers 200. Panics naming `what` if the process exits
/// first or [`PATIENCE`] runs out.
pub async fn wait_until_ok(child: &mut Child, url: &str, what: &str) {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !http.get(url).send().await.is_ok_and(|r| r.status() == 200) {
        assert!(child.try_wait().expect("the process's status").is_none(), "{what} exited early");
        assert!(tokio::time::Instant::now() < deadline, "{what} never answered {url}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends SIGTERM and waits for the process to exit. Panics naming `what` if it is
/// still running after [`PATIENCE`].
pub async fn stop_with_sigterm(child: &mut Child, what: &str) -> ExitStatus {
    let pid = child.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
    assert!(sent.success(), "could not signal {what}");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().expect("the process's status") {
            return status;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what} did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
