//! Output prefixes: what a command that writes a whole prefix (a catalogue,
//! a tag job's parts) finds there before it starts.

use futures::TryStreamExt;

use crate::error::{CatalogError, Result};
use crate::store::StoreLocation;

/// Refuses to mix new output into old, or clears the old when asked.
pub async fn prepare_output(out: &StoreLocation, overwrite: bool) -> Result<()> {
    let existing: Vec<_> = match out.store.list(Some(&out.path)).try_collect().await {
        Ok(objects) => objects,
        Err(object_store::Error::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(CatalogError::store(out.url(), e)),
    };
    if existing.is_empty() {
        return Ok(());
    }
    if !overwrite {
        return Err(CatalogError::AlreadyExists { url: out.url() });
    }
    // One stream, so stores with a bulk delete (S3 takes a thousand keys a
    // request) clear a big prefix in a few round trips rather than one a part.
    let paths = futures::stream::iter(existing.into_iter().map(|object| Ok(object.location)));
    let mut deleted = out.store.delete_stream(Box::pin(paths));
    while let Some(result) = futures::StreamExt::next(&mut deleted).await {
        match result {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(CatalogError::store(out.url(), e)),
        }
    }
    Ok(())
}
