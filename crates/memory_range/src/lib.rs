//! Page-aligned guest physical address ranges and the range algorithms built on them.
//!
//! [`MemoryRange`] is a half-open `[start, end)` span of guest physical addresses whose bounds
//! are multiples of 4 KiB. Around it this crate provides the lazy algorithms that the memory
//! layout, the region manager and the registrar use to reason about sets of ranges:
//! [`walk_ranges`], [`overlapping_ranges`], [`subtract_ranges`], [`flatten_ranges`],
//! [`merge_adjacent_ranges`] and the [`AlignedSubranges`] splitter.
//!
//! Arithmetic overflow always panics (checked arithmetic), independent of the build profile.

#![forbid(unsafe_code)]

use std::fmt;
use std::iter::Peekable;
use std::ops::Range;

/// The page size every range bound is aligned to.
const PAGE_SIZE: u64 = 4096;
/// The size of a large (2 MiB) page.
const TWO_MB: u64 = 0x20_0000;
/// The size of a huge (1 GiB) page.
const ONE_GB: u64 = 0x4000_0000;
/// The largest page number whose byte address fits in a `u64`.
const MAX_PAGE_NUMBER: u64 = u64::MAX / PAGE_SIZE;

/// Adds two `u64` values, panicking on overflow in every build profile.
#[track_caller]
fn add(a: u64, b: u64) -> u64 {
    match a.checked_add(b) {
        Some(sum) => sum,
        None => panic!("attempt to add with overflow"),
    }
}

/// Subtracts two `u64` values, panicking on underflow in every build profile.
#[track_caller]
fn sub(a: u64, b: u64) -> u64 {
    match a.checked_sub(b) {
        Some(difference) => difference,
        None => panic!("attempt to subtract with overflow"),
    }
}

/// Rounds `value` up to a multiple of the power of two `alignment`; panics when the result
/// would not fit in a `u64`.
#[track_caller]
fn round_up(value: u64, alignment: u64) -> u64 {
    add(value, alignment - 1) & !(alignment - 1)
}

/// Rounds `value` down to a multiple of the power of two `alignment`.
fn round_down(value: u64, alignment: u64) -> u64 {
    value & !(alignment - 1)
}

/// A page-aligned, half-open range of guest physical addresses, `start..end`.
///
/// Both bounds are multiples of 4096 and `start <= end`. A range with `start == end` is empty;
/// an empty range may sit at any aligned address.
///
/// Ranges order lexicographically by `start`, then `end`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MemoryRange {
    start: u64,
    end: u64,
}

/// The error returned when a range's bounds are unaligned or reversed.
#[derive(Debug, thiserror::Error)]
#[error("unaligned or invalid memory range: {start:#x}-{end:#x}")]
pub struct InvalidMemoryRange {
    start: u64,
    end: u64,
}

impl InvalidMemoryRange {
    /// The rejected start.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The rejected end.
    pub fn end(&self) -> u64 {
        self.end
    }
}

impl MemoryRange {
    /// The largest page-aligned address, and so the largest bound a range can have.
    pub const MAX_ADDRESS: u64 = !(PAGE_SIZE - 1);

    /// The empty range `0..0`.
    pub const EMPTY: Self = Self { start: 0, end: 0 };

    /// Creates a range from page-aligned bounds.
    ///
    /// # Panics
    ///
    /// Panics if `start` is not page aligned, if `end` is not page aligned, or if
    /// `start > end` (checked in that order).
    #[track_caller]
    pub const fn new(range: Range<u64>) -> Self {
        let Range { start, end } = range;
        assert!(
            start.is_multiple_of(PAGE_SIZE),
            "start must be page aligned"
        );
        assert!(end.is_multiple_of(PAGE_SIZE), "end must be page aligned");
        assert!(start <= end, "start must be <= end");
        Self { start, end }
    }

    /// Creates a range from page-aligned bounds, or returns an error if either bound is
    /// unaligned or `start > end`.
    pub const fn try_new(range: Range<u64>) -> Result<Self, InvalidMemoryRange> {
        let Range { start, end } = range;
        if !start.is_multiple_of(PAGE_SIZE) || !end.is_multiple_of(PAGE_SIZE) || start > end {
            Err(InvalidMemoryRange { start, end })
        } else {
            Ok(Self { start, end })
        }
    }

    /// Returns the smallest page-aligned range that covers the byte span `start..end`.
    ///
    /// An empty span inside a page yields that whole page; an empty span on a page boundary
    /// stays empty.
    ///
    /// # Panics
    ///
    /// Panics if `start > end`, or unless `end < u64::MAX - 4096`.
    #[track_caller]
    pub fn bounding(range: Range<u64>) -> Self {
        let Range { start, end } = range;
        assert!(start <= end, "start must be <= end");
        assert!(
            end < u64::MAX - PAGE_SIZE,
            "end is too close to the top of the address space"
        );
        Self::new(round_down(start, PAGE_SIZE)..round_up(end, PAGE_SIZE))
    }

    /// Creates a range from 4 KiB page numbers: `first_page * 4096 .. end_page * 4096`.
    ///
    /// # Panics
    ///
    /// Panics if either page number is above `u64::MAX / 4096`, or if
    /// `first_page > end_page`.
    #[track_caller]
    pub fn from_4k_gpn_range(range: Range<u64>) -> Self {
        let Range { start, end } = range;
        assert!(start <= MAX_PAGE_NUMBER, "start page number is too large");
        assert!(end <= MAX_PAGE_NUMBER, "end page number is too large");
        Self::new(start * PAGE_SIZE..end * PAGE_SIZE)
    }

    /// The first address in the range.
    pub const fn start(&self) -> u64 {
        self.start
    }

    /// The address just past the range.
    pub const fn end(&self) -> u64 {
        self.end
    }

    /// The length of the range in bytes.
    pub const fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the range is empty (`start == end`).
    pub const fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The 4 KiB page number of the start.
    pub const fn start_4k_gpn(&self) -> u64 {
        self.start / PAGE_SIZE
    }

    /// The 4 KiB page number of the end.
    pub const fn end_4k_gpn(&self) -> u64 {
        self.end / PAGE_SIZE
    }

    /// The number of 4 KiB pages in the range.
    pub const fn page_count_4k(&self) -> u64 {
        self.len() / PAGE_SIZE
    }

    /// The number of 2 MiB pages needed to hold the range's length (rounded up).
    pub const fn page_count_2m(&self) -> u64 {
        self.len().div_ceil(TWO_MB)
    }

