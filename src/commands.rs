//! What each `keel` command does.

use std::io::{IsTerminal as _, Write as _};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use keel_core::codec::to_structured;
use keel_core::{CloudEvent, DeadLetterId, ExpectedVersion, Payload, Position, StreamId};
use keel_store::{
    GroupBackfill, LogEvent, LogFilter, LogQuery, SqlEventLog as _, SubscribeOptions, subscribe,
};
use serde_json::json;

use crate::backends::{Store, open_bus};
use crate::cli::DlqAction;
use crate::config::Config;
use crate::projections;
use keel_runtime::redact_url;

/// How results are printed.
#[derive(Clone, Copy, Debug)]
pub struct Output {
    pub json: bool,
}

impl Output {
    /// Prints `value` as JSON, or `text` for people.
    pub(crate) fn emit(
        self,
        value: &serde_json::Value,
        text: impl FnOnce() -> String,
    ) -> std::io::Result<()> {
        if self.json { say(&value.to_string()) } else { say(&text()) }
    }
}

/// Writes one line to stdout. Unlike `println!`, a closed stdout (`keel tail | head
/// -1`) is an error the caller returns, not a panic; `main` ends quietly on it.
fn say(line: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(line.as_bytes())?;
    stdout.write_all(b"\n")?;
    stdout.flush()
}

pub async fn migrate(config: &Config, out: Output) -> anyhow::Result<()> {
    let store = Store::open(&config.database_url, &config.namespace).await?;
    let migrations: Vec<serde_json::Value> = match &store {
        Store::Postgres(_) => keel_postgres::migrator()
            .iter()
            .map(|m| json!({"version": m.version, "description": m.description}))
            .collect(),
        Store::Sqlite(_) => keel_sqlite::migrator()
            .iter()
            .map(|m| json!({"version": m.version, "description": m.description}))
            .collect(),
    };
    let value = json!({ "store": store.kind(), "migrations": migrations });
    out.emit(&value, || {
        format!("{} is migrated ({} Keel migration(s) applied)", store.kind(), migrations.len())
    })?;
    Ok(())
}

pub async fn publish(
    config: &Config,
    out: Output,
    ty: &str,
    stream: &str,
    data: &str,
    source: &str,
) -> anyhow::Result<()> {
    let stream = StreamId::new(stream).context("--stream")?;
    let value: serde_json::Value =
        serde_json::from_str(data).context("--data is not valid JSON")?;
    let event = CloudEvent::builder(ty, source)
        .subject(stream.as_str())
        .json_data(&value)?
        .build()
        .context("the event is not a valid CloudEvent")?;
    let store = Store::open(&config.database_url, &config.namespace).await?;
    let result =
        store.log().append(&stream, ExpectedVersion::Any, std::slice::from_ref(&event)).await?;
    let position = result.positions.first().copied().unwrap_or_default();
    let value = json!({ "id": event.id(), "stream": stream.as_str(), "version": result.version.0, "position": position.0 });
    out.emit(&value, || {
        format!(
            "appended {} to {stream} at version {} (position {position})",
            event.id(),
            result.version
        )
    })?;
    Ok(())
}

/// `keel replay` arguments.
#[derive(Debug)]
pub struct ReplayArgs {
    pub from: Option<u64>,
    pub since: Option<DateTime<Utc>>,
    pub types: Vec<String>,
    pub stream: Option<String>,
    pub into: String,
    pub source: String,
}

