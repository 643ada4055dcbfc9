//! The process-wide Prometheus recorder behind the `metrics` facade.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Histogram buckets (seconds) for every metric whose name ends in `_seconds`: 1 ms to
/// 30 s, dense where HTTP calls, publishes and handlers usually land.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The Prometheus recorder of this process, installed as the global `metrics` recorder
/// on first call; every later call returns the same handle.
///
/// If another global recorder was installed before (the `metrics` crate allows one per
/// process), the handle still works but only sees metrics recorded through it directly,
/// not those of the `metrics::counter!`-style macros: a warning is logged and `render`
/// shows no Keel metrics. Install nothing else, or call this early in `main`.
///
/// A background thread folds histogram samples into buckets every few seconds, so
/// histograms stay bounded even when nothing scrapes.
pub fn prometheus() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
            .expect("LATENCY_BUCKETS is not empty")
            .build_recorder();
        let handle = recorder.handle();
        if let Err(error) = metrics::set_global_recorder(recorder) {
            tracing::warn!(
                %error,
                "another global metrics recorder is installed; Keel's Prometheus handle \
                 will not see the metrics recorded through the `metrics` macros"
            );
        }
        let upkeep = handle.clone();
        let spawned =
            std::thread::Builder::new().name("keel-metrics-upkeep".to_owned()).spawn(move || {
                loop {
                    #[allow(
                        clippy::disallowed_methods,
                        reason = "a dedicated thread, never a tokio worker"
                    )]
                    std::thread::sleep(UPKEEP_INTERVAL);
                    upkeep.run_upkeep();
                }
            });
        if let Err(error) = spawned {
            // Rendering also folds samples in, so scraped processes lose nothing.
            tracing::warn!(%error, "cannot start the metrics upkeep thread");
        }
        handle
    })
}

/// The current metrics in the Prometheus text exposition format (the body of
/// `GET /metrics`), installing the recorder if needed.
pub fn render_metrics() -> String {
    prometheus().render()
}
