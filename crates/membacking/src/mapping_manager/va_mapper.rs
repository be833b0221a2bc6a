//! The VA mapper: one reserved window of host VA per process and manager, into
//! which mappings are placed on demand.
//!
//! The window starts inaccessible. When something needs a range — a guest-memory access that
//! faulted, or a partition mapper populating a region before mapping it — the mapper registers
//! a *waiter* for the range and asks the mapping manager to `SendMappings`. The manager answers
//! with `Map` messages (the whole mapping, never a single page, so one fault maps a whole RAM
//! region or device mapping with one `mmap`) and `NoMapping` messages for holes, in ascending
//! address order; each answer advances or fails the waiters it concerns. Invalidations arrive as
//! `Unmap` messages that are acknowledged once the VA is inaccessible again.
//!
//! Messages are processed strictly in arrival order, one at a time, by whichever thread gets to
//! them first: the mapping manager's thread as it delivers them (`deliver`, when nobody else
//! is processing: no wake-up of the mapper thread), a thread blocked in the fault path waiting
//! for its answer (which saves a thread hop on a first touch), or the mapper's own thread for
//! what arrived while another thread held the queue. The mapper thread gives a waiting
//! faulting thread a short head start.
//!
//! Locked pages are kept as they were while locked; see the `va_state` module.
//!
//! When the mapping manager goes away (`Close`), the mapper refuses new waiters, fails the
//! current ones, and returns the whole window (except locked pages) to the inaccessible state.
//! When the last reference to the [`VaMapper`] goes, it deregisters from the mapping manager,
//! stops its thread and releases the window.

use super::va_state::Backing;
use super::va_state::VaOp;
use super::va_state::VaState;
use super::va_state::PAGE_SIZE;
use super::MapperId;
use super::MappingManagerClient;
use super::SharedObject;
use crate::error::ManagerGone;
use crate::error::NoMapping;
use crate::error::ReadOnlyMapping;
use crate::error::VaMapperError;
use futures::channel::oneshot;
use guestmem::GuestMemoryBackingError;
use guestmem::GuestMemoryErrorKind;
use guestmem::PageFaultError;
use memory_range::flatten_ranges;
use memory_range::MemoryRange;
use parking_lot::Condvar;
use parking_lot::Mutex;
use parking_lot::MutexGuard;
use sparse_mmap::Mappable;
use sparse_mmap::SparseMapping;
use sparse_mmap::SparseMappingError;
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Context;
use std::task::Poll;
use std::task::Waker;
use std::thread::JoinHandle;
use std::time::Duration;
use std::time::Instant;

/// `range` of the VA window as host offsets `(start, len)`. The window is reserved address
/// space of this process, so every range inside it fits a `usize`; one that does not becomes
/// `usize::MAX`, which the window refuses as out of bounds.
fn window_span(range: MemoryRange) -> (usize, usize) {
    let host = |value: u64| usize::try_from(value).unwrap_or(usize::MAX);
    (host(range.start()), host(range.len()))
}

/// How long the mapper thread leaves queued messages to a faulting thread that waits for them.
const FAULT_THREAD_HEAD_START: Duration = Duration::from_millis(2);

/// How many events the per-mapper event log keeps.
const EVENT_LOG_CAPACITY: usize = 4096;

/// One mapping as the mapping manager sends it to a mapper.
#[derive(Debug, Clone)]
pub(crate) struct MappingParams {
    /// The GPA (= window offset) range.
    pub range: MemoryRange,
    /// The object to map.
    pub object: SharedObject,
    /// The object offset of the range's first byte.
    pub file_offset: u64,
    /// Whether the view is writable.
    pub writable: bool,
}

/// Merges each run of `Map` messages whose views continue one another (the same object, each
/// range starting where the previous one ends, at the object offset that follows, with the same
/// writability) into one message, so that the run is one system call; other messages keep their
/// place.
pub(crate) fn merge_adjacent_maps(messages: Vec<MapperMessage>) -> Vec<MapperMessage> {
    let mut merged: Vec<MapperMessage> = Vec::with_capacity(messages.len());
    for message in messages {
        if let (Some(MapperMessage::Map(previous)), MapperMessage::Map(next)) =
            (merged.last_mut(), &message)
        {
            let continues = Arc::ptr_eq(&previous.object, &next.object)
                && previous.writable == next.writable
                && previous.range.end() == next.range.start()
                && previous.file_offset.checked_add(previous.range.len()) == Some(next.file_offset);
            if continues {
                previous.range = MemoryRange::new(previous.range.start()..next.range.end());
                continue;
            }
        }
        merged.push(message);
    }
    merged
}

/// A message from the mapping manager to a mapper.
#[derive(Debug)]
pub(crate) enum MapperMessage {
    /// Map the whole mapping.
    Map(MappingParams),
    /// Nothing is mapped in the range.
    NoMapping(MemoryRange),
    /// Return the ranges to the inaccessible state, then acknowledge (an error names the range
    /// that failed).
    Unmap(Vec<MemoryRange>, oneshot::Sender<Result<(), String>>),
    /// The mapping manager is gone; acknowledged (if asked) once the window is released.
    Close(Option<oneshot::Sender<()>>),
}

