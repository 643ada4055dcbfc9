//! The `keel` command line: arguments and dispatch. Every command takes `--json`.

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};

use crate::commands;
use crate::config::Config;

/// Environment variables every command reads (logging and tracing).
const ENV_ALL: &str = "Every command also reads KEEL_NAMESPACE (the deployment's namespace), \
RUST_LOG (log filter; overrides -v) and OTEL_EXPORTER_OTLP_ENDPOINT (export spans over OTLP). A keel.toml in the working directory may \
set the KEEL_* settings (database_url, bus_url, ...); the environment wins over it, and \
--database-url / --bus-url win over both.";
const ENV_DB: &str = "Environment: KEEL_DATABASE_URL (or --database-url; default \
sqlite://keel-data/keel.db).";
const ENV_DB_BUS: &str = "Environment: KEEL_DATABASE_URL (or --database-url; default \
sqlite://keel-data/keel.db), KEEL_BUS_URL (or --bus-url; unset: the log itself is the bus).";
const ENV_UP: &str = "Environment: KEEL_DATABASE_URL (or --database-url), KEEL_BUS_URL (or \
--bus-url), KEEL_CONSUL_URL, KEEL_GATEWAY_ADDR, KEEL_JWT_SECRET, KEEL_IDENTITY_SECRET, \
KEEL_IDEMPOTENCY_TTL_SECS, KEEL_ADMIN_TOKEN, KEEL_CONSUL_TOKEN, KEEL_CONSUL_CA_FILE, KEEL_JWKS_URL, \
KEEL_ORDER_DEADLINE_SECS.";
const ENV_GATEWAY: &str = "Environment: KEEL_GATEWAY_ADDR, KEEL_CONSUL_URL, KEEL_JWT_SECRET, \
KEEL_IDENTITY_SECRET.";
const ENV_EVENTS: &str = "Environment: KEEL_DATABASE_URL (or --database-url), KEEL_CONSUL_URL, \
KEEL_JWT_SECRET, KEEL_IDENTITY_SECRET.";
const ENV_CONSOLE: &str = "Environment: KEEL_DATABASE_URL (or --database-url), KEEL_BUS_URL (or \
--bus-url), KEEL_JWT_SECRET, KEEL_IDENTITY_SECRET, KEEL_ADMIN_TOKEN.";
const ENV_NONE: &str = "Environment: none of Keel's settings.";

