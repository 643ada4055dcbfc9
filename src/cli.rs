//! The `keel` command line: arguments and dispatch. Every command takes `--json`.

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};

use crate::commands;
use crate::config::Config;

/// Keel: an event-sourced async messaging backbone.
#[derive(Debug, Parser)]
#[command(name = "keel", version, about, long_about = None)]
pub struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// More logging (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole example system in one process: the users, products and orders
    /// services, the events API, the relay (with a broker) and the gateway on
    /// KEEL_GATEWAY_ADDR. With no configuration: SQLite in ./keel-data, the log itself
    /// as the bus and an in-process registry. Ctrl-C stops it cleanly.
    Up,
    /// Run the gateway alone, routing through KEEL_CONSUL_URL (or static upstreams).
    Gateway {
        /// A gateway config file (TOML: listen, auth, cors, routes).
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// Where to listen (overrides the file; default KEEL_GATEWAY_ADDR).
        #[arg(long)]
        listen: Option<String>,
        /// Proxy a path prefix and all its sub-paths to a static upstream:
        /// `--route /api=http://127.0.0.1:3000` (repeatable).
        #[arg(long = "route", value_name = "PREFIX=URL")]
        routes: Vec<String>,
        /// Worker threads, each a single-threaded runtime with its own SO_REUSEPORT
        /// listener and upstream connections (nginx's worker model). Default: one per CPU.
        #[arg(long)]
        workers: Option<std::num::NonZeroUsize>,
    },
    /// Serve the event log over HTTP (`/api/events`: pages, streams, live SSE tail) and
    /// register it as the `events` service.
    Events {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// The host name other processes reach this one by (registered in Consul).
        #[arg(long, default_value = "127.0.0.1")]
        advertise_host: String,
    },
    /// Apply Keel's database migrations (also done at every start).
    Migrate,
    /// Append one event to the log (the relay then publishes it).
    Publish {
        /// The CloudEvents type, e.g. `order.placed`.
        #[arg(value_name = "TYPE")]
        ty: String,
        /// The stream to append to, e.g. `order-42`.
        #[arg(long)]
        stream: String,
        /// The event's data, as JSON.
        #[arg(long)]
        data: String,
        /// The CloudEvents source.
        #[arg(long, default_value = "/keel/cli")]
        source: String,
    },
    /// Read history from the log into stdout (CloudEvents JSON lines), the bus, or a
    /// projection.
    Replay {
        /// Events after this position.
        #[arg(long, conflicts_with = "since")]
        from: Option<u64>,
        /// Events at or after this time (RFC 3339).
        #[arg(long, value_parser = parse_time)]
        since: Option<DateTime<Utc>>,
        /// Only events of this type (repeatable).
        #[arg(long = "type", value_name = "TYPE")]
        types: Vec<String>,
        /// Only events of this stream.
        #[arg(long)]
        stream: Option<String>,
        /// `stdout`, `bus` (KEEL_BUS_URL: every group), `group:TOPIC:GROUP` (one
        /// consumer group of KEEL_BUS_URL only: backfill a group created after the
        /// events were published) or `projection:NAME`.
        #[arg(long, default_value = "stdout")]
        into: String,
        /// Where to read: `log` (the event log), or `kafka:TOPIC` to read a topic of
        /// the Kafka bus (KEEL_BUS_URL) outside any consumer group; `--from` is then an
        /// offset in each partition.
        #[arg(long, default_value = "log")]
        source: String,
    },
    /// Show the latest events; `--follow` keeps printing new ones.
    Tail {
        #[arg(long, short)]
        follow: bool,
        /// How many of the latest events to show first.
        #[arg(long, short = 'n', default_value_t = 10)]
        lines: usize,
    },
    /// The log's head, relay checkpoints and lag, projection checkpoints.
    Status,
    /// An event's causal lineage: what caused it (through `causationid`, up to the
    /// originating request) and what it caused, recursively, as a tree; and how many
    /// events share its `correlationid`.
    Why {
        /// The event's CloudEvents id.
        #[arg(value_name = "EVENT_ID")]
        event_id: String,
    },
    /// Serve the web console alone (streams, events with their lineage, consumer
    /// groups, dead letters, projections, relays) for KEEL_DATABASE_URL and
    /// KEEL_BUS_URL, at http://LISTEN/_keel/console.
    Console {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: std::net::SocketAddr,
    },
    /// Run the relay alone: publish the log to KEEL_BUS_URL in order (one active relay
    /// per name across processes; others stand by). Ctrl-C or SIGTERM stops it.
    Relay {
        /// The relay's name (its checkpoint and lease).
        #[arg(long, default_value = "main")]
        name: String,
    },
    /// Manage projections.
    Projections {
        #[command(subcommand)]
        action: ProjectionAction,
    },
    /// The JSON Schemas of the example system's event types, and a check of the log
    /// against them.
    Schema {
        #[command(subcommand)]
        action: SchemaAction,
    },
    /// Inspect and retry dead letters of a consumer group (KEEL_BUS_URL), or of a
    /// relay (`--relay NAME`: events the bus could never take, kept in the store).
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProjectionAction {
    /// List the projections this binary knows (`streams`), and the services'
    /// projections found in the database (each rebuilt by its service's binary).
    List,
    /// Reset a projection's read model and checkpoint, then replay the log into it.
    Rebuild { name: String },
}

