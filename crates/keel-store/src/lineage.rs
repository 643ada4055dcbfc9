//! Causal lineage: what caused an event and what it caused, through the `causationid`
//! and `correlationid` extensions (`keel why`, the console's event page).
//!
//! A request's events carry its request id as `correlationid` and no `causationid`; an
//! event a handler wrote carries the handled event's id as `causationid` and inherits
//! its `correlationid` (keel-bus's `EventContext`). So the causes of an event are found
//! by following `causationid` up the log until an event has none, or names something
//! that is not an event in the log (the originating request); what it caused is every
//! event whose `causationid` is its id, recursively.

use std::collections::HashSet;
use std::fmt;

use keel_core::CloudEvent;
use serde_json::{Value, json};

use crate::error::Result;
use crate::log::{EventLog, LogEvent};

/// At most this many events in one lineage (causes, effects and correlated events
/// each), so that a runaway chain cannot exhaust memory.
pub const MAX_EVENTS: usize = 1000;

/// An event and, recursively, the events it caused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caused {
    /// The event.
    pub event: LogEvent,
    /// The events whose `causationid` is this event's id, in log order.
    pub caused: Vec<Caused>,
}

/// The causal lineage of one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lineage {
    /// The event asked about.
    pub event: LogEvent,
    /// Its causes, from the first event of the chain down to its direct cause.
    pub causes: Vec<LogEvent>,
    /// What started the chain when it is not an event in the log: the first cause's
    /// `causationid` or, without one, its `correlationid` (a request id).
    pub origin: Option<String>,
    /// The `correlationid` of the event (shared by everything one request caused).
    pub correlation_id: Option<String>,
    /// What the event caused, recursively.
    pub caused: Vec<Caused>,
    /// Every event with the same `correlationid`, in log order (at most
    /// [`MAX_EVENTS`]).
    pub correlated: Vec<LogEvent>,
    /// Whether a bound cut the lineage short.
    pub truncated: bool,
}

/// The lineage of the event `id`, or `None` if the log has no such event.
pub async fn lineage(log: &(impl EventLog + ?Sized), id: &str) -> Result<Option<Lineage>> {
    let Some(event) = log.event_by_id(id).await? else { return Ok(None) };
    let mut seen = HashSet::from([event.event.id().to_owned()]);
    let mut truncated = false;

    let mut causes = Vec::new();
    let mut origin = None;
    let mut next = event.event.causation_id().map(str::to_owned);
    while let Some(cause) = next.take() {
        if !seen.insert(cause.clone()) || causes.len() >= MAX_EVENTS {
            truncated |= causes.len() >= MAX_EVENTS;
            break;
        }
        match log.event_by_id(&cause).await? {
            Some(found) => {
                next = found.event.causation_id().map(str::to_owned);
                causes.push(found);
            }
            None => origin = Some(cause),
        }
    }
    causes.reverse();
    let first = causes.first().unwrap_or(&event);
    if origin.is_none() && first.event.causation_id().is_none() {
        origin = first.event.correlation_id().map(str::to_owned);
    }

    let mut budget = MAX_EVENTS;
    let caused = effects(log, &event.event, &mut seen, &mut budget).await?;
    truncated |= budget == 0;

    let correlation_id = event.event.correlation_id().map(str::to_owned);
    let correlated = match &correlation_id {
        Some(correlation) => log.correlated(correlation, MAX_EVENTS + 1).await?,
        None => Vec::new(),
    };
    truncated |= correlated.len() > MAX_EVENTS;
    let correlated = correlated.into_iter().take(MAX_EVENTS).collect();
    Ok(Some(Lineage { event, causes, origin, correlation_id, caused, correlated, truncated }))
}

