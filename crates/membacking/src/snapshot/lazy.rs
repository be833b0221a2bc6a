//! Lazy restore: guest RAM filled on first touch through userfaultfd, and finished by a
//! background thread that then unregisters everything.
//!
//! # Which views fault, and how they are registered
//!
//! Every access to guest RAM in this process — guest-memory accesses and KVM guest accesses
//! alike, since KVM memory slots point into the manager's VA window — goes through the VA
//! window's views of the RAM, so those views are what is registered (`UFFDIO_REGISTER_MODE_MISSING`):
//!
//! - file-backed RAM (a memfd): the VA mapper places RAM views lazily and replaces them on
//!   visibility changes, so the restore installs a map observer on the manager's mapper: each
//!   new view of the RAM object is placed inaccessible, registered, and only then opened up
//!   (nothing can touch it unregistered). Missing-page faults on shmem are reported for every
//!   registered view of the object; pages already in the object's page cache never fault.
//!   The background fill writes through a private helper view of the whole object
//!   (registered too, since `UFFDIO_COPY` needs a registered destination), which allocates the
//!   page in the object for every view at once.
//! - private RAM: the anonymous window ranges committed at build time are registered; they
//!   never move, and the fill copies straight into them.
//!
//! # Who fills a page
//!
//! Each page of the RAM backing has a *claimed* and a *done* bit. Whoever sets the claimed bit
//! (the fault handler for a touched page, the background filler otherwise, a decommit) fills
//! it (or, for a decommit, leaves it to read as zeros) and sets done. A fault on a page someone
//! else claimed waits for done and then only wakes the faulting thread — or, if the page is
//! missing again because it was decommitted, fills it with zeros. Pages the snapshot has no data
//! for are never filled by the background thread: once it has filled every data page, nothing
//! is left that must not read as zeros, so it unregisters every view, closes the userfaultfd and
//! stops the handler; from then on RAM behaves as if it had never been restored lazily.
//!
//! Each page read from the snapshot is checked against its CRC-32C before it is handed over. A
//! mismatch cannot fail an access that already happened: the page is filled with zeros and the
//! restore's [`LazyRestore::wait`] fails with `SnapshotError::Corrupt`.

use super::report;
use super::restore::read_verified;
use super::restore::Layer;
use super::restore::Piece;
use super::restore::Plan;
use super::restore::Source;
use super::Progress;
use super::SnapshotError;
use crate::mapping_manager::va_mapper::MapObserver;
use crate::mapping_manager::va_mapper::VaMapper;
use crate::ram_visibility::SpecIndex;
use crate::GuestMemoryManager;
use futures::channel::oneshot;
use parking_lot::Mutex;
use sparse_mmap::alloc::Allocation;
use sparse_mmap::userfaultfd::Copied;
use sparse_mmap::userfaultfd::StopEvent;
use sparse_mmap::userfaultfd::Userfaultfd;
use sparse_mmap::Mappable;
use sparse_mmap::SparseMapping;
use std::future::Future;
use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::PAGE_SIZE;
const PAGE: usize = 4096;
/// Pages the background filler copies at once.
const FILL_PAGES: usize = 64;

/// A window offset or length as `usize` (the window itself is a `usize`-sized reservation, so
/// every offset in it fits).
fn window_usize(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

/// Whether this process can serve kernel-mode faults (KVM's) with userfaultfd; the error says
/// why not (`/proc/sys/vm/unprivileged_userfaultfd`, the capability, `/dev/userfaultfd`).
pub fn userfaultfd_available() -> Result<(), String> {
    match Userfaultfd::new() {
        Ok(_) => Ok(()),
        Err(error) => {
            let sysctl = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
                .map(|value| value.trim().to_owned())
                .unwrap_or_else(|_| "unknown".into());
            let user_only = if Userfaultfd::user_mode_only_available() {
                "; only UFFD_USER_MODE_ONLY is allowed, which cannot serve KVM's faults"
            } else {
                ""
            };
            Err(format!(
                "userfaultfd with kernel-mode faults (needed for KVM guests) cannot be created: \
                 {error} (vm.unprivileged_userfaultfd = {sysctl}; it needs CAP_SYS_PTRACE, that \
                 sysctl at 1, or access to /dev/userfaultfd{user_only})"
            ))
        }
    }
}

/// A userfaultfd for a lazy restore, or [`SnapshotError::LazyUnavailable`] saying why it cannot
/// be had.
pub(crate) fn new_userfaultfd() -> Result<Userfaultfd, SnapshotError> {
    Userfaultfd::new().map_err(|_| SnapshotError::LazyUnavailable {
        reason: userfaultfd_available()
            .err()
            .unwrap_or_else(|| "creating a userfaultfd failed once".into()),
    })
}

/// Statistics of a lazy restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LazyStats {
    /// Faults served by the handler (first touches).
    pub faults: u64,
    /// Pages filled with snapshot data (by the handler and the filler).
    pub pages_filled: u64,
}

