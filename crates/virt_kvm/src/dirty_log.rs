//! Dirty-page logging of a [`KvmPartition`](crate::KvmPartition): the slot flag
//! `KVM_MEM_LOG_DIRTY_PAGES`, harvested with `KVM_GET_DIRTY_LOG`.
//!
//! Where the kernel offers `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2` the partition enables it (without
//! `KVM_DIRTY_LOG_INITIALLY_SET`) when it is created: `KVM_GET_DIRTY_LOG` then only reads the
//! bits, and `KVM_CLEAR_DIRTY_LOG` clears exactly the bits read and write-protects those pages
//! again, so a guest write after the clear sets the bit anew. Without the capability,
//! `KVM_GET_DIRTY_LOG` reads, clears and write-protects in one call. Either way a write racing
//! a harvest is reported by that harvest or the next.
//!
//! A slot deleted while logging is on (a visibility change, a device window moving) is
//! harvested first; its pages wait in [`DirtyLogState::pending`] for the next take, so a
//! re-created slot never loses the bits of the one it replaced. Read-only slots are never
//! logged: the guest cannot write them.

// Unsafe code: KVM's dirty-log ioctls take raw bitmap pointers.
#![allow(unsafe_code)]

use crate::slots::SlotInfo;
use crate::KvmError;
use kvm_bindings::kvm_clear_dirty_log;
use kvm_bindings::kvm_clear_dirty_log__bindgen_ty_1;
use kvm_bindings::kvm_enable_cap;
use kvm_bindings::KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2;
use kvm_bindings::KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE;
use kvm_ioctls::VmFd;
use std::os::fd::AsRawFd;

const PAGE_SIZE: u64 = 4096;

/// `_IOWR(KVMIO, 0xc0, struct kvm_clear_dirty_log)`.
const KVM_CLEAR_DIRTY_LOG: libc::c_ulong = 0xc018_aec0;

/// The logging state of a partition while logging is on.
#[derive(Debug, Default)]
pub(crate) struct DirtyLogState {
    /// Host ranges written in slots deleted since the last take.
    pub pending: Vec<(u64, u64)>,
}

/// Enables `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2` (without initially-set bits) where offered;
/// returns whether it is on.
pub(crate) fn enable_manual_protect(vm: &VmFd) -> bool {
    let offered = vm.check_extension_raw(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2.into());
    // A negative answer is an error, zero is "not offered"; otherwise the bits offered.
    let offered = u64::try_from(offered).unwrap_or(0);
    if offered & u64::from(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE) == 0 {
        return false;
    }
    let cap = kvm_enable_cap {
        cap: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
        args: [u64::from(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE), 0, 0, 0],
        ..Default::default()
    };
    vm.enable_cap(&cap).is_ok()
}

/// Reads (and clears) the dirty bits of `slot` and reports each run of written pages as a
/// host range.
pub(crate) fn harvest_slot(
    vm: &VmFd,
    manual_protect: bool,
    slot: &SlotInfo,
    report: &mut dyn FnMut(u64, u64),
) -> Result<(), KvmError> {
    let size = usize::try_from(slot.size).map_err(|_| KvmError::InvalidSlotRange {
        gpa: slot.gpa,
        size: slot.size,
        host_address: slot.host_address,
    })?;
    let mut bitmap = vm
        .get_dirty_log(slot.slot, size)
        .map_err(|e| KvmError::ioctl("KVM_GET_DIRTY_LOG", e))?;
    if bitmap.iter().all(|&word| word == 0) {
        return Ok(());
    }
    if manual_protect {
        let pages = slot.size / PAGE_SIZE;
        let clear = kvm_clear_dirty_log {
            slot: slot.slot,
            // Whole slot: `num_pages` may be any count when the range ends at the slot's end.
            num_pages: u32::try_from(pages).map_err(|_| KvmError::InvalidSlotRange {
                gpa: slot.gpa,
                size: slot.size,
                host_address: slot.host_address,
            })?,
            first_page: 0,
            __bindgen_anon_1: kvm_clear_dirty_log__bindgen_ty_1 {
                dirty_bitmap: bitmap.as_mut_ptr().cast(),
            },
        };
        // SAFETY: KVM_CLEAR_DIRTY_LOG reads `num_pages` bits from `dirty_bitmap`, which holds
        // at least that many (KVM_GET_DIRTY_LOG sized it for the whole slot) and outlives the
        // call; the kernel writes nothing to our memory.
        let rc = unsafe { libc::ioctl(vm.as_raw_fd(), KVM_CLEAR_DIRTY_LOG, &clear) };
        if rc != 0 {
            return Err(KvmError::ioctl(
                "KVM_CLEAR_DIRTY_LOG",
                kvm_ioctls::Error::last(),
            ));
        }
    }
    report_runs(&bitmap, slot.host_address, report);
    Ok(())
}

