//! A catalogue whose photos sit behind HTTP URLs, as on a shop's CDN: a
//! server the test starts serves them, one is missing and one is throttled
//! once. `atelier tag` fetches them through the loader: the missing one is
//! its item's `fetch` error, the throttled one is tagged after waiting.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use atelier_catalog::{render_item, CatalogWriter, GenerateOptions, StoreLocation, WriterOptions};
use atelier_tests::output::read_column;
use atelier_tests::{atelier_ok, runtime, train_quick_color_model};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serves `photos` by path; `/missing.jpg` is a 404 and the first request
/// for `/throttled.jpg` a 429 with `Retry-After: 1`.
async fn serve(listener: TcpListener, photos: Arc<HashMap<String, Vec<u8>>>) {
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

#[test]
fn photos_behind_http_urls_are_fetched_and_a_missing_one_is_its_items_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let rt = runtime();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());

    let options = GenerateOptions {
        width: 48,
        height: 64,
        ..Default::default()
    };
    let mut photos = HashMap::new();
    let items: Vec<_> = (0..60u64)
        .map(|i| {
            let mut item = render_item(&options, i).unwrap();
            let name = match i {
                7 => "/missing.jpg".to_string(),
                11 => "/throttled.jpg".to_string(),
                _ => format!("/photos/{i}.jpg"),
            };
            let photo = item.image.take().unwrap();
            if i != 7 {
                photos.insert(name.clone(), photo);
            }
            item.image_uri = Some(format!("{base}{name}"));
            item
        })
        .collect();
    rt.spawn(serve(listener, Arc::new(photos)));
    rt.block_on(async {
        let writer_options = WriterOptions {
            image: false,
            image_uri: true,
            ..Default::default()
        };
        let location = StoreLocation::parse(&path("catalog")).unwrap();
        let mut writer = CatalogWriter::new(location, writer_options).unwrap();
        writer.write(items).await.unwrap();
        writer.finish().await.unwrap();
    });

    // A model to tag with, trained on the synthetic photos as bytes.
    atelier_ok(&[
        "catalog",
        "generate",
        "--items",
        "200",
        "--out",
        &path("train"),
        "--size",
        "48x64",
    ]);
    train_quick_color_model(&path("train"), &path("model"));
    atelier_ok(&[
        "tag",
        "--checkpoint",
        &path("model"),
        "--catalog",
        &path("catalog"),
        "--out",
        &path("tags"),
    ]);
    let out = Path::new(dir.path()).join("tags");
    let ids = read_column(&out, "item_id");
    let errors = read_column(&out, "error");
    let colours = read_column(&out, "color");
    assert_eq!(ids.len(), 60);
    for (row, (error, colour)) in errors.iter().zip(&colours).enumerate() {
        if row == 7 {
            let error = error.as_deref().unwrap_or_default();
            assert!(
                error.contains("404") && error.contains("/missing.jpg"),
                "{error}"
            );
            assert!(colour.is_none());
        } else {
            assert!(error.is_none(), "row {row}: {error:?}");
            assert!(colour.is_some(), "row {row} has no colour");
        }
    }
}
