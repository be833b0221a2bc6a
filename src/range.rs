//! Binding of `memory_range`: `MemoryRange` operations and the lazy range algorithms.
//!
//! The public `MemoryRange` is a TypeScript value class holding `start`/`end` bigints; each
//! operation calls one function here, which rebuilds the core range and runs the core method.
//! The algorithms are native iterators over inputs read eagerly; a core panic is a `RangeError`
//! thrown from the `next()` that reaches it, after which the iterator is finished.

use crate::args::U64;
use crate::errors::guard;
use crate::errors::OrThrow;
use js_api::args::paired;
use js_api::args::range_pairs;
use js_api::enums::JsEnum;
use js_api::enums::RangeWalkKind;
use memory_range::flatten_ranges;
use memory_range::merge_adjacent_ranges;
use memory_range::overlapping_ranges;
use memory_range::subtract_ranges;
use memory_range::walk_ranges;
use memory_range::AlignedSubranges;
use memory_range::MemoryRange;
use napi::bindgen_prelude::BigUint64Array;
use napi::bindgen_prelude::Uint32Array;
use napi_derive::napi;

/// `start..end`, refused where `MemoryRange::new` would panic.
fn range_of(start: U64, end: U64) -> napi::Result<MemoryRange> {
    js_api::args::range(start.0, end.0, "range").or_throw()
}

/// Ranges as `[start, end, …]`.
fn flatten(ranges: impl IntoIterator<Item = MemoryRange>) -> BigUint64Array {
    BigUint64Array::new(
        ranges
            .into_iter()
            .flat_map(|range| [range.start(), range.end()])
            .collect(),
    )
}

fn ranges(flat: &BigUint64Array, name: &str) -> napi::Result<Vec<MemoryRange>> {
    range_pairs(flat, name).or_throw()
}

/// `MemoryRange::new`: throws the core's panic text where it would panic.
#[napi]
pub fn range_new(start: U64, end: U64) -> napi::Result<()> {
    guard(|| {
        MemoryRange::new(start.0..end.0);
        Ok(())
    })
}

/// `MemoryRange::try_new`: `ERR_INVALID_MEMORY_RANGE` with the rejected bounds.
#[napi]
pub fn range_try_new(start: U64, end: U64) -> napi::Result<()> {
    MemoryRange::try_new(start.0..end.0).map(drop).or_throw()
}

/// `MemoryRange::bounding` as `[start, end]`.
#[napi]
pub fn range_bounding(start: U64, end: U64) -> napi::Result<BigUint64Array> {
    guard(|| Ok(flatten([MemoryRange::bounding(start.0..end.0)])))
}

