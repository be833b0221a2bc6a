//! Binding of `memory_range`: `MemoryRange` operations and the lazy range algorithms.
//!
//! The public `MemoryRange` is a TypeScript value class holding `start`/`end` bigints; each of
//! its operations calls one function here, which rebuilds the core `MemoryRange` and runs the
//! core method. The algorithms are native iterators over inputs read eagerly (as `api.md`
//! allows); a core panic becomes a `RangeError` thrown from the `next()` that reaches it, after
//! which the iterator is finished.

use crate::args::{flatten, range_arg, range_list, U64};
use crate::errors::{coded_with, guard, hex_field, JsError};
use memory_range::{
    flatten_ranges, merge_adjacent_ranges, overlapping_ranges, subtract_ranges, walk_ranges,
    AlignedSubranges, MemoryRange, RangeWalkResult,
};
use napi::bindgen_prelude::{BigUint64Array, Uint32Array};
use napi_derive::napi;

/// A range from two bigint bounds, validated without panicking.
fn range_of(start: U64, end: U64) -> Result<MemoryRange, JsError> {
    range_arg(start.0, end.0, "range")
}

/// `MemoryRange::new`: throws the core's panic text where it would panic.
#[napi]
pub fn range_new(start: U64, end: U64) -> Result<(), JsError> {
    let start = start.0;
    let end = end.0;
    guard(|| {
        MemoryRange::new(start..end);
        Ok(())
    })
}

/// `MemoryRange::try_new`: throws `ERR_INVALID_MEMORY_RANGE` with the rejected bounds.
#[napi]
pub fn range_try_new(start: U64, end: U64) -> Result<(), JsError> {
    let start = start.0;
    let end = end.0;
    MemoryRange::try_new(start..end).map(drop).map_err(|err| {
        coded_with(
            "ERR_INVALID_MEMORY_RANGE",
            err.to_string(),
            &[("start", hex_field(start)), ("end", hex_field(end))],
        )
    })
}

/// `MemoryRange::bounding` as `[start, end]`.
#[napi]
pub fn range_bounding(start: U64, end: U64) -> Result<BigUint64Array, JsError> {
    let start = start.0;
    let end = end.0;
    guard(|| Ok(flatten([MemoryRange::bounding(start..end)])))
}

/// `MemoryRange::from_4k_gpn_range` as `[start, end]`.
#[napi(js_name = "rangeFrom4kGpnRange")]
pub fn range_from_4k_gpn_range(first_page: U64, end_page: U64) -> Result<BigUint64Array, JsError> {
    let first = first_page.0;
    let end = end_page.0;
    guard(|| Ok(flatten([MemoryRange::from_4k_gpn_range(first..end)])))
}

/// Every accessor of a range at once (the TypeScript class caches them).
#[napi(object, object_from_js = false)]
pub struct RangeAccessors {
    /// `[len, start_4k_gpn, end_4k_gpn, page_count_4k, page_count_2m]`.
    pub values: BigUint64Array,
    pub is_empty: bool,
    /// The `Display` form.
    pub display: String,
}

/// The accessors of `start..end`.
#[napi]
pub fn range_accessors(start: U64, end: U64) -> Result<RangeAccessors, JsError> {
    let range = range_of(start, end)?;
    Ok(RangeAccessors {
        values: BigUint64Array::new(vec![
            range.len(),
            range.start_4k_gpn(),
            range.end_4k_gpn(),
            range.page_count_4k(),
            range.page_count_2m(),
        ]),
        is_empty: range.is_empty(),
        display: range.to_string(),
    })
}

/// `a.overlaps(b)`.
#[napi]
pub fn range_overlaps(a_start: U64, a_end: U64, b_start: U64, b_end: U64) -> Result<bool, JsError> {
    Ok(range_of(a_start, a_end)?.overlaps(&range_of(b_start, b_end)?))
}

/// `a.contains(b)`.
#[napi]
pub fn range_contains(a_start: U64, a_end: U64, b_start: U64, b_end: U64) -> Result<bool, JsError> {
    Ok(range_of(a_start, a_end)?.contains(&range_of(b_start, b_end)?))
}

/// The derived `Ord` of two ranges: -1, 0 or 1.
#[napi]
pub fn range_compare(a_start: U64, a_end: U64, b_start: U64, b_end: U64) -> Result<i32, JsError> {
    let a = range_of(a_start, a_end)?;
    let b = range_of(b_start, b_end)?;
    Ok(a.cmp(&b) as i32)
}