/// What `event` caused, breadth first level by level, within `budget` events.
async fn effects(
    log: &(impl EventLog + ?Sized),
    event: &CloudEvent,
    seen: &mut HashSet<String>,
    budget: &mut usize,
) -> Result<Vec<Caused>> {
    // Iterative (no async recursion): collect each level, then assemble the tree.
    let mut levels: Vec<Vec<(usize, LogEvent)>> = Vec::new();
    let mut frontier = vec![event.id().to_owned()];
    while !frontier.is_empty() && *budget > 0 {
        let mut level = Vec::new();
        for (parent, id) in frontier.iter().enumerate() {
            for child in log.caused_by(id, (*budget).max(1)).await? {
                if *budget == 0 {
                    break;
                }
                if seen.insert(child.event.id().to_owned()) {
                    *budget -= 1;
                    level.push((parent, child));
                }
            }
        }
        frontier = level.iter().map(|(_, e)| e.event.id().to_owned()).collect();
        levels.push(level);
    }
    // Build bottom-up: each level's nodes take their children from the level below.
    let mut below: Vec<(usize, Caused)> = Vec::new();
    for level in levels.into_iter().rev() {
        let mut nodes: Vec<(usize, Caused)> = Vec::with_capacity(level.len());
        for (parent, event) in level {
            nodes.push((parent, Caused { event, caused: Vec::new() }));
        }
        for (index, child) in below {
            if let Some((_, node)) = nodes.get_mut(index) {
                node.caused.push(child);
            }
        }
        below = nodes;
    }
    Ok(below.into_iter().map(|(_, node)| node).collect())
}

/// One event in a lineage as JSON: its attributes without its data.
pub fn summary(event: &LogEvent) -> Value {
    let e = &event.event;
    json!({
        "id": e.id(),
        "type": e.ty(),
        "source": e.source(),
        "stream": e.subject(),
        "version": e.stream_version().map(|v| v.0),
        "position": event.cursor.position,
        "time": e.time().map(|t| t.to_rfc3339()),
        "causationid": e.causation_id(),
        "correlationid": e.correlation_id(),
    })
}

fn caused_json(caused: &Caused) -> Value {
    let mut node = summary(&caused.event);
    node["caused"] = caused.caused.iter().map(caused_json).collect();
    node
}

impl Lineage {
    /// The lineage as JSON (`keel why --json`, the console's lineage route): `event`,
    /// `causes` (first cause first), `origin`, `correlationid`, `caused` (a tree: each
    /// node has its own `caused`), `correlated` and `truncated`.
    pub fn to_json(&self) -> Value {
        json!({
            "event": summary(&self.event),
            "origin": self.origin,
            "correlationid": self.correlation_id,
            "causes": self.causes.iter().map(summary).collect::<Vec<_>>(),
            "caused": self.caused.iter().map(caused_json).collect::<Vec<_>>(),
            "correlated": self.correlated.iter().map(summary).collect::<Vec<_>>(),
            "truncated": self.truncated,
        })
    }
}

/// One line of the tree: type, stream@version, position, id.
fn label(event: &LogEvent) -> String {
    let e = &event.event;
    format!(
        "{}  {}@{}  #{}  {}",
        e.ty(),
        e.subject().unwrap_or("-"),
        e.stream_version().map_or(0, |v| v.0),
        event.cursor.position,
        e.id()
    )
}

fn write_caused(f: &mut fmt::Formatter<'_>, nodes: &[Caused], indent: &str) -> fmt::Result {
    for (i, node) in nodes.iter().enumerate() {
        let last = i + 1 == nodes.len();
        writeln!(f, "{indent}{} {}", if last { "└─" } else { "├─" }, label(&node.event))?;
        let deeper = format!("{indent}{}", if last { "   " } else { "│  " });
        write_caused(f, &node.caused, &deeper)?;
    }
    Ok(())
}

impl fmt::Display for Lineage {
    /// A tree from the origin through the causes down to the event (marked `*`) and
    /// what it caused, then the correlation.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut indent = String::new();
        if let Some(origin) = &self.origin {
            writeln!(f, "{origin}  (origin: request or message outside the log)")?;
            indent.push_str("   ");
        }
        for cause in &self.causes {
            if indent.is_empty() {
                writeln!(f, "{}", label(cause))?;
            } else {
                writeln!(f, "{}└─ {}", &indent[..indent.len() - 3], label(cause))?;
            }
            indent.push_str("   ");
        }
        if indent.is_empty() {
            writeln!(f, "* {}", label(&self.event))?;
        } else {
            writeln!(f, "{}└─ * {}", &indent[..indent.len() - 3], label(&self.event))?;
        }
        indent.push_str("   ");
        if self.caused.is_empty() {
            writeln!(f, "{indent}(caused nothing yet)")?;
        }
        write_caused(f, &self.caused, &indent)?;
        match &self.correlation_id {
            Some(correlation) => {
                write!(f, "correlation {correlation}: {} event(s)", self.correlated.len())?
            }
            None => write!(f, "no correlation id")?,
        }
        if self.truncated {
            write!(f, " (cut short at {MAX_EVENTS} events)")?;
        }
        Ok(())
    }
}
