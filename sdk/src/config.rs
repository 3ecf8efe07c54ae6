//! Configuration through `wasi:config/store`. Natively there is no host: every key is absent.

/// Reads one configuration value; `Ok(None)` when the key is not set.
///
/// ```
/// let value = tollgate_sdk::config::get("tariff.basic").unwrap();
/// # #[cfg(not(target_arch = "wasm32"))]
/// assert_eq!(value, None);
/// ```
pub fn get(key: &str) -> Result<Option<String>, String> {
    #[cfg(target_arch = "wasm32")]
    {
        use crate::bindings::rater::wasi::config::store;
        store::get(key).map_err(|e| match e {
            store::Error::Upstream(m) | store::Error::Io(m) => format!("config key `{key}`: {m}"),
        })
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = key;
        Ok(None)
    }
}

/// Reads every configuration value, sorted by key.
///
/// ```
/// let all = tollgate_sdk::config::get_all().unwrap();
/// # #[cfg(not(target_arch = "wasm32"))]
/// assert!(all.is_empty());
/// ```
pub fn get_all() -> Result<Vec<(String, String)>, String> {
    #[cfg(target_arch = "wasm32")]
    {
        use crate::bindings::rater::wasi::config::store;
        let mut all = store::get_all().map_err(|e| match e {
            store::Error::Upstream(m) | store::Error::Io(m) => format!("config: {m}"),
        })?;
        all.sort();
        Ok(all)
    }
    #[cfg(not(target_arch = "wasm32"))]
    Ok(Vec::new())
}
