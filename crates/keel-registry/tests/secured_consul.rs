//! Against a secured Consul agent (issue 19, the private admin surface): the test starts
//! its own dev agent with ACLs on (default deny) and an HTTPS port whose certificate a
//! private CA signed (made here with the `openssl` CLI), then checks that Keel's
//! registry, given `KEEL_CONSUL_TOKEN` and `KEEL_CONSUL_CA_FILE`'s values, registers,
//! discovers and deregisters over HTTPS; without the token Consul refuses it, and
//! without the CA the TLS handshake does.

#![cfg(feature = "integration")]
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use keel_registry::{ConsulAccess, ConsulRegistry, Instance, Registration, connect_with};

const TOKEN: &str = "keel-test-master-token";

/// A private Consul dev agent on free ports; killed when dropped.
struct SecuredAgent {
    child: Child,
    dir: PathBuf,
    https: String,
    ca_pem: Vec<u8>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl SecuredAgent {
    async fn start() -> Self {
        let dir = std::env::temp_dir().join(common::unique("keel-consul-secured"));
        std::fs::create_dir_all(&dir).unwrap();
        // A private CA, and a server certificate for 127.0.0.1 signed by it.
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca-key.pem",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=keel-test-ca",
            ],
        );
        openssl(
            &dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server-key.pem",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        );
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
            ],
        );
        let ca_pem = std::fs::read(dir.join("ca.pem")).unwrap();
        // The ports are free when picked, but another process (any outgoing connection
        // takes an ephemeral port) may bind one before the agent does; the agent then
        // exits, and is started again on fresh ports.
        for _ in 0..3 {
            let (mut child, https) = spawn_agent(&dir);
            match up(&mut child, &https, &ca_pem, &dir).await {
                Ok(()) => return Self { child, https, dir, ca_pem },
                Err(exited) => {
                    eprintln!("the secured agent exited ({exited}); starting it on other ports");
                }
            }
        }
        panic!("the secured agent exited three times; see {}", dir.display());
    }
}

/// Waits until the agent answers over HTTPS with a leader; `Err` with its exit status
/// and the end of its log if it exits first. Panics (the agent killed, its directory
/// kept) if it neither answers nor exits.
async fn up(child: &mut Child, https: &str, ca_pem: &[u8], dir: &Path) -> Result<(), String> {
    let registry = ConsulRegistry::with_tls(https, Some(ca_pem)).unwrap();
    let mut last = None;
    for _ in 0..200 {
        if let Some(status) = child.try_wait().unwrap() {
            let log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
            let tail: Vec<_> = log.lines().rev().take(5).collect();
            return Err(format!("{status}; its log ends, last line first: {tail:?}"));
        }
        match registry.clone().checked().await {
            Ok(_) => return Ok(()),
            Err(error) => last = Some(error),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    panic!("the secured agent never answered: {last:?}; see {}", dir.display());
}

/// Starts a dev agent with ACLs and HTTPS (the certificates in `dir`) on free ports;
/// its log goes to `dir/agent.log`. Returns it and its HTTPS address.
fn spawn_agent(dir: &Path) -> (Child, String) {
    let https_port = free_port();
    let d = dir.display();
    std::fs::write(
        dir.join("secured.hcl"),
        format!(
            "acl {{\n  enabled = true\n  default_policy = \"deny\"\n  tokens {{ master = \"{TOKEN}\" }}\n}}\n\
             ports {{ https = {https_port} }}\n\
             cert_file = \"{d}/server.pem\"\nkey_file = \"{d}/server-key.pem\"\nca_file = \"{d}/ca.pem\"\n\
             verify_incoming = false\n"
        ),
    )
    .unwrap();
    let port = |name: &str| [format!("-{name}"), free_port().to_string()];
    let child = Command::new("consul")
        .args(["agent", "-dev", "-client", "127.0.0.1", "-bind", "127.0.0.1"])
        .args(port("http-port"))
        .args(port("server-port"))
        .args(port("serf-lan-port"))
        .args(port("serf-wan-port"))
        .args(["-dns-port", "-1", "-grpc-port", "-1", "-config-file"])
        .arg(dir.join("secured.hcl"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("agent.log")).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("consul (scripts/services.sh installs it)");
    (child, format!("https://127.0.0.1:{https_port}"))
}

impl Drop for SecuredAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn instance(service: &str) -> Registration {
    Registration {
        instance: Instance {
            id: format!("{service}-1"),
            service: service.to_owned(),
            address: "127.0.0.1".into(),
            port: 1,
            tags: Vec::new(),
            meta: Default::default(),
        },
        check: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secured_agent_needs_the_token_and_the_ca() {
    let agent = SecuredAgent::start().await;

    // With the token and the CA (what KEEL_CONSUL_TOKEN and KEEL_CONSUL_CA_FILE give):
    // the whole lifecycle, over HTTPS.
    let access = ConsulAccess::default().token(TOKEN).ca_pem(agent.ca_pem.clone());
    let registry = connect_with(Some(&agent.https), &access).await.unwrap();
    let service = common::unique("keel-secured");
    registry.register(&instance(&service)).await.unwrap();
    let seen = registry.healthy(&service).await.unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
    registry.deregister(&format!("{service}-1")).await.unwrap();
    let secured = ConsulRegistry::with_tls(&agent.https, Some(&agent.ca_pem))
        .unwrap()
        .with_token(TOKEN)
        .unwrap()
        .with_wait(Duration::from_secs(5));
    common::lifecycle(Arc::new(secured), Duration::from_secs(1)).await;

    // Without the token: Consul's ACLs refuse the registration, and the error says so.
    let anonymous = ConsulRegistry::with_tls(&agent.https, Some(&agent.ca_pem)).unwrap();
    let refused = keel_registry::Registry::register(&anonymous, &instance(&service)).await;
    let refused = refused.expect_err("an anonymous registration is refused").to_string();
    assert!(refused.contains("403") || refused.contains("ermission denied"), "{refused}");
    assert!(!refused.contains(TOKEN), "the token never shows in an error: {refused}");

    // Without the CA: the agent's certificate is not trusted.
    let untrusted = connect_with(Some(&agent.https), &ConsulAccess::default().token(TOKEN)).await;
    assert!(untrusted.is_err(), "a certificate from an unknown CA was accepted");
}
