//! Scatter lists of guest pages: [`PagedRange`] is a byte window over the
//! concatenation of listed 4 KiB guest pages; [`PagedRanges`] concatenates several of them.
//!
//! Only the first page of a window may begin mid-page and only the last may end mid-page.
//! [`PagedRange::ranges`] yields the guest address ranges the window covers, merging runs of
//! consecutive page numbers.

use crate::PAGE_SIZE;
use crate::PAGE_SIZE64;
use std::marker::PhantomData;

/// A guest page number whose address does not fit in 64 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid guest page number {0:#x}")]
pub struct InvalidGpn(pub u64);

/// A half-open range of guest addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressRange {
    /// The first address.
    pub start: u64,
    /// The address after the last.
    pub end: u64,
}

impl AddressRange {
    /// The number of addresses in the range (`end - start`).
    ///
    /// # Panics
    ///
    /// Panics if `end < start`.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the range holds no address (`start == end`).
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

impl From<std::ops::Range<u64>> for AddressRange {
    fn from(range: std::ops::Range<u64>) -> Self {
        Self {
            start: range.start,
            end: range.end,
        }
    }
}

/// A byte window `[start, end)` over the concatenation of the pages `gpns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagedRange<'a> {
    start: usize,
    end: usize,
    gpns: &'a [u64],
}

impl Default for PagedRange<'_> {
    fn default() -> Self {
        Self::empty()
    }
}

/// One piece of a paged range inside a single page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PageChunk {
    pub gpn: u64,
    pub offset_in_page: usize,
    pub len: usize,
}

impl PageChunk {
    /// The guest address of the chunk's first byte, if the page number is valid.
    pub fn gpa(&self) -> Result<u64, InvalidGpn> {
        self.gpn
            .checked_mul(PAGE_SIZE64)
            .map(|base| base + self.offset_in_page as u64)
            .ok_or(InvalidGpn(self.gpn))
    }
}

impl<'a> PagedRange<'a> {
    /// The page size the window's pages have.
    pub const PAGE_SIZE: usize = PAGE_SIZE;

    /// The empty range.
    pub const fn empty() -> Self {
        Self {
            start: 0,
            end: 0,
            gpns: &[],
        }
    }

    /// The window of `len` bytes starting `offset` bytes into the first listed page; `None`
    /// when it would extend beyond the listed pages.
    pub const fn new(offset: usize, len: usize, gpns: &'a [u64]) -> Option<Self> {
        let (Some(end), Some(limit)) = (offset.checked_add(len), gpns.len().checked_mul(PAGE_SIZE))
        else {
            return None;
        };
        if end > limit {
            return None;
        }
        Some(Self {
            start: offset,
            end,
            gpns,
        })
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The offset of the first byte inside its page.
    pub fn offset(&self) -> usize {
        self.start % PAGE_SIZE
    }

    /// The pages the window touches.
    pub fn gpns(&self) -> &'a [u64] {
        if self.is_empty() {
            return &[];
        }
        &self.gpns[self.start / PAGE_SIZE..self.end.div_ceil(PAGE_SIZE)]
    }

    /// The sub-window of `len` bytes at `offset`, if it lies inside.
    pub fn try_subrange(&self, offset: usize, len: usize) -> Option<Self> {
        let end = offset.checked_add(len)?;
        if end > self.len() {
            return None;
        }
        Some(Self {
            start: self.start + offset,
            end: self.start + end,
            gpns: self.gpns,
        })
    }

    /// The sub-window of `len` bytes at `offset`.
    ///
    /// # Panics
    /// If it does not lie inside.
    pub fn subrange(&self, offset: usize, len: usize) -> Self {
        self.try_subrange(offset, len).unwrap_or_else(|| {
            panic!(
                "subrange {offset:#x}+{len:#x} is outside the paged range of {:#x} bytes",
                self.len()
            )
        })
    }

