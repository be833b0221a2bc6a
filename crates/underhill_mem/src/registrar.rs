//! The chunked memory registrar.
//!
//! Guest RAM is divided into 2 GiB chunks ([`GRANULARITY`]), counted from address 0. The first
//! [`MemoryRegistrar::register`] call that touches a chunk hands every piece of RAM inside that
//! chunk (split at RAM range boundaries, shifted up by the registration offset) to the
//! registration callback, in ascending order. A chunk whose pieces all succeeded is marked
//! *registered* in a bitmap of atomic words, so later calls that only touch registered chunks
//! return without taking a lock. A chunk whose callback failed is marked *failed* and is never
//! attempted again.
//!
//! The error value is deliberately asymmetric, as in the original: the call whose callback
//! failed gets the offset-adjusted start of the failing piece, while every later call reaching
//! that chunk gets the raw chunk base (`chunk * 2 GiB`, no offset).
//!
//! The asynchronous path ([`MemoryRegistrar::register_async`]) gives the same results, callback
//! order and panics for a single caller. Its callback ([`RegisterMemoryAsync`]) may answer at
//! once ([`Registration::Ready`], and the call then continues without yielding) or later
//! ([`Registration::Pending`]). While a chunk is being registered it is marked *in flight*; a
//! concurrent caller that needs it waits (through the standard [`Waker`] API, with no blocking
//! and no threads) and then sees the outcome. No lock is held while a callback runs or across an
//! await in this path.

use memory_range::{overlapping_ranges, MemoryRange};
use parking_lot::{Condvar, Mutex};
use serde::Serialize;
use std::collections::BTreeMap;
use std::error::Error;
use std::fmt;
use std::future::Future;
use std::ops::{Deref, Range};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use vm_topology::memory::MemoryLayout;

const PAGE_SIZE: u64 = 4096;

/// The size of a registration chunk: 2 GiB.
pub const GRANULARITY: u64 = 2 << 30;

/// Number of chunks tracked by one bitmap word.
const CHUNKS_PER_WORD: u64 = 64;

/// A synchronous registration callback.
///
/// `register_range` is called with a page-aligned range in the callback's address space (the
/// guest physical range shifted up by the registrar's registration offset). Every closure
/// `Fn(MemoryRange) -> Result<(), E>` with `E: std::error::Error + 'static` implements this
/// trait, so a closure can be passed to [`MemoryRegistrar::new`] directly.
///
/// The error type is opaque, as in the original: an implementation writes
/// `-> Result<(), impl std::error::Error + 'static>` (or names its concrete error type).
pub trait RegisterMemory {
    /// Registers `range` with the host facility.
    fn register_range(&self, range: MemoryRange) -> Result<(), impl Error + 'static>;
}

impl<F, E> RegisterMemory for F
where
    F: Fn(MemoryRange) -> Result<(), E>,
    E: Error + 'static,
{
    fn register_range(&self, range: MemoryRange) -> Result<(), impl Error + 'static> {
        self(range)
    }
}

/// The error of a synchronous [`RegisterMemory`] callback adapted by [`AsyncFromSync`]: the
/// callback's own error, boxed because its type is opaque. Displays as the callback's error
/// and has the same source.
pub struct SyncRegistrationError(Box<dyn Error + 'static>);

impl SyncRegistrationError {
    /// The callback's error.
    pub fn into_inner(self) -> Box<dyn Error + 'static> {
        self.0
    }

    /// The callback's error, borrowed.
    pub fn inner(&self) -> &(dyn Error + 'static) {
        &*self.0
    }
}

impl fmt::Debug for SyncRegistrationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for SyncRegistrationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Error for SyncRegistrationError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.source()
    }
}

/// The answer of an asynchronous registration callback.
pub enum Registration<E> {
    /// The registration finished while the callback ran; the registrar continues without
    /// yielding.
    Ready(Result<(), E>),
    /// The registration finishes when this future completes. The future is not required to be
    /// `Send`: it is polled by whoever polls the [`MemoryRegistrar::register_async`] future.
    Pending(Pin<Box<dyn Future<Output = Result<(), E>>>>),
}

impl<E: fmt::Debug> fmt::Debug for Registration<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Registration::Ready(result) => f.debug_tuple("Ready").field(result).finish(),
            Registration::Pending(_) => f.write_str("Pending(..)"),
        }
    }
}

/// An asynchronous registration callback, used by [`MemoryRegistrar::new_async`].
///
/// `start_registration` is called with the same ranges, in the same order, as
/// [`RegisterMemory::register_range`] would be. Every closure
/// `Fn(MemoryRange) -> Registration<E>` implements this trait.
pub trait RegisterMemoryAsync {
    /// The error the callback reports.
    type Error: Error + 'static;

    /// Starts registering `range` with the host facility.
    fn start_registration(&self, range: MemoryRange) -> Registration<Self::Error>;
}

impl<F, E> RegisterMemoryAsync for F
where
    F: Fn(MemoryRange) -> Registration<E>,
    E: Error + 'static,
{
    type Error = E;

    fn start_registration(&self, range: MemoryRange) -> Registration<E> {
        self(range)
    }
}

/// Adapts a synchronous [`RegisterMemory`] callback to [`RegisterMemoryAsync`]: every
/// registration is [`Registration::Ready`].
#[derive(Debug, Clone)]
pub struct AsyncFromSync<T>(pub T);

impl<T: RegisterMemory> RegisterMemoryAsync for AsyncFromSync<T> {
    type Error = SyncRegistrationError;

    fn start_registration(&self, range: MemoryRange) -> Registration<SyncRegistrationError> {
        Registration::Ready(
            self.0
                .register_range(range)
                .map_err(|error| SyncRegistrationError(Box::new(error))),
        )
    }
}

/// The diagnostic view of a [`MemoryRegistrar`] (the original's `Inspect` fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryRegistrarInspect {
    /// Number of chunks below `chunk_count` that are registered.
    pub chunks_registered: u64,
    /// Number of 2 GiB chunks needed to cover RAM up to its end.
    pub chunk_count: u64,
    /// The registration offset, as `0x…` lower-case hex.
    pub registration_offset: String,
}

/// State that is only touched under the registrar's lock.
#[derive(Debug)]
struct LockedState {
    /// Bitmap of chunks whose registration failed; same shape as the registered bitmap.
    failed: Vec<u64>,
    /// Chunks being registered by an asynchronous call, each with the wakers of the calls
    /// waiting for its outcome.
    in_flight: BTreeMap<u64, Vec<Waker>>,
}

/// What a caller must do about one chunk, decided under the lock.
enum ChunkState {
    Registered,
    Failed,
    InFlight,
    Unregistered,
}

/// How an in-flight chunk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InFlightOutcome {
    /// Dropped or unwound before it finished: the chunk becomes unregistered again.
    Abandoned,
    Registered,
    Failed,
}