/// Reports the runs of set bits of `bitmap` (bit n = page n from `base`) as host ranges.
fn report_runs(bitmap: &[u64], base: u64, report: &mut dyn FnMut(u64, u64)) {
    let mut run: Option<(u64, u64)> = None;
    for (index, &word) in bitmap.iter().enumerate() {
        let mut bits = word;
        while bits != 0 {
            let page = index as u64 * 64 + u64::from(bits.trailing_zeros());
            bits &= bits - 1;
            match &mut run {
                Some((first, count)) if *first + *count == page => *count += 1,
                _ => {
                    if let Some((first, count)) = run.take() {
                        report(base + first * PAGE_SIZE, count * PAGE_SIZE);
                    }
                    run = Some((page, 1));
                }
            }
        }
    }
    if let Some((first, count)) = run {
        report(base + first * PAGE_SIZE, count * PAGE_SIZE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::programs;
    use crate::test_support::at;
    use crate::test_support::AnonMemory;
    use crate::test_support::Guest;
    use crate::VcpuExit;
    use crate::VcpuOptions;
    use std::collections::BTreeSet;
    use virt::PartitionMemoryMap;

    const GIB: u64 = 1 << 30;
    const MEMORY_LEN: usize = 2 << 20;

    /// Runs FILL_PATTERN over `qwords` qwords at `gpa` and waits for its port write.
    fn fill(guest: &Guest, gpa: u64, qwords: u64) {
        guest.start_at(at::FILL_PATTERN, |r| {
            r.rdi = gpa;
            r.rcx = qwords;
            r.rdx = 0x1234;
        });
        match guest.vcpu.run(None).unwrap() {
            VcpuExit::IoOut { port, .. } if port == programs::DONE_PORT => {}
            other => panic!("expected the done port, got {other:?}"),
        }
    }

    /// The pages of `memory` the partition reports as written.
    fn written_pages(guest: &Guest, memory: &AnonMemory) -> BTreeSet<u64> {
        let base = memory.ptr() as u64;
        let end = base + memory.len() as u64;
        let mut pages = BTreeSet::new();
        guest
            .partition
            .take_dirty_log(&mut |address, len| {
                for page in (address..address + len).step_by(4096) {
                    if (base..end).contains(&page) {
                        pages.insert((page - base) / PAGE_SIZE);
                    }
                }
            })
            .unwrap();
        pages
    }

    #[test]
    fn guest_writes_are_logged_cleared_and_survive_a_slot_delete() {
        let test = "guest_writes_are_logged_cleared_and_survive_a_slot_delete";
        let Some(guest) = Guest::new(test, VcpuOptions::default()) else {
            return;
        };
        let memory = AnonMemory::mapped(MEMORY_LEN);
        let map = || {
            guest
                .partition
                .map_range(memory.ptr(), memory.len(), GIB, true, false)
                .unwrap()
        };
        map();
        fill(&guest, GIB, 8);
        assert!(
            guest.partition.take_dirty_log(&mut |_, _| {}).is_err(),
            "logging is off"
        );
        guest.partition.start_dirty_log().unwrap();
        assert!(guest.partition.dirty_logging());
        assert_eq!(written_pages(&guest, &memory), BTreeSet::new());

        fill(&guest, GIB + 5 * PAGE_SIZE, 8);
        fill(&guest, GIB + 63 * PAGE_SIZE, 1024); // pages 63 and 64
        assert_eq!(written_pages(&guest, &memory), BTreeSet::from([5, 63, 64]));
        assert_eq!(written_pages(&guest, &memory), BTreeSet::new(), "cleared");

        // The guest writes again after the clear: logged again.
        fill(&guest, GIB + 5 * PAGE_SIZE, 8);
        // A visibility change deletes the slot and maps it anew: the bits survive.
        guest.partition.unmap_range(GIB, MEMORY_LEN as u64).unwrap();
        map();
        fill(&guest, GIB + 7 * PAGE_SIZE, 8);
        assert_eq!(written_pages(&guest, &memory), BTreeSet::from([5, 7]));

        guest.partition.stop_dirty_log().unwrap();
        assert!(!guest.partition.dirty_logging());
        assert!(guest.partition.take_dirty_log(&mut |_, _| {}).is_err());
        // The slots work as before.
        fill(&guest, GIB, 8);
        assert_eq!(memory.read_u64(0), GIB ^ 0x1234);
    }

    #[test]
    fn a_continuously_writing_guest_loses_no_write_to_a_racing_take() {
        let test = "a_continuously_writing_guest_loses_no_write_to_a_racing_take";
        let Some(guest) = Guest::new(test, VcpuOptions::default()) else {
            return;
        };
        let memory = AnonMemory::mapped(MEMORY_LEN);
        guest
            .partition
            .map_range(memory.ptr(), memory.len(), GIB, true, false)
            .unwrap();
        guest.partition.start_dirty_log().unwrap();
        let pages = MEMORY_LEN as u64 / PAGE_SIZE;
        let guest = &guest;
        let memory = &memory;
        let (written, seen) = std::thread::scope(|scope| {
            let writer = scope.spawn(move || {
                let mut written = Vec::new();
                let mut page = 1u64;
                for _ in 0..400 {
                    page = (page * 37 + 11) % pages;
                    fill(guest, GIB + page * PAGE_SIZE, 1);
                    written.push(page);
                }
                written
            });
            let mut seen = BTreeSet::new();
            while !writer.is_finished() {
                seen.extend(written_pages(guest, memory));
            }
            let written = writer.join().unwrap();
            seen.extend(written_pages(guest, memory));
            (written, seen)
        });
        for page in written {
            assert!(seen.contains(&page), "the write to page {page} was lost");
        }
    }

    #[test]
    fn runs_cross_word_boundaries() {
        let mut bitmap = vec![0u64; 3];
        bitmap[0] = 1 | (1 << 63);
        bitmap[1] = 0b11;
        bitmap[2] = 1 << 5;
        let mut runs = Vec::new();
        report_runs(&bitmap, 0x10_0000, &mut |address, len| {
            runs.push((address, len))
        });
        assert_eq!(
            runs,
            vec![
                (0x10_0000, 0x1000),
                (0x10_0000 + 63 * 0x1000, 3 * 0x1000),
                (0x10_0000 + 133 * 0x1000, 0x1000)
            ]
        );
    }
}