    /// Whether the two ranges overlap: `self.end > other.start && self.start < other.end`.
    ///
    /// Touching ranges do not overlap; an empty range strictly inside another does.
    pub fn overlaps(&self, other: &Self) -> bool {
        self.end > other.start && self.start < other.end
    }

    /// Whether `other` lies within `self` (`self.start <= other.start && other.end <= self.end`).
    pub fn contains(&self, other: &Self) -> bool {
        self.start <= other.start && self.end >= other.end
    }

    /// Whether `addr` lies within the range (`start <= addr < end`).
    pub fn contains_addr(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }

    /// The offset of `addr` from the start of the range, if the range contains it.
    pub fn offset_of(&self, addr: u64) -> Option<u64> {
        if self.contains_addr(addr) {
            Some(addr - self.start)
        } else {
            None
        }
    }

    /// The intersection of two ranges.
    ///
    /// Touching ranges intersect in the empty range at the touching point; disjoint ranges
    /// give [`MemoryRange::EMPTY`].
    pub fn intersection(&self, other: &Self) -> Self {
        let start = self.start.max(other.start);
        let end = self.end.min(other.end);
        if start <= end {
            Self { start, end }
        } else {
            Self::EMPTY
        }
    }

    /// Splits the range into `start..start+offset` and `start+offset..end`.
    ///
    /// # Panics
    ///
    /// Panics if `offset > len()`, then if `offset` is not a multiple of 4096.
    #[track_caller]
    pub fn split_at_offset(&self, offset: u64) -> (Self, Self) {
        assert!(offset <= self.len(), "offset must be within the range");
        assert!(
            offset.is_multiple_of(PAGE_SIZE),
            "offset must be page aligned"
        );
        let middle = self.start + offset;
        (
            Self {
                start: self.start,
                end: middle,
            },
            Self {
                start: middle,
                end: self.end,
            },
        )
    }

    /// The largest power of two that divides both `base + start` and `base + end`.
    ///
    /// # Panics
    ///
    /// Panics if either sum overflows, or if both sums are zero (the shift would be 64).
    #[track_caller]
    pub fn alignment(&self, base: u64) -> u64 {
        let bits = add(base, self.start) | add(base, self.end);
        match 1u64.checked_shl(bits.trailing_zeros()) {
            Some(alignment) => alignment,
            None => panic!("attempt to shift left with overflow"),
        }
    }

    /// The largest subrange whose bounds are multiples of `alignment`.
    ///
    /// Returns `roundUp(start)..roundDown(end)` when that is not reversed (it may be empty at
    /// an aligned point), else [`MemoryRange::EMPTY`].
    ///
    /// # Panics
    ///
    /// Panics unless `alignment` is a power of two, or if `start + alignment` overflows (the
    /// start is rounded up as `(start + alignment - 1)` evaluated left to right, so a start in
    /// the last `alignment` bytes below 2^64 panics even when the rounded value would fit; the
    /// original behaves the same, see `docs/conformance.md`).
    #[track_caller]
    pub fn aligned_subrange(&self, alignment: u64) -> Self {
        assert!(
            alignment.is_power_of_two(),
            "alignment must be a power of two"
        );
        let start = (add(self.start, alignment) - 1) & !(alignment - 1);
        let end = round_down(self.end, alignment);
        if start <= end {
            Self::new(start..end)
        } else {
            Self::EMPTY
        }
    }
}

impl fmt::Display for MemoryRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}-{:#x}", self.start, self.end)
    }
}

impl TryFrom<Range<u64>> for MemoryRange {
    type Error = InvalidMemoryRange;

    fn try_from(range: Range<u64>) -> Result<Self, Self::Error> {
        Self::try_new(range)
    }
}

impl TryFrom<Range<usize>> for MemoryRange {
    type Error = InvalidMemoryRange;

    fn try_from(range: Range<usize>) -> Result<Self, Self::Error> {
        // `usize` is at most 64 bits wide on every supported target, so this is lossless.
        Self::try_new(range.start as u64..range.end as u64)
    }
}

impl From<MemoryRange> for Range<u64> {
    fn from(range: MemoryRange) -> Self {
        range.start..range.end
    }
}

/// An iterator that chops a range into consecutive pieces so that as much as possible is
/// covered by naturally aligned 1 GiB pages, then 2 MiB pages, with 4 KiB-granular pieces at
/// the edges.
///
/// The caller must keep `offset` and `max_len` multiples of 4096 (otherwise iteration panics
/// when an unaligned bound is produced) and `max_len` non-zero (otherwise the iterator yields
/// the empty range at the start forever).
#[derive(Debug, Clone)]
pub struct AlignedSubranges {
    remaining: MemoryRange,
    offset: u64,
    max_len: u64,
}

impl AlignedSubranges {
    /// Splits `range`, judging alignment on the addresses themselves, with no length limit.
    pub fn new(range: MemoryRange) -> Self {
        Self {
            remaining: range,
            offset: 0,
            max_len: u64::MAX,
        }
    }

    /// Judges alignment on `address + offset` instead of `address` (for a range that will be
    /// mapped at a different base).
    pub fn with_offset(self, offset: u64) -> Self {
        Self { offset, ..self }
    }

    /// Limits every piece to at most `max_len` bytes.
    pub fn with_max_range_len(self, max_len: u64) -> Self {
        Self { max_len, ..self }
    }
}

impl Iterator for AlignedSubranges {
    type Item = MemoryRange;

    fn next(&mut self) -> Option<MemoryRange> {
        if self.remaining.is_empty() {
            return None;
        }
        let start = add(self.remaining.start, self.offset);
        let mut end = add(self.remaining.end, self.offset);
        if end - start > self.max_len {
            end = add(start, self.max_len);
        }
        for page_size in [TWO_MB, ONE_GB] {
            let first_page_start = round_up(start, page_size);
            if first_page_start >= round_down(end, page_size) {
                // No whole page of this size fits.
            } else if !start.is_multiple_of(page_size) {
                end = end.min(first_page_start);
            } else {
                end = round_down(end, page_size);
            }
        }
        let piece_end = sub(end, self.offset);
        let piece = MemoryRange::new(sub(start, self.offset)..piece_end);
        self.remaining = MemoryRange::new(piece_end..self.remaining.end);
        Some(piece)
    }
}

/// Which inputs of [`walk_ranges`] cover a piece of the address space, with their tags.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RangeWalkResult<T, U> {
    /// Neither input covers the piece.
    Neither,
    /// Only the left input covers the piece.
    Left(T),
    /// Only the right input covers the piece.
    Right(U),
    /// Both inputs cover the piece.
    Both(T, U),
}