/// Registers guest RAM lazily, in 2 GiB chunks, the first time an address in a chunk is used.
///
/// See the [module documentation](self) for the rules. `register` and `register_async` take
/// `&self`; the registrar is `Sync` when its callback is.
#[derive(Debug)]
pub struct MemoryRegistrar<T> {
    /// One bit per chunk (bit `c % 64` of word `c / 64`); set once the chunk is registered.
    registered: Vec<AtomicU64>,
    chunk_count: u64,
    state: Mutex<LockedState>,
    /// Signalled whenever an in-flight chunk finishes, for synchronous callers waiting on it.
    in_flight_finished: Condvar,
    register: T,
    ram: Vec<MemoryRange>,
    registration_offset: u64,
}

/// Where chunk `chunk` lives in a bitmap: word index and bit mask.
///
/// A chunk beyond the bitmap gives a word index past its end, so indexing panics with an
/// index-out-of-bounds error, as in the original.
fn bit_position(chunk: u64) -> (usize, u64) {
    let word = usize::try_from(chunk / CHUNKS_PER_WORD).unwrap_or(usize::MAX);
    (word, 1 << (chunk % CHUNKS_PER_WORD))
}

/// The chunks a `register(address, len)` request covers: the request is widened to whole pages
/// first. Overflow panics.
fn request_chunks(address: u64, len: u64) -> Range<u64> {
    let start = address & !(PAGE_SIZE - 1);
    let end = address
        .checked_add(len)
        .and_then(|end| end.checked_add(PAGE_SIZE - 1))
        .expect("attempt to add with overflow: register address + len exceeds u64")
        & !(PAGE_SIZE - 1);
    start / GRANULARITY..end.div_ceil(GRANULARITY)
}

/// The raw base address of `chunk` (the error value of a previously failed chunk).
fn chunk_base(chunk: u64) -> u64 {
    chunk
        .checked_mul(GRANULARITY)
        .expect("attempt to multiply with overflow: chunk base exceeds u64")
}

/// The guest physical span of `chunk`: `chunk * 2 GiB .. (chunk + 1) * 2 GiB`. Panics when the
/// end does not fit in a `u64` (the last chunk below 2^64).
fn chunk_span(chunk: u64) -> MemoryRange {
    let end = chunk
        .checked_add(1)
        .and_then(|next| next.checked_mul(GRANULARITY))
        .expect("attempt to multiply with overflow: chunk end exceeds u64");
    MemoryRange::new(chunk_base(chunk)..end)
}

impl<T> MemoryRegistrar<T> {
    fn with_callback(layout: &MemoryLayout, registration_offset: u64, register: T) -> Self {
        let ram: Vec<MemoryRange> = layout.ram().iter().map(|entry| entry.range).collect();
        let size = ram.last().expect("mmio set").end();
        let chunk_count = size.div_ceil(GRANULARITY);
        let words = usize::try_from(chunk_count.div_ceil(CHUNKS_PER_WORD))
            .expect("chunk bitmap does not fit in memory");
        Self {
            registered: (0..words).map(|_| AtomicU64::new(0)).collect(),
            chunk_count,
            state: Mutex::new(LockedState {
                failed: vec![0; words],
                in_flight: BTreeMap::new(),
            }),
            in_flight_finished: Condvar::new(),
            register,
            ram,
            registration_offset,
        }
    }

    /// Whether `chunk` is registered (acquire load, so the callbacks' effects are visible).
    /// Panics with index out of bounds for a chunk beyond the bitmap.
    fn is_registered(&self, chunk: u64) -> bool {
        let (word, mask) = bit_position(chunk);
        self.registered[word].load(Ordering::Acquire) & mask != 0
    }

    /// The lock-free fast path: every chunk in `chunks` is registered.
    fn all_registered(&self, chunks: Range<u64>) -> bool {
        chunks.into_iter().all(|chunk| self.is_registered(chunk))
    }

    /// Marks `chunk` registered (release store). Called with the lock held.
    fn set_registered(&self, chunk: u64) {
        let (word, mask) = bit_position(chunk);
        self.registered[word].fetch_or(mask, Ordering::Release);
    }

    fn chunk_state(&self, state: &LockedState, chunk: u64) -> ChunkState {
        if self.is_registered(chunk) {
            return ChunkState::Registered;
        }
        let (word, mask) = bit_position(chunk);
        if state.failed[word] & mask != 0 {
            ChunkState::Failed
        } else if state.in_flight.contains_key(&chunk) {
            ChunkState::InFlight
        } else {
            ChunkState::Unregistered
        }
    }

