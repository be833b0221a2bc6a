//! Snapshots of a manager's guest memory and restoring them (`docs/snapshots.md`).
//!
//! - [`GuestMemoryManager::snapshot`](crate::GuestMemoryManager::snapshot) writes a snapshot
//!   directory: a manifest (layout, build options, RAM regions with their backing offsets and
//!   visibility, placed device windows as metadata), an extent index with a CRC-32C per page,
//!   and a memory file holding only pages with data. With a base it is incremental: only the
//!   pages dirtied since the base (dirty tracking must have been on since then). The directory
//!   is written beside the target and published atomically (`snapshot::publish`).
//! - [`GuestMemoryBuilder::restore`](crate::GuestMemoryBuilder::restore) rebuilds a manager
//!   from a snapshot and its chain of bases, by copying ([`RestoreMode::Copy`]) or on demand
//!   with userfaultfd ([`RestoreMode::Lazy`]).
//!
//! Everything a JavaScript error needs is a field of [`SnapshotError`].

mod describe;
pub mod format;
pub(crate) mod lazy;
mod publish;
pub(crate) mod restore;
mod source;
pub(crate) mod writer;

#[cfg(test)]
pub(crate) mod tests;

pub use lazy::userfaultfd_available;
pub use lazy::LazyRestore;
pub use lazy::LazyStats;
pub use restore::read_snapshot;
pub use restore::read_snapshot_chain;
pub use restore::verify_snapshot;
pub use restore::RestoreMode;
pub use restore::RestoreOptions;
pub use restore::RestoredManager;
pub use restore::RestoredWindow;
pub use restore::VerifiedSnapshot;
pub use restore::WindowBacking;
pub use writer::SnapshotInfo;
pub use writer::SnapshotOptions;

use crate::dirty::DirtyTrackingError;
use crate::error::MemoryBuildError;
use crate::region_manager::RegionManagerError;
use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

