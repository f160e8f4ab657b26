//! A loopback TCP proxy in front of a backend that a test can make
//! misbehave: refuse connections, cut the live ones, swallow traffic
//! without answering (a black hole, as a dead peer behind a firewall looks),
//! or delay every chunk. Point a client (or a `strata` process) at
//! [`FaultProxy::address`] instead of the backend.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How the proxy treats traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forwards everything.
    None,
    /// Closes new connections at once (with a reset); live ones are cut.
    Refuse,
    /// Accepts and reads, but forwards nothing either way and never closes:
    /// clients see silence until their own timeouts.
    Blackhole,
    /// Forwards each chunk after this pause.
    Delay(Duration),
}

struct State {
    fault: watch::Sender<Fault>,
    /// Bumped to cut every live connection.
    cuts: watch::Sender<u64>,
}

/// The proxy; it stops (and drops its connections) when dropped.
pub struct FaultProxy {
    address: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: impl Into<String>) -> std::io::Result<Self> {
        let upstream = upstream.into();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let state = Arc::new(State { fault: watch::channel(Fault::None).0, cuts: watch::channel(0).0 });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                let _ = client.set_nodelay(true);
                connections.spawn(connection(client, upstream.clone(), shared.clone()));
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Self { address, state, task })
    }

    /// Where clients connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// Applies `fault` to new connections and to live ones. `Refuse` cuts
    /// the live ones; so does leaving `Blackhole` (what they swallowed left
    /// their streams broken, as a real outage would).
    pub fn set(&self, fault: Fault) {
        let before = self.state.fault.send_replace(fault);
        if fault == Fault::Refuse || (before == Fault::Blackhole && fault != Fault::Blackhole) {
            self.cut();
        }
    }

    /// Cuts every live connection (with a reset); new ones are treated as the fault says.
    pub fn cut(&self) {
        self.state.cuts.send_modify(|cuts| *cuts += 1);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

/// Closes with a reset (zero linger), as a crashed peer's socket would.
fn reset(stream: &TcpStream) {
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
}

async fn connection(client: TcpStream, upstream: String, state: Arc<State>) {
    let mut cuts = state.cuts.subscribe();
    cuts.mark_unchanged();
    let fault = *state.fault.borrow();
    if fault == Fault::Refuse {
        reset(&client);
        return;
    }
    let server = match TcpStream::connect(&upstream).await {
        Ok(server) => server,
        Err(_) => {
            reset(&client);
            return;
        }
    };
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, state.fault.subscribe());
    let down = pump(server_read, client_write, state.fault.subscribe());
    tokio::select! {
        _ = cuts.changed() => {}
        _ = async { tokio::join!(up, down) } => {}
    }
    // Dropping the halves closes both sockets.
}

/// Copies `from` to `to` chunk by chunk, as the current fault says.
async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, fault: watch::Receiver<Fault>) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(read) => read,
        };
        let now = *fault.borrow();
        match now {
            // Swallowed: neither forwarded nor answered.
            Fault::Blackhole => continue,
            Fault::Delay(pause) => tokio::time::sleep(pause).await,
            Fault::None | Fault::Refuse => {}
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
