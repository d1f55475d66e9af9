//! `http://` and `https://` image URIs: the photos of a shop's catalogue on
//! its CDN. A CDN is shared with the shop's customers, so fetching is
//! polite: a limit of requests in flight per host, a timeout on connecting
//! and on every wait for body bytes, and retries with backoff on 429, 408
//! and 5xx that wait at least as long as the server's `Retry-After` asks.
//!
//! `object_store`'s HTTP store was the first choice, but its retry loop
//! ignores `Retry-After` and it has no per-host limit, so this module
//! drives `reqwest` (already in the tree through `object_store`) directly.
//!
//! What an answer says about the object itself (404, 403, 410, any other
//! 4xx, an object over the size cap) is a [`Fetched`] outcome: the item's
//! error. A fault of the server or the network that outlasts the retries is
//! a retryable [`CatalogError::Http`]: the batch fails and the coordinator
//! runs the shard again, instead of recording a permanent per-item error in
//! a job that succeeds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::{CONTENT_LENGTH, RETRY_AFTER};
use reqwest::StatusCode;
use tokio::sync::Semaphore;

use crate::error::{CatalogError, Result};

/// How politely and how patiently image URLs are fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HttpLimits {
    /// Requests in flight to one host, over the whole process.
    pub per_host: usize,
    /// Longest wait for a connection.
    pub connect_timeout: Duration,
    /// Longest wait for the response head, and for each chunk of the body
    /// after it (a server that goes silent mid-body).
    pub idle_timeout: Duration,
    /// Tries after the first, on throttling, server errors and network faults.
    pub retries: u32,
    /// The first backoff; it doubles with each retry.
    pub first_backoff: Duration,
    /// The longest wait between two tries, whatever `Retry-After` says.
    pub max_backoff: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            per_host: 16,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            retries: 6,
            first_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// What one fetch came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    Bytes(Bytes),
    /// The server refused the object itself (404, 403, 410, another 4xx),
    /// or its URL cannot be fetched: the reason.
    Refused(String),
    /// Bigger than the cap; never read whole into memory.
    TooLarge {
        bytes: u64,
        limit: u64,
    },
}

/// Fetches image URLs under [`HttpLimits`]. Cheap to clone; the client (its
/// connection pool) and the per-host limits are shared by the process.
#[derive(Debug, Clone)]
pub struct HttpFetcher {
    client: reqwest::Client,
    limits: HttpLimits,
}

impl HttpFetcher {
    /// The process's fetcher for `limits`: one connection pool per process,
    /// however many loaders fetch.
    pub fn shared(limits: HttpLimits) -> Result<Self> {
        static FETCHERS: OnceLock<Mutex<HashMap<HttpLimits, HttpFetcher>>> = OnceLock::new();
        let mut fetchers = FETCHERS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(fetcher) = fetchers.get(&limits) {
            return Ok(fetcher.clone());
        }
        let fetcher = Self::new(limits)?;
        fetchers.insert(limits, fetcher.clone());
        Ok(fetcher)
    }

    pub fn new(limits: HttpLimits) -> Result<Self> {
        crate::store::install_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(limits.connect_timeout)
            .read_timeout(limits.idle_timeout)
            .build()
            .map_err(|e| CatalogError::Internal(format!("building the HTTP client: {e}")))?;
        Ok(Self { client, limits })
    }

    /// The object at `url`, at most `max_bytes` of it read into memory.
    pub async fn fetch(&self, url: &str, max_bytes: u64) -> Result<Fetched> {
        let parsed = match reqwest::Url::parse(url) {
            Ok(parsed) if parsed.host_str().is_some() => parsed,
            Ok(_) => return Ok(Fetched::Refused("the URL names no host".into())),
            Err(e) => return Ok(Fetched::Refused(format!("not a URL: {e}"))),
        };
        let permits = host_permits(&parsed, self.limits.per_host);
        let mut backoff = self.limits.first_backoff;
        let mut tries = 0;
        loop {
            tries += 1;
            let attempt = {
                let _permit = permits
                    .acquire()
                    .await
                    .map_err(|_| CatalogError::Internal("the per-host limit was closed".into()))?;
                self.try_once(parsed.clone(), max_bytes).await
            };
            let (reason, asked_wait) = match attempt {
                Attempt::Done(fetched) => return Ok(fetched),
                Attempt::Transient {
                    reason,
                    retry_after,
                } => (reason, retry_after),
            };
            if tries > self.limits.retries {
                return Err(CatalogError::Http {
                    url: url.to_string(),
                    reason,
                    tries,
                });
            }
            let wait = asked_wait.map_or(backoff, |asked| asked.max(backoff));
            let wait = wait.min(self.limits.max_backoff);
            tracing::debug!(%url, %reason, ?wait, tries, "image fetch failed; trying again");
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(self.limits.max_backoff);
        }
    }