    /// Drops the first `len` bytes.
    ///
    /// # Panics
    /// If `len` exceeds the length.
    pub fn skip(&mut self, len: usize) {
        assert!(
            len <= self.len(),
            "cannot skip {len:#x} bytes of a paged range of {:#x} bytes",
            self.len()
        );
        self.start += len;
    }

    /// Keeps at most the first `len` bytes.
    pub fn truncate(&mut self, len: usize) {
        if len < self.len() {
            self.end = self.start + len;
        }
    }

    /// Splits at byte `at`, if it lies inside (or at the end).
    pub fn try_split(self, at: usize) -> Option<(Self, Self)> {
        if at > self.len() {
            return None;
        }
        let middle = self.start + at;
        Some((
            Self {
                start: self.start,
                end: middle,
                gpns: self.gpns,
            },
            Self {
                start: middle,
                end: self.end,
                gpns: self.gpns,
            },
        ))
    }

    /// Splits at byte `at`.
    ///
    /// # Panics
    /// If `at` exceeds the length.
    pub fn split(self, at: usize) -> (Self, Self) {
        self.try_split(at).unwrap_or_else(|| {
            panic!(
                "cannot split a paged range of {:#x} bytes at {at:#x}",
                self.len()
            )
        })
    }

    /// Removes the first run of consecutive page numbers from the front of the window and
    /// returns its guest address range; `None` when the window is empty. A page number whose
    /// address does not fit in 64 bits gives `Err` (and its page is removed).
    pub fn pop_front_range(&mut self) -> Option<Result<AddressRange, InvalidGpn>> {
        let mut ranges = self.ranges();
        let front = ranges.next()?;
        self.start = ranges.position;
        Some(front)
    }

    /// The guest address ranges covered, merging runs of consecutive page numbers.
    pub fn ranges(self) -> PagedRangeRangeIter<'a> {
        PagedRangeRangeIter {
            range: self,
            position: self.start,
        }
    }

    /// The per-page pieces of the window: a head up to the end of the first page, whole pages,
    /// then a tail.
    pub(crate) fn chunks(&self) -> impl Iterator<Item = PageChunk> + 'a {
        let range = *self;
        let mut position = range.start;
        std::iter::from_fn(move || {
            if position >= range.end {
                return None;
            }
            let offset_in_page = position % PAGE_SIZE;
            let len = (PAGE_SIZE - offset_in_page).min(range.end - position);
            let chunk = PageChunk {
                gpn: range.gpns[position / PAGE_SIZE],
                offset_in_page,
                len,
            };
            position += len;
            Some(chunk)
        })
    }
}

/// Iterator of [`PagedRange::ranges`].
#[derive(Debug, Clone)]
pub struct PagedRangeRangeIter<'a> {
    range: PagedRange<'a>,
    position: usize,
}

impl Iterator for PagedRangeRangeIter<'_> {
    type Item = Result<AddressRange, InvalidGpn>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.position >= self.range.end {
            return None;
        }
        let page_index = self.position / PAGE_SIZE;
        let first_gpn = self.range.gpns[page_index];
        let start = match first_gpn.checked_mul(PAGE_SIZE64) {
            Some(base) => base + (self.position % PAGE_SIZE) as u64,
            None => {
                // Skip the whole page so that iteration makes progress.
                self.position = ((page_index + 1) * PAGE_SIZE).min(self.range.end);
                return Some(Err(InvalidGpn(first_gpn)));
            }
        };
        let mut previous_gpn = first_gpn;
        let mut next_page = page_index + 1;
        while next_page * PAGE_SIZE < self.range.end {
            let gpn = self.range.gpns[next_page];
            if previous_gpn.checked_add(1) != Some(gpn) || gpn.checked_mul(PAGE_SIZE64).is_none() {
                break;
            }
            previous_gpn = gpn;
            next_page += 1;
        }
        let run_end = (next_page * PAGE_SIZE).min(self.range.end);
        let end = start + (run_end - self.position) as u64;
        self.position = run_end;
        Some(Ok(AddressRange { start, end }))
    }
}

