//! The example system deployed as separate processes on loopback: two instances of
//! each service (`keel-users`, `keel-products`, `keel-orders`, `keel events`), two
//! relays of one name (one active by lease), and the gateway, registered in a Consul
//! dev agent of the run's own under a namespace of their own, reaching PostgreSQL
//! (and RabbitMQ) through [`Proxy`]s, or a Tansu broker of the run's own. The harness
//! supervises them as an orchestrator would: a process that exits on its own is
//! started again (and counted). The run's own [`Daemon`]s (the Consul agent, the
//! Tansu broker) are the harness's to stop, pause and start again on the same ports.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::proxy::Proxy;

/// The broker of a set-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Broker {
    RabbitMq,
    /// A Tansu broker of the run's own, in memory (`profile=tansu`).
    Kafka,
}

/// A program private to the run (the Consul agent, the Tansu broker) on ports chosen
/// once: stopped, it is started again with the same arguments, so the deployment's
/// processes find it where they left it.
pub(crate) struct Daemon {
    /// `consul`, `tansu`.
    pub(crate) label: &'static str,
    program: &'static str,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    /// SIGSTOPped and not yet continued.
    paused: bool,
}

impl Daemon {
    fn new(label: &'static str, program: &'static str, args: Vec<String>, dir: &Path) -> Self {
        let log = dir.join(format!("{label}.log"));
        Self { label, program, args, log, child: None, paused: false }
    }

    /// Starts it if it is not running.
    pub(crate) fn start(&mut self) {
        if self.child.is_some() {
            return;
        }
        let file = append(&self.log);
        let child = Command::new(self.program)
            .args(&self.args)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("the log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("start {} (scripts/services.sh installs it): {e}", self.program)
            });
        self.child = Some(child);
        self.paused = false;
    }

    /// Stops it with `signal` (`KILL`, `TERM`) and reaps it.
    pub(crate) async fn stop(&mut self, signal: &str) {
        let Some(mut child) = self.child.take() else { return };
        if self.paused {
            send(child.id(), "CONT");
        }
        send(child.id(), signal);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while child.try_wait().ok().flatten().is_none() {
            if tokio::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.paused = false;
    }

    /// Sends `STOP` or `CONT`.
    pub(crate) fn pause(&mut self, paused: bool) {
        if let Some(child) = &self.child {
            send(child.id(), if paused { "STOP" } else { "CONT" });
            self.paused = paused;
        }
    }

    /// Running and continued again.
    fn heal(&mut self) {
        if self.paused {
            self.pause(false);
        }
        self.start();
    }

    /// Whether it exited by itself (then it is started again, and that is a failure
    /// of the run's set-up worth reporting).
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn send(pid: u32, signal: &str) {
    let sent = Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status();
    assert!(sent.is_ok_and(|s| s.success()), "kill -{signal} {pid}");
}

fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    probe.local_addr().expect("its address").port()
}

/// A Consul dev agent on free ports (DNS and gRPC off, so that nothing clashes with
/// the shared agent's defaults); its HTTP API's URL.
fn consul_agent(dir: &Path) -> (Daemon, String) {
    let http = free_port();
    let mut args: Vec<String> =
        ["agent", "-dev", "-client", "127.0.0.1", "-bind", "127.0.0.1", "-http-port"]
            .map(str::to_owned)
            .into();
    args.push(http.to_string());
    for flag in ["-server-port", "-serf-lan-port", "-serf-wan-port"] {
        args.extend([flag.to_owned(), free_port().to_string()]);
    }
    args.extend(["-dns-port", "-1", "-grpc-port", "-1"].map(str::to_owned));
    (Daemon::new("consul", "consul", args, dir), format!("http://127.0.0.1:{http}"))
}

/// A Tansu broker in memory on a free port, as `scripts/services.sh` starts the shared
/// one; its address.
fn tansu_broker(dir: &Path) -> (Daemon, String) {
    let address = format!("127.0.0.1:{}", free_port());
    let listener = format!("tcp://{address}");
    let args = vec![
        "broker".to_owned(),
        "--listener-url".to_owned(),
        listener.clone(),
        "--advertised-listener-url".to_owned(),
        listener,
        "--storage-engine".to_owned(),
        "memory://tansu/".to_owned(),
    ];
    (Daemon::new("tansu", "tansu", args, dir), address)
}