#[derive(Debug, Subcommand)]
pub enum SchemaAction {
    /// Print the JSON Schema of each event type (at the version the code expects).
    Export,
    /// Decode up to `--sample` events of each (type, schema version) in the log as the
    /// current code would (upcasters included) and report those it cannot read; exits
    /// with an error if there are any.
    Check {
        /// Events decoded per (type, version); 0 decodes every event.
        #[arg(long, default_value_t = 100)]
        sample: u64,
    },
}

/// Whose dead letters: a consumer group's, or a relay's.
#[derive(Debug, Clone, clap::Args)]
pub struct DlqTarget {
    #[arg(long, required_unless_present = "relay")]
    pub topic: Option<String>,
    #[arg(long, required_unless_present = "relay")]
    pub group: Option<String>,
    /// A relay's dead letters (events the bus could never take) instead of a
    /// group's; their ids are log positions.
    #[arg(long, conflicts_with_all = ["topic", "group"])]
    pub relay: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// List dead letters of a group or relay.
    List {
        #[command(flatten)]
        target: DlqTarget,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show one dead letter in full.
    Show {
        id: String,
        #[command(flatten)]
        target: DlqTarget,
    },
    /// Send a dead letter back to its group (a relay's: publish its event again
    /// through KEEL_BUS_URL, then delete the record).
    Retry {
        id: String,
        #[command(flatten)]
        target: DlqTarget,
    },
    /// Delete every dead letter of a group or relay.
    Purge {
        #[command(flatten)]
        target: DlqTarget,
    },
}

fn parse_time(value: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(value).map(|t| t.with_timezone(&Utc)).map_err(|e| {
        format!("`{value}` is not an RFC 3339 time such as 2026-11-27T09:00:00Z ({e})")
    })
}

/// Logs to stderr: warnings by default, more with `-v`; `RUST_LOG` overrides. With
/// `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans are also exported over OTLP; keep the
/// returned guard alive until exit so the last ones are flushed.
pub fn init_tracing(verbose: u8) -> Option<keel_telemetry::TelemetryGuard> {
    let default = match verbose {
        0 => "warn",
        1 => "info,keel=debug",
        _ => "debug",
    };
    // lapin logs every message RabbitMQ returns as a warning; Keel reports those itself.
    keel_telemetry::init("keel", &format!("{default},lapin::returned_messages=error")).ok()
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load()?;
    let out = commands::Output { json: cli.json };
    match cli.command {
        Command::Up => crate::up::up(&config).await,
        Command::Gateway { config: file, listen, routes, workers } => {
            commands::gateway(&config, file.as_deref(), listen, &routes, workers).await
        }
        Command::Events { listen, advertise_host } => {
            commands::events(&config, listen, advertise_host).await
        }
        Command::Migrate => commands::migrate(&config, out).await,
        Command::Publish { ty, stream, data, source } => {
            commands::publish(&config, out, &ty, &stream, &data, &source).await
        }
        Command::Replay { from, since, types, stream, into, source } => {
            commands::replay(
                &config,
                out,
                commands::ReplayArgs { from, since, types, stream, into, source },
            )
            .await
        }
        Command::Tail { follow, lines } => commands::tail(&config, out, follow, lines).await,
        Command::Status => commands::status(&config, out).await,
        Command::Why { event_id } => commands::why(&config, out, &event_id).await,
        Command::Console { listen } => crate::console::serve(&config, listen).await,
        Command::Relay { name } => commands::relay(&config, &name).await,
        Command::Projections { action } => match action {
            ProjectionAction::List => commands::projections_list(&config, out).await,
            ProjectionAction::Rebuild { name } => {
                commands::projections_rebuild(&config, out, &name).await
            }
        },
        Command::Schema { action: SchemaAction::Export } => commands::schema_export(out),
        Command::Schema { action: SchemaAction::Check { sample } } => {
            commands::schema_check(&config, out, sample).await
        }
        Command::Dlq { action } => commands::dlq(&config, out, action).await,
    }
}
