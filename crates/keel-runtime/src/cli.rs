//! The command line of a binary built with [`ServiceRunner`]: serving (the default)
//! and the admin subcommands, which run against `KEEL_DATABASE_URL` without serving.

use std::ffi::OsString;
use std::io::Write as _;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use keel_store::StoreError;

use crate::ServiceRunner;

#[derive(Debug, Parser)]
#[command(
    name = "service",
    about = "A Keel service: serves its routes, consumers and projections until Ctrl-C or SIGTERM, configured by KEEL_* variables (see keel-runtime's Config)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

/// What the binary was asked to do.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Serve (what the binary does without a subcommand).
    Serve,
    /// The service's projections (read models fed from the log).
    Projections {
        #[command(subcommand)]
        action: ProjectionAction,
    },
    /// Replay the whole log into a projection (the same as `projections rebuild`).
    Replay {
        /// `projection:NAME`.
        #[arg(long, value_name = "projection:NAME")]
        into: String,
        /// How long to wait for the projection's lease (see `projections rebuild`).
        #[arg(long, value_name = "SECONDS", default_value_t = 30)]
        wait: u64,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ProjectionAction {
    /// List the projections with their checkpoints.
    List,
    /// Empty a projection's read model and checkpoint, then replay the log into it.
    /// Stop the service first: refused while a running replica holds the projection.
    Rebuild {
        /// The projection's name.
        name: String,
        /// How long to wait for the projection's lease, held by a running replica
        /// (or, for its time to live, by one that was killed).
        #[arg(long, value_name = "SECONDS", default_value_t = 30)]
        wait: u64,
    },
}

/// Parses `args` (the program name first, which the usage shows); exits the process
/// with clap's message on a bad command line, or after printing the help.
pub(crate) fn parse(args: impl IntoIterator<Item = impl Into<OsString> + Clone>) -> Command {
    Cli::parse_from(args).command.unwrap_or(Command::Serve)
}

/// Runs an admin subcommand, printing to stdout.
pub(crate) async fn admin(mut runner: ServiceRunner, command: Command) -> anyhow::Result<()> {
    let (name, wait) = match command {
        Command::Serve => anyhow::bail!("serving is not an admin subcommand"),
        Command::Projections { action: ProjectionAction::List } => {
            let (_, db) = runner.open().await?;
            let log = db.log();
            let mut listing = String::new();
            for spec in &runner.projections {
                let checkpoint = log.checkpoint(&spec.checkpoint_name()).await?;
                let at = checkpoint.map_or_else(|| "not started".to_owned(), |c| format!("at {c}"));
                listing.push_str(&format!("{}\t{at}\n", spec.name()));
            }
            std::io::stdout().write_all(listing.as_bytes())?;
            return Ok(());
        }
        Command::Projections { action: ProjectionAction::Rebuild { name, wait } } => (name, wait),
        Command::Replay { into, wait } => match into.strip_prefix("projection:") {
            Some(name) if !name.is_empty() => (name.to_owned(), wait),
            _ => anyhow::bail!(
                "--into `{into}`: a service binary replays only into its projections \
                 (--into projection:NAME); `keel replay` does the rest"
            ),
        },
    };
    runner.find_projection(&name)?;
    let (_, db) = runner.open().await?;
    let spec = runner.find_projection(&name)?;
    let deadline = Instant::now() + Duration::from_secs(wait);
    let mut told_waiting = false;
    let applied = loop {
        let mut last_reported = 0u64;
        let rebuilt = spec
            .rebuild(&db, |progress| {
                if progress.applied >= last_reported + 1000 || progress.applied == progress.total {
                    last_reported = progress.applied;
                    eprintln!("{name}: {} of {} event(s)", progress.applied, progress.total);
                }
            })
            .await;
        match rebuilt {
            Ok(applied) => break applied,
            Err(keel_sql::Error::Store(StoreError::LeaseHeld(_))) if Instant::now() < deadline => {
                if !told_waiting {
                    eprintln!(
                        "{name}: a running replica holds the projection (or one killed less \
                         than the lease's time to live ago); waiting up to {wait} s"
                    );
                    told_waiting = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(keel_sql::Error::Store(StoreError::LeaseHeld(_))) => anyhow::bail!(
                "rebuilding projection {name}: a running replica of the service holds it; \
                 stop the service first"
            ),
            Err(error) => anyhow::bail!("rebuilding projection {name}: {error}"),
        }
    };
    println!("rebuilt projection {name} from {applied} event(s)");
    Ok(())
}
