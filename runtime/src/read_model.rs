//! What projectors committed, read back from the store: their buckets of key-value entries
//! (`tollgate kv`, and a node's read API).
//!
//! A projector's entries are written together with its checkpoint, so what is read here is
//! what the projector had made of the log up to that checkpoint, never half of one delivery.

use crate::error::RuntimeError;
use crate::journal::Journal;
use crate::namespace::{META, is_reserved};
use tollgate_store::StoreError;

/// The buckets `projector` has written, in the order it first wrote them; empty before its
/// first commit.
pub fn buckets(journal: &Journal, projector: &str) -> Result<Vec<String>, RuntimeError> {
    let Some(list) = journal.run("read projection", journal.store().kv_get(projector, META, "buckets"))? else {
        return Ok(Vec::new());
    };
    serde_json::from_slice(&list).map_err(|e| {
        journal.error(
            "read projection",
            StoreError::Corrupt(format!("the bucket list of projector `{projector}` does not decode: {e}")),
        )
    })
}

/// Which of `projectors` have written `bucket`: normally one, none before the first delivery
/// (or for a bucket no projector writes).
pub fn writers<'a>(
    journal: &Journal,
    projectors: impl IntoIterator<Item = &'a str>,
    bucket: &str,
) -> Result<Vec<&'a str>, RuntimeError> {
    let mut found = Vec::new();
    for projector in projectors {
        if buckets(journal, projector)?.iter().any(|b| b == bucket) {
            found.push(projector);
        }
    }
    Ok(found)
}

/// The value of `key` in `projector`'s `bucket`, if any.
pub fn get(journal: &Journal, projector: &str, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, RuntimeError> {
    refuse_reserved(bucket)?;
    journal.run("read projection", journal.store().kv_get(projector, bucket, key))
}

/// Every entry of `projector`'s `bucket`, by key.
pub fn list(journal: &Journal, projector: &str, bucket: &str) -> Result<Vec<(String, Vec<u8>)>, RuntimeError> {
    refuse_reserved(bucket)?;
    journal.run("read projection", journal.store().kv_list(projector, bucket))
}

/// The runtime's own buckets (instance states, bucket lists) are not read models.
fn refuse_reserved(bucket: &str) -> Result<(), RuntimeError> {
    if is_reserved(bucket) {
        return Err(RuntimeError::Reserved { what: "a read may not name bucket".into(), name: bucket.into() });
    }
    Ok(())
}
