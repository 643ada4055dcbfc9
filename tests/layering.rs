//! The workspace's layering rules, read from `cargo metadata`: any arrow that breaks one
//! fails here, so they stay true.
//!
//! - no library crate (crates/*) depends on anything under services/;
//! - keel-core depends on no other keel crate (but its own derive macro, keel-derive,
//!   a proc-macro that depends on no keel crate either);
//! - keel-registry does not depend on keel-bus, whatever its features;
//! - keel-bus reaches no OpenTelemetry SDK or OTLP exporter unless its `otel` feature
//!   is on;
//! - keel-logbus reaches neither SQL store unless asked (`sqlite` / `postgres`), and one
//!   store's feature does not bring the other's driver;
//! - a user's `keel` with only `sqlite` and `http` compiles no rdkafka, lapin,
//!   opentelemetry-otlp or sqlx-postgres.
//!
//! "Reaches" is what cargo would compile as normal dependencies for that package with
//! those features: a small feature resolver below walks the declared dependencies and
//! features of every package (`dep:x`, `x/f`, `x?/f`, default features, optional deps)
//! to a fixed point, the way cargo unifies them. Each rule has a positive control (the
//! forbidden crate *is* reached when the feature is on), so a resolver that saw nothing
//! could not pass.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// A declared dependency of a package, resolved to the package(s) it names.
#[derive(Debug)]
struct Dep {
    /// The name features use for it (its rename, else the package name).
    key: String,
    /// Package name.
    name: String,
    /// `normal`, `dev` or `build`.
    kind: String,
    optional: bool,
    default_features: bool,
    features: Vec<String>,
    /// Resolved package ids (more than one only if two versions share a name).
    ids: Vec<String>,
}

#[derive(Debug)]
struct Package {
    name: String,
    manifest: String,
    features: BTreeMap<String, Vec<String>>,
    deps: Vec<Dep>,
}

struct Workspace {
    packages: BTreeMap<String, Package>,
    root: String,
}

