//! Fuzz checks of `vm_topology`: `MemoryLayout::new` and `new_from_ranges` with arbitrary sizes,
//! gaps and VTL2 ranges never panic; a built layout keeps its invariants (RAM non-empty, sorted,
//! disjoint from the gaps and the VTL2 range, summing to the size asked for), its accessors
//! agree with the ranges, `new` lays RAM out exactly as a reference does, and
//! `x86_legacy_ram_ranges` covers RAM (and VTL2) with dense file offsets.

use crate::input::{address, Unstructured, PAGE};
use memory_range::MemoryRange;
use vm_topology::memory::{AddressType, Error, MemoryLayout, MemoryRangeWithNode};
use vm_topology::x86_legacy::x86_legacy_ram_ranges;

const FOUR_GB: u64 = 0x1_0000_0000;
const ONE_MB: u64 = 0x10_0000;

/// A range that is valid as a `MemoryRange` (page-aligned, ordered), biased to small sizes.
fn any_range(u: &mut Unstructured<'_>) -> MemoryRange {
    let a = address(u) & !(PAGE - 1);
    let len = match u.int_in_range(0u8..=3).unwrap_or(0) {
        0 => u.int_in_range(0u64..=16).unwrap_or(1) * PAGE,
        1 => u.int_in_range(1u64..=8).unwrap_or(1) << 30,
        2 => u.int_in_range(1u64..=512).unwrap_or(1) * 0x20_0000,
        _ => address(u) & !(PAGE - 1),
    };
    let end = a.saturating_add(len).min(MemoryRange::MAX_ADDRESS);
    MemoryRange::new(a.min(end)..end)
}

/// Gaps: usually a sorted list built by steps, sometimes arbitrary (unsorted, overlapping).
fn gaps(u: &mut Unstructured<'_>) -> Vec<MemoryRange> {
    let count = u.int_in_range(0usize..=5).unwrap_or(0);
    if u.ratio(1u8, 4).unwrap_or(false) {
        return (0..count).map(|_| any_range(u)).collect();
    }
    let mut cursor = 0u64;
    let mut list = Vec::new();
    for _ in 0..count {
        let step = match u.int_in_range(0u8..=3).unwrap_or(0) {
            0 => 0,
            1 => u.int_in_range(1u64..=64).unwrap_or(1) * PAGE,
            2 => u.int_in_range(1u64..=8).unwrap_or(1) << 30,
            _ => u.int_in_range(1u64..=4096).unwrap_or(1) << 20,
        };
        let len = match u.int_in_range(0u8..=2).unwrap_or(0) {
            0 => u.int_in_range(1u64..=64).unwrap_or(1) * PAGE,
            1 => u.int_in_range(1u64..=4).unwrap_or(1) << 30,
            _ => u.int_in_range(0u64..=2).unwrap_or(0) * PAGE,
        };
        let Some(start) = cursor
            .checked_add(step)
            .filter(|s| *s <= MemoryRange::MAX_ADDRESS)
        else {
            break;
        };
        let Some(end) = start
            .checked_add(len)
            .filter(|e| *e <= MemoryRange::MAX_ADDRESS)
        else {
            break;
        };
        list.push(MemoryRange::new(start..end));
        cursor = end;
    }
    list
}

/// Reference layout of `new`: RAM takes the pieces of [0, MAX_ADDRESS) between the gaps, in
/// order, until `ram_size` bytes are placed; reaching an empty piece (a gap at 0 or two touching
/// gaps) before that, or running past MAX_ADDRESS, is an error.
fn reference_ram(ram_size: u64, gaps: &[MemoryRange]) -> Option<Vec<MemoryRange>> {
    let mut ram = Vec::new();
    let mut remaining = ram_size;
    let mut cursor = 0u64;
    for gap in gaps {
        if remaining == 0 {
            break;
        }
        let piece = remaining.min(gap.start().checked_sub(cursor)?);
        if piece == 0 {
            return None;
        }
        ram.push(MemoryRange::new(cursor..cursor + piece));
        remaining -= piece;
        cursor = gap.end();
    }
    if remaining > 0 {
        let end = cursor
            .checked_add(remaining)
            .filter(|e| *e <= MemoryRange::MAX_ADDRESS)?;
        ram.push(MemoryRange::new(cursor..end));
    }
    Some(ram)
}