pub async fn replay(config: &Config, out: Output, args: ReplayArgs) -> anyhow::Result<()> {
    if let Some(topic) = args.source.strip_prefix("kafka:") {
        return replay_kafka(config, topic, &args).await;
    }
    if args.source != "log" {
        bail!("--source `{}`: expected log or kafka:TOPIC", args.source);
    }
    if let Some(name) = args.into.strip_prefix("projection:") {
        if args.from.is_some()
            || args.since.is_some()
            || !args.types.is_empty()
            || args.stream.is_some()
        {
            bail!(
                "--into projection:{name} rebuilds the projection from the whole log; drop --from, --since, --type and --stream"
            );
        }
        return projections_rebuild(config, out, name, false).await;
    }
    if let Some(target) = args.into.strip_prefix("group:") {
        return replay_into_group(config, out, target, &args).await;
    }
    let bus = match args.into.as_str() {
        "stdout" => None,
        "bus" => Some(open_bus(config.bus_url.as_deref(), &config.namespace).await?.ok_or_else(|| {
            anyhow::anyhow!("--into bus needs KEEL_BUS_URL: without it the log itself is the bus, and subscribers already read it")
        })?),
        other => {
            bail!("--into `{other}`: expected stdout, bus or projection:NAME, or group:TOPIC:GROUP")
        }
    };
    let stream = args.stream.map(StreamId::new).transpose().context("--stream")?;
    let store = Store::open_read_only(&config.database_url, &config.namespace).await?;
    let log = store.log();
    let from = Position(args.from.unwrap_or(0));
    let head = log.head().await?;
    let progress = progress_bar(head.0.saturating_sub(from.0));
    let query =
        LogQuery { from, since: args.since, types: args.types, stream, topic: None, limit: 2000 };
    let mut batches = log.replay(query);
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let mut count = 0u64;
    while let Some(page) = batches.next().await {
        let page = page?;
        let Some(last) = page.last().and_then(|e| e.event.position()) else { continue };
        match &bus {
            None => {
                for event in &page {
                    stdout.write_all(&to_structured(&event.event))?;
                    stdout.write_all(b"\n")?;
                }
            }
            Some(bus) => publish_in_runs(&**bus, &page).await?,
        }
        count += page.len() as u64;
        progress.set_position(last.0.saturating_sub(from.0));
    }
    stdout.flush()?;
    progress.finish_and_clear();
    if bus.is_some() || !std::io::stdout().is_terminal() {
        let value = json!({ "replayed": count, "into": args.into });
        if bus.is_some() {
            out.emit(&value, || format!("replayed {count} event(s) into the bus"))?;
        } else {
            eprintln!("replayed {count} event(s) from {}", database_name(&config.database_url));
        }
    }
    Ok(())
}

/// `keel replay --into group:TOPIC:GROUP`: backfills one consumer group of the bus
/// from the log (see `keel_store::backfill`), without the other groups getting the
/// events again.
async fn replay_into_group(
    config: &Config,
    out: Output,
    target: &str,
    args: &ReplayArgs,
) -> anyhow::Result<()> {
    let Some((topic, group)) = target.split_once(':') else {
        bail!("--into group:{target}: expected group:TOPIC:GROUP");
    };
    let bus = open_bus(config.bus_url.as_deref(), &config.namespace).await?.ok_or_else(|| {
        anyhow::anyhow!(
            "--into group:{target} needs KEEL_BUS_URL: with the log itself as the bus, a group reads the log and misses nothing"
        )
    })?;
    let store = Store::open(&config.database_url, &config.namespace).await?;
    let log = store.log();
    let mut spec = GroupBackfill::new(topic, group);
    spec.from = Position(args.from.unwrap_or(0));
    spec.since = args.since;
    spec.types.clone_from(&args.types);
    spec.stream = args.stream.clone().map(StreamId::new).transpose().context("--stream")?;
    let head = log.head().await?;
    let bar = progress_bar(head.0.saturating_sub(spec.from.0));
    let mut reached = spec.from;
    let done = keel_store::backfill_group(&*log, &*bus, &spec, |progress| {
        reached = progress.position;
        bar.set_position(progress.position.0.saturating_sub(spec.from.0));
    })
    .await;
    bar.finish_and_clear();
    keel_core::Publisher::close(&*bus).await?;
    let done = done.with_context(|| {
        format!(
            "backfilling {topic}/{group} stopped after position {reached}; \
             run again with --from {reached} to go on"
        )
    })?;
    let value = json!({
        "replayed": done.published, "into": args.into, "topic": topic, "group": group,
        "position": done.position.0,
    });
    out.emit(&value, || {
        format!(
            "replayed {} event(s) of {topic} into group {group} (up to position {})",
            done.published, done.position
        )
    })?;
    Ok(())
}

/// `keel replay --source kafka:TOPIC`: reads a topic of the Kafka bus from an offset
/// or a time, outside any consumer group, onto stdout.
async fn replay_kafka(config: &Config, topic: &str, args: &ReplayArgs) -> anyhow::Result<()> {
    use keel_kafka::{KafkaConfig, KafkaReplay, ReplayStart};

    if args.into != "stdout" {
        bail!("--source kafka:{topic} replays onto stdout only; drop --into {}", args.into);
    }
    let url = config.bus_url.as_deref().unwrap_or_default();
    if !url.starts_with("kafka://") {
        bail!("--source kafka:{topic} needs KEEL_BUS_URL=kafka://...");
    }
    let kafka = KafkaConfig::from_url(url).context("KEEL_BUS_URL")?;
    let start = match (args.from, args.since) {
        (Some(offset), _) => ReplayStart::Offset(i64::try_from(offset).context("--from")?),
        (None, Some(since)) => ReplayStart::Time(since),
        (None, None) => ReplayStart::Beginning,
    };
    // The bus's topics are qualified by the namespace (NamespacedBus); so is this one.
    let records =
        KafkaReplay::new(kafka).read(&config.namespace.qualify(topic), start, usize::MAX).await?;
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let (mut count, mut undecodable) = (0u64, 0u64);
    for record in &records {
        let Payload::Event(event) = &record.payload else {
            undecodable += 1;
            continue;
        };
        let type_matches = args.types.is_empty() || args.types.iter().any(|t| t == event.ty());
        let stream_matches = args.stream.as_deref().is_none_or(|s| event.subject() == Some(s));
        if type_matches && stream_matches {
            stdout.write_all(&to_structured(event))?;
            stdout.write_all(b"\n")?;
            count += 1;
        }
    }
    stdout.flush()?;
    eprintln!(
        "replayed {count} event(s) from kafka topic {topic} ({undecodable} undecodable skipped)"
    );
    Ok(())
}

