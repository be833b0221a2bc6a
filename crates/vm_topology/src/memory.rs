//! The guest memory layout: RAM ranges (with their virtual NUMA nodes), MMIO gaps and an
//! optional VTL2 range.
//!
//! A [`MemoryLayout`] is validated once at construction and is immutable afterwards: RAM is
//! non-empty, ascending and disjoint; RAM, MMIO gaps and the VTL2 range never overlap; and the
//! VTL2 range sits at or above the end of RAM.

use memory_range::MemoryRange;
use serde::ser::SerializeMap;
use serde::Serialize;
use std::fmt;

/// The page size every range is aligned to.
const PAGE_SIZE: u64 = 4096;
/// The 4 GiB boundary used to classify RAM as "below" or "above" 4 GiB.
const FOUR_GB: u64 = 0x1_0000_0000;

/// A RAM range and the virtual NUMA node it belongs to.
///
/// Orders by `range`, then `vnode`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MemoryRangeWithNode {
    /// The guest physical address range.
    pub range: MemoryRange,
    /// The virtual NUMA node.
    pub vnode: u32,
}

impl fmt::Display for MemoryRangeWithNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.range, self.vnode)
    }
}

/// What an address of the layout is backed by.
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub enum AddressType {
    /// Guest RAM.
    Ram,
    /// An MMIO gap.
    Mmio,
}

/// An error building a [`MemoryLayout`].
#[derive(Debug, Copy, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The RAM size is zero or not a multiple of the page size.
    #[error("invalid memory size")]
    BadSize,
    /// Declared for compatibility; never returned (invalid gaps report `BadMemoryRanges`).
    #[error("invalid MMIO gap configuration")]
    BadMmioGaps,
    /// A range list is unsorted, overlapping or contains an empty range, RAM and gaps or the
    /// VTL2 range overlap, or there is no RAM.
    #[error("invalid memory or MMIO ranges")]
    BadMemoryRanges,
    /// The VTL2 range starts below the end of RAM.
    #[error("vtl2 range is below end of ram")]
    Vtl2RangeBeforeEndOfRam,
}

/// The layout of a guest's physical address space.
#[derive(Debug, Clone)]
pub struct MemoryLayout {
    ram: Vec<MemoryRangeWithNode>,
    mmio: Vec<MemoryRange>,
    vtl2_range: Option<MemoryRange>,
}

/// Where a range of a layout came from, for [`LayoutProblem`]s.
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub enum RangeOrigin {
    /// `memory[index]` of [`MemoryLayout::new_from_ranges`].
    Memory(usize),
    /// A RAM piece [`MemoryLayout::new`] laid out around the gaps.
    LaidOutRam,
    /// `gaps[index]`.
    Gap(usize),
    /// The VTL2 range.
    Vtl2,
}

impl fmt::Display for RangeOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RangeOrigin::Memory(index) => write!(f, "memory[{index}]"),
            RangeOrigin::LaidOutRam => f.write_str("RAM"),
            RangeOrigin::Gap(index) => write!(f, "gaps[{index}]"),
            RangeOrigin::Vtl2 => f.write_str("the VTL2 range"),
        }
    }
}

/// Why a layout was refused, with the values involved: the detail behind an [`Error`]
/// ([`LayoutProblem::error`] gives the variant the constructors return).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutProblem {
    /// The RAM size is zero or not a multiple of 4 KiB.
    #[error("the RAM size {0:#x} is not a positive multiple of 4 KiB (0x1000)")]
    BadSize(u64),
    /// A range is empty.
    #[error("{origin} {range} is empty: remove it")]
    Empty {
        /// Where it came from.
        origin: RangeOrigin,
        /// The range.
        range: MemoryRange,
    },
    /// A range of a list starts before the one listed before it.
    #[error("{origin} {range} comes after {previous_origin} {previous} but starts before it: list them in ascending order")]
    Unsorted {
        /// The earlier element.
        previous_origin: RangeOrigin,
        /// Its range.
        previous: MemoryRange,
        /// The later element.
        origin: RangeOrigin,
        /// Its range.
        range: MemoryRange,
    },
    /// Two ranges overlap (touching is fine).
    #[error("{first_origin} {first} overlaps {second_origin} {second}: RAM, gaps and the VTL2 range must not overlap")]
    Overlap {
        /// One of them.
        first_origin: RangeOrigin,
        /// Its range.
        first: MemoryRange,
        /// The other.
        second_origin: RangeOrigin,
        /// Its range.
        second: MemoryRange,
    },
    /// `new` would lay out an empty RAM piece: a gap starts at 0, or touches the one before.
    #[error("gaps[{index}] {gap} starts where the RAM laid out from address 0 would continue ({at:#x}), which would leave an empty RAM piece: start the first gap above 0 and merge gaps that touch")]
    EmptyRamPiece {
        /// The gap.
        index: usize,
        /// Its range.
        gap: MemoryRange,
        /// Where the empty piece would be.
        at: u64,
    },
    /// `new` would lay RAM out past the top of the address space.
    #[error("{ram_size:#x} bytes of RAM laid out around the gaps would end past the top of the address space ({:#x})", MemoryRange::MAX_ADDRESS)]
    RamPastTop {
        /// The RAM size asked for.
        ram_size: u64,
    },
    /// There is no RAM range.
    #[error("there is no RAM range: give at least one")]
    NoRam,
    /// The VTL2 range starts below the end of RAM.
    #[error("the VTL2 range {vtl2} starts below the end of RAM ({end_of_ram:#x}): place it at or above {end_of_ram:#x}")]
    Vtl2BeforeEndOfRam {
        /// The VTL2 range.
        vtl2: MemoryRange,
        /// The end of RAM.
        end_of_ram: u64,
    },
}