fn valid_list(ranges: &[MemoryRange]) -> bool {
    ranges.iter().all(|r| !r.is_empty()) && ranges.windows(2).all(|p| p[0].end() <= p[1].start())
}

pub fn check(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let ram_size = match u.int_in_range(0u8..=4).unwrap_or(0) {
        0 => u.int_in_range(1u64..=4096).unwrap_or(1) * PAGE,
        1 => u.int_in_range(1u64..=64).unwrap_or(1) << 30,
        2 => {
            u.int_in_range(0u64..=3).unwrap_or(0) * ONE_MB
                + u.int_in_range(0u64..=255).unwrap_or(0) * PAGE
        }
        _ => address(&mut u),
    };
    let gap_list = gaps(&mut u);
    let vtl2 = u.ratio(1u8, 3).unwrap_or(false).then(|| any_range(&mut u));

    let layout = MemoryLayout::new(ram_size, &gap_list, vtl2);
    if ram_size == 0 || ram_size % PAGE != 0 {
        assert_eq!(
            layout.as_ref().err(),
            Some(&Error::BadSize),
            "MemoryLayout::new({ram_size:#x}, …)"
        );
        return;
    }
    let reference = if valid_list(&gap_list) {
        reference_ram(ram_size, &gap_list)
    } else {
        None
    };
    match &layout {
        Ok(layout) => {
            let ram: Vec<MemoryRange> = layout.ram().iter().map(|r| r.range).collect();
            assert_eq!(
                Some(&ram),
                reference.as_ref(),
                "RAM of new({ram_size:#x}, {gap_list:?}, {vtl2:?})"
            );
            check_layout(layout, ram_size);
            assert_eq!(layout.vtl2_range(), vtl2);
            assert_eq!(layout.mmio(), &gap_list[..]);
        }
        Err(Error::BadSize) => panic!("BadSize for a valid size {ram_size:#x}"),
        Err(error) => {
            // The reference places RAM; what else can fail is the VTL2 range.
            if let Some(ram) = &reference {
                let vtl2 = vtl2.expect(
                    "new() failed although the reference placed RAM and there is no VTL2 range",
                );
                let overlaps =
                    vtl2.is_empty() || ram.iter().chain(&gap_list).any(|r| r.overlaps(&vtl2));
                let before_end = vtl2.start() < ram.last().map_or(0, |r| r.end());
                assert!(
                    overlaps || before_end,
                    "new({ram_size:#x}, {gap_list:?}, {vtl2}) failed with {error:?} though VTL2 neither overlaps nor lies below RAM"
                );
                if !overlaps {
                    assert_eq!(*error, Error::Vtl2RangeBeforeEndOfRam);
                }
            }
        }
    }

    // new_from_ranges with arbitrary RAM (vnodes kept, no requirement to start at 0).
    let count = u.int_in_range(0usize..=4).unwrap_or(0);
    let memory: Vec<MemoryRangeWithNode> = (0..count)
        .map(|_| MemoryRangeWithNode {
            range: any_range(&mut u),
            vnode: u.int_in_range(0u32..=3).unwrap_or(0),
        })
        .collect();
    match MemoryLayout::new_from_ranges(&memory, &gap_list) {
        Ok(layout) => {
            assert_eq!(layout.ram(), &memory[..]);
            let ram: Vec<MemoryRange> = memory.iter().map(|r| r.range).collect();
            assert!(
                valid_list(&ram) && valid_list(&gap_list),
                "new_from_ranges accepted {memory:?} / {gap_list:?}"
            );
            assert!(
                !ram.iter().any(|r| gap_list.iter().any(|g| g.overlaps(r))),
                "new_from_ranges accepted RAM over a gap"
            );
            let size = ram.iter().map(|r| r.len()).sum::<u64>();
            check_layout(&layout, size);
        }
        Err(error) => {
            assert_eq!(error, Error::BadMemoryRanges);
            let ram: Vec<MemoryRange> = memory.iter().map(|r| r.range).collect();
            let mut all = ram.clone();
            all.extend(&gap_list);
            all.sort();
            assert!(
                memory.is_empty()
                    || !valid_list(&ram)
                    || !valid_list(&gap_list)
                    || !valid_list(&all),
                "new_from_ranges refused valid {memory:?} / {gap_list:?}"
            );
        }
    }
}

