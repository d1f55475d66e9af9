//! Image URLs on a CDN that misbehaves: a local HTTP server, started by the
//! test, answers each path with a scripted fault (429 with `Retry-After`,
//! 503, a slow body, a stalled body, 404, 403, a reset connection, an
//! oversized object) and records when each request came and how many were
//! in flight at once.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atelier_catalog::{CatalogError, Fetched, HttpFetcher, HttpLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PHOTO: &[u8] = b"\xFF\xD8\xFFpretend this is a photo";

#[derive(Default)]
struct Log {
    /// When each path was asked for, in order.
    requests: Mutex<HashMap<String, Vec<Instant>>>,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

impl Log {
    fn times(&self, path: &str) -> Vec<Instant> {
        self.requests
            .lock()
            .unwrap()
            .get(path)
            .cloned()
            .unwrap_or_default()
    }
}

struct Server {
    base: String,
    log: Arc<Log>,
}

async fn start() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Log::default());
    let serving = Arc::clone(&log);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(answer(socket, Arc::clone(&serving)));
        }
    });
    Server { base, log }
}

async fn answer(mut socket: TcpStream, log: Arc<Log>) {
    let mut request = Vec::new();
    let mut buffer = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buffer[..n]),
        }
    }
    let line = String::from_utf8_lossy(&request)
        .lines()
        .next()
        .unwrap()
        .to_string();
    let path = line.split(' ').nth(1).unwrap().to_string();
    let nth = {
        let mut requests = log.requests.lock().unwrap();
        let times = requests.entry(path.clone()).or_default();
        times.push(Instant::now());
        times.len()
    };
    let ok = |body: &[u8]| {
        let mut response = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(body);
        response
    };
    let status = |code: &str, extra: &str| {
        format!("HTTP/1.1 {code}\r\ncontent-length: 0\r\nconnection: close\r\n{extra}\r\n")
            .into_bytes()
    };
    let response = match (path.as_str(), nth) {
        ("/photo.jpg", _) => ok(PHOTO),
        ("/throttled.jpg", 1) => status("429 Too Many Requests", "retry-after: 1\r\n"),
        ("/throttled.jpg", _) => ok(PHOTO),
        ("/unavailable.jpg", 1 | 2) => status("503 Service Unavailable", ""),
        ("/unavailable.jpg", _) => ok(PHOTO),
        ("/down.jpg", _) => status("503 Service Unavailable", ""),
        ("/missing.jpg", _) => status("404 Not Found", ""),
        ("/forbidden.jpg", _) => status("403 Forbidden", ""),
        ("/reset.jpg", 1) => {
            // Closed with a RST, mid-exchange, as a crashed edge server would.
            socket.set_zero_linger().unwrap();
            return;
        }
        ("/reset.jpg", _) => ok(PHOTO),
        ("/slow.jpg", _) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                PHOTO.len()
            );
            let _ = socket.write_all(head.as_bytes()).await;
            for byte in PHOTO {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = socket.write_all(&[*byte]).await;
            }
            return;
        }
        ("/stalled.jpg", _) => {
            let head = "HTTP/1.1 200 OK\r\ncontent-length: 1000\r\nconnection: close\r\n\r\nabc";
            let _ = socket.write_all(head.as_bytes()).await;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return;
        }
        ("/huge-announced.jpg", _) => {
            // Says it is 10 GB: refused on the header, before any body.
            b"HTTP/1.1 200 OK\r\ncontent-length: 10000000000\r\nconnection: close\r\n\r\n".to_vec()
        }
        ("/huge-unannounced.jpg", _) => {
            // No length: chunks until the client hangs up.
            let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
            let _ = socket.write_all(head.as_bytes()).await;
            let chunk = vec![b'x'; 64 * 1024];
            let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
            framed.extend_from_slice(&chunk);
            framed.extend_from_slice(b"\r\n");
            while socket.write_all(&framed).await.is_ok() {}
            return;
        }
        (held, _) if held.starts_with("/held/") => {
            let now = log.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            log.most_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(150)).await;
            log.in_flight.fetch_sub(1, Ordering::SeqCst);
            ok(PHOTO)
        }
        _ => status("500 Internal Server Error", ""),
    };
    let _ = socket.write_all(&response).await;
    let _ = socket.shutdown().await;
}

