//! The memory-slot table: which KVM slot id holds which GPA range, and how ids are reused.
//!
//! Pure bookkeeping, no KVM calls: [`SlotTable::check_map`] and [`SlotTable::check_unmap`]
//! decide whether a request is valid (no overlap, no partial unmap) before the partition touches
//! the kernel, and ids are handed out lowest-free-first so a plan can predict them
//! ([`SlotTable::next_free_ids`]).

use crate::KvmError;
use serde::Serialize;
use std::collections::BTreeMap;
use std::collections::BTreeSet;

/// One memory slot as the partition created it.
#[derive(Debug, Copy, Clone, PartialEq, Eq, Serialize)]
pub struct SlotInfo {
    /// The KVM slot id.
    pub slot: u32,
    /// First guest physical address.
    pub gpa: u64,
    /// Length in bytes.
    pub size: u64,
    /// Created with `KVM_MEM_READONLY`: guest writes become MMIO-write exits.
    pub readonly: bool,
    /// The host virtual address that backs `gpa`.
    pub host_address: u64,
    /// Whether `pin_range` locked (part of) it.
    pub pinned: bool,
}

impl SlotInfo {
    /// One past the last GPA (as u128: a slot may end exactly at 2^64).
    pub(crate) fn end(&self) -> u128 {
        self.gpa as u128 + self.size as u128
    }
}

/// The slots of one VM, keyed by GPA, plus the id allocator.
#[derive(Debug, Clone)]
pub(crate) struct SlotTable {
    by_gpa: BTreeMap<u64, SlotInfo>,
    /// Ids that were used and released; reused lowest first.
    released: BTreeSet<u32>,
    /// The lowest id never used so far.
    never_used: u32,
    max_slots: u32,
}

impl SlotTable {
    pub(crate) fn new(max_slots: u32) -> Self {
        Self {
            by_gpa: BTreeMap::new(),
            released: BTreeSet::new(),
            never_used: 0,
            max_slots,
        }
    }

    pub(crate) fn max_slots(&self) -> u32 {
        self.max_slots
    }

    /// How many slots exist now.
    pub(crate) fn len(&self) -> usize {
        self.by_gpa.len()
    }

    /// Every slot, in GPA order.
    pub(crate) fn slots(&self) -> impl Iterator<Item = &SlotInfo> {
        self.by_gpa.values()
    }

    /// The ids the next `count` slot creations will use, in order.
    pub(crate) fn next_free_ids(&self, count: usize) -> Vec<u32> {
        self.released
            .iter()
            .copied()
            .chain(self.never_used..self.max_slots)
            .take(count)
            .collect()
    }

    /// Checks that `[gpa, gpa + size)` overlaps no slot.
    pub(crate) fn check_map(&self, gpa: u64, size: u64) -> Result<(), KvmError> {
        let end = gpa as u128 + size as u128;
        // The slot with the highest start below `end` is the only one that can overlap, since
        // slots never overlap each other.
        let candidate = match u64::try_from(end) {
            Ok(end) => self.by_gpa.range(..end).next_back(),
            Err(_) => self.by_gpa.range(..).next_back(),
        };
        match candidate {
            Some((_, slot)) if slot.end() > gpa as u128 => Err(KvmError::SlotOverlap {
                gpa,
                size,
                slot: slot.slot,
                slot_gpa: slot.gpa,
                slot_size: slot.size,
            }),
            _ => Ok(()),
        }
    }

    /// Returns the slots that lie wholly inside `[gpa, gpa + size)`, or the error for the first
    /// slot the range cuts.
    pub(crate) fn check_unmap(&self, gpa: u64, size: u64) -> Result<Vec<SlotInfo>, KvmError> {
        let end = gpa as u128 + size as u128;
        let partial = |slot: &SlotInfo| KvmError::PartialSlotUnmap {
            gpa,
            size,
            slot: slot.slot,
            slot_gpa: slot.gpa,
            slot_size: slot.size,
        };
        if size == 0 {
            return Ok(Vec::new());
        }
        if let Some((_, before)) = self.by_gpa.range(..gpa).next_back() {
            if before.end() > gpa as u128 {
                return Err(partial(before));
            }
        }
        let inside = match u64::try_from(end) {
            Ok(end) => self.by_gpa.range(gpa..end),
            Err(_) => self.by_gpa.range(gpa..),
        };
        let mut covered = Vec::new();
        for slot in inside.map(|(_, slot)| slot) {
            if slot.end() > end {
                return Err(partial(slot));
            }
            covered.push(*slot);
        }
        Ok(covered)
    }

    /// Reserves the lowest free id.
    pub(crate) fn allocate_id(&mut self) -> Result<u32, KvmError> {
        if let Some(id) = self.released.pop_first() {
            return Ok(id);
        }
        if self.never_used < self.max_slots {
            self.never_used += 1;
            return Ok(self.never_used - 1);
        }
        Err(KvmError::NoFreeSlot {
            max_slots: self.max_slots,
        })
    }

    /// Gives back an id that [`SlotTable::allocate_id`] handed out but no slot uses.
    pub(crate) fn release_id(&mut self, id: u32) {
        self.released.insert(id);
    }

    /// Records a slot the kernel accepted.
    pub(crate) fn insert(&mut self, slot: SlotInfo) {
        self.by_gpa.insert(slot.gpa, slot);
    }

    /// Forgets the slot at `gpa` (the kernel deleted it) and releases its id.
    pub(crate) fn remove(&mut self, gpa: u64) -> Option<SlotInfo> {
        let slot = self.by_gpa.remove(&gpa)?;
        self.release_id(slot.slot);
        Some(slot)
    }

