//! Dirty tracking of a manager's guest RAM (opt-in, never on by default).
//!
//! [`DirtyTracking`] (from [`GuestMemoryManager::dirty_tracking`](crate::GuestMemoryManager::dirty_tracking))
//! starts, takes and stops tracking. Two sources feed it:
//!
//! - writes of this process through the manager's guest memory (every [`GuestMemory`](guestmem::GuestMemory)
//!   from its client): they mark the manager's [`DirtyBitmap`] after each write, and
//! - guest writes through every attached partition: each keeps its own dirty log
//!   (`PartitionMemoryMap::start_dirty_log`; for KVM `KVM_MEM_LOG_DIRTY_PAGES`), reported as
//!   host addresses of the manager's VA window, i.e. as GPAs.
//!
//! A take runs on the region manager's thread: it first folds every partition's log into the
//! bitmap, then swaps the bitmap's bits out (so a write racing the take is collected by that
//! take or the next one), and keeps the result as guest RAM page ranges. Decommitting RAM counts
//! as a write. What "dirty" means exactly, and what it cannot see, is in `docs/snapshots.md`.
//!
//! The state also remembers, per tracking session, the pages dirtied since the last snapshot
//! taken while tracking (the *chain head*), so an incremental snapshot needs no `take()` of its
//! own and is unaffected by the caller's takes. A live migration keeps a third set of its own
//! (`MigrationOp`) for the same reason: its rounds and the caller's takes never steal pages
//! from each other.

use crate::memory_manager::region_actor::RegionManagerClient;
use crate::region_manager::RegionManagerError;
use guestmem::DirtyBitmap;
use memory_range::MemoryRange;
use std::collections::BTreeMap;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::Weak;
use virt::PartitionMemoryMap;

const PAGE_SHIFT: u32 = 12;

/// Dirty tracking failed.
#[derive(Debug, thiserror::Error)]
pub enum DirtyTrackingError {
    /// `take()` while tracking is off (JavaScript: `ERR_DIRTY_TRACKING_OFF`).
    #[error("dirty tracking is off: call start() before take()")]
    Off,
    /// An attached partition could not start, read or stop its dirty log.
    #[error("partition {index} could not {action} its dirty log")]
    Partition {
        /// The partition mapper's index (registration order).
        index: usize,
        /// `"start"`, `"read"` or `"stop"`.
        action: &'static str,
        /// What the partition reported.
        #[source]
        source: virt::Error,
    },
    /// The manager is gone or poisoned.
    #[error(transparent)]
    Manager(#[from] RegionManagerError),
}

/// Starts, takes and stops dirty tracking of one manager (cheap to clone; `Send + Sync`).
#[derive(Debug, Clone)]
pub struct DirtyTracking {
    regions: RegionManagerClient,
    bitmap: Arc<DirtyBitmap>,
}

impl DirtyTracking {
    pub(crate) fn new(regions: RegionManagerClient, bitmap: Arc<DirtyBitmap>) -> Self {
        Self { regions, bitmap }
    }

    /// Starts tracking (a no-op when it is on): every attached partition starts logging, and
    /// guest-memory writes are recorded from now on. A partition that cannot log fails the
    /// start, and nothing stays started.
    ///
    /// `start`, `take` and `stop` send their request when called, so they are carried out in
    /// the order they were called, whenever their futures are polled (a `take()` called before
    /// a `stop()` takes what was written, even if `stop()`'s future is awaited first).
    pub fn start(&self) -> impl Future<Output = Result<(), DirtyTrackingError>> + Send + 'static {
        let reply = self.regions.dirty(DirtyOp::Start);
        async move { reply.await.map(drop) }
    }