/// A failure of the background restore, kept to hand to every waiter.
#[derive(Debug, Clone)]
enum Failure {
    Corrupt {
        file: PathBuf,
        offset: u64,
        what: String,
    },
    /// A file or userfaultfd operation failed (its errno kept, so the error keeps its code).
    Io {
        op: &'static str,
        path: PathBuf,
        errno: Option<i32>,
        message: String,
    },
    Other {
        op: &'static str,
        what: String,
    },
    /// The manager was closed before the restore finished.
    Cancelled,
}

impl Failure {
    fn from_error(error: &SnapshotError) -> Self {
        match error {
            SnapshotError::Corrupt { file, offset, what } => Failure::Corrupt {
                file: file.clone(),
                offset: *offset,
                what: what.clone(),
            },
            SnapshotError::Io { op, path, source } => Failure::Io {
                op,
                path: path.clone(),
                errno: source.raw_os_error(),
                message: source.to_string(),
            },
            other => Failure::Other {
                op: "lazy restore",
                what: other.to_string(),
            },
        }
    }

    fn to_error(&self) -> SnapshotError {
        match self {
            Failure::Corrupt { file, offset, what } => SnapshotError::Corrupt {
                file: file.clone(),
                offset: *offset,
                what: what.clone(),
            },
            Failure::Io {
                op,
                path,
                errno,
                message,
            } => SnapshotError::Io {
                op,
                path: path.clone(),
                source: errno.map_or_else(
                    || io::Error::other(message.clone()),
                    io::Error::from_raw_os_error,
                ),
            },
            Failure::Other { op, what } => {
                SnapshotError::io(op, PathBuf::new(), io::Error::other(what.clone()))
            }
            Failure::Cancelled => {
                SnapshotError::Manager(crate::region_manager::RegionManagerError::ManagerGone)
            }
        }
    }
}

#[derive(Default)]
struct Completion {
    result: Option<Result<LazyStats, Failure>>,
    waiters: Vec<oneshot::Sender<Result<LazyStats, Failure>>>,
}

/// Where the RAM pages are written.
enum Target {
    /// File-backed: the helper view of the whole object (registered), made inaccessible at
    /// teardown.
    Helper(SparseMapping),
    /// Private: the window itself.
    Window,
}

/// A page bitmap of atomic words in its own anonymous mapping: the kernel zeroes its pages on
/// first touch, so setting up a restore costs the same for any guest size (a heap allocation
/// of that size may be recycled memory that `calloc` has to clear).
struct PageBits {
    memory: Allocation,
}