/// One input of a range walk: the source iterator, whether it is exhausted, and the element
/// currently buffered.
struct WalkInput<I: Iterator> {
    source: I,
    exhausted: bool,
    current: Option<I::Item>,
    unsorted_message: &'static str,
}

impl<I: Iterator> WalkInput<I> {
    fn new(source: I, unsorted_message: &'static str) -> Self {
        Self {
            source,
            exhausted: false,
            current: None,
            unsorted_message,
        }
    }
}

impl<I, T> WalkInput<I>
where
    I: Iterator<Item = (MemoryRange, T)>,
{
    /// Drops the buffered element while it is empty or ends at or before `position`, pulling
    /// the next one; every pulled element must start at or after `position`.
    fn refresh(&mut self, position: u64) {
        while self
            .current
            .as_ref()
            .is_none_or(|(range, _)| range.is_empty() || range.end() <= position)
        {
            self.current = None;
            if self.exhausted {
                return;
            }
            match self.source.next() {
                None => {
                    self.exhausted = true;
                    return;
                }
                Some(element) => {
                    if element.0.start() < position {
                        panic!("{}", self.unsorted_message);
                    }
                    self.current = Some(element);
                }
            }
        }
    }
}

/// The lazy iterator behind [`walk_ranges`].
struct RangeWalk<L: Iterator, R: Iterator> {
    position: u64,
    left: WalkInput<L>,
    right: WalkInput<R>,
}

impl<L, R, T, U> Iterator for RangeWalk<L, R>
where
    L: Iterator<Item = (MemoryRange, T)>,
    R: Iterator<Item = (MemoryRange, U)>,
    T: Clone,
    U: Clone,
{
    type Item = (MemoryRange, RangeWalkResult<T, U>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.position == MemoryRange::MAX_ADDRESS {
            return None;
        }
        let position = self.position;
        self.left.refresh(position);
        self.right.refresh(position);
        let (end, result) = match (&self.left.current, &self.right.current) {
            (None, None) => (MemoryRange::MAX_ADDRESS, RangeWalkResult::Neither),
            (Some((left, tag)), None) => {
                if position < left.start() {
                    (left.start(), RangeWalkResult::Neither)
                } else {
                    (left.end(), RangeWalkResult::Left(tag.clone()))
                }
            }
            (None, Some((right, tag))) => {
                if position < right.start() {
                    (right.start(), RangeWalkResult::Neither)
                } else {
                    (right.end(), RangeWalkResult::Right(tag.clone()))
                }
            }
            (Some((left, left_tag)), Some((right, right_tag))) => {
                let in_left = position >= left.start();
                let in_right = position >= right.start();
                match (in_left, in_right) {
                    (false, false) => (left.start().min(right.start()), RangeWalkResult::Neither),
                    (false, true) => (
                        left.start().min(right.end()),
                        RangeWalkResult::Right(right_tag.clone()),
                    ),
                    (true, false) => (
                        right.start().min(left.end()),
                        RangeWalkResult::Left(left_tag.clone()),
                    ),
                    (true, true) => (
                        left.end().min(right.end()),
                        RangeWalkResult::Both(left_tag.clone(), right_tag.clone()),
                    ),
                }
            }
        };
        self.position = end;
        Some((MemoryRange::new(position..end), result))
    }
}

/// Walks two sorted lists of tagged ranges together, partitioning `0..MAX_ADDRESS` into
/// consecutive non-empty pieces labelled by which input covers each piece.
///
/// A new piece begins at every start or end of a non-empty element; pieces are not merged.
/// Within each input every element (empty or not) must start at or after the end of the most
/// recent non-empty element before it.
///
/// # Panics
///
/// The returned iterator panics with `left not sorted` or `right not sorted` at the `next()`
/// call that reaches an element breaking that rule.
pub fn walk_ranges<T: Clone, U: Clone>(
    left: impl IntoIterator<Item = (MemoryRange, T)>,
    right: impl IntoIterator<Item = (MemoryRange, U)>,
) -> impl Iterator<Item = (MemoryRange, RangeWalkResult<T, U>)> {
    RangeWalk {
        position: 0,
        left: WalkInput::new(left.into_iter(), "left not sorted"),
        right: WalkInput::new(right.into_iter(), "right not sorted"),
    }
}

/// The pieces covered by both `left` and `right` (sorted, non-overlapping inputs).
///
/// Pieces are not merged; see [`walk_ranges`] for the ordering requirement and panics.
pub fn overlapping_ranges(
    left: impl IntoIterator<Item = MemoryRange>,
    right: impl IntoIterator<Item = MemoryRange>,
) -> impl Iterator<Item = MemoryRange> {
    walk_ranges(
        left.into_iter().map(|range| (range, ())),
        right.into_iter().map(|range| (range, ())),
    )
    .filter_map(|(range, result)| match result {
        RangeWalkResult::Both((), ()) => Some(range),
        _ => None,
    })
}

/// The pieces of `left` not covered by `right` (sorted, non-overlapping inputs).
///
/// Pieces are not merged; see [`walk_ranges`] for the ordering requirement and panics.
pub fn subtract_ranges(
    left: impl IntoIterator<Item = MemoryRange>,
    right: impl IntoIterator<Item = MemoryRange>,
) -> impl Iterator<Item = MemoryRange> {
    walk_ranges(
        left.into_iter().map(|range| (range, ())),
        right.into_iter().map(|range| (range, ())),
    )
    .filter_map(|(range, result)| match result {
        RangeWalkResult::Left(()) => Some(range),
        _ => None,
    })
}

/// The lazy iterator behind [`flatten_ranges`].
struct Flatten<I: Iterator> {
    ranges: Peekable<I>,
}

impl<I: Iterator<Item = MemoryRange>> Iterator for Flatten<I> {
    type Item = MemoryRange;

    fn next(&mut self) -> Option<MemoryRange> {
        let first = self.ranges.next()?;
        let mut previous_start = first.start();
        let mut end = first.end();
        while let Some(next) = self.ranges.peek() {
            if next.start() < previous_start {
                panic!("ranges are not sorted");
            }
            if next.start() > end {
                break;
            }
            end = end.max(next.end());
            previous_start = next.start();
            self.ranges.next();
        }
        Some(MemoryRange::new(first.start()..end))
    }
}