impl LayoutProblem {
    /// The error variant the constructors return for this problem.
    pub fn error(&self) -> Error {
        match self {
            LayoutProblem::BadSize(_) => Error::BadSize,
            LayoutProblem::Vtl2BeforeEndOfRam { .. } => Error::Vtl2RangeBeforeEndOfRam,
            LayoutProblem::Empty { .. }
            | LayoutProblem::Unsorted { .. }
            | LayoutProblem::Overlap { .. }
            | LayoutProblem::EmptyRamPiece { .. }
            | LayoutProblem::RamPastTop { .. }
            | LayoutProblem::NoRam => Error::BadMemoryRanges,
        }
    }
}

/// Checks that `ranges` (each with its origin) is a valid list: every range non-empty,
/// strictly ascending and pairwise disjoint (touching is allowed).
fn validate_ranges(ranges: &[(MemoryRange, RangeOrigin)]) -> Result<(), LayoutProblem> {
    if let Some(&(range, origin)) = ranges.iter().find(|(range, _)| range.is_empty()) {
        return Err(LayoutProblem::Empty { origin, range });
    }
    for pair in ranges.windows(2) {
        let ((first, first_origin), (second, second_origin)) = (pair[0], pair[1]);
        if first.overlaps(&second) {
            return Err(LayoutProblem::Overlap {
                first_origin,
                first,
                second_origin,
                second,
            });
        }
        if first > second {
            return Err(LayoutProblem::Unsorted {
                previous_origin: first_origin,
                previous: first,
                origin: second_origin,
                range: second,
            });
        }
    }
    Ok(())
}

fn with_origins(
    ranges: impl IntoIterator<Item = MemoryRange>,
    origin: impl Fn(usize) -> RangeOrigin,
) -> Vec<(MemoryRange, RangeOrigin)> {
    ranges
        .into_iter()
        .enumerate()
        .map(|(index, range)| (range, origin(index)))
        .collect()
}

impl MemoryLayout {
    /// Lays out `ram_size` bytes of RAM from address 0 upward around the MMIO `gaps`, with an
    /// optional VTL2 range. Every RAM range gets vnode 0.
    ///
    /// RAM fills the space below the first gap, then each hole between gaps, then continues
    /// after the last gap. Gaps are kept exactly as given, including gaps beyond the RAM.
    ///
    /// # Errors
    ///
    /// - [`Error::BadSize`] if `ram_size` is zero or not a multiple of 4096.
    /// - [`Error::BadMemoryRanges`] if the gaps are not a sorted, disjoint list of non-empty
    ///   ranges; if RAM reaches a gap that starts at 0 or touches the previous gap (an empty
    ///   RAM piece); if the VTL2 range is empty or overlaps RAM or a gap; and (an extension:
    ///   the original panics here) if the RAM would extend past the top of the address space.
    /// - [`Error::Vtl2RangeBeforeEndOfRam`] if the VTL2 range starts below the end of RAM.
    ///
    /// [`MemoryLayout::new_explained`] gives the same result with the detail of a refusal.
    pub fn new(
        ram_size: u64,
        gaps: &[MemoryRange],
        vtl2_range: Option<MemoryRange>,
    ) -> Result<Self, Error> {
        Self::new_explained(ram_size, gaps, vtl2_range).map_err(|problem| problem.error())
    }

    /// [`MemoryLayout::new`], with the [`LayoutProblem`] (which range, which rule) on failure.
    pub fn new_explained(
        ram_size: u64,
        gaps: &[MemoryRange],
        vtl2_range: Option<MemoryRange>,
    ) -> Result<Self, LayoutProblem> {
        if ram_size == 0 || !ram_size.is_multiple_of(PAGE_SIZE) {
            return Err(LayoutProblem::BadSize(ram_size));
        }
        validate_ranges(&with_origins(gaps.iter().copied(), RangeOrigin::Gap))?;

        let mut ram = Vec::new();
        let mut remaining = ram_size;
        let mut cursor = 0u64;
        let mut gaps_left = gaps.iter().enumerate();
        while remaining > 0 {
            let (piece_len, next_cursor) = match gaps_left.next() {
                Some((index, gap)) => {
                    let piece_len = remaining.min(gap.start() - cursor);
                    if piece_len == 0 {
                        return Err(LayoutProblem::EmptyRamPiece {
                            index,
                            gap: *gap,
                            at: cursor,
                        });
                    }
                    (piece_len, Some(gap.end()))
                }
                None => (remaining, None),
            };
            let piece_end = cursor
                .checked_add(piece_len)
                .filter(|end| *end <= MemoryRange::MAX_ADDRESS)
                .ok_or(LayoutProblem::RamPastTop { ram_size })?;
            ram.push(MemoryRangeWithNode {
                range: MemoryRange::new(cursor..piece_end),
                vnode: 0,
            });
            remaining -= piece_len;
            match next_cursor {
                Some(gap_end) => cursor = gap_end,
                None => break,
            }
        }

        Self::build(ram, gaps.to_vec(), vtl2_range, |_| RangeOrigin::LaidOutRam)
    }

