//! Keel gateway vs the reverse proxies users would pick instead (nginx, HAProxy,
//! Caddy), side by side, with wrk.
//!
//! Starts a tiny hyper upstream (a 13-byte body), the Keel gateway (release build,
//! `cargo bench` makes one), nginx (`worker_processes auto`, upstream keepalive),
//! HAProxy (threads = CPUs, `http-reuse always`) and Caddy (`reverse_proxy`), then runs
//! the same wrk load against the upstream directly, each peer and Keel and prints
//! requests/s, p50 and p99, and Keel's ratios to each peer. Needs `wrk`, `nginx`,
//! `haproxy` and `caddy` (Debian: `wrk`, `nginx-light`, `haproxy`, `caddy`).
//!
//! `cargo bench -p keel-gateway --bench proxy`; tune with KEEL_BENCH_DURATION (seconds,
//! default 10), KEEL_BENCH_CONNECTIONS (default 64), KEEL_BENCH_THREADS (default 2),
//! KEEL_BENCH_GATEWAY_THREADS (default: the number of CPUs, as nginx's `auto`; also the
//! number of per-core workers), KEEL_BENCH_SKIP_MT (leave out the multi-thread row).
//! The CPU/request column is user + system time of the target's threads (or the peer's
//! processes) during the measured run, from /proc, over the requests served;
//! the user and system parts follow in brackets (the kernel's work per request is the
//! same for every proxy doing the same syscalls, so user time is what tells them apart).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use keel_gateway::{Gateway, GatewayConfig, PerCoreListeners};
use tokio::net::TcpListener;

