//! A TCP proxy that a test can cut: a network partition between one process
//! and the server behind the proxy, without touching either.
//!
//! Cut, it forwards nothing and answers nothing: open connections go silent
//! and new ones are accepted and left hanging, as a dropped route or a
//! firewall that drops packets would leave them. Nothing is refused or reset,
//! so the client learns of the cut only from its own timeouts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug)]
pub struct Partition {
    /// `host:port` to give the client in place of the server's.
    pub address: String,
    cut: Arc<AtomicBool>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Partition {
    /// Forwards a port on loopback to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime for the proxy");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("a port for the proxy");
        let address = listener.local_addr().expect("its address").to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let upstream = upstream.to_string();
        let accepting = Arc::clone(&cut);
        runtime.spawn(async move {
            // Connections accepted while cut are held here, never answered.
            let mut held = Vec::new();
            while let Ok((client, _)) = listener.accept().await {
                if accepting.load(Ordering::SeqCst) {
                    held.push(client);
                    continue;
                }
                tokio::spawn(forward(client, upstream.clone(), Arc::clone(&accepting)));
            }
        });
        Self {
            address,
            cut,
            runtime: Some(runtime),
        }
    }

    /// From now on nothing passes either way.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Traffic flows again, on new connections.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Copies both ways until either side closes; once cut, stops copying but
/// keeps both sockets open, so each side waits on silence.
async fn forward(client: TcpStream, upstream: String, cut: Arc<AtomicBool>) {
    let Ok(server) = TcpStream::connect(&upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = pump(&mut client_read, &mut server_write, &cut);
    let down = pump(&mut server_read, &mut client_write, &cut);
    // Either side closing closes both, unless the line was cut.
    tokio::select! {
        () = up => {}
        () = down => {}
    }
    if cut.load(Ordering::SeqCst) {
        // Hold the sockets open and silent for as long as the proxy lives.
        tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
    }
}

async fn pump(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    cut: &AtomicBool,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            // Notice a cut even while the line is idle.
            _ = wait_for_cut(cut) => return,
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if cut.load(Ordering::SeqCst) || to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

async fn wait_for_cut(cut: &AtomicBool) {
    while !cut.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
