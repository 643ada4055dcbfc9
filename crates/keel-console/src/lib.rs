//! Keel's web console: what an operator looks at in a browser. Streams (by category,
//! one stream, the log filtered by type and time), an event with its causal lineage,
//! consumer groups with their lag, dead letters (show, retry, retry all, purge),
//! projections (position, lag, rebuild) and relays (position, lag, dead letters).
//!
//! The pages are HTML rendered on the server, with one embedded style sheet and no
//! script: nothing is fetched from outside, so the console works offline. Actions are
//! plain HTML forms (POST, then a redirect back). [`router`] serves everything under
//! [`BASE`] (`/_keel/console`); `keel up` mounts it on its gateway (which asks for the
//! `admin` role when authentication is on) and `keel console` serves it alone.
//!
//! ```no_run
//! # async fn example(log: std::sync::Arc<dyn keel_store::EventLog>) {
//! let console = keel_console::Console::new(log).describe_bus("the event log itself");
//! let app = keel_console::router(console);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8090").await.unwrap();
//! axum::serve(listener, app).await.unwrap();
//! # }
//! ```
//!
//! Layout:
//! - `lib.rs`: [`Console`] (what the console reads and acts on) and [`router`].
//! - [`sources`]: the seams behind the pages: [`GroupLag`] (consumer groups and their
//!   lag on each backend: [`LogBusGroups`] for the log bus, [`BusGroups`] for a broker)
//!   and [`Rebuild`] (rebuilding projections).
//! - `html.rs`: escaping, links and the page frame (the style sheet is embedded).
//! - `pages.rs`: one handler per page and action.
#![warn(missing_docs)]

mod html;
mod pages;
pub mod sources;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use keel_core::{DeadLetters, Publisher};
use keel_store::EventLog;

pub use sources::{BusGroups, GroupLag, GroupRef, GroupStatus, LogBusGroups, Rebuild};

/// Where the console lives: every page is under this path.
pub const BASE: &str = "/_keel/console";

/// What the console reads and acts on. Cheap to clone.
#[derive(Clone)]
pub struct Console {
    pub(crate) log: Arc<dyn EventLog>,
    pub(crate) dead_letters: Option<Arc<dyn DeadLetters>>,
    pub(crate) publisher: Option<Arc<dyn Publisher>>,
    pub(crate) lag: Option<Arc<dyn GroupLag>>,
    pub(crate) groups: Vec<GroupRef>,
    pub(crate) rebuild: Option<Arc<dyn Rebuild>>,
    pub(crate) bus: String,
    pub(crate) store: String,
    /// The outcome of each projection's last rebuild from this console.
    pub(crate) rebuilds: Arc<Mutex<HashMap<String, String>>>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("bus", &self.bus)
            .field("store", &self.store)
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

impl Console {
    /// A console on `log`: streams, events, projections and relays. Consumer groups,
    /// dead letters and rebuilds need the builder methods below.
    pub fn new(log: Arc<dyn EventLog>) -> Self {
        Self {
            log,
            dead_letters: None,
            publisher: None,
            lag: None,
            groups: Vec::new(),
            rebuild: None,
            bus: "not configured".to_owned(),
            store: "the event log".to_owned(),
            rebuilds: Arc::default(),
        }
    }

    /// The bus whose consumer groups' dead letters the console shows, retries and
    /// purges (the same operations as `keel dlq`).
    pub fn dead_letters(mut self, bus: Arc<dyn DeadLetters>) -> Self {
        self.dead_letters = Some(bus);
        self
    }

    /// The bus relays publish to: retrying a relay's dead letter publishes its event
    /// again through it.
    pub fn relay_publisher(mut self, bus: Arc<dyn Publisher>) -> Self {
        self.publisher = Some(bus);
        self
    }

    /// Where consumer groups and their lag come from.
    pub fn group_lag(mut self, lag: Arc<dyn GroupLag>) -> Self {
        self.lag = Some(lag);
        self
    }

    /// A consumer group to show even if the backend cannot list it (a broker's groups
    /// are known to the processes that run them).
    pub fn group(mut self, topic: impl Into<String>, group: impl Into<String>) -> Self {
        let group = GroupRef { topic: topic.into(), group: group.into() };
        if !self.groups.contains(&group) {
            self.groups.push(group);
        }
        self
    }

    /// How to rebuild projections (the projections page then has a rebuild button).
    pub fn rebuild(mut self, rebuild: Arc<dyn Rebuild>) -> Self {
        self.rebuild = Some(rebuild);
        self
    }

    /// The bus as the overview names it (a redacted URL, say).
    pub fn describe_bus(mut self, bus: impl Into<String>) -> Self {
        self.bus = bus.into();
        self
    }

    /// The store as the overview names it (a redacted URL, say).
    pub fn describe_store(mut self, store: impl Into<String>) -> Self {
        self.store = store.into();
        self
    }
}

impl Console {
    pub(crate) fn rebuilds_snapshot(&self) -> HashMap<String, String> {
        self.rebuilds.lock().map(|r| r.clone()).unwrap_or_default()
    }

    pub(crate) fn set_rebuild(&self, name: &str, outcome: String) {
        if let Ok(mut rebuilds) = self.rebuilds.lock() {
            rebuilds.insert(name.to_owned(), outcome);
        }
    }
}

/// The console's routes, all under [`BASE`]; `GET /` and `GET /_keel` redirect there.
pub fn router(console: Console) -> axum::Router {
    pages::router(Arc::new(console))
}