// As the `keel` binary, so that the per-core row measures what ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The names of `Gateway::serve_per_core`'s worker threads start with this.
const PER_CORE_THREAD: &str = "keel-gw-";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let duration = env_or("KEEL_BENCH_DURATION", 10);
    let connections = env_or("KEEL_BENCH_CONNECTIONS", 64);
    let threads = env_or("KEEL_BENCH_THREADS", 2);
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let gateway_threads =
        usize::try_from(env_or("KEEL_BENCH_GATEWAY_THREADS", cpus as u64)).unwrap_or(cpus);
    for tool in ["wrk", "nginx", "haproxy", "caddy"] {
        if Command::new("which")
            .arg(tool)
            .stdout(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            eprintln!("`{tool}` not found: apt-get install -y wrk nginx-light haproxy caddy");
            std::process::exit(1);
        }
    }

    let upstream_rt = runtime(cpus, "upstream");
    let upstream = upstream_rt.block_on(async { TcpListener::bind("127.0.0.1:0").await.unwrap() });
    let upstream_addr = upstream.local_addr().unwrap();
    upstream_rt.spawn(serve_upstream(upstream));

    let gateway_rt = runtime(gateway_threads, "gateway");
    let gateway_addr = gateway_rt.block_on(async {
        let config = GatewayConfig::static_routes(&[&format!("/=http://{upstream_addr}")]).unwrap();
        let gateway = Gateway::without_registry(config).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(gateway.serve(listener, std::future::pending()));
        addr
    });

    // The shipped per-core model (`keel gateway`): one single-threaded runtime per
    // CPU behind SO_REUSEPORT listeners on one port (nginx's worker model).
    let per_core_addr = gateway_rt.block_on(async {
        let config = GatewayConfig::static_routes(&[&format!("/=http://{upstream_addr}")]).unwrap();
        let gateway = Gateway::without_registry(config).unwrap();
        let workers = std::num::NonZeroUsize::new(gateway_threads.max(1)).unwrap();
        let listeners = PerCoreListeners::bind("127.0.0.1:0".parse().unwrap(), workers).unwrap();
        let addr = listeners.local_addr();
        tokio::spawn(gateway.serve_per_core(listeners, std::future::pending()));
        addr
    });
    wait_for(per_core_addr);

    let peers = [
        Peer::nginx(upstream_addr),
        Peer::haproxy(upstream_addr, cpus),
        Peer::caddy(upstream_addr),
    ];

    println!(
        "wrk -t{threads} -c{connections} -d{duration}s, {cpus} CPUs, gateway runtime {gateway_threads} threads, nginx worker_processes auto, haproxy nbthread {cpus}"
    );
    // What each target's CPU time is charged to: the bench's own threads by name, or
    // the peer's processes.
    let mut targets = vec![("direct (upstream)", upstream_addr, Cpu::Threads("upstream"))];
    targets.extend(peers.iter().map(|peer| (peer.name, peer.addr, peer.cpu())));
    targets.push(("keel gateway", gateway_addr, Cpu::Threads("gateway")));
    targets.push(("keel gateway, per-core runtimes", per_core_addr, Cpu::Threads(PER_CORE_THREAD)));
    // KEEL_BENCH_SKIP_MT=1 leaves out the multi-thread gateway row (faster A/B runs).
    let skip_mt = std::env::var_os("KEEL_BENCH_SKIP_MT").is_some();
    let mut results = Vec::new();
    for (name, addr, cpu) in targets {
        if skip_mt && name == "keel gateway" {
            continue;
        }
        let url = format!("http://{addr}/bench/path?q=1");
        // Warm up pools and caches, then measure.
        let _ = wrk(&url, threads, connections, 2);
        let before = cpu.ticks();
        let mut result = wrk(&url, threads, connections, duration);
        let after = cpu.ticks();
        // /proc counts in USER_HZ ticks, 100 per second on Linux.
        let per_request = |ticks: u64| ticks as f64 * 10_000.0 / result.requests.max(1) as f64;
        result.user_us_per_request = per_request(after.user.saturating_sub(before.user));
        result.system_us_per_request = per_request(after.system.saturating_sub(before.system));
        result.cpu_us_per_request = result.user_us_per_request + result.system_us_per_request;
        results.push((name, result));
    }
    drop(peers);

    println!();
    println!("| target | requests/s | p50 | p99 | CPU/request (user + system) | non-2xx |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, r) in &results {
        println!(
            "| {name} | {:.0} | {} | {} | {:.1} us ({:.1} + {:.1}) | {} |",
            r.rps,
            fmt_latency(r.p50_us),
            fmt_latency(r.p99_us),
            r.cpu_us_per_request,
            r.user_us_per_request,
            r.system_us_per_request,
            r.non_2xx
        );
    }
    let (keel, others): (Vec<_>, Vec<_>) =
        results.iter().partition(|(name, _)| name.starts_with("keel"));
    println!();
    for (name, keel) in &keel {
        for (peer, theirs) in others.iter().filter(|(name, _)| !name.starts_with("direct")) {
            println!(
                "{name} / {peer}: requests/s x{:.2}, p99 x{:.2}, CPU/request x{:.2} (lower is better)",
                keel.rps / theirs.rps.max(1.0),
                keel.p99_us / theirs.p99_us.max(1.0),
                keel.cpu_us_per_request / theirs.cpu_us_per_request.max(0.001)
            );
        }
    }
}