/// A message a mapper received, as its event log shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapperEvent {
    /// A `Map` of `range` from `file_offset`, writable or not.
    Map {
        /// The mapped range.
        range: MemoryRange,
        /// The object offset.
        file_offset: u64,
        /// Whether the view is writable.
        writable: bool,
    },
    /// A `NoMapping` for `range`.
    NoMapping(MemoryRange),
    /// An `Unmap` of `range`.
    Unmap(MemoryRange),
    /// The mapping manager went away.
    Close,
}

/// Why a mapping request failed.
#[derive(Debug, Clone)]
pub(crate) enum RequestError {
    /// Part of the range has no mapping (or no writable one, for a write): the error names the
    /// requested range; `hole` is the part the mapping manager reported unmapped.
    NoMapping(NoMapping, MemoryRange),
    /// Part of the range is mapped read-only and the request is a write: `hole` is that part.
    ReadOnly(ReadOnlyMapping, MemoryRange),
    /// The mapping manager is gone.
    ManagerGone,
}

/// A registered request for a range.
#[derive(Debug)]
struct Waiter {
    id: u64,
    requested: MemoryRange,
    cur: u64,
    need_write: bool,
    result: Option<Result<(), RequestError>>,
    waker: Option<Waker>,
}

impl Waiter {
    fn finish(&mut self, result: Result<(), RequestError>) {
        self.result = Some(result);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// The mapper's inbox and waiters.
///
/// A batch that places many regions registers a waiter for each and gets an answer for each,
/// so the waiters are indexed: by id (for the request that polls its result) and, while they
/// wait, by cursor (for an answer, which concerns the waiters whose cursor lies in its range).
/// Registering, answering and collecting cost O(log n) plus the waiters concerned, never a
/// pass over all of them.
#[derive(Debug, Default)]
struct Queue {
    messages: VecDeque<MapperMessage>,
    waiters: BTreeMap<u64, Waiter>,
    /// `(cursor, id)` of every waiter without a result.
    waiting: BTreeSet<(u64, u64)>,
    /// A thread is processing messages (the rest wait).
    processing: bool,
    /// The mapping manager is gone: no new waiters.
    closed: bool,
    /// The mapper is being dropped: the thread exits and new messages are discarded.
    stopped: bool,
    /// Threads blocked in the fault path, which process messages themselves.
    sync_waiters: usize,
    next_waiter: u64,
    /// Waiters visited by answers (tests only, see `Queue::work`).
    #[cfg(test)]
    work: u64,
}

impl Queue {
    /// Applies an answer for `range` (`writable` = `None` for no mapping) to every waiter whose
    /// cursor lies inside it.
    fn wake(&mut self, range: MemoryRange, writable: Option<bool>) {
        let concerned: Vec<(u64, u64)> = self
            .waiting
            .range((range.start(), 0)..(range.end(), 0))
            .copied()
            .collect();
        #[cfg(test)]
        {
            self.work += 1 + concerned.len() as u64;
        }
        for key in concerned {
            self.waiting.remove(&key);
            let Some(waiter) = self.waiters.get_mut(&key.1) else {
                continue;
            };
            match writable {
                Some(writable) if writable || !waiter.need_write => {
                    waiter.cur = waiter.requested.end().min(range.end());
                    if waiter.cur == waiter.requested.end() {
                        waiter.finish(Ok(()));
                    } else {
                        self.waiting.insert((waiter.cur, waiter.id));
                    }
                }
                _ => {
                    let requested = waiter.requested;
                    let hole = MemoryRange::new(waiter.cur..range.end().min(requested.end()));
                    waiter.finish(Err(if writable.is_some() {
                        RequestError::ReadOnly(ReadOnlyMapping(requested), hole)
                    } else {
                        RequestError::NoMapping(NoMapping(requested), hole)
                    }));
                }
            }
        }
    }

    fn close(&mut self) {
        self.closed = true;
        for (_, id) in std::mem::take(&mut self.waiting) {
            if let Some(waiter) = self.waiters.get_mut(&id) {
                waiter.finish(Err(RequestError::ManagerGone));
            }
        }
    }

    fn register(&mut self, range: MemoryRange, need_write: bool) -> Result<u64, RequestError> {
        if self.closed || self.stopped {
            return Err(RequestError::ManagerGone);
        }
        let id = self.next_waiter;
        self.next_waiter += 1;
        self.waiters.insert(
            id,
            Waiter {
                id,
                requested: range,
                cur: range.start(),
                need_write,
                result: None,
                waker: None,
            },
        );
        self.waiting.insert((range.start(), id));
        Ok(id)
    }

    /// Removes the waiter and returns its result, if it has one.
    fn take_result(&mut self, id: u64) -> Option<Result<(), RequestError>> {
        let waiter = self.waiters.get(&id)?;
        waiter.result.as_ref()?;
        self.waiters.remove(&id).and_then(|waiter| waiter.result)
    }

    fn remove(&mut self, id: u64) {
        if let Some(waiter) = self.waiters.remove(&id) {
            self.waiting.remove(&(waiter.cur, id));
        }
    }

    /// The waiters visited by answers so far, plus one per answer.
    #[cfg(test)]
    fn work(&self) -> u64 {
        self.work
    }
}

/// What handling a message did, for the waiters.
enum Handled {
    Wake(MemoryRange, Option<bool>),
    Closed(Option<oneshot::Sender<()>>),
    Nothing,
}

/// The state a mapper's handle, its thread and the mapping manager share.
pub(crate) struct MapperShared {
    window: SparseMapping,
    private: bool,
    queue: Mutex<Queue>,
    cond: Condvar,
    va: Mutex<VaState<Mappable>>,
    events: Mutex<VecDeque<(u64, MapperEvent)>>,
    /// Told about file mappings before they become accessible (a lazy restore).
    observer: Mutex<Option<Arc<dyn MapObserver>>>,
}

/// Sees the file mappings a mapper places, while they are still inaccessible: a lazy restore
/// registers the views of the RAM object with userfaultfd before anything can touch them.
pub(crate) trait MapObserver: Send + Sync {
    /// Whether mappings of `object` are to be observed.
    fn observes(&self, object: &Mappable) -> bool;
    /// The view at `offset..offset + len` of `window` (the mapper's window) was just placed,
    /// inaccessible; it becomes accessible when this returns `Ok`.
    fn mapped(&self, window: &SparseMapping, offset: usize, len: usize) -> io::Result<()>;
}

impl std::fmt::Debug for MapperShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapperShared")
            .field("base", &self.window.as_ptr())
            .field("len", &self.window.len())
            .field("private", &self.private)
            .finish_non_exhaustive()
    }
}

