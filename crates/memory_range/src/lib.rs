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

/// Rounds `value` up to a multiple of the power of two `alignment` (`value + alignment - 1`,
/// evaluated left to right, then masked); overflow panics.
#[track_caller]
fn round_up(value: u64, alignment: u64) -> u64 {
    sub(add(value, alignment), 1) & !(alignment - 1)
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
    /// Panics unless `alignment` is a power of two, or if rounding the start up overflows.
    #[track_caller]
    pub fn aligned_subrange(&self, alignment: u64) -> Self {
        assert!(
            alignment.is_power_of_two(),
            "alignment must be a power of two"
        );
        let start = round_up(self.start, alignment);
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
