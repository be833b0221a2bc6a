//! Writing guest memory through the host memory of the KVM slots that map it.
//!
//! A long-mode vCPU needs its page tables in guest RAM (`KvmPartition::create_vcpu` writes them
//! through a [`crate::WriteGuestMemory`]). A caller that has no guest-memory object at hand
//! (the JavaScript binding, whose user passes only a GPA range) writes through the slots
//! instead: the bytes go to the host memory of the writable slots that hold the range (one, or
//! several adjacent ones, as RAM split into regions is), with a fault-recovering copy.

// Unsafe code: the copy writes host memory named by a slot's address.
#![allow(unsafe_code)]

use crate::slots::SlotInfo;
use crate::KvmPartition;

/// A write through the slots failed.
#[derive(Debug, thiserror::Error)]
pub enum SlotWriteError {
    /// `gpa + len` passes 2^64.
    #[error("a write of {len:#x} bytes at {gpa:#x} passes the end of the address space")]
    Overflow {
        /// The start of the write.
        gpa: u64,
        /// Its length.
        len: u64,
    },
    /// The partition has no writable slot at all: it is not attached to a memory manager.
    #[error(
        "{gpa:#x}-{end:#x} is not inside a writable memory slot because the partition has none: \
         attach the partition to a memory manager first"
    )]
    NoWritableSlot {
        /// The start of the write.
        gpa: u64,
        /// Its end.
        end: u64,
    },
    /// The partition has writable slots, but they do not cover the whole range (part of it
    /// lies in an MMIO gap, a read-only or unmapped region, or past the end of RAM).
    #[error(
        "{gpa:#x}-{end:#x} is not inside writable memory slots: nothing writable is mapped at \
         {hole:#x} (the writable slots are {}): place it inside guest RAM that is mapped read-write",
        slot_list(writable)
    )]
    NotInWritableSlots {
        /// The start of the write.
        gpa: u64,
        /// Its end.
        end: u64,
        /// The first address of the range no writable slot maps.
        hole: u64,
        /// The writable slots, as `(start, end)`.
        writable: Vec<(u64, u128)>,
    },
    /// The slot's host memory faulted (the memory manager has just torn it down).
    #[error("the host memory of the slot faulted")]
    Fault(#[source] trycopy::MemoryError),
}