/// Publishes events in log order, one batch per run of the same topic.
async fn publish_in_runs(
    bus: &dyn keel_core::Publisher,
    events: &[LogEvent],
) -> anyhow::Result<()> {
    for run in events.chunk_by(|a, b| a.topic == b.topic) {
        let batch: Vec<CloudEvent> = run.iter().map(|e| e.event.clone()).collect();
        bus.publish(&run[0].topic, &batch).await?;
    }
    Ok(())
}

fn progress_bar(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style);
    }
    bar
}

fn line(out: Output, event: &CloudEvent) -> String {
    if out.json {
        String::from_utf8_lossy(&to_structured(event)).into_owned()
    } else {
        let data =
            event.data().map(|d| String::from_utf8_lossy(d).into_owned()).unwrap_or_default();
        format!(
            "{:>8}  {}  {:<32} {}@{}  {}",
            event.position().map_or(0, |p| p.0),
            event.time().map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string()).unwrap_or_default(),
            event.ty(),
            event.subject().unwrap_or("-"),
            event.stream_version().map_or(0, |v| v.0),
            data
        )
    }
}

pub async fn tail(config: &Config, out: Output, follow: bool, lines: usize) -> anyhow::Result<()> {
    let store = Store::open_read_only(&config.database_url, &config.namespace).await?;
    let log = store.log();
    let head = log.head().await?;
    let from = Position(head.0.saturating_sub(lines as u64));
    let recent =
        log.read_all(&LogQuery { from, limit: lines.max(1), ..LogQuery::default() }).await?;
    if recent.is_empty() && !out.json {
        eprintln!("no events yet in {}", database_name(&config.database_url));
    }
    for event in &recent {
        say(&line(out, &event.event))?;
    }
    if !follow {
        return Ok(());
    }
    let cursor = log.cursor_before(head).await?;
    let filter = LogFilter { after_position: Some(head), ..LogFilter::default() };
    let mut pages = subscribe(log, cursor, filter, SubscribeOptions::default());
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            page = pages.next() => match page {
                None => return Ok(()),
                Some(page) => {
                    for event in page?.events {
                        say(&line(out, &event.event))?;
                    }
                }
            },
        }
    }
}