    /// Builds a layout from explicit RAM ranges (vnodes kept, no requirement to start at 0,
    /// touching ranges allowed) and MMIO gaps. No VTL2 range can be given.
    ///
    /// # Errors
    ///
    /// [`Error::BadMemoryRanges`] if `memory` is empty, if `memory` or `gaps` is not a sorted,
    /// disjoint list of non-empty ranges, or if RAM overlaps a gap.
    /// [`MemoryLayout::new_from_ranges_explained`] gives the detail of a refusal.
    pub fn new_from_ranges(
        memory: &[MemoryRangeWithNode],
        gaps: &[MemoryRange],
    ) -> Result<Self, Error> {
        Self::new_from_ranges_explained(memory, gaps).map_err(|problem| problem.error())
    }

    /// [`MemoryLayout::new_from_ranges`], with the [`LayoutProblem`] on failure.
    pub fn new_from_ranges_explained(
        memory: &[MemoryRangeWithNode],
        gaps: &[MemoryRange],
    ) -> Result<Self, LayoutProblem> {
        validate_ranges(&with_origins(
            memory.iter().map(|entry| entry.range),
            RangeOrigin::Memory,
        ))?;
        validate_ranges(&with_origins(gaps.iter().copied(), RangeOrigin::Gap))?;
        Self::build(memory.to_vec(), gaps.to_vec(), None, RangeOrigin::Memory)
    }

    /// The validation shared by both constructors; `ram_origin` names a RAM range by index.
    fn build(
        ram: Vec<MemoryRangeWithNode>,
        mmio: Vec<MemoryRange>,
        vtl2_range: Option<MemoryRange>,
        ram_origin: impl Fn(usize) -> RangeOrigin,
    ) -> Result<Self, LayoutProblem> {
        let mut all_ranges = with_origins(ram.iter().map(|entry| entry.range), ram_origin);
        all_ranges.extend(with_origins(mmio.iter().copied(), RangeOrigin::Gap));
        all_ranges.extend(vtl2_range.map(|range| (range, RangeOrigin::Vtl2)));
        all_ranges.sort_by_key(|(range, _)| *range);
        validate_ranges(&all_ranges)?;

        let last_ram = ram.last().ok_or(LayoutProblem::NoRam)?;
        if let Some(vtl2_range) = vtl2_range {
            if vtl2_range.start() < last_ram.range.end() {
                return Err(LayoutProblem::Vtl2BeforeEndOfRam {
                    vtl2: vtl2_range,
                    end_of_ram: last_ram.range.end(),
                });
            }
        }

        Ok(Self {
            ram,
            mmio,
            vtl2_range,
        })
    }

    /// The MMIO gaps, exactly as given.
    pub fn mmio(&self) -> &[MemoryRange] {
        &self.mmio
    }

    /// The RAM ranges, ascending. Never includes the VTL2 range.
    pub fn ram(&self) -> &[MemoryRangeWithNode] {
        &self.ram
    }

    /// The VTL2 range, if any.
    pub fn vtl2_range(&self) -> Option<MemoryRange> {
        self.vtl2_range
    }

    /// The total length of the RAM ranges (the VTL2 range excluded).
    pub fn ram_size(&self) -> u64 {
        self.ram.iter().map(|entry| entry.range.len()).sum()
    }

    /// The end of the last RAM range.
    pub fn end_of_ram(&self) -> u64 {
        // A constructed layout always has RAM.
        self.ram.last().expect("mmio set").range.end()
    }

    /// The total length of the RAM ranges that end below 4 GiB.
    pub fn ram_below_4gb(&self) -> u64 {
        self.ram
            .iter()
            .filter(|entry| entry.range.end() < FOUR_GB)
            .map(|entry| entry.range.len())
            .sum()
    }

    /// The total length of the RAM ranges that end at or above 4 GiB (a range straddling
    /// 4 GiB counts entirely here).
    pub fn ram_above_4gb(&self) -> u64 {
        self.ram
            .iter()
            .filter(|entry| entry.range.end() >= FOUR_GB)
            .map(|entry| entry.range.len())
            .sum()
    }

