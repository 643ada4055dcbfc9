//! The `keel` command line. See `keel --help`.

use std::process::ExitCode;

use clap::Parser as _;

// Measurably cheaper than glibc's malloc for the gateway's many small per-request
// allocations (docs/benchmarks-gateway.md, third pass).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = keel::cli::Cli::parse();
    let _telemetry = keel::cli::init_tracing(cli.verbose);
    match keel::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("keel: {error:#}");
            ExitCode::FAILURE
        }
    }
}
