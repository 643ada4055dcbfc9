//! The order in which a store's transactions get the database when it comes free: the
//! requests' (`begin_request`) must not go ahead of the work in flight (a consumer's
//! inbox transaction) that queued after them, beyond one request. The SQLite and
//! PostgreSQL crates run [`work_in_flight_waits_behind_one_request_at_most`] with
//! their own log and inbox.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_bus::layer::Inbox;

/// Requests queued before the work in flight.
const REQUESTS: usize = 6;

/// Long enough for every task spawned before it to be queued for the database.
const SETTLE: Duration = Duration::from_millis(200);

/// The pause between the work in flight's spawn and the release. A work still not
/// queued when the database comes free would queue behind a second request and fail
/// the case, so this one is generous.
const WORK_QUEUED: Duration = Duration::from_secs(1);

/// Who began a transaction, in the order they began it. Cheap to clone.
#[derive(Clone, Debug, Default)]
struct Arrivals(Arc<Mutex<Vec<String>>>);

impl Arrivals {
    fn began(&self, who: impl Into<String>) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(who.into());
    }

    fn names(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// While the database is held (by the caller, before the call), six requests queue for
/// it one after another (each a transaction from `request`, committed at once), then
/// one transaction of work in flight (`inbox`'s, for a new event); then `release` frees
/// the database. Asserts that the work began after at most one request, where first
/// come, first served would put it last.
///
/// # Panics
/// When the work waited for more than one request, or a transaction failed.
pub async fn work_in_flight_waits_behind_one_request_at_most<DB, E, R, RF, I, F>(
    request: R,
    inbox: I,
    release: F,
) where
    DB: sqlx::Database,
    E: std::fmt::Debug,
    R: Fn() -> RF,
    RF: Future<Output = Result<sqlx::Transaction<'static, DB>, E>> + Send + 'static,
    I: Inbox,
    F: Future<Output = ()>,
{
    let arrivals = Arrivals::default();
    let mut requests = Vec::new();
    for n in 0..REQUESTS {
        let (begun, arrivals) = (request(), arrivals.clone());
        requests.push(tokio::spawn(async move {
            let tx = begun.await.expect("a request's transaction");
            arrivals.began(format!("request {n}"));
            tx.commit().await.expect("commit");
        }));
        tokio::time::sleep(SETTLE / 4).await;
    }
    tokio::time::sleep(SETTLE).await;
    let work = {
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            let tx = inbox.begin("g", "event-1").await.expect("begin").expect("a new event id");
            arrivals.began("work");
            inbox.commit(tx).await.expect("commit");
        })
    };
    tokio::time::sleep(WORK_QUEUED).await;
    arrivals.began("released");
    release.await;
    work.await.expect("the work in flight");
    for request in requests {
        request.await.expect("a request");
    }

    let order = arrivals.names();
    assert_eq!(order.len(), REQUESTS + 2, "{order:?}");
    let work = order.iter().position(|who| who == "work").expect("the work ran");
    assert!(work <= 2, "the work in flight waited for more than one request: {order:?}");
}