/// `MemoryRange::from_4k_gpn_range` as `[start, end]`.
#[napi(js_name = "rangeFrom4kGpnRange")]
pub fn range_from_4k_gpn_range(first_page: U64, end_page: U64) -> napi::Result<BigUint64Array> {
    guard(|| {
        Ok(flatten([MemoryRange::from_4k_gpn_range(
            first_page.0..end_page.0,
        )]))
    })
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
pub fn range_accessors(start: U64, end: U64) -> napi::Result<RangeAccessors> {
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
pub fn range_overlaps(a_start: U64, a_end: U64, b_start: U64, b_end: U64) -> napi::Result<bool> {
    Ok(range_of(a_start, a_end)?.overlaps(&range_of(b_start, b_end)?))
}

/// `a.contains(b)`.
#[napi]
pub fn range_contains(a_start: U64, a_end: U64, b_start: U64, b_end: U64) -> napi::Result<bool> {
    Ok(range_of(a_start, a_end)?.contains(&range_of(b_start, b_end)?))
}

/// The derived `Ord` of two ranges: -1, 0 or 1.
#[napi]
pub fn range_compare(a_start: U64, a_end: U64, b_start: U64, b_end: U64) -> napi::Result<i32> {
    Ok(range_of(a_start, a_end)?.cmp(&range_of(b_start, b_end)?) as i32)
}

/// `a.intersection(b)` as `[start, end]`.
#[napi]
pub fn range_intersection(
    a_start: U64,
    a_end: U64,
    b_start: U64,
    b_end: U64,
) -> napi::Result<BigUint64Array> {
    let a = range_of(a_start, a_end)?;
    Ok(flatten([a.intersection(&range_of(b_start, b_end)?)]))
}

/// `range.contains_addr(addr)`.
#[napi]
pub fn range_contains_addr(start: U64, end: U64, addr: U64) -> napi::Result<bool> {
    Ok(range_of(start, end)?.contains_addr(addr.0))
}

/// `range.offset_of(addr)`.
#[napi]
pub fn range_offset_of(start: U64, end: U64, addr: U64) -> napi::Result<Option<u64>> {
    Ok(range_of(start, end)?.offset_of(addr.0))
}

/// `range.split_at_offset(offset)` as `[start0, end0, start1, end1]`.
#[napi]
pub fn range_split_at_offset(start: U64, end: U64, offset: U64) -> napi::Result<BigUint64Array> {
    let range = range_of(start, end)?;
    guard(|| {
        let (first, second) = range.split_at_offset(offset.0);
        Ok(flatten([first, second]))
    })
}

/// `range.alignment(base)`.
#[napi]
pub fn range_alignment(start: U64, end: U64, base: U64) -> napi::Result<u64> {
    let range = range_of(start, end)?;
    guard(|| Ok(range.alignment(base.0)))
}

/// `range.aligned_subrange(alignment)` as `[start, end]`.
#[napi]
pub fn range_aligned_subrange(
    start: U64,
    end: U64,
    alignment: U64,
) -> napi::Result<BigUint64Array> {
    let range = range_of(start, end)?;
    guard(|| Ok(flatten([range.aligned_subrange(alignment.0)])))
}

/// One item of a native range iterator.
#[napi(object, object_from_js = false)]
pub struct RangeItem {
    /// `[start, end]` of the piece.
    pub range: BigUint64Array,
    /// Walk items: a `RangeWalkKind` value; other algorithms: absent.
    pub kind: Option<&'static str>,
    /// Index of the left (or merged) input element whose tag applies.
    pub left: u32,
    /// Index of the right input element whose tag applies.
    pub right: u32,
}

impl RangeItem {
    fn new(range: MemoryRange, kind: Option<RangeWalkKind>, left: u32, right: u32) -> Self {
        RangeItem {
            range: flatten([range]),
            kind: kind.map(JsEnum::js_str),
            left,
            right,
        }
    }

    fn plain(range: MemoryRange) -> Self {
        Self::new(range, None, 0, 0)
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
    pub fn next(&mut self) -> napi::Result<Option<RangeItem>> {
        let Some(iter) = self.inner.as_mut() else {
            return Ok(None);
        };
        let result = guard(|| Ok(iter.next()));
        if !matches!(result, Ok(Some(_))) {
            self.inner = None;
        }
        result
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
) -> napi::Result<RangeIterator> {
    let (left, right) = (ranges(&left, "left")?, ranges(&right, "right")?);
    Ok(iterator(walk_ranges(indexed(left), indexed(right)).map(
        |(range, result)| {
            let kind = RangeWalkKind::of(&result);
            let (left, right) = match result {
                memory_range::RangeWalkResult::Neither => (0, 0),
                memory_range::RangeWalkResult::Left(left) => (left, 0),
                memory_range::RangeWalkResult::Right(right) => (0, right),
                memory_range::RangeWalkResult::Both(left, right) => (left, right),
            };
            RangeItem::new(range, Some(kind), left, right)
        },
    )))
}

/// `overlapping_ranges` over flat range lists.
#[napi]
pub fn overlapping_ranges_iter(
    left: BigUint64Array,
    right: BigUint64Array,
) -> napi::Result<RangeIterator> {
    let (left, right) = (ranges(&left, "left")?, ranges(&right, "right")?);
    Ok(iterator(
        overlapping_ranges(left, right).map(RangeItem::plain),
    ))
}

/// `subtract_ranges` over flat range lists.
#[napi]
pub fn subtract_ranges_iter(
    left: BigUint64Array,
    right: BigUint64Array,
) -> napi::Result<RangeIterator> {
    let (left, right) = (ranges(&left, "left")?, ranges(&right, "right")?);
    Ok(iterator(subtract_ranges(left, right).map(RangeItem::plain)))
}

/// `flatten_ranges` over a flat range list.
#[napi]
pub fn flatten_ranges_iter(list: BigUint64Array) -> napi::Result<RangeIterator> {
    Ok(iterator(
        flatten_ranges(ranges(&list, "ranges")?).map(RangeItem::plain),
    ))
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
    list: BigUint64Array,
    tag_ids: Uint32Array,
) -> napi::Result<RangeIterator> {
    let list = ranges(&list, "ranges")?;
    let input: Vec<(MemoryRange, MergeTag)> = paired(list, &tag_ids, "tag id per range")
        .or_throw()?
        .into_iter()
        .zip(0u32..)
        .map(|((range, id), index)| (range, MergeTag { id, index }))
        .collect();
    Ok(iterator(merge_adjacent_ranges(input).map(
        |(range, tag)| RangeItem::new(range, None, tag.index, 0),
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
    pub fn new(start: U64, end: U64) -> napi::Result<Self> {
        Ok(NativeAlignedSubranges {
            inner: Some(AlignedSubranges::new(range_of(start, end)?)),
        })
    }

    /// `with_offset`.
    #[napi]
    pub fn with_offset(&mut self, offset: U64) {
        self.inner = self.inner.take().map(|iter| iter.with_offset(offset.0));
    }

    /// `with_max_range_len`.
    #[napi]
    pub fn with_max_range_len(&mut self, max_len: U64) {
        self.inner = self
            .inner
            .take()
            .map(|iter| iter.with_max_range_len(max_len.0));
    }

    /// The next piece as `[start, end]`, `null` when finished.
    #[napi]
    pub fn next(&mut self) -> napi::Result<Option<BigUint64Array>> {
        let Some(iter) = self.inner.as_mut() else {
            return Ok(None);
        };
        let result = guard(|| Ok(iter.next()));
        if !matches!(result, Ok(Some(_))) {
            self.inner = None;
        }
        result.map(|piece| piece.map(|range| flatten([range])))
    }
}
