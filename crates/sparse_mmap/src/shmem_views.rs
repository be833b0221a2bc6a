//! Bookkeeping of which parts of a reservation hold shared views of shmem objects (memfd, tmpfs).
//!
//! `decommit` must free the memory of a shared memfd view (punch a hole, so every view of that
//! object reads zero) but must never punch a hole in an ordinary file, whose contents would be
//! lost. The kernel offers no cheap way to ask what a VA range holds, so the mapping records, for
//! every placement it performs, whether the placed range is a shared shmem view. This module is
//! that record: disjoint offset ranges ordered by start, without any unsafe code.
//!
//! A reservation may hold tens of thousands of views (one per device-window mapping), so the
//! ranges are kept in an ordered map: recording or forgetting a range and splitting a queried
//! range cost O(log n) plus the number of recorded ranges the range touches, never a pass over
//! all of them.

use std::collections::BTreeMap;
use std::ops::Range;

/// Disjoint offset ranges (relative to the reservation base) that hold shared views of shmem
/// objects. Adjacent ranges are kept apart, as they were recorded.
#[derive(Debug, Default)]
pub(crate) struct ShmemViews {
    /// Start of each range to its end.
    ranges: BTreeMap<usize, usize>,
    /// Recorded ranges visited, plus one per call (tests only, see `ShmemViews::work`).
    #[cfg(test)]
    work: std::cell::Cell<u64>,
}

/// One piece of a queried range, with whether it holds a shared shmem view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Piece {
    pub range: Range<usize>,
    pub is_shmem: bool,
}

impl ShmemViews {
    /// Counts `visited` recorded ranges (and the call) in the work counter of the tests.
    #[cfg_attr(not(test), allow(unused_variables))]
    fn count(&self, visited: usize) {
        #[cfg(test)]
        self.work.set(self.work.get() + 1 + visited as u64);
    }

    /// The recorded ranges visited so far, plus one per call: what proves that an operation
    /// does not visit the ranges it does not touch.
    #[cfg(test)]
    pub fn work(&self) -> u64 {
        self.work.get()
    }

    /// The recorded range that starts before `start` and reaches past it, if any.
    fn straddling(&self, start: usize) -> Option<Range<usize>> {
        self.ranges
            .range(..start)
            .next_back()
            .filter(|&(_, &end)| end > start)
            .map(|(&s, &e)| s..e)
    }

    /// Forgets whatever was recorded in `range` (a placement of another kind replaced it).
    pub fn remove(&mut self, range: Range<usize>) {
        if range.is_empty() {
            return;
        }
        let mut visited = 0;
        // A range starting before `range` keeps its part before it, and its part after it if
        // it reaches past the end.
        if let Some(before) = self.straddling(range.start) {
            visited += 1;
            self.ranges.insert(before.start, range.start);
            if before.end > range.end {
                self.ranges.insert(range.end, before.end);
            }
        }
        // The ranges starting inside `range` go; the last may keep its part after it.
        let inside: Vec<(usize, usize)> = self
            .ranges
            .range(range.start..range.end)
            .map(|(&s, &e)| (s, e))
            .collect();
        visited += inside.len();
        for (start, end) in inside {
            self.ranges.remove(&start);
            if end > range.end {
                self.ranges.insert(range.end, end);
            }
        }
        self.count(visited);
    }

    /// Records `range` as a shared shmem view, replacing whatever was recorded there.
    pub fn insert(&mut self, range: Range<usize>) {
        if range.is_empty() {
            return;
        }
        self.remove(range.clone());
        self.ranges.insert(range.start, range.end);
        self.count(0);
    }

