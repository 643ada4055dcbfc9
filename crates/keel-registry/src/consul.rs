//! [`ConsulRegistry`]: the [`Registry`] over Consul's HTTP API, with discovery kept
//! fresh by blocking queries.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use keel_core::{Backoff, Namespace};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use url::Url;

use crate::{Instance, Registration, Registry, RegistryError, Watch};

/// Consul's agent and health endpoints. Registration goes to the local agent (the
/// URL given); discovery asks the same agent, which forwards to the servers.
///
/// In a [`Namespace`] ([`ConsulRegistry::with_namespace`]) service names and instance
/// ids are qualified in Consul (`<namespace>.<name>`) and unqualified again in what
/// discovery returns, so deployments sharing one Consul never see each other's
/// instances. (Consul's DNS interface does not resolve names with a `.`; Keel
/// discovers through the HTTP API.)
#[derive(Debug, Clone)]
pub struct ConsulRegistry {
    base: Url,
    namespace: Namespace,
    client: reqwest::Client,
    wait: Duration,
    backoff: Backoff,
    min_query_interval: Duration,
    /// How often a watch whose blocking query is still waiting checks, with a plain
    /// read, that the agent's index has not gone backwards.
    probe_interval: Duration,
    /// The ACL token sent as `X-Consul-Token` on every request.
    token: Option<reqwest::header::HeaderValue>,
}

impl ConsulRegistry {
    /// A client for the agent at `url` (`http://host:port`, or `https://host:port`
    /// with the system's trusted certificate authorities); no I/O happens here.
    pub fn new(url: &str) -> Result<Self, RegistryError> {
        Self::with_tls(url, None)
    }

    /// [`ConsulRegistry::new`], trusting also the certificate authority in `ca_pem`
    /// (PEM; what `KEEL_CONSUL_CA_FILE` names) for `https://` agents whose certificates
    /// a private CA signed, as Consul's own `consul tls ca create` makes them.
    pub fn with_tls(url: &str, ca_pem: Option<&[u8]>) -> Result<Self, RegistryError> {
        let invalid = |reason: &str| RegistryError::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let base = Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
        if base.scheme() != "http" && base.scheme() != "https" {
            return Err(invalid("expected http://host:port or https://host:port"));
        }
        if base.host_str().is_none_or(str::is_empty) || base.cannot_be_a_base() {
            return Err(invalid("expected http://host:port"));
        }
        // Consul sits inside the deployment: never route it through an HTTP proxy.
        let mut client =
            reqwest::Client::builder().no_proxy().connect_timeout(Duration::from_secs(5));
        if let Some(pem) = ca_pem {
            let ca = reqwest::Certificate::from_pem(pem)
                .map_err(|e| invalid(&format!("the CA file is not a PEM certificate: {e}")))?;
            client = client.add_root_certificate(ca);
        }
        let client = client.build().map_err(|e| invalid(&error_chain(&e)))?;
        Ok(Self {
            base,
            namespace: Namespace::none(),
            client,
            wait: Duration::from_secs(60),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
            min_query_interval: Duration::from_millis(50),
            probe_interval: Duration::from_secs(5),
            token: None,
        })
    }

    /// Sends `token` (Consul's ACL token, `KEEL_CONSUL_TOKEN`) as `X-Consul-Token` on
    /// every request; fails if it cannot be a header value.
    pub fn with_token(mut self, token: &str) -> Result<Self, RegistryError> {
        let mut value = reqwest::header::HeaderValue::from_str(token).map_err(|_| {
            RegistryError::InvalidUrl {
                url: redact(&self.base),
                reason: "the Consul token (KEEL_CONSUL_TOKEN) is not a valid header value"
                    .to_owned(),
            }
        })?;
        value.set_sensitive(true);
        self.token = Some(value);
        Ok(self)
    }

    /// [`ConsulRegistry::new`], then checks that the agent answers and knows a leader.
    pub async fn connect(url: &str) -> Result<Self, RegistryError> {
        Self::new(url)?.checked().await
    }

    /// Checks that the agent answers (with this client's token) and knows a leader.
    pub async fn checked(self) -> Result<Self, RegistryError> {
        let registry = self;
        let url = redact(&registry.base);
        let leader = registry.leader().await?;
        if leader.is_empty() {
            return Err(RegistryError::Unreachable(format!("Consul at {url} has no leader")));
        }
        Ok(registry)
    }

    /// Registers and discovers within `namespace` (the default: names unchanged).
    #[must_use]
    pub fn with_namespace(mut self, namespace: Namespace) -> Self {
        self.namespace = namespace;
        self
    }