/// One process of the deployment.
pub(crate) struct Process {
    /// What it is, e.g. `orders#2`, `relay#1`, `gateway`.
    pub(crate) label: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    /// SIGSTOPped and not yet continued.
    pub(crate) paused: bool,
}

impl Process {
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// The deployment.
pub(crate) struct Deployment {
    pub(crate) namespace: String,
    /// The database, reached directly (not through the proxy): for the checks.
    pub(crate) database_url: String,
    pub(crate) gateway: String,
    /// The HTTP API of the run's Consul agent.
    pub(crate) consul: String,
    /// The run's Consul dev agent: every process registers and discovers in it.
    pub(crate) consul_agent: Daemon,
    /// The run's Tansu broker, on Kafka.
    pub(crate) kafka: Option<Daemon>,
    pub(crate) postgres: Arc<Proxy>,
    /// The RabbitMQ proxy. Kafka clients learn the broker's own address from its
    /// metadata and would go around a proxy, so on Kafka only PostgreSQL is proxied.
    pub(crate) broker: Option<Arc<Proxy>>,
    env: Vec<(String, String)>,
    pub(crate) processes: Vec<Process>,
    pub(crate) dir: PathBuf,
    /// Processes (and daemons) that exited without being killed, by label.
    pub(crate) exits: BTreeMap<String, usize>,
}

fn keel() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_keel"))
}

/// The binary of an example service, built beside `keel` (the workspace's tests build
/// every binary; with `-p keel-cli` alone, build `-p keel-users -p keel-products
/// -p keel-orders` first).
fn service_binary(name: &str) -> PathBuf {
    let binary = keel().with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is not built: run `cargo build -p {name}` (or test the whole workspace)",
        binary.display()
    );
    binary
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

/// `host:port` of a URL such as `postgres://user@host:port/db`.
fn host_port(url: &str) -> (String, SocketAddr) {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = after_scheme.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let addr = host_port.parse().unwrap_or_else(|e| panic!("`{host_port}` of {url}: {e}"));
    (host_port.to_owned(), addr)
}

