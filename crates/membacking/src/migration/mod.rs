//! Live migration of a running guest's memory from one manager to another, usually in another
//! process, over a byte stream (`docs/migration.md` is the reference).
//!
//! - [`GuestMemoryManager::migrate`](crate::GuestMemoryManager::migrate) is the source: it
//!   starts dirty tracking, sends every RAM page that holds data (round 0), then, while the
//!   guest keeps running, the pages dirtied during the previous round, until what is left fits
//!   the downtime budget at the measured bandwidth (or the rounds run out). Then it calls the
//!   caller's `pause`, sends the remainder, the caller's optional payload and the final
//!   manifest, and waits for the destination's acknowledgement.
//! - [`GuestMemoryBuilder::migrate_from`](crate::GuestMemoryBuilder::migrate_from) is the
//!   destination: it builds a manager of the same machine, writes every page it receives into
//!   its RAM (each page's CRC-32C checked), and on the final manifest sets visibility and
//!   recreates the device windows, acknowledges, and returns the manager.
//!
//! The stream's frames are in [`wire`]; the snapshot format's manifest and extent records are
//! reused for the machine and the pages. [`transport`] holds the byte-stream abstraction (two
//! blocking halves, and a channel form for streams a JavaScript program drives).
//!
//! On any failure both sides stop: the source's guest memory is untouched and its dirty
//! tracking is as it was before (stopped, unless it was on already), and the destination
//! closes what it built. Every error names what failed ([`MigrationError`]).

mod destination;
mod source;
pub mod transport;
pub mod wire;

#[cfg(test)]
mod tests;

pub use transport::channel_transport;
pub use transport::Abort;
pub use transport::IncomingSender;
pub use transport::MigrationTransport;
pub use transport::OutgoingReceiver;
pub use transport::StreamEnd;
pub use transport::StreamFailure;
pub use transport::CHANNEL_CAPACITY;

use crate::dirty::DirtyTrackingError;
use crate::snapshot::format::Manifest;
use crate::snapshot::RestoredWindow;
use crate::snapshot::SnapshotError;
use crate::snapshot::WindowBacking;
use crate::GuestMemoryManager;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use std::fmt;
use std::future::Future;
use std::io;
use std::sync::Arc;
use vm_topology::memory::MemoryLayout;

/// Told `(round, bytes)` as a migration progresses: the page bytes sent (source) or received
/// (destination) in that round so far. Called from the migration's thread.
pub type MigrationProgress = Arc<dyn Fn(u32, u64) + Send + Sync>;

/// Why the caller's pause failed.
pub type PauseError = Box<dyn std::error::Error + Send + Sync>;

/// What the caller's pause resolves to: optional opaque bytes (at most
/// [`wire::MAX_PAYLOAD`]) to carry in the final round, e.g. the vCPU registers.
pub type PauseFuture = BoxFuture<'static, Result<Option<Vec<u8>>, PauseError>>;

/// Stops everything that writes guest memory (the vCPUs, device threads) before the final
/// round; called once, from the migration's thread, and awaited there.
pub type Pause = Box<dyn FnOnce() -> PauseFuture + Send>;

/// Pre-copy rounds sent while the guest runs, by default (round 0 included).
pub const DEFAULT_MAX_ROUNDS: u32 = 16;
/// The downtime budget when none is given: 300 ms.
pub const DEFAULT_DOWNTIME_BUDGET_MS: u64 = 300;
/// The largest `max_rounds`.
pub const MAX_ROUNDS_LIMIT: u32 = 10_000;

/// Options of [`GuestMemoryManager::migrate`](crate::GuestMemoryManager::migrate).
pub struct MigrateOptions {
    /// Stops the guest before the final round (required).
    pub pause: Pause,
    /// Pre-copy rounds at most (round 0 included; the final round comes on top). Default
    /// [`DEFAULT_MAX_ROUNDS`]; 1 ..= [`MAX_ROUNDS_LIMIT`].
    pub max_rounds: Option<u32>,
    /// The downtime the caller accepts, in milliseconds. Given, it is binding: when the
    /// remainder still needs longer at the measured bandwidth after `max_rounds`, the
    /// migration fails with [`MigrationError::Downtime`] before pausing. Not given, the budget
    /// is [`DEFAULT_DOWNTIME_BUDGET_MS`] and the migration pauses after `max_rounds` anyway,
    /// reporting `converged: false`.
    pub max_downtime_ms: Option<u64>,
    /// Told the progress of each round.
    pub progress: Option<MigrationProgress>,
}