impl MapperShared {
    /// The window length.
    pub(crate) fn len(&self) -> u64 {
        self.window.len() as u64
    }

    /// Queues a message (dropped at once, with its acknowledgement, once the mapper stops).
    pub(crate) fn push(&self, message: MapperMessage) {
        let mut queue = self.queue.lock();
        if queue.stopped {
            return;
        }
        queue.messages.push_back(message);
        drop(queue);
        self.cond.notify_all();
    }

    /// Queues `messages` and, unless another thread is processing the queue, carries them out
    /// on the calling thread: they are a few short system calls, cheaper than waking the
    /// mapper thread and waiting for it (two thread hand-offs).
    pub(crate) fn deliver(&self, messages: impl IntoIterator<Item = MapperMessage>) {
        let mut queue = self.queue.lock();
        if queue.stopped {
            return;
        }
        queue.messages.extend(messages);
        // When another thread is processing, it takes these too before it stops.
        self.process(&mut queue);
    }

    fn log(&self, event: MapperEvent) {
        let mut events = self.events.lock();
        if events.len() == EVENT_LOG_CAPACITY {
            events.pop_front();
        }
        events.push_back((virt::next_sequence_number(), event));
    }

    /// Processes queued messages until the queue is empty, unless another thread already does.
    /// Returns whether it processed anything.
    fn process(&self, queue: &mut MutexGuard<'_, Queue>) -> bool {
        if queue.processing || queue.messages.is_empty() {
            return false;
        }
        queue.processing = true;
        while let Some(message) = queue.messages.pop_front() {
            let handled = MutexGuard::unlocked(queue, || self.handle(message));
            match handled {
                Handled::Wake(range, writable) => queue.wake(range, writable),
                Handled::Closed(ack) => {
                    queue.close();
                    if let Some(ack) = ack {
                        let _ = ack.send(());
                    }
                }
                Handled::Nothing => {}
            }
        }
        queue.processing = false;
        // Threads blocked for a mapping, and the mapper thread once the manager is gone, must
        // look again; the mapper thread waiting for messages need not (the queue is empty).
        if queue.sync_waiters > 0 || queue.closed || queue.stopped {
            self.cond.notify_all();
        }
        true
    }

