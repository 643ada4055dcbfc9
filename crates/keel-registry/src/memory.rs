//! [`InProcessRegistry`]: the [`Registry`] of the embedded mode, in memory, running
//! HTTP health checks itself so that it behaves like Consul.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::{HealthCheck, Instance, Registration, Registry, RegistryError, Watch};

/// Registrations held in memory. An instance with a [`HealthCheck`] starts critical
/// (as in Consul), or passing if it says so ([`HealthCheck::initially_passing`]), and
/// is checked at once, then every `interval`: 2xx within `timeout` is passing,
/// anything else critical, and after `deregister_critical_after` critical the instance
/// is removed. Clones share the same registry.
#[derive(Debug, Clone)]
pub struct InProcessRegistry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    client: reqwest::Client,
}

#[derive(Debug, Default)]
struct State {
    instances: HashMap<String, Entry>,
    watchers: HashMap<String, watch::Sender<Arc<[Instance]>>>,
    generation: u64,
}

#[derive(Debug)]
struct Entry {
    instance: Instance,
    passing: bool,
    /// Tells a checker of an older registration of the same id to stand down.
    generation: u64,
    checker: Option<AbortHandle>,
}

impl Default for InProcessRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl InProcessRegistry {
    /// An empty in-process registry.
    pub fn new() -> Self {
        // Health checks target instances inside the deployment: never via a proxy.
        let client = reqwest::Client::builder().no_proxy().build().unwrap_or_default();
        Self { inner: Arc::new(Inner { state: Mutex::new(State::default()), client }) }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic (each update is one assignment).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn healthy(&self, service: &str) -> Vec<Instance> {
        let mut healthy: Vec<Instance> = self
            .instances
            .values()
            .filter(|e| e.passing && e.instance.service == service)
            .map(|e| e.instance.clone())
            .collect();
        healthy.sort();
        healthy
    }

    /// Pushes the healthy set of `service` to its watchers, if it changed.
    fn publish(&mut self, service: &str) {
        let Some(tx) = self.watchers.get(service) else { return };
        if tx.receiver_count() == 0 {
            self.watchers.remove(service);
            return;
        }
        let healthy = self.healthy(service);
        tx.send_if_modified(|current| {
            if current[..] == healthy[..] {
                return false;
            }
            *current = Arc::from(healthy);
            true
        });
    }

    fn remove(&mut self, instance_id: &str) {
        if let Some(entry) = self.instances.remove(instance_id) {
            if let Some(checker) = entry.checker {
                checker.abort();
            }
            self.publish(&entry.instance.service);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        for checker in state.instances.values().filter_map(|e| e.checker.as_ref()) {
            checker.abort();
        }
    }
}

#[async_trait::async_trait]
impl Registry for InProcessRegistry {
    async fn register(&self, registration: &Registration) -> Result<(), RegistryError> {
        let instance = registration.instance.clone();
        let mut state = self.inner.lock();
        state.remove(&instance.id);
        state.generation += 1;
        let generation = state.generation;
        let passing = registration.check.as_ref().is_none_or(|check| check.initially_passing);
        let checker = registration.check.clone().map(|check| {
            let task =
                run_check(Arc::downgrade(&self.inner), instance.id.clone(), generation, check);
            tokio::spawn(task).abort_handle()
        });
        let service = instance.service.clone();
        state
            .instances
            .insert(instance.id.clone(), Entry { instance, passing, generation, checker });
        state.publish(&service);
        Ok(())
    }

    async fn deregister(&self, instance_id: &str) -> Result<(), RegistryError> {
        self.inner.lock().remove(instance_id);
        Ok(())
    }

    async fn is_registered(&self, instance_id: &str) -> Result<bool, RegistryError> {
        Ok(self.inner.lock().instances.contains_key(instance_id))
    }

    async fn healthy(&self, service: &str) -> Result<Vec<Instance>, RegistryError> {
        Ok(self.inner.lock().healthy(service))
    }

    fn watch(&self, service: &str) -> Watch {
        let mut state = self.inner.lock();
        if let Some(tx) = state.watchers.get(service) {
            return Watch::new(tx.subscribe());
        }
        let (tx, rx) = watch::channel(Arc::from(state.healthy(service)));
        state.watchers.insert(service.to_owned(), tx);
        Watch::new(rx)
    }
}

/// Runs `check` against instance `id` until the instance is removed, re-registered
/// (a newer generation) or the registry is dropped.
async fn run_check(inner: Weak<Inner>, id: String, generation: u64, check: HealthCheck) {
    let Some(client) = inner.upgrade().map(|i| i.client.clone()) else { return };
    let mut critical_since: Option<Instant> = None;
    loop {
        let passing = match client.get(&check.http).timeout(check.timeout).send().await {
            Ok(response) => response.status().is_success(),
            Err(_) => false,
        };
        if passing {
            critical_since = None;
        } else {
            critical_since.get_or_insert_with(Instant::now);
        }
        let expired =
            critical_since.is_some_and(|t| t.elapsed() >= check.deregister_critical_after);
        {
            let Some(inner) = inner.upgrade() else { return };
            let mut state = inner.lock();
            let Some(entry) = state.instances.get_mut(&id).filter(|e| e.generation == generation)
            else {
                return;
            };
            if expired {
                tracing::info!(instance = %id, "health check critical too long; deregistering");
                entry.checker = None; // this task ends here; nothing to abort
                state.remove(&id);
                return;
            }
            if entry.passing != passing {
                entry.passing = passing;
                let service = entry.instance.service.clone();
                tracing::debug!(instance = %id, passing, "health check changed");
                state.publish(&service);
            }
        }
        tokio::time::sleep(check.interval.max(Duration::from_millis(10))).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn instance(id: &str, service: &str) -> Instance {
        Instance {
            id: id.to_owned(),
            service: service.to_owned(),
            address: "127.0.0.1".to_owned(),
            port: 1,
            tags: Vec::new(),
            meta: Default::default(),
        }
    }

    #[tokio::test]
    async fn unchecked_instances_are_healthy_until_deregistered() {
        let registry = InProcessRegistry::new();
        let mut watch = registry.watch("users");
        assert!(watch.snapshot().is_empty());
        let a = instance("users-a", "users");
        registry.register(&Registration { instance: a.clone(), check: None }).await.unwrap();
        registry
            .register(&Registration { instance: instance("orders-a", "orders"), check: None })
            .await
            .unwrap();
        assert_eq!(registry.healthy("users").await.unwrap(), vec![a.clone()]);
        assert_eq!(&watch.changed().await.unwrap()[..], &[a][..]);
        registry.deregister("users-a").await.unwrap();
        registry.deregister("unknown").await.unwrap();
        assert!(watch.changed().await.unwrap().is_empty());
        assert!(registry.healthy("users").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn watch_ends_when_the_registry_is_dropped() {
        let registry = InProcessRegistry::new();
        let mut watch = registry.watch("users");
        drop(registry);
        assert!(matches!(watch.changed().await, Err(RegistryError::Closed)));
    }
}
