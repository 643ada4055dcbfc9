//! The instances of one upstream: a snapshot (fixed or from discovery), a circuit
//! breaker and an in-flight counter per instance, and the balancing choice.
//!
//! The snapshot lives in an [`ArcSwap`] so a pick reads it without locking; a
//! discovered pool swaps in a new snapshot on each registry change and keeps the
//! breaker and in-flight count of the instances that stay.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use keel_registry::{Instance, Watch};

/// How [`Endpoints::pick`] chooses among the instances whose breaker lets calls through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// Each instance in turn.
    RoundRobin,
    /// Two random instances, the one with fewer calls in flight.
    #[default]
    PowerOfTwoChoices,
}

/// When an instance's circuit breaker opens, and for how long.
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// How long an open breaker refuses calls before letting one probe through.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    /// Five consecutive failures open the breaker for ten seconds.
    fn default() -> Self {
        Self { failure_threshold: 5, open_for: Duration::from_secs(10) }
    }
}

/// How a pool balances calls and guards its instances.
#[derive(Debug, Clone, Default)]
pub struct PoolConfig {
    /// How an instance is chosen.
    pub balance: Balance,
    /// The circuit breaker every instance gets.
    pub breaker: BreakerConfig,
}

/// The state of one instance's circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused until `open_for` has passed.
    Open,
    /// One probe call is let through; its outcome closes or re-opens the breaker.
    HalfOpen,
}

impl BreakerState {
    /// The value of the `keel_breaker_state` gauge: 0 closed, 1 open, 2 half-open.
    pub fn gauge_value(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::Open => 1.0,
            Self::HalfOpen => 2.0,
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            CLOSED => Self::Closed,
            OPEN => Self::Open,
            _ => Self::HalfOpen,
        }
    }
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// Why no instance could be picked (the gateway answers 503 for both).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PickError {
    /// Discovery knows no healthy instance of the named upstream.
    #[error("no healthy instance of {0}")]
    NoInstances(String),
    /// Every instance of the named upstream has its breaker open.
    #[error("every instance of {0} has its circuit breaker open")]
    AllOpen(String),
}

/// The instances of one upstream. Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct Endpoints {
    shared: Arc<Shared>,
    /// Stops the discovery follower when the last clone is dropped.
    _follower: Option<Arc<AbortOnDrop>>,
}