/// `a.intersection(b)` as `[start, end]`.
#[napi]
pub fn range_intersection(
    a_start: U64,
    a_end: U64,
    b_start: U64,
    b_end: U64,
) -> Result<BigUint64Array, JsError> {
    let a = range_of(a_start, a_end)?;
    let b = range_of(b_start, b_end)?;
    Ok(flatten([a.intersection(&b)]))
}

/// `range.contains_addr(addr)`.
#[napi]
pub fn range_contains_addr(start: U64, end: U64, addr: U64) -> Result<bool, JsError> {
    Ok(range_of(start, end)?.contains_addr(addr.0))
}

/// `range.offset_of(addr)`.
#[napi]
pub fn range_offset_of(start: U64, end: U64, addr: U64) -> Result<Option<u64>, JsError> {
    Ok(range_of(start, end)?.offset_of(addr.0))
}

/// `range.split_at_offset(offset)` as `[start0, end0, start1, end1]`.
#[napi]
pub fn range_split_at_offset(start: U64, end: U64, offset: U64) -> Result<BigUint64Array, JsError> {
    let range = range_of(start, end)?;
    let offset = offset.0;
    guard(|| {
        let (first, second) = range.split_at_offset(offset);
        Ok(flatten([first, second]))
    })
}

/// `range.alignment(base)`.
#[napi]
pub fn range_alignment(start: U64, end: U64, base: U64) -> Result<u64, JsError> {
    let range = range_of(start, end)?;
    let base = base.0;
    guard(|| Ok(range.alignment(base)))
}

/// `range.aligned_subrange(alignment)` as `[start, end]`.
#[napi]
pub fn range_aligned_subrange(
    start: U64,
    end: U64,
    alignment: U64,
) -> Result<BigUint64Array, JsError> {
    let range = range_of(start, end)?;
    let alignment = alignment.0;
    guard(|| Ok(flatten([range.aligned_subrange(alignment)])))
}

/// One item of a native range iterator.
#[napi(object, object_from_js = false)]
pub struct RangeItem {
    /// `[start, end]` of the piece.
    pub range: BigUint64Array,
    /// Walk items: 0 Neither, 1 Left, 2 Right, 3 Both. Merge items: 1.
    pub kind: u32,
    /// Index of the left (or merged) input element whose tag applies.
    pub left: u32,
    /// Index of the right input element whose tag applies.
    pub right: u32,
}

impl RangeItem {
    fn plain(range: MemoryRange) -> Self {
        Self::tagged(range, 0, 0, 0)
    }

    fn tagged(range: MemoryRange, kind: u32, left: u32, right: u32) -> Self {
        RangeItem {
            range: flatten([range]),
            kind,
            left,
            right,
        }
    }
}

/// A lazy iterator over one of the range algorithms.
#[napi]
pub struct RangeIterator {
    inner: Option<Box<dyn Iterator<Item = RangeItem>>>,
}

#[napi]
impl RangeIterator {
    /// The next item, `null` when finished; throws at the item where the core panics.
    #[napi]
    pub fn next(&mut self) -> Result<Option<RangeItem>, JsError> {
        let Some(iter) = self.inner.as_mut() else {
            return Ok(None);
        };
        let result = guard(|| Ok(iter.next()));
        match result {
            Ok(Some(item)) => Ok(Some(item)),
            other => {
                self.inner = None;
                other
            }
        }
    }
}

fn iterator(iter: impl Iterator<Item = RangeItem> + 'static) -> RangeIterator {
    RangeIterator {
        inner: Some(Box::new(iter)),
    }
}

fn indexed(ranges: Vec<MemoryRange>) -> impl Iterator<Item = (MemoryRange, u32)> {
    ranges.into_iter().zip(0u32..)
}

/// `walk_ranges` over flat range lists; tags are the input indexes.
#[napi]
pub fn walk_ranges_iter(
    left: BigUint64Array,
    right: BigUint64Array,
) -> Result<RangeIterator, JsError> {
    let left = range_list(&left, "left")?;
    let right = range_list(&right, "right")?;
    Ok(iterator(walk_ranges(indexed(left), indexed(right)).map(
        |(range, result)| match result {
            RangeWalkResult::Neither => RangeItem::tagged(range, 0, 0, 0),
            RangeWalkResult::Left(l) => RangeItem::tagged(range, 1, l, 0),
            RangeWalkResult::Right(r) => RangeItem::tagged(range, 2, 0, r),
            RangeWalkResult::Both(l, r) => RangeItem::tagged(range, 3, l, r),
        },
    )))
}

