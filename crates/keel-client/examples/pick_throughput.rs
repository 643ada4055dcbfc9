//! Prints what a pick costs: picks per second and nanoseconds per pick (pick, then
//! report success) for each balance, on 1 and 4 threads over 8 instances.
//!
//! `cargo run --release -p keel-client --example pick_throughput`

use std::time::{Duration, Instant};

use keel_client::{Balance, BreakerConfig, Endpoints, PoolConfig};

const PICKS_PER_THREAD: u32 = 2_000_000;

fn main() {
    let urls: Vec<String> = (0..8).map(|i| format!("http://127.0.0.1:{}", 9000 + i)).collect();
    for balance in [Balance::RoundRobin, Balance::PowerOfTwoChoices] {
        for threads in [1u32, 4] {
            let config = PoolConfig {
                balance,
                breaker: BreakerConfig { failure_threshold: 5, open_for: Duration::from_secs(10) },
            };
            let pool = Endpoints::fixed("bench", urls.clone(), config);
            let start = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(|| {
                        for _ in 0..PICKS_PER_THREAD {
                            if let Ok(pick) = pool.pick() {
                                pick.success();
                            }
                        }
                    });
                }
            });
            let elapsed = start.elapsed();
            let total = f64::from(PICKS_PER_THREAD * threads);
            println!(
                "{balance:?} threads={threads}: {:.1} M picks/s, {:.0} ns per pick per thread",
                total / elapsed.as_secs_f64() / 1e6,
                elapsed.as_secs_f64() * 1e9 / f64::from(PICKS_PER_THREAD),
            );
        }
    }
}
