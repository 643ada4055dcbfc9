//! `keel groups list|reset|replay`: the consumer groups of the bus, from outside.
//!
//! Each backend keeps a group's place its own way, so each does what it can:
//!
//! | | list (lag) | reset | replay to one group |
//! |---|---|---|---|
//! | the log itself | every group: its checkpoint in the store | moves the checkpoint (holding the group's lease, so no consumer runs) | = reset: the group reads the log again |
//! | Kafka | the groups the brokers know, on `--topic` | commits the group's offsets (start, end, time) | publishes the log's events to the group only |
//! | RabbitMQ | `--topic` and `--group` (AMQP cannot list queues) | empties the queue, then backfills it from the log | publishes the log's events to the group's queue |
//! | `memory://` | its groups live in the process that opened the bus: nothing to reach from here | | |
//!
//! Under `KEEL_NAMESPACE` the broker's topics and groups are qualified (`NS.name`) as
//! the services' own `NamespacedBus` qualifies them; commands take and print the
//! unqualified names.

use std::sync::Arc;

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use keel_core::Position;
use keel_store::{Cursor, EventLog, LogFilter, LogQuery};
use serde_json::json;

use crate::backends::Store;
use crate::cli::{GroupAction, GroupTarget, ResetTo};
use crate::commands::{Output, ReplayArgs};
use crate::config::Config;

/// The bus of `KEEL_BUS_URL`, as `keel groups` reaches it.
enum GroupBus {
    Log,
    Amqp(keel_amqp::AmqpBus),
    Kafka(keel_kafka::KafkaBus),
}

async fn group_bus(config: &Config) -> anyhow::Result<GroupBus> {
    let Some(url) = config.bus_url.as_deref() else { return Ok(GroupBus::Log) };
    if url.starts_with("log://") {
        return Ok(GroupBus::Log);
    }
    if url.starts_with("amqp://") || url.starts_with("amqps://") {
        let bus = keel_amqp::AmqpBus::connect(url, keel_amqp::AmqpConfig::default())
            .await
            .context("KEEL_BUS_URL")?;
        return Ok(GroupBus::Amqp(bus));
    }
    if url.starts_with("kafka://") {
        let bus = keel_kafka::KafkaBus::connect_checked(url).await.context("KEEL_BUS_URL")?;
        return Ok(GroupBus::Kafka(bus));
    }
    if url.starts_with("memory://") {
        bail!(
            "KEEL_BUS_URL is memory://: its consumer groups live inside the process that \
             opened the bus, and no other process (this one included) can see or move them"
        );
    }
    bail!("KEEL_BUS_URL `{}`: not a bus keel groups knows", keel_runtime::redact_url(url))
}

/// Runs `keel groups ...`.
pub async fn groups(config: &Config, out: Output, action: GroupAction) -> anyhow::Result<()> {
    let bus = group_bus(config).await?;
    match action {
        GroupAction::List { topic, group } => list(config, out, &bus, topic, group).await,
        GroupAction::Reset { target, to } => reset(config, out, &bus, &target, &to).await,
        GroupAction::Replay { target, from, since, types } => {
            replay(config, out, &bus, &target, from, since, types).await
        }
    }
}