pub async fn status(config: &Config, out: Output) -> anyhow::Result<()> {
    let store = Store::open_read_only(&config.database_url, &config.namespace).await?;
    let log = store.log();
    let head = log.head().await?;
    // With the log as the bus, its consumer groups and dead letters live in the store.
    let log_bus: Option<Arc<dyn keel_core::Bus>> = match (&config.bus_url, &store) {
        (Some(_), _) => None,
        (None, Store::Sqlite(log)) => Some(Arc::new(keel_logbus::open(log.clone()).await?)),
        (None, Store::Postgres(log)) => Some(Arc::new(keel_logbus::open(log.clone()).await?)),
    };
    let relay_dead_letters = log.relay_dead_letters(None, usize::MAX).await?;
    let skipped: std::collections::BTreeMap<String, u64> =
        log.skipped_counts().await?.into_iter().collect();
    let rebuilds = match &store {
        Store::Sqlite(log) => log.rebuilds().await?,
        Store::Postgres(log) => log.rebuilds().await?,
    };
    let now = Utc::now();
    let timers = keel_timers::timer_summary(&store.db(), now).await?;
    let mut checkpoints = Vec::new();
    for (name, cursor, updated) in log.checkpoints().await? {
        let behind = log.count_after(cursor, Position(u64::MAX)).await?;
        let position = caught_up_to(&*log, cursor, behind, head).await?;
        let kind = name.split_once(':').map_or("other", |(kind, _)| kind).to_owned();
        let mut row = json!({
            "name": name, "kind": kind, "cursor": cursor.to_string(),
            "position": position.0, "lag": behind, "updated_at": updated.to_rfc3339(),
        });
        if let (Some(bus), Some(("bus", rest))) = (&log_bus, name.split_once(':'))
            && let Some((topic, group)) = rest.split_once(':')
        {
            row["dead_letters"] = json!(bus.list(topic, group, usize::MAX).await?.len());
        }
        if let Some(("relay", relay)) = name.split_once(':') {
            let dead = relay_dead_letters.iter().filter(|l| l.relay == relay).count();
            row["dead_letters"] = json!(dead);
        }
        if name.starts_with("projection:") {
            row["skipped"] = json!(skipped.get(&name).copied().unwrap_or(0));
        }
        checkpoints.push(row);
    }
    let value = json!({
        "namespace": config.namespace.as_str(),
        "store": store.kind(),
        "database": database_name(&config.database_url),
        "bus": config
            .bus_url
            .as_deref()
            .map_or_else(|| "log (the event log itself)".into(), redact_url),
        "head": head.0,
        "checkpoints": checkpoints,
        "relay_dead_letters": relay_dead_letters.len(),
        "timers": crate::timers::summary_json(&timers, now),
        "skipped": skipped,
        "rebuilds": rebuilds
            .iter()
            .map(|(name, state)| json!({ "projection": name, "state": state.as_str() }))
            .collect::<Vec<_>>(),
    });
    out.emit(&value, || {
        let mut text = config
            .namespace
            .as_str()
            .map_or_else(String::new, |namespace| format!("namespace {namespace}\n"));
        text.push_str(&format!(
            "store  {} {}\nbus    {}\nhead   position {}\n{}\n",
            store.kind(),
            value["database"].as_str().unwrap_or_default(),
            value["bus"].as_str().unwrap_or_default(),
            head,
            crate::timers::summary_text(&timers, now)
        ));
        if checkpoints.is_empty() {
            text.push_str("\nno relay, projection or consumer checkpoints yet");
        } else {
            text.push_str(&format!(
                "\n{:<40} {:>10} {:>8} {:>6} {:>7}  updated\n",
                "checkpoint", "position", "lag", "dead", "skipped"
            ));
            for c in &checkpoints {
                let count = |field: &str| {
                    c[field].as_u64().map_or_else(|| "-".to_owned(), |n| n.to_string())
                };
                text.push_str(&format!(
                    "{:<40} {:>10} {:>8} {:>6} {:>7}  {}\n",
                    c["name"].as_str().unwrap_or_default(),
                    c["position"].as_u64().unwrap_or_default(),
                    c["lag"].as_u64().unwrap_or_default(),
                    count("dead_letters"),
                    count("skipped"),
                    c["updated_at"].as_str().unwrap_or_default()
                ));
            }
        }
        for (name, state) in &rebuilds {
            text.push_str(&format!(
                "\nprojection {name}: blue/green rebuild in progress ({state}; its new \
                 generation's checkpoint is projection-rebuild:{name}; rerun the rebuild to \
                 resume it, or discard it with --discard)\n"
            ));
        }
        let skips: u64 = skipped.values().sum();
        if skips > 0 {
            text.push_str(&format!(
                "\n{skips} event(s) skipped as unreadable by projections (the skipped column; \
                 an upcaster and a rebuild bring them back)\n"
            ));
        }
        if !relay_dead_letters.is_empty() {
            text.push_str(&format!(
                "\n{} relay dead letter(s): events the bus could never take \
                 (keel dlq list --relay NAME)\n",
                relay_dead_letters.len()
            ));
        }
        text.trim_end().to_owned()
    })?;
    Ok(())
}

/// The log position a checkpoint at `cursor` has caught up to: every event at or
/// below it has been handled. `lag` events after the cursor are still to come.
///
/// The cursor's own position part is not that: on PostgreSQL a subscription's cursor
/// may be a transaction horizon (`epoch.txid.9223372036854775807`: everything of the
/// transactions before it), and subscription order is by writer's transaction, so a
/// late-committing event can sit below the cursor's position. The answer is the
/// highest position `p` with no unhandled event at or below it, found by bisection on
/// the store's own count of events after the cursor up to `p`.
async fn caught_up_to(
    log: &dyn keel_store::EventLog,
    cursor: keel_store::Cursor,
    lag: u64,
    head: Position,
) -> anyhow::Result<Position> {
    if lag == 0 {
        return Ok(head);
    }
    // Invariant: nothing unhandled at or below `low`; something at or below `high`.
    let (mut low, mut high) = (0u64, head.0);
    while high - low > 1 {
        let mid = low + (high - low) / 2;
        if log.count_after(cursor, Position(mid)).await? == 0 {
            low = mid;
        } else {
            high = mid;
        }
    }
    Ok(Position(low))
}