/// Where a target's CPU time is counted.
enum Cpu {
    /// This process's threads whose name starts with the given prefix.
    Threads(&'static str),
    /// The processes whose parent is the given one (nginx's workers).
    ChildrenOf(u32),
    /// One process, all its threads (HAProxy, Caddy).
    Process(u32),
}

impl Cpu {
    /// User and system time so far, in ticks.
    fn ticks(&self) -> Ticks {
        match self {
            Cpu::Threads(prefix) => std::fs::read_dir("/proc/self/task")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
                .filter_map(|stat| {
                    parse_stat(&stat).filter(|s| s.comm.starts_with(prefix)).map(|s| s.ticks)
                })
                .sum(),
            Cpu::ChildrenOf(parent) => std::fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|proc| std::fs::read_to_string(proc.path().join("stat")).ok())
                .filter_map(|stat| parse_stat(&stat).filter(|s| s.ppid == *parent).map(|s| s.ticks))
                .sum(),
            Cpu::Process(pid) => std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| parse_stat(&stat).map(|s| s.ticks))
                .unwrap_or_default(),
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Ticks {
    user: u64,
    system: u64,
}

impl std::iter::Sum for Ticks {
    fn sum<I: Iterator<Item = Ticks>>(iter: I) -> Self {
        iter.fold(Ticks::default(), |a, b| Ticks {
            user: a.user + b.user,
            system: a.system + b.system,
        })
    }
}

struct Stat<'a> {
    comm: &'a str,
    ppid: u32,
    ticks: Ticks,
}

/// `pid (comm) state ppid ... utime stime ...` (proc(5)); comm may hold spaces.
fn parse_stat(stat: &str) -> Option<Stat<'_>> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = &stat[open + 1..close];
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // fields[0] is the state (field 3), so field n is fields[n - 3].
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Stat { comm, ppid, ticks: Ticks { user: utime, system: stime } })
}

fn runtime(threads: usize, name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap()
}