    /// With exactly two MMIO gaps, the total length of the RAM ranges starting at or above
    /// the end of the second gap; otherwise `None`.
    pub fn ram_above_high_mmio(&self) -> Option<u64> {
        if self.mmio.len() != 2 {
            return None;
        }
        let high_mmio_end = self.mmio[1].end();
        Some(
            self.ram
                .iter()
                .filter(|entry| entry.range.start() >= high_mmio_end)
                .map(|entry| entry.range.len())
                .sum(),
        )
    }

    /// The end of the last RAM range that ends below 4 GiB, if any.
    pub fn max_ram_below_4gb(&self) -> Option<u64> {
        self.ram
            .iter()
            .rev()
            .map(|entry| entry.range.end())
            .find(|end| *end < FOUR_GB)
    }

    /// The larger of the end of the last MMIO gap and the end of RAM.
    ///
    /// # Panics
    ///
    /// Panics (`mmio set`) when the layout has no MMIO gaps; see
    /// [`MemoryLayout::end_of_ram_or_mmio_checked`] for a non-panicking form.
    pub fn end_of_ram_or_mmio(&self) -> u64 {
        self.end_of_ram_or_mmio_checked().expect("mmio set")
    }

    /// The larger of the end of the last MMIO gap and the end of RAM, or `None` when the
    /// layout has no MMIO gaps.
    pub fn end_of_ram_or_mmio_checked(&self) -> Option<u64> {
        let last_gap = self.mmio.last()?;
        Some(last_gap.end().max(self.end_of_ram()))
    }

    /// One past the last byte of RAM or of an MMIO gap (the end of RAM when there are no
    /// gaps); unlike [`MemoryLayout::end_of_ram_or_mmio`], defined for every layout. The VTL2
    /// range is not included.
    pub fn end_of_layout(&self) -> u64 {
        self.end_of_ram_or_mmio_checked()
            .unwrap_or_else(|| self.end_of_ram())
    }

    /// Whether `address` is RAM, MMIO, or neither. The VTL2 range is not consulted.
    pub fn probe_address(&self, address: u64) -> Option<AddressType> {
        if self
            .ram
            .iter()
            .any(|entry| entry.range.contains_addr(address))
        {
            Some(AddressType::Ram)
        } else if self.mmio.iter().any(|gap| gap.contains_addr(address)) {
            Some(AddressType::Mmio)
        } else {
            None
        }
    }

    /// A serializable diagnostics tree: `ram` and `mmio` keyed by each range's display
    /// string (with `length`, and `vnode` for RAM, as `0x…` strings), and `vtl2_range`.
    pub fn inspect(&self) -> MemoryLayoutInspect {
        MemoryLayoutInspect {
            ram: InspectMap(
                self.ram
                    .iter()
                    .map(|entry| {
                        (
                            entry.range.to_string(),
                            RamRangeInspect {
                                length: format!("{:#x}", entry.range.len()),
                                vnode: format!("{:#x}", entry.vnode),
                            },
                        )
                    })
                    .collect(),
            ),
            mmio: InspectMap(
                self.mmio
                    .iter()
                    .map(|gap| {
                        (
                            gap.to_string(),
                            MmioRangeInspect {
                                length: format!("{:#x}", gap.len()),
                            },
                        )
                    })
                    .collect(),
            ),
            vtl2_range: self.vtl2_range.map(|range| range.to_string()),
        }
    }
}

/// The diagnostics tree of a [`MemoryLayout`], see [`MemoryLayout::inspect`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryLayoutInspect {
    /// RAM ranges keyed by their display string, in address order.
    pub ram: InspectMap<RamRangeInspect>,
    /// MMIO gaps keyed by their display string, in the order given.
    pub mmio: InspectMap<MmioRangeInspect>,
    /// The VTL2 range's display string, if any.
    pub vtl2_range: Option<String>,
}

/// The diagnostics of one RAM range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RamRangeInspect {
    /// The length as a `0x…` string.
    pub length: String,
    /// The virtual NUMA node as a `0x…` string.
    pub vnode: String,
}

/// The diagnostics of one MMIO gap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MmioRangeInspect {
    /// The length as a `0x…` string.
    pub length: String,
}

/// Named entries that serialize as a map, keeping their order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectMap<T>(pub Vec<(String, T)>);