/// The database a command reads, fit for printing: its URL without secrets, and for
/// SQLite the file's absolute path (a relative `sqlite://keel-data/keel.db` depends on
/// the directory the command runs in).
pub fn database_name(url: &str) -> String {
    if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
        let (file, query) = path.split_once('?').map_or((path, None), |(f, q)| (f, Some(q)));
        if let Ok(absolute) = std::path::Path::new(file).canonicalize() {
            let query = query.map(|q| format!("?{q}")).unwrap_or_default();
            return redact_url(&format!("sqlite://{}{query}", absolute.display()));
        }
    }
    redact_url(url)
}

/// `keel why EVENT_ID`: the event's causal lineage as a tree, or JSON.
pub async fn why(config: &Config, out: Output, event_id: &str) -> anyhow::Result<()> {
    let store = Store::open_read_only(&config.database_url, &config.namespace).await?;
    let lineage = keel_store::lineage(&*store.log(), event_id).await?.ok_or_else(|| {
        anyhow::anyhow!("no event {event_id} in {}", redact_url(&config.database_url))
    })?;
    out.emit(&lineage.to_json(), || lineage.to_string())?;
    Ok(())
}

/// `keel schema export`: the example system's event schemas, by type.
pub fn schema_export(out: Output) -> anyhow::Result<()> {
    let schemas = keel_services_common::events::catalog().schemas();
    let value = json!(schemas);
    out.emit(&value, || serde_json::to_string_pretty(&value).unwrap_or_default())?;
    Ok(())
}

/// One (type, schema version) of the log, as `keel schema check` found it.
#[derive(Default)]
struct SchemaGroup {
    events: u64,
    checked: u64,
    unreadable: u64,
    /// The first unreadable event: its position and why.
    first: Option<(u64, String)>,
    known: bool,
}

/// `keel schema check`: decodes a sample of each (type, version) in the log as the
/// current code would and reports what it cannot read.
pub async fn schema_check(config: &Config, out: Output, sample: u64) -> anyhow::Result<()> {
    let catalog = keel_services_common::events::catalog();
    let store = Store::open_read_only(&config.database_url, &config.namespace).await?;
    let log = store.log();
    let mut groups: std::collections::BTreeMap<(String, String), SchemaGroup> = Default::default();
    let mut batches = log.replay(LogQuery { limit: 2000, ..LogQuery::default() });
    while let Some(batch) = batches.next().await {
        for logged in batch? {
            let event = &logged.event;
            let version = event.schema_version().map_or_else(|| "1".to_owned(), |v| v.to_string());
            let group = groups.entry((event.ty().to_owned(), version)).or_default();
            group.events += 1;
            if sample != 0 && group.checked >= sample {
                continue;
            }
            group.checked += 1;
            match catalog.check(event) {
                None => {}
                Some(result) => {
                    group.known = true;
                    if let Err(error) = result {
                        group.unreadable += 1;
                        group.first.get_or_insert((
                            u64::try_from(logged.cursor.position).unwrap_or(0),
                            error.to_string(),
                        ));
                    }
                }
            }
        }
    }
    let unreadable: u64 = groups.values().map(|g| g.unreadable).sum();
    let rows: Vec<serde_json::Value> = groups
        .iter()
        .map(|((ty, version), g)| {
            json!({
                "type": ty, "version": version, "events": g.events, "checked": g.checked,
                "known": g.known, "unreadable": g.unreadable,
                "first_unreadable": g.first.as_ref().map(|(position, reason)| json!({"position": position, "reason": reason})),
            })
        })
        .collect();
    let value = json!({ "groups": rows, "unreadable": unreadable });
    out.emit(&value, || {
        let mut text = format!(
            "{:<32} {:>7} {:>9} {:>9} {:>10}\n",
            "type", "version", "events", "checked", "unreadable"
        );
        for ((ty, version), g) in &groups {
            let bad = if g.known { g.unreadable.to_string() } else { "unknown type".to_owned() };
            text.push_str(&format!(
                "{ty:<32} {version:>7} {:>9} {:>9} {bad:>10}\n",
                g.events, g.checked
            ));
            if let Some((position, reason)) = &g.first {
                text.push_str(&format!("  first at position {position}: {reason}\n"));
            }
        }
        text.trim_end().to_owned()
    })?;
    if unreadable > 0 {
        anyhow::bail!(
            "{unreadable} sampled event(s) cannot be read by the current code: add an upcaster \
             (#[event(upcast(from = N, with = f))]) or fix the events before deploying"
        );
    }
    Ok(())
}