    /// How long one blocking query may wait for a change (Consul caps it at 10 minutes).
    #[must_use]
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait.clamp(Duration::from_millis(1), Duration::from_secs(600));
        self
    }

    /// How often a watch whose blocking query is still waiting reads the service
    /// once more without blocking (default 5 s), to find out whether the agent lost
    /// its state meanwhile (see [`Registry::watch`] on [`ConsulRegistry`]).
    #[must_use]
    pub fn with_probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// The retry schedule of a watch while Consul is unreachable.
    #[must_use]
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The address of the Raft leader (`""` when there is none).
    pub async fn leader(&self) -> Result<String, RegistryError> {
        let url = self.endpoint(&["v1", "status", "leader"]);
        let response = self.send(self.client.get(url.clone()), &url).await?;
        response.json::<String>().await.map_err(|e| unreachable(&url, &e))
    }

    fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        url: &Url,
    ) -> Result<reqwest::Response, RegistryError> {
        let request = match &self.token {
            Some(token) => request.header("x-consul-token", token.clone()),
            None => request,
        };
        let response = request.send().await.map_err(|e| unreachable(url, &e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        let message = format!("{status} from {}: {}", redact(url), body.trim());
        // Consul answers 5xx while it has no leader or cannot reach the servers.
        Err(if status.is_server_error() {
            RegistryError::Unreachable(message)
        } else {
            RegistryError::Refused(message)
        })
    }

    /// One (possibly blocking) health query: the index Consul returned and the
    /// passing instances, sorted by id.
    async fn query(
        &self,
        service: &str,
        index: Option<u64>,
    ) -> Result<(u64, Vec<Instance>), RegistryError> {
        let service = self.namespace.qualify(service);
        let mut url = self.endpoint(&["v1", "health", "service", &service]);
        url.query_pairs_mut().append_pair("passing", "true");
        let timeout = match index {
            Some(index) => {
                url.query_pairs_mut()
                    .append_pair("index", &index.to_string())
                    .append_pair("wait", &go_duration(self.wait));
                // Consul adds up to wait/16 of jitter; leave room for it and the network.
                self.wait + self.wait / 16 + Duration::from_secs(5)
            }
            None => Duration::from_secs(10),
        };
        let request = self.client.get(url.clone()).timeout(timeout);
        let response = self.send(request, &url).await?;
        let returned = response
            .headers()
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let entries: Vec<ServiceEntry> =
            response.json().await.map_err(|e| unreachable(&url, &e))?;
        let mut instances: Vec<Instance> =
            entries.into_iter().map(|entry| entry.into_instance(&self.namespace)).collect();
        instances.sort();
        Ok((returned, instances))
    }
}

#[async_trait::async_trait]
impl Registry for ConsulRegistry {
    async fn register(&self, registration: &Registration) -> Result<(), RegistryError> {
        let instance = &registration.instance;
        let body = AgentService {
            id: &self.namespace.qualify(&instance.id),
            name: &self.namespace.qualify(&instance.service),
            address: &instance.address,
            port: instance.port,
            tags: &instance.tags,
            meta: &instance.meta,
            check: registration.check.as_ref().map(|check| AgentCheck {
                http: &check.http,
                interval: go_duration(check.interval),
                timeout: go_duration(check.timeout),
                deregister_critical_service_after: go_duration(check.deregister_critical_after),
                status: check.initially_passing.then_some("passing"),
            }),
        };
        let url = self.endpoint(&["v1", "agent", "service", "register"]);
        self.send(self.client.put(url.clone()).json(&body).timeout(Duration::from_secs(10)), &url)
            .await?;
        Ok(())
    }

    async fn deregister(&self, instance_id: &str) -> Result<(), RegistryError> {
        let instance_id = self.namespace.qualify(instance_id);
        let url = self.endpoint(&["v1", "agent", "service", "deregister", &instance_id]);
        match self.send(self.client.put(url.clone()).timeout(Duration::from_secs(10)), &url).await {
            // The agent answers 404 for a service it does not know: already gone. With
            // ACLs on, its permission check runs first and answers 500 "Unknown service"
            // instead (Consul 1.8): gone too.
            Err(RegistryError::Refused(message)) if message.starts_with("404") => Ok(()),
            Err(RegistryError::Unreachable(message) | RegistryError::Refused(message))
                if message.contains(": Unknown service") =>
            {
                Ok(())
            }
            other => other.map(drop),
        }
    }

    async fn is_registered(&self, instance_id: &str) -> Result<bool, RegistryError> {
        let instance_id = self.namespace.qualify(instance_id);
        let url = self.endpoint(&["v1", "agent", "service", &instance_id]);
        match self.send(self.client.get(url.clone()).timeout(Duration::from_secs(10)), &url).await {
            Ok(_) => Ok(true),
            Err(RegistryError::Refused(message)) if message.starts_with("404") => Ok(false),
            Err(error) => Err(error),
        }
    }

    async fn healthy(&self, service: &str) -> Result<Vec<Instance>, RegistryError> {
        Ok(self.query(service, None).await?.1)
    }

    /// Spawns the watch task on the current Tokio runtime; outside one, the returned
    /// [`Watch`] stays empty and reports [`RegistryError::Closed`].
    ///
    /// The task follows the service with blocking queries. While one waits, it reads
    /// the service without blocking every probe interval
    /// ([`ConsulRegistry::with_probe_interval`]): an agent that restarted between two
    /// queries (a dev agent, or a server whose state was restored) answers with an
    /// index below the one the query blocks on, and would hold that query for its
    /// whole `wait` while instances come and go unseen.
    fn watch(&self, service: &str) -> Watch {
        let (tx, rx) = watch::channel(Arc::<[Instance]>::from(Vec::new()));
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(run_watch(self.clone(), service.to_owned(), tx));
            }
            Err(_) => tracing::error!(service, "Registry::watch called outside a Tokio runtime"),
        }
        Watch::new(rx)
    }
}

