//! Binding of `memory_range`: `MemoryRange` operations and the lazy range algorithms.
//!
//! The public `MemoryRange` is a TypeScript value class holding `start`/`end` bigints; each
//! operation calls one function here, which rebuilds the core range and runs the core method.
//! The algorithms are native iterators over inputs read eagerly; a core panic is a `RangeError`
//! thrown from the `next()` that reaches it, after which the iterator is finished.

use crate::args::U64;
use crate::errors::guard;
use crate::errors::guard_explained;
use crate::errors::OrThrow;
use js_api::args::range_pairs;
use js_api::enums::JsEnum;
use js_api::range_panics;
use js_api::ranges::accessor_values;
use js_api::ranges::indexed;
use js_api::ranges::merge_input;
use js_api::ranges::Finishing;
use js_api::ranges::RangeItem as CoreItem;
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
    BigUint64Array::new(js_api::ranges::flat(ranges))
}

fn ranges(flat: &BigUint64Array, name: &str) -> napi::Result<Vec<MemoryRange>> {
    range_pairs(flat, name).or_throw()
}

/// `MemoryRange::new`: throws the core's panic text where it would panic (`name`: the argument
/// the range came from, for the detail).
#[napi]
pub fn range_new(start: U64, end: U64, name: Option<String>) -> napi::Result<()> {
    guard_explained(
        || {
            MemoryRange::new(start.0..end.0);
            Ok(())
        },
        |text| range_panics::bounds_detail(text, start.0, end.0, name.as_deref()),
    )
}

/// `MemoryRange::try_new`: `ERR_INVALID_MEMORY_RANGE` with the rejected bounds.
#[napi]
pub fn range_try_new(start: U64, end: U64) -> napi::Result<()> {
    MemoryRange::try_new(start.0..end.0).map(drop).or_throw()
}

/// `MemoryRange::bounding` as `[start, end]`.
#[napi]
pub fn range_bounding(start: U64, end: U64) -> napi::Result<BigUint64Array> {
    guard_explained(
        || Ok(flatten([MemoryRange::bounding(start.0..end.0)])),
        |text| range_panics::bounds_detail(text, start.0, end.0, None),
    )
}

/// `MemoryRange::from_4k_gpn_range` as `[start, end]`.
#[napi(js_name = "rangeFrom4kGpnRange")]
pub fn range_from_4k_gpn_range(first_page: U64, end_page: U64) -> napi::Result<BigUint64Array> {
    guard_explained(
        || {
            Ok(flatten([MemoryRange::from_4k_gpn_range(
                first_page.0..end_page.0,
            )]))
        },
        |text| range_panics::page_bounds_detail(text, first_page.0, end_page.0),
    )
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
        values: BigUint64Array::new(accessor_values(range).to_vec()),
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
    guard_explained(
        || {
            let (first, second) = range.split_at_offset(offset.0);
            Ok(flatten([first, second]))
        },
        |text| range_panics::split_detail(text, range, offset.0),
    )
}

/// `range.alignment(base)`.
#[napi]
pub fn range_alignment(start: U64, end: U64, base: U64) -> napi::Result<u64> {
    let range = range_of(start, end)?;
    guard_explained(
        || Ok(range.alignment(base.0)),
        |text| range_panics::alignment_detail(text, range, base.0),
    )
}

