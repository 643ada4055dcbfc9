//! [`Readiness`]: the named checks behind `/ready`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

type CheckFn = dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync;

/// Named async checks that must all pass for the service to take traffic, e.g.
/// `Readiness::new().check("database", move || { let pool = pool.clone(); async move { ... } })`.
/// They run concurrently on every `/ready` request, each bounded by the timeout.
#[derive(Clone)]
pub struct Readiness {
    checks: Vec<(String, Arc<CheckFn>)>,
    timeout: Duration,
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.checks.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("Readiness").field("checks", &names).field("timeout", &self.timeout).finish()
    }
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

impl Readiness {
    /// No checks (always ready), 2 s timeout per check.
    pub fn new() -> Self {
        Self { checks: Vec::new(), timeout: Duration::from_secs(2) }
    }

    /// Adds a check; `Err(reason)` means not ready.
    #[must_use]
    pub fn check<F, Fut>(mut self, name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks.push((name.into(), Arc::new(move || Box::pin(check()))));
        self
    }

    /// How long one check may take before it counts as failed.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs every check; returns the failed ones as `(name, reason)`, in order.
    pub async fn failures(&self) -> Vec<(String, String)> {
        let runs = self.checks.iter().map(|(name, check)| async move {
            let outcome = match tokio::time::timeout(self.timeout, check()).await {
                Ok(outcome) => outcome,
                Err(_) => Err(format!("no answer within {:?}", self.timeout)),
            };
            outcome.err().map(|reason| (name.clone(), reason))
        });
        futures::future::join_all(runs).await.into_iter().flatten().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reports_the_failed_and_slow_checks_by_name() {
        let readiness = Readiness::new()
            .with_timeout(Duration::from_millis(50))
            .check("database", || async { Ok(()) })
            .check("bus", || async { Err("connection refused".to_owned()) })
            .check("slow", || async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(())
            });
        let failures = readiness.failures().await;
        let names: Vec<&str> = failures.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["bus", "slow"]);
        assert_eq!(failures[0].1, "connection refused");
        assert!(Readiness::new().failures().await.is_empty());
    }
}
