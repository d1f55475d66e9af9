//! Addressing catalogues and images by URL.
//!
//! Users name locations the way they name them everywhere else: a plain path,
//! `file://`, `memory://`, `s3://`, `gs://` or `az://`. Cloud credentials and
//! endpoints come from the standard environment variables (`AWS_*`,
//! `GOOGLE_*`, `AZURE_*`) exactly as `object_store` reads them.

use std::collections::HashMap;
use std::fmt;
use std::path::{Component, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::ObjectStore;
use url::Url;

use crate::error::{CatalogError, Result};

/// A resolved location: the store that holds it and the path inside that store.
#[derive(Clone)]
pub struct StoreLocation {
    pub store: Arc<dyn ObjectStore>,
    pub path: Path,
    /// Scheme and authority (`s3://bucket`, `file://`), used to print full URLs.
    base: String,
}

impl fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url())
    }
}

impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url())
    }
}

impl StoreLocation {
    /// Resolves a URL or a local path (relative paths are taken from the current directory).
    pub fn parse(url_or_path: &str) -> Result<Self> {
        let (store, base, path) = resolve(url_or_path)?;
        Ok(Self { store, path, base })
    }

    /// The location of `name` below this one; `/` in `name` separates folders.
    pub fn child(&self, name: &str) -> Self {
        let path = name
            .split('/')
            .filter(|part| !part.is_empty())
            .fold(self.path.clone(), |path, part| path.join(part));
        Self {
            store: Arc::clone(&self.store),
            path,
            base: self.base.clone(),
        }
    }

    /// The same store at another path (for example an object found by listing).
    pub fn with_path(&self, path: Path) -> Self {
        Self {
            store: Arc::clone(&self.store),
            path,
            base: self.base.clone(),
        }
    }

    /// The full URL of this location, for messages and manifests.
    pub fn url(&self) -> String {
        format!("{}/{}", self.base, self.path)
    }

    /// The full URL of another object in the same store.
    pub fn url_of(&self, path: &Path) -> String {
        format!("{}/{}", self.base, path)
    }

    /// The last path segment, or the whole path when there is none.
    pub fn file_name(&self) -> String {
        self.path
            .filename()
            .map(str::to_string)
            .unwrap_or_else(|| self.path.to_string())
    }
}

fn resolve(input: &str) -> Result<(Arc<dyn ObjectStore>, String, Path)> {
    let invalid = |reason: String| CatalogError::InvalidUrl {
        url: input.to_string(),
        reason,
    };
    if input.is_empty() {
        return Err(invalid("empty location".into()));
    }
    let Some((scheme, _)) = input.split_once("://") else {
        return local(input);
    };
    let url = Url::parse(input).map_err(|e| invalid(e.to_string()))?;
    if !matches!(scheme, "file" | "memory") {
        install_crypto_provider();
    }
    let object_path = || {
        let decoded = percent_decode(url.path());
        Path::parse(&decoded).map_err(|e| invalid(e.to_string()))
    };
    match scheme {
        "file" => {
            let path = url
                .to_file_path()
                .map_err(|()| invalid("not an absolute file path".into()))?;
            local(&path.to_string_lossy())
        }
        "memory" => {
            let name = url.host_str().unwrap_or_default().to_string();
            let store: Arc<dyn ObjectStore> = memory_store(&name);
            Ok((store, format!("memory://{name}"), object_path()?))
        }
        "s3" | "s3a" => {
            let store = object_store::aws::AmazonS3Builder::from_env()
                .with_url(input)
                .with_retry(retry_config())
                .build()
                .map_err(|e| invalid(e.to_string()))?;
            Ok((Arc::new(store), authority(&url), object_path()?))
        }
        "gs" => {
            let store = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(input)
                .with_retry(retry_config())
                .build()
                .map_err(|e| invalid(e.to_string()))?;
            Ok((Arc::new(store), authority(&url), object_path()?))
        }
        "az" | "azure" | "abfs" | "abfss" => {
            let store = object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(input)
                .with_retry(retry_config())
                .build()
                .map_err(|e| invalid(e.to_string()))?;
            Ok((Arc::new(store), authority(&url), object_path()?))
        }
        other => Err(invalid(format!(
            "unsupported scheme {other:?} (use a path, file://, memory://, s3://, gs:// or az://)"
        ))),
    }
}

/// Picks rustls's crypto provider (ring) for the process before the first
/// cloud client is built: reqwest is built without one of its own, so that
/// the build needs neither cmake nor nasm for aws-lc.
pub(crate) fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // An error means another part of the process chose first; fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn authority(url: &Url) -> String {
    format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default())
}

