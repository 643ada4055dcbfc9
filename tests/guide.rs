//! The guide's acceptance test: follow docs/guide.md word for word in a crate made with
//! `cargo new` outside the repository, depending on `keel` by path with only `sqlite`
//! and `http`; it builds, runs, serves its read model and rebuilds it, and its
//! dependency tree has no Kafka or RabbitMQ client.
//!
//! The crate's build goes to `<target>/guide-crate` (the target directory this test
//! runs from), so only the first run is a cold build. The workspace's Cargo.lock is
//! copied into the crate, so it resolves to the versions the workspace is tested with
//! and builds offline. The times of each step are printed (`--nocapture`, or nextest's
//! output of a passing test with `--success-output immediate`).
#![allow(clippy::unwrap_used)]

mod support;

#[cfg(feature = "integration")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_crate_follows_the_guide_word_for_word() {
    use std::path::Path;
    use std::process::Command;
    use std::time::Instant;

    use serde_json::json;
    use support::{Running, blocks, eventually, post, rust_blocks, temp_dir};

    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let guide = std::fs::read_to_string(repo.join("docs/guide.md")).unwrap();
    let started = Instant::now();

    // `cargo new tasks`, outside the repository.
    let dir = temp_dir("guide-crate");
    assert!(!dir.starts_with(repo), "the crate must live outside the repository");
    let made = Command::new(env!("CARGO"))
        .args(["new", "--vcs", "none", "tasks"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(made.status.success(), "cargo new: {}", String::from_utf8_lossy(&made.stderr));
    let krate = dir.join("tasks");

    // Section 1: the dependencies, with the path to this clone.
    let toml = blocks(&guide, "toml");
    let [dependencies] = toml.as_slice() else { panic!("the guide has one toml block: {toml:?}") };
    assert!(dependencies.starts_with("[dependencies]\n"), "{dependencies}");
    let placeholder = "path = \"../keel/crates/keel\"";
    assert!(dependencies.contains(placeholder), "{dependencies}");
    let facade = repo.join("crates/keel");
    let dependencies =
        dependencies.replace(placeholder, &format!("path = {:?}", facade.display().to_string()));
    let manifest = std::fs::read_to_string(krate.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("[dependencies]\n"), "{manifest}");
    std::fs::write(krate.join("Cargo.toml"), manifest.replace("[dependencies]\n", &dependencies))
        .unwrap();
    std::fs::copy(repo.join("Cargo.lock"), krate.join("Cargo.lock")).unwrap();

    // Sections 2 to 7: the program.
    std::fs::write(krate.join("src/main.rs"), rust_blocks(&guide)).unwrap();

    let target = std::env::current_exe().unwrap().ancestors().nth(3).unwrap().join("guide-crate");
    let cargo = |args: &[&str]| {
        let output = Command::new(env!("CARGO"))
            .args(args)
            .arg("--offline")
            .current_dir(&krate)
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("RUSTFLAGS")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "cargo {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let build_started = Instant::now();
    cargo(&["build"]);
    let build_time = build_started.elapsed();

    // The lean build: no Kafka or RabbitMQ client, no OpenTelemetry exporter, no
    // PostgreSQL driver.
    let tree = cargo(&["tree", "-e", "normal", "--prefix", "none"]);
    let has = |name: &str| tree.lines().any(|line| line.starts_with(&format!("{name} v")));
    for banned in ["rdkafka", "rdkafka-sys", "lapin", "opentelemetry-otlp", "sqlx-postgres"] {
        assert!(!has(banned), "`{banned}` is in the dependency tree of keel with sqlite and http");
    }

    // Section 7, "On the embedded default": run it with no settings but a port, in
    // the crate's directory (keel-data/keel.db).
    let run_started = Instant::now();
    let binary = target.join("debug/tasks");
    let tasks = Running::start(&binary, &[], &krate, &[], "tasks listening on");
    let (status, task) = post(&tasks.url("/tasks"), json!({ "title": "Write the guide" })).await;
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_str().unwrap();
    let done = support::http()
        .post(tasks.url(&format!("/tasks/{id}/complete")))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(done.as_u16(), 204);
    let (status, problem) = post(&tasks.url("/tasks"), json!({ "title": "" })).await;
    assert_eq!((status, &problem["errors"][0]["pointer"]), (422, &json!("/title")), "{problem}");
    let stats = eventually(&tasks.url("/stats"), |v| v["done"] == 1).await;
    assert_eq!(stats, json!({ "open": 0, "done": 1 }));
    let emails = eventually(&tasks.url("/emails"), |v| v != &json!([])).await;
    assert_eq!(emails, json!(["Well done: Write the guide"]));
    tasks.stop();
    assert!(krate.join("keel-data/keel.db").exists(), "the embedded default's file");

    // Section 8: stop it, rebuild the projection from the log.
    let rebuilt = Command::new(&binary)
        .args(["projections", "rebuild", "task-stats"])
        .current_dir(&krate)
        .output()
        .unwrap();
    assert!(rebuilt.status.success(), "{}", String::from_utf8_lossy(&rebuilt.stderr));
    assert_eq!(
        String::from_utf8_lossy(&rebuilt.stdout),
        "rebuilt projection task-stats from 2 event(s)\n"
    );

    eprintln!(
        "following the guide: {:.1?} in all; cargo build {:.1?}; run, requests and rebuild {:.1?}",
        started.elapsed(),
        build_time,
        run_started.elapsed()
    );
}
