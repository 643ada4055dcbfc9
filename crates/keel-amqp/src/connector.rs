//! The reconnect loop Keel owns (lapin's own auto-recovery is not used).
//!
//! A [`Connector`] holds at most one live connection. Whoever finds it missing or
//! broken connects again; attempts are serialised, and after a failed attempt the
//! next waits with exponential backoff (`reconnect_min` doubling up to
//! `reconnect_max`). Publishers ask with [`Wait::No`] and get a retryable
//! [`BusError::Connection`] at once while the broker is away; subscriptions ask with
//! [`Wait::Yes`] and sleep through the backoff. Each new connection has a new
//! generation number, so channels opened on an older one are known to be stale.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use keel_core::BusError;
use lapin::{Connection, ConnectionProperties};
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;

use crate::config::{AmqpConfig, BrokerUri};
use crate::error::from_lapin;

/// A live connection and its generation.
#[derive(Clone)]
pub(crate) struct Live {
    pub(crate) connection: Arc<Connection>,
    pub(crate) generation: u64,
}

impl Live {
    pub(crate) fn is_usable(&self) -> bool {
        self.connection.status().connected()
    }
}

/// Whether to sleep through the reconnect backoff or fail at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    Yes,
    No,
}

pub(crate) struct Connector {
    uri: BrokerUri,
    role: &'static str,
    config: Arc<AmqpConfig>,
    state: Mutex<State>,
    closed: AtomicBool,
}

#[derive(Default)]
struct State {
    live: Option<Live>,
    generation: u64,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<String>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector").field("uri", &self.uri).field("role", &self.role).finish()
    }
}

impl Connector {
    pub(crate) fn new(uri: BrokerUri, role: &'static str, config: Arc<AmqpConfig>) -> Self {
        Self {
            uri,
            role,
            config,
            state: Mutex::new(State::default()),
            closed: AtomicBool::new(false),
        }
    }

    /// The live connection, connecting first when there is none (see the module docs).
    /// `closed` ends a wait early with [`BusError::Closed`].
    pub(crate) async fn get(
        &self,
        wait: Wait,
        closed: Option<&mut watch::Receiver<bool>>,
    ) -> Result<Live, BusError> {
        let mut closed = closed;
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return Err(BusError::Closed);
            }
            let mut state = self.state.lock().await;
            if let Some(live) = state.live.as_ref().filter(|live| live.is_usable()) {
                return Ok(live.clone());
            }
            if let Some(at) = state.retry_at.filter(|at| *at > Instant::now()) {
                match wait {
                    Wait::No => {
                        return Err(BusError::Connection(format!(
                            "the broker is unreachable ({}); reconnecting in {} ms",
                            state.last_error.as_deref().unwrap_or("connection lost"),
                            at.saturating_duration_since(Instant::now()).as_millis()
                        )));
                    }
                    Wait::Yes => {
                        drop(state);
                        sleep_until(at, closed.as_deref_mut()).await?;
                        continue;
                    }
                }
            }
            if state.live.take().is_some() {
                tracing::warn!(role = self.role, "AMQP connection lost; reconnecting");
            }
            match self.connect().await {
                Ok(connection) => {
                    state.generation += 1;
                    let live =
                        Live { connection: Arc::new(connection), generation: state.generation };
                    if state.failures > 0 || state.generation > 1 {
                        tracing::info!(
                            role = self.role,
                            generation = state.generation,
                            "AMQP connection re-established"
                        );
                        metrics::counter!("keel_amqp_reconnects_total", "role" => self.role)
                            .increment(1);
                    }
                    state.live = Some(live.clone());
                    state.failures = 0;
                    state.retry_at = None;
                    state.last_error = None;
                    return Ok(live);
                }
                Err(error) => {
                    state.failures = state.failures.saturating_add(1);
                    let delay = self.config.reconnect_delay(state.failures);
                    state.retry_at = Some(Instant::now() + delay);
                    state.last_error = Some(error.to_string());
                    tracing::warn!(role = self.role, %error, failures = state.failures, ?delay, "AMQP connection attempt failed");
                    if wait == Wait::No || !error.is_retryable() {
                        return Err(error);
                    }
                }
            }
        }
    }

    async fn connect(&self) -> Result<Connection, BusError> {
        let properties = ConnectionProperties::default().with_connection_name(
            format!("{} ({})", self.config.connection_name, self.role).into(),
        );
        match tokio::time::timeout(
            self.config.connect_timeout,
            Connection::connect(&self.uri.0, properties),
        )
        .await
        {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(error)) => Err(from_lapin(&format!("connecting to {:?}", self.uri), &error)),
            Err(_) => Err(BusError::Connection(format!(
                "connecting to {:?} took longer than {:?}",
                self.uri, self.config.connect_timeout
            ))),
        }
    }

    /// Closes the connection; later calls fail with [`BusError::Closed`].
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let live = self.state.lock().await.live.take();
        if let Some(live) = live
            && live.is_usable()
            && let Err(error) = live.connection.close(200, "keel: closed".into()).await
        {
            tracing::debug!(role = self.role, %error, "closing the AMQP connection");
        }
    }
}

/// Sleeps until `at`, or fails with [`BusError::Closed`] once `closed` says so.
pub(crate) async fn sleep_until(
    at: Instant,
    closed: Option<&mut watch::Receiver<bool>>,
) -> Result<(), BusError> {
    let Some(closed) = closed else {
        tokio::time::sleep_until(at).await;
        return Ok(());
    };
    if *closed.borrow() {
        return Err(BusError::Closed);
    }
    tokio::select! {
        () = tokio::time::sleep_until(at) => Ok(()),
        _ = closed.wait_for(|closed| *closed) => Err(BusError::Closed),
    }
}
