//! Metrics, alerts and the dashboard: every series the code registers is listed in
//! docs/metrics.md (and nothing else is); the alert rules and the Grafana dashboard use
//! only listed series; `promtool` checks and unit-tests the rules; and a real
//! Prometheus scrapes `keel up` and answers with its lag and dead-letter series.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Rust files of the libraries, services and CLI, without their tests and benches
/// (where test-only series live).
fn sources() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if !matches!(name.as_str(), "tests" | "benches" | "target") {
                    walk(&path, out);
                }
            } else if name.ends_with(".rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    for dir in ["crates", "services", "src", "examples"] {
        walk(&root().join(dir), &mut files);
    }
    files
}

/// The first argument of every `counter!`, `gauge!` and `histogram!` in `text`: a
/// string literal, or a constant's name.
fn macro_names(text: &str) -> Vec<Result<String, String>> {
    let mut names = Vec::new();
    for mac in ["counter!(", "gauge!(", "histogram!("] {
        for (at, _) in text.match_indices(mac) {
            let rest = text[at + mac.len()..].trim_start();
            if let Some(literal) = rest.strip_prefix('"') {
                names.push(Ok(literal[..literal.find('"').unwrap()].to_owned()));
            } else {
                let ident: String =
                    rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                names.push(Err(ident));
            }
        }
    }
    names
}

/// `const NAME: &str = "value";` anywhere in `text`.
fn string_constants(text: &str, into: &mut BTreeMap<String, String>) {
    for line in text.lines() {
        let line = line.trim_start().trim_start_matches("pub ").trim_start_matches("pub(crate) ");
        let Some(rest) = line.strip_prefix("const ") else { continue };
        let Some((name, value)) = rest.split_once(": &str = \"") else { continue };
        if let Some(value) = value.strip_suffix("\";") {
            into.insert(name.trim().to_owned(), value.to_owned());
        }
    }
}

/// Every series name the code registers through the `metrics` macros.
fn registered_series() -> BTreeMap<String, PathBuf> {
    let mut constants = BTreeMap::new();
    let texts: Vec<(PathBuf, String)> =
        sources().into_iter().map(|p| (p.clone(), std::fs::read_to_string(&p).unwrap())).collect();
    for (_, text) in &texts {
        string_constants(text, &mut constants);
    }
    let mut series = BTreeMap::new();
    for (path, text) in &texts {
        for name in macro_names(text) {
            let name = name.unwrap_or_else(|ident| {
                constants.get(&ident).cloned().unwrap_or_else(|| {
                    panic!("{}: a metric named by `{ident}`, not a string constant", path.display())
                })
            });
            series.insert(name, path.clone());
        }
    }
    series
}

