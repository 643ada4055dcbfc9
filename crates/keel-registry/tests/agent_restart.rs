//! A Consul dev agent restarted on the same ports (the fault harness's `consul restart`,
//! issue 18): it forgets every registration and its index starts again near zero. A
//! watch that blocked with the old, higher index would be held for its whole `wait`
//! (the re-registrations leave the new index below the old one) and miss an instance
//! that moved meanwhile; after the failed query it starts again with a plain read and
//! sees the new instance at once. When the query's connection dies silently instead
//! (no error reaches the watch), the watch's probe finds the restarted agent. The tests
//! start their own agent (`consul` on PATH, as scripts/services.sh installs it), never
//! the shared one.

#![cfg(feature = "integration")]
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keel_registry::{ConsulRegistry, Instance, Registration, Registry as _};

/// A private Consul dev agent on free ports that can be killed and started again on the
/// same ones; killed when dropped.
struct Agent {
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    url: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Agent {
    async fn start() -> Self {
        let http = free_port();
        let mut args: Vec<String> =
            ["agent", "-dev", "-client", "127.0.0.1", "-bind", "127.0.0.1"].map(Into::into).into();
        args.extend(["-http-port".to_owned(), http.to_string()]);
        for flag in ["-server-port", "-serf-lan-port", "-serf-wan-port"] {
            args.extend([flag.to_owned(), free_port().to_string()]);
        }
        args.extend(["-dns-port", "-1", "-grpc-port", "-1"].map(String::from));
        let log = std::env::temp_dir().join(format!("{}.log", common::unique("keel-consul")));
        let mut agent = Self { args, log, child: None, url: format!("http://127.0.0.1:{http}") };
        agent.run().await;
        agent
    }

    /// Starts the agent and waits until it has a leader.
    async fn run(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        self.child = Some(
            Command::new("consul")
                .args(&self.args)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(Stdio::null())
                .spawn()
                .expect("consul (scripts/services.sh installs it)"),
        );
        let registry = ConsulRegistry::new(&self.url).unwrap();
        for _ in 0..300 {
            if registry.leader().await.is_ok_and(|leader| !leader.is_empty()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the agent never had a leader; see {}", self.log.display());
    }

    /// SIGKILLs the agent, then starts it again on the same ports.
    async fn restart(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        self.run().await;
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

fn instance(service: &str, n: u16) -> Registration {
    Registration {
        instance: Instance {
            id: format!("{service}-{n}"),
            service: service.to_owned(),
            address: "127.0.0.1".into(),
            port: n,
            tags: Vec::new(),
            meta: Default::default(),
        },
        check: None,
    }
}

fn ports(instances: &[Instance]) -> Vec<u16> {
    instances.iter().map(|i| i.port).collect()
}

/// Registers instance 1 of `service` after some history, so that the index a watch
/// holds is well above what a restarted agent reaches by the time the instance
/// registers again; returns `watching`'s watch once it shows the instance.
async fn watching_one_instance(
    registry: &ConsulRegistry,
    watching: &ConsulRegistry,
    service: &str,
) -> keel_registry::Watch {
    for n in 2..40 {
        registry.register(&instance(service, n)).await.unwrap();
        registry.deregister(&format!("{service}-{n}")).await.unwrap();
    }
    registry.register(&instance(service, 1)).await.unwrap();
    let mut watch = watching.watch(service);
    while ports(&watch.snapshot()) != [1] {
        watch.changed().await.unwrap();
    }
    watch
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_follows_a_restarted_agent_at_once() {
    let mut agent = Agent::start().await;
    // Blocking queries wait for up to ten minutes: far longer than the test's patience.
    let registry = ConsulRegistry::new(&agent.url).unwrap().with_wait(Duration::from_secs(600));
    let service = common::unique("keel-restart");

    let mut watch = watching_one_instance(&registry, &registry, &service).await;
    // Kill the agent under the watch's blocking query, as a restart nearly always finds
    // it: the loop waits 50 ms between queries, and a dev agent is back in about 100 ms,
    // so a query sent after the kill could reach the new agent with the old index
    // without any error to tell (the watch's probe finds that case: the test below).
    tokio::time::sleep(Duration::from_millis(500)).await;
    agent.restart().await;
    // The agent forgot the instance; it registers again, on another port (a process
    // started again elsewhere while the agent was down).
    assert!(!registry.is_registered(&format!("{service}-1")).await.unwrap());
    registry.register(&instance(&service, 2)).await.unwrap();

    let follows = async {
        while ports(&watch.snapshot()) != [2] {
            watch.changed().await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(60), follows).await.unwrap_or_else(|_| {
        panic!(
            "the watch still shows {:?} a minute after the agent came back with port 2 only",
            ports(&watch.snapshot())
        )
    });
}

/// A loopback TCP proxy to `upstream` that never tells a client its upstream
/// connection ended: the client's request hangs, as on a connection a firewall or NAT
/// dropped without a reset.
async fn silent_proxy(upstream: std::net::SocketAddr) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else { return };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                });
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                // Hold the client's side open, unanswered.
                std::future::pending::<()>().await;
                drop(client_write);
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_whose_query_hangs_finds_the_restarted_agent_by_its_probe() {
    let mut agent = Agent::start().await;
    let registry = ConsulRegistry::new(&agent.url).unwrap();
    let upstream = agent.url.trim_start_matches("http://").parse().unwrap();
    let proxied = ConsulRegistry::new(&format!("http://{}", silent_proxy(upstream).await))
        .unwrap()
        .with_wait(Duration::from_secs(600))
        .with_probe_interval(Duration::from_millis(500));
    let service = common::unique("keel-probe");
    let mut watch = watching_one_instance(&registry, &proxied, &service).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The blocking query's connection now hangs for good: the restart gives the watch
    // no error, and the query would be held for its whole wait (ten minutes).
    agent.restart().await;
    registry.register(&instance(&service, 2)).await.unwrap();

    let follows = async {
        while ports(&watch.snapshot()) != [2] {
            watch.changed().await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(20), follows).await.unwrap_or_else(|_| {
        panic!(
            "the watch still shows {:?} 20 s after the agent came back with port 2 only",
            ports(&watch.snapshot())
        )
    });
}