/// The index for the next blocking query, given the one used for the last query and
/// the `X-Consul-Index` it returned, as Consul's "Blocking Queries" documentation
/// requires: an index that went backwards (a snapshot restore, a changed watch
/// implementation) resets to 0, restarting the loop with a non-blocking query; an
/// index of 0 (a Consul bug that makes every query return at once) is treated as 1.
pub fn next_index(previous: u64, returned: u64) -> u64 {
    if returned < previous {
        0
    } else if returned == 0 {
        1
    } else {
        returned
    }
}

/// One blocking query on `index`, probed while it waits: `None` once every receiver
/// of `tx` is gone. A probe (a plain read) that finds the agent's index below `index`
/// stands in for the query's answer; the caller's [`next_index`] then resets.
async fn blocking_query(
    registry: &ConsulRegistry,
    service: &str,
    index: u64,
    tx: &watch::Sender<Arc<[Instance]>>,
) -> Option<Result<(u64, Vec<Instance>), RegistryError>> {
    let query = registry.query(service, Some(index));
    tokio::pin!(query);
    loop {
        let probe = async {
            tokio::time::sleep(registry.probe_interval).await;
            registry.query(service, None).await
        };
        tokio::select! {
            outcome = &mut query => return Some(outcome),
            () = tx.closed() => return None,
            probed = probe, if index > 0 => {
                // A failed probe changes nothing (the agent may be on its way back);
                // the next one asks again.
                if let Ok((returned, instances)) = probed
                    && returned < index
                {
                    tracing::info!(
                        service,
                        blocked_on = index,
                        returned,
                        "the Consul agent's index went backwards (a restart?); reading afresh"
                    );
                    return Some(Ok((returned, instances)));
                }
            }
        }
    }
}

/// Keeps `tx` filled with the passing instances of `service` until every receiver is
/// gone. On errors the last snapshot stays and the query is retried with backoff, as a
/// non-blocking read first.
async fn run_watch(registry: ConsulRegistry, service: String, tx: watch::Sender<Arc<[Instance]>>) {
    let mut index = 0;
    let mut failures = 0_u32;
    let mut last_start: Option<Instant> = None;
    loop {
        // Rate limit: an index that keeps returning at once must not become a busy loop.
        if let Some(start) = last_start {
            let ready = start + registry.min_query_interval;
            tokio::select! {
                () = tokio::time::sleep_until(ready) => {}
                () = tx.closed() => return,
            }
        }
        last_start = Some(Instant::now());
        let Some(outcome) = blocking_query(&registry, &service, index, &tx).await else {
            return;
        };
        match outcome {
            Ok((returned, instances)) => {
                failures = 0;
                index = next_index(index, returned);
                tx.send_if_modified(|current| {
                    if current[..] == instances[..] {
                        return false;
                    }
                    *current = Arc::from(instances);
                    true
                });
            }
            Err(error) => {
                // The agent may be restarting: its index starts again near zero, and a
                // blocking query with the old, higher one would be held until `wait`
                // runs out (re-registrations leave the index below it), the instances
                // that moved meanwhile unseen. Start again with a plain read.
                index = 0;
                failures = failures.saturating_add(1);
                let delay = registry.backoff.delay(failures);
                tracing::warn!(
                    service,
                    %error,
                    retry_in_ms = delay.as_millis(),
                    "Consul watch failed; keeping the last snapshot"
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = tx.closed() => return,
                }
            }
        }
    }
}

