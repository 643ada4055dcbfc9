//! The command line of a binary built with [`ServiceRunner`]: serving (the default)
//! and the admin subcommands, which run against `KEEL_DATABASE_URL` without serving.

use std::ffi::OsString;
use std::io::Write as _;

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
        /// Wait until the new generation is switched in (see `projections rebuild`).
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ProjectionAction {
    /// List the projections with their checkpoints (and rebuilds in progress).
    List,
    /// Rebuild a projection blue/green: replay the log into a new generation of its
    /// read model beside the live one, which keeps serving, then switch it in, in one
    /// transaction. With the service running, its replica holding the projection
    /// switches it in (within a second). Rerunning an interrupted rebuild resumes it.
    Rebuild {
        /// The projection's name.
        name: String,
        /// Wait until the new generation is switched in, also when the running
        /// replica does it.
        #[arg(long)]
        wait: bool,
        /// Drop an interrupted rebuild's generation instead (the live model is
        /// untouched).
        #[arg(long, conflicts_with = "wait")]
        discard: bool,
    },
}

/// Parses `args` (the program name first, which the usage shows); exits the process
/// with clap's message on a bad command line, or after printing the help.
pub(crate) fn parse(args: impl IntoIterator<Item = impl Into<OsString> + Clone>) -> Command {
    Cli::parse_from(args).command.unwrap_or(Command::Serve)
}

/// Runs an admin subcommand, printing to stdout.
pub(crate) async fn admin(mut runner: ServiceRunner, command: Command) -> anyhow::Result<()> {
    let (name, wait, discard) = match command {
        Command::Serve => anyhow::bail!("serving is not an admin subcommand"),
        Command::Projections { action: ProjectionAction::List } => {
            let (_, db) = runner.open().await?;
            let log = db.log();
            let mut listing = String::new();
            for spec in &runner.projections {
                let checkpoint = log.checkpoint(&spec.checkpoint_name()).await?;
                let at = checkpoint.map_or_else(|| "not started".to_owned(), |c| format!("at {c}"));
                listing.push_str(&format!("{}\t{at}", spec.name()));
                if let Some(state) = spec.rebuild_state(&db).await? {
                    let next = log.checkpoint(&spec.rebuild_checkpoint_name()).await?;
                    let next = next.map_or_else(|| "not started".to_owned(), |c| format!("at {c}"));
                    listing.push_str(&format!("\trebuild {state}, new generation {next}"));
                }
                listing.push('\n');
            }
            std::io::stdout().write_all(listing.as_bytes())?;
            return Ok(());
        }
        Command::Projections { action: ProjectionAction::Rebuild { name, wait, discard } } => {
            (name, wait, discard)
        }
        Command::Replay { into, wait } => match into.strip_prefix("projection:") {
            Some(name) if !name.is_empty() => (name.to_owned(), wait, false),
            _ => anyhow::bail!(
                "--into `{into}`: a service binary replays only into its projections \
                 (--into projection:NAME); `keel replay` does the rest"
            ),
        },
    };
    runner.find_projection(&name)?;
    let (_, db) = runner.open().await?;
    let spec = runner.find_projection(&name)?;
    let busy = |error: keel_sql::Error| match error {
        keel_sql::Error::Store(StoreError::LeaseHeld(_)) => anyhow::anyhow!(
            "projection {name}: another rebuild of it is running (or one killed less than \
             the lease's time to live ago); try again shortly"
        ),
        error => anyhow::anyhow!("rebuilding projection {name}: {error}"),
    };
    if discard {
        let discarded = spec.discard_rebuild(&db).await.map_err(busy)?;
        if discarded {
            println!("discarded the rebuild of projection {name}; the live one is untouched");
        } else {
            println!("projection {name} has no rebuild to discard");
        }
        return Ok(());
    }
    let mut last_reported = 0u64;
    let rebuilt = spec
        .rebuild(&db, |progress| {
            if progress.applied >= last_reported + 1000 || progress.applied == progress.total {
                last_reported = progress.applied;
                eprintln!("{name}: {} of {} event(s)", progress.applied, progress.total);
            }
        })
        .await
        .map_err(busy)?;
    if !rebuilt.switched && wait {
        eprintln!("{name}: caught up; waiting for the running replica to switch it in");
        spec.wait_for_switch(&db).await.map_err(busy)?;
    } else if !rebuilt.switched {
        println!(
            "rebuilt projection {name} from {} event(s); the running replica switches it in \
             (`projections list` shows the rebuild until then)",
            rebuilt.applied
        );
        return Ok(());
    }
    println!("rebuilt projection {name} from {} event(s)", rebuilt.applied);
    Ok(())
}