#[derive(Debug)]
struct Shared {
    name: Arc<str>,
    config: PoolConfig,
    slots: ArcSwap<Vec<Arc<Slot>>>,
    next: AtomicUsize,
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Endpoints {
    /// A fixed list of base URLs (`http://host:port`), named `name` in errors and metrics.
    pub fn fixed(name: &str, base_urls: Vec<String>, config: PoolConfig) -> Self {
        let shared = Shared::new(name, config);
        shared.replace(base_urls);
        Self { shared: Arc::new(shared), _follower: None }
    }

    /// The instances a registry watch reports, followed as they change.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime (the watch is followed by a spawned task).
    pub fn discovered(name: &str, mut watch: Watch, config: PoolConfig) -> Self {
        let shared = Shared::new(name, config);
        shared.replace(base_urls(&watch.snapshot()));
        let shared = Arc::new(shared);
        let weak: Weak<Shared> = Arc::downgrade(&shared);
        let task = tokio::spawn(async move {
            while let Ok(snapshot) = watch.changed().await {
                let Some(shared) = weak.upgrade() else { return };
                shared.replace(base_urls(&snapshot));
                tracing::debug!(upstream = %shared.name, instances = snapshot.len(), "instances changed");
            }
        });
        Self { shared, _follower: Some(Arc::new(AbortOnDrop(task.abort_handle()))) }
    }

    /// The upstream's name, as in errors and metrics.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// How many instances the current snapshot holds (whatever their breakers say).
    pub fn len(&self) -> usize {
        self.shared.slots.load().len()
    }

    /// Whether the snapshot holds no instance.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The base URLs of the current snapshot.
    pub fn base_urls(&self) -> Vec<String> {
        self.shared.slots.load().iter().map(|s| s.base_url.clone()).collect()
    }

    /// Chooses an instance whose breaker is closed (or half-open and free for a probe)
    /// and counts the call as in flight until the returned [`Pick`] is dropped.
    pub fn pick(&self) -> Result<Pick, PickError> {
        self.pick_filtered(|_| true)
    }

    /// Like [`Endpoints::pick`], but prefers an instance whose base URL is not in
    /// `tried` (a retry goes elsewhere); falls back to the tried ones only when no
    /// other instance can take the call.
    pub fn pick_excluding(&self, tried: &[String]) -> Result<Pick, PickError> {
        if tried.is_empty() {
            return self.pick();
        }
        match self.pick_filtered(|url| !tried.iter().any(|t| t == url)) {
            Ok(pick) => Ok(pick),
            Err(_) => self.pick(),
        }
    }

    /// Like [`Endpoints::pick`], but only among the instances whose base URL is not in
    /// `tried`, with no fall-back: the gateway's retries, which must never go back to
    /// an instance that just failed the same request (a request that fails everywhere
    /// would otherwise count against one instance's breaker several times).
    pub fn pick_untried(&self, tried: &[String]) -> Result<Pick, PickError> {
        if tried.is_empty() {
            return self.pick();
        }
        self.pick_filtered(|url| !tried.iter().any(|t| t == url))
    }

    /// Breaker state per instance base URL, for admin endpoints and metrics.
    pub fn states(&self) -> Vec<(String, BreakerState)> {
        self.shared.slots.load().iter().map(|s| (s.base_url.clone(), s.breaker.state())).collect()
    }

    /// Calls in flight per instance base URL.
    pub fn in_flight(&self) -> Vec<(String, usize)> {
        self.shared
            .slots
            .load()
            .iter()
            .map(|s| (s.base_url.clone(), s.in_flight.load(Ordering::Relaxed)))
            .collect()
    }

    fn pick_filtered(&self, allowed: impl Fn(&str) -> bool) -> Result<Pick, PickError> {
        let shared = &self.shared;
        let slots = shared.slots.load();
        let n = slots.len();
        if n == 0 {
            return Err(PickError::NoInstances(shared.name.to_string()));
        }
        let open_for = shared.config.breaker.open_for;
        let usable = |s: &Slot| allowed(&s.base_url) && s.breaker.may_pass(open_for);
        let start = match shared.config.balance {
            Balance::RoundRobin => shared.next.fetch_add(1, Ordering::Relaxed) % n,
            Balance::PowerOfTwoChoices => {
                if n >= 2 {
                    let a = fastrand::usize(..n);
                    let mut b = fastrand::usize(..n - 1);
                    if b >= a {
                        b += 1;
                    }
                    let (sa, sb) = (&slots[a], &slots[b]);
                    let best = match (usable(sa), usable(sb)) {
                        (true, true) => {
                            let (la, lb) = (sa.in_flight(), sb.in_flight());
                            Some(if lb < la { sb } else { sa })
                        }
                        (true, false) => Some(sa),
                        (false, true) => Some(sb),
                        (false, false) => None,
                    };
                    if let Some(slot) = best
                        && let Some(pick) = slot.try_pick(shared)
                    {
                        return Ok(pick);
                    }
                    fastrand::usize(..n)
                } else {
                    0
                }
            }
        };
        // Round robin, or P2C's fallback: the first usable instance from `start` on.
        for i in 0..n {
            let slot = &slots[(start + i) % n];
            if allowed(&slot.base_url)
                && let Some(pick) = slot.try_pick(shared)
            {
                return Ok(pick);
            }
        }
        if slots.iter().any(|s| allowed(&s.base_url)) {
            Err(PickError::AllOpen(shared.name.to_string()))
        } else {
            Err(PickError::NoInstances(shared.name.to_string()))
        }
    }
}

impl Shared {
    fn new(name: &str, config: PoolConfig) -> Self {
        Self {
            name: Arc::from(name),
            config,
            slots: ArcSwap::from_pointee(Vec::new()),
            next: AtomicUsize::new(0),
        }
    }