async fn list(
    config: &Config,
    out: Output,
    bus: &GroupBus,
    topic: Option<String>,
    group: Option<String>,
) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    match bus {
        GroupBus::Log => {
            let store = Store::open_read_only(&config.database_url, &config.namespace).await?;
            let log = store.log();
            for (name, cursor, updated) in log.checkpoints().await? {
                let Some((t, g)) = name.strip_prefix("bus:").and_then(|r| r.split_once(':')) else {
                    continue;
                };
                if topic.as_deref().is_some_and(|x| x != t)
                    || group.as_deref().is_some_and(|x| x != g)
                {
                    continue;
                }
                let (lag, next) = topic_lag(&*log, t, cursor).await?;
                rows.push(json!({
                    "topic": t, "group": g, "lag": lag, "next_position": next,
                    "cursor": cursor.to_string(), "updated_at": updated.to_rfc3339(),
                }));
            }
        }
        GroupBus::Amqp(bus) => {
            let (Some(topic), Some(group)) = (topic, group) else {
                bail!(
                    "on RabbitMQ give --topic and --group: AMQP cannot list queues (the \
                     management plugin can: rabbitmqctl list_queues name messages consumers)"
                );
            };
            let ns = &config.namespace;
            let depth = bus
                .queue_depth(&ns.qualify(&topic), &ns.qualify(&group))
                .await?
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "group {group} of topic {topic} was never subscribed (no queue)"
                    )
                })?;
            rows.push(json!({
                "topic": topic, "group": group, "lag": depth.messages, "consumers": depth.consumers,
            }));
            keel_core::Publisher::close(bus).await?;
        }
        GroupBus::Kafka(bus) => {
            let Some(topic) = topic else {
                bail!("on Kafka give --topic: a group's lag is per topic");
            };
            // Under a namespace the broker's names are qualified (`NS.name`, as
            // NamespacedBus makes them); the rows show the caller's names.
            let ns = &config.namespace;
            let names = match group {
                Some(group) => vec![group],
                None => bus
                    .group_names()
                    .await?
                    .iter()
                    .filter_map(|name| ns.unqualify(name).map(str::to_owned))
                    .collect(),
            };
            for group in names {
                let partitions = bus.group_lag(&ns.qualify(&topic), &ns.qualify(&group)).await?;
                if partitions.iter().all(|p| p.committed.is_none()) {
                    continue;
                }
                let lag: u64 = partitions.iter().map(keel_kafka::PartitionLag::lag).sum();
                let parts: Vec<_> = partitions
                    .iter()
                    .map(|p| json!({"partition": p.partition, "committed": p.committed, "end": p.end}))
                    .collect();
                rows.push(
                    json!({ "topic": topic, "group": group, "lag": lag, "partitions": parts }),
                );
            }
        }
    }
    let value = json!({ "groups": rows });
    out.emit(&value, || {
        if rows.is_empty() {
            return "no consumer groups".to_owned();
        }
        let mut text = format!("{:<32} {:<32} {:>10}\n", "topic", "group", "lag");
        for row in &rows {
            text.push_str(&format!(
                "{:<32} {:<32} {:>10}\n",
                row["topic"].as_str().unwrap_or_default(),
                row["group"].as_str().unwrap_or_default(),
                row["lag"].as_u64().unwrap_or_default()
            ));
        }
        text.trim_end().to_owned()
    })?;
    Ok(())
}

/// Events of `topic` after `cursor` (the group's lag), and the position of the first
/// of them in subscription order (what the group gets next).
async fn topic_lag(
    log: &dyn EventLog,
    topic: &str,
    mut cursor: Cursor,
) -> anyhow::Result<(u64, Option<u64>)> {
    let filter = LogFilter { topic: Some(topic.to_owned()), ..LogFilter::default() };
    let (mut lag, mut next) = (0u64, None);
    loop {
        let page = log.read_after(cursor, &filter, 1000).await?;
        if next.is_none() {
            next = page.events.first().map(|e| e.cursor.log_position().0);
        }
        lag += page.events.len() as u64;
        if page.events.is_empty() || page.next == cursor {
            return Ok((lag, next));
        }
        cursor = page.next;
    }
}

/// Where a reset moves a group, in log terms: after this position (`None`: to the end).
async fn log_start(log: &dyn EventLog, to: &ResetTo) -> anyhow::Result<Option<Position>> {
    if to.to_end {
        return Ok(None);
    }
    if let Some(position) = to.to_position {
        return Ok(Some(Position(position)));
    }
    if let Some(time) = to.to_time {
        let first =
            log.read_all(&LogQuery { since: Some(time), limit: 1, ..LogQuery::default() }).await?;
        return Ok(first.first().map(|e| Position(e.cursor.log_position().0.saturating_sub(1))));
    }
    Ok(Some(Position::START))
}