fn local(path: &str) -> Result<(Arc<dyn ObjectStore>, String, Path)> {
    let absolute = absolute_path(path).map_err(|source| CatalogError::Io {
        path: path.to_string(),
        source,
    })?;
    let object_path =
        Path::from_absolute_path(&absolute).map_err(|e| CatalogError::InvalidUrl {
            url: path.to_string(),
            reason: e.to_string(),
        })?;
    Ok((local_store(), "file://".to_string(), object_path))
}

/// Makes a path absolute and removes `.` and `..` lexically, so that locations
/// that do not exist yet (outputs) resolve as well as existing ones.
fn absolute_path(path: &str) -> std::io::Result<PathBuf> {
    let joined = std::env::current_dir()?.join(path);
    let mut out = PathBuf::new();
    for component in joined.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    Ok(out)
}

fn percent_decode(path: &str) -> String {
    percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .into_owned()
}

fn local_store() -> Arc<dyn ObjectStore> {
    static STORE: OnceLock<Arc<dyn ObjectStore>> = OnceLock::new();
    Arc::clone(STORE.get_or_init(|| Arc::new(LocalFileSystem::new())))
}

/// `memory://NAME` stores live for the whole process, so that a writer and a
/// later reader in the same process (tests, the in-process cluster) share them.
fn memory_store(name: &str) -> Arc<InMemory> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    let mut stores = STORES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    Arc::clone(stores.entry(name.to_string()).or_default())
}

/// Resolves many URLs that mostly share a few stores (image URIs), building each
/// store once.
#[derive(Default)]
pub struct StoreCache {
    stores: Mutex<HashMap<String, StoreLocation>>,
}

impl fmt::Debug for StoreCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreCache").finish_non_exhaustive()
    }
}

impl StoreCache {
    pub fn resolve(&self, url_or_path: &str) -> Result<StoreLocation> {
        let key = match url_or_path.split_once("://") {
            Some((scheme, rest)) if scheme != "file" => {
                format!("{scheme}://{}", rest.split('/').next().unwrap_or_default())
            }
            _ => return StoreLocation::parse(url_or_path),
        };
        let mut stores = self
            .stores
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let root = match stores.get(&key) {
            Some(root) => root.clone(),
            None => {
                let root = StoreLocation::parse(&key)?;
                stores.insert(key.clone(), root.clone());
                root
            }
        };
        drop(stores);
        let path = StoreLocation::parse_object_path(url_or_path)?;
        Ok(root.with_path(path))
    }
}

impl StoreLocation {
    fn parse_object_path(url: &str) -> Result<Path> {
        let parsed = Url::parse(url).map_err(|e| CatalogError::InvalidUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        Path::parse(percent_decode(parsed.path())).map_err(|e| CatalogError::InvalidUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })
    }
}

/// Transient store faults (a restarting endpoint, a dropped connection,
/// throttling) are retried with exponential backoff for about a minute before
/// an error surfaces; object_store's default gives up after ~2.5 s when the
/// endpoint refuses connections. Past that, the coordinator retries the task.
fn retry_config() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: std::time::Duration::from_millis(200),
            max_backoff: std::time::Duration::from_secs(8),
            base: 2.0,
        },
        max_retries: 12,
        retry_timeout: std::time::Duration::from_secs(120),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_become_absolute_file_urls() {
        let location = StoreLocation::parse("data/../data/catalog").unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            location.url(),
            format!("file://{}/data/catalog", cwd.display())
        );
    }

    #[test]
    fn memory_stores_are_shared_by_name() {
        let a = StoreLocation::parse("memory://shared-test/x").unwrap();
        let b = StoreLocation::parse("memory://shared-test/y").unwrap();
        assert!(Arc::ptr_eq(&a.store, &b.store));
        assert_eq!(b.url(), "memory://shared-test/y");
    }

    #[test]
    fn children_may_name_nested_folders() {
        let location = StoreLocation::parse("memory://nested/ckpt").unwrap();
        assert_eq!(
            location.child("plots/curves.png").url(),
            "memory://nested/ckpt/plots/curves.png"
        );
    }

    #[test]
    fn unknown_schemes_are_rejected_by_name() {
        let err = StoreLocation::parse("ftp://host/x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ftp"), "{err}");
    }

    #[test]
    fn s3_urls_keep_bucket_and_key() {
        let location = StoreLocation::parse("s3://bucket/some/prefix").unwrap();
        assert_eq!(location.url(), "s3://bucket/some/prefix");
    }
}