    /// Swaps in `urls`, keeping the state of the instances already known.
    fn replace(&self, urls: Vec<String>) {
        let current = self.slots.load();
        let mut known: HashMap<&str, &Arc<Slot>> =
            current.iter().map(|s| (s.base_url.as_str(), s)).collect();
        let mut next: Vec<Arc<Slot>> = Vec::with_capacity(urls.len());
        for url in urls {
            if next.iter().any(|s| s.base_url == url) {
                continue;
            }
            let slot = match known.remove(url.as_str()) {
                Some(slot) => Arc::clone(slot),
                None => Arc::new(Slot::new(&self.name, url)),
            };
            next.push(slot);
        }
        self.slots.store(Arc::new(next));
    }
}

fn base_urls(instances: &[Instance]) -> Vec<String> {
    instances.iter().map(Instance::base_url).collect()
}

/// One instance: its breaker and its calls in flight.
#[derive(Debug)]
struct Slot {
    base_url: String,
    upstream: Arc<str>,
    in_flight: AtomicUsize,
    breaker: Breaker,
}

impl Slot {
    fn new(upstream: &Arc<str>, base_url: String) -> Self {
        let slot = Self {
            base_url,
            upstream: Arc::clone(upstream),
            in_flight: AtomicUsize::new(0),
            breaker: Breaker::default(),
        };
        slot.publish(BreakerState::Closed);
        slot
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn try_pick(self: &Arc<Self>, shared: &Shared) -> Option<Pick> {
        let probe = self.breaker.try_acquire(shared.config.breaker.open_for, self)?;
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Pick {
            slot: Arc::clone(self),
            threshold: shared.config.breaker.failure_threshold,
            probe,
            reported: false,
        })
    }

    /// Sets the `keel_breaker_state` gauge; called on state changes only.
    fn publish(&self, state: BreakerState) {
        metrics::gauge!(
            "keel_breaker_state",
            "upstream" => self.upstream.to_string(),
            "instance" => self.base_url.clone(),
        )
        .set(state.gauge_value());
    }
}

/// A circuit breaker. The state is an atomic so the closed fast path takes no lock;
/// every transition happens under the mutex.
#[derive(Debug)]
struct Breaker {
    state: AtomicU8,
    failures: AtomicU32,
    guarded: Mutex<Guarded>,
}

#[derive(Debug)]
struct Guarded {
    opened_at: Instant,
    /// Whether the one half-open probe is out.
    probe_out: bool,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            guarded: Mutex::new(Guarded { opened_at: Instant::now(), probe_out: false }),
        }
    }
}

