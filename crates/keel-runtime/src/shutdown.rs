//! Stopping a process's parts in order.

use std::fmt::Display;
use std::sync::Arc;

use keel_bus::ConsumerHandle;
use keel_core::Bus;
use keel_service::RunningService;

use crate::{ProjectionTask, RelayTask, TimerTask};

/// What a Keel process stops when it ends, in the order [`stop`] stops them: the
/// services (deregister, drain), the consumers, the timer dispatchers, the
/// projections, the relay, the bus.
#[derive(Default)]
pub struct Parts {
    /// Each service with the name it is reported by.
    pub services: Vec<(String, RunningService)>,
    /// Each consumer with the name it is reported by.
    pub consumers: Vec<(String, ConsumerHandle)>,
    /// Each timer dispatcher with the name it is reported by.
    pub timers: Vec<(String, TimerTask)>,
    /// Each projection with the name it is reported by.
    pub projections: Vec<(String, ProjectionTask)>,
    /// The relay from the outbox to the broker, stopped after the projections.
    pub relay: Option<RelayTask>,
    /// The bus, closed last (waits for outstanding publish confirmations).
    pub bus: Option<Arc<dyn Bus>>,
}

impl std::fmt::Debug for Parts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parts")
            .field("services", &self.services.len())
            .field("consumers", &self.consumers.len())
            .field("timers", &self.timers.len())
            .field("projections", &self.projections.len())
            .field("relay", &self.relay.is_some())
            .field("bus", &self.bus.is_some())
            .finish()
    }
}

/// Notes how stopping each part went, so that no failure is dropped.
#[derive(Debug, Default)]
pub struct Shutdown {
    failed: Vec<String>,
}

impl Shutdown {
    /// Nothing noted yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Notes how stopping `part` went; a failure is logged at once, naming the part
    /// and with the whole error (`{:#}`, so an `anyhow` chain shows its causes).
    pub fn record<E: Display>(&mut self, part: &str, result: Result<(), E>) {
        if let Err(error) = result {
            tracing::error!(part, error = format!("{error:#}"), "did not stop cleanly");
            self.failed.push(part.to_owned());
        }
    }

    /// `Ok` when every part stopped cleanly, else the names of those that did not.
    pub fn finish(self) -> Result<(), ShutdownError> {
        if self.failed.is_empty() { Ok(()) } else { Err(ShutdownError { failed: self.failed }) }
    }
}

/// Some parts did not stop cleanly (each was logged with its error).
#[derive(Debug, thiserror::Error)]
#[error("shutdown failed: {} did not stop cleanly (see the log above)", .failed.join(", "))]
pub struct ShutdownError {
    /// The names of the parts that failed.
    pub failed: Vec<String>,
}

/// Stops `parts` in order (every part, even after one failed), noting each outcome in
/// `report`.
pub async fn stop_parts(parts: Parts, report: &mut Shutdown) {
    let Parts { services, consumers, timers, projections, relay, bus } = parts;
    for (_, service) in &services {
        service.shutdown();
    }
    for (name, service) in services {
        report.record(&name, service.wait().await);
    }
    for (name, consumer) in consumers {
        report.record(&name, consumer.stop().await);
    }
    for (name, dispatcher) in timers {
        report.record(&name, dispatcher.stop().await);
    }
    for (name, projection) in projections {
        report.record(&name, projection.stop().await);
    }
    if let Some(relay) = relay {
        report.record("the relay", relay.stop().await);
    }
    if let Some(bus) = bus {
        report.record("the bus", bus.close().await);
    }
}

/// Stops `parts` in order and reports whether all stopped cleanly.
pub async fn stop(parts: Parts) -> Result<(), ShutdownError> {
    let mut report = Shutdown::new();
    stop_parts(parts, &mut report).await;
    report.finish()
}