pub async fn relay(config: &Config, name: &str) -> anyhow::Result<()> {
    let bus = open_bus(config.bus_url.as_deref(), &config.namespace).await?.ok_or_else(|| {
        anyhow::anyhow!("keel relay needs KEEL_BUS_URL: without it the log itself is the bus and nothing needs relaying")
    })?;
    let store = Store::open(&config.database_url, &config.namespace).await?;
    let stop = shutdown_signal();
    eprintln!(
        "relay {name}: {} -> {}",
        store.kind(),
        redact_url(config.bus_url.as_deref().unwrap_or_default())
    );
    let relay = keel_store::Relay::new(store.log(), bus.clone(), name);
    relay.run(stop).await?;
    keel_core::Publisher::close(&*bus).await?;
    Ok(())
}

/// `keel gateway`: routes from a file and/or `--route PREFIX=URL`, discovery through
/// KEEL_CONSUL_URL (or the in-process registry, which only static routes can use).
pub async fn gateway(
    config: &Config,
    file: Option<&std::path::Path>,
    listen: Option<String>,
    routes: &[String],
    workers: Option<std::num::NonZeroUsize>,
) -> anyhow::Result<()> {
    use keel_gateway::{Gateway, GatewayConfig, PerCoreListeners};

    let mut gateway_config = match file {
        Some(path) => GatewayConfig::from_file(path)?,
        None => GatewayConfig::new(config.gateway_addr.to_string()),
    };
    if !routes.is_empty() {
        let pairs: Vec<&str> = routes.iter().map(String::as_str).collect();
        for route in GatewayConfig::static_routes(&pairs)?.routes {
            gateway_config = gateway_config.route(route);
        }
    }
    if let Some(listen) = listen {
        gateway_config.listen = listen;
    }
    if gateway_config.routes.is_empty() {
        bail!("keel gateway has no routes: give --config FILE or --route PREFIX=URL");
    }
    if gateway_config.auth.is_none()
        && let Some(auth) = crate::up::auth_config(config)
    {
        gateway_config = gateway_config.auth(auth);
    }
    // The services verify identities with the same key: KEEL_IDENTITY_SECRET, unless the
    // file names one.
    if gateway_config.identity_secret.is_none()
        && let Some(secret) = &config.identity_secret
    {
        gateway_config = gateway_config.identity_secret(secret.clone());
    }
    if gateway_config.admin_token.is_none()
        && let Some(token) = &config.admin_token
    {
        gateway_config = gateway_config.admin_token(token.clone());
    }
    let addr = gateway_config.listen_addr()?;
    let registry = keel_runtime::connect_registry(config).await?;
    // Keel's recorder first: the gateway would install its own otherwise, and Keel's
    // would then warn that it cannot be installed.
    let metrics = keel_telemetry::prometheus().clone();
    let gateway = Gateway::new(gateway_config, registry)?;
    gateway.set_metrics_handle(metrics);
    // One single-threaded runtime per CPU, as nginx's `worker_processes auto`.
    let workers = workers
        .or_else(|| std::thread::available_parallelism().ok())
        .unwrap_or(std::num::NonZeroUsize::MIN);
    let listeners = PerCoreListeners::bind(addr, workers)
        .with_context(|| format!("binding the gateway to {addr}"))?;
    let stop = shutdown_signal();
    eprintln!(
        "keel gateway listening on http://{} ({} workers)",
        listeners.local_addr(),
        listeners.workers()
    );
    gateway.serve_per_core(listeners, stop).await?;
    Ok(())
}

/// `keel events`: the event log over HTTP as a service of its own.
pub async fn events(
    config: &Config,
    listen: std::net::SocketAddr,
    advertise_host: String,
) -> anyhow::Result<()> {
    let db = keel_sql::Db::connect_in(&config.database_url, &config.namespace)
        .await
        .with_context(|| format!("KEEL_DATABASE_URL `{}`", redact_url(&config.database_url)))?;
    let registry = keel_runtime::connect_registry(config).await?;
    let router = keel_events::app(db.log());
    let running = keel_runtime::start_service(
        "events",
        router,
        &registry,
        &db,
        listen,
        Some(&advertise_host),
        config.identity_key(),
    )
    .await?;
    let stop = shutdown_signal();
    eprintln!("keel events listening on http://{}", running.local_addr());
    stop.await;
    running.shutdown();
    running.wait().await?;
    Ok(())
}