impl PageBits {
    fn new(pages: u64) -> io::Result<Self> {
        let words = usize::try_from(pages.div_ceil(64))
            .map_err(|_| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(Self {
            memory: Allocation::words(words)?,
        })
    }

    fn word(&self, page: u64) -> Option<&AtomicU64> {
        let index = usize::try_from(page / 64).ok()?;
        self.memory.as_atomic_words().get(index)
    }

    /// Sets the bit; returns whether it was clear.
    fn set(&self, page: u64) -> bool {
        let Some(word) = self.word(page) else {
            return false;
        };
        let mask = 1 << (page % 64);
        word.fetch_or(mask, Ordering::AcqRel) & mask == 0
    }

    fn get(&self, page: u64) -> bool {
        self.word(page)
            .is_some_and(|word| word.load(Ordering::Acquire) & (1 << (page % 64)) != 0)
    }
}

/// State shared by the handler, the filler and the handle.
struct Shared {
    uffd: Userfaultfd,
    layers: Arc<Vec<Layer>>,
    pieces: Arc<Vec<Piece>>,
    specs: SpecIndex,
    window_base: usize,
    target: Target,
    claimed: PageBits,
    done: PageBits,
    /// The RAM object's identity (device, inode), for the map observer.
    object_id: Option<(u64, u64)>,
    mapper: Arc<VaMapper>,
    stop: StopEvent,
    /// The background filler has been started.
    filler_started: AtomicBool,
    /// The restore is being torn down: copies may fail because views are unregistered.
    closing: AtomicBool,
    /// The manager is being closed: the filler stops at its next chunk and tears down.
    cancelled: AtomicBool,
    /// The manager's close has begun (its views are going away): a copy that fails now fails
    /// because of the close, and the restore ends as cancelled.
    manager_closing: AtomicBool,
    /// The handler and filler threads, joined by a cancel (a restore that finishes on its own
    /// leaves them detached: they end with it).
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    status: Arc<Status>,
    total: u64,
    progress: Option<Progress>,
    failure: Mutex<Option<Failure>>,
    zeros: Box<[u8]>,
}

/// What outlives the restore's machinery: its progress and outcome. The handle and the
/// manager keep only this (and a weak reference to [`Shared`]), so the userfaultfd, the
/// snapshot's files and the bitmaps are released as soon as the threads end.
#[derive(Default)]
struct Status {
    finished: AtomicBool,
    faults: AtomicU64,
    filled: AtomicU64,
    completion: Mutex<Completion>,
}

impl Status {
    fn stats(&self) -> LazyStats {
        LazyStats {
            faults: self.faults.load(Ordering::Relaxed),
            pages_filled: self.filled.load(Ordering::Relaxed),
        }
    }

    /// A receiver of the outcome, or `None` when it is known already.
    fn waiter(&self) -> Option<oneshot::Receiver<Result<LazyStats, Failure>>> {
        let mut completion = self.completion.lock();
        match &completion.result {
            Some(_) => None,
            None => {
                let (sender, receiver) = oneshot::channel();
                completion.waiters.push(sender);
                Some(receiver)
            }
        }
    }
}

/// The background side of a lazy restore (from [`RestoredManager::lazy`](super::RestoredManager::lazy)).
///
/// Dropping it does not stop the restore (the memory depends on it); a deferred background
/// fill is started then.
pub struct LazyRestore {
    status: Arc<Status>,
    shared: std::sync::Weak<Shared>,
}

impl std::fmt::Debug for LazyRestore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyRestore")
            .field("finished", &self.is_finished())
            .field("stats", &self.stats())
            .finish()
    }
}

/// The identity of the RAM object (device, inode), to recognise its views.
fn file_id(fd: &impl AsFd) -> Option<(u64, u64)> {
    sparse_mmap::object_id(fd.as_fd()).ok()
}

/// The observer that registers each new view of the RAM object.
struct Observer(Arc<Shared>);

impl MapObserver for Observer {
    fn observes(&self, object: &Mappable) -> bool {
        self.0.object_id.is_some() && file_id(object) == self.0.object_id
    }

    fn mapped(&self, window: &SparseMapping, offset: usize, len: usize) -> io::Result<()> {
        self.0.uffd.register(window, offset, len)
    }
}

