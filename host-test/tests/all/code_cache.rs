//! The compiled-code cache on real components: hits, misses, damaged entries.

use sha2::{Digest, Sha256};
use std::path::PathBuf;
use tollgate_host::code_cache::{CodeCache, CodeCacheStats};
use tollgate_host::{Actor, ActorKind, HostEngine, Limits};
use tollgate_host_test::fixtures::{PREPAID_ACCOUNT, actor_path};

fn account_bytes() -> Vec<u8> {
    let path = actor_path(PREPAID_ACCOUNT);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (build it: cargo xtask build-actors)", path.display()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The only entry in the cache, as (code, checksum) paths.
fn only_entry(cache: &CodeCache) -> (PathBuf, PathBuf) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(cache.dir()).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[0].extension().unwrap(), "cwasm");
    assert_eq!(entries[1].extension().unwrap(), "sha256");
    (entries[0].clone(), entries[1].clone())
}

#[test]
fn miss_then_hit_then_corrupt_entries_are_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = account_bytes();

    // Miss: compiled and stored.
    let first = HostEngine::new(Limits::default()).unwrap().with_code_cache(dir.path());
    let actor = Actor::from_bytes(&first, "account", &bytes).unwrap();
    assert_eq!(actor.kind(), ActorKind::Aggregate);
    let cache = first.code_cache().unwrap();
    assert_eq!(cache.dir(), dir.path().join("compiled"));
    assert_eq!(cache.stats(), CodeCacheStats { hits: 0, misses: 1, corrupt: 0 });
    let (code, checksum) = only_entry(cache);
    assert_eq!(code, cache.entry_path(first.engine(), &bytes));
    let key = CodeCache::key(first.engine(), &bytes);
    assert!(key.starts_with(&actor.digest().to_string()), "{key}");

    // Hit, from another engine with the same configuration (as a new process would).
    let second = HostEngine::new(Limits::default()).unwrap().with_code_cache(dir.path());
    let path = dir.path().join("account.wasm");
    std::fs::write(&path, &bytes).unwrap();
    let actor = Actor::load(&second, &path).unwrap();
    assert_eq!(actor.kind(), ActorKind::Aggregate);
    assert_eq!(second.code_cache().unwrap().stats(), CodeCacheStats { hits: 1, misses: 0, corrupt: 0 });
    let stored = std::fs::read(&code).unwrap();

    // A flipped bit in the code: the checksum catches it; recompiled and stored again.
    let mut damaged = stored.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x01;
    std::fs::write(&code, &damaged).unwrap();
    Actor::load(&second, &path).unwrap();
    assert_eq!(second.code_cache().unwrap().stats(), CodeCacheStats { hits: 1, misses: 1, corrupt: 1 });
    assert_eq!(only_entry(second.code_cache().unwrap()), (code.clone(), checksum.clone()));
    assert_eq!(std::fs::read(&code).unwrap(), stored);

    // Garbage with a matching checksum (e.g. a truncated write of old code): fails to
    // deserialize, is deleted and recompiled.
    std::fs::write(&code, b"not compiled code").unwrap();
    std::fs::write(&checksum, hex(&Sha256::digest(b"not compiled code"))).unwrap();
    let actor = Actor::load(&second, &path).unwrap();
    assert_eq!(second.code_cache().unwrap().stats(), CodeCacheStats { hits: 1, misses: 2, corrupt: 2 });
    assert_eq!(std::fs::read(&code).unwrap(), stored);
    assert_eq!(actor.kind(), ActorKind::Aggregate);

    // A missing checksum is a plain miss.
    std::fs::remove_file(&checksum).unwrap();
    Actor::load(&second, &path).unwrap();
    assert_eq!(second.code_cache().unwrap().stats(), CodeCacheStats { hits: 1, misses: 3, corrupt: 2 });
    Actor::load(&second, &path).unwrap();
    assert_eq!(second.code_cache().unwrap().stats().hits, 2);

    // Without a cache nothing is written.
    let plain = HostEngine::new(Limits::default()).unwrap();
    assert!(plain.code_cache().is_none());
}

#[test]
fn an_unwritable_cache_only_costs_compile_time() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"").unwrap();
    // `compiled/` cannot be created under a regular file.
    let engine = HostEngine::shared().unwrap().with_code_cache(&blocker);
    Actor::from_bytes(&engine, "account", &account_bytes()).unwrap();
    assert_eq!(engine.code_cache().unwrap().stats().misses, 1);
}

#[test]
fn keys_are_stable_and_name_the_component() {
    let bytes = account_bytes();
    let engine = HostEngine::shared().unwrap();
    let key = CodeCache::key(engine.engine(), &bytes);
    assert_eq!(key, CodeCache::key(engine.engine(), &bytes));
    assert_ne!(key, CodeCache::key(engine.engine(), b"other bytes"));
    let (component, compatibility) = key.split_once('-').unwrap();
    assert_eq!(component, hex(&Sha256::digest(&bytes)));
    assert_eq!(compatibility.len(), 64);
}