    /// Splits `range` into consecutive pieces, each entirely shmem or entirely not.
    pub fn pieces(&self, range: Range<usize>) -> Vec<Piece> {
        let mut pieces = Vec::new();
        if range.is_empty() {
            return pieces;
        }
        let mut cursor = range.start;
        let recorded = self.straddling(range.start).into_iter().chain(
            self.ranges
                .range(range.start..range.end)
                .map(|(&s, &e)| s..e),
        );
        let mut visited = 0;
        for existing in recorded {
            visited += 1;
            if existing.start > cursor {
                pieces.push(Piece {
                    range: cursor..existing.start,
                    is_shmem: false,
                });
                cursor = existing.start;
            }
            let end = existing.end.min(range.end);
            pieces.push(Piece {
                range: cursor..end,
                is_shmem: true,
            });
            cursor = end;
        }
        if cursor < range.end {
            pieces.push(Piece {
                range: cursor..range.end,
                is_shmem: false,
            });
        }
        self.count(visited);
        pieces
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(range: Range<usize>, is_shmem: bool) -> Piece {
        Piece { range, is_shmem }
    }

    #[test]
    fn empty_record_is_all_private() {
        let views = ShmemViews::default();
        assert_eq!(views.pieces(0..100), vec![piece(0..100, false)]);
        assert!(views.pieces(5..5).is_empty());
    }

    #[test]
    fn insert_and_query_splits_at_boundaries() {
        let mut views = ShmemViews::default();
        views.insert(10..20);
        views.insert(30..40);
        assert_eq!(
            views.pieces(0..50),
            vec![
                piece(0..10, false),
                piece(10..20, true),
                piece(20..30, false),
                piece(30..40, true),
                piece(40..50, false),
            ]
        );
        assert_eq!(
            views.pieces(15..35),
            vec![
                piece(15..20, true),
                piece(20..30, false),
                piece(30..35, true)
            ]
        );
    }

    #[test]
    fn remove_carves_holes_and_insert_replaces() {
        let mut views = ShmemViews::default();
        views.insert(0..100);
        views.remove(40..60);
        assert_eq!(
            views.pieces(0..100),
            vec![
                piece(0..40, true),
                piece(40..60, false),
                piece(60..100, true)
            ]
        );
        views.insert(30..70);
        assert_eq!(
            views.pieces(0..100),
            vec![
                piece(0..30, true),
                piece(30..70, true),
                piece(70..100, true)
            ]
        );
        views.remove(0..100);
        assert_eq!(views.pieces(0..100), vec![piece(0..100, false)]);
    }

    /// The record as a plain sorted list, every operation a pass over all of it: the reference
    /// the ordered map must agree with.
    #[derive(Default)]
    struct Model(Vec<Range<usize>>);

    impl Model {
        fn remove(&mut self, range: Range<usize>) {
            if range.is_empty() {
                return;
            }
            let mut kept = Vec::new();
            for existing in self.0.drain(..) {
                if existing.end <= range.start || existing.start >= range.end {
                    kept.push(existing);
                    continue;
                }
                if existing.start < range.start {
                    kept.push(existing.start..range.start);
                }
                if existing.end > range.end {
                    kept.push(range.end..existing.end);
                }
            }
            kept.sort_by_key(|r| r.start);
            self.0 = kept;
        }

        fn insert(&mut self, range: Range<usize>) {
            if range.is_empty() {
                return;
            }
            self.remove(range.clone());
            self.0.push(range);
            self.0.sort_by_key(|r| r.start);
        }

        /// Each unit of `range` with whether it is recorded, and where recorded ranges begin.
        fn pieces(&self, range: Range<usize>) -> Vec<Piece> {
            let mut pieces: Vec<Piece> = Vec::new();
            for unit in range.clone() {
                let owner = self.0.iter().find(|r| r.contains(&unit));
                let starts_piece = match (owner, pieces.last()) {
                    (_, None) => true,
                    (Some(r), Some(last)) => !last.is_shmem || r.start == unit,
                    (None, Some(last)) => last.is_shmem,
                };
                if starts_piece {
                    pieces.push(piece(unit..unit + 1, owner.is_some()));
                } else if let Some(last) = pieces.last_mut() {
                    last.range.end = unit + 1;
                }
            }
            pieces
        }
    }

    /// A tiny deterministic generator.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, bound: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as usize % bound
        }

        fn range(&mut self, space: usize) -> Range<usize> {
            let start = self.below(space);
            start..start + self.below(12)
        }
    }

    #[test]
    fn agrees_with_a_plain_list_under_random_changes() {
        const SPACE: usize = 200;
        for seed in 0..20 {
            let mut rng = Lcg(seed);
            let mut views = ShmemViews::default();
            let mut model = Model::default();
            for step in 0..400 {
                let range = rng.range(SPACE);
                if rng.below(3) == 0 {
                    views.remove(range.clone());
                    model.remove(range);
                } else {
                    views.insert(range.clone());
                    model.insert(range);
                }
                let query = rng.range(SPACE);
                if !query.is_empty() {
                    assert_eq!(
                        views.pieces(query.clone()),
                        model.pieces(query.clone()),
                        "seed {seed}, step {step}, query {query:?}"
                    );
                }
                assert_eq!(
                    views.pieces(0..SPACE + 12),
                    model.pieces(0..SPACE + 12),
                    "seed {seed}, step {step}"
                );
            }
        }
    }

    /// The work of recording `count` views one page apart (in a scattered order), querying
    /// and decommitting around each, replacing each, and forgetting them all one by one.
    fn work_for_views(count: usize) -> u64 {
        let mut views = ShmemViews::default();
        // A stride coprime with `count` visits every slot once, far from the last.
        let stride = (0..count)
            .map(|k| count / 2 + 1 + k)
            .find(|&s| gcd(s, count) == 1)
            .unwrap_or(1);
        let slot = |i: usize| (i * stride) % count * 2;
        for i in 0..count {
            views.insert(slot(i)..slot(i) + 1);
        }
        for i in 0..count {
            let at = slot(i);
            assert_eq!(
                views.pieces(at..at + 2),
                vec![piece(at..at + 1, true), piece(at + 1..at + 2, false)]
            );
            views.insert(at..at + 1);
        }
        assert_eq!(views.ranges.len(), count);
        for i in 0..count {
            views.remove(slot(i)..slot(i) + 1);
        }
        assert!(views.ranges.is_empty());
        views.work()
    }

    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }

    #[test]
    fn each_change_visits_only_the_views_it_touches() {
        // A sorted list rebuilt on every change visited every recorded view: 30,000 device
        // windows placed in one batch took seconds.
        let small = work_for_views(100);
        let large = work_for_views(10_000);
        assert!(small >= 400, "the work counter counts: {small}");
        assert_eq!(
            large,
            100 * small,
            "work per change must not grow with the number of views: {small} for 100, {large} for 10,000"
        );
    }
}