    /// The RAM pieces of `chunk`, in guest physical addresses, ascending, split at RAM range
    /// boundaries.
    fn chunk_pieces(&self, chunk: u64) -> impl Iterator<Item = MemoryRange> + '_ {
        overlapping_ranges([chunk_span(chunk)], self.ram.iter().copied())
    }

    /// Shifts a RAM piece into the callback's address space. Panics on overflow, and (inside
    /// `MemoryRange::new`) when the registration offset is not page-aligned.
    fn shifted(&self, piece: MemoryRange) -> MemoryRange {
        let start = piece
            .start()
            .checked_add(self.registration_offset)
            .expect("attempt to add with overflow: registration offset + range start");
        let end = piece
            .end()
            .checked_add(self.registration_offset)
            .expect("attempt to add with overflow: registration offset + range end");
        MemoryRange::new(start..end)
    }

    /// Ends an in-flight registration: records the outcome, then wakes every waiter.
    fn finish_in_flight(&self, chunk: u64, outcome: InFlightOutcome) {
        let waiters = {
            let mut state = self.state.lock();
            match outcome {
                InFlightOutcome::Registered => self.set_registered(chunk),
                InFlightOutcome::Failed => {
                    let (word, mask) = bit_position(chunk);
                    state.failed[word] |= mask;
                }
                InFlightOutcome::Abandoned => {}
            }
            state.in_flight.remove(&chunk).unwrap_or_default()
        };
        self.in_flight_finished.notify_all();
        for waker in waiters {
            waker.wake();
        }
    }

    /// Decides, under the lock, whether this caller registers `chunk` itself; if so the chunk
    /// is marked in flight and the returned guard owns that mark.
    fn claim_chunk(&self, chunk: u64) -> Claim<'_, T> {
        let mut state = self.state.lock();
        match self.chunk_state(&state, chunk) {
            ChunkState::Registered => Claim::Registered,
            ChunkState::Failed => Claim::Failed,
            ChunkState::InFlight => Claim::InFlight,
            ChunkState::Unregistered => {
                state.in_flight.insert(chunk, Vec::new());
                Claim::Claimed(InFlightGuard {
                    registrar: self,
                    chunk,
                    outcome: InFlightOutcome::Abandoned,
                })
            }
        }
    }

    /// Number of 2 GiB chunks covering RAM: `ceil(end of RAM / 2 GiB)`.
    pub fn chunk_count(&self) -> u64 {
        self.chunk_count
    }

    /// Number of chunks below [`chunk_count`](Self::chunk_count) that are registered (chunks
    /// past the end of RAM that a request marked registered are not counted).
    pub fn chunks_registered(&self) -> u64 {
        let full_words = self.chunk_count / CHUNKS_PER_WORD;
        let tail_bits = self.chunk_count % CHUNKS_PER_WORD;
        self.registered
            .iter()
            .enumerate()
            .map(|(index, word)| {
                let bits = word.load(Ordering::Acquire);
                let counted = if (index as u64) < full_words {
                    bits
                } else if (index as u64) == full_words && tail_bits != 0 {
                    bits & ((1 << tail_bits) - 1)
                } else {
                    0
                };
                u64::from(counted.count_ones())
            })
            .sum()
    }

    /// Whether `register(address, len)` would return `Ok(())` on its lock-free fast path, that
    /// is, every chunk the request covers is registered. Never panics and takes no lock: a
    /// request whose end overflows or that reaches past the bitmap answers `false`, leaving the
    /// panic to `register`. Bindings use it to skip building a registration future.
    pub fn is_registered_range(&self, address: u64, len: u64) -> bool {
        let Some(end) = address
            .checked_add(len)
            .and_then(|end| end.checked_add(PAGE_SIZE - 1))
        else {
            return false;
        };
        let chunks = (address & !(PAGE_SIZE - 1)) / GRANULARITY
            ..(end & !(PAGE_SIZE - 1)).div_ceil(GRANULARITY);
        let bitmap_chunks = (self.registered.len() as u64).saturating_mul(CHUNKS_PER_WORD);
        chunks.end <= bitmap_chunks && self.all_registered(chunks)
    }

    /// The offset added to every guest physical range before it is passed to the callback.
    pub fn registration_offset(&self) -> u64 {
        self.registration_offset
    }

    /// The diagnostic view: `chunks_registered` (computed now), `chunk_count` and
    /// `registration_offset` (hex).
    pub fn inspect(&self) -> MemoryRegistrarInspect {
        MemoryRegistrarInspect {
            chunks_registered: self.chunks_registered(),
            chunk_count: self.chunk_count,
            registration_offset: format!("{:#x}", self.registration_offset),
        }
    }
}

impl<T: RegisterMemory> MemoryRegistrar<T> {
    /// Creates a registrar for the RAM of `layout` (the VTL2 range is not included). Nothing is
    /// registered yet. `registration_offset` is not validated: if it is not page-aligned, the
    /// first registration panics when it builds the callback's range.
    pub fn new(layout: &MemoryLayout, registration_offset: u64, register: T) -> Self {
        Self::with_callback(layout, registration_offset, register)
    }