impl LazyRestore {
    /// Registers the RAM views of `manager` and starts the handler (and, with `background`,
    /// the filler).
    pub(crate) fn start(
        manager: &GuestMemoryManager,
        uffd: Option<Userfaultfd>,
        plan: Plan,
        progress: Option<Progress>,
        background: bool,
    ) -> Result<Self, SnapshotError> {
        let uffd = match uffd {
            Some(uffd) => uffd,
            None => new_userfaultfd()?,
        };
        let mapper = manager.va_mapper();
        let specs = manager.ram_specs.clone();
        let ram_size = specs
            .iter()
            .map(|spec| spec.file_offset + spec.range.len())
            .max()
            .unwrap_or(0);
        let pages = ram_size / PAGE_SIZE;
        let bits = |_| SnapshotError::LazyUnavailable {
            reason: "the page bitmaps cannot be allocated".into(),
        };
        let claimed = PageBits::new(pages).map_err(bits)?;
        let done = PageBits::new(pages).map_err(bits)?;
        let (target, object_id) = match &manager.ram_object {
            Some(object) => {
                let len =
                    usize::try_from(ram_size).map_err(|_| SnapshotError::LazyUnavailable {
                        reason: "RAM too large".into(),
                    })?;
                let helper = SparseMapping::new(len)
                    .and_then(|helper| {
                        helper.map_file(0, len, object.as_fd(), 0, true)?;
                        Ok(helper)
                    })
                    .map_err(|error| SnapshotError::io("map", "the RAM object", error))?;
                uffd.register(&helper, 0, len)
                    .map_err(|error| SnapshotError::io("register", "the RAM object", error))?;
                (Target::Helper(helper), file_id(object.as_ref()))
            }
            None => (Target::Window, None),
        };
        let stop =
            StopEvent::new().map_err(|error| SnapshotError::io("create", "an eventfd", error))?;
        let total = plan
            .pieces
            .iter()
            .filter(|piece| piece.source != Source::Zero)
            .map(|piece| piece.pages * PAGE_SIZE)
            .sum();
        let shared = Arc::new(Shared {
            uffd,
            layers: plan.layers,
            pieces: plan.pieces,
            specs: SpecIndex::new(&specs),
            window_base: manager.va_window_base(),
            target,
            claimed,
            done,
            object_id,
            mapper: mapper.clone(),
            stop,
            filler_started: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            cancelled: AtomicBool::new(false),
            manager_closing: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
            status: Arc::default(),
            total,
            progress,
            failure: Mutex::new(None),
            zeros: vec![0u8; PAGE].into_boxed_slice(),
        });
        // Register what is in place now (private RAM; views of the object mapped so far) and
        // every view placed from now on.
        let observer: Arc<dyn MapObserver> = Arc::new(Observer(shared.clone()));
        let registered = mapper.set_map_observer(Some(observer), |pieces| {
            for (range, object) in pieces {
                let observed = match object {
                    Some(object) => {
                        shared.object_id.is_some() && file_id(object.as_ref()) == shared.object_id
                    }
                    None => shared.object_id.is_none(),
                };
                if observed {
                    shared.uffd.register(
                        shared.mapper.window(),
                        window_usize(range.start()),
                        window_usize(range.len()),
                    )?;
                }
            }
            Ok::<(), io::Error>(())
        });
        if let Err(error) = registered {
            shared.teardown();
            return Err(SnapshotError::io("register", "guest RAM", error));
        }
        // The fault handler (detached: it stops when the restore is torn down).
        let handler = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("lazy-restore-faults".into())
            .spawn(move || serve_faults(handler));
        match spawned {
            Ok(thread) => shared.threads.lock().push(thread),
            Err(error) => {
                shared.teardown();
                return Err(SnapshotError::io(
                    "spawn",
                    "the lazy restore fault handler",
                    error,
                ));
            }
        }
        if background {
            shared.start_background();
        }
        Ok(Self {
            status: shared.status.clone(),
            shared: Arc::downgrade(&shared),
        })
    }