/// `start-end` of each slot, comma-separated.
fn slot_list(slots: &[(u64, u128)]) -> String {
    slots
        .iter()
        .map(|(start, end)| format!("{start:#x}-{end:#x}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl KvmPartition {
    /// The writable slots that together map `gpa..gpa + len` without a hole, in GPA order.
    fn writable_cover(&self, gpa: u64, len: u64) -> Result<Vec<SlotInfo>, SlotWriteError> {
        let end = gpa
            .checked_add(len)
            .ok_or(SlotWriteError::Overflow { gpa, len })?;
        let mut writable: Vec<_> = self
            .slots()
            .into_iter()
            .filter(|slot| !slot.readonly)
            .collect();
        writable.sort_by_key(|slot| slot.gpa);
        if writable.is_empty() {
            return Err(SlotWriteError::NoWritableSlot { gpa, end });
        }
        let mut cover = Vec::new();
        let mut next = gpa;
        while next < end {
            match writable
                .iter()
                .find(|slot| slot.gpa <= next && u128::from(next) < slot.end())
            {
                Some(slot) => {
                    cover.push(*slot);
                    next = u64::try_from(slot.end()).unwrap_or(u64::MAX);
                }
                None => {
                    return Err(SlotWriteError::NotInWritableSlots {
                        gpa,
                        end,
                        hole: next,
                        writable: writable.iter().map(|slot| (slot.gpa, slot.end())).collect(),
                    })
                }
            }
        }
        Ok(cover)
    }

    /// `Ok` when writable slots map all of `gpa..gpa + len` (what
    /// [`KvmPartition::write_through_slots`] needs to write there).
    pub fn check_writable(&self, gpa: u64, len: u64) -> Result<(), SlotWriteError> {
        self.writable_cover(gpa, len).map(drop)
    }

    /// Writes `data` at `gpa` through the host memory of the writable slots that map the whole
    /// range (one, or several adjacent ones).
    pub fn write_through_slots(&self, gpa: u64, data: &[u8]) -> Result<(), SlotWriteError> {
        let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
        let mut written = 0usize;
        for slot in self.writable_cover(gpa, len)? {
            let at = gpa + written as u64;
            let offset = at - slot.gpa;
            let room = u64::try_from(slot.end() - u128::from(at)).unwrap_or(u64::MAX);
            let piece = usize::try_from(room.min(len - written as u64))
                .map_err(|_| SlotWriteError::Overflow { gpa, len })?;
            let offset =
                usize::try_from(offset).map_err(|_| SlotWriteError::Overflow { gpa, len })?;
            let host = (slot.host_address as *mut u8).wrapping_add(offset);
            // SAFETY: `host..host + piece` lies inside the slot's host memory (`offset + piece`
            // is at most the slot's size, checked above), which the memory manager keeps
            // reserved while the slot exists; a fault there (memory it has just made
            // inaccessible) is recovered by the guarded copy and reported. The source is
            // `data[written..written + piece]`.
            unsafe { trycopy::try_copy(data.as_ptr().add(written), host, piece) }
                .map_err(SlotWriteError::Fault)?;
            written += piece;
        }
        Ok(())
    }
}

/// A partition writes guest memory (a long-mode vCPU's page tables) through its slots
/// ([`KvmPartition::write_through_slots`]).
impl crate::WriteGuestMemory for KvmPartition {
    fn write_guest(&self, gpa: u64, data: &[u8]) -> Result<(), virt::Error> {
        self.write_through_slots(gpa, data)
            .map_err(virt::Error::from)
    }

    fn check_writable(&self, gpa: u64, len: u64) -> Result<(), virt::Error> {
        KvmPartition::check_writable(self, gpa, len).map_err(virt::Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::partition_or_skip;
    use crate::test_support::AnonMemory;
    use crate::KvmPartitionOptions;
    use virt::PartitionMemoryMap;

    #[test]
    fn writes_land_in_the_slots_host_memory() {
        let Some(partition) = partition_or_skip(
            "writes_land_in_the_slots_host_memory",
            KvmPartitionOptions::default(),
        ) else {
            return;
        };
        trycopy::initialize_try_copy();
        let memory = AnonMemory::mapped(0x4000);
        let read_only = AnonMemory::mapped(0x1000);
        partition
            .map_range(memory.ptr(), memory.len(), 0x10_0000, true, false)
            .unwrap();
        partition
            .map_range(read_only.ptr(), read_only.len(), 0x20_0000, false, false)
            .unwrap();
        partition
            .write_through_slots(0x10_1ffc, b"slotted!")
            .unwrap();
        assert_eq!(memory.read_u64(0x1ffc), u64::from_le_bytes(*b"slotted!"));
        // The same write as the guest-memory writer a vCPU's page tables go through.
        let writer: &dyn crate::WriteGuestMemory = &partition;
        writer.write_guest(0x10_0008, b"written!").unwrap();
        assert_eq!(memory.read_u64(0x8), u64::from_le_bytes(*b"written!"));
        assert!(
            writer.write_guest(0x30_0000, b"x").is_err(),
            "no slot there"
        );

        let outside = partition
            .write_through_slots(0x10_3ffc, b"too long")
            .unwrap_err();
        assert!(matches!(
            &outside,
            SlotWriteError::NotInWritableSlots {
                gpa: 0x10_3ffc,
                end: 0x10_4004,
                hole: 0x10_4000,
                writable,
            } if writable == &[(0x10_0000, 0x10_4000)]
        ));
        let message = outside.to_string();
        assert!(
            message.contains("nothing writable is mapped at 0x104000")
                && message.contains("the writable slots are 0x100000-0x104000")
                && !message.contains("attach"),
            "{message}"
        );
        assert_eq!(
            memory.read_u64(0x3ff8),
            0,
            "nothing of a refused write is written"
        );
        assert!(
            matches!(
                partition.write_through_slots(0x20_0000, b"x").unwrap_err(),
                SlotWriteError::NotInWritableSlots { .. }
            ),
            "a read-only slot is not written"
        );
        assert!(matches!(
            partition.write_through_slots(u64::MAX, b"xy").unwrap_err(),
            SlotWriteError::Overflow { .. }
        ));
        // Adjacent writable slots (RAM split into regions) hold a write across them; the
        // check covers a whole range, a hole anywhere in it included.
        let next = AnonMemory::mapped(0x2000);
        partition
            .map_range(next.ptr(), next.len(), 0x10_4000, true, false)
            .unwrap();
        partition
            .write_through_slots(0x10_3ffc, b"across!!")
            .unwrap();
        let (mut low, mut high) = ([0u8; 4], [0u8; 4]);
        memory.read(0x3ffc, &mut low);
        next.read(0, &mut high);
        assert_eq!((&low, &high), (b"acro", b"ss!!"));
        partition.check_writable(0x10_0000, 0x6000).unwrap();
        assert!(matches!(
            partition.check_writable(0x10_0000, 0x7000).unwrap_err(),
            SlotWriteError::NotInWritableSlots {
                hole: 0x10_6000,
                ..
            }
        ));
        assert!(matches!(
            writer
                .check_writable(0x10_5000, 0x20_0000)
                .unwrap_err()
                .downcast_ref(),
            Some(SlotWriteError::NotInWritableSlots {
                hole: 0x10_6000,
                ..
            })
        ));
        partition.unmap_range(0x10_4000, 0x2000).unwrap();
        partition.unmap_range(0x10_0000, 0x4000).unwrap();
        let unattached = partition.write_through_slots(0x20_0000, b"x").unwrap_err();
        assert!(
            matches!(unattached, SlotWriteError::NoWritableSlot { .. })
                && unattached.to_string().contains("attach the partition"),
            "{unattached}"
        );
        partition.unmap_range(0x20_0000, 0x1000).unwrap();
    }
}
