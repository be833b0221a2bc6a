//! The RAM region list a guest-memory builder creates from a layout, with the x86 legacy split
//! of the first megabyte.
//!
//! The region list is the layout's RAM ranges in order, followed by the VTL2 range if there is
//! one. With x86 legacy support the first RAM range is split at the boundaries of the legacy
//! areas (conventional memory, the VGA window, the twelve 16 KiB PAM-controlled pieces, the
//! system BIOS) so each can later be controlled on its own. Each region is backed at the offset
//! that follows the previous regions densely.

use crate::memory::MemoryLayout;
use memory_range::MemoryRange;

/// The end of the first megabyte, which x86 legacy support needs to be RAM.
const ONE_MB: u64 = 0x10_0000;

/// The boundaries inside the first megabyte at which the first RAM range is split: 0, the VGA
/// window, every 16 KiB from 0xc0000 to 0xf0000, then the system BIOS up to 1 MiB. The end of
/// the first RAM range is the final boundary.
const LEGACY_BOUNDARIES: [u64; 16] = [
    0x0, 0xa0000, 0xc0000, 0xc4000, 0xc8000, 0xcc000, 0xd0000, 0xd4000, 0xd8000, 0xdc000, 0xe0000,
    0xe4000, 0xe8000, 0xec000, 0xf0000, ONE_MB,
];

/// The names of the areas between consecutive [`LEGACY_BOUNDARIES`], in address order: the PC's
/// conventional memory, the VGA window, the twelve 16 KiB pieces whose access the chipset's
/// PAM1-PAM6 registers control (a low and a high half each, as on the i440FX and Q35), and the
/// system BIOS (PAM0).
const LEGACY_AREA_NAMES: [&str; 15] = [
    "conventional memory",
    "VGA window",
    "PAM1 low",
    "PAM1 high",
    "PAM2 low",
    "PAM2 high",
    "PAM3 low",
    "PAM3 high",
    "PAM4 low",
    "PAM4 high",
    "PAM5 low",
    "PAM5 high",
    "PAM6 low",
    "PAM6 high",
    "system BIOS",
];

/// One area of the first megabyte that x86 legacy support makes a RAM region of its own.
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub struct X86LegacyArea {
    /// What the area is (`"VGA window"`, `"PAM1 low"`, ...).
    pub name: &'static str,
    /// Its guest physical address range.
    pub range: MemoryRange,
    /// Whether a PC reports it to the guest as usable RAM (only conventional memory is: the VGA
    /// window, the option ROM and BIOS areas are reserved in the firmware's memory map).
    pub usable: bool,
}

/// The 15 areas of the first megabyte that [`x86_legacy_ram_ranges`] splits the first RAM range
/// into, in address order.
pub fn x86_legacy_areas() -> Vec<X86LegacyArea> {
    LEGACY_BOUNDARIES
        .windows(2)
        .zip(LEGACY_AREA_NAMES)
        .enumerate()
        .map(|(index, (bounds, name))| X86LegacyArea {
            name,
            range: MemoryRange::new(bounds[0]..bounds[1]),
            usable: index == 0,
        })
        .collect()
}

/// One guest RAM region and the offset of its backing in the guest-RAM file.
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub struct RamRegion {
    /// The guest physical address range.
    pub range: MemoryRange,
    /// The offset into the guest-RAM backing at which the region is mapped.
    pub file_offset: u64,
}

/// x86 legacy support was requested but the first RAM range does not start at 0 or ends below
/// 1 MiB.
#[derive(Debug, Copy, Clone, PartialEq, Eq, thiserror::Error)]
#[error("x86 support requires RAM to start at 0 and contain at least 1MB")]
pub struct InvalidRamForX86;

