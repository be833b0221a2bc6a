//! What a VA mapper's window shows, page lock counts, and the changes deferred for locked pages,
//! as plain bookkeeping without system calls.
//!
//! The mapper keeps this record in step with the kernel: every `mmap` it performs into its
//! window is first planned here ([`VaState::plan_map`], [`VaState::plan_unmap`]) and then
//! recorded ([`VaState::record`]). The record answers "is this page mapped, and how?" without a
//! fault, which the fault path and page locking use.
//!
//! Locked pages (D7): while a page's lock count is non-zero the window keeps showing what the
//! page showed when it was locked. A message that would change such a page (an invalidation, or
//! a mapping of different content) leaves it alone and remembers the page's target state; the
//! target is applied when the last lock on the page is released ([`VaState::unlock`]). The one
//! change applied to a locked page at once is a mapping of the *same* content with at least the
//! same access (e.g. read-only to read-write), which no lock holder can observe as a change.

use memory_range::MemoryRange;
use std::collections::BTreeMap;
use std::sync::Arc;

pub(crate) use crate::PAGE_SIZE;

/// What backs a piece of the window.
#[derive(Debug)]
pub(crate) enum Backing<T> {
    /// A shared view of `object` starting at `file_offset`.
    File {
        /// The mapped object.
        object: Arc<T>,
        /// The object offset of the piece's first byte.
        file_offset: u64,
        /// Whether the view is writable.
        writable: bool,
    },
    /// Private anonymous memory committed by the builder (private RAM mode).
    Private,
}

impl<T> Clone for Backing<T> {
    fn clone(&self) -> Self {
        match self {
            Backing::File {
                object,
                file_offset,
                writable,
            } => Backing::File {
                object: object.clone(),
                file_offset: *file_offset,
                writable: *writable,
            },
            Backing::Private => Backing::Private,
        }
    }
}

impl<T> Backing<T> {
    /// The same backing, `by` bytes further on.
    pub(crate) fn advanced(&self, by: u64) -> Self {
        match self {
            Backing::File {
                object,
                file_offset,
                writable,
            } => Backing::File {
                object: object.clone(),
                file_offset: file_offset + by,
                writable: *writable,
            },
            Backing::Private => Backing::Private,
        }
    }

    /// Whether the backing may be written.
    pub(crate) fn writable(&self) -> bool {
        match self {
            Backing::File { writable, .. } => *writable,
            Backing::Private => true,
        }
    }

    /// Whether both show the same bytes (same object at the same offset).
    fn same_content(&self, other: &Self) -> bool {
        match (self, other) {
            (
                Backing::File {
                    object: a,
                    file_offset: offset_a,
                    ..
                },
                Backing::File {
                    object: b,
                    file_offset: offset_b,
                    ..
                },
            ) => Arc::ptr_eq(a, b) && offset_a == offset_b,
            (Backing::Private, Backing::Private) => true,
            _ => false,
        }
    }

    /// Whether `next`, placed `gap` bytes after `self`, continues it seamlessly.
    fn continues(&self, gap: u64, next: &Self) -> bool {
        self.advanced(gap).same_content(next) && self.writable() == next.writable()
    }
}

/// What a page should show once its last lock is released.
#[derive(Debug)]
pub(crate) enum PageTarget<T> {
    /// Return the page to the inaccessible state.
    Unmapped,
    /// Map this backing (for exactly this page).
    Mapped(Backing<T>),
}

/// A change to carry out in the window: unmap a range, or map a backing over it.
#[derive(Debug)]
pub(crate) enum VaOp<T> {
    /// Return the range to the inaccessible state.
    Unmap(MemoryRange),
    /// Map the backing over the range.
    Map(MemoryRange, Backing<T>),
}

#[derive(Debug)]
struct Extent<T> {
    end: u64,
    backing: Backing<T>,
}

/// The record of one VA window (see the module documentation).
#[derive(Debug)]
pub(crate) struct VaState<T> {
    /// Start → mapped piece; pieces are disjoint.
    extents: BTreeMap<u64, Extent<T>>,
    /// Page number → lock count (only non-zero counts are kept).
    locks: BTreeMap<u64, u32>,
    /// Page number → the state to apply when the page's last lock goes.
    pending: BTreeMap<u64, PageTarget<T>>,
}

