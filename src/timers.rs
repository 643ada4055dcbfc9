//! `keel timers list|cancel`: the durable timers in the store (keel-timers), from
//! outside: what is pending, when, what each will publish, and cancelling one by key.
//! `keel status` shows their count and the oldest overdue one's lateness
//! ([`summary_json`]).

use anyhow::bail;
use chrono::{DateTime, SecondsFormat, Utc};
use keel_timers::{StoredTimer, TimerQuery, TimerSummary, TimersExt as _};
use serde_json::{Value, json};

use crate::backends::Store;
use crate::cli::TimerAction;
use crate::commands::Output;
use crate::config::Config;

/// Runs `keel timers ...`.
pub async fn timers(config: &Config, out: Output, action: TimerAction) -> anyhow::Result<()> {
    match action {
        TimerAction::List { dispatcher, due_before, limit } => {
            let query = TimerQuery { dispatcher, due_before, limit };
            list(config, out, &query).await
        }
        TimerAction::Cancel { key, dispatcher } => cancel(config, out, &key, &dispatcher).await,
    }
}

async fn list(config: &Config, out: Output, query: &TimerQuery) -> anyhow::Result<()> {
    if query.limit == 0 {
        bail!("--limit must be at least 1");
    }
    let store = Store::open_read_only(&config.database_url, &config.namespace).await?;
    let timers = keel_timers::list_timers(&store.db(), query).await?;
    let now = Utc::now();
    let rows: Vec<Value> = timers.iter().map(|timer| timer_json(timer, now)).collect();
    let value = json!({ "timers": rows });
    out.emit(&value, || {
        if timers.is_empty() {
            return "no pending timers".to_owned();
        }
        let mut text = format!(
            "{:<20} {:<12} {:<40} {:<28} {:<16} stream\n",
            "due", "dispatcher", "key", "type", "topic"
        );
        for timer in &timers {
            let mut line = format!(
                "{:<20} {:<12} {:<40} {:<28} {:<16} {}",
                time(timer.due_at),
                timer.dispatcher,
                timer.key,
                timer.event_type.as_deref().unwrap_or("?"),
                timer.topic.as_deref().unwrap_or("?"),
                timer.stream
            );
            if let Some(reason) = &timer.failed {
                line.push_str(&format!("  FAILED: {reason}"));
            } else if timer.due_at <= now {
                line.push_str(&format!("  ({} late)", seconds(now - timer.due_at)));
            }
            text.push_str(&line);
            text.push('\n');
        }
        if timers.len() == query.limit {
            text.push_str(&format!("(the first {}; --limit shows more)\n", query.limit));
        }
        text.trim_end().to_owned()
    })?;
    Ok(())
}

async fn cancel(config: &Config, out: Output, key: &str, dispatcher: &str) -> anyhow::Result<()> {
    let store = Store::open(&config.database_url, &config.namespace).await?;
    if !store.db().cancel_named(dispatcher, key).await? {
        bail!(
            "no timer `{key}` of dispatcher `{dispatcher}`: it already fired, was cancelled, \
             or never existed (keel timers list shows the pending ones)"
        );
    }
    let value = json!({ "cancelled": key, "dispatcher": dispatcher });
    out.emit(&value, || format!("cancelled timer {key} (dispatcher {dispatcher})"))?;
    Ok(())
}

/// One timer as `keel timers list --json` prints it.
fn timer_json(timer: &StoredTimer, now: DateTime<Utc>) -> Value {
    let late = (timer.failed.is_none() && timer.due_at <= now)
        .then(|| (now - timer.due_at).num_milliseconds());
    json!({
        "dispatcher": timer.dispatcher,
        "key": timer.key,
        "due_at": timer.due_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        "scheduled_at": timer.scheduled_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        "stream": timer.stream,
        "type": timer.event_type,
        "topic": timer.topic,
        "failed": timer.failed,
        "late_ms": late,
    })
}

/// The timers part of `keel status --json`.
pub fn summary_json(summary: &TimerSummary, now: DateTime<Utc>) -> Value {
    json!({
        "pending": summary.pending,
        "failed": summary.failed,
        "oldest_overdue": summary
            .oldest_overdue
            .map(|due| due.to_rfc3339_opts(SecondsFormat::Micros, true)),
        "oldest_overdue_late_ms": summary.lateness(now).map(|late| late.num_milliseconds()),
    })
}

/// The timers line of `keel status`.
pub fn summary_text(summary: &TimerSummary, now: DateTime<Utc>) -> String {
    let mut text = format!("timers {} pending", summary.pending);
    if let (Some(due), Some(late)) = (summary.oldest_overdue, summary.lateness(now)) {
        text.push_str(&format!(", the oldest overdue due {} ({} late)", time(due), seconds(late)));
    }
    if summary.failed > 0 {
        text.push_str(&format!(", {} failed (keel timers list shows why)", summary.failed));
    }
    text
}

/// A time to the second, for people.
fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A duration in seconds with a tenth, for people.
fn seconds(duration: chrono::Duration) -> String {
    // Milliseconds to seconds; display only.
    #[allow(clippy::cast_precision_loss)]
    let seconds = duration.num_milliseconds() as f64 / 1000.0;
    format!("{seconds:.1} s")
}