    /// The guest RAM written since `start()` or the previous `take()`, as coalesced ascending
    /// page-aligned GPA ranges; resets atomically (a racing write is in this take or the next).
    /// Sent when called (see [`Self::start`]).
    pub fn take(
        &self,
    ) -> impl Future<Output = Result<Vec<MemoryRange>, DirtyTrackingError>> + Send + 'static {
        self.regions.dirty(DirtyOp::Take)
    }

    /// Stops tracking (a no-op when it is off); what was not taken is dropped. Sent when called
    /// (see [`Self::start`]).
    pub fn stop(&self) -> impl Future<Output = Result<(), DirtyTrackingError>> + Send + 'static {
        let reply = self.regions.dirty(DirtyOp::Stop);
        async move { reply.await.map(drop) }
    }

    /// Whether tracking is on.
    pub fn is_active(&self) -> bool {
        self.bitmap.is_active()
    }
}

/// A dirty-tracking request to the region manager.
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub(crate) enum DirtyOp {
    Start,
    Take,
    Stop,
}

/// A set of pages kept as coalesced runs (start page → end page, exclusive).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PageSet {
    runs: BTreeMap<u64, u64>,
}

impl PageSet {
    /// Adds the pages `[first, end)`.
    pub fn insert(&mut self, mut first: u64, mut end: u64) {
        if first >= end {
            return;
        }
        // Merge with a run that starts before and reaches `first`.
        if let Some((&start, &stop)) = self.runs.range(..=first).next_back() {
            if stop >= first {
                if stop >= end {
                    return;
                }
                first = start;
                self.runs.remove(&start);
            }
        }
        // Swallow runs that start inside `[first, end]`.
        while let Some((&start, &stop)) = self.runs.range(first..=end).next() {
            end = end.max(stop);
            self.runs.remove(&start);
        }
        self.runs.insert(first, end);
    }

    /// Adds every page of `other`.
    pub fn extend(&mut self, other: &PageSet) {
        for (&first, &end) in &other.runs {
            self.insert(first, end);
        }
    }

    /// The runs as `(first page, end page)`, ascending.
    pub fn runs(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.runs.iter().map(|(&first, &end)| (first, end))
    }

    /// The runs as GPA ranges.
    pub fn to_ranges(&self) -> Vec<MemoryRange> {
        self.runs()
            .map(|(first, end)| MemoryRange::new(first << PAGE_SHIFT..end << PAGE_SHIFT))
            .collect()
    }
}

/// Where a snapshot taken while tracking stands in its chain.
#[derive(Debug)]
struct ChainHead {
    /// The id of the latest snapshot.
    snapshot: String,
    /// RAM pages dirtied since it was taken.
    pages: PageSet,
    /// A snapshot being written on top of it: its id and the pages handed to it.
    pending: Option<(String, PageSet)>,
}

/// One tracking session (from `start()` to `stop()`).
#[derive(Debug)]
struct Session {
    id: u64,
    /// Pages dirtied since the last `take()`.
    user: PageSet,
    chain: Option<ChainHead>,
    /// A live migration's pages dirtied since its last take.
    migration: Option<MigrationSet>,
    /// The partitions logging guest writes in this session. A partition dropped while it logs
    /// takes its last, unharvested writes with it: the next harvest then counts all of RAM.
    /// Partitions whose guest never writes memory
    /// ([`logs_guest_writes`](PartitionMemoryMap::logs_guest_writes) false) are not kept.
    logging: Vec<Weak<dyn PartitionMemoryMap>>,
}

impl Session {
    /// Adds the pages `[first, end)` to every set of the session.
    fn insert(&mut self, first: u64, end: u64) {
        self.user.insert(first, end);
        if let Some(chain) = &mut self.chain {
            chain.pages.insert(first, end);
        }
        if let Some(migration) = &mut self.migration {
            migration.pages.insert(first, end);
        }
    }

    /// Remembers that `partition` logs in this session.
    fn logging(&mut self, partition: &Arc<dyn PartitionMemoryMap>) {
        if !partition.logs_guest_writes() {
            return;
        }
        let weak = Arc::downgrade(partition);
        if !self.logging.iter().any(|known| known.ptr_eq(&weak)) {
            self.logging.push(weak);
        }
    }
}