/// The invariants and accessors of a built layout.
fn check_layout(layout: &MemoryLayout, ram_size: u64) {
    let ram: Vec<MemoryRange> = layout.ram().iter().map(|r| r.range).collect();
    assert!(!ram.is_empty() && valid_list(&ram), "RAM {ram:?}");
    let mut all = ram.clone();
    all.extend(layout.mmio());
    all.extend(layout.vtl2_range());
    all.sort();
    assert!(valid_list(&all), "RAM, gaps and VTL2 overlap: {all:?}");
    assert_eq!(layout.ram_size(), ram_size);
    let end_of_ram = ram.last().map_or(0, |r| r.end());
    assert_eq!(layout.end_of_ram(), end_of_ram);
    if let Some(vtl2) = layout.vtl2_range() {
        assert!(vtl2.start() >= end_of_ram);
    }
    let below: u64 = ram
        .iter()
        .filter(|r| r.end() < FOUR_GB)
        .map(|r| r.len())
        .sum();
    assert_eq!(layout.ram_below_4gb(), below);
    assert_eq!(layout.ram_above_4gb(), ram_size - below);
    assert_eq!(
        layout.max_ram_below_4gb(),
        ram.iter().rev().map(|r| r.end()).find(|e| *e < FOUR_GB)
    );
    assert_eq!(
        layout.end_of_ram_or_mmio_checked(),
        layout.mmio().last().map(|g| g.end().max(end_of_ram))
    );
    if layout.mmio().len() == 2 {
        let high = layout.mmio()[1].end();
        assert_eq!(
            layout.ram_above_high_mmio(),
            Some(
                ram.iter()
                    .filter(|r| r.start() >= high)
                    .map(|r| r.len())
                    .sum()
            )
        );
    } else {
        assert_eq!(layout.ram_above_high_mmio(), None);
    }
    for range in ram.iter().chain(layout.mmio()) {
        for address in [range.start(), range.end().wrapping_sub(1), range.end()] {
            let expected = if ram.iter().any(|r| r.contains_addr(address)) {
                Some(AddressType::Ram)
            } else if layout.mmio().iter().any(|g| g.contains_addr(address)) {
                Some(AddressType::Mmio)
            } else {
                None
            };
            assert_eq!(
                layout.probe_address(address),
                expected,
                "probe_address({address:#x})"
            );
        }
    }
    let _ = layout.inspect();

    // The builder's region list.
    let plain = x86_legacy_ram_ranges(layout, false)
        .expect("without x86 support the region list cannot fail");
    let expected: Vec<MemoryRange> = ram.iter().copied().chain(layout.vtl2_range()).collect();
    assert_eq!(plain.iter().map(|r| r.range).collect::<Vec<_>>(), expected);
    dense(&plain);
    match x86_legacy_ram_ranges(layout, true) {
        Ok(split) => {
            assert!(
                ram[0].start() == 0 && ram[0].end() >= ONE_MB,
                "x86 split accepted first RAM {}",
                ram[0]
            );
            let pieces: Vec<MemoryRange> = split.iter().map(|r| r.range).collect();
            assert!(valid_list(&pieces), "x86 split {pieces:?}");
            // The pieces cover exactly the same bytes, split below 1 MiB.
            let covered: u64 = pieces.iter().map(|r| r.len()).sum();
            assert_eq!(covered, expected.iter().map(|r| r.len()).sum::<u64>());
            assert!(pieces
                .iter()
                .all(|p| expected.iter().any(|r| r.contains(p))));
            assert!(
                pieces.iter().filter(|p| p.end() <= ONE_MB).count() == 15,
                "x86 split below 1 MiB: {pieces:?}"
            );
            dense(&split);
        }
        Err(_) => assert!(
            ram[0].start() != 0 || ram[0].end() < ONE_MB,
            "x86 split refused first RAM {}",
            ram[0]
        ),
    }
}

fn dense(regions: &[vm_topology::x86_legacy::RamRegion]) {
    let mut offset = 0u64;
    for region in regions {
        assert_eq!(
            region.file_offset, offset,
            "file offset of {}",
            region.range
        );
        offset += region.range.len();
    }
}
