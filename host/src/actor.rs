//! Loading a compiled actor: read, validate, compile, check its role and its imports.

use crate::engine::HostEngine;
use crate::error::HostError;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use wasmtime::component::{Component, InstancePre};

use crate::kind::ActorKind;
use crate::state::StoreState;

struct Inner {
    name: String,
    kind: ActorKind,
    world: &'static str,
    digest: String,
    size: usize,
    imports: Vec<String>,
    exports: Vec<String>,
    component: Component,
    pre: InstancePre<StoreState>,
    engine: HostEngine,
}

/// A compiled, linked actor, ready to instantiate. Cheap to clone.
#[derive(Clone)]
pub struct Actor(Arc<Inner>);

impl Actor {
    /// Loads an actor from a `.wasm` file, whatever its kind.
    pub fn load(engine: &HostEngine, path: impl AsRef<Path>) -> Result<Actor, HostError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                HostError::NotFound { path: path.into() }
            } else {
                HostError::Read { path: path.into(), source }
            }
        })?;
        Actor::from_bytes(engine, &path.display().to_string(), &bytes)
    }

    /// Loads an actor and checks that it is of `kind`.
    pub fn load_kind(engine: &HostEngine, path: impl AsRef<Path>, kind: ActorKind) -> Result<Actor, HostError> {
        let actor = Actor::load(engine, path)?;
        actor.expect_kind(kind)?;
        Ok(actor)
    }

    /// Loads an actor from bytes; `name` names it in errors.
    pub fn from_bytes(engine: &HostEngine, name: &str, bytes: &[u8]) -> Result<Actor, HostError> {
        let component = compile(engine, name, bytes)?;
        let ty = component.component_type();
        let exports: Vec<String> = ty.exports(engine.engine()).map(|(n, _)| n.to_string()).collect();
        let imports: Vec<String> = ty.imports(engine.engine()).map(|(n, _)| n.to_string()).collect();
        let retired = ActorKind::ALL.into_iter().flat_map(|k| k.spec().retired.iter().map(move |r| (k, r)));
        for (kind, (export, why)) in retired {
            if exports.iter().any(|e| e == export) {
                return Err(HostError::RetiredContract {
                    name: name.into(),
                    export: (*export).into(),
                    why: (*why).into(),
                    current: kind.export().into(),
                });
            }
        }
        let contracts = ActorKind::ALL.into_iter().flat_map(|k| {
            let spec = k.spec();
            std::iter::once((k, spec.world, spec.export)).chain(spec.older.iter().map(move |(w, e)| (k, *w, *e)))
        });
        let (kind, world, _) = contracts
            .clone()
            .find(|(_, _, export)| exports.iter().any(|e| e == export))
            .ok_or_else(|| HostError::WrongKind {
                name: name.into(),
                expected: contracts.map(|(_, _, e)| e).collect::<Vec<_>>().join("` or `"),
                found: list(&exports),
            })?;
        let pre = engine.linker().instantiate_pre(&component).map_err(|e| missing_import(name, e))?;
        Ok(Actor(Arc::new(Inner {
            name: name.into(),
            kind,
            world,
            digest: hex(&Sha256::digest(bytes)),
            size: bytes.len(),
            imports,
            exports,
            component,
            pre,
            engine: engine.clone(),
        })))
    }

    /// Fails with [`HostError::WrongKind`] unless the actor is of `kind`.
    pub fn expect_kind(&self, kind: ActorKind) -> Result<(), HostError> {
        if self.0.kind == kind {
            Ok(())
        } else {
            Err(HostError::WrongKind {
                name: self.0.name.clone(),
                expected: kind.export().into(),
                found: list(&self.0.exports),
            })
        }
    }

    /// The name (file path) errors use.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Its kind.
    pub fn kind(&self) -> ActorKind {
        self.0.kind
    }

    /// The world it targets, with its version (`tollgate:eventsourcing/aggregate@0.1.0` for an
    /// aggregate built against the older contract).
    pub fn world(&self) -> &'static str {
        self.0.world
    }

    /// Whether it targets the current contract of its kind (not one of its `older` ones).
    pub fn is_current(&self) -> bool {
        self.0.world == self.0.kind.world()
    }

    /// The sha256 of its bytes, hex; snapshots and caches are keyed by it.
    pub fn digest(&self) -> &str {
        &self.0.digest
    }

    /// Its size in bytes.
    pub fn size(&self) -> usize {
        self.0.size
    }

    /// The interfaces it imports.
    pub fn imports(&self) -> &[String] {
        &self.0.imports
    }

    /// The names it exports.
    pub fn exports(&self) -> &[String] {
        &self.0.exports
    }

    /// The compiled component.
    pub fn component(&self) -> &Component {
        &self.0.component
    }

    /// The linked, ready-to-instantiate component.
    pub fn instance_pre(&self) -> &InstancePre<StoreState> {
        &self.0.pre
    }

    /// The engine it was compiled for.
    pub fn engine(&self) -> &HostEngine {
        &self.0.engine
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() { "nothing".into() } else { names.join(", ") }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks the bytes are a component before compiling, so each mistake gets its own error.
pub(crate) fn compile(engine: &HostEngine, name: &str, bytes: &[u8]) -> Result<Component, HostError> {
    if !bytes.starts_with(b"\0asm") {
        return Err(HostError::NotWasm { name: name.into() });
    }
    if wasmparser::Parser::is_core_wasm(bytes) {
        return Err(HostError::CoreModule { name: name.into() });
    }
    let limit = engine.limits().memory_bytes as u64;
    if let Some(floor) = memory_floor(bytes)
        && floor > limit
    {
        return Err(HostError::MemoryFloor {
            name: name.into(),
            needed_mib: floor.div_ceil(1 << 20),
            limit_mib: limit >> 20,
        });
    }
    let compile = || {
        Component::new(engine.engine(), bytes)
            .map_err(|e| HostError::Invalid { name: name.into(), message: format!("{e:#}") })
    };
    match engine.code_cache() {
        Some(cache) => cache.load_or_compile(engine.engine(), bytes, compile),
        None => compile(),
    }
}

/// The largest linear memory any core module of `bytes` defines, in bytes, as it starts (before
/// any call); `None` when the bytes do not parse, which the compiler then reports.
fn memory_floor(bytes: &[u8]) -> Option<u64> {
    let mut floor = 0u64;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        if let wasmparser::Payload::MemorySection(memories) = payload.ok()? {
            for memory in memories {
                let memory = memory.ok()?;
                floor = floor.max(memory.initial.saturating_mul(1u64 << memory.page_size_log2()));
            }
        }
    }
    Some(floor)
}

