//! A benchmark baseline, not used by the partition: the raw cost of changing one memory slot
//! with plain `kvm-ioctls` calls, without this crate's slot table or a memory manager. The
//! JavaScript benchmarks set `KvmPartition`'s map and unmap against it (`bench/kvm.bench.js`);
//! the binding exports it only when built with its `bench` feature.

// Unsafe code: the slot names host memory by address (KVM_SET_USER_MEMORY_REGION).
#![allow(unsafe_code)]

use crate::anon_memory::AnonMemory;
use crate::partition::disable_slot_zap_all_quirk;
use crate::KvmError;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::Kvm;
use std::num::NonZeroU32;
use std::time::Duration;
use std::time::Instant;

/// Far above anything a guest of the VM would use (the VM has no vCPU anyway).
const SCRATCH_GPA: u64 = 1 << 40;

/// Times `pairs` rounds of one `KVM_SET_USER_MEMORY_REGION` delete and one create of a scratch
/// slot of `size` bytes (a non-zero multiple of 4 KiB, at most 1 TiB) on a VM of its own, with
/// `KVM_X86_QUIRK_SLOT_ZAP_ALL` off where offered (as `KvmPartition` does). Returns the time per
/// delete+create pair.
pub fn raw_slot_churn(size: u64, pairs: NonZeroU32) -> Result<Duration, KvmError> {
    let invalid = || KvmError::InvalidSlotRange {
        gpa: SCRATCH_GPA,
        size,
        host_address: 0,
    };
    if size == 0 || size & 0xfff != 0 || size > 1 << 40 {
        return Err(invalid());
    }
    let len = usize::try_from(size).map_err(|_| invalid())?;
    // Declared before the VM so that it is dropped after it.
    let memory = AnonMemory::new(len).map_err(|source| KvmError::HostCall {
        call: "mmap",
        what: "the scratch slot".to_owned(),
        source,
    })?;
    let unavailable = |what: &'static str| {
        move |error: kvm_ioctls::Error| KvmError::KvmUnavailable {
            what: what.to_owned(),
            source: error.into(),
        }
    };
    let kvm = Kvm::new().map_err(unavailable("open /dev/kvm"))?;
    let vm = kvm.create_vm().map_err(unavailable("KVM_CREATE_VM"))?;
    disable_slot_zap_all_quirk(&vm);
    let region = |memory_size| kvm_userspace_memory_region {
        slot: 1,
        flags: 0,
        guest_phys_addr: SCRATCH_GPA,
        memory_size,
        userspace_addr: memory.ptr() as u64,
    };
    let set = |memory_size| {
        // SAFETY: the slot names `memory`, which outlives the VM (declared first); the VM has
        // no vCPU, so KVM reaches the memory only through user copies, never as a fault here.
        unsafe { vm.set_user_memory_region(region(memory_size)) }
            .map_err(|error| KvmError::ioctl("KVM_SET_USER_MEMORY_REGION", error))
    };
    set(size)?;
    let start = Instant::now();
    for _ in 0..pairs.get() {
        set(0)?;
        set(size)?;
    }
    Ok(start.elapsed() / pairs.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_baseline_times_slot_changes_or_says_why_not() {
        let pairs = NonZeroU32::new(3).unwrap();
        match raw_slot_churn(0x4000, pairs) {
            Ok(per_pair) => assert!(per_pair > Duration::ZERO),
            Err(error @ KvmError::KvmUnavailable { .. }) => {
                crate::test_support::say(&format!(
                    "SKIPPED the_baseline_times_slot_changes_or_says_why_not: {error}"
                ));
            }
            Err(error) => panic!("{error}"),
        }
        for bad in [0, 0x1001, (1 << 40) + 0x1000] {
            assert!(matches!(
                raw_slot_churn(bad, pairs),
                Err(KvmError::InvalidSlotRange { .. })
            ));
        }
    }
}