/// Quick limits, so that giving up takes well under a second.
fn limits() -> HttpLimits {
    HttpLimits {
        per_host: 4,
        connect_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_millis(500),
        retries: 3,
        first_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_secs(5),
    }
}

const MIB: u64 = 1024 * 1024;

#[tokio::test]
async fn each_fault_of_a_cdn_gets_the_outcome_it_deserves() {
    let server = start().await;
    let fetcher = HttpFetcher::new(limits()).unwrap();
    let fetch = |path: &str| {
        let (fetcher, url) = (fetcher.clone(), format!("{}{path}", server.base));
        async move { fetcher.fetch(&url, MIB).await }
    };
    let photo = Fetched::Bytes(bytes::Bytes::from_static(PHOTO));

    assert_eq!(fetch("/photo.jpg").await.unwrap(), photo);
    // Throttled: the second try waits the second that Retry-After asks for,
    // far longer than the 20 ms backoff.
    assert_eq!(fetch("/throttled.jpg").await.unwrap(), photo);
    let times = server.log.times("/throttled.jpg");
    assert_eq!(times.len(), 2);
    assert!(
        times[1] - times[0] >= Duration::from_millis(950),
        "{:?}",
        times[1] - times[0]
    );
    // Unavailable twice, then served.
    assert_eq!(fetch("/unavailable.jpg").await.unwrap(), photo);
    assert_eq!(server.log.times("/unavailable.jpg").len(), 3);
    // A connection reset is retried.
    assert_eq!(fetch("/reset.jpg").await.unwrap(), photo);
    assert_eq!(server.log.times("/reset.jpg").len(), 2);
    // A slow body that keeps coming is waited for.
    assert_eq!(fetch("/slow.jpg").await.unwrap(), photo);

    // The object's own faults are the item's errors, asked for once.
    for (path, code) in [("/missing.jpg", "404"), ("/forbidden.jpg", "403")] {
        match fetch(path).await.unwrap() {
            Fetched::Refused(reason) => assert!(reason.contains(code), "{reason}"),
            other => panic!("{path}: {other:?}"),
        }
        assert_eq!(server.log.times(path).len(), 1);
    }
    assert_eq!(
        fetch("/huge-announced.jpg").await.unwrap(),
        Fetched::TooLarge {
            bytes: 10_000_000_000,
            limit: MIB
        }
    );
    match fetch("/huge-unannounced.jpg").await.unwrap() {
        // Stopped just past the cap, not read whole.
        Fetched::TooLarge { bytes, limit } => {
            assert_eq!(limit, MIB);
            assert!(bytes > MIB && bytes <= MIB + 64 * 1024, "{bytes}");
        }
        other => panic!("{other:?}"),
    }

    // Faults that outlast the retries fail retryably, naming the URL.
    for path in ["/down.jpg", "/stalled.jpg"] {
        let error = fetch(path).await.unwrap_err();
        assert!(
            matches!(error, CatalogError::Http { tries: 4, .. }),
            "{error}"
        );
        assert!(error.is_retryable());
        assert!(error.to_string().contains(path), "{error}");
        assert_eq!(server.log.times(path).len(), 4);
    }
}

#[tokio::test]
async fn no_more_requests_than_the_per_host_limit_are_in_flight() {
    let server = start().await;
    let fetcher = HttpFetcher::new(HttpLimits {
        per_host: 3,
        ..limits()
    })
    .unwrap();
    let fetches = (0..12).map(|i| {
        let (fetcher, url) = (fetcher.clone(), format!("{}/held/{i}.jpg", server.base));
        tokio::spawn(async move { fetcher.fetch(&url, MIB).await })
    });
    for fetched in futures::future::join_all(fetches).await {
        assert!(matches!(fetched.unwrap().unwrap(), Fetched::Bytes(_)));
    }
    assert_eq!(server.log.most_in_flight.load(Ordering::SeqCst), 3);
}
