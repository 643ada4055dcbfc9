//! The distributed deployment's files: the gateway config parses and validates, and
//! `docker-compose config` accepts docker-compose.yml.
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