/// Several paged ranges forming one logical buffer.
///
/// `T` is the iterator of the ranges (cloned whenever the buffer is walked, so a slice iterator
/// or an array's `IntoIter` costs nothing extra). Skipping and truncating only move the
/// buffer's bounds.
#[derive(Debug, Clone)]
pub struct PagedRanges<'a, T> {
    ranges: T,
    /// Bytes dropped from the front of the concatenation.
    skipped: usize,
    /// Bytes remaining after `skipped`.
    len: usize,
    _ranges: PhantomData<PagedRange<'a>>,
}

impl<'a, T: Iterator<Item = PagedRange<'a>> + Clone> PagedRanges<'a, T> {
    /// Concatenates `ranges`.
    pub fn new<I>(ranges: I) -> Self
    where
        I: IntoIterator<IntoIter = T>,
    {
        let ranges = ranges.into_iter();
        let len = ranges.clone().map(|range| range.len()).sum();
        Self {
            ranges,
            skipped: 0,
            len,
            _ranges: PhantomData,
        }
    }

    /// The total length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the total length is zero.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops the first `len` bytes (all of them if `len` exceeds the length).
    pub fn skip(&mut self, len: usize) {
        let dropped = len.min(self.len);
        self.skipped += dropped;
        self.len -= dropped;
    }

    /// Keeps at most the first `len` bytes.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// The non-empty pieces of the buffer, in order, each a paged range.
    pub fn paged_ranges(self) -> PagedRangesIter<'a, T> {
        PagedRangesIter { ranges: self }
    }

    /// The pieces without consuming the buffer.
    pub(crate) fn pieces(&self) -> PagedRangesIter<'a, T> {
        self.clone().paged_ranges()
    }
}

/// The iterator of [`PagedRanges::paged_ranges`].
#[derive(Debug, Clone)]
pub struct PagedRangesIter<'a, T> {
    ranges: PagedRanges<'a, T>,
}