    /// Carries out one message on the window.
    fn handle(&self, message: MapperMessage) -> Handled {
        match message {
            MapperMessage::Map(params) => {
                self.log(MapperEvent::Map {
                    range: params.range,
                    file_offset: params.file_offset,
                    writable: params.writable,
                });
                let backing = Backing::File {
                    object: params.object,
                    file_offset: params.file_offset,
                    writable: params.writable,
                };
                let mut va = self.va.lock();
                let ops = va.plan_map(params.range, &backing);
                match self.carry_out(&mut va, ops) {
                    Ok(()) => Handled::Wake(params.range, Some(params.writable)),
                    Err(error) => {
                        tracing::error!(
                            range = %params.range,
                            error = &error as &dyn std::error::Error,
                            "mapping into the VA window failed"
                        );
                        Handled::Wake(params.range, None)
                    }
                }
            }
            MapperMessage::NoMapping(range) => {
                self.log(MapperEvent::NoMapping(range));
                Handled::Wake(range, None)
            }
            MapperMessage::Unmap(mut ranges, ack) => {
                for &range in &ranges {
                    self.log(MapperEvent::Unmap(range));
                }
                let result = {
                    let mut va = self.va.lock();
                    // Touching ranges become one system call.
                    ranges.sort_by_key(MemoryRange::start);
                    flatten_ranges(ranges).try_for_each(|range| {
                        let ops = va.plan_unmap(range);
                        self.carry_out(&mut va, ops)
                            .map_err(|error| format!("{range}: {error}"))
                    })
                };
                // The mapping manager may have stopped waiting; nothing to do then.
                let _ = ack.send(result);
                Handled::Nothing
            }
            MapperMessage::Close(ack) => {
                self.log(MapperEvent::Close);
                self.release_window();
                Handled::Closed(ack)
            }
        }
    }

    /// Returns the whole window, except locked pages, to the inaccessible state.
    fn release_window(&self) {
        let mut va = self.va.lock();
        let ops = va.plan_unmap(MemoryRange::new(0..self.len() & !(PAGE_SIZE - 1)));
        if let Err(error) = self.carry_out(&mut va, ops) {
            tracing::error!(
                error = &error as &dyn std::error::Error,
                "releasing the VA window failed"
            );
        }
    }

