//! A loopback TCP proxy between the deployment's processes and a service they need
//! (PostgreSQL, RabbitMQ), which the harness tells to cut every connection, to refuse
//! new ones for a while (an outage, as a restart of the service would be, without
//! disturbing the other tests that share it), or to stall: hold every byte in both
//! directions for a while, connections left open (a network that stops answering).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy; it stops with the test's runtime.
pub(crate) struct Proxy {
    addr: SocketAddr,
    /// Bumped to cut every open connection.
    cuts: watch::Sender<u64>,
    /// While true, new connections are refused (accepted and closed at once).
    down: watch::Sender<bool>,
    /// While true, no byte goes through in either direction.
    stalled: watch::Sender<bool>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards each connection to `upstream`.
    pub(crate) async fn start(upstream: SocketAddr) -> Arc<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let proxy = Arc::new(Self {
            addr: listener.local_addr().expect("the proxy's address"),
            cuts: watch::channel(0).0,
            down: watch::channel(false).0,
            stalled: watch::channel(false).0,
        });
        let state = Arc::clone(&proxy);
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else { continue };
                if *state.down.borrow() {
                    drop(inbound);
                    continue;
                }
                let cut = state.cuts.subscribe();
                let (stall_in, stall_out) = (state.stalled.subscribe(), state.stalled.subscribe());
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(upstream).await else { return };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    let mut cut = cut;
                    // Either direction ending, or a cut, drops both sockets.
                    tokio::select! {
                        _ = pump(in_read, out_write, stall_in) => {}
                        _ = pump(out_read, in_write, stall_out) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        proxy
    }

    /// The address to give the processes in place of the service's.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every open connection (new ones go through).
    pub(crate) fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Closes every open connection and refuses new ones for `outage`.
    pub(crate) async fn outage(&self, outage: Duration) {
        self.down.send_replace(true);
        self.cut();
        tokio::time::sleep(outage).await;
        self.down.send_replace(false);
    }

    /// Holds every byte in both directions for `stall`, connections left open.
    pub(crate) async fn stall(&self, stall: Duration) {
        self.stalled.send_replace(true);
        tokio::time::sleep(stall).await;
        self.stalled.send_replace(false);
    }
}

/// Copies `from` to `to` until `from` ends or either fails, holding what it read
/// while `stalled`.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut stalled: watch::Receiver<bool>) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if stalled.wait_for(|held| !*held).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