    async fn try_once(&self, url: reqwest::Url, max_bytes: u64) -> Attempt {
        let sent =
            tokio::time::timeout(self.limits.idle_timeout, self.client.get(url).send()).await;
        let response = match sent {
            Err(_) => return Attempt::transient("no answer in time".into(), None),
            Ok(Err(e)) => return Attempt::transient(describe(&e), None),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if is_transient(status) {
            let retry_after = retry_after(response.headers().get(RETRY_AFTER));
            return Attempt::transient(format!("HTTP {status}"), retry_after);
        }
        if !status.is_success() {
            return Attempt::Done(Fetched::Refused(format!("HTTP {status}")));
        }
        let announced = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if let Some(bytes) = announced.filter(|&bytes| bytes > max_bytes) {
            return Attempt::Done(Fetched::TooLarge {
                bytes,
                limit: max_bytes,
            });
        }
        // Counted as it arrives: a server may send more than it announced.
        let mut body = Vec::with_capacity(announced.unwrap_or(0).min(max_bytes) as usize);
        let mut chunks = response.bytes_stream();
        loop {
            let chunk = match tokio::time::timeout(self.limits.idle_timeout, chunks.next()).await {
                Err(_) => return Attempt::transient("the body stalled".into(), None),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Attempt::transient(describe(&e), None),
                Ok(Some(Ok(chunk))) => chunk,
            };
            let bytes = (body.len() + chunk.len()) as u64;
            if bytes > max_bytes {
                return Attempt::Done(Fetched::TooLarge {
                    bytes,
                    limit: max_bytes,
                });
            }
            body.extend_from_slice(&chunk);
        }
        if announced.is_some_and(|announced| announced != body.len() as u64) {
            return Attempt::transient(format!("the body ended after {} bytes", body.len()), None);
        }
        Attempt::Done(Fetched::Bytes(body.into()))
    }
}

enum Attempt {
    Done(Fetched),
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
}

impl Attempt {
    fn transient(reason: String, retry_after: Option<Duration>) -> Self {
        Self::Transient {
            reason,
            retry_after,
        }
    }
}

/// Throttling, a timeout the server reports, or the server's own fault.
fn is_transient(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
}

/// `Retry-After` as delay seconds or an HTTP date.
fn retry_after(value: Option<&reqwest::header::HeaderValue>) -> Option<Duration> {
    let value = value?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// A reqwest error with its causes (the cause says "connection reset").
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A host (`scheme://name:port`) and the limit asked for it.
type HostLimit = (String, usize);

/// The process-wide limit of requests in flight to `url`'s host.
fn host_permits(url: &reqwest::Url, per_host: usize) -> Arc<Semaphore> {
    static HOSTS: OnceLock<Mutex<HashMap<HostLimit, Arc<Semaphore>>>> = OnceLock::new();
    let host = format!(
        "{}://{}:{}",
        url.scheme(),
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or_default()
    );
    let mut hosts = HOSTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    Arc::clone(
        hosts
            .entry((host, per_host))
            .or_insert_with(|| Arc::new(Semaphore::new(per_host.max(1)))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let header = |s: &str| reqwest::header::HeaderValue::from_str(s).unwrap();
        assert_eq!(
            retry_after(Some(&header("7"))),
            Some(Duration::from_secs(7))
        );
        let later = SystemTime::now() + Duration::from_secs(120);
        let date = httpdate::fmt_http_date(later);
        let wait = retry_after(Some(&header(&date))).unwrap();
        assert!(wait > Duration::from_secs(100) && wait <= Duration::from_secs(120));
        assert_eq!(retry_after(Some(&header("soon"))), None);
        assert_eq!(retry_after(None), None);
    }

    #[test]
    fn throttling_and_server_faults_are_retried_and_the_rest_is_the_objects() {
        assert!(is_transient(StatusCode::TOO_MANY_REQUESTS));
        assert!(is_transient(StatusCode::SERVICE_UNAVAILABLE));
        assert!(is_transient(StatusCode::REQUEST_TIMEOUT));
        assert!(!is_transient(StatusCode::NOT_FOUND));
        assert!(!is_transient(StatusCode::FORBIDDEN));
    }
}