/// The series docs/metrics.md lists: the first cell of each table row, in backticks.
fn documented_series() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(root().join("docs/metrics.md")).unwrap();
    doc.lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`'))
        .map(|(name, _)| name.to_owned())
        // Series names only (the table of processes shares the layout).
        .filter(|name| name.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .collect()
}

#[test]
fn every_registered_series_is_documented_and_every_documented_one_exists() {
    let registered = registered_series();
    // The scan finds what is there: the series this task added among them.
    for known in ["keel_consumer_lag_messages", "keel_dead_letters", "http_requests_total"] {
        assert!(registered.contains_key(known), "the scan missed {known}: {registered:?}");
    }
    let documented = documented_series();
    let missing: Vec<String> = registered
        .iter()
        .filter(|(name, _)| !documented.contains(*name))
        .map(|(name, path)| format!("{name} ({})", path.display()))
        .collect();
    assert!(missing.is_empty(), "series missing from docs/metrics.md: {missing:?}");
    let stale: Vec<&String> = documented.iter().filter(|n| !registered.contains_key(*n)).collect();
    assert!(stale.is_empty(), "docs/metrics.md lists series no code registers: {stale:?}");
}

/// The series a PromQL text names (`_bucket`, `_count` and `_sum` belong to their
/// histogram).
fn series_in(promql: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = promql.as_bytes();
    for prefix in ["keel_", "http_"] {
        for (at, _) in promql.match_indices(prefix) {
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            let name: String = promql[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let name = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .map_or(name.clone(), str::to_owned);
            names.insert(name);
        }
    }
    names
}

#[test]
fn the_alerts_and_the_dashboard_use_documented_series() {
    let documented = documented_series();
    let alerts = std::fs::read_to_string(root().join("deploy/prometheus/alerts.yml")).unwrap();
    let expressions: String =
        alerts.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/keel.json")).unwrap(),
    )
    .unwrap();
    let mut queries = String::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            queries.push_str(target["expr"].as_str().unwrap());
            queries.push('\n');
        }
    }
    for (what, text) in [("alerts.yml", expressions), ("keel.json", queries)] {
        let used = series_in(&text);
        assert!(used.len() >= 5, "{what} uses {used:?}");
        let unknown: Vec<&String> = used.difference(&documented).collect();
        assert!(
            unknown.is_empty(),
            "{what} uses series docs/metrics.md does not list: {unknown:?}"
        );
    }
}

/// `promtool`, or `None` with the reason printed: a machine without Debian's
/// `prometheus` package skips, except in CI, where scripts/services.sh installs it.
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|path| path.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "`{name}` is missing in CI: scripts/services.sh installs Debian's prometheus package"
        );
        eprintln!(
            "SKIPPED: `{name}` is not installed (Debian's prometheus package; scripts/services.sh installs it)"
        );
    }
    found
}

#[test]
fn promtool_checks_and_unit_tests_the_alert_rules() {
    let Some(promtool) = tool("promtool") else { return };
    let dir = root().join("deploy/prometheus");
    for args in [["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"]] {
        let output = Command::new(&promtool).args(args).current_dir(&dir).output().unwrap();
        assert!(
            output.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[cfg(feature = "integration")]
mod scrape {
    use std::net::TcpListener;
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use serde_json::Value;

    use super::support::{Running, http, temp_dir};
    use super::tool;

    /// A Prometheus of the test's own, killed when the test ends.
    struct Prometheus {
        child: Child,
        base: String,
    }

    impl Drop for Prometheus {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// Starts Prometheus scraping `target`'s `/_keel/metrics` every second (with the
    /// admin token as a bearer token), and waits until it is ready.
    async fn prometheus(binary: &std::path::Path, target: &str, token: &str) -> Prometheus {
        let dir = temp_dir("prometheus");
        let host = target.trim_start_matches("http://");
        std::fs::write(dir.join("token"), token).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: keel\n    metrics_path: /_keel/metrics\n\
             \x20   authorization:\n      credentials_file: {token}\n\
             \x20   static_configs:\n      - targets: ['{host}']\n",
            token = dir.join("token").display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let prometheus = Prometheus { child, base: format!("http://127.0.0.1:{port}") };
        let ready = format!("{}/-/ready", prometheus.base);
        for _ in 0..300 {
            if http().get(&ready).send().await.is_ok_and(|r| r.status().is_success()) {
                return prometheus;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("prometheus never became ready at {ready}");
    }

    /// Asks Prometheus (`/api/v1/query`) until `done` holds for the result vector.
    async fn query_until(base: &str, query: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let mut last = Vec::new();
        for _ in 0..120 {
            let response = http()
                .get(format!("{base}/api/v1/query"))
                .query(&[("query", query)])
                .send()
                .await
                .unwrap();
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["status"], "success", "{query}: {body}");
            last = body["data"]["result"].as_array().cloned().unwrap_or_default();
            if done(&last) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("Prometheus never answered `{query}` as expected; last answer: {last:?}");
    }

    fn value(sample: &Value) -> f64 {
        sample["value"][1].as_str().unwrap().parse().unwrap()
    }

    /// `keel up` (SQLite, the log bus) with an admin token, scraped by a real
    /// Prometheus with that token. An `order.placed` the products service cannot read
    /// (the README's bad publish) is dead-lettered: Prometheus reports one dead letter
    /// for the group and, once the group is past the event, a lag of 0 for it, beside
    /// the lag of every other consumer group of `keel up`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prometheus_scrapes_the_lag_and_the_dead_letters_of_keel_up() {
        let Some(binary) = tool("prometheus") else { return };
        let dir = temp_dir("scrape");
        let keel = std::path::Path::new(env!("CARGO_BIN_EXE_keel"));
        let token = "a-scrape-token-of-some-length";
        let up = Running::start(keel, &["up"], &dir, &[("KEEL_ADMIN_TOKEN", token)], "gateway");
        let prometheus = prometheus(&binary, &up.base, token).await;

        let published = Command::new(keel)
            .args(["publish", "order.placed", "--stream", "order-1", "--data", r#"{"total":12}"#])
            .current_dir(&dir)
            .env_remove("KEEL_DATABASE_URL")
            .output()
            .unwrap();
        assert!(published.status.success(), "{}", String::from_utf8_lossy(&published.stderr));

        let group = r#"topic="order", group="products-stock""#;
        let dead = query_until(&prometheus.base, &format!("keel_dead_letters{{{group}}}"), |r| {
            r.len() == 1 && value(&r[0]) == 1.0
        })
        .await;
        assert_eq!(dead[0]["metric"]["job"], "keel");
        query_until(&prometheus.base, &format!("keel_consumer_lag_messages{{{group}}}"), |r| {
            r.len() == 1 && value(&r[0]) == 0.0
        })
        .await;
        // Every consumer group of `keel up` has its lag series.
        let all =
            query_until(&prometheus.base, "keel_consumer_lag_messages", |r| r.len() >= 2).await;
        let groups: Vec<&str> =
            all.iter().map(|s| s["metric"]["group"].as_str().unwrap()).collect();
        assert!(groups.contains(&"products-stock"), "{groups:?}");
        // The handler ran once, and failed.
        query_until(
            &prometheus.base,
            &format!("keel_handler_duration_seconds_count{{{group}, outcome=\"error\"}}"),
            |r| r.len() == 1 && value(&r[0]) >= 1.0,
        )
        .await;
        drop(prometheus);
        up.stop();
    }
}