/// A duration as Go's `time.ParseDuration` reads it.
fn go_duration(duration: Duration) -> String {
    format!("{}ms", duration.as_millis().max(1))
}

fn unreachable(url: &Url, error: &reqwest::Error) -> RegistryError {
    RegistryError::Unreachable(format!("{}: {}", redact(url), error_chain(error)))
}

/// The URL without credentials or query, fit for an error message.
fn redact(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_password(None);
    let _ = url.set_username("");
    url.set_query(None);
    url.to_string()
}

/// `error` and its sources, since reqwest's own message leaves out the cause.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct AgentService<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    name: &'a str,
    address: &'a str,
    port: u16,
    tags: &'a [String],
    meta: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    check: Option<AgentCheck<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct AgentCheck<'a> {
    #[serde(rename = "HTTP")]
    http: &'a str,
    interval: String,
    timeout: String,
    deregister_critical_service_after: String,
    /// The check's first status (Consul's default: critical).
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceEntry {
    node: NodeJson,
    service: ServiceJson,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NodeJson {
    #[serde(default)]
    address: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceJson {
    #[serde(rename = "ID")]
    id: String,
    service: String,
    #[serde(default)]
    address: String,
    port: u16,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
}

impl ServiceEntry {
    /// The instance as its service registered it: without `namespace`'s qualifier.
    fn into_instance(self, namespace: &Namespace) -> Instance {
        let service = self.service;
        let unqualified = |name: String| match namespace.unqualify(&name) {
            Some(own) => own.to_owned(),
            None => name,
        };
        Instance {
            id: unqualified(service.id),
            service: unqualified(service.service),
            // An empty service address means "the node's address" in Consul.
            address: if service.address.is_empty() { self.node.address } else { service.address },
            port: service.port,
            tags: service.tags.unwrap_or_default(),
            meta: service.meta.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_follows_consul_and_resets_when_it_goes_backwards_or_is_zero() {
        assert_eq!(next_index(0, 42), 42, "first answer");
        assert_eq!(next_index(42, 42), 42, "timeout, nothing changed");
        assert_eq!(next_index(42, 57), 57, "a change");
        assert_eq!(next_index(57, 12), 0, "backwards: restart with a non-blocking query");
        assert_eq!(next_index(0, 0), 1, "zero is never used to block");
        assert_eq!(next_index(1, 0), 0, "backwards from 1 to 0 resets first");
        assert_eq!(next_index(0, 12), 12, "after a reset, the new index is taken as is");
    }

    #[test]
    fn durations_use_go_syntax() {
        assert_eq!(go_duration(Duration::from_secs(1)), "1000ms");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(go_duration(Duration::ZERO), "1ms");
    }

    #[test]
    fn urls_must_be_http_or_https() {
        assert!(ConsulRegistry::new("http://127.0.0.1:8500").is_ok());
        assert!(ConsulRegistry::new("https://consul:8501").is_ok());
        for bad in ["127.0.0.1:8500", "consul", "mailto:x@y", "ftp://consul:8500"] {
            let error = ConsulRegistry::new(bad).expect_err(bad);
            assert!(error.to_string().contains(bad), "{error}");
        }
    }

    #[test]
    fn endpoints_keep_a_base_path_and_escape_segments() -> Result<(), RegistryError> {
        let registry = ConsulRegistry::new("http://consul:8500/prefix/")?;
        let url = registry.endpoint(&["v1", "agent", "service", "deregister", "a/b c"]);
        assert_eq!(url.as_str(), "http://consul:8500/prefix/v1/agent/service/deregister/a%2Fb%20c");
        Ok(())
    }

    #[test]
    fn health_entries_fall_back_to_the_node_address() -> Result<(), serde_json::Error> {
        let json = r#"[{"Node":{"Node":"n","Address":"10.0.0.1"},
            "Service":{"ID":"users-1","Service":"users","Tags":null,"Address":"","Port":8080,"Meta":null},
            "Checks":[]}]"#;
        let entries: Vec<ServiceEntry> = serde_json::from_str(json)?;
        let instances: Vec<Instance> =
            entries.into_iter().map(|e| e.into_instance(&Namespace::none())).collect();
        assert_eq!(instances[0].address, "10.0.0.1");
        assert_eq!(instances[0].base_url(), "http://10.0.0.1:8080");
        assert!(instances[0].tags.is_empty());
        Ok(())
    }
}