impl Deployment {
    /// Starts everything and waits until the gateway routes to every service and
    /// Consul holds two passing instances of each.
    pub(crate) async fn start(broker: Broker) -> Self {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let namespace = format!("f{}", &id[18..]);
        let dir = std::env::temp_dir().join(format!("keel-faults-{namespace}"));
        std::fs::create_dir_all(&dir).expect("the run's directory");
        let database_url = keel_testkit::postgres::fresh_database("faults").await;
        let (pg_host, pg_addr) = host_port(&database_url);
        let postgres = Proxy::start(pg_addr).await;
        let proxied_db = database_url.replacen(&pg_host, &postgres.addr().to_string(), 1);
        let (bus_url, broker_proxy, kafka) = match broker {
            Broker::RabbitMq => {
                let url = env_or("KEEL_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
                let (host, addr) = host_port(&url);
                let proxy = Proxy::start(addr).await;
                let url = url.replacen(&host, &proxy.addr().to_string(), 1);
                // The run's queues go away once unused (see tests/namespaces.rs).
                (format!("{url}?queue_expires_ms=120000"), Some(proxy), None)
            }
            Broker::Kafka => {
                // The run's own broker, which the harness pauses (a restart would lose
                // the log: Tansu keeps it in memory).
                let (mut tansu, address) = tansu_broker(&dir);
                tansu.start();
                wait_for_port(&address, &tansu).await;
                (format!("kafka://{address}?profile=tansu"), None, Some(tansu))
            }
        };
        // The run's own agent, which the harness restarts.
        let (mut consul_agent, consul) = consul_agent(&dir);
        consul_agent.start();
        wait_for_leader(&consul, &consul_agent).await;
        let gateway_addr = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            probe.local_addr().expect("its address")
        };
        let env = vec![
            ("KEEL_NAMESPACE".to_owned(), namespace.clone()),
            ("KEEL_DATABASE_URL".to_owned(), proxied_db),
            ("KEEL_BUS_URL".to_owned(), bus_url),
            ("KEEL_CONSUL_URL".to_owned(), consul.clone()),
            ("KEEL_LISTEN_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
            ("RUST_LOG".to_owned(), env_or("KEEL_FAULTS_LOG", "warn")),
        ];
        let mut deployment = Self {
            namespace,
            database_url,
            gateway: format!("http://{gateway_addr}"),
            consul,
            consul_agent,
            kafka,
            postgres,
            broker: broker_proxy,
            env,
            processes: Vec::new(),
            dir,
            exits: BTreeMap::new(),
        };

        // Keel's own tables first, as the compose file's `migrate` does.
        let mut migrate = deployment.command(&keel(), &["migrate".to_owned()]);
        let status = migrate.status().expect("run keel migrate");
        assert!(status.success(), "keel migrate failed: {}", deployment.log_tail("migrate"));

        let gateway_config =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join("gateway.toml");
        let mut planned: Vec<(String, PathBuf, Vec<String>)> = Vec::new();
        for n in 1..=2 {
            for service in ["users", "products", "orders"] {
                planned.push((
                    format!("{service}#{n}"),
                    service_binary(&format!("keel-{service}")),
                    Vec::new(),
                ));
            }
            planned.push((
                format!("events#{n}"),
                keel(),
                vec!["events".into(), "--listen".into(), "127.0.0.1:0".into()],
            ));
            planned.push((
                format!("relay#{n}"),
                keel(),
                vec!["relay".into(), "--name".into(), "main".into()],
            ));
        }
        planned.push((
            "gateway".into(),
            keel(),
            vec![
                "gateway".into(),
                "--config".into(),
                gateway_config.display().to_string(),
                "--listen".into(),
                gateway_addr.to_string(),
                "--workers".into(),
                "1".into(),
            ],
        ));
        for (label, program, args) in planned {
            let log = deployment.dir.join(format!("{}.log", label.replace('#', "-")));
            deployment.processes.push(Process {
                label,
                program,
                args,
                log,
                child: None,
                paused: false,
            });
        }
        for index in 0..deployment.processes.len() {
            deployment.spawn(index);
        }
        if let Err(error) = deployment.until_ready(Duration::from_secs(120)).await {
            panic!("the deployment never became ready: {error}");
        }
        deployment
    }

    fn command(&self, program: &Path, args: &[String]) -> Command {
        let mut command = Command::new(program);
        command.args(args).current_dir(&self.dir).stdin(Stdio::null());
        for key in ["KEEL_JWT_SECRET", "KEEL_IDENTITY_SECRET", "OTEL_EXPORTER_OTLP_ENDPOINT"] {
            command.env_remove(key);
        }
        for (key, value) in &self.env {
            command.env(key, value);
        }
        let log = self.dir.join("migrate.log");
        let file = append(&log);
        command.stdout(file.try_clone().expect("the log")).stderr(file);
        command
    }

    /// Starts process `index` (again), its output appended to its log.
    fn spawn(&mut self, index: usize) {
        let process = &self.processes[index];
        let mut command = self.command(&process.program, &process.args);
        let file = append(&process.log);
        command.stdout(file.try_clone().expect("the log")).stderr(file);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.processes[index].label));
        let process = &mut self.processes[index];
        process.child = Some(child);
        process.paused = false;
    }

    /// Waits, up to `patience`, until Consul holds two passing instances of each
    /// service and the gateway routes to each (supervising meanwhile).
    pub(crate) async fn until_ready(&mut self, patience: Duration) -> Result<(), String> {
        let http = crate::http();
        let deadline = tokio::time::Instant::now() + patience;
        for service in ["users", "products", "orders", "events"] {
            loop {
                self.supervise();
                let passing = self.passing(service).await;
                if passing == 2 {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(format!(
                        "{service}: {passing} passing instance(s) in Consul after {patience:?}, \
                         not 2; {}",
                        self.log_tail(&format!("{service}-1"))
                    ));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        for path in ["/api/users/none", "/api/products/none", "/api/orders/none", "/api/events"] {
            loop {
                let answer = http.get(format!("{}{path}", self.gateway)).send().await;
                if answer.is_ok_and(|r| r.status() == 404 || r.status() == 200) {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(format!(
                        "the gateway did not route {path} within {patience:?}; {}",
                        self.log_tail("gateway")
                    ));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// How many passing instances of `service` Consul holds for this namespace.
    pub(crate) async fn passing(&self, service: &str) -> usize {
        let url =
            format!("{}/v1/health/service/{}.{service}?passing=true", self.consul, self.namespace);
        match crate::http().get(url).send().await {
            Ok(response) => response.json::<Vec<Value>>().await.map_or(0, |v| v.len()),
            Err(_) => 0,
        }
    }

    /// Starts again every process that exited without being killed by the harness
    /// (after a crash, or because a dependency was down at start-up), and counts it.
    pub(crate) fn supervise(&mut self) {
        for daemon in std::iter::once(&mut self.consul_agent).chain(self.kafka.as_mut()) {
            if let Some(status) = daemon.exited() {
                eprintln!(
                    "faults: {} exited on its own ({status}); starting it again",
                    daemon.label
                );
                *self.exits.entry(daemon.label.to_owned()).or_default() += 1;
                daemon.start();
            }
        }
        for index in 0..self.processes.len() {
            let exited = match self.processes[index].child.as_mut() {
                Some(child) => child.try_wait().ok().flatten(),
                None => None,
            };
            if let Some(status) = exited {
                let label = self.processes[index].label.clone();
                eprintln!("faults: {label} exited on its own ({status}); starting it again");
                *self.exits.entry(label).or_default() += 1;
                self.spawn(index);
            }
        }
    }

    /// SIGKILLs process `index` and reaps it.
    pub(crate) fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.processes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts process `index` again if it is not running.
    pub(crate) fn restart(&mut self, index: usize) {
        if self.processes[index].child.is_none() {
            self.spawn(index);
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, `TERM`) to process `index`.
    pub(crate) fn signal(&mut self, index: usize, signal: &str) {
        let Some(pid) = self.processes[index].pid() else { return };
        send(pid, signal);
        self.processes[index].paused = signal == "STOP";
    }

    /// Every daemon and process running and continued: the end of the faults.
    pub(crate) fn heal(&mut self) {
        self.consul_agent.heal();
        if let Some(kafka) = &mut self.kafka {
            kafka.heal();
        }
        for index in 0..self.processes.len() {
            if self.processes[index].paused {
                self.signal(index, "CONT");
            }
            self.restart(index);
        }
    }

    /// Stops every process with SIGTERM (a clean shutdown deregisters it from Consul).
    pub(crate) async fn stop(mut self) {
        self.heal();
        for index in 0..self.processes.len() {
            self.signal(index, "TERM");
        }
        for process in &mut self.processes {
            if let Some(child) = process.child.as_mut() {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                while child.try_wait().ok().flatten().is_none()
                    && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// The last lines of a process's log (`orders-1`, `gateway`, `migrate`).
    pub(crate) fn log_tail(&self, name: &str) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!("last lines of {name}.log:\n{tail}")
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for process in &mut self.processes {
            if let Some(mut child) = process.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Waits until the Consul agent at `url` answers with a leader.
async fn wait_for_leader(url: &str, agent: &Daemon) {
    let http = crate::http();
    for _ in 0..300 {
        if let Ok(response) = http.get(format!("{url}/v1/status/leader")).send().await
            && let Ok(leader) = response.json::<String>().await
            && !leader.is_empty()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the run's Consul agent at {url} never had a leader; see {}", agent.log.display());
}

/// Waits until something listens on `address`.
async fn wait_for_port(address: &str, daemon: &Daemon) {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(address).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{} never listened on {address}; see {}", daemon.label, daemon.log.display());
}

fn append(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}
