//! A photo host on loopback, standing in for a shop's CDN.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serves `photos` by path; `/missing.jpg` is a 404 and the first request
/// for `/throttled.jpg` a 429 with `Retry-After: 1`.
pub async fn serve(listener: TcpListener, photos: Arc<HashMap<String, Vec<u8>>>) {
    let throttled = Arc::new(AtomicUsize::new(0));
    while let Ok((mut socket, _)) = listener.accept().await {
        let (photos, throttled) = (Arc::clone(&photos), Arc::clone(&throttled));
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut buffer = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            let text = String::from_utf8_lossy(&request);
            let path = text.split(' ').nth(1).unwrap_or_default().to_string();
            let empty = |status: &str, extra: &str| {
                format!(
                    "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n{extra}\r\n"
                )
                .into_bytes()
            };
            let response = match photos.get(&path) {
                Some(_)
                    if path == "/throttled.jpg"
                        && throttled.fetch_add(1, Ordering::SeqCst) == 0 =>
                {
                    empty("429 Too Many Requests", "retry-after: 1\r\n")
                }
                Some(photo) => {
                    let mut response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        photo.len()
                    )
                    .into_bytes();
                    response.extend_from_slice(photo);
                    response
                }
                None => empty("404 Not Found", ""),
            };
            let _ = socket.write_all(&response).await;
            let _ = socket.shutdown().await;
        });
    }
}
