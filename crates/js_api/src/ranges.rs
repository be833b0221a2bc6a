//! What the `MemoryRange` binding decides besides calling `memory_range`: how ranges and range
//! algorithm items cross (flat `[start, end, …]` lists, the walk's kind and input indexes, the
//! merge tags), and that a native iterator is finished once it ended or failed.

use crate::args::paired;
use crate::args::range_pairs;
use crate::enums::RangeWalkKind;
use crate::JsError;
use memory_range::MemoryRange;
use memory_range::RangeWalkResult;

/// Ranges as `[start0, end0, start1, end1, …]`.
pub fn flat(ranges: impl IntoIterator<Item = MemoryRange>) -> Vec<u64> {
    ranges
        .into_iter()
        .flat_map(|range| [range.start(), range.end()])
        .collect()
}

/// The accessors of a range the TypeScript class caches, in its order:
/// `[len, start_4k_gpn, end_4k_gpn, page_count_4k, page_count_2m]`.
pub fn accessor_values(range: MemoryRange) -> [u64; 5] {
    [
        range.len(),
        range.start_4k_gpn(),
        range.end_4k_gpn(),
        range.page_count_4k(),
        range.page_count_2m(),
    ]
}

/// One item of a range algorithm as it crosses: the piece, the walk's kind (walks only), and
/// the indexes of the left (or merged) and right input elements whose tags apply (0 where none
/// does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeItem {
    /// The piece.
    pub range: MemoryRange,
    /// Which input covers the piece (walks only).
    pub kind: Option<RangeWalkKind>,
    /// The index of the left (or merged) input element.
    pub left: u32,
    /// The index of the right input element.
    pub right: u32,
}

impl RangeItem {
    /// An item of an algorithm without tags.
    pub fn plain(range: MemoryRange) -> Self {
        RangeItem {
            range,
            kind: None,
            left: 0,
            right: 0,
        }
    }

    /// A piece of `walk_ranges` over inputs tagged with their indexes.
    pub fn walked((range, result): (MemoryRange, RangeWalkResult<u32, u32>)) -> Self {
        let kind = Some(RangeWalkKind::of(&result));
        let (left, right) = match result {
            RangeWalkResult::Neither => (0, 0),
            RangeWalkResult::Left(left) => (left, 0),
            RangeWalkResult::Right(right) => (0, right),
            RangeWalkResult::Both(left, right) => (left, right),
        };
        RangeItem {
            range,
            kind,
            left,
            right,
        }
    }

    /// A run of `merge_adjacent_ranges`: its first element's index.
    pub fn merged((range, tag): (MemoryRange, MergeTag)) -> Self {
        RangeItem {
            left: tag.index,
            ..Self::plain(range)
        }
    }
}

/// The ranges of a flat list, each tagged with its index.
pub fn indexed(flat_list: &[u64], name: &str) -> Result<Vec<(MemoryRange, u32)>, JsError> {
    Ok(range_pairs(flat_list, name)?
        .into_iter()
        .zip(0u32..)
        .collect())
}

/// A merge tag: equal when the JavaScript tags are `===`-equal (the TypeScript layer gives
/// equal tags equal ids); `index` names the element, so a run reports its first element.
#[derive(Debug, Clone, Copy)]
pub struct MergeTag {
    id: u32,
    index: u32,
}

impl PartialEq for MergeTag {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

/// The input of `merge_adjacent_ranges`: the ranges of a flat list, `tag_ids[i]` the equality
/// class of element `i`'s tag.
pub fn merge_input(
    flat_list: &[u64],
    tag_ids: &[u32],
) -> Result<Vec<(MemoryRange, MergeTag)>, JsError> {
    let ranges = range_pairs(flat_list, "ranges")?;
    Ok(paired(ranges, tag_ids, "tag id per range")?
        .into_iter()
        .zip(0u32..)
        .map(|((range, id), index)| (range, MergeTag { id, index }))
        .collect())
}

/// A native iterator as JavaScript sees it: finished for good once it ended or one step
/// failed (a core panic), so no step runs after a failure.
pub struct Finishing<I> {
    inner: Option<I>,
}

impl<I> Finishing<I> {
    /// Wraps `inner`.
    pub fn new(inner: I) -> Self {
        Finishing { inner: Some(inner) }
    }

