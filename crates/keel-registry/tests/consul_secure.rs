//! Against a Consul agent of the test's own, with ACLs on (default deny) and HTTPS
//! only, its certificates made by `consul tls` (the `consul` binary scripts/services.sh
//! installs): with the ACL token (`X-Consul-Token`) and the agent's CA, the whole
//! registration lifecycle works over TLS; without the token Consul refuses the
//! registration; without the CA the certificate is not trusted.

#![cfg(feature = "integration")]
#![allow(clippy::unwrap_used)]

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use keel_registry::{ConsulAccess, ConsulRegistry, Registry, RegistryError, connect_with};

const ROOT_TOKEN: &str = "5c1e7a2e-0000-4000-8000-keel-root";

/// The agent, stopped when the test ends.
struct Agent {
    child: Child,
    url: String,
    ca_pem: Vec<u8>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn consul(dir: &Path, args: &[&str]) {
    let output = Command::new("consul").args(args).current_dir(dir).output().unwrap();
    assert!(
        output.status.success(),
        "consul {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn secure_agent() -> Agent {
    let dir: PathBuf = std::env::temp_dir().join(common::unique("keel-consul-tls"));
    std::fs::create_dir_all(&dir).unwrap();
    consul(&dir, &["tls", "ca", "create"]);
    consul(&dir, &["tls", "cert", "create", "-server", "-dc", "dc1"]);
    let https = free_port();
    let config = format!(
        r#"
ports {{
  http = -1
  https = {https}
  dns = -1
  grpc = -1
  serf_lan = {serf_lan}
  serf_wan = {serf_wan}
  server = {server}
}}
ca_file = "consul-agent-ca.pem"
cert_file = "dc1-server-consul-0.pem"
key_file = "dc1-server-consul-0-key.pem"
verify_incoming = false
acl {{
  enabled = true
  default_policy = "deny"
  tokens {{
    master = "{ROOT_TOKEN}"
    agent = "{ROOT_TOKEN}"
  }}
}}
"#,
        serf_lan = free_port(),
        serf_wan = free_port(),
        server = free_port(),
    );
    std::fs::write(dir.join("agent.hcl"), config).unwrap();
    let node = common::unique("keel-secure");
    let child = Command::new("consul")
        .args(["agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1", "-node", &node])
        .arg(format!("-config-file={}", dir.join("agent.hcl").display()))
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ca_pem = std::fs::read(dir.join("consul-agent-ca.pem")).unwrap();
    let agent = Agent { child, url: format!("https://127.0.0.1:{https}"), ca_pem };
    // Ready once it answers over TLS with a leader.
    for _ in 0..300 {
        let registry = ConsulRegistry::with_tls(&agent.url, Some(&agent.ca_pem)).unwrap();
        if registry.leader().await.is_ok_and(|leader| !leader.is_empty()) {
            return agent;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the secure Consul agent never answered at {}", agent.url);
}

#[tokio::test]
async fn over_https_with_the_acl_token_registration_works_and_without_it_is_refused() {
    let agent = secure_agent().await;

    let access = ConsulAccess::default().token(ROOT_TOKEN).ca_pem(agent.ca_pem.clone());
    let registry = connect_with(Some(&agent.url), &access).await.unwrap();
    common::lifecycle(registry, Duration::from_secs(1)).await;

    let anonymous: Arc<dyn Registry> = Arc::new(
        ConsulRegistry::with_tls(&agent.url, Some(&agent.ca_pem))
            .unwrap()
            .with_wait(Duration::from_secs(1)),
    );
    let endpoint = common::HealthEndpoint::start().await;
    let service = common::unique("keel-test-anonymous");
    let refused = anonymous
        .register(&common::registration(&service, &endpoint, Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, RegistryError::Refused(message) if message.starts_with("403")),
        "{refused}"
    );

    let untrusted = connect_with(Some(&agent.url), &ConsulAccess::default().token(ROOT_TOKEN))
        .await
        .unwrap_err();
    assert!(matches!(untrusted, RegistryError::Unreachable(_)), "{untrusted}");
}