    /// Ensures every chunk touched by the byte range `address .. address + len` is registered.
    ///
    /// The request is widened to whole pages first (so a zero `len` at an address that is not
    /// page-aligned still covers its page). Chunks are handled in ascending order: registered
    /// chunks are skipped; a previously failed chunk returns `Err(chunk * 2 GiB)` at once; an
    /// unregistered chunk has each of its RAM pieces, shifted by the registration offset, passed
    /// to the callback. When a callback fails, the chunk is marked failed and
    /// `Err(registration_offset + piece start)` is returned; earlier pieces and chunks stay
    /// delivered, later chunks are not attempted.
    ///
    /// When every touched chunk is already registered this returns without taking a lock.
    ///
    /// # Panics
    ///
    /// - if `address + len`, rounded up to a page, overflows `u64`;
    /// - with an index-out-of-bounds error when the request reaches a chunk at or beyond
    ///   `64 * ceil(chunk_count / 64)` (chunks past the end of RAM but inside the last bitmap
    ///   word are accepted and marked registered without callbacks) — earlier chunks of the
    ///   same request may already be registered;
    /// - when the registration offset is not page-aligned or shifting a range by it overflows.
    ///
    /// # Deadlock
    ///
    /// The callback runs with the registrar's lock held, and the lock is not re-entrant:
    /// calling `register` (or `register_async`) on the same registrar from inside the callback
    /// deadlocks. If an asynchronous registration of a needed chunk is in flight (a registrar
    /// whose callback implements both traits), this call blocks the thread until it finishes;
    /// doing that on the thread that drives the asynchronous call deadlocks too.
    pub fn register(&self, address: u64, len: u64) -> Result<(), u64> {
        let chunks = request_chunks(address, len);
        if self.all_registered(chunks.clone()) {
            return Ok(());
        }

        let mut state = self.state.lock();
        for chunk in chunks {
            loop {
                match self.chunk_state(&state, chunk) {
                    ChunkState::Registered => break,
                    ChunkState::Failed => return Err(chunk_base(chunk)),
                    ChunkState::InFlight => self.in_flight_finished.wait(&mut state),
                    ChunkState::Unregistered => {
                        for piece in self.chunk_pieces(chunk) {
                            let target = self.shifted(piece);
                            if let Err(err) = self.register.register_range(target) {
                                tracing::error!(
                                    error = &err as &dyn Error,
                                    range = %target,
                                    "failed to register memory range"
                                );
                                let (word, mask) = bit_position(chunk);
                                state.failed[word] |= mask;
                                return Err(target.start());
                            }
                        }
                        self.set_registered(chunk);
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

impl<T: RegisterMemoryAsync> MemoryRegistrar<T> {
    /// Creates a registrar whose callback may finish asynchronously; drive it with
    /// [`register_async`](Self::register_async). Same layout and offset rules as
    /// [`new`](Self::new).
    pub fn new_async(layout: &MemoryLayout, registration_offset: u64, register: T) -> Self {
        Self::with_callback(layout, registration_offset, register)
    }

    /// The asynchronous form of [`register`](MemoryRegistrar::register).
    ///
    /// For a single caller the results, the callback ranges and their order, and the panics
    /// are those of `register`. Nothing is computed until the future is first polled (so every
    /// panic happens inside `poll`). A [`Registration::Ready`] answer continues without
    /// yielding: when every callback answers `Ready` (or no callback is needed), the future
    /// completes on its first poll. When every touched chunk is already registered, no lock is
    /// taken.
    ///
    /// Sharing: a chunk being registered is marked in flight. Another call that needs it
    /// registers its waker and returns `Pending`; when the registration ends the waker is woken
    /// (with [`Waker::wake`], from the thread and the call stack that ended it: the poll that
    /// completed it, or the drop of an abandoned future) and the waiting call sees the outcome
    /// — registered: skipped; failed: `Err(chunk * 2 GiB)`, as a later `register` would get.
    /// Each piece is delivered at most once unless a registration is abandoned.
    ///
    /// Abandonment: if the future is dropped while its chunk is in flight, or a panic unwinds
    /// out of `poll` (bounds, unaligned offset, overflow, a panicking callback), the chunk
    /// returns to unregistered and its waiters are woken; one of them registers it again from
    /// its first piece. A future that panicked must not be polled again.
    ///
    /// No lock is held while the callback runs or across an await.
    pub fn register_async(
        &self,
        address: u64,
        len: u64,
    ) -> impl Future<Output = Result<(), u64>> + '_ {
        register_chunks_async(self, address, len)
    }

    /// [`register_async`](Self::register_async) on a shared registrar: the future owns
    /// `registrar` (an `Rc` or `Arc` of it) instead of borrowing, so it can be stored beyond
    /// the caller's scope (for example until a JavaScript promise settles). Call it as
    /// `MemoryRegistrar::register_async_owned(rc.clone(), address, len)`.
    ///
    /// The future is `'static` when `T` and `R` are.
    pub async fn register_async_owned<R>(registrar: R, address: u64, len: u64) -> Result<(), u64>
    where
        R: Deref<Target = Self>,
    {
        register_chunks_async(&registrar, address, len).await
    }
}

/// The body of the asynchronous path.
async fn register_chunks_async<T: RegisterMemoryAsync>(
    registrar: &MemoryRegistrar<T>,
    address: u64,
    len: u64,
) -> Result<(), u64> {
    let chunks = request_chunks(address, len);
    if registrar.all_registered(chunks.clone()) {
        return Ok(());
    }

    'chunks: for chunk in chunks {
        let mut guard = loop {
            match registrar.claim_chunk(chunk) {
                Claim::Registered => continue 'chunks,
                Claim::Failed => return Err(chunk_base(chunk)),
                Claim::InFlight => {
                    InFlightFinished { registrar, chunk }.await;
                }
                Claim::Claimed(guard) => break guard,
            }
        };

        for piece in registrar.chunk_pieces(chunk) {
            let target = registrar.shifted(piece);
            let result = match registrar.register.start_registration(target) {
                Registration::Ready(result) => result,
                Registration::Pending(registration) => registration.await,
            };
            if let Err(err) = result {
                tracing::error!(
                    error = &err as &dyn Error,
                    range = %target,
                    "failed to register memory range"
                );
                guard.outcome = InFlightOutcome::Failed;
                return Err(target.start());
            }
        }
        guard.outcome = InFlightOutcome::Registered;
    }
    Ok(())
}

/// The result of trying to claim a chunk for registration.
enum Claim<'a, T> {
    Registered,
    Failed,
    InFlight,
    Claimed(InFlightGuard<'a, T>),
}

/// Owns the in-flight mark of a chunk. Dropping it ends the registration with `outcome`; the
/// default, [`InFlightOutcome::Abandoned`], covers a dropped future and a panic unwinding out
/// of `poll`.
struct InFlightGuard<'a, T> {
    registrar: &'a MemoryRegistrar<T>,
    chunk: u64,
    outcome: InFlightOutcome,
}

impl<T> Drop for InFlightGuard<'_, T> {
    fn drop(&mut self) {
        self.registrar.finish_in_flight(self.chunk, self.outcome);
    }
}

/// Resolves once `chunk` is no longer in flight.
struct InFlightFinished<'a, T> {
    registrar: &'a MemoryRegistrar<T>,
    chunk: u64,
}

impl<T> Future for InFlightFinished<'_, T> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.registrar.state.lock();
        match state.in_flight.get_mut(&self.chunk) {
            None => Poll::Ready(()),
            Some(waiters) => {
                if !waiters.iter().any(|waker| waker.will_wake(cx.waker())) {
                    waiters.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conformance_vectors::catch;
    use futures::channel::oneshot;
    use std::cell::{Cell, RefCell};
    use std::io;
    use std::rc::Rc;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::task::Wake;
    use std::time::Duration;
    use vm_topology::memory::MemoryLayout;

    const K: u64 = 1 << 10;
    const G: u64 = 1 << 30;
    const T: u64 = 1 << 40;

    fn range(range: Range<u64>) -> MemoryRange {
        MemoryRange::new(range)
    }

    fn layout(ram_size: u64, gaps: &[MemoryRange]) -> MemoryLayout {
        MemoryLayout::new(ram_size, gaps, None).expect("valid test layout")
    }

    /// 1 TiB of RAM around a 64 KiB gap at 0x10000 and a 1 TiB gap at 1 TiB: RAM
    /// `[0..0x10000, 0x20000..1T, 2T..2T+0x10000]`.
    fn tib_layout_with_two_gaps() -> MemoryLayout {
        layout(T, &[range(0x10000..0x20000), range(T..2 * T)])
    }

    /// A waker that counts how often it was woken.
    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A future polled by hand on this thread with its own counting waker.
    struct Task<'a> {
        future: Pin<Box<dyn Future<Output = Result<(), u64>> + 'a>>,
        wakes: Arc<CountingWaker>,
    }

    impl<'a> Task<'a> {
        fn new(future: impl Future<Output = Result<(), u64>> + 'a) -> Self {
            Task {
                future: Box::pin(future),
                wakes: Arc::default(),
            }
        }

        fn poll(&mut self) -> Poll<Result<(), u64>> {
            let waker = Waker::from(self.wakes.clone());
            self.future.as_mut().poll(&mut Context::from_waker(&waker))
        }

        fn wake_count(&self) -> usize {
            self.wakes.0.load(Ordering::SeqCst)
        }
    }

    /// Polls a future once; it must complete.
    fn complete_on_first_poll(future: impl Future<Output = Result<(), u64>>) -> Result<(), u64> {
        match Task::new(future).poll() {
            Poll::Ready(result) => result,
            Poll::Pending => panic!("an all-Ready registration must complete on its first poll"),
        }
    }

    type Log = Rc<RefCell<Vec<MemoryRange>>>;

    /// A synchronous callback that records every range and fails for the range starting at
    /// `fail_start`.
    fn recording(
        log: &Log,
        fail_start: Option<u64>,
    ) -> impl Fn(MemoryRange) -> Result<(), io::Error> {
        let log = log.clone();
        move |range: MemoryRange| {
            log.borrow_mut().push(range);
            if Some(range.start()) == fail_start {
                Err(io::Error::other("registration refused"))
            } else {
                Ok(())
            }
        }
    }

    #[derive(Clone, Copy, Debug)]
    enum Mode {
        Sync,
        AsyncReady,
    }

    enum Registrar<F> {
        Sync(MemoryRegistrar<F>),
        Async(MemoryRegistrar<AsyncFromSync<F>>),
    }

    /// A registrar driven through one path, with the log of its callbacks.
    struct Harness<F> {
        registrar: Registrar<F>,
        log: Log,
    }

    fn harness(
        mode: Mode,
        layout: &MemoryLayout,
        offset: u64,
        fail_start: Option<u64>,
    ) -> Harness<impl Fn(MemoryRange) -> Result<(), io::Error>> {
        let log = Log::default();
        let callback = recording(&log, fail_start);
        let registrar = match mode {
            Mode::Sync => Registrar::Sync(MemoryRegistrar::new(layout, offset, callback)),
            Mode::AsyncReady => Registrar::Async(MemoryRegistrar::new_async(
                layout,
                offset,
                AsyncFromSync(callback),
            )),
        };
        Harness { registrar, log }
    }

    impl<F: RegisterMemory> Harness<F> {
        /// Makes one call; returns its result and the callbacks it made.
        fn call(&self, address: u64, len: u64) -> (Result<(), u64>, Vec<MemoryRange>) {
            let result = match &self.registrar {
                Registrar::Sync(registrar) => registrar.register(address, len),
                Registrar::Async(registrar) => {
                    complete_on_first_poll(registrar.register_async(address, len))
                }
            };
            (result, self.log.borrow_mut().drain(..).collect())
        }

        /// Makes one call that must panic.
        fn call_panics(&self, address: u64, len: u64) -> bool {
            catch(|| self.call(address, len)).is_err()
        }

        fn inspect(&self) -> MemoryRegistrarInspect {
            match &self.registrar {
                Registrar::Sync(registrar) => registrar.inspect(),
                Registrar::Async(registrar) => registrar.inspect(),
            }
        }
    }

    fn chunk_count(mode: Mode) {
        let layout = tib_layout_with_two_gaps();
        let ram: Vec<MemoryRange> = layout.ram().iter().map(|r| r.range).collect();
        assert_eq!(
            ram,
            [
                range(0..0x10000),
                range(0x20000..T),
                range(2 * T..2 * T + 0x10000)
            ]
        );
        let harness = harness(mode, &layout, 1 << 50, None);
        let inspect = harness.inspect();
        assert_eq!(inspect.chunk_count, 1025);
        assert_eq!(inspect.chunks_registered, 0);
    }

    fn registration_with_offset(mode: Mode) {
        const O: u64 = 1 << 50;
        let harness = harness(mode, &tib_layout_with_two_gaps(), O, None);
        assert_eq!(
            harness.call(0x1000, 0x7000),
            (
                Ok(()),
                vec![range(O..O + 0x10000), range(O + 0x20000..O + 2 * G)]
            )
        );
        assert_eq!(harness.call(0x20000, 0x10000), (Ok(()), vec![]));
        assert_eq!(harness.call(0x100000, 0x100000), (Ok(()), vec![]));
        let expected: Vec<MemoryRange> = (4..17)
            .map(|chunk| range(O + chunk * 2 * G..O + (chunk + 1) * 2 * G))
            .collect();
        assert_eq!(expected.len(), 13);
        assert_eq!(harness.call(8 * G, 24 * G + 1), (Ok(()), expected));
        let inspect = harness.inspect();
        assert_eq!(inspect.chunks_registered, 14);
        assert_eq!(inspect.registration_offset, "0x4000000000000");
        let json = serde_json::to_value(&inspect).expect("serializable");
        assert_eq!(
            json,
            serde_json::json!({
                "chunks_registered": 14,
                "chunk_count": 1025,
                "registration_offset": "0x4000000000000",
            })
        );
    }

    fn page_widening_and_tail(mode: Mode) {
        let harness = harness(mode, &layout(8 * G, &[range(3 * G..4 * G)]), 0, None);
        assert_eq!(harness.inspect().chunk_count, 5);
        assert_eq!(
            harness.call(2 * G - 4 * K, 8 * K),
            (Ok(()), vec![range(0..2 * G), range(2 * G..3 * G)])
        );
        assert_eq!(harness.call(0x1800, 0), (Ok(()), vec![]));
        assert_eq!(harness.call(2 * G, 0), (Ok(()), vec![]));
        assert_eq!(
            harness.call(6 * G + 5, 1),
            (Ok(()), vec![range(6 * G..8 * G)])
        );
        assert_eq!(
            harness.call(8 * G, 4 * G),
            (Ok(()), vec![range(8 * G..9 * G)])
        );
        assert_eq!(harness.inspect().chunks_registered, 4);
    }

    fn sticky_failure(mode: Mode) {
        const O: u64 = 1 << 40;
        let harness = harness(
            mode,
            &layout(8 * G, &[range(3 * G..4 * G)]),
            O,
            Some(O + 4 * G),
        );
        assert_eq!(
            harness.call(4 * G + 0x5000, 1),
            (Err(0x10100000000), vec![range(O + 4 * G..O + 6 * G)])
        );
        assert_eq!(harness.call(5 * G, 1), (Err(0x100000000), vec![]));
        assert_eq!(harness.call(5 * G, 1), (Err(0x100000000), vec![]));
        assert_eq!(harness.call(0, 1), (Ok(()), vec![range(O..O + 2 * G)]));
        assert_eq!(
            harness.call(2 * G, 6 * G),
            (Err(0x100000000), vec![range(O + 2 * G..O + 3 * G)])
        );
        assert_eq!(harness.inspect().chunks_registered, 2);
    }

    fn failure_in_first_chunk(mode: Mode) {
        let harness = harness(mode, &tib_layout_with_two_gaps(), 0, Some(0x20000));
        assert_eq!(
            harness.call(0x1000, 0x1000),
            (Err(0x20000), vec![range(0..0x10000), range(0x20000..2 * G)])
        );
        assert_eq!(harness.call(0x1000, 0x1000), (Err(0), vec![]));
        assert_eq!(harness.inspect().chunks_registered, 0);
    }

    fn multi_chunk_failure(mode: Mode) {
        let harness = harness(mode, &layout(16 * G, &[]), 0, Some(6 * G));
        let attempted = vec![
            range(0..2 * G),
            range(2 * G..4 * G),
            range(4 * G..6 * G),
            range(6 * G..8 * G),
        ];
        assert_eq!(harness.call(G, 8 * G), (Err(0x180000000), attempted));
        assert_eq!(harness.inspect().chunks_registered, 3);
        assert_eq!(harness.call(G, 8 * G), (Err(0x180000000), vec![]));
        assert_eq!(harness.call(8 * G, 1), (Ok(()), vec![range(8 * G..10 * G)]));
        assert_eq!(harness.inspect().chunks_registered, 4);
    }

    #[test]
    fn is_registered_range_follows_the_fast_path_and_never_panics() {
        let registrar = MemoryRegistrar::new(&layout(8 * G, &[]), 0, |_| Ok::<(), io::Error>(()));
        assert!(
            registrar.is_registered_range(0, 0),
            "an empty request on a boundary covers no chunk"
        );
        assert!(!registrar.is_registered_range(0, 1));
        registrar.register(0, 3 * G).unwrap();
        assert!(registrar.is_registered_range(0x1000, 4 * G - 0x1000));
        assert!(!registrar.is_registered_range(4 * G - 1, 2));
        // Past the bitmap (64 chunks per word) and overflowing requests answer false instead of
        // panicking; `register` still panics for them.
        assert!(!registrar.is_registered_range(128 * G, 1));
        assert!(!registrar.is_registered_range(u64::MAX - 0x10, 0x20));
        assert!(catch(|| registrar.register(128 * G, 1)).is_err());
    }

    fn bitmap_bounds(mode: Mode) {
        let harness = harness(mode, &layout(4 * G, &[]), 0, None);
        assert_eq!(harness.inspect().chunk_count, 2);
        assert_eq!(harness.call(100 * G, 1), (Ok(()), vec![]));
        assert_eq!(harness.inspect().chunks_registered, 0);
        assert!(harness.call_panics(128 * G, 1));
        assert!(harness.log.borrow().is_empty());
    }

    fn unaligned_offset_panics(mode: Mode) {
        let harness = harness(mode, &layout(4 * G, &[]), 0x800, None);
        assert!(harness.call_panics(0, 1));
        assert!(harness.log.borrow().is_empty());
        assert_eq!(harness.inspect().chunks_registered, 0);
    }

    macro_rules! sync_and_async_tests {
        ($($check:ident => $sync:ident, $async_ready:ident;)*) => {
            $(
                #[test]
                fn $sync() {
                    $check(Mode::Sync);
                }

                #[test]
                fn $async_ready() {
                    $check(Mode::AsyncReady);
                }
            )*
        };
    }

    sync_and_async_tests! {
        chunk_count => chunk_count_sync, chunk_count_async;
        registration_with_offset => registration_with_offset_sync, registration_with_offset_async;
        page_widening_and_tail => page_widening_and_tail_sync, page_widening_and_tail_async;
        sticky_failure => sticky_failure_sync, sticky_failure_async;
        failure_in_first_chunk => failure_in_first_chunk_sync, failure_in_first_chunk_async;
        multi_chunk_failure => multi_chunk_failure_sync, multi_chunk_failure_async;
        bitmap_bounds => bitmap_bounds_sync, bitmap_bounds_async;
        unaligned_offset_panics => unaligned_offset_panics_sync, unaligned_offset_panics_async;
    }

    #[test]
    fn request_overflow_panics() {
        for mode in [Mode::Sync, Mode::AsyncReady] {
            let harness = harness(mode, &layout(4 * G, &[]), 0, None);
            assert!(harness.call_panics(u64::MAX - 0xfff, 0x1000));
            assert!(harness.call_panics(u64::MAX - 10, 1));
            assert!(harness.call_panics(u64::MAX - 0xffe, 0));
            assert!(harness.log.borrow().is_empty());
        }
    }

    #[test]
    fn overflow_request_end_boundary() {
        // `address + len + 0xfff`: u64::MAX fits (the request ends at MAX_ADDRESS), one more
        // overflows. Past the bitmap either way, so the fitting one panics only on the index.
        assert_eq!(
            request_chunks(u64::MAX - 0x1fff, 0x1000),
            (1 << 33) - 1..1 << 33
        );
        assert_eq!(request_chunks(0, u64::MAX - 0xfff), 0..1 << 33);
        assert!(catch(|| request_chunks(u64::MAX - 0x1fff, 0x1001)).is_err());
        assert!(catch(|| request_chunks(u64::MAX - 0xfff, 1)).is_err());
        assert!(catch(|| request_chunks(1, u64::MAX)).is_err());
    }

    #[test]
    fn overflow_chunk_span_boundary() {
        // `(chunk + 1) * 2 GiB`: the chunk before the last fits, the last chunk below 2^64
        // (whose end is 2^64) overflows.
        let last = (1u64 << 33) - 1;
        assert_eq!(
            chunk_span(last - 1),
            range(0u64.wrapping_sub(4 * G)..0u64.wrapping_sub(2 * G))
        );
        assert!(catch(|| chunk_span(last)).is_err());
        assert_eq!(chunk_base(last), 0u64.wrapping_sub(2 * G));
        assert!(catch(|| chunk_base(last + 1)).is_err());
    }

    #[test]
    fn overflow_offset_plus_piece_end_boundary() {
        // `offset + piece end`: MAX_ADDRESS fits, 2^64 overflows (before any callback).
        for (offset, fits) in [
            (0u64.wrapping_sub(2 * G + 0x1000), true),
            (0u64.wrapping_sub(2 * G), false),
        ] {
            let harness = harness(Mode::Sync, &layout(4 * G, &[]), offset, None);
            if fits {
                let shifted = offset..offset + 2 * G;
                assert_eq!(harness.call(0, 1), (Ok(()), vec![range(shifted)]));
            } else {
                assert!(harness.call_panics(0, 1));
                assert!(harness.log.borrow().is_empty());
            }
        }
    }

    #[test]
    fn offset_overflow_panics_before_the_callback() {
        const O: u64 = 0u64.wrapping_sub(3 * G);
        for mode in [Mode::Sync, Mode::AsyncReady] {
            let harness = harness(mode, &layout(8 * G, &[]), O, None);
            assert_eq!(harness.call(0, 1), (Ok(()), vec![range(O..O + 2 * G)]));
            assert!(harness.call_panics(2 * G, 1));
            assert!(harness.log.borrow().is_empty());
            assert_eq!(harness.inspect().chunks_registered, 1);
        }
    }

    #[test]
    fn closures_work_unchanged() {
        let count = Cell::new(0);
        let registrar = MemoryRegistrar::new(&layout(4 * G, &[]), 0, |_range: MemoryRange| {
            count.set(count.get() + 1);
            Ok::<(), io::Error>(())
        });
        assert_eq!(registrar.register(0, 4 * G), Ok(()));
        assert_eq!(count.get(), 2);
        assert_eq!(registrar.chunks_registered(), 2);
        assert_eq!(registrar.chunk_count(), 2);
        assert_eq!(registrar.registration_offset(), 0);
    }

    /// A callback whose registrations stay pending until the test answers them.
    #[derive(Default)]
    struct PendingCallback {
        log: RefCell<Vec<MemoryRange>>,
        replies: RefCell<Vec<oneshot::Sender<Result<(), io::Error>>>>,
    }

    impl PendingCallback {
        fn reply(&self, index: usize, result: Result<(), io::Error>) {
            let sender =
                std::mem::replace(&mut self.replies.borrow_mut()[index], oneshot::channel().0);
            sender.send(result).expect("registration is still waiting");
        }
    }

    impl RegisterMemoryAsync for &PendingCallback {
        type Error = io::Error;

        fn start_registration(&self, range: MemoryRange) -> Registration<io::Error> {
            self.log.borrow_mut().push(range);
            let (sender, receiver) = oneshot::channel();
            self.replies.borrow_mut().push(sender);
            Registration::Pending(Box::pin(async move {
                receiver
                    .await
                    .unwrap_or_else(|_| Err(io::Error::other("reply dropped")))
            }))
        }
    }

    #[test]
    fn concurrent_calls_share_one_registration() {
        let callback = PendingCallback::default();
        let registrar = MemoryRegistrar::new_async(&layout(4 * G, &[]), 0, &callback);
        let mut first = Task::new(registrar.register_async(0x1000, 1));
        let mut second = Task::new(registrar.register_async(0x5000, 0x10));
        assert_eq!(first.poll(), Poll::Pending);
        assert_eq!(second.poll(), Poll::Pending);
        assert_eq!(*callback.log.borrow(), [range(0..2 * G)]);

        callback.reply(0, Ok(()));
        assert_eq!(first.wake_count(), 1);
        assert_eq!(second.wake_count(), 0);
        assert_eq!(first.poll(), Poll::Ready(Ok(())));
        assert_eq!(second.wake_count(), 1);
        assert_eq!(second.poll(), Poll::Ready(Ok(())));

        assert_eq!(callback.log.borrow().len(), 1);
        assert_eq!(registrar.chunks_registered(), 1);
        assert!(registrar.state.lock().in_flight.is_empty());
        assert_eq!(
            complete_on_first_poll(registrar.register_async(0, 2 * G)),
            Ok(())
        );
        assert_eq!(callback.log.borrow().len(), 1);
    }

    #[test]
    fn pending_failure_reaches_caller_and_waiter() {
        const O: u64 = 1 << 40;
        let callback = PendingCallback::default();
        let registrar = MemoryRegistrar::new_async(&layout(4 * G, &[]), O, &callback);
        let mut first = Task::new(registrar.register_async(2 * G + 0x1000, 1));
        let mut second = Task::new(registrar.register_async(3 * G, 1));
        assert_eq!(first.poll(), Poll::Pending);
        assert_eq!(second.poll(), Poll::Pending);

        callback.reply(0, Err(io::Error::other("refused")));
        assert_eq!(first.poll(), Poll::Ready(Err(O + 2 * G)));
        assert_eq!(second.wake_count(), 1);
        assert_eq!(second.poll(), Poll::Ready(Err(2 * G)));

        assert_eq!(*callback.log.borrow(), [range(O + 2 * G..O + 4 * G)]);
        assert_eq!(registrar.chunks_registered(), 0);
        assert_eq!(
            complete_on_first_poll(registrar.register_async(2 * G, 1)),
            Err(2 * G)
        );
        assert_eq!(callback.log.borrow().len(), 1);
    }

    #[test]
    fn waiter_on_a_later_chunk_of_a_multi_chunk_request() {
        let callback = PendingCallback::default();
        let registrar = MemoryRegistrar::new_async(&layout(4 * G, &[]), 0, &callback);
        let mut single = Task::new(registrar.register_async(2 * G, 1));
        let mut both = Task::new(registrar.register_async(0, 4 * G));
        assert_eq!(single.poll(), Poll::Pending);
        assert_eq!(both.poll(), Poll::Pending);
        assert_eq!(
            *callback.log.borrow(),
            [range(2 * G..4 * G), range(0..2 * G)]
        );

        callback.reply(1, Ok(()));
        assert_eq!(both.poll(), Poll::Pending, "chunk 1 is still in flight");
        let wakes_before = both.wake_count();
        callback.reply(0, Ok(()));
        assert_eq!(single.poll(), Poll::Ready(Ok(())));
        assert!(both.wake_count() > wakes_before);
        assert_eq!(both.poll(), Poll::Ready(Ok(())));
        assert_eq!(callback.log.borrow().len(), 2);
        assert_eq!(registrar.chunks_registered(), 2);
    }

    #[test]
    fn dropped_in_flight_future_releases_its_chunk() {
        let callback = PendingCallback::default();
        let registrar = MemoryRegistrar::new_async(&layout(4 * G, &[]), 0, &callback);
        let mut first = Task::new(registrar.register_async(0, 1));
        let mut second = Task::new(registrar.register_async(0, 1));
        assert_eq!(first.poll(), Poll::Pending);
        assert_eq!(second.poll(), Poll::Pending);
        assert_eq!(second.wake_count(), 0);

        drop(first);
        assert_eq!(second.wake_count(), 1);
        assert_eq!(registrar.chunks_registered(), 0);
        assert_eq!(second.poll(), Poll::Pending);
        assert_eq!(*callback.log.borrow(), [range(0..2 * G), range(0..2 * G)]);
        callback.reply(1, Ok(()));
        assert_eq!(second.poll(), Poll::Ready(Ok(())));
        assert_eq!(registrar.chunks_registered(), 1);
        assert!(registrar.state.lock().in_flight.is_empty());
    }

    #[test]
    fn panic_inside_poll_releases_its_chunk() {
        let calls = Cell::new(0);
        let (sender, receiver) = oneshot::channel::<()>();
        let receiver = RefCell::new(Some(receiver));
        let callback = |_range: MemoryRange| {
            calls.set(calls.get() + 1);
            match receiver.borrow_mut().take() {
                Some(receiver) => Registration::Pending(Box::pin(async move {
                    let _ = receiver.await;
                    panic!("registration future panicked");
                })),
                None => Registration::Ready(Ok::<(), io::Error>(())),
            }
        };
        let registrar = MemoryRegistrar::new_async(&layout(4 * G, &[]), 0, callback);
        let mut first = Task::new(registrar.register_async(0, 1));
        let mut second = Task::new(registrar.register_async(0, 1));
        assert_eq!(first.poll(), Poll::Pending);
        assert_eq!(second.poll(), Poll::Pending);

        sender.send(()).expect("first registration is waiting");
        assert!(catch(|| first.poll()).is_err());
        assert!(registrar.state.lock().in_flight.is_empty());
        assert_eq!(second.wake_count(), 1);
        assert_eq!(second.poll(), Poll::Ready(Ok(())));
        assert_eq!(calls.get(), 2);
        assert_eq!(registrar.chunks_registered(), 1);
    }

    #[test]
    fn unaligned_offset_panic_leaves_nothing_in_flight() {
        let registrar = MemoryRegistrar::new_async(
            &layout(4 * G, &[]),
            0x800,
            AsyncFromSync(|_range: MemoryRange| Ok::<(), io::Error>(())),
        );
        for _ in 0..2 {
            let mut task = Task::new(registrar.register_async(0, 1));
            assert!(catch(|| task.poll()).is_err());
            assert!(registrar.state.lock().in_flight.is_empty());
        }
        assert_eq!(registrar.chunks_registered(), 0);
    }

    #[test]
    fn owned_future_outlives_the_borrow() {
        let log = Log::default();
        let registrar = Rc::new(MemoryRegistrar::new_async(
            &layout(4 * G, &[]),
            0,
            AsyncFromSync(recording(&log, None)),
        ));
        let future = MemoryRegistrar::register_async_owned(registrar.clone(), 2 * G, 1);
        fn assert_static<F: Future + 'static>(future: F) -> F {
            future
        }
        let future = assert_static(future);
        assert_eq!(complete_on_first_poll(future), Ok(()));
        assert_eq!(*log.borrow(), [range(2 * G..4 * G)]);
        assert_eq!(registrar.chunks_registered(), 1);
    }

    /// A thread-safe callback that records ranges.
    #[derive(Default)]
    struct SharedLog(parking_lot::Mutex<Vec<MemoryRange>>);

    // Names its concrete error type, so the async impl below can reuse the answer.
    #[allow(refining_impl_trait)]
    impl RegisterMemory for &SharedLog {
        fn register_range(&self, range: MemoryRange) -> Result<(), io::Error> {
            self.0.lock().push(range);
            Ok(())
        }
    }

    impl RegisterMemoryAsync for &SharedLog {
        type Error = io::Error;

        fn start_registration(&self, range: MemoryRange) -> Registration<io::Error> {
            Registration::Ready(self.register_range(range))
        }
    }

    #[test]
    fn fast_path_takes_no_lock() {
        let callback = SharedLog::default();
        let registrar = MemoryRegistrar::new(&layout(8 * G, &[range(3 * G..4 * G)]), 0, &callback);
        assert_eq!(registrar.register(0, 9 * G), Ok(()));
        let lock = registrar.state.lock();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let sync = registrar.register(5 * G, 3 * G);
                let asynchronous = complete_on_first_poll(registrar.register_async(0, 9 * G));
                let _ = sender.send((sync, asynchronous));
            });
            let outcome = receiver.recv_timeout(Duration::from_secs(30));
            drop(lock);
            assert_eq!(outcome, Ok((Ok(()), Ok(()))));
        });
        assert_eq!(callback.0.lock().len(), 5);
    }

    #[test]
    fn many_threads_register_each_piece_once() {
        let layout = layout(
            64 * G,
            &[range(3 * G..4 * G), range(10 * G..12 * G + 0x3000)],
        );
        let callback = SharedLog::default();
        let registrar = MemoryRegistrar::new(&layout, 0x1000, &callback);
        std::thread::scope(|scope| {
            for thread in 0..8u64 {
                let registrar = &registrar;
                scope.spawn(move || {
                    let end = layout_end(registrar);
                    let mut address = (thread * 0x1234_5000) % end;
                    for _ in 0..200 {
                        registrar
                            .register(address, 0x3000)
                            .expect("callback succeeds");
                        address = (address + 0x9_8765_4321 + thread * 0x1000) % end;
                    }
                    registrar.register(0, end).expect("callback succeeds");
                });
            }
        });
        let mut delivered = callback.0.lock().clone();
        delivered.sort();
        let mut expected: Vec<MemoryRange> = (0..registrar.chunk_count())
            .flat_map(|chunk| registrar.chunk_pieces(chunk).collect::<Vec<_>>())
            .map(|piece| registrar.shifted(piece))
            .collect();
        expected.sort();
        assert_eq!(delivered, expected);
        assert_eq!(registrar.chunks_registered(), registrar.chunk_count());
    }

    fn layout_end<T>(registrar: &MemoryRegistrar<T>) -> u64 {
        registrar.ram.last().map_or(0, |range| range.end())
    }

    #[test]
    fn sync_caller_waits_for_an_async_registration_in_flight() {
        /// Sync registrations succeed at once; async ones wait for a reply from the test.
        #[derive(Default)]
        struct Both {
            log: parking_lot::Mutex<Vec<MemoryRange>>,
            replies: parking_lot::Mutex<Vec<oneshot::Sender<()>>>,
        }
        impl RegisterMemory for &Both {
            fn register_range(
                &self,
                range: MemoryRange,
            ) -> Result<(), impl 'static + std::error::Error> {
                self.log.lock().push(range);
                Ok::<(), io::Error>(())
            }
        }
        impl RegisterMemoryAsync for &Both {
            type Error = io::Error;
            fn start_registration(&self, range: MemoryRange) -> Registration<io::Error> {
                self.log.lock().push(range);
                let (sender, receiver) = oneshot::channel();
                self.replies.lock().push(sender);
                Registration::Pending(Box::pin(async move {
                    receiver
                        .await
                        .map_err(|_| io::Error::other("reply dropped"))
                }))
            }
        }

        let callback = Both::default();
        let registrar = MemoryRegistrar::new(&layout(4 * G, &[]), 0, &callback);
        let mut pending = Task::new(registrar.register_async(0, 1));
        assert_eq!(pending.poll(), Poll::Pending);
        let (started, started_signal) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                let _ = started.send(());
                registrar.register(0x2000, 1)
            });
            started_signal.recv().expect("waiter thread started");
            std::thread::sleep(Duration::from_millis(20));
            let sender = callback.replies.lock().pop().expect("one registration");
            sender.send(()).expect("registration waits");
            assert_eq!(pending.poll(), Poll::Ready(Ok(())));
            assert_eq!(waiter.join().expect("no panic"), Ok(()));
        });
        assert_eq!(*callback.log.lock(), [range(0..2 * G)]);
    }

    /// A callback implemented the way the original's own callers write it: the error type is
    /// opaque in the signature.
    struct Refusing(std::cell::RefCell<Vec<MemoryRange>>);

    impl RegisterMemory for Refusing {
        fn register_range(
            &self,
            range: MemoryRange,
        ) -> Result<(), impl 'static + std::error::Error> {
            self.0.borrow_mut().push(range);
            if range.start() >= 2 * G {
                Err(io::Error::other("host refused"))
            } else {
                Ok(())
            }
        }
    }

    #[test]
    fn an_opaque_error_callback_registers_and_its_error_survives_the_async_adapter() {
        let refusing = Refusing(Default::default());
        let registrar = MemoryRegistrar::new(&layout(4 * G, &[]), 0x1000, refusing);
        assert_eq!(registrar.register(0, 1), Ok(()));
        assert_eq!(registrar.register(2 * G, 1), Err(2 * G + 0x1000));
        assert_eq!(registrar.register(2 * G, 1), Err(2 * G));

        let adapted = AsyncFromSync(Refusing(Default::default()));
        let Registration::Ready(Err(error)) = adapted.start_registration(range(2 * G..4 * G))
        else {
            panic!("a refused synchronous registration is a ready error");
        };
        assert_eq!(error.to_string(), "host refused");
        assert_eq!(error.inner().to_string(), "host refused");
        assert!(error.source().is_none());
        assert_eq!(error.into_inner().to_string(), "host refused");
    }
}
