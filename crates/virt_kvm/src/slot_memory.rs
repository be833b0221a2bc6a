//! Writing guest memory through the host memory of the KVM slot that maps it.
//!
//! A long-mode vCPU needs its page tables in guest RAM (`KvmPartition::create_vcpu` writes them
//! through a [`crate::WriteGuestMemory`]). A caller that has no guest-memory object at hand
//! (the JavaScript binding, whose user passes only a GPA range) writes through the slots
//! instead: the bytes go to the host memory of the one writable slot that holds the whole
//! range, with a fault-recovering copy.

// Unsafe code: the copy writes host memory named by a slot's address.
#![allow(unsafe_code)]

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
        len: usize,
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
    /// The partition has writable slots, but none holds the whole range (it lies in an MMIO
    /// gap, a read-only or unmapped region, or straddles two slots).
    #[error(
        "{gpa:#x}-{end:#x} is not inside one writable memory slot (the writable slots are {}): \
         place it inside one of them, in guest RAM that is mapped read-write",
        slot_list(writable)
    )]
    NotInOneWritableSlot {
        /// The start of the write.
        gpa: u64,
        /// Its end.
        end: u64,
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
    /// Writes `data` at `gpa` through the host memory of the writable slot that maps the whole
    /// range.
    pub fn write_through_slots(&self, gpa: u64, data: &[u8]) -> Result<(), SlotWriteError> {
        let overflow = || SlotWriteError::Overflow {
            gpa,
            len: data.len(),
        };
        let end = u64::try_from(data.len())
            .ok()
            .and_then(|len| gpa.checked_add(len))
            .ok_or_else(overflow)?;
        let writable: Vec<_> = self
            .slots()
            .into_iter()
            .filter(|slot| !slot.readonly)
            .collect();
        let slot = writable
            .iter()
            .find(|slot| slot.gpa <= gpa && u128::from(end) <= slot.end())
            .ok_or_else(|| {
                if writable.is_empty() {
                    SlotWriteError::NoWritableSlot { gpa, end }
                } else {
                    SlotWriteError::NotInOneWritableSlot {
                        gpa,
                        end,
                        writable: writable.iter().map(|slot| (slot.gpa, slot.end())).collect(),
                    }
                }
            })?;
        let offset = usize::try_from(gpa - slot.gpa).map_err(|_| overflow())?;
        let host = (slot.host_address as *mut u8).wrapping_add(offset);
        // SAFETY: `host..host + data.len()` lies inside the slot's host memory (checked above),
        // which the memory manager keeps reserved while the slot exists; a fault there (memory
        // it has just made inaccessible) is recovered by the guarded copy and reported.
        unsafe { trycopy::try_copy(data.as_ptr(), host, data.len()) }.map_err(SlotWriteError::Fault)
    }
}

/// A partition writes guest memory (a long-mode vCPU's page tables) through its slots
/// ([`KvmPartition::write_through_slots`]).
impl crate::WriteGuestMemory for KvmPartition {
    fn write_guest(&self, gpa: u64, data: &[u8]) -> Result<(), virt::Error> {
        self.write_through_slots(gpa, data)
            .map_err(virt::Error::from)
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
            SlotWriteError::NotInOneWritableSlot {
                gpa: 0x10_3ffc,
                end: 0x10_4004,
                writable,
            } if writable == &[(0x10_0000, 0x10_4000)]
        ));
        let message = outside.to_string();
        assert!(
            message.contains("the writable slots are 0x100000-0x104000")
                && !message.contains("attach"),
            "{message}"
        );
        assert!(
            matches!(
                partition.write_through_slots(0x20_0000, b"x").unwrap_err(),
                SlotWriteError::NotInOneWritableSlot { .. }
            ),
            "a read-only slot is not written"
        );
        assert!(matches!(
            partition.write_through_slots(u64::MAX, b"xy").unwrap_err(),
            SlotWriteError::Overflow { .. }
        ));
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