impl MigrateOptions {
    /// Options with `pause` and every other option at its default.
    pub fn new<F>(pause: impl FnOnce() -> F + Send + 'static) -> Self
    where
        F: Future<Output = Result<Option<Vec<u8>>, PauseError>> + Send + 'static,
    {
        Self {
            pause: Box::new(move || Box::pin(pause())),
            max_rounds: None,
            max_downtime_ms: None,
            progress: None,
        }
    }
}

impl fmt::Debug for MigrateOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MigrateOptions")
            .field("max_rounds", &self.max_rounds)
            .field("max_downtime_ms", &self.max_downtime_ms)
            .field("progress", &self.progress.is_some())
            .finish_non_exhaustive()
    }
}

/// What a migration did (source side).
#[derive(Debug, Clone, PartialEq)]
pub struct MigrationInfo {
    /// Rounds sent, the final one included.
    pub rounds: u32,
    /// Page bytes sent in each round (data extents only; zero extents carry none).
    pub bytes_per_round: Vec<u64>,
    /// Page bytes sent in all rounds (the sum of `bytes_per_round`).
    pub bytes: u64,
    /// Every byte written to the stream (frames, manifests, the payload).
    pub stream_bytes: u64,
    /// Milliseconds from `pause` resolving to the destination's acknowledgement that it holds
    /// and has applied everything (see `docs/migration.md`).
    pub downtime_ms: f64,
    /// Whether the remainder fitted the downtime budget at the measured bandwidth when the
    /// guest was paused (false: the rounds ran out first).
    pub converged: bool,
    /// The bandwidth measured over the pre-copy rounds, in bytes per second, that the
    /// decision used.
    pub bandwidth_bytes_per_sec: f64,
}

/// Options of [`GuestMemoryBuilder::migrate_from`](crate::GuestMemoryBuilder::migrate_from).
#[derive(Default)]
pub struct MigrateFromOptions {
    /// Told the progress of each round.
    pub progress: Option<MigrationProgress>,
    /// The layout the caller expects; a stream of another machine is refused.
    pub layout: Option<MemoryLayout>,
    /// Backings of device-window mappings, by window name and offset (the stream carries
    /// where windows are, not their contents). Each must name a mapping of the final
    /// manifest; the others are listed in [`RestoredWindow::missing`].
    pub window_backings: Vec<WindowBacking>,
}

impl fmt::Debug for MigrateFromOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MigrateFromOptions")
            .field("progress", &self.progress.is_some())
            .field("layout", &self.layout)
            .field("window_backings", &self.window_backings)
            .finish()
    }
}

/// The destination's result: a manager ready to attach a partition.
#[derive(Debug)]
pub struct MigratedManager {
    /// The manager.
    pub manager: GuestMemoryManager,
    /// The device windows, placed; keep them (dropping one removes it).
    pub windows: Vec<RestoredWindow>,
    /// The source's payload (e.g. vCPU registers), if it sent one.
    pub payload: Option<Vec<u8>>,
    /// The final manifest.
    pub manifest: Manifest,
    /// Rounds received, the final one included.
    pub rounds: u32,
    /// Page bytes received in each round.
    pub bytes_per_round: Vec<u64>,
    /// Page bytes received in all rounds.
    pub bytes: u64,
}

/// Which side of a migration.
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub enum Side {
    /// The sending manager.
    Source,
    /// The receiving one.
    Destination,
}

impl Side {
    /// `"source"` or `"destination"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Destination => "destination",
        }
    }

    fn peer(self) -> Side {
        match self {
            Side::Source => Side::Destination,
            Side::Destination => Side::Source,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a migration was when it stopped.
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub enum MigrationPhase {
    /// Before both sides agreed on the protocol.
    Handshake,
    /// Pre-copy: the guest is running.
    Rounds,
    /// After `pause`: the final round and manifest.
    Final,
    /// Source only: everything was sent, and neither the destination's acknowledgement nor
    /// its error arrived (the connection failed, or the answer was damaged). The destination
    /// may have completed and own the guest: resume the source only when you know it did
    /// not.
    Completing,
}

impl MigrationPhase {
    /// `"handshake"`, `"rounds"`, `"final"` or `"completing"`.
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationPhase::Handshake => "handshake",
            MigrationPhase::Rounds => "rounds",
            MigrationPhase::Final => "final",
            MigrationPhase::Completing => "completing",
        }
    }
}