impl<T> Default for VaState<T> {
    fn default() -> Self {
        Self {
            extents: BTreeMap::new(),
            locks: BTreeMap::new(),
            pending: BTreeMap::new(),
        }
    }
}

impl<T> VaState<T> {
    /// The piece containing `address`: its start, end and backing there.
    fn piece_at(&self, address: u64) -> Option<(u64, u64, &Backing<T>)> {
        let (&start, extent) = self.extents.range(..=address).next_back()?;
        (extent.end > address).then_some((start, extent.end, &extent.backing))
    }

    /// The backing of the page at `address` (advanced to that page).
    fn page_backing(&self, address: u64) -> Option<Backing<T>> {
        let (start, _, backing) = self.piece_at(address)?;
        Some(backing.advanced(address - start))
    }

    /// Whether every byte of `range` is mapped (and writable, if `need_write`).
    pub(crate) fn covers(&self, range: MemoryRange, need_write: bool) -> bool {
        let mut cursor = range.start();
        while cursor < range.end() {
            match self.piece_at(cursor) {
                Some((_, end, backing)) if !need_write || backing.writable() => cursor = end,
                _ => return false,
            }
        }
        true
    }

    /// The mapped pieces, in address order (for inspection and tests).
    pub(crate) fn pieces(&self) -> impl Iterator<Item = (MemoryRange, &Backing<T>)> + '_ {
        self.extents
            .iter()
            .map(|(&start, extent)| (MemoryRange::new(start..extent.end), &extent.backing))
    }

    /// Forgets whatever is recorded in `range`, splitting pieces that reach outside it.
    fn clear(&mut self, range: MemoryRange) {
        if range.is_empty() {
            return;
        }
        // A piece that starts before the range and reaches into it keeps its head (and, if it
        // also reaches beyond the range, gets a tail).
        if let Some((&start, extent)) = self.extents.range_mut(..range.start()).next_back() {
            if extent.end > range.start() {
                let end = extent.end;
                extent.end = range.start();
                if end > range.end() {
                    let backing = extent.backing.advanced(range.end() - start);
                    self.extents.insert(range.end(), Extent { end, backing });
                }
            }
        }
        let inside: Vec<u64> = self
            .extents
            .range(range.start()..range.end())
            .map(|(&start, _)| start)
            .collect();
        for start in inside {
            let Some(extent) = self.extents.remove(&start) else {
                continue;
            };
            if extent.end > range.end() {
                let backing = extent.backing.advanced(range.end() - start);
                self.extents.insert(
                    range.end(),
                    Extent {
                        end: extent.end,
                        backing,
                    },
                );
            }
        }
    }

    /// Records that `op` was carried out in the window.
    pub(crate) fn record(&mut self, op: &VaOp<T>) {
        match op {
            VaOp::Unmap(range) => self.clear(*range),
            VaOp::Map(range, backing) => {
                self.clear(*range);
                if !range.is_empty() {
                    self.extents.insert(
                        range.start(),
                        Extent {
                            end: range.end(),
                            backing: backing.clone(),
                        },
                    );
                }
            }
        }
    }

    /// The page numbers of the locked pages in `range`.
    fn locked_pages_in(&self, range: MemoryRange) -> Vec<u64> {
        self.locks
            .range(range.start() / PAGE_SIZE..range.end().div_ceil(PAGE_SIZE))
            .map(|(&gpn, _)| gpn)
            .collect()
    }

    /// Splits `range` into the runs between the pages in `skipped` (ascending page numbers
    /// inside the range).
    fn runs_without(range: MemoryRange, skipped: &[u64]) -> Vec<MemoryRange> {
        let mut runs = Vec::new();
        let mut cursor = range.start();
        for &gpn in skipped {
            let page = gpn * PAGE_SIZE;
            if page > cursor {
                runs.push(MemoryRange::new(cursor..page));
            }
            cursor = page + PAGE_SIZE;
        }
        if cursor < range.end() {
            runs.push(MemoryRange::new(cursor..range.end()));
        }
        runs
    }

    /// Plans mapping `backing` over `range`: the operations to carry out now (usually one map
    /// of the whole range, or nothing when the window already shows exactly that). Locked pages
    /// that would change are left out and their target remembered.
    pub(crate) fn plan_map(&mut self, range: MemoryRange, backing: &Backing<T>) -> Vec<VaOp<T>> {
        if range.is_empty() || self.shows(range, backing) {
            return Vec::new();
        }
        let mut skipped = Vec::new();
        for gpn in self.locked_pages_in(range) {
            let page = gpn * PAGE_SIZE;
            let wanted = backing.advanced(page - range.start());
            let keep_current = match self.page_backing(page) {
                Some(current) => {
                    !(current.same_content(&wanted) && (wanted.writable() || !current.writable()))
                }
                None => false,
            };
            if keep_current {
                skipped.push(gpn);
                self.pending.insert(gpn, PageTarget::Mapped(wanted));
            } else {
                self.pending.remove(&gpn);
            }
        }
        Self::runs_without(range, &skipped)
            .into_iter()
            .map(|run| VaOp::Map(run, backing.advanced(run.start() - range.start())))
            .collect()
    }

    /// Plans returning `range` to the inaccessible state: the runs to unmap now. Locked pages
    /// are left out and remembered as to be unmapped on release.
    pub(crate) fn plan_unmap(&mut self, range: MemoryRange) -> Vec<VaOp<T>> {
        if range.is_empty() {
            return Vec::new();
        }
        let locked = self.locked_pages_in(range);
        for &gpn in &locked {
            self.pending.insert(gpn, PageTarget::Unmapped);
        }
        Self::runs_without(range, &locked)
            .into_iter()
            .filter(|run| self.any_mapped(*run))
            .map(VaOp::Unmap)
            .collect()
    }

    /// Whether anything is mapped in `range`.
    fn any_mapped(&self, range: MemoryRange) -> bool {
        if self.piece_at(range.start()).is_some() {
            return true;
        }
        self.extents
            .range(range.start()..range.end())
            .next()
            .is_some()
    }

    /// Whether the window shows exactly `backing` over all of `range` (same content and
    /// access).
    fn shows(&self, range: MemoryRange, backing: &Backing<T>) -> bool {
        let mut cursor = range.start();
        while cursor < range.end() {
            let Some((start, end, current)) = self.piece_at(cursor) else {
                return false;
            };
            let current = current.advanced(cursor - start);
            let wanted = backing.advanced(cursor - range.start());
            if !current.same_content(&wanted) || current.writable() != wanted.writable() {
                return false;
            }
            cursor = end;
        }
        true
    }

    /// The pages among `gpns` that are not mapped now.
    pub(crate) fn unmapped_pages(&self, gpns: &[u64]) -> Vec<u64> {
        gpns.iter()
            .copied()
            .filter(|&gpn| {
                gpn.checked_mul(PAGE_SIZE)
                    .is_none_or(|page| self.piece_at(page).is_none())
            })
            .collect()
    }

    /// Adds one lock to each page of `gpns` (a page listed twice gets two).
    pub(crate) fn lock(&mut self, gpns: &[u64]) {
        for &gpn in gpns {
            *self.locks.entry(gpn).or_insert(0) += 1;
        }
    }

    /// Whether the page is locked.
    #[cfg(test)]
    pub(crate) fn is_locked(&self, gpn: u64) -> bool {
        self.locks.contains_key(&gpn)
    }

    /// The number of locked pages.
    pub(crate) fn locked_page_count(&self) -> usize {
        self.locks.len()
    }

    /// Removes one lock from each page of `gpns` and returns the deferred changes of the pages
    /// whose last lock went, coalesced into runs. Unlocking a page that is not locked is
    /// ignored (and reported through the returned count).
    pub(crate) fn unlock(&mut self, gpns: &[u64]) -> (Vec<VaOp<T>>, usize) {
        let mut released = Vec::new();
        let mut not_locked = 0;
        for &gpn in gpns {
            match self.locks.get_mut(&gpn) {
                Some(count) if *count > 1 => *count -= 1,
                Some(_) => {
                    self.locks.remove(&gpn);
                    if let Some(target) = self.pending.remove(&gpn) {
                        released.push((gpn, target));
                    }
                }
                None => not_locked += 1,
            }
        }
        released.sort_by_key(|(gpn, _)| *gpn);
        let mut ops: Vec<VaOp<T>> = Vec::new();
        for (gpn, target) in released {
            let page = MemoryRange::new(gpn * PAGE_SIZE..(gpn + 1) * PAGE_SIZE);
            match (ops.last_mut(), target) {
                (Some(VaOp::Unmap(run)), PageTarget::Unmapped) if run.end() == page.start() => {
                    *run = MemoryRange::new(run.start()..page.end());
                }
                (Some(VaOp::Map(run, backing)), PageTarget::Mapped(next))
                    if run.end() == page.start() && backing.continues(run.len(), &next) =>
                {
                    *run = MemoryRange::new(run.start()..page.end());
                }
                (_, PageTarget::Unmapped) => ops.push(VaOp::Unmap(page)),
                (_, PageTarget::Mapped(backing)) => ops.push(VaOp::Map(page, backing)),
            }
        }
        (ops, not_locked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> MemoryRange {
        MemoryRange::new(start..end)
    }

    fn file(object: &Arc<u32>, file_offset: u64, writable: bool) -> Backing<u32> {
        Backing::File {
            object: object.clone(),
            file_offset,
            writable,
        }
    }

    /// The ops as (kind, range, file offset, writable) tuples.
    fn describe(ops: &[VaOp<u32>]) -> Vec<(&'static str, MemoryRange, u64, bool)> {
        ops.iter()
            .map(|op| match op {
                VaOp::Unmap(range) => ("unmap", *range, 0, false),
                VaOp::Map(
                    range,
                    Backing::File {
                        file_offset,
                        writable,
                        ..
                    },
                ) => ("map", *range, *file_offset, *writable),
                VaOp::Map(range, Backing::Private) => ("private", *range, 0, true),
            })
            .collect()
    }

    fn apply(state: &mut VaState<u32>, ops: &[VaOp<u32>]) {
        for op in ops {
            state.record(op);
        }
    }

    #[test]
    fn map_and_unmap_whole_ranges_without_locks() {
        let object = Arc::new(1);
        let mut state = VaState::default();
        let ops = state.plan_map(r(0x1000, 0x9000), &file(&object, 0x10000, true));
        assert_eq!(describe(&ops), [("map", r(0x1000, 0x9000), 0x10000, true)]);
        apply(&mut state, &ops);
        assert!(state.covers(r(0x1000, 0x9000), true));
        assert!(!state.covers(r(0x0, 0x2000), false));
        // Mapping the same again is a no-op.
        assert!(state
            .plan_map(r(0x1000, 0x9000), &file(&object, 0x10000, true))
            .is_empty());
        // A sub-range of the same mapping too.
        assert!(state
            .plan_map(r(0x2000, 0x3000), &file(&object, 0x11000, true))
            .is_empty());
        let ops = state.plan_unmap(r(0x3000, 0x5000));
        assert_eq!(describe(&ops), [("unmap", r(0x3000, 0x5000), 0, false)]);
        apply(&mut state, &ops);
        let pieces: Vec<_> = state
            .pieces()
            .map(|(range, backing)| match backing {
                Backing::File { file_offset, .. } => (range, *file_offset),
                Backing::Private => (range, u64::MAX),
            })
            .collect();
        assert_eq!(
            pieces,
            [(r(0x1000, 0x3000), 0x10000), (r(0x5000, 0x9000), 0x14000)]
        );
        // Unmapping where nothing is mapped does nothing.
        assert!(state.plan_unmap(r(0x3000, 0x5000)).is_empty());
    }

    #[test]
    fn locked_pages_survive_unmap_until_released() {
        let object = Arc::new(1);
        let mut state = VaState::default();
        let ops = state.plan_map(r(0, 0x10000), &file(&object, 0, true));
        apply(&mut state, &ops);
        state.lock(&[2, 3, 3, 7]);
        let ops = state.plan_unmap(r(0, 0x10000));
        assert_eq!(
            describe(&ops),
            [
                ("unmap", r(0, 0x2000), 0, false),
                ("unmap", r(0x4000, 0x7000), 0, false),
                ("unmap", r(0x8000, 0x10000), 0, false),
            ]
        );
        apply(&mut state, &ops);
        assert!(state.covers(r(0x2000, 0x4000), true));
        assert!(state.covers(r(0x7000, 0x8000), true));
        // Page 3 is locked twice: only page 2 is released by the first unlock.
        let (ops, not_locked) = state.unlock(&[2, 3]);
        assert_eq!(not_locked, 0);
        assert_eq!(describe(&ops), [("unmap", r(0x2000, 0x3000), 0, false)]);
        apply(&mut state, &ops);
        let (ops, _) = state.unlock(&[3, 7]);
        assert_eq!(
            describe(&ops),
            [
                ("unmap", r(0x3000, 0x4000), 0, false),
                ("unmap", r(0x7000, 0x8000), 0, false)
            ]
        );
        apply(&mut state, &ops);
        assert_eq!(state.pieces().count(), 0);
        assert_eq!(state.locked_page_count(), 0);
        assert_eq!(state.unlock(&[9]).1, 1);
    }

    #[test]
    fn a_new_mapping_reaches_a_locked_page_at_release() {
        let ram = Arc::new(1);
        let device = Arc::new(2);
        let mut state = VaState::default();
        let ops = state.plan_map(r(0, 0x4000), &file(&ram, 0, true));
        apply(&mut state, &ops);
        state.lock(&[1, 2]);
        let ops = state.plan_unmap(r(0, 0x4000));
        apply(&mut state, &ops);
        let ops = state.plan_map(r(0, 0x4000), &file(&device, 0x100000, true));
        assert_eq!(
            describe(&ops),
            [
                ("map", r(0, 0x1000), 0x100000, true),
                ("map", r(0x3000, 0x4000), 0x103000, true)
            ]
        );
        apply(&mut state, &ops);
        let (ops, _) = state.unlock(&[1, 2]);
        assert_eq!(describe(&ops), [("map", r(0x1000, 0x3000), 0x101000, true)]);
        apply(&mut state, &ops);
        assert!(state.shows(r(0, 0x4000), &file(&device, 0x100000, true)));
    }

    #[test]
    fn same_content_upgrades_apply_to_locked_pages_downgrades_wait() {
        let ram = Arc::new(1);
        let mut state = VaState::default();
        let ops = state.plan_map(r(0, 0x2000), &file(&ram, 0, false));
        apply(&mut state, &ops);
        state.lock(&[0]);
        // Read-only to read-write of the same bytes: applied at once, no pending change.
        let ops = state.plan_map(r(0, 0x2000), &file(&ram, 0, true));
        assert_eq!(describe(&ops), [("map", r(0, 0x2000), 0, true)]);
        apply(&mut state, &ops);
        // Read-write to read-only: the locked page keeps read-write until released.
        let ops = state.plan_map(r(0, 0x2000), &file(&ram, 0, false));
        assert_eq!(describe(&ops), [("map", r(0x1000, 0x2000), 0x1000, false)]);
        apply(&mut state, &ops);
        assert!(state.covers(r(0, 0x1000), true));
        let (ops, _) = state.unlock(&[0]);
        assert_eq!(describe(&ops), [("map", r(0, 0x1000), 0, false)]);
    }

    #[test]
    fn unmapped_pages_and_private_memory() {
        let mut state: VaState<u32> = VaState::default();
        apply(&mut state, &[VaOp::Map(r(0, 0x3000), Backing::Private)]);
        assert_eq!(state.unmapped_pages(&[0, 2, 3, u64::MAX]), [3, u64::MAX]);
        assert!(state.covers(r(0, 0x3000), true));
        assert!(state.plan_map(r(0, 0x3000), &Backing::Private).is_empty());
        state.lock(&[1]);
        assert!(state.is_locked(1));
        let ops = state.plan_unmap(r(0, 0x3000));
        assert_eq!(describe(&ops).len(), 2);
    }
}