impl Breaker {
    fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Acquire))
    }

    fn lock(&self) -> MutexGuard<'_, Guarded> {
        // The guarded data stays consistent even if a holder panicked.
        self.guarded.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a call would be let through now (a cheap peek, no state change).
    fn may_pass(&self, open_for: Duration) -> bool {
        match self.state.load(Ordering::Acquire) {
            CLOSED => true,
            OPEN => self.lock().opened_at.elapsed() >= open_for,
            _ => !self.lock().probe_out,
        }
    }

    /// Lets a call through: `Some(false)` a normal call, `Some(true)` the half-open
    /// probe, `None` refused.
    fn try_acquire(&self, open_for: Duration, slot: &Slot) -> Option<bool> {
        if self.state.load(Ordering::Acquire) == CLOSED {
            return Some(false);
        }
        let mut g = self.lock();
        match self.state.load(Ordering::Acquire) {
            CLOSED => Some(false),
            OPEN if g.opened_at.elapsed() >= open_for => {
                g.probe_out = true;
                self.state.store(HALF_OPEN, Ordering::Release);
                drop(g);
                slot.publish(BreakerState::HalfOpen);
                Some(true)
            }
            HALF_OPEN if !g.probe_out => {
                g.probe_out = true;
                Some(true)
            }
            _ => None,
        }
    }

    fn on_success(&self, probe: bool, slot: &Slot) {
        if probe {
            let mut g = self.lock();
            g.probe_out = false;
            if self.state.load(Ordering::Acquire) == HALF_OPEN {
                self.failures.store(0, Ordering::Relaxed);
                self.state.store(CLOSED, Ordering::Release);
                drop(g);
                slot.publish(BreakerState::Closed);
            }
        } else if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    fn on_failure(&self, probe: bool, threshold: u32, slot: &Slot) {
        if probe {
            let mut g = self.lock();
            g.probe_out = false;
            if self.state.load(Ordering::Acquire) == HALF_OPEN {
                g.opened_at = Instant::now();
                self.state.store(OPEN, Ordering::Release);
                drop(g);
                slot.publish(BreakerState::Open);
            }
            return;
        }
        if self.state.load(Ordering::Acquire) != CLOSED {
            // A late outcome of a call let through before the breaker opened.
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if failures >= threshold.max(1) {
            let mut g = self.lock();
            if self.state.load(Ordering::Acquire) == CLOSED {
                g.opened_at = Instant::now();
                self.state.store(OPEN, Ordering::Release);
                drop(g);
                tracing::warn!(upstream = %slot.upstream, instance = %slot.base_url, failures, "circuit breaker opened");
                slot.publish(BreakerState::Open);
            }
        }
    }

    /// The probe ended unreported: let another one through.
    fn release_probe(&self) {
        self.lock().probe_out = false;
    }
}

/// One chosen instance. Report the outcome with [`Pick::success`] or
/// [`Pick::failure`] (a connect error, a timeout or a 5xx); dropping it unreported
/// only ends the in-flight count.
#[derive(Debug)]
pub struct Pick {
    slot: Arc<Slot>,
    threshold: u32,
    probe: bool,
    reported: bool,
}

impl Pick {
    /// `http://host:port` of the instance.
    pub fn base_url(&self) -> &str {
        &self.slot.base_url
    }

    /// Whether this call is the half-open probe whose outcome closes or re-opens the
    /// breaker.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Reports the call as a success (closes a half-open breaker).
    pub fn success(mut self) {
        self.reported = true;
        self.slot.breaker.on_success(self.probe, &self.slot);
    }

    /// Reports the call as a failure (counts towards opening the breaker; re-opens a
    /// half-open one).
    pub fn failure(mut self) {
        self.reported = true;
        self.slot.breaker.on_failure(self.probe, self.threshold, &self.slot);
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        self.slot.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.probe && !self.reported {
            self.slot.breaker.release_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;
    use std::sync::Barrier;

    use super::*;

    fn config(balance: Balance, failure_threshold: u32, open_for: Duration) -> PoolConfig {
        PoolConfig { balance, breaker: BreakerConfig { failure_threshold, open_for } }
    }

    fn urls(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("http://127.0.0.1:{}", 9000 + i)).collect()
    }

    fn state_of(pool: &Endpoints, url: &str) -> BreakerState {
        pool.states().into_iter().find(|(u, _)| u == url).unwrap().1
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn empty_pool_has_no_instances() {
        let pool = Endpoints::fixed("empty", vec![], PoolConfig::default());
        assert_eq!(pool.pick().unwrap_err(), PickError::NoInstances("empty".into()));
    }

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let pool = Endpoints::fixed("t", urls(1), config(Balance::RoundRobin, 3, HOUR));
        let url = &urls(1)[0];
        pool.pick().unwrap().failure();
        pool.pick().unwrap().failure();
        assert_eq!(state_of(&pool, url), BreakerState::Closed);
        pool.pick().unwrap().failure();
        assert_eq!(state_of(&pool, url), BreakerState::Open);
        assert_eq!(pool.pick().unwrap_err(), PickError::AllOpen("t".into()));
    }

    #[test]
    fn success_resets_the_consecutive_count() {
        let pool = Endpoints::fixed("t", urls(1), config(Balance::RoundRobin, 2, HOUR));
        for _ in 0..5 {
            pool.pick().unwrap().failure();
            pool.pick().unwrap().success();
        }
        assert_eq!(state_of(&pool, &urls(1)[0]), BreakerState::Closed);
    }

    #[test]
    fn open_instance_is_ejected() {
        for balance in [Balance::RoundRobin, Balance::PowerOfTwoChoices] {
            let pool = Endpoints::fixed("t", urls(3), config(balance, 1, HOUR));
            let bad = &urls(3)[1];
            while state_of(&pool, bad) == BreakerState::Closed {
                let pick = pool.pick().unwrap();
                if pick.base_url() == bad { pick.failure() } else { pick.success() }
            }
            for _ in 0..100 {
                assert_ne!(pool.pick().unwrap().base_url(), bad);
            }
        }
    }

    #[test]
    fn half_open_probe_success_closes() {
        let pool = Endpoints::fixed("t", urls(1), config(Balance::RoundRobin, 1, Duration::ZERO));
        let url = &urls(1)[0];
        pool.pick().unwrap().failure();
        assert_eq!(state_of(&pool, url), BreakerState::Open);
        let probe = pool.pick().unwrap();
        assert!(probe.is_probe());
        assert_eq!(state_of(&pool, url), BreakerState::HalfOpen);
        assert_eq!(pool.pick().unwrap_err(), PickError::AllOpen("t".into()));
        probe.success();
        assert_eq!(state_of(&pool, url), BreakerState::Closed);
        let a = pool.pick().unwrap();
        let b = pool.pick().unwrap();
        assert!(!a.is_probe() && !b.is_probe());
    }

    #[test]
    fn half_open_probe_failure_reopens() {
        let pool = Endpoints::fixed("t", urls(1), config(Balance::RoundRobin, 1, HOUR));
        let url = &urls(1)[0];
        pool.pick().unwrap().failure();
        // Not yet: the breaker stays open for an hour.
        assert!(pool.pick().is_err());
        let shared = &pool.shared;
        let slot = Arc::clone(&shared.slots.load()[0]);
        slot.breaker.lock().opened_at = Instant::now().checked_sub(HOUR).unwrap();
        let probe = pool.pick().unwrap();
        assert!(probe.is_probe());
        probe.failure();
        assert_eq!(state_of(&pool, url), BreakerState::Open);
        // Re-opened just now, so refused for another hour.
        assert!(pool.pick().is_err());
    }

    #[test]
    fn unreported_probe_lets_another_through() {
        let pool = Endpoints::fixed("t", urls(1), config(Balance::RoundRobin, 1, Duration::ZERO));
        pool.pick().unwrap().failure();
        drop(pool.pick().unwrap());
        assert_eq!(state_of(&pool, &urls(1)[0]), BreakerState::HalfOpen);
        let probe = pool.pick().unwrap();
        assert!(probe.is_probe());
        probe.success();
        assert_eq!(state_of(&pool, &urls(1)[0]), BreakerState::Closed);
    }

    #[test]
    fn late_outcomes_do_not_touch_an_open_breaker() {
        let pool = Endpoints::fixed("t", urls(1), config(Balance::RoundRobin, 1, HOUR));
        let early = pool.pick().unwrap();
        let late = pool.pick().unwrap();
        early.failure();
        late.success();
        assert_eq!(state_of(&pool, &urls(1)[0]), BreakerState::Open);
    }

    #[test]
    fn exactly_one_probe_under_concurrency() {
        let pool =
            Endpoints::fixed("t", urls(1), config(Balance::PowerOfTwoChoices, 1, Duration::ZERO));
        pool.pick().unwrap().failure();
        let threads = 16;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let pool = pool.clone();
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    pool.pick().ok()
                })
            })
            .collect();
        let picks: Vec<Pick> = handles.into_iter().filter_map(|h| h.join().unwrap()).collect();
        assert_eq!(picks.len(), 1);
        assert!(picks[0].is_probe());
    }

    #[test]
    fn round_robin_is_exact() {
        let pool = Endpoints::fixed("t", urls(3), config(Balance::RoundRobin, 1, HOUR));
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..300 {
            *counts.entry(pool.pick().unwrap().base_url().to_owned()).or_default() += 1;
        }
        assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![100, 100, 100]);
    }

    #[test]
    fn power_of_two_prefers_the_less_loaded() {
        let pool = Endpoints::fixed("t", urls(2), config(Balance::PowerOfTwoChoices, 1, HOUR));
        let [a, b] = [urls(2)[0].clone(), urls(2)[1].clone()];
        // Ten calls held on `a`.
        let held: Vec<Pick> =
            (0..10).map(|_| pool.pick_excluding(std::slice::from_ref(&b)).unwrap()).collect();
        assert!(held.iter().all(|p| p.base_url() == a));
        // The next ten all go to `b`, the less loaded.
        let more: Vec<Pick> = (0..10).map(|_| pool.pick().unwrap()).collect();
        assert!(more.iter().all(|p| p.base_url() == b));
        // Then the load stays even.
        let rest: Vec<Pick> = (0..100).map(|_| pool.pick().unwrap()).collect();
        let on_a = rest.iter().filter(|p| p.base_url() == a).count();
        assert!(on_a.abs_diff(50) <= 1, "{on_a} of 100 on a");
        drop((held, more, rest));
        assert!(pool.in_flight().iter().all(|(_, n)| *n == 0));
    }

    #[test]
    fn pick_excluding_prefers_others_and_falls_back() {
        let pool = Endpoints::fixed("t", urls(2), config(Balance::PowerOfTwoChoices, 1, HOUR));
        let all = urls(2);
        for _ in 0..20 {
            assert_eq!(pool.pick_excluding(&all[..1]).unwrap().base_url(), all[1]);
        }
        // Every instance tried: any instance that lets calls through.
        assert!(pool.pick_excluding(&all).is_ok());
    }

    #[test]
    fn pick_untried_never_falls_back_to_a_tried_instance() {
        let pool = Endpoints::fixed("t", urls(2), config(Balance::PowerOfTwoChoices, 1, HOUR));
        let all = urls(2);
        for _ in 0..20 {
            assert_eq!(pool.pick_untried(&all[..1]).unwrap().base_url(), all[1]);
        }
        assert_eq!(pool.pick_untried(&all).unwrap_err(), PickError::NoInstances("t".into()));
        let single = Endpoints::fixed("s", urls(1), config(Balance::RoundRobin, 1, HOUR));
        assert!(single.pick_untried(&[]).is_ok());
        assert!(single.pick_untried(&urls(1)).is_err());
    }

    fn instance(port: u16) -> Instance {
        Instance {
            id: format!("svc-{port}"),
            service: "svc".into(),
            address: "127.0.0.1".into(),
            port,
            tags: vec![],
            meta: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn discovered_pool_follows_the_watch_and_keeps_state() {
        let (tx, rx) = tokio::sync::watch::channel::<Arc<[Instance]>>(Arc::from(vec![
            instance(1),
            instance(2),
        ]));
        let pool =
            Endpoints::discovered("svc", Watch::new(rx), config(Balance::RoundRobin, 1, HOUR));
        assert_eq!(pool.len(), 2);
        // Open the breaker of port 1.
        loop {
            let pick = pool.pick().unwrap();
            if pick.base_url().ends_with(":1") {
                pick.failure();
                break;
            }
        }
        tx.send(Arc::from(vec![instance(1), instance(3)])).unwrap();
        // Wait for the follower to apply the change.
        while !pool.base_urls().iter().any(|u| u.ends_with(":3")) {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            pool.states(),
            vec![
                ("http://127.0.0.1:1".to_owned(), BreakerState::Open),
                ("http://127.0.0.1:3".to_owned(), BreakerState::Closed),
            ]
        );
        tx.send(Arc::from(Vec::new())).unwrap();
        while !pool.is_empty() {
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.pick().unwrap_err(), PickError::NoInstances("svc".into()));
    }

    #[tokio::test]
    async fn dropping_the_pool_stops_following() {
        let (tx, rx) = tokio::sync::watch::channel::<Arc<[Instance]>>(Arc::from(vec![instance(1)]));
        let pool = Endpoints::discovered("svc", Watch::new(rx), PoolConfig::default());
        drop(pool);
        // The follower held the last receiver; once aborted, the channel closes. Bounded,
        // so that a follower that outlives its pool fails the test instead of hanging it.
        tokio::time::timeout(Duration::from_secs(10), tx.closed())
            .await
            .expect("the discovery follower still runs 10 s after its pool was dropped");
    }
    /// Records the `keel_breaker_state` gauge values set, per instance label.
    #[derive(Debug, Default)]
    struct GaugeLog(Arc<Mutex<Vec<(String, f64)>>>);

    #[derive(Debug)]
    struct LoggedGauge(String, Arc<Mutex<Vec<(String, f64)>>>);

    impl metrics::GaugeFn for LoggedGauge {
        fn increment(&self, _: f64) {}
        fn decrement(&self, _: f64) {}
        fn set(&self, value: f64) {
            self.1.lock().unwrap().push((self.0.clone(), value));
        }
    }

    impl metrics::Recorder for GaugeLog {
        fn describe_counter(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_gauge(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_histogram(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn register_counter(
            &self,
            _: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Counter {
            metrics::Counter::noop()
        }
        fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
            assert_eq!(key.name(), "keel_breaker_state");
            let label =
                |name: &str| key.labels().find(|l| l.key() == name).unwrap().value().to_owned();
            assert_eq!(label("upstream"), "metered");
            metrics::Gauge::from_arc(Arc::new(LoggedGauge(label("instance"), Arc::clone(&self.0))))
        }
        fn register_histogram(
            &self,
            _: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Histogram {
            metrics::Histogram::noop()
        }
    }

    #[test]
    fn breaker_gauge_is_set_on_state_changes_only() {
        let log = GaugeLog::default();
        metrics::with_local_recorder(&log, || {
            let pool = Endpoints::fixed(
                "metered",
                urls(1),
                config(Balance::RoundRobin, 2, Duration::ZERO),
            );
            pool.pick().unwrap().success();
            pool.pick().unwrap().failure();
            pool.pick().unwrap().failure(); // opens
            let probe = pool.pick().unwrap(); // half-open
            probe.failure(); // re-opens
            pool.pick().unwrap().success(); // half-open, then closed
            pool.pick().unwrap().success();
        });
        let url = urls(1)[0].clone();
        let values: Vec<f64> = log
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|(u, v)| {
                assert_eq!(*u, url);
                *v
            })
            .collect();
        assert_eq!(values, vec![0.0, 1.0, 2.0, 1.0, 2.0, 0.0]);
    }
}