    /// The slots that intersect `[gpa, gpa + size)`, in GPA order.
    pub(crate) fn intersecting(&self, gpa: u64, size: u64) -> Vec<SlotInfo> {
        let end = gpa as u128 + size as u128;
        let mut found = Vec::new();
        if size == 0 {
            return found;
        }
        if let Some((_, before)) = self.by_gpa.range(..gpa).next_back() {
            if before.end() > gpa as u128 {
                found.push(*before);
            }
        }
        let inside = match u64::try_from(end) {
            Ok(end) => self.by_gpa.range(gpa..end),
            Err(_) => self.by_gpa.range(gpa..),
        };
        found.extend(inside.map(|(_, slot)| *slot));
        found
    }

    /// Marks the slot at `gpa` as pinned.
    pub(crate) fn mark_pinned(&mut self, gpa: u64) {
        if let Some(slot) = self.by_gpa.get_mut(&gpa) {
            slot.pinned = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(table: &mut SlotTable, gpa: u64, size: u64) -> u32 {
        table.check_map(gpa, size).unwrap();
        let id = table.allocate_id().unwrap();
        table.insert(SlotInfo {
            slot: id,
            gpa,
            size,
            readonly: false,
            host_address: 0x7000_0000_0000 + gpa,
            pinned: false,
        });
        id
    }

    #[test]
    fn ids_are_lowest_free_first_and_reused() {
        let mut table = SlotTable::new(8);
        assert_eq!(table.next_free_ids(3), vec![0, 1, 2]);
        assert_eq!(slot(&mut table, 0x1000, 0x1000), 0);
        assert_eq!(slot(&mut table, 0x2000, 0x1000), 1);
        assert_eq!(slot(&mut table, 0x3000, 0x1000), 2);
        table.remove(0x2000);
        table.remove(0x1000);
        assert_eq!(table.next_free_ids(3), vec![0, 1, 3]);
        assert_eq!(slot(&mut table, 0x10000, 0x1000), 0);
        assert_eq!(slot(&mut table, 0x20000, 0x1000), 1);
        assert_eq!(slot(&mut table, 0x30000, 0x1000), 3);
    }

    #[test]
    fn running_out_of_ids_is_no_free_slot() {
        let mut table = SlotTable::new(2);
        slot(&mut table, 0, 0x1000);
        slot(&mut table, 0x1000, 0x1000);
        assert!(matches!(
            table.allocate_id(),
            Err(KvmError::NoFreeSlot { max_slots: 2 })
        ));
        assert_eq!(table.next_free_ids(1), Vec::<u32>::new());
    }

    #[test]
    fn overlap_is_detected_on_both_sides_and_inside() {
        let mut table = SlotTable::new(8);
        slot(&mut table, 0x10000, 0x10000);
        for (gpa, size) in [
            (0xf000, 0x2000),
            (0x1f000, 0x2000),
            (0x12000, 0x1000),
            (0, 0x100000),
        ] {
            match table.check_map(gpa, size) {
                Err(KvmError::SlotOverlap {
                    slot: 0,
                    slot_gpa: 0x10000,
                    slot_size: 0x10000,
                    ..
                }) => {}
                other => panic!("{gpa:#x}+{size:#x}: {other:?}"),
            }
        }
        // Adjacent ranges do not overlap.
        table.check_map(0xf000, 0x1000).unwrap();
        table.check_map(0x20000, 0x1000).unwrap();
        // A range reaching 2^64 is handled without overflow.
        table
            .check_map(0xffff_ffff_ffff_f000, 0x1000)
            .expect("top page is free");
    }

    #[test]
    fn unmap_covers_whole_slots_only() {
        let mut table = SlotTable::new(8);
        slot(&mut table, 0x10000, 0x4000);
        slot(&mut table, 0x14000, 0x4000);
        slot(&mut table, 0x20000, 0x1000);
        let covered: Vec<u32> = table
            .check_unmap(0, 0x100000)
            .unwrap()
            .iter()
            .map(|s| s.slot)
            .collect();
        assert_eq!(covered, vec![0, 1, 2]);
        assert_eq!(table.check_unmap(0x18000, 0x8000).unwrap(), vec![]);
        assert_eq!(table.check_unmap(0x14000, 0x4000).unwrap().len(), 1);
        // Cut at the end of a slot, at its start, and inside it.
        for (gpa, size, cut) in [
            (0x10000, 0x2000, 0),
            (0x12000, 0x2000, 0),
            (0x13000, 0x2000, 0),
            (0x16000, 0x10000, 1),
        ] {
            match table.check_unmap(gpa, size) {
                Err(KvmError::PartialSlotUnmap { slot, .. }) => assert_eq!(slot, cut),
                other => panic!("{gpa:#x}+{size:#x}: {other:?}"),
            }
        }
        assert_eq!(table.check_unmap(0x10000, 0).unwrap(), vec![]);
        assert_eq!(
            table.check_unmap(0x1000, u64::MAX - 0x1000).unwrap().len(),
            3
        );
    }

    #[test]
    fn intersecting_includes_a_slot_starting_before_the_range() {
        let mut table = SlotTable::new(8);
        slot(&mut table, 0x10000, 0x4000);
        slot(&mut table, 0x14000, 0x4000);
        let found: Vec<u32> = table
            .intersecting(0x12000, 0x3000)
            .iter()
            .map(|s| s.slot)
            .collect();
        assert_eq!(found, vec![0, 1]);
        assert!(table.intersecting(0x18000, 0x1000).is_empty());
    }
}