fn missing_import(name: &str, error: wasmtime::Error) -> HostError {
    // wasmtime names the unsatisfied import between backticks, e.g.
    // "component imports instance `wasi:http/types@0.2.0`, but a matching implementation was not found".
    let message = format!("{error:#}");
    match message.split('`').nth(1) {
        Some(interface) if message.contains("import") => {
            HostError::MissingImport { name: name.into(), interface: interface.into() }
        }
        _ => HostError::Host { context: format!("{name}: link imports"), message },
    }
}

/// One import of a component that this host does not provide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingImport {
    /// The import's name, e.g. `wasi:http/types@0.2.0`.
    pub name: String,
    /// Why it does not match, as the linker says (e.g. a missing function of a known interface).
    pub reason: String,
}

/// Every import of a component that this host does not provide, not just the first.
///
/// Checks that the bytes are a component and compiles them (errors as in [`Actor::from_bytes`]),
/// then links against a fresh copy of the harness's linker: each time linking fails on an
/// import, that import is recorded and stubbed with traps so linking can go on to the next.
/// An empty list means the component links.
pub fn missing_imports(engine: &HostEngine, name: &str, bytes: &[u8]) -> Result<Vec<MissingImport>, HostError> {
    use wasmtime::component::ResourceType;
    use wasmtime::component::types::ComponentItem;

    let component = compile(engine, name, bytes)?;
    let mut linker = crate::engine::build_linker(engine.engine()).map_err(HostError::host("link host imports"))?;
    let imports: Vec<(String, ComponentItem)> =
        component.component_type().imports(engine.engine()).map(|(n, e)| (n.to_string(), e.ty)).collect();
    let mut missing: Vec<MissingImport> = Vec::new();
    // Whether `ty` is a resource of an import that comes before `import`, which is what a `use`
    // of another interface's resource looks like in a component's type.
    let defined_earlier = |import: &str, ty: &ResourceType| {
        imports.iter().take_while(|(n, _)| n != import).any(|(_, item)| match item {
            ComponentItem::Resource(other) => other == ty,
            ComponentItem::ComponentInstance(instance) => instance
                .exports(engine.engine())
                .any(|(_, e)| matches!(e.ty, ComponentItem::Resource(other) if other == *ty)),
            _ => false,
        })
    };
    let trap = |_: wasmtime::StoreContextMut<'_, StoreState>,
                _: wasmtime::component::types::ComponentFunc,
                _: &[wasmtime::component::Val],
                _: &mut [wasmtime::component::Val]|
     -> wasmtime::Result<()> { wasmtime::bail!("stub of a missing import") };
    // At most one round per import, plus the final successful one.
    for _ in 0..=imports.len() {
        let error = match linker.instantiate_pre(&component) {
            Ok(_) => return Ok(missing),
            Err(error) => error,
        };
        let message = format!("{error:#}");
        let Some(import) = message.split('`').nth(1).filter(|_| message.contains("import")).map(str::to_string) else {
            return Err(HostError::Host { context: format!("{name}: link imports"), message });
        };
        if missing.iter().any(|m| m.name == import) {
            return Err(HostError::Host { context: format!("{name}: link imports"), message });
        }
        let reason = error.chain().skip(1).map(|c| c.to_string()).collect::<Vec<_>>().join(": ");
        missing.push(MissingImport { name: import.clone(), reason });
        let stub = |linker: &mut wasmtime::component::Linker<StoreState>| -> wasmtime::Result<()> {
            match imports.iter().find(|(n, _)| *n == import).map(|(_, item)| item) {
                Some(ComponentItem::ComponentInstance(instance)) => {
                    let mut inst = linker.instance(&import)?;
                    for (i, (export, e)) in instance.exports(engine.engine()).enumerate() {
                        match e.ty {
                            ComponentItem::ComponentFunc(_) => inst.func_new(export, trap)?,
                            // A resource `use`d from an earlier import (e.g. `wasi:http/types`'
                            // `input-stream`, which is `wasi:io/streams`') is that import's
                            // type: the linker already has it, and a fresh one would not match.
                            ComponentItem::Resource(ty) if !defined_earlier(&import, &ty) => {
                                inst.resource(export, ResourceType::host_dynamic(i as u32), |_, _| Ok(()))?
                            }
                            _ => {}
                        }
                    }
                    Ok(())
                }
                Some(ComponentItem::ComponentFunc(_)) => linker.root().func_new(&import, trap),
                Some(ComponentItem::Resource(_)) => {
                    linker.root().resource(&import, ResourceType::host_dynamic(u32::MAX), |_, _| Ok(()))
                }
                _ => wasmtime::bail!("cannot stub import `{import}`"),
            }
        };
        stub(&mut linker)
            .map_err(|e| HostError::Host { context: format!("{name}: link imports"), message: format!("{e:#}") })?;
    }
    Ok(missing)
}