impl fmt::Display for MigrationPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A migration failed. Every variant names what it concerns; `docs/migration.md` lists the
/// JavaScript codes.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The connection was lost, the peer went away or reported its own failure, or the
    /// migration was cancelled (`ERR_MIGRATION_ABORTED`).
    #[error("the migration was aborted during the {phase} phase: {cause}")]
    Aborted {
        /// Where it stopped.
        phase: MigrationPhase,
        /// The stream's error, or what the peer reported.
        #[source]
        cause: io::Error,
    },
    /// A frame was malformed, failed its checksum, came out of order, or the peer speaks
    /// another version (`ERR_MIGRATION_PROTOCOL`).
    #[error("migration protocol error found by the {detected_by} in the frame at stream offset {offset}: {what}")]
    Protocol {
        /// What is wrong.
        what: String,
        /// The offset, in the stream the detecting side received, of the frame.
        offset: u64,
        /// Which side found it (the peer's report reaches the other side).
        detected_by: Side,
    },
    /// The remainder would not fit `max_downtime_ms` after `max_rounds` at the measured
    /// bandwidth; the guest was not paused (`ERR_MIGRATION_DOWNTIME`).
    #[error(
        "after {rounds} rounds {remainder_bytes} bytes are still dirty, about {predicted_ms:.1} ms at the measured {bandwidth_bytes_per_sec:.0} bytes/s, over maxDowntimeMs {max_downtime_ms}: raise maxDowntimeMs or maxRounds, or slow the guest's writes"
    )]
    Downtime {
        /// Pre-copy rounds sent.
        rounds: u32,
        /// Bytes dirty at the last decision.
        remainder_bytes: u64,
        /// The bandwidth measured.
        bandwidth_bytes_per_sec: f64,
        /// The downtime the remainder would take.
        predicted_ms: f64,
        /// The caller's budget.
        max_downtime_ms: u64,
    },
    /// The caller's pause failed; the migration stopped before the final round
    /// (`ERR_MIGRATION_ABORTED` with this cause).
    #[error("the pause callback failed; the migration was aborted")]
    Pause {
        /// The pause's error.
        #[source]
        source: PauseError,
    },
    /// Another migration of this manager is running (`ERR_MIGRATION_IN_PROGRESS`).
    #[error("a migration of this manager is already running; wait for it to finish")]
    InProgress,
    /// Dirty tracking was stopped while the migration relied on it, so writes may have been
    /// missed (`ERR_DIRTY_TRACKING_OFF`).
    #[error("dirty tracking was stopped during the migration; do not stop it until the migration has finished")]
    TrackingStopped,
    /// An option is not usable (`ERR_INVALID_ARG_VALUE`).
    #[error("{what}")]
    InvalidArgument {
        /// What is wrong, with the value.
        what: String,
    },
    /// Guest RAM could not be read (source) or written (destination) (the errno's code).
    #[error("{op} failed")]
    Io {
        /// What was done.
        op: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Dirty tracking failed (its code).
    #[error(transparent)]
    DirtyTracking(#[from] DirtyTrackingError),
    /// Building the destination's machine, or recreating its visibility and windows, failed,
    /// or it is not the expected machine (the snapshot error's code, e.g.
    /// `ERR_SNAPSHOT_LAYOUT`).
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

impl MigrationError {
    fn aborted(phase: MigrationPhase, cause: io::Error) -> Self {
        MigrationError::Aborted { phase, cause }
    }

    /// The error of a migration its caller cancelled.
    fn cancelled(phase: MigrationPhase) -> Self {
        MigrationError::aborted(
            phase,
            io::Error::new(
                io::ErrorKind::Interrupted,
                "the migration was cancelled (its future was dropped)",
            ),
        )
    }

    /// What `side` reports after `error` (the cancellation, if the caller cancelled), and the
    /// error frame that tells the peer why, when the failure is this side's own (not a lost
    /// connection, not a problem the peer reported).
    fn settle(self, side: Side, phase: MigrationPhase, cancel: &Cancel) -> (Self, Option<Vec<u8>>) {
        let error = if cancel.is_cancelled() {
            MigrationError::cancelled(phase)
        } else {
            self
        };
        let frame = match &error {
            MigrationError::Aborted { .. } => None,
            MigrationError::Protocol { detected_by, .. } if *detected_by != side => None,
            MigrationError::Protocol { what, offset, .. } => Some(wire::PeerError {
                kind: wire::ErrorKind::Protocol,
                offset: *offset,
                message: what.clone(),
            }),
            other => Some(wire::PeerError {
                kind: wire::ErrorKind::Failed,
                offset: 0,
                message: with_sources(other),
            }),
        };
        (error, frame.map(|frame| frame.encode()))
    }
}

/// `error`'s message followed by those of its sources that it does not already say
/// (`duplicate the RAM object failed: Too many open files (os error 24)`): the peer sees only
/// this text, so the OS error behind a failure must be in it.
pub(crate) fn with_sources(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        source = cause.source();
    }
    message
}

/// Maps the peer's error frame to the error this side reports.
fn peer_failed(side: Side, phase: MigrationPhase, error: wire::PeerError) -> MigrationError {
    let peer = side.peer();
    match error.kind {
        wire::ErrorKind::Protocol => MigrationError::Protocol {
            what: error.message,
            offset: error.offset,
            detected_by: peer,
        },
        wire::ErrorKind::Failed => MigrationError::aborted(
            phase,
            io::Error::other(format!("the {peer} failed: {}", error.message)),
        ),
    }
}

/// Calls `progress` without letting a panic escape into the migration.
fn report(progress: Option<&MigrationProgress>, round: u32, bytes: u64) {
    if let Some(progress) = progress {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| progress(round, bytes)));
    }
}

