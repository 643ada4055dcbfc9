//! What the example and guide tests share: processes that print their URL, HTTP
//! calls, waiting for a read model, the guide's code blocks.
// Each test file uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// Every ```` ```rust ```` block of a markdown text, joined by newlines: the guide's
/// program.
pub(crate) fn rust_blocks(markdown: &str) -> String {
    blocks(markdown, "rust").join("\n")
}

/// The blocks of a markdown text fenced as ```` ```lang ````.
pub(crate) fn blocks(markdown: &str, lang: &str) -> Vec<String> {
    let fence = format!("```{lang}");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.split_inclusive('\n') {
        match &mut current {
            None if line.trim_end() == fence => current = Some(String::new()),
            None => {}
            Some(_) if line.trim_end() == "```" => blocks.push(current.take().unwrap()),
            Some(block) => block.push_str(line),
        }
    }
    blocks
}

/// A process of the test, killed if the test ends without stopping it.
pub(crate) struct Running {
    pub(crate) child: Child,
    pub(crate) base: String,
}

impl Running {
    /// Starts `program` in `dir` with `env` and reads its stdout until a line holds
    /// `marker` followed by a URL (`... listening on http://ADDR`, `gateway   http://ADDR`).
    pub(crate) fn start(
        program: &Path,
        args: &[&str],
        dir: &Path,
        env: &[(&str, &str)],
        marker: &str,
    ) -> Self {
        let mut command = Command::new(program);
        command
            .args(args)
            .current_dir(dir)
            .env("KEEL_LISTEN_ADDR", "127.0.0.1:0")
            .env("KEEL_GATEWAY_ADDR", "127.0.0.1:0")
            .env_remove("KEEL_DATABASE_URL")
            .env_remove("KEEL_BUS_URL")
            .env_remove("KEEL_CONSUL_URL")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        let base = read_url_after(&mut child, marker)
            .unwrap_or_else(|| panic!("{} never printed `{marker}`", program.display()));
        Self { child, base }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Waits until every example service answers through the gateway `keel up` printed
    /// (its URL comes before the services have registered; 404 for an unknown id is an
    /// answer, 503 "no healthy upstream instance" is not yet).
    pub(crate) async fn until_services_answer(&self) {
        let client = http();
        for path in ["/api/users/none", "/api/products/none", "/api/orders/none", "/api/events"] {
            let mut last = None;
            let answered = 'polling: {
                for _ in 0..600 {
                    match client.get(self.url(path)).send().await {
                        Ok(r) if r.status() == 404 || r.status() == 200 => break 'polling true,
                        other => last = Some(other.map(|r| r.status())),
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                false
            };
            assert!(answered, "{path} never answered: {last:?}");
        }
    }

    /// SIGTERM, then the exit status must be a success (a clean, drained shutdown).
    pub(crate) fn stop(mut self) {
        let sent =
            Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(sent.success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "stopped with {status}");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `child`'s stdout up to the line holding `marker`, returns the `http://...`
/// URL on it, and keeps draining the rest in the background.
pub(crate) fn read_url_after(child: &mut Child, marker: &str) -> Option<String> {
    use std::io::BufRead as _;
    let stdout = child.stdout.take()?;
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut url = None;
    for line in lines.by_ref() {
        let line = line.ok()?;
        if line.contains(marker)
            && let Some(at) = line.find("http://")
        {
            url = Some(line[at..].split_whitespace().next()?.trim_end_matches('/').to_owned());
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    url
}

pub(crate) fn temp_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "keel-examples-{label}-{}-{}",
        std::process::id(),
        nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub(crate) fn nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// GETs `url` until `done` holds for its JSON body (a read model follows the log a
/// moment behind); fails after a minute with the last answer.
pub(crate) async fn eventually(url: &str, done: impl Fn(&Value) -> bool) -> Value {
    let client = http();
    let mut last = Value::Null;
    for _ in 0..600 {
        if let Ok(response) = client.get(url).send().await
            && response.status().is_success()
        {
            last = response.json().await.unwrap();
            if done(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} never reached the expected state; last answer: {last}");
}

pub(crate) async fn post(url: &str, body: Value) -> (u16, Value) {
    let response = http().post(url).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}
