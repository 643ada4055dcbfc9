#![cfg(feature = "consul")]
//! The Consul watch loop against a fake Consul this test controls: the index reset
//! rules, keeping the last snapshot through an outage, and stopping with the last Watch.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use keel_core::Backoff;
use keel_registry::{ConsulRegistry, Instance, Registry, Watch};
use serde_json::json;
use tokio::sync::{mpsc, watch};

/// One answer of the fake: the `X-Consul-Index` and the passing instance ids.
type Step = (u64, Vec<&'static str>);

#[derive(Clone)]
struct Fake {
    steps: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Step>>>,
    /// The `index` parameter of every health query received.
    seen: Arc<Mutex<Vec<u64>>>,
    /// Told when an in-flight query ends (answered or abandoned by the client).
    ended: mpsc::UnboundedSender<()>,
    stopped: watch::Receiver<bool>,
}

struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    fn stop(self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }
}

struct EndGuard(mpsc::UnboundedSender<()>);

impl Drop for EndGuard {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

async fn health(
    State(fake): State<Fake>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let _guard = EndGuard(fake.ended.clone());
    let index = query.get("index").and_then(|i| i.parse().ok()).unwrap_or(u64::MAX);
    fake.seen.lock().unwrap().push(index);
    let mut stopped = fake.stopped.clone();
    let mut steps = fake.steps.lock().await;
    let step = tokio::select! {
        step = steps.recv() => step,
        _ = stopped.wait_for(|s| *s) => None,
    };
    let close = [("connection", "close")];
    let Some((index, ids)) = step else {
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, close).into_response();
    };
    ([("x-consul-index", index.to_string())], close, axum::Json(entries(&ids))).into_response()
}

/// Consul's health entries for passing instances `ids` of `users`.
fn entries(ids: &[&str]) -> Vec<serde_json::Value> {
    ids.iter()
        .map(|id| {
            json!({"Node": {"Address": "10.0.0.1"},
                   "Service": {"ID": id, "Service": "users", "Address": "", "Port": 80, "Tags": [], "Meta": {}}})
        })
        .collect()
}

async fn serve(listener: tokio::net::TcpListener, fake: Fake) -> Server {
    let (stop, stopped) = watch::channel(false);
    let fake = Fake { stopped, ..fake };
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/v1/health/service/{name}", axum::routing::get(health))
        .with_state(fake);
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Server { addr, stop, task }
}

struct Harness {
    steps: mpsc::UnboundedSender<Step>,
    seen: Arc<Mutex<Vec<u64>>>,
    ended: mpsc::UnboundedReceiver<()>,
    fake: Fake,
}

fn harness() -> Harness {
    let (steps, rx) = mpsc::unbounded_channel();
    let (ended_tx, ended) = mpsc::unbounded_channel();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let fake = Fake {
        steps: Arc::new(tokio::sync::Mutex::new(rx)),
        seen: seen.clone(),
        ended: ended_tx,
        stopped: watch::channel(false).1,
    };
    Harness { steps, seen, ended, fake }
}

fn registry(addr: SocketAddr) -> ConsulRegistry {
    ConsulRegistry::new(&format!("http://{addr}"))
        .unwrap()
        .with_backoff(Backoff::new(Duration::from_millis(10), Duration::from_millis(100)))
}

fn ids(snapshot: &[Instance]) -> Vec<&str> {
    snapshot.iter().map(|i| i.id.as_str()).collect()
}