/// `overlapping_ranges` over flat range lists.
#[napi]
pub fn overlapping_ranges_iter(
    left: BigUint64Array,
    right: BigUint64Array,
) -> Result<RangeIterator, JsError> {
    let left = range_list(&left, "left")?;
    let right = range_list(&right, "right")?;
    Ok(iterator(
        overlapping_ranges(left, right).map(RangeItem::plain),
    ))
}

/// `subtract_ranges` over flat range lists.
#[napi]
pub fn subtract_ranges_iter(
    left: BigUint64Array,
    right: BigUint64Array,
) -> Result<RangeIterator, JsError> {
    let left = range_list(&left, "left")?;
    let right = range_list(&right, "right")?;
    Ok(iterator(subtract_ranges(left, right).map(RangeItem::plain)))
}

/// `flatten_ranges` over a flat range list.
#[napi]
pub fn flatten_ranges_iter(ranges: BigUint64Array) -> Result<RangeIterator, JsError> {
    let ranges = range_list(&ranges, "ranges")?;
    Ok(iterator(flatten_ranges(ranges).map(RangeItem::plain)))
}

/// A merge tag: equal when the JavaScript tags are `===`-equal (the TypeScript layer gives
/// equal tags equal ids); `index` names the element, so the run's first tag is returned exactly.
#[derive(Clone, Copy)]
struct MergeTag {
    id: u32,
    index: u32,
}

impl PartialEq for MergeTag {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

/// `merge_adjacent_ranges`; `tag_ids[i]` is the equality class of element `i`'s tag.
#[napi]
pub fn merge_adjacent_ranges_iter(
    ranges: BigUint64Array,
    tag_ids: Uint32Array,
) -> Result<RangeIterator, JsError> {
    let ranges = range_list(&ranges, "ranges")?;
    if tag_ids.len() != ranges.len() {
        return Err(crate::errors::invalid_arg(
            "one tag id per range is required",
        ));
    }
    let tags: Vec<u32> = tag_ids.to_vec();
    let input: Vec<(MemoryRange, MergeTag)> = ranges
        .into_iter()
        .zip(tags.into_iter().zip(0u32..))
        .map(|(range, (id, index))| (range, MergeTag { id, index }))
        .collect();
    Ok(iterator(merge_adjacent_ranges(input).map(
        |(range, tag)| RangeItem::tagged(range, 1, tag.index, 0),
    )))
}

/// The `AlignedSubranges` builder and iterator.
#[napi]
pub struct NativeAlignedSubranges {
    inner: Option<AlignedSubranges>,
}

#[napi]
impl NativeAlignedSubranges {
    /// Starts over `start..end` with offset 0 and no length cap.
    #[napi(constructor)]
    pub fn new(start: U64, end: U64) -> Result<Self, JsError> {
        Ok(NativeAlignedSubranges {
            inner: Some(AlignedSubranges::new(range_of(start, end)?)),
        })
    }

    /// `with_offset`.
    #[napi]
    pub fn with_offset(&mut self, offset: U64) -> Result<(), JsError> {
        let offset = offset.0;
        self.inner = self.inner.take().map(|iter| iter.with_offset(offset));
        Ok(())
    }

    /// `with_max_range_len`.
    #[napi]
    pub fn with_max_range_len(&mut self, max_len: U64) -> Result<(), JsError> {
        let max_len = max_len.0;
        self.inner = self
            .inner
            .take()
            .map(|iter| iter.with_max_range_len(max_len));
        Ok(())
    }

    /// The next piece as `[start, end]`, `null` when finished.
    #[napi]
    pub fn next(&mut self) -> Result<Option<BigUint64Array>, JsError> {
        let Some(iter) = self.inner.as_mut() else {
            return Ok(None);
        };
        match guard(|| Ok(iter.next())) {
            Ok(Some(range)) => Ok(Some(flatten([range]))),
            other => {
                self.inner = None;
                other.map(|_| None)
            }
        }
    }
}