async fn reset(
    config: &Config,
    out: Output,
    bus: &GroupBus,
    target: &GroupTarget,
    to: &ResetTo,
) -> anyhow::Result<()> {
    let (topic, group) = (target.topic.as_str(), target.group.as_str());
    // On a broker the names are qualified by the namespace, as NamespacedBus does.
    let ns = &config.namespace;
    let (broker_topic, broker_group) = (ns.qualify(topic), ns.qualify(group));
    let value = match bus {
        GroupBus::Log => {
            let store = Store::open(&config.database_url, &config.namespace).await?;
            let log = store.log();
            let after = log_start(&*log, to).await?;
            let cursor = reset_log_group(&store, topic, group, after).await?;
            let (lag, next) = topic_lag(&*log, topic, cursor).await?;
            json!({"bus": "log", "topic": topic, "group": group, "lag": lag, "next_position": next})
        }
        GroupBus::Amqp(bus) => {
            let store = Store::open(&config.database_url, &config.namespace).await?;
            let log = store.log();
            let after = log_start(&*log, to).await?;
            let purged = bus.purge_group(&broker_topic, &broker_group).await?;
            let mut refilled = 0;
            if let Some(from) = after {
                // The log's topic is the caller's; the bus qualifies it for the broker.
                let mut spec = keel_store::GroupBackfill::new(topic, group);
                spec.from = from;
                let publisher = keel_core::NamespacedBus::wrap(Arc::new(bus.clone()), ns);
                refilled =
                    keel_store::backfill_group(&*log, &*publisher, &spec, |_| {}).await?.published;
            }
            keel_core::Publisher::close(bus).await?;
            json!({"bus": "amqp", "topic": topic, "group": group, "purged": purged, "replayed": refilled})
        }
        GroupBus::Kafka(bus) => {
            let reset = if to.to_start {
                keel_kafka::GroupReset::Start
            } else if to.to_end {
                keel_kafka::GroupReset::End
            } else if let Some(time) = to.to_time {
                keel_kafka::GroupReset::Time(time)
            } else {
                bail!(
                    "--to-position on Kafka: a topic's offsets are not log positions; use \
                     --to-time, --to-start or --to-end, or `keel groups replay --from POSITION` \
                     to send the log's events from a position to this group"
                );
            };
            let partitions = bus.reset_group(&broker_topic, &broker_group, reset).await?;
            let lag: u64 = partitions.iter().map(keel_kafka::PartitionLag::lag).sum();
            json!({"bus": "kafka", "topic": topic, "group": group, "lag": lag})
        }
    };
    out.emit(&value, || match value["bus"].as_str() {
        Some("amqp") => format!(
            "emptied {topic}/{group} ({} message(s)) and replayed {} event(s) from the log into it",
            value["purged"], value["replayed"]
        ),
        _ => format!("moved {topic}/{group}: {} message(s) to come", value["lag"]),
    })?;
    Ok(())
}

/// Moves a log-bus group's checkpoint so that it next gets the events after `after`
/// (`None`: only events appended from now on). Refused while the group is consumed
/// (its lease is held): the feeder's next save would undo the move.
async fn reset_log_group(
    store: &Store,
    topic: &str,
    group: &str,
    after: Option<Position>,
) -> anyhow::Result<Cursor> {
    use keel_logbus::BusStore as _;

    keel_core::bus::validate_topic(topic)?;
    keel_core::bus::validate_group(group)?;
    let log = store.log();
    let name = keel_logbus::checkpoint_name(topic, group);
    let Some(lease) = log.try_lease(&name).await? else {
        bail!(
            "group {group} of topic {topic} is being consumed now (a process holds its lease): \
             stop its consumers first, then reset it"
        );
    };
    let result = async {
        let cursor = match after {
            Some(position) => log.cursor_before(position).await?,
            None => log.cursor_before(log.head().await?).await?,
        };
        match store {
            Store::Sqlite(log) => log.reset_group(&name, cursor).await?,
            Store::Postgres(log) => log.reset_group(&name, cursor).await?,
        }
        anyhow::Ok(cursor)
    }
    .await;
    lease.release().await;
    result
}

async fn replay(
    config: &Config,
    out: Output,
    bus: &GroupBus,
    target: &GroupTarget,
    from: Option<u64>,
    since: Option<DateTime<Utc>>,
    types: Vec<String>,
) -> anyhow::Result<()> {
    match bus {
        GroupBus::Log => {
            if !types.is_empty() {
                bail!(
                    "--type with the log as the bus: a group reads the log itself, so a replay \
                     moves its checkpoint back and it gets every event of its topic again"
                );
            }
            let to = ResetTo {
                to_position: from,
                to_time: since,
                to_start: from.is_none() && since.is_none(),
                to_end: false,
            };
            reset(config, out, bus, target, &to).await
        }
        GroupBus::Amqp(_) | GroupBus::Kafka(_) => {
            // Published to that group alone, from the log: `keel replay --into group:`.
            let args = ReplayArgs {
                from,
                since,
                types,
                stream: None,
                into: format!("group:{}:{}", target.topic, target.group),
                source: "log".to_owned(),
            };
            crate::commands::replay(config, out, args).await
        }
    }
}