impl<T: Serialize> Serialize for InspectMap<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 0x10_0000;
    const GB: u64 = 0x4000_0000;
    const TB: u64 = 0x100_0000_0000;

    fn r(start: u64, end: u64) -> MemoryRange {
        MemoryRange::new(start..end)
    }

    fn node(start: u64, end: u64, vnode: u32) -> MemoryRangeWithNode {
        MemoryRangeWithNode {
            range: r(start, end),
            vnode,
        }
    }

    fn ram_ranges(layout: &MemoryLayout) -> Vec<MemoryRange> {
        layout.ram().iter().map(|entry| entry.range).collect()
    }

    fn panics<T>(f: impl FnOnce() -> T) -> bool {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err()
    }

    fn two_gaps() -> [MemoryRange; 2] {
        [r(GB, 2 * GB), r(3 * GB, 4 * GB)]
    }

    fn assert_tib_around_two_gaps_figures(layout: &MemoryLayout) {
        assert_eq!(
            ram_ranges(layout),
            [r(0, GB), r(2 * GB, 3 * GB), r(4 * GB, TB + 2 * GB)]
        );
        assert_eq!(layout.mmio(), two_gaps());
        assert_eq!(layout.ram_size(), TB);
        assert_eq!(layout.end_of_ram(), 0x100_8000_0000);
        assert_eq!(layout.ram_below_4gb(), 2 * GB);
        assert_eq!(layout.ram_above_4gb(), 0xff_8000_0000);
        assert_eq!(layout.ram_above_high_mmio(), Some(TB - 2 * GB));
        assert_eq!(layout.max_ram_below_4gb(), Some(3 * GB));
        assert_eq!(layout.end_of_ram_or_mmio(), TB + 2 * GB);
    }

    #[test]
    fn new_around_two_gaps() {
        let layout = MemoryLayout::new(TB, &two_gaps(), None).unwrap();
        assert_tib_around_two_gaps_figures(&layout);
        assert!(layout.ram().iter().all(|entry| entry.vnode == 0));
        assert_eq!(layout.vtl2_range(), None);
    }

    #[test]
    fn ram_below_the_first_gap() {
        let layout = MemoryLayout::new(512 * MB, &two_gaps(), None).unwrap();
        assert_eq!(ram_ranges(&layout), [r(0, 512 * MB)]);
        assert_eq!(layout.mmio(), two_gaps());
        assert_eq!(layout.end_of_ram(), 512 * MB);
        assert_eq!(layout.end_of_ram_or_mmio(), 4 * GB);
        assert_eq!(layout.ram_above_high_mmio(), Some(0));
        assert_eq!(layout.max_ram_below_4gb(), Some(512 * MB));
    }

    #[test]
    fn ram_ending_at_the_only_gap() {
        let layout = MemoryLayout::new(GB, &[r(GB, 2 * GB)], None).unwrap();
        assert_eq!(ram_ranges(&layout), [r(0, GB)]);
        assert_eq!(layout.ram_above_high_mmio(), None);
        assert_eq!(layout.end_of_ram_or_mmio(), 2 * GB);
    }

    #[test]
    fn bad_size() {
        for size in [0, TB + 1, 0x800] {
            let err = MemoryLayout::new(size, &[], None).unwrap_err();
            assert_eq!(err, Error::BadSize);
            assert_eq!(err.to_string(), "invalid memory size");
        }
    }

    #[test]
    fn no_gaps() {
        let layout = MemoryLayout::new(4 * GB, &[], None).unwrap();
        assert_eq!(ram_ranges(&layout), [r(0, 4 * GB)]);
        assert_eq!(layout.ram_below_4gb(), 0);
        assert_eq!(layout.ram_above_4gb(), 4 * GB);
        assert_eq!(layout.max_ram_below_4gb(), None);
        assert_eq!(layout.ram_above_high_mmio(), None);
        assert_eq!(layout.end_of_ram_or_mmio_checked(), None);
        assert!(panics(|| layout.end_of_ram_or_mmio()));
    }

    #[test]
    fn gap_at_zero() {
        let err = MemoryLayout::new(GB, &[r(0, GB)], None).unwrap_err();
        assert_eq!(err, Error::BadMemoryRanges);
        assert_eq!(err.to_string(), "invalid memory or MMIO ranges");
    }

    #[test]
    fn touching_gaps() {
        let gaps = [r(GB, 2 * GB), r(2 * GB, 3 * GB)];
        assert_eq!(
            MemoryLayout::new(2 * GB, &gaps, None).unwrap_err(),
            Error::BadMemoryRanges
        );
        let layout = MemoryLayout::new(GB, &gaps, None).unwrap();
        assert_eq!(ram_ranges(&layout), [r(0, GB)]);
        assert_eq!(layout.end_of_ram_or_mmio(), 3 * GB);
    }

    #[test]
    fn invalid_gaps() {
        let unsorted = [r(3 * GB, 4 * GB), r(GB, 2 * GB)];
        assert_eq!(
            MemoryLayout::new(TB, &unsorted, None).unwrap_err(),
            Error::BadMemoryRanges
        );
        assert_eq!(
            MemoryLayout::new(TB, &[r(GB, GB)], None).unwrap_err(),
            Error::BadMemoryRanges
        );
    }

    #[test]
    fn vtl2_above_everything() {
        let vtl2 = r(4 * GB, 4 * GB + 64 * MB);
        let layout = MemoryLayout::new(2 * GB, &two_gaps(), Some(vtl2)).unwrap();
        assert_eq!(ram_ranges(&layout), [r(0, GB), r(2 * GB, 3 * GB)]);
        assert_eq!(layout.ram_size(), 2 * GB);
        assert_eq!(layout.end_of_ram(), 3 * GB);
        assert_eq!(
            layout
                .vtl2_range()
                .map(|range| range.to_string())
                .as_deref(),
            Some("0x100000000-0x104000000")
        );
        assert_eq!(layout.end_of_ram_or_mmio(), 4 * GB);
    }

    #[test]
    fn vtl2_between_gaps() {
        let vtl2 = r(2 * GB, 2 * GB + 64 * MB);
        let layout = MemoryLayout::new(GB, &two_gaps(), Some(vtl2)).unwrap();
        assert_eq!(layout.vtl2_range(), Some(vtl2));
        assert_eq!(ram_ranges(&layout), [r(0, GB)]);
    }

    #[test]
    fn vtl2_overlaps_or_is_empty() {
        for vtl2 in [
            r(3 * GB - 64 * MB, 3 * GB),
            r(3 * GB, 3 * GB + 64 * MB),
            r(GB - 64 * MB, GB),
            r(5 * GB, 5 * GB),
        ] {
            assert_eq!(
                MemoryLayout::new(2 * GB, &two_gaps(), Some(vtl2)).unwrap_err(),
                Error::BadMemoryRanges,
                "vtl2 {vtl2}"
            );
        }
    }

    #[test]
    fn vtl2_inside_ram() {
        assert_eq!(
            MemoryLayout::new(3 * GB, &[r(GB, 2 * GB)], Some(r(2 * GB, 3 * GB))).unwrap_err(),
            Error::BadMemoryRanges
        );
    }

    #[test]
    fn vtl2_before_end_of_ram_is_checked_after_overlaps() {
        // Not reachable through the constructors (a VTL2 range below the end of RAM always
        // overlaps RAM or a gap), so exercise the final check directly.
        let problem = MemoryLayout::build(
            vec![node(0, GB, 0), node(2 * GB, 3 * GB, 0)],
            vec![],
            Some(r(GB, 2 * GB)),
            RangeOrigin::Memory,
        )
        .unwrap_err();
        assert_eq!(
            problem,
            LayoutProblem::Vtl2BeforeEndOfRam {
                vtl2: r(GB, 2 * GB),
                end_of_ram: 3 * GB
            }
        );
        let err = problem.error();
        assert_eq!(err, Error::Vtl2RangeBeforeEndOfRam);
        assert_eq!(err.to_string(), "vtl2 range is below end of ram");
        assert_eq!(
            Error::BadMmioGaps.to_string(),
            "invalid MMIO gap configuration"
        );
    }

    #[test]
    fn overflowing_ram_is_an_error() {
        // The original panics on the overflow; this crate reports it.
        let size = MemoryRange::MAX_ADDRESS;
        assert_eq!(
            MemoryLayout::new(size, &[r(3 * GB, 4 * GB)], None).unwrap_err(),
            Error::BadMemoryRanges
        );
        let layout = MemoryLayout::new(size, &[], None).unwrap();
        assert_eq!(layout.end_of_ram(), MemoryRange::MAX_ADDRESS);
    }

    #[test]
    fn overflow_ram_piece_end_boundary() {
        // The RAM piece after a gap ends at `gap end + piece length`. Ending exactly at
        // MAX_ADDRESS fits; one page more is 2^64, where the original's sum overflows (it
        // panics; this crate returns BadMemoryRanges, docs/deviations.md).
        let top = MemoryRange::MAX_ADDRESS;
        let gap = r(PAGE_SIZE, top - PAGE_SIZE);
        let layout = MemoryLayout::new(2 * PAGE_SIZE, &[gap], None).unwrap();
        assert_eq!(layout.end_of_ram(), top);
        assert_eq!(layout.ram_size(), 2 * PAGE_SIZE);
        assert_eq!(
            MemoryLayout::new(3 * PAGE_SIZE, &[gap], None).unwrap_err(),
            Error::BadMemoryRanges
        );
        let gap_to_top = r(PAGE_SIZE, top);
        assert_eq!(
            MemoryLayout::new(2 * PAGE_SIZE, &[gap_to_top], None).unwrap_err(),
            Error::BadMemoryRanges
        );
        // RAM that stops at the gap never computes the sum past it.
        assert!(MemoryLayout::new(PAGE_SIZE, &[gap_to_top], None).is_ok());
    }

    #[test]
    fn overflow_gap_start_minus_cursor_never() {
        // `gap start - cursor` cannot underflow: gaps are validated first, and a gap at 0
        // gives a zero-length piece (BadMemoryRanges), not an underflow.
        assert_eq!(
            MemoryLayout::new(PAGE_SIZE, &[r(0, GB)], None).unwrap_err(),
            Error::BadMemoryRanges
        );
        assert_eq!(
            MemoryLayout::new(PAGE_SIZE, &[r(GB, 2 * GB), r(GB, 3 * GB)], None).unwrap_err(),
            Error::BadMemoryRanges
        );
    }

    #[test]
    fn overflow_sums_of_lengths_never() {
        // RAM ranges are disjoint below MAX_ADDRESS, so the sums of their lengths fit.
        let top = MemoryRange::MAX_ADDRESS;
        let layout = MemoryLayout::new(top, &[], None).unwrap();
        assert_eq!(layout.ram_size(), top);
        assert_eq!(layout.ram_above_4gb(), top);
        assert_eq!(layout.ram_below_4gb(), 0);
        let layout = MemoryLayout::new(top - GB, &[r(GB, 2 * GB), r(3 * GB, 4 * GB)], None);
        assert_eq!(layout.unwrap_err(), Error::BadMemoryRanges);
        let layout =
            MemoryLayout::new(top - 2 * GB, &[r(GB, 2 * GB), r(3 * GB, 4 * GB)], None).unwrap();
        assert_eq!(layout.ram_above_high_mmio(), Some(top - 4 * GB));
        assert_eq!(layout.ram_size(), top - 2 * GB);
    }

    #[test]
    fn from_ranges_matches_new() {
        let memory = [
            node(0, GB, 0),
            node(2 * GB, 3 * GB, 0),
            node(4 * GB, TB + 2 * GB, 0),
        ];
        let layout = MemoryLayout::new_from_ranges(&memory, &two_gaps()).unwrap();
        assert_tib_around_two_gaps_figures(&layout);
    }

    #[test]
    fn from_ranges_without_ram() {
        assert_eq!(
            MemoryLayout::new_from_ranges(&[], &two_gaps()).unwrap_err(),
            Error::BadMemoryRanges
        );
    }

    #[test]
    fn from_ranges_overlap_or_unsorted_gaps() {
        assert_eq!(
            MemoryLayout::new_from_ranges(&[node(0, GB + MB, 0)], &two_gaps()).unwrap_err(),
            Error::BadMemoryRanges
        );
        let unsorted = [r(3 * GB, 4 * GB), r(GB, 2 * GB)];
        assert_eq!(
            MemoryLayout::new_from_ranges(&[node(0, GB, 0)], &unsorted).unwrap_err(),
            Error::BadMemoryRanges
        );
    }

    #[test]
    fn from_ranges_with_vnodes() {
        let memory = [node(0, 2 * GB, 0), node(2 * GB, 6 * GB, 1)];
        let layout = MemoryLayout::new_from_ranges(&memory, &[]).unwrap();
        assert_eq!(layout.ram(), memory);
        assert_eq!(layout.ram_below_4gb(), 2 * GB);
        assert_eq!(layout.ram_above_4gb(), 4 * GB);
        assert_eq!(layout.max_ram_below_4gb(), Some(2 * GB));
        assert!(panics(|| layout.end_of_ram_or_mmio()));
    }

    #[test]
    fn from_ranges_not_at_zero() {
        let layout =
            MemoryLayout::new_from_ranges(&[node(MB, GB, 3)], &[r(4 * GB, 5 * GB)]).unwrap();
        assert_eq!(layout.ram_size(), GB - MB);
        assert_eq!(layout.end_of_ram_or_mmio(), 5 * GB);
        assert_eq!(layout.ram()[0].vnode, 3);
        assert_eq!(
            MemoryLayout::new_from_ranges(&[node(2 * GB, 3 * GB, 0), node(0, GB, 0)], &[])
                .unwrap_err(),
            Error::BadMemoryRanges
        );
        assert_eq!(
            MemoryLayout::new_from_ranges(&[node(0, GB, 0), node(GB, GB, 0)], &[]).unwrap_err(),
            Error::BadMemoryRanges
        );
    }

    #[test]
    fn probe_with_vtl2() {
        let vtl2 = r(4 * GB, 4 * GB + 64 * MB);
        let layout = MemoryLayout::new(2 * GB, &two_gaps(), Some(vtl2)).unwrap();
        let expectations = [
            (0, Some(AddressType::Ram)),
            (GB - 1, Some(AddressType::Ram)),
            (GB, Some(AddressType::Mmio)),
            (2 * GB, Some(AddressType::Ram)),
            (3 * GB - 1, Some(AddressType::Ram)),
            (3 * GB, Some(AddressType::Mmio)),
            (4 * GB - 1, Some(AddressType::Mmio)),
            (4 * GB, None),
            (4 * GB + MB, None),
            (5 * GB, None),
        ];
        for (address, expected) in expectations {
            assert_eq!(layout.probe_address(address), expected, "{address:#x}");
        }
    }

    #[test]
    fn probe_from_ranges() {
        let memory = [
            node(0, GB, 0),
            node(2 * GB, 3 * GB, 0),
            node(4 * GB, TB + 2 * GB, 0),
        ];
        let layout = MemoryLayout::new_from_ranges(&memory, &two_gaps()).unwrap();
        assert_eq!(layout.probe_address(TB + 1), Some(AddressType::Ram));
        assert_eq!(layout.probe_address(TB + 2 * GB), None);
        assert_eq!(layout.probe_address(GB + 123), Some(AddressType::Mmio));
    }

    #[test]
    fn range_with_node_order_and_display() {
        assert!(node(0, GB, 5) < node(0, GB, 6));
        assert!(node(0, GB, 6) < node(GB, 2 * GB, 0));
        assert_eq!(node(0, 0x1000, 2).to_string(), "0x0-0x1000(2)");
    }

    #[test]
    fn inspect_tree() {
        let vtl2 = r(4 * GB, 4 * GB + 64 * MB);
        let layout = MemoryLayout::new(2 * GB, &two_gaps(), Some(vtl2)).unwrap();
        let tree = layout.inspect();
        assert_eq!(tree.ram.0.len(), 2);
        assert_eq!(tree.ram.0[1].0, "0x80000000-0xc0000000");
        assert_eq!(tree.ram.0[1].1.length, "0x40000000");
        assert_eq!(tree.ram.0[1].1.vnode, "0x0");
        assert_eq!(tree.mmio.0[0].0, "0x40000000-0x80000000");
        assert_eq!(tree.mmio.0[0].1.length, "0x40000000");
        assert_eq!(tree.vtl2_range.as_deref(), Some("0x100000000-0x104000000"));
    }

    /// The problem `new` reports, and that it maps to the same error as before.
    fn problem(ram_size: u64, gaps: &[MemoryRange], vtl2: Option<MemoryRange>) -> LayoutProblem {
        let problem = MemoryLayout::new_explained(ram_size, gaps, vtl2).unwrap_err();
        assert_eq!(
            MemoryLayout::new(ram_size, gaps, vtl2).unwrap_err(),
            problem.error()
        );
        problem
    }

    #[test]
    fn refusals_explain_which_range_breaks_which_rule() {
        assert_eq!(problem(0x1001, &[], None), LayoutProblem::BadSize(0x1001));
        assert_eq!(
            problem(4 * GB, &[r(3 * GB, 4 * GB), r(GB, 2 * GB)], None),
            LayoutProblem::Unsorted {
                previous_origin: RangeOrigin::Gap(0),
                previous: r(3 * GB, 4 * GB),
                origin: RangeOrigin::Gap(1),
                range: r(GB, 2 * GB),
            }
        );
        assert_eq!(
            problem(4 * GB, &[r(GB, 3 * GB), r(2 * GB, 4 * GB)], None),
            LayoutProblem::Overlap {
                first_origin: RangeOrigin::Gap(0),
                first: r(GB, 3 * GB),
                second_origin: RangeOrigin::Gap(1),
                second: r(2 * GB, 4 * GB),
            }
        );
        assert_eq!(
            problem(4 * GB, &[r(GB, GB)], None),
            LayoutProblem::Empty {
                origin: RangeOrigin::Gap(0),
                range: r(GB, GB)
            }
        );
        assert_eq!(
            problem(4 * GB, &[r(0, GB)], None),
            LayoutProblem::EmptyRamPiece {
                index: 0,
                gap: r(0, GB),
                at: 0
            }
        );
        assert_eq!(
            problem(4 * GB, &[r(GB, 2 * GB), r(2 * GB, 3 * GB)], None),
            LayoutProblem::EmptyRamPiece {
                index: 1,
                gap: r(2 * GB, 3 * GB),
                at: 2 * GB
            }
        );
        assert_eq!(
            problem(2 * GB, &[r(GB, 2 * GB)], Some(r(2 * GB, 3 * GB))),
            LayoutProblem::Overlap {
                first_origin: RangeOrigin::LaidOutRam,
                first: r(2 * GB, 3 * GB),
                second_origin: RangeOrigin::Vtl2,
                second: r(2 * GB, 3 * GB),
            }
        );
        assert_eq!(
            problem(0xffff_ffff_ffff_f000, &[r(GB, 2 * GB)], None),
            LayoutProblem::RamPastTop {
                ram_size: 0xffff_ffff_ffff_f000
            }
        );
        let from_ranges =
            MemoryLayout::new_from_ranges_explained(&[node(0, 2 * GB, 0)], &[r(GB, 3 * GB)])
                .unwrap_err();
        assert_eq!(
            from_ranges,
            LayoutProblem::Overlap {
                first_origin: RangeOrigin::Memory(0),
                first: r(0, 2 * GB),
                second_origin: RangeOrigin::Gap(0),
                second: r(GB, 3 * GB),
            }
        );
        assert_eq!(
            from_ranges.to_string(),
            "memory[0] 0x0-0x80000000 overlaps gaps[0] 0x40000000-0xc0000000: RAM, gaps and the VTL2 range must not overlap"
        );
        assert_eq!(
            MemoryLayout::new_from_ranges_explained(&[], &[]).unwrap_err(),
            LayoutProblem::NoRam
        );
    }

    #[test]
    fn end_of_layout_is_defined_without_gaps() {
        let no_gaps = MemoryLayout::new(GB, &[], None).unwrap();
        assert_eq!(no_gaps.end_of_layout(), GB);
        let gap_above = MemoryLayout::new(GB, &[r(2 * GB, 3 * GB)], None).unwrap();
        assert_eq!(gap_above.end_of_layout(), 3 * GB);
        assert_eq!(gap_above.end_of_layout(), gap_above.end_of_ram_or_mmio());
    }
}