/// Merges ranges sorted by start into maximal runs of overlapping or touching ranges.
///
/// A standalone empty range is emitted as an empty range.
///
/// # Panics
///
/// The returned iterator panics with `ranges are not sorted` when it reaches a range that
/// starts below its predecessor's start.
pub fn flatten_ranges(
    ranges: impl IntoIterator<Item = MemoryRange>,
) -> impl Iterator<Item = MemoryRange> {
    Flatten {
        ranges: ranges.into_iter().peekable(),
    }
}

/// The lazy iterator behind [`merge_adjacent_ranges`].
struct MergeAdjacent<I: Iterator> {
    ranges: Peekable<I>,
}

impl<I, T> Iterator for MergeAdjacent<I>
where
    I: Iterator<Item = (MemoryRange, T)>,
    T: PartialEq,
{
    type Item = (MemoryRange, T);

    fn next(&mut self) -> Option<Self::Item> {
        let (first, tag) = self.ranges.next()?;
        let mut previous_start = first.start();
        let mut end = first.end();
        while let Some((next, next_tag)) = self.ranges.peek() {
            if next.start() < previous_start {
                panic!("ranges are not sorted");
            }
            if next.start() < end {
                panic!("ranges overlap");
            }
            if next.start() != end || *next_tag != tag {
                break;
            }
            end = next.end();
            previous_start = next.start();
            self.ranges.next();
        }
        Some((MemoryRange::new(first.start()..end), tag))
    }
}

/// Merges touching ranges that carry equal tags; the merged piece keeps the first tag.
///
/// Gaps are never bridged.
///
/// # Panics
///
/// The returned iterator panics with `ranges are not sorted` when it reaches a range that
/// starts below its predecessor's start, and with `ranges overlap` when a range starts inside
/// the run being built.
pub fn merge_adjacent_ranges<T: PartialEq>(
    ranges: impl IntoIterator<Item = (MemoryRange, T)>,
) -> impl Iterator<Item = (MemoryRange, T)> {
    MergeAdjacent {
        ranges: ranges.into_iter().peekable(),
    }
}

#[cfg(test)]
#[allow(clippy::reversed_empty_ranges)] // Reversed ranges are the invalid inputs under test.
mod tests {
    use super::*;

    const KB: u64 = 1024;
    const MB: u64 = 1024 * KB;
    const GB: u64 = 1024 * MB;

    fn r(start: u64, end: u64) -> MemoryRange {
        MemoryRange::new(start..end)
    }

    /// A range given in 4 KiB page numbers.
    fn pages(start: u64, end: u64) -> MemoryRange {
        MemoryRange::from_4k_gpn_range(start..end)
    }

    fn panics<T>(f: impl FnOnce() -> T) -> bool {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err()
    }

    #[test]
    fn accessors_and_formatting() {
        let range = r(0x1000, 0x3000);
        assert_eq!(range.to_string(), "0x1000-0x3000");
        assert_eq!(range.len(), 0x2000);
        assert_eq!(range.page_count_4k(), 2);
        assert_eq!(range.page_count_2m(), 1);
        assert_eq!(range.start_4k_gpn(), 1);
        assert_eq!(range.end_4k_gpn(), 3);
        assert!(!range.is_empty());
        assert_eq!(
            format!("{range:?}"),
            "MemoryRange { start: 4096, end: 12288 }"
        );
        assert_eq!(Range::<u64>::from(range), 0x1000..0x3000);
    }

    #[test]
    fn empty_and_page_count_2m() {
        assert_eq!(MemoryRange::EMPTY.to_string(), "0x0-0x0");
        assert_eq!(MemoryRange::EMPTY.page_count_2m(), 0);
        assert!(MemoryRange::EMPTY.is_empty());
        assert_eq!(r(0, 0x201000).page_count_2m(), 2);
        assert_eq!(r(0x1000, 0x201000).page_count_2m(), 1);
        assert_eq!(MemoryRange::MAX_ADDRESS, 0xffff_ffff_ffff_f000);
    }

