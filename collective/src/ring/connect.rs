//! Forming the ring: every rank connects to the next one and accepts the
//! previous one, each side checking the other's hello.

use std::io::Write;
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::wire::Hello;
use crate::error::{CollectiveError, Result};

const RETRY: Duration = Duration::from_millis(50);

/// Connects to `address` (rank `peer`), retrying until `deadline` while it is
/// not listening yet, and introduces this rank.
pub fn connect_next(
    address: &str,
    peer: usize,
    hello: Hello,
    deadline: Instant,
) -> Result<TcpStream> {
    let resolved = address
        .to_socket_addrs()
        .map_err(|e| CollectiveError::Setup(format!("address {address:?} of rank {peer}: {e}")))?
        .next()
        .ok_or_else(|| {
            CollectiveError::Setup(format!(
                "address {address:?} of rank {peer} resolves to nothing"
            ))
        })?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(CollectiveError::Timeout {
                op: "connecting the ring",
                peer,
                after: Duration::ZERO,
            });
        }
        match TcpStream::connect_timeout(&resolved, left.min(Duration::from_secs(2))) {
            Ok(mut stream) => {
                stream
                    .write_all(&hello.encode())
                    .map_err(|e| CollectiveError::io("connecting the ring", peer, left, e))?;
                return Ok(stream);
            }
            Err(e) if left > RETRY => {
                tracing::debug!(peer, %address, error = %e, "ring peer not listening yet");
                std::thread::sleep(RETRY);
            }
            Err(e) => return Err(CollectiveError::io("connecting the ring", peer, left, e)),
        }
    }
}

/// Accepts connections until one says hello as rank `peer` of this session,
/// with the gang's secret; strays (port scanners, an earlier generation of
/// the gang, anyone without the secret) are dropped.
pub fn accept_prev(
    listener: &TcpListener,
    peer: usize,
    expected: Hello,
    deadline: Instant,
) -> Result<TcpStream> {
    let setup = |e: std::io::Error| CollectiveError::Setup(format!("ring listener: {e}"));
    listener.set_nonblocking(true).map_err(setup)?;
    loop {
        match listener.accept() {
            Ok((mut stream, from)) => {
                stream.set_nonblocking(false).map_err(setup)?;
                let left = deadline
                    .saturating_duration_since(Instant::now())
                    .max(RETRY);
                stream.set_read_timeout(Some(left)).map_err(setup)?;
                match Hello::read(&mut stream) {
                    Ok(Some(hello)) if expected.admits(&hello) => return Ok(stream),
                    Ok(other) => {
                        tracing::warn!(%from, ?other, ?expected, "unexpected ring connection dropped")
                    }
                    Err(e) => {
                        tracing::warn!(%from, error = %e, "ring connection without a hello dropped")
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(CollectiveError::Timeout {
                        op: "connecting the ring",
                        peer,
                        after: Duration::ZERO,
                    });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(setup(e)),
        }
    }
}
