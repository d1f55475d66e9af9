//! The address other ranks reach this worker at.

use std::net::{ToSocketAddrs, UdpSocket};

/// The local IP address of the interface that routes to the coordinator:
/// ranks of a gang talk over the same network their workers reach the
/// coordinator on. Connecting a UDP socket sends nothing; it only picks the
/// route. Falls back to the machine's hostname.
pub fn advertise_host(coordinator: &str) -> String {
    let authority = coordinator
        .split("://")
        .last()
        .unwrap_or(coordinator)
        .split('/')
        .next()
        .unwrap_or_default();
    let routed = authority
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .and_then(|target| {
            let socket = UdpSocket::bind(if target.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            })
            .ok()?;
            socket.connect(target).ok()?;
            socket.local_addr().ok()
        })
        .map(|local| local.ip().to_string());
    routed.unwrap_or_else(|| std::env::var("HOSTNAME").unwrap_or_else(|_| "127.0.0.1".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loopback_coordinator_means_a_loopback_address() {
        assert_eq!(advertise_host("http://127.0.0.1:7070"), "127.0.0.1");
        assert_eq!(advertise_host("127.0.0.1:7070"), "127.0.0.1");
    }
}