impl Workspace {
    fn load() -> Self {
        let root = env!("CARGO_MANIFEST_DIR");
        let output = Command::new(env!("CARGO"))
            .args(["metadata", "--format-version", "1", "--all-features", "--locked"])
            .current_dir(root)
            .output()
            .expect("run cargo metadata");
        assert!(
            output.status.success(),
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let metadata: Value = serde_json::from_slice(&output.stdout).unwrap();
        let names: BTreeMap<String, String> = metadata["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["id"].as_str().unwrap().to_owned(), p["name"].as_str().unwrap().to_owned()))
            .collect();
        // (package id, dependency package name, kind) -> resolved ids.
        let mut resolved: BTreeMap<(String, String, String), Vec<String>> = BTreeMap::new();
        for node in metadata["resolve"]["nodes"].as_array().unwrap() {
            let id = node["id"].as_str().unwrap();
            for dep in node["deps"].as_array().unwrap() {
                let pkg = dep["pkg"].as_str().unwrap();
                for kind in dep["dep_kinds"].as_array().unwrap() {
                    let kind = kind["kind"].as_str().unwrap_or("normal").to_owned();
                    resolved
                        .entry((id.to_owned(), names[pkg].clone(), kind))
                        .or_default()
                        .push(pkg.to_owned());
                }
            }
        }
        let mut packages = BTreeMap::new();
        for p in metadata["packages"].as_array().unwrap() {
            let id = p["id"].as_str().unwrap().to_owned();
            let features = p["features"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(name, list)| {
                    let list = list.as_array().unwrap();
                    (name.clone(), list.iter().map(|f| f.as_str().unwrap().to_owned()).collect())
                })
                .collect();
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| {
                    let name = d["name"].as_str().unwrap().to_owned();
                    let kind = d["kind"].as_str().unwrap_or("normal").to_owned();
                    let ids = resolved
                        .get(&(id.clone(), name.clone(), kind.clone()))
                        .cloned()
                        .unwrap_or_default();
                    Dep {
                        key: d["rename"].as_str().unwrap_or(&name).to_owned(),
                        name,
                        kind,
                        optional: d["optional"].as_bool().unwrap(),
                        default_features: d["uses_default_features"].as_bool().unwrap(),
                        features: d["features"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|f| f.as_str().unwrap().to_owned())
                            .collect(),
                        ids,
                    }
                })
                .collect();
            let package = Package {
                name: p["name"].as_str().unwrap().to_owned(),
                manifest: p["manifest_path"].as_str().unwrap().to_owned(),
                features,
                deps,
            };
            packages.insert(id, package);
        }
        let root = metadata["workspace_root"].as_str().unwrap().to_owned();
        Self { packages, root }
    }

    fn member(&self, name: &str) -> &str {
        let (id, _) = self
            .packages
            .iter()
            .find(|(_, p)| p.name == name && p.manifest.starts_with(&self.root))
            .unwrap_or_else(|| panic!("no workspace package {name}"));
        id
    }

    /// The names of every package compiled as a normal dependency of workspace package
    /// `name` built with `features` (plus its default features if `default`), itself
    /// included.
    fn reached(&self, name: &str, default: bool, features: &[&str]) -> BTreeSet<String> {
        let mut enabled: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut active: BTreeSet<(String, String)> = BTreeSet::new();
        let root = self.member(name).to_owned();
        let mut asked: BTreeSet<String> = features.iter().map(|f| (*f).to_owned()).collect();
        if default && self.packages[&root].features.contains_key("default") {
            asked.insert("default".to_owned());
        }
        enabled.insert(root, asked);
        loop {
            let before = (enabled.clone(), active.clone());
            for (id, features) in before.0.clone() {
                let package = &self.packages[&id];
                for feature in &features {
                    self.expand(&id, feature, &mut enabled, &mut active);
                }
                for dep in package.deps.iter().filter(|d| d.kind == "normal") {
                    if dep.optional && !active.contains(&(id.clone(), dep.key.clone())) {
                        continue;
                    }
                    for target in &dep.ids {
                        let entry = enabled.entry(target.clone()).or_default();
                        entry.extend(dep.features.iter().cloned());
                        if dep.default_features
                            && self.packages[target].features.contains_key("default")
                        {
                            entry.insert("default".to_owned());
                        }
                    }
                }
            }
            if (enabled.clone(), active.clone()) == before {
                break;
            }
        }
        enabled.keys().map(|id| self.packages[id].name.clone()).collect()
    }

    /// Applies one enabled feature of package `id`.
    fn expand(
        &self,
        id: &str,
        feature: &str,
        enabled: &mut BTreeMap<String, BTreeSet<String>>,
        active: &mut BTreeSet<(String, String)>,
    ) {
        let package = &self.packages[id];
        let entries: Vec<String> = match package.features.get(feature) {
            Some(list) => list.clone(),
            // An optional dependency's implicit feature.
            None => vec![format!("dep:{feature}")],
        };
        for entry in entries {
            if let Some(dep) = entry.strip_prefix("dep:") {
                active.insert((id.to_owned(), dep.to_owned()));
            } else if let Some((dep, sub)) = entry.split_once('/') {
                let (dep, weak) = match dep.strip_suffix('?') {
                    Some(dep) => (dep, true),
                    None => (dep, false),
                };
                let Some(declared) =
                    package.deps.iter().find(|d| d.key == dep && d.kind == "normal")
                else {
                    continue;
                };
                if declared.optional {
                    if weak && !active.contains(&(id.to_owned(), dep.to_owned())) {
                        // `x?/f` only applies once something else turns `x` on; the
                        // fixed-point loop comes back to it.
                        continue;
                    }
                    active.insert((id.to_owned(), dep.to_owned()));
                }
                for target in &declared.ids {
                    enabled.entry(target.clone()).or_default().insert(sub.to_owned());
                }
            } else if package.features.contains_key(&entry) {
                enabled.entry(id.to_owned()).or_default().insert(entry);
            } else {
                active.insert((id.to_owned(), entry));
            }
        }
    }
}

fn assert_none(reached: &BTreeSet<String>, forbidden: &[&str], what: &str) {
    let found: Vec<&&str> = forbidden.iter().filter(|f| reached.contains(**f)).collect();
    assert!(found.is_empty(), "{what} reaches {found:?}");
}

fn assert_all(reached: &BTreeSet<String>, expected: &[&str], what: &str) {
    let missing: Vec<&&str> = expected.iter().filter(|f| !reached.contains(**f)).collect();
    assert!(missing.is_empty(), "{what} should reach {missing:?} (positive control)");
}

#[test]
fn no_library_crate_depends_on_the_example_services() {
    let ws = Workspace::load();
    let services = Path::new(&ws.root).join("services");
    let crates = Path::new(&ws.root).join("crates");
    let mut arrows = Vec::new();
    for package in ws.packages.values().filter(|p| Path::new(&p.manifest).starts_with(&crates)) {
        for dep in &package.deps {
            for id in &dep.ids {
                if Path::new(&ws.packages[id].manifest).starts_with(&services) {
                    arrows.push(format!("{} -> {} ({})", package.name, dep.name, dep.kind));
                }
            }
        }
    }
    assert!(arrows.is_empty(), "library crates depend on example services: {arrows:?}");
}

#[test]
fn keel_core_depends_on_no_other_keel_crate() {
    let ws = Workspace::load();
    let keel: Vec<&str> = ws
        .packages
        .values()
        .filter(|p| p.manifest.starts_with(&ws.root))
        .map(|p| p.name.as_str())
        .collect();
    for (name, allowed) in
        [("keel-core", &["keel-core", "keel-derive"][..]), ("keel-derive", &["keel-derive"])]
    {
        let reached = ws.reached(name, true, &[]);
        let others: Vec<&&str> =
            keel.iter().filter(|k| reached.contains(**k) && !allowed.contains(k)).collect();
        assert!(others.is_empty(), "{name} depends on {others:?}");
    }
}

#[test]
fn keel_registry_does_not_depend_on_keel_bus() {
    let ws = Workspace::load();
    let all: Vec<&str> =
        ws.packages[ws.member("keel-registry")].features.keys().map(String::as_str).collect();
    assert_none(&ws.reached("keel-registry", true, &all), &["keel-bus"], "keel-registry");
    assert_all(&ws.reached("keel-client", true, &[]), &["keel-bus"], "keel-client");
}

#[test]
fn keel_bus_needs_its_otel_feature_for_the_opentelemetry_sdk() {
    let ws = Workspace::load();
    let otel = ["opentelemetry_sdk", "opentelemetry-otlp", "tracing-opentelemetry"];
    assert_none(&ws.reached("keel-bus", true, &[]), &otel, "keel-bus without `otel`");
    assert_all(&ws.reached("keel-bus", true, &["otel"]), &otel, "keel-bus with `otel`");
}

#[test]
fn keel_logbus_pulls_only_the_stores_asked_for() {
    let ws = Workspace::load();
    let logbus = &ws.packages[ws.member("keel-logbus")];
    for store in ["keel-sqlite", "keel-postgres"] {
        let dep = logbus.deps.iter().find(|d| d.name == store && d.kind == "normal");
        assert!(dep.is_some_and(|d| d.optional), "keel-logbus's {store} must be optional");
    }
    let stores = ["keel-sqlite", "keel-postgres", "sqlx-sqlite", "sqlx-postgres"];
    assert_none(&ws.reached("keel-logbus", true, &[]), &stores, "keel-logbus");
    let sqlite = ws.reached("keel-logbus", true, &["sqlite"]);
    assert_none(&sqlite, &["keel-postgres", "sqlx-postgres"], "keel-logbus with `sqlite`");
    assert_all(&sqlite, &["keel-sqlite", "sqlx-sqlite"], "keel-logbus with `sqlite`");
    let postgres = ws.reached("keel-logbus", true, &["postgres"]);
    assert_none(&postgres, &["keel-sqlite", "sqlx-sqlite"], "keel-logbus with `postgres`");
    assert_all(&postgres, &["keel-postgres", "sqlx-postgres"], "keel-logbus with `postgres`");
}

#[test]
fn the_facade_with_sqlite_and_http_compiles_no_broker_client_or_exporter() {
    let ws = Workspace::load();
    let heavy = ["rdkafka", "rdkafka-sys", "lapin", "opentelemetry-otlp", "sqlx-postgres"];
    let light = ws.reached("keel", false, &["sqlite", "http"]);
    assert_none(&light, &heavy, "keel with `sqlite` and `http`");
    assert_all(&light, &["keel-sqlite", "keel-service", "keel-runtime", "axum"], "keel");
    let full = ws.reached("keel", false, &["sqlite", "http", "postgres", "amqp", "kafka", "otel"]);
    assert_all(&full, &heavy, "keel with every backend");
}
