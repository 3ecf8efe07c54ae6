//! Key-value storage through `wasi:keyvalue/store`, for projectors' read models.

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
fn no_host(bucket: &str) -> Rejection {
    Rejection::malformed("no-storage", format!("bucket `{bucket}`: key-value storage needs a component host"))
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
        Err(no_host(name))
    }

    /// Reads raw bytes.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Rejection> {
        #[cfg(target_arch = "wasm32")]
        return self.inner.get(key).map_err(|e| storage_error(&self.name, key, e));
        #[cfg(not(target_arch = "wasm32"))]
        {
            let _ = key;
            Err(no_host(&self.name))
        }
    }

    /// Writes raw bytes.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), Rejection> {
        #[cfg(target_arch = "wasm32")]
        return self.inner.set(key, value).map_err(|e| storage_error(&self.name, key, e));
        #[cfg(not(target_arch = "wasm32"))]
        {
            let _ = (key, value);
            Err(no_host(&self.name))
        }
    }

    /// Deletes a key; absent keys are fine.
    pub fn delete(&self, key: &str) -> Result<(), Rejection> {
        #[cfg(target_arch = "wasm32")]
        return self.inner.delete(key).map_err(|e| storage_error(&self.name, key, e));
        #[cfg(not(target_arch = "wasm32"))]
        {
            let _ = key;
            Err(no_host(&self.name))
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