/// The pages a live migration has not taken yet, and whether it started the session.
#[derive(Debug)]
struct MigrationSet {
    pages: PageSet,
    started_session: bool,
}

/// A live migration's use of dirty tracking (one migration per manager at a time).
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub(crate) enum MigrationOp {
    /// Starts tracking if it is off (remembering that the migration started it) and opens the
    /// migration's own page set. Fails with [`MigrationTracking::Busy`] while another
    /// migration has one.
    Begin,
    /// Harvests and hands over the migration's pages (reset).
    Take,
    /// Closes the migration's set; stops tracking if the migration started it.
    End,
}

/// What a [`MigrationOp`] found.
#[derive(Debug)]
pub(crate) enum MigrationTracking {
    /// `Begin`: the migration's set is open (tracking is on; if it was off, `End` stops it).
    Begun,
    /// `Take`: the RAM pages dirtied since `Begin` or the previous take.
    Pages(PageSet),
    /// `Begin` while another migration is running.
    Busy,
    /// `Take` after tracking was stopped (and maybe restarted) since `Begin`: pages may have
    /// been missed.
    Stopped,
    /// `End`.
    Ended,
}

/// Why a snapshot cannot be incremental on its base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NotTracked {
    /// Tracking is off.
    Off,
    /// Tracking was restarted (or never on) since the base was taken.
    OtherSession,
    /// A later snapshot of the same session became the chain head.
    NotLatest { latest: String },
}

impl std::fmt::Display for NotTracked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotTracked::Off => f.write_str("dirty tracking is off"),
            NotTracked::OtherSession => {
                f.write_str("dirty tracking was not on continuously since the base was taken")
            }
            NotTracked::NotLatest { latest } => write!(
                f,
                "the base is not the latest snapshot taken while tracking (that is {latest})"
            ),
        }
    }
}

/// What a snapshot learns when it starts.
#[derive(Debug)]
pub(crate) struct SnapshotStart {
    /// The tracking session, when tracking is on.
    pub session: Option<u64>,
    /// For an incremental snapshot: the RAM pages dirtied since its base.
    pub dirty: Option<PageSet>,
}

/// A partition that is still alive, with the base and length of the VA window its mappings
/// come from.
pub(crate) struct LiveTarget {
    pub partition: Arc<dyn PartitionMemoryMap>,
    pub index: usize,
    pub va_base: u64,
    pub va_len: u64,
}

/// The dirty-tracking state of a manager, kept by the region manager task.
#[derive(Debug)]
pub(crate) struct DirtyState {
    bitmap: Arc<DirtyBitmap>,
    session: Option<Session>,
    /// The RAM ranges (page numbers), sorted: what a take reports is clipped to them.
    ram: Vec<(u64, u64)>,
}

/// The RAM ranges of `ram` (sorted, disjoint page runs) that overlap the pages `[first, end)`:
/// found by binary search, so clipping a dirty run costs O(log ranges + overlaps), not a scan
/// of every RAM range (a layout with thousands of ranges made a take quadratic).
fn ram_overlapping(ram: &[(u64, u64)], first: u64, end: u64) -> &[(u64, u64)] {
    let from = ram.partition_point(|&(_, ram_end)| ram_end <= first);
    let to = from + ram[from..].partition_point(|&(ram_first, _)| ram_first < end);
    &ram[from..to]
}

/// Runs `call` on each distinct partition (a VTL2 partition is attached twice).
fn each_distinct<'a>(targets: &'a [LiveTarget]) -> impl Iterator<Item = &'a LiveTarget> + 'a {
    targets
        .iter()
        .enumerate()
        .filter_map(move |(position, target)| {
            let first = targets
                .iter()
                .position(|other| Arc::ptr_eq(&other.partition, &target.partition));
            (first == Some(position)).then_some(target)
        })
}

impl DirtyState {
    pub(crate) fn new(bitmap: Arc<DirtyBitmap>) -> Self {
        Self {
            bitmap,
            session: None,
            ram: Vec::new(),
        }
    }