pub use keel_runtime::shutdown_signal;

pub async fn projections_list(config: &Config, out: Output) -> anyhow::Result<()> {
    let names = projections::names();
    let store = Store::open_read_only(&config.database_url, &config.namespace).await?;
    let services = projections::services_projections(&store).await?;
    let json = json!({
        "projections": names,
        "services_projections": services
            .iter()
            .map(|(name, cursor)| json!({ "name": name, "checkpoint": cursor.to_string() }))
            .collect::<Vec<_>>(),
    });
    out.emit(&json, || {
        let mut text = names.join("\n");
        for (name, cursor) in &services {
            text.push_str(&format!(
                "\n{name}\t(a service's, at {cursor}: `<service-binary> projections rebuild {name}`)"
            ));
        }
        text
    })?;
    Ok(())
}

pub async fn projections_rebuild(
    config: &Config,
    out: Output,
    name: &str,
    discard: bool,
) -> anyhow::Result<()> {
    let store = Store::open(&config.database_url, &config.namespace).await?;
    let bar = progress_bar(0);
    let rebuilt = projections::rebuild(&store, name, discard, |progress| {
        bar.set_length(progress.total);
        bar.set_position(progress.applied);
    })
    .await?;
    bar.finish_and_clear();
    let Some(rebuilt) = rebuilt else {
        out.emit(&json!({ "projection": name, "discarded": true }), || {
            format!("discarded the rebuild of projection {name}; the live one is untouched")
        })?;
        return Ok(());
    };
    out.emit(
        &json!({ "projection": name, "applied": rebuilt.applied, "switched": rebuilt.switched }),
        || {
            if rebuilt.switched {
                format!("rebuilt projection {name} from {} event(s)", rebuilt.applied)
            } else {
                format!(
                    "rebuilt projection {name} from {} event(s); its running replica switches \
                     it in",
                    rebuilt.applied
                )
            }
        },
    )?;
    Ok(())
}

