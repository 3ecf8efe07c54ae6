//! Every way loading or calling an actor can fail, each naming what went wrong.

use std::path::PathBuf;

/// A harness failure. Business failures are not errors: they come back as rejections.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The file does not exist.
    #[error("{path}: no such file ({hint})", hint = build_hint(path))]
    NotFound {
        /// The file.
        path: PathBuf,
    },
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not WebAssembly at all.
    #[error("{name}: not a WebAssembly file (it does not start with the `\\0asm` header)")]
    NotWasm {
        /// The file or actor name.
        name: String,
    },
    /// A core module where a component was expected.
    #[error(
        "{name}: is a core WebAssembly module, not a component; build it with `cargo build --target wasm32-wasip2`"
    )]
    CoreModule {
        /// The file or actor name.
        name: String,
    },
    /// The component is malformed or uses features this host does not enable.
    #[error("{name}: invalid component: {message}")]
    Invalid {
        /// The file or actor name.
        name: String,
        /// The validator's message.
        message: String,
    },
    /// A core module of the component asks for more linear memory before its first call than
    /// the memory cap allows (Python and JavaScript guests carry their runtime's heap).
    #[error(
        "{name}: needs {needed_mib} MiB of linear memory before its first call, over the memory cap of \
         {limit_mib} MiB: raise `limits.memory_mib` in the manifest (`--memory-mib` for `tollgate test`)"
    )]
    MemoryFloor {
        /// The file or actor name.
        name: String,
        /// The initial memory of its largest module, in MiB (rounded up).
        needed_mib: u64,
        /// The engine's memory cap, in MiB.
        limit_mib: u64,
    },
    /// The component does not export the interface its role needs.
    #[error("{name}: does not export `{expected}` (it exports: {found})")]
    WrongKind {
        /// The file or actor name.
        name: String,
        /// The export expected.
        expected: String,
        /// What it does export.
        found: String,
    },
    /// The component targets a released contract this host no longer runs.
    #[error(
        "`{name}` exports `{export}`, a contract this host no longer runs ({why}); rebuild it against `{current}` (wit/README.md lists every version and what changed)"
    )]
    RetiredContract {
        /// The file or actor name.
        name: String,
        /// The retired interface it exports.
        export: String,
        /// What changed since, in a few words.
        why: String,
        /// The interface that replaced it.
        current: String,
    },
    /// The component imports something the harness does not provide.
    #[error("{name}: imports `{interface}`, which this host does not provide")]
    MissingImport {
        /// The file or actor name.
        name: String,
        /// The import.
        interface: String,
    },
    /// The guest trapped (panicked, hit `unreachable`, ...). Its instance was discarded.
    #[error("{actor}: trapped in `{function}`: {message}{}", stderr_suffix(.stderr))]
    Trap {
        /// The actor.
        actor: String,
        /// The export called.
        function: String,
        /// The trap.
        message: String,
        /// What the guest wrote to stderr during the call (its panic message).
        stderr: String,
    },
    /// The call ran past its CPU cap. Its instance was discarded.
    #[error("{actor}: `{function}` exceeded the CPU cap of {limit_ms} ms and was interrupted")]
    CpuCap {
        /// The actor.
        actor: String,
        /// The export called.
        function: String,
        /// The cap.
        limit_ms: u64,
    },
    /// The call held the host past the wall-clock backstop (it spent its time in host imports,
    /// where fuel does not run down). Its instance was discarded.
    #[error(
        "{actor}: `{function}` ran for more than {limit_ms} ms of wall-clock time (the backstop for calls that wait in host imports) and was interrupted"
    )]
    WallClockCap {
        /// The actor.
        actor: String,
        /// The export called.
        function: String,
        /// The backstop.
        limit_ms: u64,
    },
    /// The call went over one of its import budgets (it looped over a host import, where fuel
    /// does not run down). Its instance was discarded.
    #[error("{actor}: `{function}` went over its budget of {limit} {what} per call (`limits.{field}`) and was stopped")]
    ImportBudget {
        /// The actor.
        actor: String,
        /// The export called.
        function: String,
        /// The import, e.g. `wasi:logging/logging`.
        import: &'static str,
        /// What the budget counts, naming the import.
        what: &'static str,
        /// The budget's field in [`crate::budget::ImportBudgets`] and the manifest's `[limits]`.
        field: &'static str,
        /// The budget for this call.
        limit: u64,
    },
    /// The call tried to grow memory past its cap. Its instance was discarded.
    #[error("{actor}: `{function}` exceeded the memory cap of {limit_bytes} bytes")]
    MemoryCap {
        /// The actor.
        actor: String,
        /// The export called.
        function: String,
        /// The cap.
        limit_bytes: usize,
    },
    /// The aggregate's instance does not hold the state the host named (a fresh instance after
    /// a trap, or a key it evicted): the caller loads the key again and retries.
    #[error("{actor}: does not hold {stream}/{key} at #{sequence}; the key must be loaded again")]
    NotResident {
        /// The actor.
        actor: String,
        /// The aggregate's stream.
        stream: String,
        /// The key.
        key: String,
        /// The sequence named.
        sequence: u64,
    },
    /// A host-side failure (engine, linking, instantiation).
    #[error("{context}: {message}")]
    Host {
        /// What the host was doing.
        context: String,
        /// Why it failed, with its causes.
        message: String,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    let stderr = stderr.trim();
    if stderr.is_empty() { String::new() } else { format!("\nguest stderr:\n{stderr}") }
}

impl HostError {
    /// Wraps a host-side error with what the host was doing.
    pub fn host<E: std::fmt::Display>(context: impl Into<String>) -> impl FnOnce(E) -> HostError {
        let context = context.into();
        move |e| HostError::Host { context, message: format!("{e:#}") }
    }

    /// Whether the actor's instance was lost (trap or cap) and a fresh one will be used next.
    pub fn is_trap(&self) -> bool {
        matches!(
            self,
            HostError::Trap { .. }
                | HostError::CpuCap { .. }
                | HostError::WallClockCap { .. }
                | HostError::ImportBudget { .. }
                | HostError::MemoryCap { .. }
        )
    }
}

/// How to build a missing component: in the tollgate workspace (a folder above it holds
/// `xtask/`), `cargo xtask build-actors`; in any other crate, cargo's own command.
fn build_hint(path: &std::path::Path) -> &'static str {
    let in_workspace = path.ancestors().skip(1).any(|dir| dir.join("xtask/Cargo.toml").is_file());
    if in_workspace {
        "build the actors with `cargo xtask build-actors`"
    } else {
        "build the component with `cargo build --target wasm32-wasip2 --release` in its crate"
    }
}