/// Keel: an event-sourced async messaging backbone.
#[derive(Debug, Parser)]
#[command(name = "keel", version, about, long_about = None, after_help = ENV_ALL)]
pub struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// More logging (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// The event log's database: `sqlite://PATH` or `postgres://...` (overrides
    /// KEEL_DATABASE_URL and keel.toml).
    #[arg(long, global = true, env = "KEEL_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The broker: `amqp://...`, `kafka://...` or `memory://` (overrides KEEL_BUS_URL
    /// and keel.toml; unset: the log itself is the bus).
    #[arg(long, global = true, env = "KEEL_BUS_URL", hide_env_values = true)]
    pub bus_url: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole example system in one process: the users, products and orders
    /// services, the events API, the relay (with a broker) and the gateway on
    /// KEEL_GATEWAY_ADDR. With no configuration: SQLite in ./keel-data, the log itself
    /// as the bus and an in-process registry. Ctrl-C stops it cleanly.
    #[command(after_help = ENV_UP)]
    Up,
    /// Run the gateway alone, routing through KEEL_CONSUL_URL (or static upstreams).
    #[command(after_help = ENV_GATEWAY)]
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
    #[command(after_help = ENV_EVENTS)]
    Events {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// The host name other processes reach this one by (registered in Consul).
        #[arg(long, default_value = "127.0.0.1")]
        advertise_host: String,
    },
    /// Apply Keel's database migrations (also done at every start).
    #[command(after_help = ENV_DB)]
    Migrate,
    /// Append one event to the log (the relay then publishes it).
    #[command(after_help = ENV_DB)]
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
    #[command(after_help = ENV_DB_BUS)]
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
    #[command(after_help = ENV_DB)]
    Tail {
        /// Keep printing new events as they are appended (Ctrl-C stops).
        #[arg(long, short)]
        follow: bool,
        /// How many of the latest events to show first.
        #[arg(long, short = 'n', default_value_t = 10)]
        lines: usize,
    },
    /// The database read, the log's head, relay checkpoints and lag, projection
    /// checkpoints, pending timers and how late the oldest overdue one is.
    #[command(after_help = ENV_DB_BUS)]
    Status,
    /// An event's causal lineage: what caused it (through `causationid`, up to the
    /// originating request) and what it caused, recursively, as a tree; and how many
    /// events share its `correlationid`.
    #[command(after_help = ENV_DB)]
    Why {
        /// The event's CloudEvents id.
        #[arg(value_name = "EVENT_ID")]
        event_id: String,
    },
    /// Serve the web console alone (streams, events with their lineage, consumer
    /// groups, dead letters, projections, relays) for KEEL_DATABASE_URL and
    /// KEEL_BUS_URL, at http://LISTEN/_keel/console.
    #[command(after_help = ENV_CONSOLE)]
    Console {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: std::net::SocketAddr,
    },
    /// Run the relay alone: publish the log to KEEL_BUS_URL in order (one active relay
    /// per name across processes; others stand by). Ctrl-C or SIGTERM stops it.
    #[command(after_help = ENV_DB_BUS)]
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
    #[command(after_help = ENV_DB_BUS)]
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Consumer groups of the bus (KEEL_BUS_URL; unset: the log itself): their lag,
    /// moving one to a position or a time, replaying the log to one group only.
    /// `memory://` groups live inside the process that opened the bus: out of reach.
    #[command(after_help = ENV_DB_BUS)]
    Groups {
        #[command(subcommand)]
        action: GroupAction,
    },
    /// Durable timers in the store (keel-timers): the pending ones, when each is due and
    /// what it will publish; cancelling one by key.
    Timers {
        #[command(subcommand)]
        action: TimerAction,
    },
    /// Print a shell completion script: `keel completions bash > ~/.local/share/bash-completion/completions/keel`,
    /// `keel completions zsh > ~/.zfunc/_keel`, `keel completions fish > ~/.config/fish/completions/keel.fish`.
    #[command(after_help = ENV_NONE)]
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProjectionAction {
    /// List the projections this binary knows (`streams`), and the services'
    /// projections found in the database (each rebuilt by its service's binary).
    #[command(after_help = ENV_DB)]
    List,
    /// Rebuild a projection blue/green: replay the log into a new generation of its
    /// read model beside the live one, then switch it in (one transaction). Rerunning
    /// an interrupted rebuild resumes it.
    #[command(after_help = ENV_DB)]
    Rebuild {
        /// The projection (`keel projections list` names them).
        name: String,
        /// Drop an interrupted rebuild's generation instead (the live model is
        /// untouched).
        #[arg(long)]
        discard: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SchemaAction {
    /// Print the JSON Schema of each event type (at the version the code expects).
    #[command(after_help = ENV_NONE)]
    Export,
    /// Decode up to `--sample` events of each (type, schema version) in the log as the
    /// current code would (upcasters included) and report those it cannot read; exits
    /// with an error if there are any.
    #[command(after_help = ENV_DB)]
    Check {
        /// Events decoded per (type, version); 0 decodes every event.
        #[arg(long, default_value_t = 100)]
        sample: u64,
    },
}

/// `keel groups` actions.
#[derive(Debug, Subcommand)]
pub enum GroupAction {
    /// Consumer groups with their lag. The log as the bus: every group (checkpoints
    /// in the store). Kafka: the groups the brokers know, on `--topic`. RabbitMQ: give
    /// `--topic` and `--group` (AMQP cannot list queues).
    #[command(after_help = ENV_DB_BUS)]
    List {
        /// Only groups of this topic (required on Kafka and RabbitMQ).
        #[arg(long)]
        topic: Option<String>,
        /// Only this group (required on RabbitMQ).
        #[arg(long)]
        group: Option<String>,
    },
    /// Move a group: what it gets next starts after a log position, at a time, at the
    /// start, or only what comes from now on. Stop the group's consumers first (the log
    /// bus refuses while one runs). RabbitMQ cannot move a queue back: its queue is
    /// emptied and refilled from the log. Kafka: by time, start or end only (offsets
    /// are not log positions).
    #[command(after_help = ENV_DB_BUS)]
    Reset {
        #[command(flatten)]
        target: GroupTarget,
        #[command(flatten)]
        to: ResetTo,
    },
    /// Send the log's events (from a position or a time) to one group only: the
    /// other groups get nothing again. The log as the bus: the group's checkpoint moves
    /// back (a reset). RabbitMQ and Kafka: the events are published to that group alone
    /// (as `keel replay --into group:TOPIC:GROUP`).
    #[command(after_help = ENV_DB_BUS)]
    Replay {
        #[command(flatten)]
        target: GroupTarget,
        /// Events after this log position.
        #[arg(long, conflicts_with = "since")]
        from: Option<u64>,
        /// Events at or after this time (RFC 3339).
        #[arg(long, value_parser = parse_time)]
        since: Option<DateTime<Utc>>,
        /// Only events of this type (repeatable; not with the log as the bus).
        #[arg(long = "type", value_name = "TYPE")]
        types: Vec<String>,
    },
}

/// `keel timers` actions.
#[derive(Debug, Subcommand)]
pub enum TimerAction {
    /// Timers still in the store, the soonest due first: key, due time, dispatcher,
    /// and what each will publish (event type, topic, stream). Failed ones (their
    /// message could never be appended) are listed with the reason.
    #[command(after_help = ENV_DB)]
    List {
        /// Only timers of this dispatcher name (default: every dispatcher's).
        #[arg(long)]
        dispatcher: Option<String>,
        /// Only timers due before this time (RFC 3339).
        #[arg(long, value_parser = parse_time)]
        due_before: Option<DateTime<Utc>>,
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Cancel a pending timer by key: it never fires. A key that is not pending (it
    /// fired, was cancelled, or never existed) is an error.
    #[command(after_help = ENV_DB)]
    Cancel {
        /// The timer's key (as `keel timers list` shows it).
        key: String,
        /// The dispatcher name the timer belongs to.
        #[arg(long, default_value = keel_timers::DEFAULT_DISPATCHER)]
        dispatcher: String,
    },
}

/// One consumer group.
#[derive(Debug, Clone, clap::Args)]
pub struct GroupTarget {
    /// The topic the group consumes.
    #[arg(long)]
    pub topic: String,
    /// The consumer group.
    #[arg(long)]
    pub group: String,
}

/// Where `keel groups reset` moves a group (exactly one).
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct ResetTo {
    /// Next is the first event after this log position.
    #[arg(long)]
    pub to_position: Option<u64>,
    /// Next is the first event at or after this time (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    pub to_time: Option<DateTime<Utc>>,
    /// Next is the first event there is.
    #[arg(long)]
    pub to_start: bool,
    /// Skip everything there is now: next is what comes after.
    #[arg(long)]
    pub to_end: bool,
}

/// Whose dead letters: a consumer group's, or a relay's.
#[derive(Debug, Clone, clap::Args)]
pub struct DlqTarget {
    /// The topic the group consumes.
    #[arg(long, required_unless_present = "relay")]
    pub topic: Option<String>,
    /// The consumer group whose dead letters these are.
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
    #[command(after_help = ENV_DB_BUS)]
    List {
        #[command(flatten)]
        target: DlqTarget,
        /// Show at most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show one dead letter in full.
    #[command(after_help = ENV_DB_BUS)]
    Show {
        /// The dead letter's id (as `keel dlq list` shows it).
        id: String,
        #[command(flatten)]
        target: DlqTarget,
    },
    /// Send a dead letter back to its group (a relay's: publish its event again
    /// through KEEL_BUS_URL, then delete the record).
    #[command(after_help = ENV_DB_BUS)]
    Retry {
        /// The dead letter's id (as `keel dlq list` shows it).
        id: String,
        #[command(flatten)]
        target: DlqTarget,
    },
    /// Delete every dead letter of a group or relay.
    #[command(after_help = ENV_DB_BUS)]
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

/// `error` and its causes on one line, each cause once: many errors already include
/// their source in their own message (`connecting: {source}`), so printing the whole
/// chain as `{error:#}` would repeat it. A cause whose text the message before it
/// already contains is left out.
pub fn error_report(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        let text = text.trim();
        if text.is_empty() || parts.iter().any(|part| part.contains(text)) {
            continue;
        }
        parts.push(text.to_owned());
    }
    parts.join(": ")
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Completions { shell } = cli.command {
        let mut command = <Cli as clap::CommandFactory>::command();
        let mut stdout = std::io::stdout().lock();
        clap_complete::generate(shell, &mut command, "keel", &mut stdout);
        return Ok(());
    }
    let config = config(&cli)?;
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
            ProjectionAction::Rebuild { name, discard } => {
                commands::projections_rebuild(&config, out, &name, discard).await
            }
        },
        Command::Schema { action: SchemaAction::Export } => commands::schema_export(out),
        Command::Schema { action: SchemaAction::Check { sample } } => {
            commands::schema_check(&config, out, sample).await
        }
        Command::Dlq { action } => commands::dlq(&config, out, action).await,
        Command::Groups { action } => crate::groups::groups(&config, out, action).await,
        Command::Timers { action } => crate::timers::timers(&config, out, action).await,
        Command::Completions { .. } => Ok(()),
    }
}

/// The configuration: keel.toml, under the environment, under `--database-url` and
/// `--bus-url` (clap has already read KEEL_DATABASE_URL and KEEL_BUS_URL into them
/// when the flags are absent).
fn config(cli: &Cli) -> Result<Config, crate::config::ConfigError> {
    Config::from_sources(std::path::Path::new("keel.toml"), |key| match key {
        "KEEL_DATABASE_URL" => cli.database_url.clone(),
        "KEEL_BUS_URL" => cli.bus_url.clone(),
        _ => std::env::var(key).ok(),
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    /// Every command (and subcommand) with its path, e.g. `keel dlq list`.
    fn commands() -> Vec<(String, clap::Command)> {
        fn walk(path: String, command: clap::Command, out: &mut Vec<(String, clap::Command)>) {
            for sub in command.get_subcommands() {
                walk(format!("{path} {}", sub.get_name()), sub.clone(), out);
            }
            out.push((path, command));
        }
        let mut out = Vec::new();
        walk("keel".to_owned(), Cli::command(), &mut out);
        out
    }

    #[test]
    fn every_argument_has_help() {
        let mut missing = Vec::new();
        for (path, command) in commands() {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path}: {id}"));
                }
            }
        }
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
    }

    #[test]
    fn every_command_lists_the_environment_it_reads() {
        let mut missing = Vec::new();
        for (path, command) in commands() {
            if command.has_subcommands() && path != "keel" {
                continue;
            }
            let after = command.get_after_help().map(ToString::to_string).unwrap_or_default();
            if !after.contains("Environment:") && !after.contains("RUST_LOG") {
                missing.push(path);
            }
        }
        assert!(missing.is_empty(), "commands whose help names no environment: {missing:?}");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("pool timed out: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn an_error_report_names_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let error = anyhow::Error::new(Repeats(io)).context("connecting to PostgreSQL");
        let report = error_report(&error);
        assert_eq!(report, "connecting to PostgreSQL: pool timed out: connection refused");
        assert_eq!(report.matches("connection refused").count(), 1, "{report}");
    }

    #[test]
    fn flags_win_over_the_environment() {
        let cli = Cli::parse_from([
            "keel",
            "status",
            "--database-url",
            "sqlite://elsewhere.db",
            "--bus-url",
            "memory://",
        ]);
        let config = config(&cli).expect("a valid configuration");
        assert_eq!(config.database_url, "sqlite://elsewhere.db");
        assert_eq!(config.bus_url.as_deref(), Some("memory://"));
    }
}