    /// Runs one step; `Ok(None)` once finished.
    pub fn step<T, E>(
        &mut self,
        next: impl FnOnce(&mut I) -> Result<Option<T>, E>,
    ) -> Result<Option<T>, E> {
        let Some(inner) = self.inner.as_mut() else {
            return Ok(None);
        };
        let result = next(inner);
        if !matches!(result, Ok(Some(_))) {
            self.inner = None;
        }
        result
    }

    /// Replaces the iterator by what `change` makes of it (a builder step); nothing once
    /// finished.
    pub fn map(&mut self, change: impl FnOnce(I) -> I) {
        self.inner = self.inner.take().map(change);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memory_range::merge_adjacent_ranges;
    use memory_range::walk_ranges;

    fn r(start: u64, end: u64) -> MemoryRange {
        MemoryRange::new(start..end)
    }

    #[test]
    fn ranges_flatten_in_order_and_accessors_follow_the_class_order() {
        assert_eq!(flat([r(0x1000, 0x3000), r(0, 0)]), [0x1000, 0x3000, 0, 0]);
        assert_eq!(
            accessor_values(r(0x1000, 0x20_2000)),
            [0x20_1000, 1, 0x202, 0x201, 2]
        );
    }

    #[test]
    fn walk_items_carry_the_kind_and_both_indexes() {
        let left = indexed(&[0, 0x2000, 0x4000, 0x5000], "left").unwrap();
        let right = indexed(&[0x1000, 0x3000], "right").unwrap();
        let items: Vec<_> = walk_ranges(left, right).map(RangeItem::walked).collect();
        let kinds: Vec<_> = items
            .iter()
            .map(|item| (item.kind.unwrap(), item.left, item.right))
            .collect();
        assert_eq!(
            kinds,
            [
                (RangeWalkKind::Left, 0, 0),
                (RangeWalkKind::Both, 0, 0),
                (RangeWalkKind::Right, 0, 0),
                (RangeWalkKind::Neither, 0, 0),
                (RangeWalkKind::Left, 1, 0),
                (RangeWalkKind::Neither, 0, 0),
            ]
        );
        assert_eq!(items[4].range, r(0x4000, 0x5000));
        assert!(indexed(&[1, 2, 3], "left").is_err(), "odd length");
    }

    #[test]
    fn merged_runs_report_their_first_element_and_equal_ids_merge() {
        let input = merge_input(&[0, 0x1000, 0x1000, 0x2000, 0x2000, 0x3000], &[7, 7, 8]).unwrap();
        let runs: Vec<_> = merge_adjacent_ranges(input)
            .map(RangeItem::merged)
            .collect();
        assert_eq!(
            runs,
            [
                RangeItem {
                    left: 0,
                    ..RangeItem::plain(r(0, 0x2000))
                },
                RangeItem {
                    left: 2,
                    ..RangeItem::plain(r(0x2000, 0x3000))
                },
            ]
        );
        let error = merge_input(&[0, 0x1000], &[1, 2]).unwrap_err();
        assert!(
            error.message.contains("tag id per range"),
            "{}",
            error.message
        );
    }

    #[test]
    fn an_iterator_is_finished_after_its_end_or_a_failure() {
        let mut ended = Finishing::new(vec![1, 2].into_iter());
        let mut next = || ended.step(|iter| Ok::<_, ()>(iter.next()));
        assert_eq!(next(), Ok(Some(1)));
        assert_eq!(next(), Ok(Some(2)));
        assert_eq!(next(), Ok(None));
        let mut failing = Finishing::new(0..10);
        assert_eq!(
            failing.step(|_| Err::<Option<u32>, _>("panicked")),
            Err("panicked")
        );
        let mut ran = false;
        assert_eq!(
            failing.step(|iter| {
                ran = true;
                Ok::<_, &str>(iter.next())
            }),
            Ok(None)
        );
        assert!(!ran, "no step runs after a failure");
        failing.map(|_| 5..6);
        assert_eq!(failing.step(|iter| Ok::<_, ()>(iter.next())), Ok(None));
        let mut built = Finishing::new(0..10);
        built.map(|range| range.start + 9..range.end);
        assert_eq!(built.step(|iter| Ok::<_, ()>(iter.next())), Ok(Some(9)));
    }
}