    /// Sets the RAM ranges the reports are clipped to.
    pub(crate) fn set_ram(&mut self, ranges: impl IntoIterator<Item = MemoryRange>) {
        let mut ram: Vec<(u64, u64)> = ranges
            .into_iter()
            .map(|range| (range.start() >> PAGE_SHIFT, range.end() >> PAGE_SHIFT))
            .collect();
        ram.sort_unstable();
        self.ram = ram;
    }

    pub(crate) fn is_active(&self) -> bool {
        self.session.is_some()
    }

    /// Records `range` (e.g. decommitted RAM) as written.
    pub(crate) fn mark(&self, range: MemoryRange) {
        self.bitmap.mark(range.start(), range.len());
    }

    /// Starts logging on a partition being attached while tracking is on.
    pub(crate) fn start_partition(
        &mut self,
        partition: &Arc<dyn PartitionMemoryMap>,
        index: usize,
    ) -> Result<(), DirtyTrackingError> {
        let Some(session) = &mut self.session else {
            return Ok(());
        };
        partition
            .start_dirty_log()
            .map_err(|source| DirtyTrackingError::Partition {
                index,
                action: "start",
                source,
            })?;
        session.logging(partition);
        Ok(())
    }

    pub(crate) fn run(
        &mut self,
        op: DirtyOp,
        targets: &[LiveTarget],
    ) -> Result<Vec<MemoryRange>, DirtyTrackingError> {
        match op {
            DirtyOp::Start => self.start(targets).map(|()| Vec::new()),
            DirtyOp::Take => {
                if self.session.is_none() {
                    return Err(DirtyTrackingError::Off);
                }
                let result = self.harvest(targets);
                let session = self.session.as_mut().ok_or(DirtyTrackingError::Off)?;
                let pages = std::mem::take(&mut session.user);
                result.map(|()| pages.to_ranges())
            }
            DirtyOp::Stop => self.stop(targets).map(|()| Vec::new()),
        }
    }

    fn start(&mut self, targets: &[LiveTarget]) -> Result<(), DirtyTrackingError> {
        if self.session.is_some() {
            return Ok(());
        }
        let mut started: Vec<&LiveTarget> = Vec::new();
        for target in each_distinct(targets) {
            if let Err(source) = target.partition.start_dirty_log() {
                for done in started {
                    let _ = done.partition.stop_dirty_log();
                }
                return Err(DirtyTrackingError::Partition {
                    index: target.index,
                    action: "start",
                    source,
                });
            }
            started.push(target);
        }
        self.bitmap.start();
        let mut session = Session {
            id: std::collections::hash_map::RandomState::new().hash_one(0u64),
            user: PageSet::default(),
            chain: None,
            migration: None,
            logging: Vec::new(),
        };
        for target in started {
            session.logging(&target.partition);
        }
        self.session = Some(session);
        Ok(())
    }