/// Returns the RAM regions to create for `layout`, in creation order: the layout's RAM ranges,
/// then its VTL2 range (if any), with the first RAM range split at the x86 legacy boundaries
/// when `x86_legacy_support` is set. Each region's `file_offset` is the sum of the lengths of
/// the regions before it.
///
/// When the first RAM range ends exactly at 1 MiB no empty `0x100000-0x100000` region is
/// produced (the original produces one; this project omits it).
///
/// # Errors
///
/// [`InvalidRamForX86`] when `x86_legacy_support` is set and the first RAM range does not
/// start at 0 or ends below 1 MiB.
pub fn x86_legacy_ram_ranges(
    layout: &MemoryLayout,
    x86_legacy_support: bool,
) -> Result<Vec<RamRegion>, InvalidRamForX86> {
    let mut ranges: Vec<MemoryRange> = layout
        .ram()
        .iter()
        .map(|entry| entry.range)
        .chain(layout.vtl2_range())
        .collect();

    if x86_legacy_support {
        // A constructed layout always has at least one RAM range.
        let first = ranges.first().copied().ok_or(InvalidRamForX86)?;
        if first.start() != 0 || first.end() < ONE_MB {
            return Err(InvalidRamForX86);
        }
        let pieces = LEGACY_BOUNDARIES
            .iter()
            .copied()
            .zip(
                LEGACY_BOUNDARIES
                    .iter()
                    .copied()
                    .skip(1)
                    .chain([first.end()]),
            )
            .filter(|(start, end)| start < end)
            .map(|(start, end)| MemoryRange::new(start..end));
        ranges.splice(0..1, pieces);
    }

    let mut file_offset = 0u64;
    Ok(ranges
        .into_iter()
        .map(|range| {
            let region = RamRegion { range, file_offset };
            // The regions are disjoint page-aligned ranges, so their total length fits.
            file_offset += range.len();
            region
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryRangeWithNode;

    const MB: u64 = 0x10_0000;
    const GB: u64 = 0x4000_0000;

    fn r(start: u64, end: u64) -> MemoryRange {
        MemoryRange::new(start..end)
    }

    /// The legacy pieces of a first RAM range `0..first_end`, `first_end > 1 MiB`.
    fn legacy_pieces(first_end: u64) -> Vec<MemoryRange> {
        let mut pieces = vec![r(0, 0xa0000), r(0xa0000, 0xc0000)];
        pieces.extend((0..12).map(|i| r(0xc0000 + i * 0x4000, 0xc4000 + i * 0x4000)));
        pieces.push(r(0xf0000, MB));
        pieces.push(r(MB, first_end));
        pieces
    }

    fn ranges_of(regions: &[RamRegion]) -> Vec<MemoryRange> {
        regions.iter().map(|region| region.range).collect()
    }

    fn assert_dense_offsets(regions: &[RamRegion]) {
        let mut expected_offset = 0;
        for region in regions {
            assert_eq!(region.file_offset, expected_offset, "{}", region.range);
            expected_offset += region.range.len();
        }
    }

    #[test]
    fn split_first_range() {
        let layout = MemoryLayout::new(2 * GB, &[r(2 * GB, 4 * GB)], None).unwrap();
        let regions = x86_legacy_ram_ranges(&layout, true).unwrap();
        assert_eq!(regions.len(), 16);
        assert_eq!(ranges_of(&regions), legacy_pieces(2 * GB));
        let text: Vec<String> = regions.iter().map(|x| x.range.to_string()).collect();
        assert_eq!(text[2], "0xc0000-0xc4000");
        assert_eq!(text[13], "0xec000-0xf0000");
        assert_eq!(text[15], "0x100000-0x80000000");
        assert_dense_offsets(&regions);
    }

    #[test]
    fn split_keeps_other_ranges_and_vtl2() {
        let vtl2 = r(16 * GB, 16 * GB + 64 * 1024 * 1024);
        let layout = MemoryLayout::new(8 * GB, &[r(3 * GB, 4 * GB)], Some(vtl2)).unwrap();
        let regions = x86_legacy_ram_ranges(&layout, true).unwrap();
        let mut expected = legacy_pieces(3 * GB);
        expected.push(r(4 * GB, 9 * GB));
        expected.push(vtl2);
        assert_eq!(ranges_of(&regions), expected);
        assert_eq!(regions[16].file_offset, 3 * GB);
        assert_eq!(regions[17].file_offset, 8 * GB);
        assert_dense_offsets(&regions);
    }

    #[test]
    fn without_legacy_support() {
        let vtl2 = r(16 * GB, 16 * GB + 64 * 1024 * 1024);
        let layout = MemoryLayout::new(8 * GB, &[r(3 * GB, 4 * GB)], Some(vtl2)).unwrap();
        let regions = x86_legacy_ram_ranges(&layout, false).unwrap();
        assert_eq!(ranges_of(&regions), [r(0, 3 * GB), r(4 * GB, 9 * GB), vtl2]);
        assert_dense_offsets(&regions);
        // No RAM requirement without legacy support.
        let layout = MemoryLayout::new(512 * 1024, &[], None).unwrap();
        assert_eq!(
            x86_legacy_ram_ranges(&layout, false).unwrap(),
            [RamRegion {
                range: r(0, 512 * 1024),
                file_offset: 0
            }]
        );
    }

    #[test]
    fn invalid_ram() {
        let layouts = [
            MemoryLayout::new_from_ranges(
                &[MemoryRangeWithNode {
                    range: r(MB, 2 * GB),
                    vnode: 0,
                }],
                &[],
            )
            .unwrap(),
            MemoryLayout::new(512 * 1024, &[], None).unwrap(),
            MemoryLayout::new(4 * GB, &[r(0xa0000, 0xc0000)], None).unwrap(),
        ];
        for layout in &layouts {
            let err = x86_legacy_ram_ranges(layout, true).unwrap_err();
            assert_eq!(err, InvalidRamForX86);
            assert_eq!(
                err.to_string(),
                "x86 support requires RAM to start at 0 and contain at least 1MB"
            );
        }
    }

    #[test]
    fn legacy_areas_are_the_pieces_of_the_first_megabyte() {
        let areas = x86_legacy_areas();
        let mut pieces = legacy_pieces(2 * MB);
        pieces.pop();
        assert_eq!(
            areas.iter().map(|area| area.range).collect::<Vec<_>>(),
            pieces
        );
        assert_eq!(areas[0].name, "conventional memory");
        assert_eq!(
            (areas[1].name, areas[1].range),
            ("VGA window", r(0xa0000, 0xc0000))
        );
        assert_eq!(
            (areas[2].name, areas[2].range),
            ("PAM1 low", r(0xc0000, 0xc4000))
        );
        assert_eq!(
            (areas[13].name, areas[13].range),
            ("PAM6 high", r(0xec000, 0xf0000))
        );
        assert_eq!(
            (areas[14].name, areas[14].range),
            ("system BIOS", r(0xf0000, MB))
        );
        let usable: Vec<bool> = areas.iter().map(|area| area.usable).collect();
        assert_eq!(usable, [[true].as_slice(), &[false; 14]].concat());
        // Every split of a layout names its first-megabyte regions by these areas.
        let layout = MemoryLayout::new(4 * GB, &[r(3 * GB, 4 * GB)], None).unwrap();
        let regions = x86_legacy_ram_ranges(&layout, true).unwrap();
        assert!(areas
            .iter()
            .zip(&regions)
            .all(|(area, region)| area.range == region.range));
    }

    #[test]
    fn exactly_one_megabyte_has_no_empty_region() {
        let layout = MemoryLayout::new(MB, &[], None).unwrap();
        let regions = x86_legacy_ram_ranges(&layout, true).unwrap();
        assert_eq!(regions.len(), 15);
        assert_eq!(regions[14].range.to_string(), "0xf0000-0x100000");
        assert!(regions.iter().all(|region| !region.range.is_empty()));
        let mut expected = legacy_pieces(2 * MB);
        expected.pop();
        assert_eq!(ranges_of(&regions), expected);
        assert_dense_offsets(&regions);
    }
}