/// `range.aligned_subrange(alignment)` as `[start, end]`.
#[napi]
pub fn range_aligned_subrange(
    start: U64,
    end: U64,
    alignment: U64,
) -> napi::Result<BigUint64Array> {
    let range = range_of(start, end)?;
    guard_explained(
        || Ok(flatten([range.aligned_subrange(alignment.0)])),
        |text| range_panics::aligned_subrange_detail(text, range, alignment.0),
    )
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

impl From<CoreItem> for RangeItem {
    fn from(item: CoreItem) -> Self {
        RangeItem {
            range: flatten([item.range]),
            kind: item.kind.map(JsEnum::js_str),
            left: item.left,
            right: item.right,
        }
    }
}

/// A lazy iterator over one of the range algorithms.
#[napi]
pub struct RangeIterator {
    inner: Finishing<Box<dyn Iterator<Item = CoreItem>>>,
    /// The input lists by name, to explain a panic.
    inputs: Vec<(&'static str, Vec<MemoryRange>)>,
}

#[napi]
impl RangeIterator {
    /// The next item, `null` when finished; throws at the item where the core panics.
    #[napi]
    pub fn next(&mut self) -> napi::Result<Option<RangeItem>> {
        let inputs = &self.inputs;
        let explain = |text: &str| {
            let lists: Vec<(&str, &[MemoryRange])> = inputs
                .iter()
                .map(|(name, list)| (*name, list.as_slice()))
                .collect();
            js_api::range_panics::detail(text, &lists)
        };
        let item = self
            .inner
            .step(|iter| guard_explained(|| Ok(iter.next()), explain))?;
        Ok(item.map(RangeItem::from))
    }
}

/// An iterator over `iter`, whose panics are explained against `inputs`.
fn iterator(
    iter: impl Iterator<Item = CoreItem> + 'static,
    inputs: Vec<(&'static str, Vec<MemoryRange>)>,
) -> RangeIterator {
    RangeIterator {
        inner: Finishing::new(Box::new(iter)),
        inputs,
    }
}

/// `walk_ranges` over flat range lists; tags are the input indexes.
#[napi]
pub fn walk_ranges_iter(
    left: BigUint64Array,
    right: BigUint64Array,
) -> napi::Result<RangeIterator> {
    let inputs = vec![
        ("left", ranges(&left, "left")?),
        ("right", ranges(&right, "right")?),
    ];
    let (left, right) = (
        indexed(&left, "left").or_throw()?,
        indexed(&right, "right").or_throw()?,
    );
    Ok(iterator(
        walk_ranges(left, right).map(CoreItem::walked),
        inputs,
    ))
}

/// An algorithm over two flat range lists whose items carry no tags.
fn untagged<I: Iterator<Item = MemoryRange> + 'static>(
    left: &BigUint64Array,
    right: &BigUint64Array,
    algorithm: impl FnOnce(Vec<MemoryRange>, Vec<MemoryRange>) -> I,
) -> napi::Result<RangeIterator> {
    let (left, right) = (ranges(left, "left")?, ranges(right, "right")?);
    let inputs = vec![("left", left.clone()), ("right", right.clone())];
    Ok(iterator(
        algorithm(left, right).map(CoreItem::plain),
        inputs,
    ))
}

/// `overlapping_ranges` over flat range lists.
#[napi]
pub fn overlapping_ranges_iter(
    left: BigUint64Array,
    right: BigUint64Array,
) -> napi::Result<RangeIterator> {
    untagged(&left, &right, overlapping_ranges)
}

/// `subtract_ranges` over flat range lists.
#[napi]
pub fn subtract_ranges_iter(
    left: BigUint64Array,
    right: BigUint64Array,
) -> napi::Result<RangeIterator> {
    untagged(&left, &right, subtract_ranges)
}

/// `flatten_ranges` over a flat range list.
#[napi]
pub fn flatten_ranges_iter(list: BigUint64Array) -> napi::Result<RangeIterator> {
    let list = ranges(&list, "ranges")?;
    let inputs = vec![("ranges", list.clone())];
    Ok(iterator(flatten_ranges(list).map(CoreItem::plain), inputs))
}

/// `merge_adjacent_ranges`; `tag_ids[i]` is the equality class of element `i`'s tag.
#[napi]
pub fn merge_adjacent_ranges_iter(
    list: BigUint64Array,
    tag_ids: Uint32Array,
) -> napi::Result<RangeIterator> {
    let inputs = vec![("ranges", ranges(&list, "ranges")?)];
    let input = merge_input(&list, &tag_ids).or_throw()?;
    Ok(iterator(
        merge_adjacent_ranges(input).map(CoreItem::merged),
        inputs,
    ))
}

/// The `AlignedSubranges` builder and iterator.
#[napi]
pub struct NativeAlignedSubranges {
    inner: Finishing<AlignedSubranges>,
}

#[napi]
impl NativeAlignedSubranges {
    /// Starts over `start..end` with offset 0 and no length cap.
    #[napi(constructor)]
    pub fn new(start: U64, end: U64) -> napi::Result<Self> {
        Ok(NativeAlignedSubranges {
            inner: Finishing::new(AlignedSubranges::new(range_of(start, end)?)),
        })
    }

    /// `with_offset`.
    #[napi]
    pub fn with_offset(&mut self, offset: U64) {
        self.inner.map(|iter| iter.with_offset(offset.0));
    }

    /// `with_max_range_len`.
    #[napi]
    pub fn with_max_range_len(&mut self, max_len: U64) {
        self.inner.map(|iter| iter.with_max_range_len(max_len.0));
    }

    /// The next piece as `[start, end]`, `null` when finished.
    #[napi]
    pub fn next(&mut self) -> napi::Result<Option<BigUint64Array>> {
        let piece = self.inner.step(|iter| guard(|| Ok(iter.next())))?;
        Ok(piece.map(|range| flatten([range])))
    }
}
