//! Bookkeeping of which parts of a reservation hold shared views of shmem objects (memfd, tmpfs).
//!
//! `decommit` must free the memory of a shared memfd view (punch a hole, so every view of that
//! object reads zero) but must never punch a hole in an ordinary file, whose contents would be
//! lost. The kernel offers no cheap way to ask what a VA range holds, so the mapping records, for
//! every placement it performs, whether the placed range is a shared shmem view. This module is
//! that record: a sorted list of disjoint offset ranges, without any unsafe code.

use std::ops::Range;

/// Disjoint, sorted offset ranges (relative to the reservation base) that hold shared views of
/// shmem objects.
#[derive(Debug, Default)]
pub(crate) struct ShmemViews {
    ranges: Vec<Range<usize>>,
}

/// One piece of a queried range, with whether it holds a shared shmem view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Piece {
    pub range: Range<usize>,
    pub is_shmem: bool,
}

impl ShmemViews {
    /// Forgets whatever was recorded in `range` (a placement of another kind replaced it).
    pub fn remove(&mut self, range: Range<usize>) {
        if range.is_empty() {
            return;
        }
        let mut kept = Vec::with_capacity(self.ranges.len() + 1);
        for existing in self.ranges.drain(..) {
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
        self.ranges = kept;
    }

    /// Records `range` as a shared shmem view, replacing whatever was recorded there.
    pub fn insert(&mut self, range: Range<usize>) {
        if range.is_empty() {
            return;
        }
        self.remove(range.clone());
        let position = self.ranges.partition_point(|r| r.start < range.start);
        self.ranges.insert(position, range);
    }

    /// Splits `range` into consecutive pieces, each entirely shmem or entirely not.
    pub fn pieces(&self, range: Range<usize>) -> Vec<Piece> {
        let mut pieces = Vec::new();
        let mut cursor = range.start;
        for existing in &self.ranges {
            if existing.end <= cursor {
                continue;
            }
            if existing.start >= range.end {
                break;
            }
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
}