pub async fn dlq(config: &Config, out: Output, action: DlqAction) -> anyhow::Result<()> {
    let target = match &action {
        DlqAction::List { target, .. }
        | DlqAction::Show { target, .. }
        | DlqAction::Retry { target, .. }
        | DlqAction::Purge { target } => target.clone(),
    };
    if let Some(relay) = &target.relay {
        return relay_dlq(config, out, relay, action).await;
    }
    let (Some(topic), Some(group)) = (target.topic, target.group) else {
        bail!("keel dlq needs --topic and --group (a consumer group's), or --relay NAME");
    };
    // Dead letters live in the broker, or with the log as the bus, in the store.
    let reads_only = matches!(action, DlqAction::List { .. } | DlqAction::Show { .. });
    let bus: Arc<dyn keel_core::Bus> =
        match open_bus(config.bus_url.as_deref(), &config.namespace).await? {
            Some(bus) => bus,
            None => {
                let store = if reads_only {
                    Store::open_read_only(&config.database_url, &config.namespace).await?
                } else {
                    Store::open(&config.database_url, &config.namespace).await?
                };
                match store {
                    Store::Sqlite(log) => Arc::new(keel_logbus::open(log).await?),
                    Store::Postgres(log) => Arc::new(keel_logbus::open(log).await?),
                }
            }
        };
    match action {
        DlqAction::List { limit, .. } => {
            let letters = bus.list(&topic, &group, limit).await?;
            let rows: Vec<serde_json::Value> = letters.iter().map(dead_letter_json).collect();
            out.emit(&json!({ "topic": topic, "group": group, "dead_letters": rows }), || {
                if letters.is_empty() {
                    return format!("no dead letters in {topic}/{group}");
                }
                letters
                    .iter()
                    .map(|l| {
                        format!(
                            "{}  {}  attempts={}  {}",
                            l.id,
                            l.dead_lettered_at.to_rfc3339(),
                            l.attempts,
                            l.reason
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
        }
        DlqAction::Show { id, .. } => {
            let letters = bus.list(&topic, &group, usize::MAX).await?;
            let letter = letters
                .iter()
                .find(|l| l.id.0 == id)
                .ok_or_else(|| anyhow::anyhow!("no dead letter {id} in {topic}/{group}"))?;
            let value = dead_letter_json(letter);
            out.emit(&value, || serde_json::to_string_pretty(&value).unwrap_or_default())?;
        }
        DlqAction::Retry { id, .. } => {
            if !bus.retry(&topic, &group, &DeadLetterId(id.clone())).await? {
                bail!("no dead letter {id} in {topic}/{group}");
            }
            out.emit(&json!({ "retried": id }), || format!("sent {id} back to {topic}/{group}"))?;
        }
        DlqAction::Purge { .. } => {
            let purged = bus.purge(&topic, &group).await?;
            out.emit(&json!({ "purged": purged }), || {
                format!("purged {purged} dead letter(s) from {topic}/{group}")
            })?;
        }
    }
    Ok(())
}

/// `keel dlq ... --relay NAME`: the relay's dead letters, kept in the store; their ids
/// are the events' log positions.
async fn relay_dlq(
    config: &Config,
    out: Output,
    relay: &str,
    action: DlqAction,
) -> anyhow::Result<()> {
    use keel_store::relay_dlq;

    let position = |id: &str| {
        id.parse::<u64>().map(Position).with_context(|| {
            format!("`{id}` is not a relay dead letter id (the event's log position)")
        })
    };
    let store = if matches!(action, DlqAction::List { .. } | DlqAction::Show { .. }) {
        Store::open_read_only(&config.database_url, &config.namespace).await?
    } else {
        Store::open(&config.database_url, &config.namespace).await?
    };
    let log = store.log();
    match action {
        DlqAction::List { limit, .. } => {
            let letters = log.relay_dead_letters(Some(relay), limit).await?;
            let rows: Vec<serde_json::Value> =
                letters.iter().map(|l| relay_dead_letter_json(l, None)).collect();
            out.emit(&json!({ "relay": relay, "dead_letters": rows }), || {
                if letters.is_empty() {
                    return format!("no dead letters of relay {relay}");
                }
                letters
                    .iter()
                    .map(|l| {
                        format!(
                            "{}  {}  {}  {}  {}  {}",
                            l.position,
                            l.dead_lettered_at.to_rfc3339(),
                            l.topic,
                            l.event_type,
                            l.event_id,
                            l.reason
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
        }
        DlqAction::Show { id, .. } => {
            let letter = relay_dlq::find(&*log, relay, position(&id)?)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no dead letter {id} of relay {relay}"))?;
            let event = relay_dlq::event_of(&*log, &letter).await?;
            let value = relay_dead_letter_json(&letter, Some(&event.event));
            out.emit(&value, || serde_json::to_string_pretty(&value).unwrap_or_default())?;
        }
        DlqAction::Retry { id, .. } => {
            let bus =
                open_bus(config.bus_url.as_deref(), &config.namespace).await?.ok_or_else(|| {
                    anyhow::anyhow!(
                        "keel dlq retry --relay needs KEEL_BUS_URL (the bus the relay publishes to)"
                    )
                })?;
            let retried = relay_dlq::retry(&*log, &*bus, relay, position(&id)?).await;
            keel_core::Publisher::close(&*bus).await?;
            if !retried.with_context(|| format!("publishing dead letter {id} again"))? {
                bail!("no dead letter {id} of relay {relay}");
            }
            out.emit(&json!({ "retried": id, "relay": relay }), || {
                format!("published {id} again and removed it from relay {relay}'s dead letters")
            })?;
        }
        DlqAction::Purge { .. } => {
            let purged = log.purge_relay_dead_letters(relay).await?;
            out.emit(&json!({ "purged": purged, "relay": relay }), || {
                format!("purged {purged} dead letter(s) of relay {relay}")
            })?;
        }
    }
    Ok(())
}

fn relay_dead_letter_json(
    letter: &keel_store::RelayDeadLetter,
    event: Option<&CloudEvent>,
) -> serde_json::Value {
    let mut value = json!({
        "id": letter.position.0.to_string(), "relay": letter.relay, "position": letter.position.0,
        "event_id": letter.event_id, "topic": letter.topic, "type": letter.event_type,
        "reason": letter.reason, "dead_lettered_at": letter.dead_lettered_at.to_rfc3339(),
    });
    if let Some(event) = event {
        value["message"] =
            serde_json::from_slice(&to_structured(event)).unwrap_or(serde_json::Value::Null);
    }
    value
}

fn dead_letter_json(letter: &keel_core::DeadLetter) -> serde_json::Value {
    let payload = match &letter.payload {
        Payload::Event(event) => {
            serde_json::from_slice(&to_structured(event)).unwrap_or(serde_json::Value::Null)
        }
        Payload::Undecodable(raw) => json!({
            "undecodable": raw.error,
            "content_type": raw.content_type,
            "body": String::from_utf8_lossy(&raw.body),
        }),
    };
    json!({
        "id": letter.id.0, "topic": letter.topic, "group": letter.group, "reason": letter.reason,
        "attempts": letter.attempts, "dead_lettered_at": letter.dead_lettered_at.to_rfc3339(), "message": payload,
    })
}