    /// Performs `ops` on the window and records each in `va`.
    fn carry_out(&self, va: &mut VaState<Mappable>, ops: Vec<VaOp<Mappable>>) -> io::Result<()> {
        for op in ops {
            let result = match &op {
                VaOp::Unmap(range) => {
                    let (start, len) = window_span(*range);
                    self.window.unmap(start, len)
                }
                VaOp::Map(
                    range,
                    Backing::File {
                        object,
                        file_offset,
                        writable,
                    },
                ) => match self.observer.lock().clone() {
                    Some(observer) if observer.observes(object) => self.map_observed(
                        *range,
                        object,
                        *file_offset,
                        *writable,
                        observer.as_ref(),
                    ),
                    _ => {
                        let (start, len) = window_span(*range);
                        self.window
                            .map_file(start, len, object.as_ref(), *file_offset, *writable)
                    }
                },
                VaOp::Map(range, Backing::Private) => {
                    let (start, len) = window_span(*range);
                    self.window.alloc(start, len)
                }
            };
            match result {
                Ok(()) => va.record(&op),
                Err(error) => {
                    // A failed fixed mapping may have removed what was there.
                    let range = match &op {
                        VaOp::Unmap(range) | VaOp::Map(range, _) => *range,
                    };
                    va.record(&VaOp::Unmap(range));
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    /// Places a file view inaccessible, lets `observer` see it, then opens it up.
    fn map_observed(
        &self,
        range: MemoryRange,
        object: &Mappable,
        file_offset: u64,
        writable: bool,
        observer: &dyn MapObserver,
    ) -> io::Result<()> {
        let (offset, len) = window_span(range);
        self.window
            .map_file_inaccessible(offset, len, object, file_offset)?;
        if let Err(error) = observer
            .mapped(&self.window, offset, len)
            .and_then(|()| self.window.set_writable(offset, len, writable))
        {
            // Back to the reservation's inaccessible state (the caller records an unmap).
            let _ = self.window.unmap(offset, len);
            return Err(error);
        }
        Ok(())
    }

    /// The mapper thread: processes messages (leaving a head start to faulting threads that
    /// wait for them) until the mapper stops or the mapping manager is gone.
    fn run(&self) {
        let mut queue = self.queue.lock();
        let mut deferred_since: Option<Instant> = None;
        loop {
            if queue.stopped {
                queue.messages.clear();
                break;
            }
            if queue.closed && queue.messages.is_empty() && !queue.processing {
                break;
            }
            if !queue.messages.is_empty() && !queue.processing {
                if queue.sync_waiters > 0 {
                    let since = *deferred_since.get_or_insert_with(Instant::now);
                    let deadline = since + FAULT_THREAD_HEAD_START;
                    if Instant::now() < deadline {
                        self.cond.wait_until(&mut queue, deadline);
                        continue;
                    }
                }
                deferred_since = None;
                self.process(&mut queue);
                continue;
            }
            deferred_since = None;
            self.cond.wait(&mut queue);
        }
    }
}

/// A VA mapper: the reserved window of one manager in this process.
///
/// Shared through `Arc`; the accessor of
/// [`GuestMemoryClient::guest_memory`](crate::GuestMemoryClient::guest_memory) and the
/// partition mappers hold it. Dropping the last
/// reference deregisters it from the mapping manager, stops its thread and frees the window.
#[derive(Debug)]
pub struct VaMapper {
    shared: Arc<MapperShared>,
    id: MapperId,
    manager: MappingManagerClient,
    thread: Option<JoinHandle<()>>,
}

impl VaMapper {
    /// Reserves a window of at least `len` bytes, registers with the mapping manager and starts
    /// the mapper thread.
    pub(crate) async fn new(
        manager: MappingManagerClient,
        len: u64,
        private: bool,
    ) -> Result<Self, VaMapperError> {
        let window_len = usize::try_from(len).map_err(|_| {
            VaMapperError::Reserve(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the window length does not fit the address space",
            ))
        })?;
        let window = SparseMapping::new(window_len).map_err(VaMapperError::Reserve)?;
        window.set_name(0, window.len(), "guest-memory");
        let shared = Arc::new(MapperShared {
            window,
            private,
            queue: Mutex::new(Queue::default()),
            cond: Condvar::new(),
            va: Mutex::new(VaState::default()),
            events: Mutex::new(VecDeque::new()),
            observer: Mutex::new(None),
        });
        let id = manager
            .add_mapper(shared.clone())
            .await
            .map_err(VaMapperError::MemoryManagerGone)?;
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("mapper".into())
            .spawn(move || thread_shared.run());
        let thread = match thread {
            Ok(thread) => thread,
            Err(error) => {
                manager.remove_mapper(id);
                return Err(VaMapperError::Thread(error));
            }
        };
        Ok(Self {
            shared,
            id,
            manager,
            thread: Some(thread),
        })
    }

    /// The mapper's id in the mapping manager.
    pub fn id(&self) -> MapperId {
        self.id
    }

    /// The base of the window.
    pub fn base(&self) -> *mut u8 {
        self.shared.window.as_ptr().cast()
    }

    /// The window itself (for operations bound to the address space it owns, such as a lazy
    /// restore's userfaultfd registrations and fills).
    pub(crate) fn window(&self) -> &SparseMapping {
        &self.shared.window
    }

    /// Copies the window's bytes at `offset` into `buffer` with the fault-safe copy. Nothing is
    /// mapped on demand: a page not in place fails (for pages known to be committed, such as
    /// private RAM).
    pub(crate) fn read_at(&self, offset: u64, buffer: &mut [u8]) -> Result<(), SparseMappingError> {
        let offset = usize::try_from(offset).map_err(|_| SparseMappingError::OutOfBounds)?;
        self.shared.window.read_at(offset, buffer)
    }

    /// Copies `data` into the window at `offset` with the fault-safe copy (see
    /// [`Self::read_at`]).
    pub(crate) fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), SparseMappingError> {
        let offset = usize::try_from(offset).map_err(|_| SparseMappingError::OutOfBounds)?;
        self.shared.window.write_at(offset, data)
    }

    /// The window length `L` (the requested length rounded up).
    pub fn len(&self) -> u64 {
        self.shared.len()
    }

    /// Always false: a window is never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether the window holds private RAM (private memory mode).
    pub fn is_private(&self) -> bool {
        self.shared.private
    }

    /// Whether the mapping manager is gone (the window no longer receives mappings).
    pub fn is_closed(&self) -> bool {
        self.shared.queue.lock().closed
    }

    /// The messages received so far (at most the last 4096), with their process-wide sequence
    /// numbers (shared with `RecordingPartition` logs).
    pub fn events(&self) -> Vec<(u64, MapperEvent)> {
        self.shared.events.lock().iter().cloned().collect()
    }

    /// The mapped pieces of the window: range and whether each is writable (for inspection).
    pub fn mapped_ranges(&self) -> Vec<(MemoryRange, bool)> {
        self.shared
            .va
            .lock()
            .pieces()
            .map(|(range, backing)| (range, backing.writable()))
            .collect()
    }

    /// Whether all of `range` is mapped now (writable, if `need_write`).
    pub(crate) fn covers(&self, range: MemoryRange, need_write: bool) -> bool {
        self.shared.va.lock().covers(range, need_write)
    }

    fn register(&self, range: MemoryRange, need_write: bool) -> Result<u64, RequestError> {
        let id = self.shared.queue.lock().register(range, need_write)?;
        if !self.manager.send_mappings(self.id, range) {
            self.shared.queue.lock().remove(id);
            return Err(RequestError::ManagerGone);
        }
        Ok(id)
    }

    /// Requests `range` and blocks until it is mapped (writable, if `need_write`) or known not
    /// to be. While waiting, the calling thread processes the mapper's messages itself.
    pub(crate) fn request_sync(
        &self,
        range: MemoryRange,
        need_write: bool,
    ) -> Result<(), RequestError> {
        if range.is_empty() {
            return Ok(());
        }
        let id = self.register(range, need_write)?;
        let mut queue = self.shared.queue.lock();
        queue.sync_waiters += 1;
        let result = loop {
            if let Some(result) = queue.take_result(id) {
                break result;
            }
            if !self.shared.process(&mut queue) {
                self.shared.cond.wait(&mut queue);
            }
        };
        queue.sync_waiters -= 1;
        result
    }

    /// Requests `range` and waits asynchronously (for the partition mappers on the manager
    /// thread, which must never block).
    pub(crate) fn request(self: &Arc<Self>, range: MemoryRange, need_write: bool) -> RequestFuture {
        let state = if range.is_empty() {
            RequestState::Ready(Ok(()))
        } else {
            match self.register(range, need_write) {
                Ok(id) => RequestState::Waiting(id),
                Err(error) => RequestState::Ready(Err(error)),
            }
        };
        RequestFuture {
            shared: self.shared.clone(),
            state,
        }
    }

    /// Commits private read-write memory over `range` of the window (private RAM mode).
    pub(crate) fn commit_private(&self, range: MemoryRange) -> io::Result<()> {
        let mut va = self.shared.va.lock();
        let result = self
            .shared
            .carry_out(&mut va, vec![VaOp::Map(range, Backing::Private)]);
        drop(va);
        result?;
        let (start, len) = window_span(range);
        self.shared.window.set_name(start, len, "guest-ram-private");
        Ok(())
    }

    /// Marks `range` of the window eligible for transparent huge pages.
    pub(crate) fn advise_hugepages(&self, range: MemoryRange) -> io::Result<()> {
        let (start, len) = window_span(range);
        self.shared.window.madvise_hugepage(start, len)
    }

    /// Releases the pages of `range` (private memory reads back as zeros).
    pub(crate) fn decommit(&self, range: MemoryRange) -> io::Result<()> {
        let (start, len) = window_span(range);
        self.shared.window.decommit(start, len)
    }

    /// Locks the pages `gpns` in the window (D7): each is made mapped (requesting its mapping
    /// if an invalidation got in since it was probed) and then kept as it is until unlocked.
    pub(crate) fn lock_pages(&self, gpns: &[u64]) -> Result<(), GuestMemoryBackingError> {
        const ATTEMPTS: usize = 64;
        for _ in 0..ATTEMPTS {
            let missing = {
                let mut va = self.shared.va.lock();
                let missing = va.unmapped_pages(gpns);
                if missing.is_empty() {
                    va.lock(gpns);
                    return Ok(());
                }
                missing
            };
            for gpn in missing {
                let Some(page) = gpn.checked_mul(PAGE_SIZE).filter(|page| {
                    page.checked_add(PAGE_SIZE)
                        .is_some_and(|end| end <= self.len())
                }) else {
                    return Err(GuestMemoryBackingError::new(
                        GuestMemoryErrorKind::OutOfRange,
                        u64::MAX,
                        NoMapping(MemoryRange::EMPTY),
                    ));
                };
                let range = MemoryRange::new(page..page + PAGE_SIZE);
                if let Err(error) = self.resolve_fault(range, false) {
                    return Err(GuestMemoryBackingError::new(error.kind(), page, error));
                }
            }
        }
        Err(GuestMemoryBackingError::other(
            u64::MAX,
            "pages kept being unmapped while they were locked",
        ))
    }

    /// The fault path for `range`: fails at once when the manager is gone or in
    /// private mode; otherwise requests the range and waits.
    pub(crate) fn resolve_fault(
        &self,
        range: MemoryRange,
        need_write: bool,
    ) -> Result<(), PageFaultError> {
        if self.is_closed() {
            return Err(RequestError::ManagerGone.into());
        }
        if self.shared.private {
            return Err(PageFaultError::other(UnexpectedPrivateFault));
        }
        let first_page =
            MemoryRange::new(range.start()..range.end().min(range.start() + PAGE_SIZE));
        if self.covers(first_page, need_write) {
            // Another thread mapped it since the access faulted.
            return Ok(());
        }
        self.request_sync(range, need_write).map_err(Into::into)
    }

    /// Before an access whose buffer is yet to be allocated: requests `range` as a fault would
    /// (so what is there gets mapped); a failure's `hole` is the first part of it that has no
    /// mapping. In private mode the kernel resolves every RAM access and nothing is asked.
    pub(crate) fn check_access(
        &self,
        range: MemoryRange,
        need_write: bool,
    ) -> Result<(), RequestError> {
        if self.shared.private || self.covers(range, need_write) {
            return Ok(());
        }
        if self.is_closed() {
            return Err(RequestError::ManagerGone);
        }
        self.request_sync(range, need_write)
    }

    /// Releases one lock on each page of `gpns`; pages whose last lock goes get the change
    /// deferred for them (an unmap, or a newer mapping).
    pub(crate) fn unlock_pages(&self, gpns: &[u64]) {
        let mut va = self.shared.va.lock();
        let (ops, not_locked) = va.unlock(gpns);
        if not_locked > 0 {
            tracing::warn!(not_locked, "unlocking pages that were not locked");
        }
        if let Err(error) = self.shared.carry_out(&mut va, ops) {
            tracing::error!(
                error = &error as &dyn std::error::Error,
                "applying a change deferred for locked pages failed"
            );
        }
    }

    /// The number of locked pages.
    pub fn locked_page_count(&self) -> usize {
        self.shared.va.lock().locked_page_count()
    }

    /// Installs (or with `None` removes) the observer of file mappings, then runs `then` with
    /// the VA state locked (no mapping changes while it runs), e.g. to register or unregister
    /// the views already in place.
    pub(crate) fn set_map_observer<R>(
        &self,
        observer: Option<Arc<dyn MapObserver>>,
        then: impl FnOnce(&[(MemoryRange, Option<Arc<Mappable>>)]) -> R,
    ) -> R {
        let va = self.shared.va.lock();
        *self.shared.observer.lock() = observer;
        let pieces: Vec<(MemoryRange, Option<Arc<Mappable>>)> = va
            .pieces()
            .map(|(range, backing)| match backing {
                Backing::File { object, .. } => (range, Some(object.clone())),
                Backing::Private => (range, None),
            })
            .collect();
        let result = then(&pieces);
        drop(va);
        result
    }
}

impl Drop for VaMapper {
    fn drop(&mut self) {
        self.shared.queue.lock().stopped = true;
        self.shared.cond.notify_all();
        self.manager.remove_mapper(self.id);
        if let Some(thread) = self.thread.take() {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

enum RequestState {
    Waiting(u64),
    Ready(Result<(), RequestError>),
    Done,
}

/// The future of [`VaMapper::request`]; dropping it abandons the request.
pub(crate) struct RequestFuture {
    shared: Arc<MapperShared>,
    state: RequestState,
}

impl Future for RequestFuture {
    type Output = Result<(), RequestError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match std::mem::replace(&mut self.state, RequestState::Done) {
            RequestState::Ready(result) => Poll::Ready(result),
            RequestState::Done => Poll::Ready(Err(RequestError::ManagerGone)),
            RequestState::Waiting(id) => {
                let mut queue = self.shared.queue.lock();
                if let Some(result) = queue.take_result(id) {
                    return Poll::Ready(result);
                }
                match queue.waiters.get_mut(&id) {
                    Some(waiter) => waiter.waker = Some(cx.waker().clone()),
                    None => return Poll::Ready(Err(RequestError::ManagerGone)),
                }
                drop(queue);
                self.state = RequestState::Waiting(id);
                Poll::Pending
            }
        }
    }
}

impl Drop for RequestFuture {
    fn drop(&mut self) {
        if let RequestState::Waiting(id) = self.state {
            self.shared.queue.lock().remove(id);
        }
    }
}

impl From<RequestError> for PageFaultError {
    fn from(error: RequestError) -> Self {
        match error {
            RequestError::NoMapping(no_mapping, _) => {
                PageFaultError::new(GuestMemoryErrorKind::OutOfRange, no_mapping)
            }
            RequestError::ReadOnly(read_only, _) => {
                PageFaultError::new(GuestMemoryErrorKind::OutOfRange, read_only)
            }
            RequestError::ManagerGone => {
                PageFaultError::new(GuestMemoryErrorKind::OutOfRange, ManagerGone)
            }
        }
    }
}

/// A fault in private RAM mode, where the kernel resolves every RAM fault itself.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("unexpected page fault in private RAM mode")]
pub struct UnexpectedPrivateFault;

#[cfg(test)]
mod tests {
    use super::*;

    fn map(
        object: &SharedObject,
        start: u64,
        end: u64,
        file_offset: u64,
        writable: bool,
    ) -> MapperMessage {
        MapperMessage::Map(MappingParams {
            range: MemoryRange::new(start..end),
            object: object.clone(),
            file_offset,
            writable,
        })
    }

    /// `(range, file_offset, writable)` of a `Map`, or the range of a `NoMapping`.
    fn shape(message: &MapperMessage) -> (MemoryRange, Option<(u64, bool)>) {
        match message {
            MapperMessage::Map(params) => {
                (params.range, Some((params.file_offset, params.writable)))
            }
            MapperMessage::NoMapping(range) => (*range, None),
            other => panic!("unexpected message {other:?}"),
        }
    }

    fn object() -> SharedObject {
        Arc::new(sparse_mmap::alloc_shared_memory(0x10000, "merge-test").expect("memfd"))
    }

    #[test]
    fn merges_only_views_that_continue_one_another() {
        let (a, b) = (object(), object());
        let r = |start, end| MemoryRange::new(start..end);
        let messages = vec![
            map(&a, 0x0000, 0x1000, 0x0000, true),
            map(&a, 0x1000, 0x3000, 0x1000, true), // continues: merged
            map(&a, 0x3000, 0x4000, 0x3000, false), // other writability
            map(&a, 0x4000, 0x5000, 0x5000, false), // object offset jumps
            map(&b, 0x5000, 0x6000, 0x6000, false), // other object
            MapperMessage::NoMapping(r(0x6000, 0x7000)),
            map(&b, 0x7000, 0x8000, 0x7000, false), // a gap message in between
            map(&b, 0x9000, 0xa000, 0x8000, false), // a hole in the ranges
        ];
        let merged: Vec<_> = merge_adjacent_maps(messages).iter().map(shape).collect();
        assert_eq!(
            merged,
            [
                (r(0x0000, 0x3000), Some((0x0000, true))),
                (r(0x3000, 0x4000), Some((0x3000, false))),
                (r(0x4000, 0x5000), Some((0x5000, false))),
                (r(0x5000, 0x6000), Some((0x6000, false))),
                (r(0x6000, 0x7000), None),
                (r(0x7000, 0x8000), Some((0x7000, false))),
                (r(0x9000, 0xa000), Some((0x8000, false))),
            ]
        );
    }

    fn page(index: u64) -> MemoryRange {
        MemoryRange::new(index * 0x2000..index * 0x2000 + 0x1000)
    }

    /// Registers a waiter for each of `count` pages (every other one), answers each page (a
    /// read-only mapping for the even ones, nothing for the odd ones; all needing writes when
    /// `need_write`) in a scattered order, then collects every result; returns the work.
    fn work_for_waiters(count: u64, need_write: bool) -> u64 {
        let mut queue = Queue::default();
        let ids: Vec<u64> = (0..count)
            .map(|index| queue.register(page(index), need_write).unwrap())
            .collect();
        // 7919 is prime and larger than any count used: every page once.
        for step in 0..count {
            let index = step * 7919 % count;
            let answer = index.is_multiple_of(2).then_some(false);
            queue.wake(page(index), answer);
        }
        for (index, &id) in (0..count).zip(&ids) {
            let result = queue.take_result(id).expect("answered");
            match (index.is_multiple_of(2), need_write, result) {
                (true, false, Ok(())) => {}
                (true, true, Err(RequestError::ReadOnly(ReadOnlyMapping(requested), hole)))
                | (false, _, Err(RequestError::NoMapping(NoMapping(requested), hole))) => {
                    assert_eq!((requested, hole), (page(index), page(index)));
                }
                (_, _, other) => panic!("page {index}: {other:?}"),
            }
            assert!(queue.take_result(id).is_none(), "taken once");
        }
        assert!(queue.waiters.is_empty() && queue.waiting.is_empty());
        queue.work()
    }

    #[test]
    fn an_answer_visits_only_the_waiters_it_concerns() {
        // Every answer went through every waiter, and every result was searched for among
        // them: a batch placing 30,000 device windows (a waiter each) took seconds.
        for need_write in [false, true] {
            let small = work_for_waiters(100, need_write);
            let large = work_for_waiters(5_000, need_write);
            assert_eq!(
                small, 200,
                "one visit per answer and per waiter it concerns"
            );
            assert_eq!(
                large,
                50 * small,
                "{small} for 100 waiters, {large} for 5,000"
            );
        }
    }

    #[test]
    fn a_waiter_advances_through_several_answers_and_fails_at_a_hole() {
        let mut queue = Queue::default();
        let whole = MemoryRange::new(0x1000..0x5000);
        let both = queue.register(whole, false).unwrap();
        let writer = queue
            .register(MemoryRange::new(0x2000..0x3000), true)
            .unwrap();
        let later = queue
            .register(MemoryRange::new(0x4000..0x6000), false)
            .unwrap();
        queue.wake(MemoryRange::new(0..0x2000), Some(false));
        assert!(queue.take_result(both).is_none(), "advanced, not done");
        // Read-only: `both` advances, `writer` (needs write) fails with the read-only part.
        queue.wake(MemoryRange::new(0x2000..0x4000), Some(false));
        assert!(queue.take_result(both).is_none());
        assert!(matches!(
            queue.take_result(writer),
            Some(Err(RequestError::ReadOnly(_, hole))) if hole == MemoryRange::new(0x2000..0x3000)
        ));
        // A hole at 0x4000..0x5000 fails both waiters whose cursor lies there.
        queue.wake(MemoryRange::new(0x4000..0x5000), None);
        for id in [both, later] {
            assert!(matches!(
                queue.take_result(id),
                Some(Err(RequestError::NoMapping(_, hole))) if hole == MemoryRange::new(0x4000..0x5000)
            ));
        }
        // A waiter removed before its answer is not answered; close fails the rest.
        let dropped = queue
            .register(MemoryRange::new(0x8000..0x9000), false)
            .unwrap();
        let pending = queue
            .register(MemoryRange::new(0x8000..0x9000), false)
            .unwrap();
        queue.remove(dropped);
        queue.close();
        assert!(queue.take_result(dropped).is_none());
        assert!(matches!(
            queue.take_result(pending),
            Some(Err(RequestError::ManagerGone))
        ));
        assert!(matches!(
            queue.register(whole, false),
            Err(RequestError::ManagerGone)
        ));
    }
}