    /// Starts the background fill of a restore made with `defer_background_fill`.
    pub fn start_background(&self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.start_background();
        }
    }

    /// Whether every page has been restored and userfaultfd is no longer involved.
    pub fn is_finished(&self) -> bool {
        self.status.finished.load(Ordering::Acquire)
    }

    /// Whether the restore's machinery (threads, userfaultfd, snapshot files) is gone.
    #[cfg(test)]
    pub(crate) fn is_released(&self) -> bool {
        self.shared.strong_count() == 0
    }

    /// Reads the helper view of the RAM object at backing offset `offset` (`None` for private
    /// RAM, or once the restore is gone): a touch nothing else makes, for the handler's tests.
    #[cfg(test)]
    pub(crate) fn read_helper(
        &self,
        offset: usize,
        buffer: &mut [u8],
    ) -> Option<Result<(), sparse_mmap::SparseMappingError>> {
        let shared = self.shared.upgrade()?;
        match &shared.target {
            Target::Helper(helper) => Some(helper.read_at(offset, buffer)),
            Target::Window => None,
        }
    }

    /// Faults served and pages filled so far.
    pub fn stats(&self) -> LazyStats {
        self.status.stats()
    }

    /// Resolves when the restore has finished (every view unregistered), with its statistics,
    /// or with the first corrupt page it found ([`SnapshotError::Corrupt`]).
    pub fn wait(&self) -> impl Future<Output = Result<LazyStats, SnapshotError>> + Send + 'static {
        let receiver = match self.status.waiter() {
            Some(receiver) => Ok(receiver),
            None => Err(self
                .status
                .completion
                .lock()
                .result
                .clone()
                .unwrap_or(Ok(LazyStats::default()))),
        };
        async move {
            let result = match receiver {
                Err(result) => result,
                Ok(receiver) => receiver.await.unwrap_or(Err(Failure::Other {
                    op: "wait for",
                    what: "the lazy restore stopped".into(),
                })),
            };
            result.map_err(|failure| failure.to_error())
        }
    }
}

impl Drop for LazyRestore {
    fn drop(&mut self) {
        // The memory depends on the restore finishing.
        self.start_background();
    }
}

impl Shared {
    /// Starts the background filler (once; detached: it ends with the restore). Where no
    /// thread can be started, the fill runs on the calling thread.
    fn start_background(self: &Arc<Self>) {
        if self.filler_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let shared = self.clone();
        let spawned = std::thread::Builder::new()
            .name("lazy-restore-fill".into())
            .spawn(move || fill_all(shared));
        match spawned {
            Ok(thread) => self.threads.lock().push(thread),
            Err(_) => fill_all(self.clone()),
        }
    }

    fn fail(&self, error: &SnapshotError) {
        self.failure
            .lock()
            .get_or_insert(Failure::from_error(error));
    }

    /// Records a failure of a copy, unless the restore is being torn down (the views are then
    /// unregistered, and every page with data has been filled already); while the manager is
    /// being closed, the restore ends as cancelled instead (the close removed the view).
    fn copy_failed(&self, error: &SnapshotError) {
        if self.closing.load(Ordering::Acquire) {
            return;
        }
        if self.manager_closing.load(Ordering::Acquire) {
            self.failure.lock().get_or_insert(Failure::Cancelled);
            return;
        }
        self.fail(error);
    }

    /// The backing offset of a window address, if it is RAM.
    fn backing_offset(&self, address: usize) -> Option<u64> {
        let gpa = u64::try_from(address.checked_sub(self.window_base)?).ok()?;
        self.specs
            .at_gpa(gpa)
            .map(|spec| spec.file_offset + (gpa - spec.range.start()))
    }

    /// The mapping and offset in it that a fill of backing offset `offset` writes to.
    fn fill_destination(&self, offset: u64) -> Option<(&SparseMapping, usize)> {
        match self.target {
            Target::Helper(ref helper) => {
                let offset = usize::try_from(offset).ok().filter(|&o| o < helper.len())?;
                Some((helper, offset))
            }
            Target::Window => {
                let spec = self.specs.at_offset(offset)?;
                let gpa = spec.range.start() + (offset - spec.file_offset);
                Some((self.mapper.window(), usize::try_from(gpa).ok()?))
            }
        }
    }

    /// The registered mapping that faulting address `address` lies in (the window, or the
    /// helper view), and its offset there.
    fn locate(&self, address: usize) -> Option<(&SparseMapping, usize)> {
        let window = self.mapper.window();
        let helper = match &self.target {
            Target::Helper(helper) => Some(helper),
            Target::Window => None,
        };
        [Some(window), helper]
            .into_iter()
            .flatten()
            .find_map(|mapping| {
                let offset = address.checked_sub(mapping.as_ptr() as usize)?;
                (offset < mapping.len()).then_some((mapping, offset))
            })
    }

    /// The piece covering backing offset `offset`, if the snapshot has one.
    fn piece_at(&self, offset: u64) -> Option<Piece> {
        let index = self.pieces.partition_point(|piece| piece.end() <= offset);
        let piece = self
            .pieces
            .get(index)
            .filter(|piece| piece.start <= offset)?;
        Some(piece.slice((offset - piece.start) / PAGE_SIZE, 1))
    }