async fn serve_upstream(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|_req: Request<hyper::body::Incoming>| async {
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("content-type", "text/plain")
                        .body(Full::new(Bytes::from_static(b"hello, world\n")))
                        .unwrap(),
                )
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// A peer reverse proxy, run from its own config in a temporary directory, stopped
/// (and its directory removed) when dropped.
struct Peer {
    name: &'static str,
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Peer {
    /// A fresh directory for a peer's config and state.
    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("keel-bench-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Starts the peer with its output in `dir/stdout.log` and `dir/stderr.log`; the
    /// latter is shown if it never listens.
    fn spawn(name: &'static str, dir: PathBuf, addr: SocketAddr, command: &mut Command) -> Self {
        let child = command
            .stdout(std::fs::File::create(dir.join("stdout.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        if !listening(addr) {
            let output = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
            panic!("{name} never listened on {addr}:\n{output}");
        }
        Self { name, child, dir, addr }
    }

    /// nginx: `worker_processes auto`, keep-alive to the upstream, the same forwarding
    /// headers Keel sets.
    fn nginx(upstream: SocketAddr) -> Self {
        let dir = Self::dir("nginx");
        let addr = free_port();
        let d = dir.display();
        let conf = format!(
            "worker_processes auto;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
               upstream backend {{ server {upstream}; keepalive 64; }}\n\
               server {{\n\
                 listen {addr};\n\
                 location / {{\n\
                   proxy_pass http://backend;\n\
                   proxy_http_version 1.1;\n\
                   proxy_set_header Connection \"\";\n\
                   proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
                   proxy_set_header X-Forwarded-Proto $scheme;\n\
                   proxy_set_header X-Forwarded-Host $host;\n\
                 }}\n\
               }}\n\
             }}\n"
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let prefix = d.to_string();
        Self::spawn(
            "nginx",
            dir,
            addr,
            Command::new("nginx")
                .args(["-p", &prefix, "-c"])
                .arg(&conf_path)
                .args(["-g", "daemon off;"]),
        )
    }

    /// HAProxy: one process with a thread per CPU, upstream connections reused across
    /// requests (`http-reuse always`, HAProxy's nearest to nginx's keep-alive pool),
    /// X-Forwarded-For added.
    fn haproxy(upstream: SocketAddr, cpus: usize) -> Self {
        let dir = Self::dir("haproxy");
        let addr = free_port();
        let conf = format!(
            "global\n\
               nbthread {cpus}\n\
               maxconn 8192\n\
             defaults\n\
               mode http\n\
               timeout connect 5s\n\
               timeout client 30s\n\
               timeout server 30s\n\
               http-reuse always\n\
               option forwardfor\n\
             frontend bench\n\
               bind {addr}\n\
               http-request set-header X-Forwarded-Proto http\n\
               default_backend upstream\n\
             backend upstream\n\
               server upstream {upstream}\n"
        );
        let conf_path = dir.join("haproxy.cfg");
        std::fs::write(&conf_path, conf).unwrap();
        Self::spawn(
            "haproxy",
            dir,
            addr,
            Command::new("haproxy").arg("-db").arg("-f").arg(&conf_path),
        )
    }

    /// Caddy: `reverse_proxy` (keep-alive and X-Forwarded-* are its defaults), no admin
    /// endpoint, no automatic HTTPS, state in the temporary directory.
    fn caddy(upstream: SocketAddr) -> Self {
        let dir = Self::dir("caddy");
        let addr = free_port();
        let conf = format!(
            "{{\n\
               admin off\n\
               auto_https off\n\
             }}\n\
             http://{addr} {{\n\
               reverse_proxy {upstream}\n\
             }}\n"
        );
        let conf_path = dir.join("Caddyfile");
        std::fs::write(&conf_path, conf).unwrap();
        let mut command = Command::new("caddy");
        command
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&conf_path)
            .env("XDG_DATA_HOME", &dir)
            .env("XDG_CONFIG_HOME", &dir)
            .env("HOME", &dir);
        Self::spawn("caddy", dir, addr, &mut command)
    }

    /// Where this peer's CPU time is counted: nginx's workers are the master's
    /// children; HAProxy and Caddy are one process each.
    fn cpu(&self) -> Cpu {
        match self.name {
            "nginx" => Cpu::ChildrenOf(self.child.id()),
            _ => Cpu::Process(self.child.id()),
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if self.name == "nginx" {
            // `nginx -s stop` signals our child master, which stops its workers.
            let _ = Command::new("nginx")
                .args(["-p", &self.dir.display().to_string(), "-c"])
                .arg(self.dir.join("nginx.conf"))
                .args(["-s", "stop"])
                .stderr(Stdio::null())
                .status();
        } else {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn wait_for(addr: SocketAddr) {
    assert!(listening(addr), "nothing listens on {addr}");
}

/// Whether something listens on `addr` within 20 s (a peer starting on a busy machine).
// The bench's main thread, not a tokio worker: blocking is fine here.
#[allow(clippy::disallowed_methods)]
fn listening(addr: SocketAddr) -> bool {
    for _ in 0..400 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[derive(Debug, Default)]
struct WrkResult {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    non_2xx: u64,
    requests: u64,
    cpu_us_per_request: f64,
    user_us_per_request: f64,
    system_us_per_request: f64,
}

fn wrk(url: &str, threads: u64, connections: u64, seconds: u64) -> WrkResult {
    let output = Command::new("wrk")
        .args([
            &format!("-t{threads}"),
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            url,
        ])
        .output()
        .expect("wrk runs");
    parse_wrk(&String::from_utf8_lossy(&output.stdout))
}

fn parse_wrk(text: &str) -> WrkResult {
    let mut result = WrkResult::default();
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("Requests/sec:") => {
                result.rps = words.next().and_then(|v| v.parse().ok()).unwrap_or(0.0)
            }
            Some("50%") => result.p50_us = words.next().map(parse_duration_us).unwrap_or(0.0),
            Some("99%") => result.p99_us = words.next().map(parse_duration_us).unwrap_or(0.0),
            Some(n) if line.contains(" requests in ") => result.requests = n.parse().unwrap_or(0),
            Some("Non-2xx") => {
                result.non_2xx = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0)
            }
            _ => {}
        }
    }
    result
}

/// wrk prints `512.00us`, `1.23ms` or `2.01s`.
fn parse_duration_us(text: &str) -> f64 {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1_000.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000_000.0)
    } else {
        (text, 1.0)
    };
    number.parse::<f64>().unwrap_or(0.0) * factor
}

fn fmt_latency(us: f64) -> String {
    if us >= 1000.0 { format!("{:.2} ms", us / 1000.0) } else { format!("{us:.0} us") }
}