/// Shared between a migration's thread and the future its caller holds: dropping the future
/// before the migration finished aborts the transport (once); after it finished, nothing
/// happens (the caller's stream stays usable). Closing the source's manager aborts it too.
pub(crate) struct Cancel {
    state: Mutex<CancelState>,
    abort: Option<Abort>,
}

#[derive(Default)]
struct CancelState {
    finished: bool,
    cancelled: bool,
    manager_closed: bool,
}

impl Cancel {
    fn new(abort: Option<Abort>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(CancelState::default()),
            abort,
        })
    }

    fn is_cancelled(&self) -> bool {
        self.state.lock().cancelled
    }

    /// The migration's thread is done with the transport: cancelling no longer aborts it.
    fn finish(&self) {
        self.state.lock().finished = true;
    }

    /// The caller dropped the future.
    fn cancel(&self) {
        let mut state = self.state.lock();
        if state.finished || state.cancelled {
            return;
        }
        state.cancelled = true;
        drop(state);
        if let Some(abort) = &self.abort {
            abort();
        }
    }

    fn abort(&self) {
        if let Some(abort) = &self.abort {
            abort();
        }
    }

    /// The source's manager is being closed: the migration cannot finish, so a thread blocked
    /// on the transport (a peer that stopped reading or answering) is unblocked by aborting it,
    /// once, unless the migration finished; it then fails with `ManagerGone`.
    pub(crate) fn manager_closed(&self) {
        let mut state = self.state.lock();
        if state.finished || state.cancelled || state.manager_closed {
            return;
        }
        state.manager_closed = true;
        drop(state);
        self.abort();
    }

    /// Whether [`manager_closed`](Self::manager_closed) aborted the migration.
    fn is_manager_closed(&self) -> bool {
        self.state.lock().manager_closed
    }
}

#[cfg(test)]
thread_local! {
    /// Tests: the migration thread started from this thread cannot start its thread of this
    /// name (as if out of threads).
    pub(crate) static FAIL_SPAWN: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
}

/// Starts one of a migration's own threads, named `name`.
pub(crate) fn spawn_named<T: Send + 'static>(
    name: &'static str,
    work: impl FnOnce() -> T + Send + 'static,
) -> io::Result<std::thread::JoinHandle<T>> {
    #[cfg(test)]
    if FAIL_SPAWN.with(std::cell::Cell::get) == Some(name) {
        return Err(io::Error::from_raw_os_error(libc::EAGAIN));
    }
    std::thread::Builder::new().name(name.into()).spawn(work)
}

/// Runs `work` on a new thread named `name` and resolves with its result; dropping the
/// future cancels the migration (see [`Cancel`]).
fn on_migration_thread<T: Send + 'static>(
    name: &str,
    cancel: Arc<Cancel>,
    work: impl FnOnce() -> Result<T, MigrationError> + Send + 'static,
) -> impl Future<Output = Result<T, MigrationError>> + Send + 'static {
    let (sender, receiver) = futures::channel::oneshot::channel();
    let thread_cancel = cancel.clone();
    #[cfg(test)]
    let fail_spawn = FAIL_SPAWN.with(std::cell::Cell::get);
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            #[cfg(test)]
            FAIL_SPAWN.with(|fail| fail.set(fail_spawn));
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
                .unwrap_or_else(|_| {
                    // Whatever it was doing, the peer must not wait for it.
                    thread_cancel.abort();
                    Err(MigrationError::Io {
                        op: "run the migration".into(),
                        source: io::Error::other("the migration thread panicked"),
                    })
                });
            thread_cancel.finish();
            let _ = sender.send(result);
        });
    struct CancelOnDrop(Arc<Cancel>);
    impl Drop for CancelOnDrop {
        fn drop(&mut self) {
            self.0.cancel();
        }
    }
    let guard = CancelOnDrop(cancel);
    async move {
        let _guard = guard;
        spawned.map_err(|source| MigrationError::Io {
            op: "start the migration thread".into(),
            source,
        })?;
        receiver.await.unwrap_or_else(|_| {
            Err(MigrationError::Io {
                op: "run the migration".into(),
                source: io::Error::other("the migration thread stopped"),
            })
        })
    }
}