    // Construction errors: unaligned or reversed bounds.
    #[test]
    fn try_new_errors() {
        let err = MemoryRange::try_new(0x1001..0x2000).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unaligned or invalid memory range: 0x1001-0x2000"
        );
        let err = MemoryRange::try_new(0x3000..0x2000).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unaligned or invalid memory range: 0x3000-0x2000"
        );
        assert_eq!(
            format!("{err:?}"),
            "InvalidMemoryRange { start: 12288, end: 8192 }"
        );
        assert_eq!((err.start(), err.end()), (0x3000, 0x2000));
        assert!(MemoryRange::try_new(0x1000..0x1001).is_err());
        assert_eq!(
            MemoryRange::try_new(0x1000..0x2000).unwrap(),
            r(0x1000, 0x2000)
        );
        assert!(MemoryRange::try_from(0x1000u64..0x800u64).is_err());
    }

    #[test]
    fn new_panics_and_try_from_usize() {
        assert!(panics(|| MemoryRange::new(0x1000..0x1800)));
        assert!(panics(|| MemoryRange::new(0x800..0x1000)));
        assert!(panics(|| MemoryRange::new(0x2000..0x1000)));
        let range = MemoryRange::try_from(0usize..4096usize).unwrap();
        assert_eq!(range.to_string(), "0x0-0x1000");
    }

    #[test]
    fn constructors_are_const() {
        const RANGE: MemoryRange = MemoryRange::new(0x1000..0x2000);
        const RESULT: Result<MemoryRange, InvalidMemoryRange> = MemoryRange::try_new(0..0x1000);
        assert_eq!(RANGE.len(), 0x1000);
        assert!(RESULT.is_ok());
    }

    // Page-aligned bounds of arbitrary addresses, up to the top of the address space.
    #[test]
    fn bounding() {
        assert_eq!(
            MemoryRange::bounding(0x1800..0x1800).to_string(),
            "0x1000-0x2000"
        );
        assert_eq!(
            MemoryRange::bounding(0x1234..0x5678).to_string(),
            "0x1000-0x6000"
        );
        assert_eq!(
            MemoryRange::bounding(0x1000..0x1000).to_string(),
            "0x1000-0x1000"
        );
        assert_eq!(MemoryRange::bounding(0..0).to_string(), "0x0-0x0");
        assert_eq!(
            MemoryRange::bounding(0..0xFFFF_FFFF_FFFF_EFFE).to_string(),
            "0x0-0xfffffffffffff000"
        );
        assert!(panics(|| MemoryRange::bounding(0..0xFFFF_FFFF_FFFF_EFFF)));
        assert!(panics(|| MemoryRange::bounding(
            0..MemoryRange::MAX_ADDRESS
        )));
        assert!(panics(|| MemoryRange::bounding(5..4)));
    }

    #[test]
    fn from_4k_gpn_range() {
        assert_eq!(pages(5, 11).to_string(), "0x5000-0xb000");
        assert_eq!(
            pages(0, 0xF_FFFF_FFFF_FFFF).to_string(),
            "0x0-0xfffffffffffff000"
        );
        assert!(panics(|| pages(0, 0x10_0000_0000_0000)));
        assert!(panics(|| pages(0x10_0000_0000_0000, 0x10_0000_0000_0000)));
        assert!(panics(|| pages(3, 2)));
    }

    #[test]
    fn alignment() {
        assert_eq!(r(0x200000, 0x400000).alignment(0), 0x200000);
        assert_eq!(
            r(4 * MB + 8 * KB, 6 * MB + 8 * KB).alignment(2 * MB - 8 * KB),
            0x200000
        );
        assert_eq!(r(0, 4 * GB).alignment(0), 0x1_0000_0000);
        assert_eq!(r(0x1000, 0x1000).alignment(0), 0x1000);
        assert!(panics(|| MemoryRange::EMPTY.alignment(0)));
        assert!(panics(|| r(0, 0x1000).alignment(u64::MAX)));
    }

    #[test]
    fn aligned_subrange() {
        assert_eq!(
            r(0x1000, 0x101000).aligned_subrange(MB).to_string(),
            "0x100000-0x100000"
        );
        assert_eq!(
            r(0x1000, 0x2000).aligned_subrange(MB).to_string(),
            "0x0-0x0"
        );
        assert_eq!(
            r(0x3000, 0x9000).aligned_subrange(1).to_string(),
            "0x3000-0x9000"
        );
        assert_eq!(
            r(MB, 5 * MB).aligned_subrange(2 * MB).to_string(),
            "0x200000-0x400000"
        );
        assert!(panics(|| r(0x1000, 0x3000).aligned_subrange(3)));
        assert!(panics(|| r(0x1000, 0x3000).aligned_subrange(0)));
        let top = MemoryRange::MAX_ADDRESS;
        assert!(panics(|| r(top, top).aligned_subrange(2 * MB)));
    }

    #[test]
    fn overlaps() {
        assert!(r(0x2000, 0x2000).overlaps(&r(0x1000, 0x3000)));
        assert!(!r(0x1000, 0x2000).overlaps(&r(0x2000, 0x3000)));
        assert!(!r(0x1000, 0x1000).overlaps(&r(0x1000, 0x3000)));
        assert!(!r(0x2000, 0x2000).overlaps(&r(0x2000, 0x2000)));
        assert!(r(0x1000, 0x3000).overlaps(&r(0x2000, 0x4000)));
    }

    #[test]
    fn contains() {
        let range = r(0x1000, 0x3000);
        assert!(range.contains(&r(0x3000, 0x3000)));
        assert!(!range.contains(&MemoryRange::EMPTY));
        assert!(range.contains(&range));
        assert!(!range.contains(&r(0x2000, 0x4000)));
        assert!(!range.contains_addr(0xfff));
        assert!(range.contains_addr(0x1000));
        assert!(range.contains_addr(0x2fff));
        assert!(!range.contains_addr(0x3000));
        assert!(!r(0x1000, 0x1000).contains_addr(0x1000));
    }

    #[test]
    fn intersection() {
        assert_eq!(
            r(0, 0x1000).intersection(&r(0x1000, 0x2000)).to_string(),
            "0x1000-0x1000"
        );
        assert_eq!(
            r(0, 0x1000).intersection(&r(0x5000, 0x6000)).to_string(),
            "0x0-0x0"
        );
        assert_eq!(
            r(0x1000, 0x5000)
                .intersection(&r(0x3000, 0x8000))
                .to_string(),
            "0x3000-0x5000"
        );
    }

    #[test]
    fn split_at_offset() {
        let range = r(0x1000, 0x4000);
        assert_eq!(
            range.split_at_offset(0x1000),
            (r(0x1000, 0x2000), r(0x2000, 0x4000))
        );
        assert_eq!(
            range.split_at_offset(0x3000),
            (r(0x1000, 0x4000), r(0x4000, 0x4000))
        );
        assert_eq!(
            range.split_at_offset(0),
            (r(0x1000, 0x1000), r(0x1000, 0x4000))
        );
        assert!(panics(|| range.split_at_offset(0x800)));
        assert!(panics(|| range.split_at_offset(0x4000)));
    }

    #[test]
    fn offset_of() {
        let range = r(0x1000, 0x3000);
        assert_eq!(range.offset_of(0x2800), Some(0x1800));
        assert_eq!(range.offset_of(0x1000), Some(0));
        assert_eq!(range.offset_of(0x3000), None);
        assert_eq!(range.offset_of(0xfff), None);
    }

    #[test]
    fn ordering() {
        assert!(r(0x1000, 0x2000) < r(0x1000, 0x3000));
        assert!(r(0x1000, 0x3000) < r(0x2000, 0x2000));
        assert!(r(0, 0x5000) < r(0x1000, 0x2000));
        assert_eq!(
            r(0x1000, 0x2000).cmp(&r(0x1000, 0x2000)),
            std::cmp::Ordering::Equal
        );
    }

    fn subranges(iter: AlignedSubranges) -> Vec<MemoryRange> {
        iter.collect()
    }

    #[test]
    fn aligned_subranges_small() {
        let range = r(5 * MB + 400 * KB, 12 * MB + 400 * KB);
        let pieces = subranges(AlignedSubranges::new(range));
        assert_eq!(
            pieces,
            [
                r(0x564000, 0x600000),
                r(0x600000, 0xc00000),
                r(0xc00000, 0xc64000)
            ]
        );
        let alignments: Vec<u64> = pieces.iter().map(|piece| piece.alignment(0)).collect();
        assert_eq!(alignments, [16 * KB, 2 * MB, 16 * KB]);
    }

    #[test]
    fn aligned_subranges_gigabytes() {
        let start = GB + 501 * MB;
        let end = 3 * GB + 503 * MB;
        assert_eq!(
            subranges(AlignedSubranges::new(r(start, end))),
            [
                r(GB + 501 * MB, GB + 502 * MB),
                r(GB + 502 * MB, 2 * GB),
                r(2 * GB, 3 * GB),
                r(3 * GB, 3 * GB + 502 * MB),
                r(3 * GB + 502 * MB, 3 * GB + 503 * MB),
            ]
        );
    }

    #[test]
    fn aligned_subranges_page_edges() {
        assert_eq!(
            subranges(AlignedSubranges::new(r(0x1ff000, 0x80201000))),
            [
                r(0x1ff000, 0x200000),
                r(0x200000, 0x40000000),
                r(0x40000000, 0x80000000),
                r(0x80000000, 0x80200000),
                r(0x80200000, 0x80201000),
            ]
        );
    }

    #[test]
    fn aligned_subranges_max_len() {
        assert_eq!(
            subranges(AlignedSubranges::new(r(0, 4 * MB)).with_max_range_len(MB)),
            [
                r(0, MB),
                r(MB, 2 * MB),
                r(2 * MB, 3 * MB),
                r(3 * MB, 4 * MB)
            ]
        );
        assert_eq!(
            subranges(AlignedSubranges::new(r(0, 5 * GB)).with_max_range_len(2 * GB)),
            [r(0, 2 * GB), r(2 * GB, 4 * GB), r(4 * GB, 5 * GB)]
        );
        // A zero maximum length yields the empty range at the start forever.
        let endless: Vec<_> = AlignedSubranges::new(r(0, 4 * MB))
            .with_max_range_len(0)
            .take(5)
            .collect();
        assert_eq!(endless, [r(0, 0); 5]);
        // A maximum length that is not page aligned panics when iterated.
        let mut unaligned = AlignedSubranges::new(r(0, 4 * MB)).with_max_range_len(0xfff);
        assert!(panics(|| unaligned.next()));
    }

    #[test]
    fn aligned_subranges_offset() {
        let range = r(4 * MB + 8 * KB, 6 * MB + 8 * KB);
        let pieces = subranges(AlignedSubranges::new(range).with_offset(2 * MB - 8 * KB));
        assert_eq!(pieces, [r(0x402000, 0x602000)]);
        let pieces = subranges(AlignedSubranges::new(range));
        assert_eq!(pieces, [range]);
        assert_eq!(pieces[0].alignment(0), 8 * KB);
        assert!(subranges(AlignedSubranges::new(MemoryRange::EMPTY)).is_empty());
        let mut unaligned = AlignedSubranges::new(r(0, 4 * MB)).with_offset(0x800);
        let cloned = unaligned.clone();
        assert!(panics(|| unaligned.next()));
        assert!(format!("{cloned:?}").contains("AlignedSubranges"));
    }

    #[test]
    fn walk_ranges_tags() {
        let left = [(r(MB, 4 * MB), "first"), (r(8 * MB, 12 * MB), "second")];
        let right = [(r(2 * MB, 9 * MB), 1000), (r(9 * MB, 10 * MB), 2000)];
        let walked: Vec<_> = walk_ranges(left, right).collect();
        use RangeWalkResult::*;
        assert_eq!(
            walked,
            [
                (r(0, MB), Neither),
                (r(MB, 2 * MB), Left("first")),
                (r(2 * MB, 4 * MB), Both("first", 1000)),
                (r(4 * MB, 8 * MB), Right(1000)),
                (r(8 * MB, 9 * MB), Both("second", 1000)),
                (r(9 * MB, 10 * MB), Both("second", 2000)),
                (r(10 * MB, 12 * MB), Left("second")),
                (r(12 * MB, MemoryRange::MAX_ADDRESS), Neither),
            ]
        );
    }

    #[test]
    fn walk_ranges_whole_space() {
        let empty: [(MemoryRange, ()); 0] = [];
        let walked: Vec<_> = walk_ranges(empty, empty).collect();
        assert_eq!(
            walked,
            [(r(0, MemoryRange::MAX_ADDRESS), RangeWalkResult::Neither)]
        );
        assert_eq!(walked[0].0.to_string(), "0x0-0xfffffffffffff000");
        let walked: Vec<_> = walk_ranges([(r(0, MemoryRange::MAX_ADDRESS), 'a')], empty).collect();
        assert_eq!(
            walked,
            [(r(0, MemoryRange::MAX_ADDRESS), RangeWalkResult::Left('a'))]
        );
    }

    fn overlap_left() -> Vec<MemoryRange> {
        vec![
            r(0, 4 * MB),
            r(8 * MB, 12 * MB),
            r(12 * MB, 12 * MB),
            r(16 * MB, 20 * MB),
            r(24 * MB, 32 * MB),
            r(40 * MB, 48 * MB),
        ]
    }

    fn overlap_right() -> Vec<MemoryRange> {
        vec![
            r(2 * MB, 6 * MB),
            r(10 * MB, 11 * MB),
            r(11 * MB, 11 * MB),
            r(11 * MB, 13 * MB),
            r(15 * MB, 22 * MB),
            r(26 * MB, 30 * MB),
        ]
    }

    #[test]
    fn overlapping() {
        let result: Vec<_> = overlapping_ranges(overlap_left(), overlap_right()).collect();
        assert_eq!(
            result,
            [
                r(2 * MB, 4 * MB),
                r(10 * MB, 11 * MB),
                r(11 * MB, 12 * MB),
                r(16 * MB, 20 * MB),
                r(26 * MB, 30 * MB),
            ]
        );
    }

    #[test]
    fn subtract() {
        let result: Vec<_> = subtract_ranges(overlap_left(), overlap_right()).collect();
        assert_eq!(
            result,
            [
                r(0, 2 * MB),
                r(8 * MB, 10 * MB),
                r(24 * MB, 26 * MB),
                r(30 * MB, 32 * MB),
                r(40 * MB, 48 * MB),
            ]
        );
    }

    #[test]
    #[should_panic(expected = "left not sorted")]
    fn overlapping_left_not_sorted() {
        overlapping_ranges([r(MB, 2 * MB), r(0, MB)], [r(3 * MB, 4 * MB)]).for_each(drop);
    }

    #[test]
    #[should_panic(expected = "right not sorted")]
    fn overlapping_right_not_sorted() {
        overlapping_ranges([r(MB, 2 * MB), r(3 * MB, 4 * MB)], [r(0, MB), r(0, MB)]).for_each(drop);
    }

    // Nothing panics until the iterator is advanced.
    #[test]
    fn unsorted_inputs_are_lazy() {
        let _left = overlapping_ranges([r(MB, 2 * MB), r(0, MB)], [r(3 * MB, 4 * MB)]);
        let _right = overlapping_ranges([r(MB, 2 * MB)], [r(0, MB), r(0, MB)]);
        // Earlier items are produced before the panic.
        let mut subtract = subtract_ranges([r(MB, 2 * MB), r(0, MB)], [r(3 * MB, 4 * MB)]);
        assert_eq!(subtract.next(), Some(r(MB, 2 * MB)));
        let message =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| subtract.next())).unwrap_err();
        assert_eq!(message.downcast_ref::<String>().unwrap(), "left not sorted");
    }

    #[test]
    fn walk_ranges_empty_elements() {
        let empty: [(MemoryRange, ()); 0] = [];
        let walked: Vec<_> =
            walk_ranges([(r(4 * MB, 4 * MB), ()), (r(MB, 2 * MB), ())], empty).collect();
        assert_eq!(
            walked,
            [
                (r(0, MB), RangeWalkResult::Neither),
                (r(MB, 2 * MB), RangeWalkResult::Left(())),
                (
                    r(2 * MB, MemoryRange::MAX_ADDRESS),
                    RangeWalkResult::Neither
                ),
            ]
        );
    }

    #[test]
    #[should_panic(expected = "left not sorted")]
    fn walk_ranges_empty_element_inside_previous() {
        let empty: [(MemoryRange, ()); 0] = [];
        walk_ranges([(r(0, 4 * MB), ()), (r(2 * MB, 2 * MB), ())], empty).for_each(drop);
    }

    #[test]
    fn subtract_is_not_merged() {
        let result: Vec<_> =
            subtract_ranges([r(0, 10 * MB)], [r(2 * MB, 3 * MB), r(5 * MB, 6 * MB)]).collect();
        assert_eq!(
            result,
            [r(0, 2 * MB), r(3 * MB, 5 * MB), r(6 * MB, 10 * MB)]
        );
        let result: Vec<_> = subtract_ranges([r(0, 2 * MB), r(2 * MB, 4 * MB)], []).collect();
        assert_eq!(result, [r(0, 2 * MB), r(2 * MB, 4 * MB)]);
        let result: Vec<_> =
            overlapping_ranges([r(0, 2 * MB), r(2 * MB, 4 * MB)], [r(MB, 3 * MB)]).collect();
        assert_eq!(result, [r(MB, 2 * MB), r(2 * MB, 3 * MB)]);
    }

    #[test]
    fn flatten() {
        let input = [
            pages(0, 4),
            pages(5, 7),
            pages(6, 11),
            pages(13, 20),
            pages(20, 25),
            pages(22, 24),
            pages(35, 36),
        ];
        let result: Vec<String> = flatten_ranges(input).map(|x| x.to_string()).collect();
        assert_eq!(
            result,
            [
                "0x0-0x4000",
                "0x5000-0xb000",
                "0xd000-0x19000",
                "0x23000-0x24000"
            ]
        );
    }

    #[test]
    fn flatten_overlaps_and_empty() {
        let result: Vec<_> =
            flatten_ranges([r(0x1000, 0x8000), r(0x2000, 0x3000), r(0x2000, 0x9000)]).collect();
        assert_eq!(result, [r(0x1000, 0x9000)]);
        let input = [r(0x1000, 0x2000), r(0x3000, 0x3000), r(0x5000, 0x6000)];
        let result: Vec<_> = flatten_ranges(input).collect();
        assert_eq!(result, input);
    }

    #[test]
    #[should_panic(expected = "ranges are not sorted")]
    fn flatten_not_sorted() {
        flatten_ranges([pages(0, 4), pages(5, 7), pages(3, 8)]).for_each(drop);
    }

    #[test]
    #[should_panic(expected = "ranges are not sorted")]
    fn flatten_not_sorted_inside_run() {
        flatten_ranges([pages(0, 10), pages(5, 7), pages(3, 8)]).for_each(drop);
    }

    #[test]
    fn merge_adjacent() {
        #[derive(Debug, PartialEq)]
        enum Tag {
            R,
            B,
        }
        let input = [
            (pages(0, 4), Tag::R),
            (pages(5, 7), Tag::R),
            (pages(7, 11), Tag::R),
            (pages(11, 12), Tag::B),
            (pages(13, 20), Tag::R),
            (pages(20, 25), Tag::R),
            (pages(35, 36), Tag::B),
        ];
        let result: Vec<_> = merge_adjacent_ranges(input).collect();
        assert_eq!(
            result,
            [
                (pages(0, 4), Tag::R),
                (pages(5, 11), Tag::R),
                (pages(11, 12), Tag::B),
                (pages(13, 25), Tag::R),
                (pages(35, 36), Tag::B),
            ]
        );
        let result: Vec<_> = merge_adjacent_ranges([
            (pages(0, 1), Tag::R),
            (pages(1, 1), Tag::B),
            (pages(1, 2), Tag::R),
        ])
        .collect();
        assert_eq!(result.len(), 3);
    }

    #[test]
    #[should_panic(expected = "ranges overlap")]
    fn merge_overlap() {
        merge_adjacent_ranges([(pages(0, 6), ()), (pages(5, 7), ()), (pages(9, 12), ())])
            .for_each(drop);
    }

    #[test]
    #[should_panic(expected = "ranges are not sorted")]
    fn merge_not_sorted() {
        merge_adjacent_ranges([(pages(0, 4), ()), (pages(5, 7), ()), (pages(3, 8), ())])
            .for_each(drop);
    }

    #[test]
    #[should_panic(expected = "ranges are not sorted")]
    fn merge_not_sorted_touching_earlier() {
        merge_adjacent_ranges([(pages(0, 4), ()), (pages(5, 7), ()), (pages(4, 5), ())])
            .for_each(drop);
    }

    /// The top of the 64-bit space: `2^64 - n`.
    const fn below_2_64(n: u64) -> u64 {
        0u64.wrapping_sub(n)
    }

    // Each arithmetic expression of this crate at its overflow boundary: one step below the
    // boundary works, the boundary itself panics (as the original, built with overflow checks,
    // does; docs/conformance.md lists every expression).

    #[test]
    fn overflow_bounding_end_round_up() {
        // `end + 0xfff` never overflows: the `end < u64::MAX - 4096` assertion comes first.
        let last = u64::MAX - PAGE_SIZE - 1;
        let top = MemoryRange::MAX_ADDRESS;
        assert_eq!(MemoryRange::bounding(last..last), r(top - PAGE_SIZE, top));
        assert!(panics(|| MemoryRange::bounding(0..last + 1)));
    }

    #[test]
    fn overflow_from_4k_gpn_range_multiplication() {
        assert_eq!(
            MemoryRange::from_4k_gpn_range(MAX_PAGE_NUMBER..MAX_PAGE_NUMBER).start(),
            MemoryRange::MAX_ADDRESS
        );
        assert!(panics(|| MemoryRange::from_4k_gpn_range(
            0..MAX_PAGE_NUMBER + 1
        )));
        assert!(panics(|| MemoryRange::from_4k_gpn_range(
            MAX_PAGE_NUMBER + 1..MAX_PAGE_NUMBER + 1
        )));
    }

    #[test]
    fn overflow_alignment_base_plus_bounds() {
        let top = MemoryRange::MAX_ADDRESS;
        // base + end == u64::MAX fits: alignment 1.
        assert_eq!(r(top, top).alignment(PAGE_SIZE - 1), 1);
        assert_eq!(r(0, top).alignment(PAGE_SIZE - 1), 1);
        // base + end == 2^64 overflows, even though base + start fits.
        assert!(panics(|| r(0, top).alignment(PAGE_SIZE)));
        assert!(panics(|| r(top, top).alignment(PAGE_SIZE)));
        // Both sums zero: the shift by 64 overflows.
        assert!(panics(|| MemoryRange::EMPTY.alignment(0)));
        assert_eq!(r(0, PAGE_SIZE).alignment(0), PAGE_SIZE);
    }

    #[test]
    fn overflow_aligned_subrange_start_plus_alignment() {
        // `start + alignment` is computed before subtracting 1: a start exactly `alignment`
        // below 2^64 overflows although the rounded start would fit.
        let top = MemoryRange::MAX_ADDRESS;
        assert!(panics(|| r(top, top).aligned_subrange(PAGE_SIZE)));
        // Below a page the sum fits even at the top.
        assert_eq!(r(top, top).aligned_subrange(PAGE_SIZE / 2), r(top, top));
        assert!(panics(
            || r(below_2_64(2 * MB), top).aligned_subrange(2 * MB)
        ));
        assert!(panics(|| r(below_2_64(GB), top).aligned_subrange(GB)));
        // One page lower everything fits.
        assert_eq!(
            r(top - PAGE_SIZE, top).aligned_subrange(PAGE_SIZE),
            r(top - PAGE_SIZE, top)
        );
        assert_eq!(
            r(below_2_64(4 * MB), top).aligned_subrange(2 * MB),
            r(below_2_64(4 * MB), below_2_64(2 * MB))
        );
        assert_eq!(
            r(below_2_64(2 * MB) - PAGE_SIZE, top).aligned_subrange(2 * MB),
            r(below_2_64(2 * MB), below_2_64(2 * MB))
        );
    }

    #[test]
    fn overflow_split_at_offset_never() {
        // `start + offset` with `offset <= len` always fits.
        let top = MemoryRange::MAX_ADDRESS;
        let (low, high) = r(top - PAGE_SIZE, top).split_at_offset(PAGE_SIZE);
        assert_eq!((low, high), (r(top - PAGE_SIZE, top), r(top, top)));
    }

    #[test]
    fn overflow_aligned_subranges_offset_sums() {
        let top = MemoryRange::MAX_ADDRESS;
        // `end + offset` == MAX_ADDRESS fits ...
        let mut iter = AlignedSubranges::new(r(0, top - PAGE_SIZE)).with_offset(PAGE_SIZE);
        assert_eq!(iter.next(), Some(r(0, 2 * MB - PAGE_SIZE)));
        // ... `end + offset` == 2^64 panics at the first `next()`.
        let mut iter = AlignedSubranges::new(r(0, top)).with_offset(PAGE_SIZE);
        assert!(panics(move || iter.next()));
        let mut iter = AlignedSubranges::new(r(0, PAGE_SIZE)).with_offset(top);
        assert!(panics(move || iter.next()));
    }

    #[test]
    fn overflow_aligned_subranges_round_up_to_2mb() {
        // A piece starting (in offset space) in the last 2 MiB below 2^64, past its first page,
        // overflows when rounded up to 2 MiB (`start + 0x1fffff`); the original does the same.
        let top = MemoryRange::MAX_ADDRESS;
        let two_mb_line = below_2_64(2 * MB);
        let mut iter = AlignedSubranges::new(r(two_mb_line + PAGE_SIZE, top));
        assert!(panics(move || iter.next()));
        // Starting exactly on the last 2 MiB line the rounding fits (start + 0x1fffff ==
        // u64::MAX) ... and the 1 GiB rounding of the same start is the one that overflows.
        let mut iter = AlignedSubranges::new(r(two_mb_line, top));
        assert!(panics(move || iter.next()));
        // Below the last 1 GiB both roundings fit.
        let gb_line = below_2_64(GB);
        assert_eq!(
            subranges(AlignedSubranges::new(r(gb_line - 2 * MB, gb_line))),
            vec![r(gb_line - 2 * MB, gb_line)]
        );
    }

    #[test]
    fn overflow_aligned_subranges_round_up_to_1gb() {
        // In the last 1 GiB (but below the last 2 MiB) only the 1 GiB rounding overflows; a
        // start exactly on the last 1 GiB line still fits (start + 0x3fffffff == u64::MAX).
        let gb_line = below_2_64(GB);
        let mut iter = AlignedSubranges::new(r(gb_line + PAGE_SIZE, gb_line + 2 * PAGE_SIZE));
        assert!(panics(move || iter.next()));
        assert_eq!(
            subranges(AlignedSubranges::new(r(gb_line, gb_line + PAGE_SIZE))),
            vec![r(gb_line, gb_line + PAGE_SIZE)]
        );
        // The whole address space: two pieces, then the third (starting in the last 2 MiB)
        // overflows.
        let two_mb_line = below_2_64(2 * MB);
        let mut iter = AlignedSubranges::new(r(0, MemoryRange::MAX_ADDRESS));
        assert_eq!(iter.next(), Some(r(0, gb_line)));
        assert_eq!(iter.next(), Some(r(gb_line, two_mb_line)));
        assert!(panics(move || iter.next()));
    }

    #[test]
    fn iterators_are_static_and_send() {
        fn assert_static_send<T: 'static + Send>(_: &T) {}
        let walk = walk_ranges(vec![(r(0, 0x1000), 1u32)], vec![(r(0, 0x1000), 2u8)]);
        assert_static_send(&walk);
        assert_static_send(&overlapping_ranges(vec![r(0, 0x1000)], vec![]));
        assert_static_send(&subtract_ranges(vec![r(0, 0x1000)], vec![]));
        assert_static_send(&flatten_ranges(vec![r(0, 0x1000)]));
        assert_static_send(&merge_adjacent_ranges(vec![(r(0, 0x1000), 1u8)]));
    }
}
