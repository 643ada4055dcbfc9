//! The distributed deployment's files: the gateway config parses and validates,
//! `docker-compose config` accepts docker-compose.yml, and the compose file, the
//! variables the binaries read and the README agree (names, profiles, the Kafka
//! broker's settings).
#![allow(clippy::unwrap_used)]

use std::path::Path;

#[test]
fn the_deployed_gateway_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/gateway.toml");
    let config = keel_gateway::GatewayConfig::from_file(&path).unwrap();
    config.validate().unwrap();
    let prefixes: Vec<&str> = config.routes.iter().map(|r| r.prefix.as_str()).collect();
    assert_eq!(prefixes, ["/api/users", "/api/products", "/api/orders", "/api/events"]);
}

/// Needs `docker-compose` (Debian's package; scripts/services.sh installs it).
#[cfg(feature = "integration")]
#[test]
fn docker_compose_accepts_the_file() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = std::process::Command::new("docker-compose")
        .args(["-f", "docker-compose.yml", "config", "--services"])
        .current_dir(dir)
        .output()
        .expect("docker-compose is installed (scripts/services.sh tools)");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let services = String::from_utf8(output.stdout).unwrap();
    for service in [
        "postgres", "rabbitmq", "kafka", "consul", "jaeger", "users", "products", "orders",
        "relay", "events", "gateway",
    ] {
        assert!(services.lines().any(|l| l == service), "{service} missing: {services}");
    }
}

fn read(file: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap()
}

/// Every `KEEL_...` name in `text`.
fn keel_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("KEEL_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        // `KEEL_*` in prose names no variable.
        if name.len() > "KEEL_".len() {
            names.insert(name);
        }
    }
    names
}

/// The lines of a top-level compose service's block (indented under `  name:`).
fn service_block<'a>(compose: &'a str, name: &str) -> Vec<&'a str> {
    let header = format!("  {name}:");
    let mut lines = compose.lines().skip_while(|l| l.trim_end() != header);
    assert!(lines.next().is_some(), "no service {name} in docker-compose.yml");
    lines.take_while(|l| l.trim().is_empty() || l.starts_with("   ")).collect()
}

/// The README's section under `## {title}`, up to the next `## `.
fn readme_section<'a>(readme: &'a str, title: &str) -> &'a str {
    let start = readme.find(&format!("\n## {title}\n")).expect("the README section");
    let body = &readme[start + 4..];
    &body[..body.find("\n## ").unwrap_or(body.len())]
}

/// Variables an example service reads itself, beside keel-runtime's `Config`.
const SERVICE_KEYS: &[&str] = &["KEEL_ORDER_DEADLINE_SECS"];

#[test]
fn the_compose_file_the_binaries_and_the_readme_name_the_same_variables() {
    let known: std::collections::BTreeSet<String> = keel_runtime::config::ENV_KEYS
        .iter()
        .chain(SERVICE_KEYS)
        .map(|k| (*k).to_owned())
        .collect();
    let compose = read("docker-compose.yml");
    let readme = read("README.md");
    let in_compose = keel_names(&compose);
    assert!(
        in_compose.is_subset(&known),
        "unknown in docker-compose.yml: {:?}",
        &in_compose - &known
    );
    for needed in ["KEEL_NAMESPACE", "KEEL_DATABASE_URL", "KEEL_BUS_URL", "KEEL_CONSUL_URL"] {
        assert!(in_compose.contains(needed), "docker-compose.yml does not set {needed}");
    }
    // Every variable in the configuration table, and nothing unknown in it or in the
    // distributed section.
    let table = readme_section(&readme, "Configuration");
    for key in keel_runtime::config::ENV_KEYS.iter().chain(SERVICE_KEYS) {
        assert!(table.contains(&format!("| `{key}` |")), "the README's table lacks {key}");
    }
    let table_names = keel_names(table);
    assert!(table_names.is_subset(&known), "unknown in the table: {:?}", &table_names - &known);
    let distributed = readme_section(&readme, "Running it distributed");
    let named = keel_names(distributed);
    assert!(named.is_subset(&known), "unknown in the README: {:?}", &named - &known);
    assert!(
        in_compose.is_subset(&named),
        "the distributed section does not name {:?}",
        &in_compose - &named
    );
}

#[test]
fn only_the_chosen_broker_starts_and_kafka_gets_the_settings_keel_asks_for() {
    let compose = read("docker-compose.yml");
    let readme = read("README.md");
    let distributed = readme_section(&readme, "Running it distributed");
    for broker in ["rabbitmq", "kafka"] {
        let block = service_block(&compose, broker);
        assert!(
            block.iter().any(|l| l.trim() == format!("profiles: [{broker}]")),
            "{broker} is not in its own profile: {block:?}"
        );
        let command = format!("--profile {broker} up");
        assert!(compose.contains(&command), "the compose file's header lacks `{command}`");
        assert!(distributed.contains(&command), "the README lacks `{command}`");
    }
    // No part depends on a broker that may not be started (nor do the shared
    // dependencies of the x-keel-depends anchor).
    let depends_on_a_broker = |l: &&str| {
        let l = l.trim_start();
        l.starts_with("rabbitmq:") || l.starts_with("kafka:")
    };
    for part in ["migrate", "users", "products", "orders", "relay", "events", "gateway"] {
        assert!(!service_block(&compose, part).iter().any(depends_on_a_broker), "{part}");
    }
    let anchors: Vec<&str> = compose.split("\nservices:").next().unwrap().lines().collect();
    assert!(!anchors.iter().any(depends_on_a_broker), "{anchors:?}");
    // The Kafka service: the broker settings of keel-kafka's docs, with their values.
    let kafka = service_block(&compose, "kafka");
    for (setting, value) in keel_kafka::APACHE_KAFKA_BROKER_SETTINGS {
        let variable = format!("KAFKA_{}", setting.to_uppercase().replace('.', "_"));
        let line = kafka
            .iter()
            .find(|l| l.trim_start().starts_with(&format!("{variable}:")))
            .unwrap_or_else(|| panic!("the kafka service lacks {variable} ({setting})"));
        let given = line.split_once(':').unwrap().1.trim().trim_matches('"');
        assert_eq!(given, *value, "{variable}");
    }
}
