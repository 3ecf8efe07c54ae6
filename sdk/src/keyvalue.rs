//! Key-value storage through `wasi:keyvalue/store`, for projectors' read models.
//!
//! Natively (tests of the logic, [`crate::testing`]) a bucket is an in-memory map of the
//! current thread, empty when the thread starts; [`clear_native`] empties it.

use crate::types::Rejection;
use serde::{Serialize, de::DeserializeOwned};

#[cfg(target_arch = "wasm32")]
use crate::bindings::projector::wasi::keyvalue::store;

/// An open bucket of the host's key-value storage.
pub struct Bucket {
    name: String,
    #[cfg(target_arch = "wasm32")]
    inner: store::Bucket,
}

#[cfg(target_arch = "wasm32")]
fn storage_error(bucket: &str, key: &str, e: store::Error) -> Rejection {
    let detail = match e {
        store::Error::NoSuchStore => "no such bucket".to_string(),
        store::Error::AccessDenied => "access denied".to_string(),
        store::Error::Other(m) => m,
    };
    Rejection::malformed("storage-error", format!("bucket `{bucket}` key `{key}`: {detail}"))
}

#[cfg(not(target_arch = "wasm32"))]
thread_local! {
    /// bucket -> key -> value: the native stand-in for the host's storage.
    static NATIVE: std::cell::RefCell<std::collections::BTreeMap<String, std::collections::BTreeMap<String, Vec<u8>>>> =
        const { std::cell::RefCell::new(std::collections::BTreeMap::new()) };
}

/// Empties this thread's native buckets (natively only; a component's storage is the host's).
#[cfg(not(target_arch = "wasm32"))]
pub fn clear_native() {
    NATIVE.with(|kv| kv.borrow_mut().clear());
}

/// Every entry of this thread's native bucket `name`, by key (natively only).
#[cfg(not(target_arch = "wasm32"))]
pub fn native_entries(name: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
    NATIVE.with(|kv| kv.borrow().get(name).cloned().unwrap_or_default())
}

impl Bucket {
    /// Opens the bucket `name`.
    pub fn open(name: &str) -> Result<Self, Rejection> {
        #[cfg(target_arch = "wasm32")]
        {
            let inner = store::open(name).map_err(|e| storage_error(name, "", e))?;
            Ok(Bucket { name: name.into(), inner })
        }
        #[cfg(not(target_arch = "wasm32"))]
        Ok(Bucket { name: name.into() })
    }

    /// Reads raw bytes.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Rejection> {
        #[cfg(target_arch = "wasm32")]
        return self.inner.get(key).map_err(|e| storage_error(&self.name, key, e));
        #[cfg(not(target_arch = "wasm32"))]
        Ok(NATIVE.with(|kv| kv.borrow().get(&self.name).and_then(|b| b.get(key)).cloned()))
    }

    /// Writes raw bytes.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), Rejection> {
        #[cfg(target_arch = "wasm32")]
        return self.inner.set(key, value).map_err(|e| storage_error(&self.name, key, e));
        #[cfg(not(target_arch = "wasm32"))]
        {
            NATIVE.with(|kv| kv.borrow_mut().entry(self.name.clone()).or_default().insert(key.into(), value.to_vec()));
            Ok(())
        }
    }

    /// Deletes a key; absent keys are fine.
    pub fn delete(&self, key: &str) -> Result<(), Rejection> {
        #[cfg(target_arch = "wasm32")]
        return self.inner.delete(key).map_err(|e| storage_error(&self.name, key, e));
        #[cfg(not(target_arch = "wasm32"))]
        {
            NATIVE.with(|kv| kv.borrow_mut().get_mut(&self.name).map(|b| b.remove(key)));
            Ok(())
        }
    }

    /// Reads and decodes a JSON value.
    pub fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Rejection> {
        match self.get(key)? {
            None => Ok(None),
            Some(bytes) => crate::codec::from_json(&bytes).map(Some).map_err(|e| {
                Rejection::malformed("malformed-value", format!("bucket `{}` key `{key}`: {e}", self.name))
            }),
        }
    }

    /// Encodes and writes a JSON value.
    pub fn set_json<T: Serialize>(&self, key: &str, value: &T) -> Result<(), Rejection> {
        let bytes = crate::codec::to_json(value).map_err(|e| Rejection::malformed("encode-value", e.to_string()))?;
        self.set(key, &bytes)
    }
}