/// Told `(done, total)` bytes as a snapshot or restore progresses, from a worker thread.
pub type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// A snapshot or restore failed. Every variant names what it concerns.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file of a snapshot does not match its checksum, size or structure
    /// (`ERR_SNAPSHOT_CORRUPT`).
    #[error("snapshot file {} is corrupt at offset {offset}: {what}", file.display())]
    Corrupt {
        /// The file.
        file: PathBuf,
        /// The byte offset where the problem was found.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// A snapshot file has a format version this build does not read (`ERR_SNAPSHOT_VERSION`).
    #[error("snapshot file {} has format version {found}; this build reads version {supported}", file.display())]
    Version {
        /// The file.
        file: PathBuf,
        /// The version found.
        found: u64,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// A snapshot does not match the machine it is restored into or based on
    /// (`ERR_SNAPSHOT_LAYOUT`).
    #[error("snapshot {} does not match: {what}", dir.display())]
    Layout {
        /// The snapshot directory.
        dir: PathBuf,
        /// What differs.
        what: String,
    },
    /// An incremental snapshot was asked for without dirty tracking on since its base
    /// (`ERR_DIRTY_TRACKING_OFF`).
    #[error("cannot take an incremental snapshot on {}: {reason}; take a full snapshot (no base) while tracking is on", base.display())]
    DirtyTrackingOff {
        /// The base directory.
        base: PathBuf,
        /// Why.
        reason: String,
    },
    /// An argument is not usable (`ERR_INVALID_ARG_VALUE`).
    #[error("{what}")]
    InvalidArgument {
        /// What is wrong, with the value.
        what: String,
    },
    /// A file system operation failed (the errno's code).
    #[error("{op} {} failed", path.display())]
    Io {
        /// The operation (`open`, `write`, `rename`, …).
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A base in a snapshot's chain cannot be read (moved, deleted, or not readable; the
    /// errno's code): a restore, an incremental snapshot on it or `read_snapshot` needs every
    /// snapshot of the chain.
    #[error("snapshot {} is built on {}, which cannot be read: {op} {} failed", snapshot.display(), base.display(), path.display())]
    BaseUnreadable {
        /// The snapshot whose base it is.
        snapshot: PathBuf,
        /// The base's directory, as the snapshot records it (resolved from its own directory).
        base: PathBuf,
        /// The operation (`open`, `read`, …).
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Writing a snapshot into its temporary directory failed (the errno's code); the temporary
    /// directory is removed and the target keeps what it held.
    #[error("{op} {} failed", path.display())]
    NotWritten {
        /// The operation (`create`, `write`, `fsync`, …).
        op: &'static str,
        /// The path, inside the temporary directory.
        path: PathBuf,
        /// The snapshot's target, unchanged.
        target: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The target of a snapshot exists and is neither a snapshot nor an empty directory, so it
    /// is left untouched (the errno's code: `ENOTEMPTY` for a directory, `EEXIST` otherwise).
    #[error("cannot write a snapshot to {}: {what}; a snapshot replaces only an existing snapshot or an empty directory, so choose an empty or new directory, or remove it first", dir.display())]
    TargetNotSnapshot {
        /// The target path.
        dir: PathBuf,
        /// What the target is instead (e.g. `it holds "notes.txt", which is not a snapshot file`).
        what: String,
        /// The OS error the refusal amounts to (`ENOTEMPTY` or `EEXIST`).
        #[source]
        source: io::Error,
    },
    /// A lazy restore needs userfaultfd with kernel-mode faults, which is unavailable
    /// (`ERR_UNSUPPORTED`).
    #[error("lazy restore is unavailable: {reason}; restore with mode 'copy'")]
    LazyUnavailable {
        /// Why.
        reason: String,
    },
    /// Reading the guest memory or dirty tracking failed.
    #[error(transparent)]
    DirtyTracking(#[from] DirtyTrackingError),
    /// Building the restored manager failed.
    #[error(transparent)]
    Build(#[from] MemoryBuildError),
    /// Recreating visibility or device windows failed.
    #[error(transparent)]
    Manager(#[from] RegionManagerError),
    /// Recreating a device window failed.
    #[error("recreating device window {window:?} failed")]
    DeviceWindow {
        /// The window's name.
        window: String,
        /// The error (kind `Other` wrapping a `RegionManagerError`, or an OS error).
        #[source]
        source: io::Error,
    },
}

impl SnapshotError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        SnapshotError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// This error as one of writing the snapshot of `target` into its temporary directory: an
    /// [`Io`](Self::Io) error becomes [`NotWritten`](Self::NotWritten), any other stays.
    pub(crate) fn while_writing(self, target: &Path) -> Self {
        match self {
            SnapshotError::Io { op, path, source } => SnapshotError::NotWritten {
                op,
                path,
                target: target.to_owned(),
                source,
            },
            other => other,
        }
    }

    pub(crate) fn format(file: impl Into<PathBuf>, error: format::FormatError) -> Self {
        match error {
            format::FormatError::Corrupt { offset, what } => SnapshotError::Corrupt {
                file: file.into(),
                offset,
                what,
            },
            format::FormatError::Version { found } => SnapshotError::Version {
                file: file.into(),
                found,
                supported: format::VERSION,
            },
        }
    }
}

/// The threads snapshot and restore I/O runs on (started on first use, kept for the process).
fn io_pool() -> Option<&'static futures::executor::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<futures::executor::ThreadPool>> =
        std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        futures::executor::ThreadPool::builder()
            .pool_size(2)
            .name_prefix("snapshot-io-")
            .create()
            .ok()
    })
    .as_ref()
}

/// Runs `work` on the snapshot I/O threads (or, if they cannot be started, a new thread) and
/// resolves with its result: snapshot and restore I/O never runs on the caller's executor or
/// the manager thread.
pub(crate) async fn on_thread<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> Result<T, SnapshotError> + Send + 'static,
) -> Result<T, SnapshotError> {
    let (sender, receiver) = futures::channel::oneshot::channel();
    let job = move || {
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|_| {
                Err(SnapshotError::io(
                    "run",
                    PathBuf::new(),
                    io::Error::other("the snapshot worker panicked"),
                ))
            });
        let _ = sender.send(result);
    };
    match io_pool() {
        Some(pool) => pool.spawn_ok(async move { job() }),
        None => {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(job)
                .map_err(|error| SnapshotError::io("spawn a thread for", PathBuf::new(), error))?;
        }
    }
    receiver.await.unwrap_or_else(|_| {
        Err(SnapshotError::io(
            "run",
            PathBuf::new(),
            io::Error::other("the snapshot worker stopped"),
        ))
    })
}

/// Runs `work(state, buffer, item)` for every item on up to two workers — the calling thread
/// and a scoped helper thread —, each with its own `state` (from `new_state`) and a 1 MiB
/// buffer, and reports `(bytes done, total)` after each item, in increasing order (a report is
/// made under the lock that counts it, so a thread that finished later never reports a smaller
/// figure after a larger one); returns every worker's state, or the first error.
///
/// A helper that cannot be started (the process or the system is out of threads or memory
/// for a stack: `EAGAIN`) only means fewer workers: the calling thread does the work.
pub(crate) fn parallel_items<T: Sync, S: Send>(
    items: &[T],
    bytes: impl Fn(&T) -> u64 + Sync,
    progress: Option<&Progress>,
    new_state: impl Fn() -> S + Sync,
    work: impl Fn(&mut S, &mut [u8], &T) -> Result<(), SnapshotError> + Sync,
) -> Result<Vec<S>, SnapshotError> {
    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::Ordering;
    let total: u64 = items.iter().map(&bytes).sum();
    report(progress, 0, total);
    let next = AtomicUsize::new(0);
    let done = parking_lot::Mutex::new(0u64);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
    let run = || -> Result<S, SnapshotError> {
        let mut state = new_state();
        let mut buffer = vec![0u8; writer::ITEM_BYTES];
        while let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) {
            work(&mut state, &mut buffer, item)?;
            let mut done = done.lock();
            *done += bytes(item);
            report(progress, *done, total);
        }
        Ok(state)
    };
    std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..workers)
            .filter_map(|_| spawn_helper(scope, &run).ok())
            .collect();
        let mut results = vec![run()];
        results.extend(helpers.into_iter().map(|handle| {
            handle.join().unwrap_or_else(|_| {
                Err(SnapshotError::io(
                    "run",
                    PathBuf::new(),
                    io::Error::other("a snapshot worker panicked"),
                ))
            })
        }));
        results.into_iter().collect()
    })
}

#[cfg(test)]
thread_local! {
    /// Tests: helper threads of `parallel_items` called on this thread cannot be started.
    pub(crate) static FAIL_HELPER_SPAWNS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Starts a helper thread of [`parallel_items`].
fn spawn_helper<'scope, R: Send + 'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    run: &'scope (impl Fn() -> R + Sync),
) -> io::Result<std::thread::ScopedJoinHandle<'scope, R>> {
    #[cfg(test)]
    if FAIL_HELPER_SPAWNS.with(std::cell::Cell::get) {
        return Err(io::Error::from_raw_os_error(libc::EAGAIN));
    }
    std::thread::Builder::new()
        .name("snapshot-worker".into())
        .spawn_scoped(scope, run)
}

/// Calls `progress` without letting a panic escape into the worker.
pub(crate) fn report(progress: Option<&Progress>, done: u64, total: u64) {
    if let Some(progress) = progress {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| progress(done, total)));
    }
}

/// A new random 128-bit id as 32 hex digits.
pub(crate) fn new_id() -> String {
    use std::hash::BuildHasher;
    let state = std::collections::hash_map::RandomState::new();
    let high = state.hash_one(std::time::SystemTime::now());
    let low = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
    format!("{high:016x}{low:016x}")
}