    /// Copies `data` to `offset` in `mapping` with `UFFDIO_COPY` (waking waiters there);
    /// `false` when a page is already present.
    fn copy(
        &self,
        mapping: &SparseMapping,
        offset: usize,
        data: &[u8],
    ) -> Result<bool, SnapshotError> {
        match self.uffd.copy(mapping, offset, data) {
            Ok(Copied::All) => Ok(true),
            Ok(Copied::Exists) => Ok(false),
            Err(error) => Err(SnapshotError::io("UFFDIO_COPY into", "guest RAM", error)),
        }
    }

    /// Serves a missing-page fault at `address`.
    fn serve_fault(&self, address: usize) {
        self.status.faults.fetch_add(1, Ordering::Relaxed);
        let page_address = address & !(PAGE - 1);
        let Some((mapping, mapping_offset)) = self.locate(page_address) else {
            // Outside every registered mapping (cannot happen: only the window's RAM views and
            // the helper view are registered); nothing this restore owns can be filled there.
            tracing::warn!(
                address,
                "a lazy restore fault outside its registered memory"
            );
            return;
        };
        // The helper view maps the whole object from offset 0; the window maps RAM by GPA.
        let backing = if std::ptr::eq(mapping, self.mapper.window()) {
            self.backing_offset(page_address)
        } else {
            u64::try_from(mapping_offset).ok()
        };
        let Some(offset) = backing else {
            // Not RAM (cannot happen: only RAM views are registered): never leave it waiting.
            let _ = self.copy(mapping, mapping_offset, &self.zeros);
            return;
        };
        let page = offset / PAGE_SIZE;
        if self.claimed.set(page) {
            let mut buffer = [0u8; PAGE];
            let data: &[u8] = match self.piece_at(offset) {
                Some(piece) if piece.source != Source::Zero => {
                    match read_verified(&self.layers, &piece, &mut buffer) {
                        Ok(()) => {
                            self.status.filled.fetch_add(1, Ordering::Relaxed);
                            &buffer
                        }
                        Err(error) => {
                            self.fail(&error);
                            &self.zeros
                        }
                    }
                }
                _ => &self.zeros,
            };
            if let Err(error) = self.copy(mapping, mapping_offset, data) {
                self.copy_failed(&error);
                let _ = self.uffd.wake(mapping, mapping_offset, PAGE);
            }
            self.done.set(page);
        } else {
            // Someone else fills (or filled, or decommitted) it.
            while !self.done.get(page) {
                std::thread::yield_now();
            }
            // Present: just wake. Missing again (decommitted): zeros.
            match self.copy(mapping, mapping_offset, &self.zeros) {
                Ok(true) => {}
                _ => {
                    let _ = self.uffd.wake(mapping, mapping_offset, PAGE);
                }
            }
        }
    }

    /// Claims the pages of backing range `[offset, offset + len)` for a decommit: none of them
    /// is filled from the snapshot afterwards (a fill in progress is waited for).
    pub(crate) fn claim_for_decommit(&self, offset: u64, len: u64) {
        for page in offset / PAGE_SIZE..(offset + len).div_ceil(PAGE_SIZE) {
            if self.claimed.set(page) {
                self.done.set(page);
            } else {
                while !self.done.get(page) {
                    std::thread::yield_now();
                }
            }
        }
    }

    /// Unregisters every view, removes the observer and the helper view, and stops the fault
    /// handler.
    fn teardown(&self) {
        self.closing.store(true, Ordering::Release);
        let uffd = &self.uffd;
        let object_id = self.object_id;
        let window = self.mapper.window();
        self.mapper.set_map_observer(None, |pieces| {
            for (range, object) in pieces {
                let observed = match object {
                    Some(object) => object_id.is_some() && file_id(object.as_ref()) == object_id,
                    None => object_id.is_none(),
                };
                if observed {
                    let (offset, len) = (window_usize(range.start()), window_usize(range.len()));
                    if let Err(error) = uffd.unregister(window, offset, len) {
                        tracing::warn!(%error, range = %range, "unregistering a RAM view failed");
                    }
                }
            }
        });
        if let Target::Helper(helper) = &self.target {
            let _ = self.uffd.unregister(helper, 0, helper.len());
            let _ = helper.unmap(0, helper.len());
        }
        let _ = self.stop.signal();
    }