impl<'a, T: Iterator<Item = PagedRange<'a>>> Iterator for PagedRangesIter<'a, T> {
    type Item = PagedRange<'a>;

    fn next(&mut self) -> Option<PagedRange<'a>> {
        let ranges = &mut self.ranges;
        while ranges.len > 0 {
            let range = ranges.ranges.next()?;
            if ranges.skipped >= range.len() {
                ranges.skipped -= range.len();
                continue;
            }
            let piece_len = (range.len() - ranges.skipped).min(ranges.len);
            let piece = range.subrange(ranges.skipped, piece_len);
            ranges.skipped = 0;
            ranges.len -= piece_len;
            return Some(piece);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_must_fit_the_pages() {
        assert!(PagedRange::new(1, 4096, &[1]).is_none());
        assert!(PagedRange::new(0, 4096, &[1]).is_some());
        assert!(PagedRange::new(usize::MAX, 2, &[1]).is_none());
        let empty = PagedRange::empty();
        assert!(empty.is_empty());
        assert_eq!(empty.ranges().count(), 0);
        assert!(empty.gpns().is_empty());
    }

    #[test]
    fn two_range_example() {
        let first_gpns = [0x11, 0x22, 0x33];
        let second_gpns = [0x111, 0x112, 0x222];
        let mut ranges = PagedRanges::new([
            PagedRange::new(0x123, 0x2012, &first_gpns).unwrap(),
            PagedRange::new(0x456, 0x2017, &second_gpns).unwrap(),
        ]);
        assert_eq!(ranges.len(), 0x2012 + 0x2017);
        ranges.skip(0x100);
        ranges.truncate(0x2F29);
        assert_eq!(ranges.len(), 0x2F29);
        let covered: Vec<AddressRange> = ranges
            .paged_ranges()
            .flat_map(|range| range.ranges())
            .collect::<Result<_, _>>()
            .unwrap();
        let expected = [
            (0x11223, 0x12000),
            (0x22000, 0x23000),
            (0x33000, 0x33135),
            (0x111456, 0x11246D),
        ]
        .map(|(start, end)| AddressRange { start, end });
        assert_eq!(covered, expected);
    }

    #[test]
    fn const_construction_and_popping_front_ranges() {
        const GPNS: [u64; 3] = [7, 8, 20];
        const RANGE: Option<PagedRange<'static>> = PagedRange::new(0x10, 0x2000, &GPNS);
        assert_eq!(PagedRange::PAGE_SIZE, 4096);
        let mut range = RANGE.unwrap();
        assert_eq!(
            range.pop_front_range(),
            Some(Ok(AddressRange {
                start: 0x7010,
                end: 0x9000
            }))
        );
        assert_eq!(range.len(), 0x10);
        assert_eq!(
            range.pop_front_range(),
            Some(Ok(AddressRange {
                start: 0x14000,
                end: 0x14010
            }))
        );
        assert_eq!(range.pop_front_range(), None);
        let huge = [u64::MAX];
        let mut bad = PagedRange::new(0, 1, &huge).unwrap();
        assert_eq!(bad.pop_front_range(), Some(Err(InvalidGpn(u64::MAX))));
        assert!(bad.is_empty());
    }

    #[test]
    fn accessors_split_and_subrange() {
        let gpns = [5, 6, 9];
        let range = PagedRange::new(0x800, 0x1000, &gpns).unwrap();
        assert_eq!(range.offset(), 0x800);
        assert_eq!(range.gpns(), &[5, 6]);
        let (head, tail) = range.split(0x800);
        assert_eq!(head.gpns(), &[5]);
        assert_eq!(tail.gpns(), &[6]);
        assert_eq!(tail.offset(), 0);
        assert!(range.try_split(0x1001).is_none());
        assert!(range.try_subrange(0xFFF, 2).is_none());
        let sub = range.subrange(0x7FF, 2);
        assert_eq!(
            sub.ranges().collect::<Vec<_>>(),
            vec![Ok(AddressRange {
                start: 0x5FFF,
                end: 0x6001
            })]
        );
        let chunks: Vec<_> = PagedRange::new(0x10, 0x2000, &gpns)
            .unwrap()
            .chunks()
            .collect();
        assert_eq!(
            chunks,
            vec![
                PageChunk {
                    gpn: 5,
                    offset_in_page: 0x10,
                    len: 0xFF0
                },
                PageChunk {
                    gpn: 6,
                    offset_in_page: 0,
                    len: 0x1000
                },
                PageChunk {
                    gpn: 9,
                    offset_in_page: 0,
                    len: 0x10
                },
            ]
        );
        let result = std::panic::catch_unwind(|| range.subrange(0, 0x1001));
        assert!(result.is_err());
    }

    #[test]
    fn address_range_from_range_len_and_is_empty() {
        let range = AddressRange::from(0x1000..0x1800);
        assert_eq!(
            range,
            AddressRange {
                start: 0x1000,
                end: 0x1800
            }
        );
        assert_eq!(range.len(), 0x800);
        assert!(!range.is_empty());
        assert!(AddressRange::from(7..7).is_empty());
        // The original's module path names the same types.
        let via_module: crate::ranges::AddressRange = range;
        assert_eq!(via_module.len(), 0x800);
        let gpns = [3];
        let window: crate::ranges::PagedRange<'_> = PagedRange::new(0, 1, &gpns).unwrap();
        assert_eq!(window.len(), 1);
    }

    #[test]
    fn overflowing_gpn_is_an_invalid_gpn_item() {
        let gpns = [1 << 52, 7];
        let range = PagedRange::new(0, 0x2000, &gpns).unwrap();
        let items: Vec<_> = range.ranges().collect();
        assert_eq!(
            items,
            vec![
                Err(InvalidGpn(1 << 52)),
                Ok(AddressRange {
                    start: 0x7000,
                    end: 0x8000
                })
            ]
        );
    }
}
