//! The `keel` command line against a real log: SQLite always, PostgreSQL with the
//! `integration` feature.

use std::path::PathBuf;
use std::process::{Command, Output};

struct Keel {
    dir: PathBuf,
    database_url: String,
}

impl Keel {
    fn sqlite() -> Self {
        let dir =
            std::env::temp_dir().join(format!("keel-cli-{}-{}", std::process::id(), uuid_like()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self { database_url: format!("sqlite://{}/keel.db", dir.display()), dir }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(args)
            .current_dir(&self.dir)
            .env("KEEL_DATABASE_URL", &self.database_url)
            .env_remove("KEEL_BUS_URL")
            .output()
            .expect("run keel")
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "keel {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf8")
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(self.ok(&all).trim()).expect("JSON output")
    }
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )
}

fn exercise(keel: &Keel) {
    keel.ok(&["migrate"]);
    let first =
        keel.json(&["publish", "order.placed", "--stream", "order-1", "--data", r#"{"total":12}"#]);
    assert_eq!(first["version"], 1);
    keel.json(&["publish", "order.placed", "--stream", "order-2", "--data", r#"{"total":7}"#]);
    let third = keel.json(&["publish", "order.confirmed", "--stream", "order-1", "--data", "{}"]);
    assert_eq!(third["version"], 2);

    // stdout gets one CloudEvents JSON object a line.
    let lines: Vec<serde_json::Value> =
        keel.ok(&["replay"]).lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["specversion"], "1.0");
    assert_eq!(lines[0]["data"]["total"], 12);
    assert_eq!(lines[2]["subject"], "order-1");
    let position = lines[0]["position"].as_u64().expect("position");
    let from = keel.ok(&["replay", "--from", &position.to_string(), "--type", "order.confirmed"]);
    assert_eq!(from.lines().count(), 1);
    let by_stream = keel.ok(&["replay", "--stream", "order-2"]);
    assert_eq!(by_stream.lines().count(), 1);
    let future = keel.ok(&["replay", "--since", "2999-01-01T00:00:00Z"]);
    assert_eq!(future.lines().count(), 0);

    let rebuilt = keel.json(&["projections", "rebuild", "streams"]);
    assert_eq!(rebuilt["applied"], 3);
    let status = keel.json(&["status"]);
    assert_eq!(status["head"], third["position"]);
    let checkpoints = status["checkpoints"].as_array().expect("checkpoints");
    assert!(checkpoints.iter().any(|c| c["name"] == "projection:streams" && c["lag"] == 0));

    let tail = keel.ok(&["tail", "-n", "1"]);
    assert!(tail.contains("order.confirmed"), "{tail}");
}

#[test]
fn commands_work_on_sqlite() {
    exercise(&Keel::sqlite());
}

#[test]
fn bad_arguments_fail_with_a_clear_message() {
    let keel = Keel::sqlite();
    for (args, expected) in [
        (&["publish", "t", "--stream", "s-1", "--data", "{oops"][..], "--data is not valid JSON"),
        (&["publish", "t", "--stream", "", "--data", "{}"][..], "--stream"),
        (&["replay", "--since", "yesterday"][..], "not an RFC 3339 time"),
        (&["replay", "--into", "nowhere"][..], "expected stdout, bus or projection:NAME"),
        (&["projections", "rebuild", "nope"][..], "unknown projection `nope`"),
        (&["replay", "--into", "bus"][..], "needs KEEL_BUS_URL"),
    ] {
        let output = keel.run(args);
        assert!(!output.status.success(), "keel {args:?} should fail");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "keel {args:?}: {stderr}");
    }
}

#[cfg(feature = "integration")]
#[test]
fn commands_work_on_postgres() {
    let admin = std::env::var("KEEL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("keel_t_cli_{}", uuid_like());
    let status = Command::new("psql")
        .args([&admin, "-qc", &format!("CREATE DATABASE {name}")])
        .status()
        .expect("psql");
    assert!(status.success());
    let (base, _) = admin.rsplit_once('/').expect("database in URL");
    let mut keel = Keel::sqlite();
    keel.database_url = format!("{base}/{name}");
    exercise(&keel);
}

#[cfg(feature = "integration")]
#[test]
fn replay_into_kafka_and_dead_letter_tooling() {
    let keel = Keel::sqlite();
    keel.ok(&["publish", "order.placed", "--stream", "order-1", "--data", r#"{"total":12}"#]);
    keel.ok(&["publish", "order.placed", "--stream", "order-2", "--data", r#"{"total":7}"#]);
    let brokers =
        std::env::var("KEEL_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let bus = format!("kafka://{brokers}");
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(args)
            .current_dir(&keel.dir)
            .env("KEEL_DATABASE_URL", &keel.database_url)
            .env("KEEL_BUS_URL", &bus)
            .output()
            .expect("run keel");
        assert!(
            output.status.success(),
            "keel {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&output.stdout).expect("JSON")
    };
    let replayed = run(&["replay", "--into", "bus", "--json"]);
    assert_eq!(replayed["replayed"], 2);
    let group = format!("cli-{}", uuid_like());
    let letters = run(&["dlq", "list", "--topic", "order", "--group", &group, "--json"]);
    assert_eq!(letters["dead_letters"].as_array().map(Vec::len), Some(0));
    let purged = run(&["dlq", "purge", "--topic", "order", "--group", &group, "--json"]);
    assert_eq!(purged["purged"], 0);
}