    fn complete(&self) {
        let result = match self.failure.lock().clone() {
            Some(failure) => Err(failure),
            None => Ok(self.status.stats()),
        };
        self.status.finished.store(true, Ordering::Release);
        let mut completion = self.status.completion.lock();
        completion.result = Some(result.clone());
        for waiter in completion.waiters.drain(..) {
            let _ = waiter.send(result.clone());
        }
    }
}

/// The fault handler thread: serves page faults until told to stop.
fn serve_faults(shared: Arc<Shared>) {
    let mut faults = Vec::new();
    loop {
        let Ok(ready) = shared.uffd.wait(&shared.stop) else {
            return;
        };
        if ready.faults {
            faults.clear();
            if shared.uffd.read_faults(&mut faults).is_err() {
                continue;
            }
            for &address in &faults {
                if let Ok(address) = usize::try_from(address) {
                    shared.serve_fault(address);
                }
            }
        }
        if ready.stopped {
            return;
        }
    }
}

/// The background filler: fills every data page not yet claimed, then tears the restore down.
fn fill_all(shared: Arc<Shared>) {
    let mut buffer = vec![0u8; PAGE * FILL_PAGES];
    let mut reported = 0u64;
    'pieces: for piece in shared
        .pieces
        .iter()
        .filter(|piece| piece.source != Source::Zero)
    {
        let mut skip = 0;
        while skip < piece.pages {
            if shared.cancelled.load(Ordering::Acquire) {
                shared.failure.lock().get_or_insert(Failure::Cancelled);
                break 'pieces;
            }
            let count = (piece.pages - skip).min(FILL_PAGES as u64);
            let chunk = piece.slice(skip, count);
            skip += count;
            if let Err(error) = fill_chunk(&shared, &chunk, &mut buffer) {
                shared.fail(&error);
            }
            reported += count * PAGE_SIZE;
            report(shared.progress.as_ref(), reported, shared.total);
        }
    }
    shared.teardown();
    shared.complete();
}

/// Fills the unclaimed pages of `chunk` (one data piece of at most [`FILL_PAGES`] pages).
fn fill_chunk(shared: &Shared, chunk: &Piece, buffer: &mut [u8]) -> Result<(), SnapshotError> {
    let first_page = chunk.start / PAGE_SIZE;
    let pages = window_usize(chunk.pages).min(FILL_PAGES);
    let mine: Vec<bool> = (0..pages)
        .map(|index| shared.claimed.set(first_page + index as u64))
        .collect();
    if !mine.iter().any(|&mine| mine) {
        return Ok(());
    }
    let data = &mut buffer[..pages * PAGE];
    let verified = read_verified(&shared.layers, chunk, data);
    if let Err(error) = &verified {
        // Find the bad page(s) one by one; the good ones still go in.
        for (index, bytes) in data.chunks_exact_mut(PAGE).enumerate() {
            let page = chunk.slice(index as u64, 1);
            if read_verified(&shared.layers, &page, bytes).is_err() {
                bytes.fill(0);
            }
        }
        shared.fail(error);
    }
    let mut index = 0;
    while index < pages {
        if !mine[index] {
            index += 1;
            continue;
        }
        let run = mine[index..].iter().take_while(|&&mine| mine).count();
        let offset = chunk.start + index as u64 * PAGE_SIZE;
        let bytes = &data[index * PAGE..(index + run) * PAGE];
        let copied = match shared.fill_destination(offset) {
            None => Err(SnapshotError::Layout {
                dir: PathBuf::new(),
                what: format!("backing offset {offset:#x} of the snapshot is in no RAM region"),
            }),
            Some((mapping, start)) => match shared.copy(mapping, start, bytes) {
                Ok(true) => Ok(()),
                // A page in the run exists already: copy page by page.
                Ok(false) => {
                    bytes
                        .chunks_exact(PAGE)
                        .enumerate()
                        .try_for_each(|(page, page_bytes)| {
                            shared
                                .copy(mapping, start + page * PAGE, page_bytes)
                                .map(drop)
                        })
                }
                Err(error) => Err(error),
            },
        };
        // Done even on failure: a fault waiting for these pages must not wait forever (it
        // then fills the page with zeros; the failure is reported by `wait`).
        for page in index..index + run {
            shared.done.set(first_page + page as u64);
        }
        match copied {
            Ok(()) => {
                shared
                    .status
                    .filled
                    .fetch_add(run as u64, Ordering::Relaxed);
            }
            // Go on: the other runs' pages must be filled (and marked done) too.
            Err(error) => shared.copy_failed(&error),
        }
        index += run;
    }
    Ok(())
}

