#![cfg(feature = "integration")]
//! The console in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! installed by scripts/services.sh), driven over the W3C WebDriver protocol: every page
//! loads, a dead letter is retried from the browser and reaches its group, and a
//! screenshot of each page is saved (under the target directory, `console-screenshots/`;
//! with `KEEL_CONSOLE_SCREENSHOTS=DIR` there instead, as for docs/img).
//!
//! The WebDriver calls are a few JSON requests over reqwest (below) rather than a
//! WebDriver crate: the test needs six endpoints, and the crates bring a large
//! dependency tree (Unicode segmentation tables, TLS stacks) into every build.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The W3C name of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A WebDriver session on a chromedriver this test started (killed when dropped).
struct Browser {
    http: reqwest::Client,
    session: String,
    driver: tokio::process::Child,
}

impl Browser {
    async fn start() -> Self {
        assert!(
            std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists(),
            "{CHROMEDRIVER} and {CHROMIUM} are missing: run scripts/services.sh (it installs \
             Debian's chromium and chromium-driver)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ready = match http.get(format!("{base}/status")).send().await {
                Ok(response) => {
                    response.json::<Value>().await.ok().is_some_and(|v| v["value"]["ready"] == true)
                }
                Err(_) => false,
            };
            if ready {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900"],
            },
        }}});
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("create a session")
            .json()
            .await
            .expect("json");
        let id = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"));
        Self { http, session: format!("{base}/session/{id}"), driver }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.expect("webdriver").json().await.expect("json");
        assert!(answer["value"].get("error").is_none(), "webdriver {path}: {answer}");
        answer["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url }))).await;
    }

    async fn title(&self) -> String {
        self.call(reqwest::Method::GET, "/title", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn click(&self, css: &str) {
        let found = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        let element =
            found[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}: {found}"));
        self.call(reqwest::Method::POST, &format!("/element/{element}/click"), Some(json!({})))
            .await;
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .expect("a base64 PNG");
        let dir =
            std::env::var_os("KEEL_CONSOLE_SCREENSHOTS").map(PathBuf::from).unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots")
            });
        std::fs::create_dir_all(&dir).expect("screenshot directory");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, &png).expect("write the screenshot");
        assert!(png.starts_with(b"\x89PNG") && png.len() > 5_000, "{name}: not a real screenshot");
        path
    }

    async fn close(mut self) {
        let _ = self.http.delete(&self.session).send().await;
        let _ = self.driver.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_loads_in_chromium_and_a_dead_letter_is_retried_from_it() {
    let f = common::fixture().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let site = format!("http://{}", listener.local_addr().expect("addr"));
    let app = keel_console::router(f.console.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let browser = Browser::start().await;

    let event = format!("event?id={}", f.reserved.id());
    let pages = [
        ("overview", String::new(), "Overview"),
        ("streams", "streams".to_owned(), "Streams by category"),
        ("stream", "stream?id=order-o1".to_owned(), "Stream order-o1"),
        ("log", "log?type=order.placed".to_owned(), "Log"),
        ("event", event, "Event stock.reserved"),
        ("groups", "groups".to_owned(), "Consumer groups"),
        ("dead-letters", "dead-letters?topic=order&group=shipping".to_owned(), "Dead letters"),
        ("projections", "projections".to_owned(), "Projections"),
        ("relays", "relays".to_owned(), "Relays"),
    ];
    for (name, path, title) in &pages {
        browser.goto(&format!("{site}/_keel/console/{path}")).await;
        let got = browser.title().await;
        assert!(got.starts_with(title), "{name}: title {got:?}");
        let saved = browser.screenshot(name).await;
        eprintln!("{name}: {}", saved.display());
    }

    // The event page shows the chain, rendered.
    browser.goto(&format!("{site}/_keel/console/event?id={}", f.reserved.id())).await;
    let source = browser.source().await;
    assert!(source.contains(f.placed.id()) && source.contains(f.confirmed.id()), "the lineage");

    // Retry the dead letter from its page: the group handles it this time.
    let letters = f.bus.list(common::TOPIC, common::GROUP, 10).await.expect("list");
    assert_eq!(letters.len(), 1, "one dead letter to retry");
    f.offline.store(false, std::sync::atomic::Ordering::SeqCst);
    browser.goto(&format!("{site}/_keel/console/dead-letters?topic=order&group=shipping")).await;
    browser.click(&format!("[id=\"retry-{}\"]", letters[0].id.0)).await;
    f.handled_eventually(f.placed.id()).await;
    let source = browser.source().await;
    assert!(source.contains("id=\"notice\"") && source.contains("sent "), "the page says so");
    assert!(source.contains("No dead letters"), "the dead letter is gone");
    browser.screenshot("dead-letters-retried").await;
    browser.close().await;
}