    fn stop(&mut self, targets: &[LiveTarget]) -> Result<(), DirtyTrackingError> {
        if self.session.take().is_none() {
            return Ok(());
        }
        self.bitmap.stop();
        let mut first_error = None;
        for target in each_distinct(targets) {
            if let Err(source) = target.partition.stop_dirty_log() {
                first_error.get_or_insert(DirtyTrackingError::Partition {
                    index: target.index,
                    action: "stop",
                    source,
                });
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Folds every partition's log into the bitmap, then moves the bitmap's pages (clipped to
    /// RAM) into the session's sets. A partition that fails is reported after the others were
    /// read (their pages are kept).
    fn harvest(&mut self, targets: &[LiveTarget]) -> Result<(), DirtyTrackingError> {
        let mut first_error = None;
        for target in each_distinct(targets) {
            let bitmap = &self.bitmap;
            let (base, len) = (target.va_base, target.va_len);
            let result = target.partition.take_dirty_log(&mut |address, size| {
                let Some(offset) = address.checked_sub(base).filter(|&offset| offset < len) else {
                    return;
                };
                bitmap.mark(offset, size.min(len - offset));
            });
            if let Err(source) = result {
                first_error.get_or_insert(DirtyTrackingError::Partition {
                    index: target.index,
                    action: "read",
                    source,
                });
            }
        }
        let Some(session) = &mut self.session else {
            return Err(DirtyTrackingError::Off);
        };
        let ram = &self.ram;
        // A partition that logged and is gone (closed, dropped) took the writes it logged
        // since the last harvest with it: every RAM page may have changed.
        let logging = session.logging.len();
        session
            .logging
            .retain(|partition| partition.strong_count() > 0);
        if session.logging.len() < logging {
            for &(ram_first, ram_end) in ram {
                session.insert(ram_first, ram_end);
            }
        }
        self.bitmap.take(|first, count| {
            let end = first + count;
            for &(ram_first, ram_end) in ram_overlapping(ram, first, end) {
                let (start, stop) = (first.max(ram_first), end.min(ram_end));
                if start < stop {
                    session.insert(start, stop);
                }
            }
        });
        first_error.map_or(Ok(()), Err)
    }

    /// Starts snapshot `id`: with `base` (its session and id) the pages dirtied since the base
    /// are handed over (and kept aside until [`finish_snapshot`](Self::finish_snapshot)).
    pub(crate) fn begin_snapshot(
        &mut self,
        targets: &[LiveTarget],
        base: Option<(u64, &str)>,
        id: &str,
    ) -> Result<Result<SnapshotStart, NotTracked>, DirtyTrackingError> {
        if self.session.is_none() {
            return Ok(match base {
                Some(_) => Err(NotTracked::Off),
                None => Ok(SnapshotStart {
                    session: None,
                    dirty: None,
                }),
            });
        }
        self.harvest(targets)?;
        let Some(session) = &mut self.session else {
            return Ok(Err(NotTracked::Off));
        };
        if let Some((base_session, base_id)) = base {
            // The chain head is the latest snapshot taken (or restored and adopted) while
            // tracking: ids are random, so a match means tracking covers everything since.
            match &session.chain {
                Some(chain) if chain.pending.is_none() && chain.snapshot == base_id => {}
                _ if base_session != session.id => return Ok(Err(NotTracked::OtherSession)),
                Some(chain) => {
                    return Ok(Err(NotTracked::NotLatest {
                        latest: chain.snapshot.clone(),
                    }))
                }
                None => return Ok(Err(NotTracked::OtherSession)),
            }
        }
        if session
            .chain
            .as_ref()
            .is_some_and(|chain| chain.pending.is_some())
        {
            // Another snapshot is being written: this one stays outside the chain.
            return Ok(Ok(SnapshotStart {
                session: None,
                dirty: None,
            }));
        }
        let head = session.chain.get_or_insert_with(|| ChainHead {
            snapshot: String::new(),
            pages: PageSet::default(),
            pending: None,
        });
        let pages = std::mem::take(&mut head.pages);
        head.pending = Some((id.to_owned(), pages.clone()));
        Ok(Ok(SnapshotStart {
            session: Some(session.id),
            dirty: base.map(|_| pages),
        }))
    }

    /// Ends snapshot `id`: on success it becomes the chain head; on failure the pages it was
    /// handed go back.
    pub(crate) fn finish_snapshot(&mut self, id: &str, succeeded: bool) {
        let Some(chain) = self.session.as_mut().and_then(|s| s.chain.as_mut()) else {
            return;
        };
        let Some((pending, pages)) = chain.pending.take() else {
            return;
        };
        if pending != id {
            chain.pending = Some((pending, pages));
            return;
        }
        if succeeded {
            chain.snapshot = pending;
        } else {
            chain.pages.extend(&pages);
        }
    }

    /// Runs a live migration's tracking operation (see [`MigrationOp`]).
    pub(crate) fn migration(
        &mut self,
        op: MigrationOp,
        targets: &[LiveTarget],
    ) -> Result<MigrationTracking, DirtyTrackingError> {
        match op {
            MigrationOp::Begin => {
                if self
                    .session
                    .as_ref()
                    .is_some_and(|session| session.migration.is_some())
                {
                    return Ok(MigrationTracking::Busy);
                }
                let started_session = self.session.is_none();
                self.start(targets)?;
                if let Some(session) = &mut self.session {
                    session.migration = Some(MigrationSet {
                        pages: PageSet::default(),
                        started_session,
                    });
                }
                Ok(MigrationTracking::Begun)
            }
            MigrationOp::Take => {
                let tracked = self
                    .session
                    .as_ref()
                    .is_some_and(|session| session.migration.is_some());
                if !tracked {
                    return Ok(MigrationTracking::Stopped);
                }
                self.harvest(targets)?;
                let pages = self
                    .session
                    .as_mut()
                    .and_then(|session| session.migration.as_mut())
                    .map(|migration| std::mem::take(&mut migration.pages));
                Ok(pages.map_or(MigrationTracking::Stopped, MigrationTracking::Pages))
            }
            MigrationOp::End => {
                let set = self
                    .session
                    .as_mut()
                    .and_then(|session| session.migration.take());
                if set.is_some_and(|set| set.started_session) {
                    self.stop(targets)?;
                }
                Ok(MigrationTracking::Ended)
            }
        }
    }

    /// Makes snapshot `id` (just restored into this manager) the chain head of a new session,
    /// so that the next snapshot can be incremental on it.
    pub(crate) fn adopt_snapshot(
        &mut self,
        targets: &[LiveTarget],
        id: &str,
    ) -> Result<(), DirtyTrackingError> {
        self.start(targets)?;
        if let Some(session) = &mut self.session {
            session.chain = Some(ChainHead {
                snapshot: id.to_owned(),
                pages: PageSet::default(),
                pending: None,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod page_set_tests {
    use super::*;

    #[test]
    fn page_sets_coalesce() {
        let mut set = PageSet::default();
        set.insert(10, 12);
        set.insert(14, 16);
        set.insert(12, 14);
        set.insert(11, 13);
        set.insert(20, 21);
        set.insert(5, 5);
        assert_eq!(set.runs().collect::<Vec<_>>(), vec![(10, 16), (20, 21)]);
        set.insert(0, 30);
        assert_eq!(set.runs().collect::<Vec<_>>(), vec![(0, 30)]);
        set.insert(3, 4);
        assert_eq!(set.to_ranges(), vec![MemoryRange::new(0..30 << 12)]);
    }

    #[test]
    fn dirty_runs_meet_only_the_ram_ranges_they_overlap() {
        // 10,000 one-page RAM ranges with a one-page hole after each (pages 2i..2i+1).
        let ram: Vec<(u64, u64)> = (0..10_000).map(|i| (2 * i, 2 * i + 1)).collect();
        assert_eq!(ram_overlapping(&ram, 5000, 5001), &[(5000, 5001)]);
        // A run in a hole meets no range; one spanning three ranges meets exactly those.
        assert_eq!(ram_overlapping(&ram, 5001, 5002), &[] as &[(u64, u64)]);
        assert_eq!(
            ram_overlapping(&ram, 5001, 5007),
            &[(5002, 5003), (5004, 5005), (5006, 5007)]
        );
        // Partly overlapping at both ends, and outside all RAM.
        let wide = [(10, 20), (30, 40), (50, 60)];
        assert_eq!(ram_overlapping(&wide, 15, 35), &[(10, 20), (30, 40)]);
        assert_eq!(ram_overlapping(&wide, 0, 10), &[] as &[(u64, u64)]);
        assert_eq!(ram_overlapping(&wide, 60, 100), &[] as &[(u64, u64)]);
        assert_eq!(ram_overlapping(&wide, 0, 100), &wide);
        assert_eq!(ram_overlapping(&[], 0, 100), &[] as &[(u64, u64)]);
    }
}
