//! A TCP proxy the test owns, to make Postgres or Redis unreachable for a
//! while without touching the shared servers: `cut` drops every connection
//! and refuses new ones until `restore`; `trap_next_commit` lets a Postgres
//! COMMIT through and drops its connection before the answer comes back (a
//! commit whose outcome the client cannot know).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct TcpProxy {
    pub address: String,
    cut: Arc<AtomicBool>,
    /// Set by `trap_next_commit`, cleared by the trap when it springs.
    commit_trap: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept_loop: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: &str) -> anyhow::Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let commit_trap = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let target = target.to_owned();
        let accept_loop = tokio::spawn({
            let (cut, connections, trap) = (cut.clone(), connections.clone(), commit_trap.clone());
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    if cut.load(Ordering::Acquire) {
                        drop(inbound);
                        continue;
                    }
                    let (target, trap) = (target.clone(), trap.clone());
                    let connection = tokio::spawn(async move {
                        if let Ok(outbound) = TcpStream::connect(&target).await {
                            forward(inbound, outbound, &trap).await;
                        }
                    });
                    let mut connections = connections.lock().unwrap_or_else(|p| p.into_inner());
                    connections.retain(|c| !c.is_finished());
                    connections.push(connection);
                }
            }
        });
        Ok(TcpProxy {
            address,
            cut,
            commit_trap,
            connections,
            accept_loop,
        })
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        for connection in self
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            connection.abort();
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::Release);
    }

    /// The next Postgres `COMMIT` (a simple query) reaches the server, but
    /// its connection is dropped before the answer comes back.
    pub fn trap_next_commit(&self) {
        self.commit_trap.store(true, Ordering::Release);
    }

    /// Whether the trap set by `trap_next_commit` has sprung.
    pub fn commit_trapped(&self) -> bool {
        !self.commit_trap.load(Ordering::Acquire)
    }
}

/// Forwards one connection both ways until either side closes — or, when
/// `trap` is set, until a `COMMIT` has gone to the server: then its answer
/// (the commit done) is swallowed and the connection dropped.
async fn forward(inbound: TcpStream, outbound: TcpStream, trap: &AtomicBool) {
    let (mut client_reads, mut client_writes) = inbound.into_split();
    let (mut server_reads, mut server_writes) = outbound.into_split();
    let swallow = Arc::new(AtomicBool::new(false));
    let mut answers = tokio::spawn({
        let swallow = swallow.clone();
        async move {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                let read = match server_reads.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(read) => read,
                };
                // The client sends COMMIT only once every earlier answer
                // has arrived: this is its answer.
                if swallow.load(Ordering::Acquire) {
                    return;
                }
                if client_writes.write_all(&buffer[..read]).await.is_err() {
                    return;
                }
            }
        }
    });
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::select! {
            read = client_reads.read(&mut buffer) => match read {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            },
            _ = &mut answers => return,
        };
        let chunk = &buffer[..read];
        let commits = chunk.windows(7).any(|w| w == b"COMMIT\0");
        if commits && trap.swap(false, Ordering::AcqRel) {
            swallow.store(true, Ordering::Release);
            if server_writes.write_all(chunk).await.is_ok() {
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(10), &mut answers).await;
            }
            answers.abort();
            return;
        }
        if server_writes.write_all(chunk).await.is_err() {
            break;
        }
    }
    answers.abort();
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept_loop.abort();
    }
}
