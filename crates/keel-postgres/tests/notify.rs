//! Wake-ups across processes survive a failed `NOTIFY` (issue 13, item 12).
#![cfg(feature = "integration")]

mod common;

use std::net::SocketAddr;
use std::str::FromStr as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_postgres::{PgEventLog, PgOptions};
use keel_store::{EventLog, SqlEventLog};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const PATIENCE: Duration = Duration::from_secs(30);

/// A TCP relay to PostgreSQL that the test can cut: while cut, it drops the connections
/// it carries and closes new ones at once (counting them), as a failing network would.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: (String, u16)) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let cut = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicUsize::new(0));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let (cut, refused, links) = (cut.clone(), refused.clone(), links.clone());
            async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else { continue };
                    if cut.load(Ordering::SeqCst) {
                        refused.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                    let upstream = upstream.clone();
                    let link = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    links.lock().unwrap_or_else(|e| e.into_inner()).push(link);
                }
            }
        });
        Self { addr, cut, refused, links, accept }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for link in self.links.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            link.abort();
        }
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_notify_is_sent_again() {
    let url = common::fresh_database().await;
    // The subscriber's process: it LISTENs on a connection of its own pool.
    let reader =
        PgEventLog::connect(&url, PgOptions { max_connections: 2, ..PgOptions::default() })
            .await
            .expect("connect the reader");
    // The writer's process: its pool reaches the server through the proxy.
    let direct = PgConnectOptions::from_str(&url).expect("the database URL");
    let proxy = Proxy::start((direct.get_host().to_owned(), direct.get_port())).await;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(direct.clone().host("127.0.0.1").port(proxy.addr.port()))
        .await
        .expect("connect the writer through the proxy");
    let writer = PgEventLog::from_pool(pool, PgOptions { listen: false, ..PgOptions::default() })
        .await
        .expect("the writer's log");

    let mut changes = reader.changes();
    changes.borrow_and_update();
    writer.notify_appended();
    tokio::time::timeout(PATIENCE, changes.changed())
        .await
        .expect("the first wake-up reaches the reader")
        .expect("the reader's log is open");

    // The writer's connections break while it is about to notify.
    proxy.cut();
    writer.notify_appended();
    keel_testkit::util::eventually("the notifier to try and fail", || proxy.refused() > 0).await;
    proxy.heal();
    tokio::time::timeout(PATIENCE, changes.changed())
        .await
        .expect("the reader is woken once the writer can reach the server again")
        .expect("the reader's log is open");
    drop(writer);
    drop(reader);
    drop(proxy);
}

#[tokio::test]
async fn the_proxy_is_transparent_until_cut() {
    // The test above means something only if a cut proxy does make a notify fail.
    let url = common::fresh_database().await;
    let direct = PgConnectOptions::from_str(&url).expect("the database URL");
    let proxy = Proxy::start((direct.get_host().to_owned(), direct.get_port())).await;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(direct.host("127.0.0.1").port(proxy.addr.port()))
        .await
        .expect("connect through the proxy");
    sqlx::query("SELECT pg_notify('keel_events', '')").execute(&pool).await.expect("through");
    proxy.cut();
    let cut = sqlx::query("SELECT pg_notify('keel_events', '')").execute(&pool).await;
    assert!(cut.is_err(), "a notify through the cut proxy failed: {cut:?}");
    proxy.heal();
    sqlx::query("SELECT pg_notify('keel_events', '')").execute(&pool).await.expect("healed");
}