/// A decommit during a lazy restore claims its pages first (see [`Shared::claim_for_decommit`]).
#[derive(Clone)]
pub(crate) struct DecommitGuard {
    status: Arc<Status>,
    shared: std::sync::Weak<Shared>,
}

impl std::fmt::Debug for DecommitGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DecommitGuard").finish()
    }
}

impl DecommitGuard {
    pub(crate) fn new(restore: &LazyRestore) -> Self {
        Self {
            status: restore.status.clone(),
            shared: restore.shared.clone(),
        }
    }

    /// Resolves when the restore has finished (starting its background fill if it was
    /// deferred); at once when it has. A snapshot waits for this: pages not filled yet are
    /// neither data in the RAM object nor present in private memory.
    pub(crate) fn finished(
        &self,
    ) -> impl Future<Output = Result<(), SnapshotError>> + Send + 'static {
        let receiver = self.status.waiter();
        if receiver.is_some() {
            if let Some(shared) = self.shared.upgrade() {
                shared.start_background();
            }
        }
        let status = self.status.clone();
        async move {
            let result = match receiver {
                None => status.completion.lock().result.clone(),
                Some(receiver) => receiver.await.ok(),
            };
            match result {
                Some(Err(failure)) => Err(failure.to_error()),
                Some(Ok(_)) | None => Ok(()),
            }
        }
    }

    /// The manager's close has begun: until [`cancel`](Self::cancel) the restore goes on serving
    /// faults (an access racing the close gets the snapshot's data, or fails once its view is
    /// gone, never zeros), and a copy failing because the close removed its view ends the
    /// restore as cancelled, not with that I/O error.
    pub(crate) fn manager_closing(&self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.manager_closing.store(true, Ordering::Release);
        }
    }

    /// Stops a restore that is still running (the manager is being closed): the filler stops at
    /// its next chunk, every view is unregistered, and the handler and filler threads are
    /// joined before the future resolves, so the userfaultfd and the snapshot's files are
    /// closed. Waiters get `ManagerGone`; pages not filled by then read as zeros.
    pub(crate) fn cancel(&self) -> impl Future<Output = ()> + Send + 'static {
        let pending = self.shared.upgrade().map(|shared| {
            shared.cancelled.store(true, Ordering::Release);
            let receiver = shared.status.waiter();
            // A deferred fill starts now, sees the cancel and tears the restore down.
            shared.start_background();
            (shared, receiver)
        });
        async move {
            let Some((shared, receiver)) = pending else {
                return;
            };
            if let Some(receiver) = receiver {
                let _ = receiver.await;
            }
            let threads = std::mem::take(&mut *shared.threads.lock());
            drop(shared);
            for thread in threads {
                if thread.thread().id() != std::thread::current().id() {
                    let _ = thread.join();
                }
            }
        }
    }

    /// Claims the backing pages of GPA `range` if the restore is still running.
    pub(crate) fn claim(&self, range: memory_range::MemoryRange) {
        if self.status.finished.load(Ordering::Acquire) {
            return;
        }
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        for spec in shared.specs.overlapping(range.start(), range.end()) {
            let (start, end) = (
                range.start().max(spec.range.start()),
                range.end().min(spec.range.end()),
            );
            if start < end {
                shared.claim_for_decommit(
                    spec.file_offset + (start - spec.range.start()),
                    end - start,
                );
            }
        }
    }
}
