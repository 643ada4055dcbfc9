//! The `keel` command line. See `keel --help`.

use std::process::ExitCode;

use clap::Parser as _;

// Measurably cheaper than glibc's malloc for the gateway's many small per-request
// allocations (docs/benchmarks-gateway.md, third pass).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = keel_cli::cli::Cli::parse();
    let _telemetry = keel_cli::cli::init_tracing(cli.verbose);
    match keel_cli::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of stdout has gone (`keel tail | head -1`): it has what it wanted.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("keel: {}", keel_cli::cli::error_report(&error));
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