async fn until(watch: &mut Watch, want: &[&str]) {
    let wait = async {
        while ids(&watch.snapshot()) != want {
            watch.changed().await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait).await.unwrap();
}

async fn until_seen(seen: &Mutex<Vec<u64>>, count: usize) -> Vec<u64> {
    let wait = async {
        loop {
            let seen = seen.lock().unwrap().clone();
            if seen.len() >= count {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait).await.unwrap()
}

#[tokio::test]
async fn index_resets_when_it_goes_backwards_or_is_zero() {
    let h = harness();
    let server =
        serve(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), h.fake.clone()).await;
    let mut watch = registry(server.addr).watch("users");
    for step in [(10, vec!["a"]), (5, vec!["a"]), (0, vec!["a", "b"]), (7, vec!["b"])] {
        h.steps.send(step).unwrap();
    }
    until(&mut watch, &["b"]).await;
    let seen = until_seen(&h.seen, 5).await;
    // 0: first query; 10 blocks; 5 < 10 resets to 0; a returned 0 becomes 1; then 7.
    assert_eq!(seen, vec![0, 10, 0, 1, 7]);
    assert_eq!(watch.snapshot()[0].address, "10.0.0.1");
    server.stop();
}

#[tokio::test]
async fn keeps_the_last_snapshot_while_consul_is_down_then_reads_afresh() {
    let h = harness();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = serve(listener, h.fake.clone()).await;
    let mut watch = registry(addr).watch("users");
    h.steps.send((3, vec!["a"])).unwrap();
    until(&mut watch, &["a"]).await;
    until_seen(&h.seen, 2).await; // the loop is now blocked on index 3

    server.stop();
    // Several connection attempts fail meanwhile (backoff 10..100 ms).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ids(&watch.snapshot()), ["a"], "an outage keeps the last snapshot");

    // Back, perhaps as a restarted agent whose index starts again below 3: a blocking
    // query on 3 could be held for its whole wait. The loop reads afresh (index 0),
    // then blocks on the index that read returned.
    let server = serve(tokio::net::TcpListener::bind(addr).await.unwrap(), h.fake.clone()).await;
    h.steps.send((2, vec!["a", "b"])).unwrap();
    until(&mut watch, &["a", "b"]).await;
    let seen = until_seen(&h.seen, 4).await;
    assert_eq!(seen, vec![0, 3, 0, 2], "a plain read after the outage, then blocking on its index");
    server.stop();
}

#[tokio::test]
async fn stops_when_the_last_watch_is_dropped() {
    let mut h = harness();
    let server =
        serve(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), h.fake.clone()).await;
    let watch = registry(server.addr).watch("users");
    let clone = watch.clone();
    h.steps.send((3, vec!["a"])).unwrap();
    until_seen(&h.seen, 2).await; // blocked on index 3
    h.ended.recv().await.unwrap(); // the first query ended
    drop(watch);
    drop(clone);
    // The blocked query is abandoned by the client, which the server sees end.
    tokio::time::timeout(Duration::from_secs(20), h.ended.recv()).await.unwrap().unwrap();
    let before = h.seen.lock().unwrap().len();
    h.steps.send((4, vec!["b"])).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.seen.lock().unwrap().len(), before, "no query after the last Watch is gone");
    server.stop();
}

/// A fake agent that holds a blocking query as Consul does: while the index asked for
/// is not below its own, until the query's `wait` (here: for good).
#[derive(Clone, Default)]
struct Agent {
    state: Arc<Mutex<(u64, Vec<&'static str>)>>,
    /// The `index` of every query, `None` for a plain read.
    seen: Arc<Mutex<Vec<Option<u64>>>>,
}

async fn agent_health(
    State(agent): State<Agent>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let asked: Option<u64> = query.get("index").and_then(|i| i.parse().ok());
    agent.seen.lock().unwrap().push(asked);
    let (index, ids) = agent.state.lock().unwrap().clone();
    if asked.is_some_and(|asked| asked >= index) {
        std::future::pending::<()>().await;
    }
    ([("x-consul-index", index.to_string())], axum::Json(entries(&ids))).into_response()
}

async fn until_asked(agent: &Agent, index: Option<u64>) {
    let asked = async {
        while !agent.seen.lock().unwrap().contains(&index) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), asked).await.unwrap();
}

#[tokio::test]
async fn an_agent_that_lost_its_index_between_two_queries_is_found_by_the_probe() {
    let agent = Agent::default();
    *agent.state.lock().unwrap() = (10, vec!["a"]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/v1/health/service/{name}", axum::routing::get(agent_health))
        .with_state(agent.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let registry = registry(addr).with_probe_interval(Duration::from_millis(200));
    let mut watch = registry.watch("users");
    until(&mut watch, &["a"]).await;
    // The loop now blocks on index 10, and the agent holds it (a minute by default).
    until_asked(&agent, Some(10)).await;

    // The agent restarts between two queries and comes back with its index near zero
    // and other instances: the held query never errs, and would be held for its wait.
    *agent.state.lock().unwrap() = (3, vec!["b"]);
    let found = async {
        while ids(&watch.snapshot()) != ["b"] {
            watch.changed().await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(5), found)
        .await
        .expect("the probe finds the agent's index below the one the query blocks on");
    // It then follows the new agent: blocking on the new agent's index.
    until_asked(&agent, Some(3)).await;
    server.abort();
}
