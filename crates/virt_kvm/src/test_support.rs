//! Test fixtures: anonymous host memory to back slots, the skip rule for machines without
//! `/dev/kvm`, and a guest with code and page tables in a low RAM slot.

// Unsafe code: the fixtures map anonymous host memory to back memory slots.
#![allow(unsafe_code)]

pub(crate) use crate::anon_memory::AnonMemory;
use crate::programs;
use crate::KvmError;
use crate::KvmPartition;
use crate::KvmPartitionOptions;
use crate::Registers;
use crate::Vcpu;
use crate::VcpuOptions;
use crate::PAGE_TABLES_SIZE;
use memory_range::MemoryRange;
use std::io::Write;
use virt::PartitionMemoryMap;

impl AnonMemory {
    /// `new`, which must succeed in a test.
    pub(crate) fn mapped(len: usize) -> Self {
        Self::new(len).unwrap_or_else(|error| panic!("mmap of {len:#x} bytes failed: {error}"))
    }

    pub(crate) fn write(&self, offset: usize, data: &[u8]) {
        assert!(offset + data.len() <= self.len());
        // SAFETY: in bounds of the live mapping (checked above); the guest does not run while
        // the tests write.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr().add(offset), data.len()) };
    }

    pub(crate) fn read(&self, offset: usize, data: &mut [u8]) {
        assert!(offset + data.len() <= self.len());
        // SAFETY: in bounds of the live mapping (checked above).
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr().add(offset), data.as_mut_ptr(), data.len())
        };
    }

    /// Takes every access right away (`PROT_NONE`) while keeping the address range reserved, so
    /// no other test thread can map something else there (as it could after a `munmap`).
    pub(crate) fn make_inaccessible(&self) {
        // SAFETY: changes the protection of exactly the mapping created in `new`; nothing reads
        // it through a reference afterwards (the accessors copy through raw pointers and the
        // tests that call this never use them again).
        let rc = unsafe { libc::mprotect(self.ptr().cast(), self.len(), libc::PROT_NONE) };
        assert_eq!(rc, 0, "mprotect(PROT_NONE) failed");
    }

    pub(crate) fn read_u64(&self, offset: usize) -> u64 {
        let mut bytes = [0; 8];
        self.read(offset, &mut bytes);
        u64::from_le_bytes(bytes)
    }

    pub(crate) fn write_u64(&self, offset: usize, value: u64) {
        self.write(offset, &value.to_le_bytes());
    }
}

/// Prints to the real stderr, past the test harness's capture, so skips show in every run.
pub(crate) fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// A partition, or `None` (after saying why) where `/dev/kvm` cannot be opened.
pub(crate) fn partition_or_skip(test: &str, options: KvmPartitionOptions) -> Option<KvmPartition> {
    match KvmPartition::create(options) {
        Ok(partition) => Some(partition),
        Err(err @ KvmError::KvmUnavailable { .. }) => {
            let cause = std::error::Error::source(&err).map_or(String::new(), |s| format!(": {s}"));
            // CI sets this where the runner offers /dev/kvm, so a skip cannot hide a regression.
            if std::env::var_os("MEMBACKING_REQUIRE_KVM").is_some_and(|v| v == "1") {
                panic!("{test} needs KVM (MEMBACKING_REQUIRE_KVM=1): {err}{cause}");
            }
            say(&format!("SKIPPED {test}: {err}{cause}"));
            None
        }
        Err(err) => panic!("creating the partition failed: {err}"),
    }
}

/// Where the guest fixture puts its programs (GPA = offset in the low slot).
pub(crate) mod at {
    pub const FILL_PATTERN: u64 = 0x1000;
    pub const SUM_QWORDS: u64 = 0x1100;
    pub const LOAD_ADD_STORE: u64 = 0x1200;
    pub const SPIN: u64 = 0x1300;
    pub const TOUCH_PAGES: u64 = 0x1400;
    pub const HALT: u64 = 0x1500;
    pub const REAL_MODE_OUT_THEN_HALT: u64 = 0x1600;
    pub const ECHO_INPUT: u64 = 0x1700;
    pub const PAGE_TABLES: u64 = 0x20_0000;
}

/// Size of the low RAM slot at GPA 0 holding code and page tables.
pub(crate) const LOW_SIZE: usize = 8 << 20;

/// A partition with a low RAM slot (programs + page tables) and one vCPU.
pub(crate) struct Guest {
    pub partition: KvmPartition,
    pub low: AnonMemory,
    pub vcpu: Vcpu,
}

impl Guest {
    /// A guest whose vCPU starts as `options` says (page tables at [`at::PAGE_TABLES`]).
    pub(crate) fn new(test: &str, mut options: VcpuOptions) -> Option<Self> {
        let partition = partition_or_skip(test, KvmPartitionOptions::default())?;
        let low = AnonMemory::mapped(LOW_SIZE);
        for (gpa, code) in [
            (at::FILL_PATTERN, programs::FILL_PATTERN),
            (at::SUM_QWORDS, programs::SUM_QWORDS),
            (at::LOAD_ADD_STORE, programs::LOAD_ADD_STORE),
            (at::SPIN, programs::SPIN),
            (at::TOUCH_PAGES, programs::TOUCH_PAGES),
            (at::HALT, programs::HALT),
            (
                at::REAL_MODE_OUT_THEN_HALT,
                programs::REAL_MODE_OUT_THEN_HALT,
            ),
            (at::ECHO_INPUT, programs::ECHO_INPUT),
        ] {
            low.write(usize::try_from(gpa).unwrap(), code);
        }
        partition
            .map_range(low.ptr(), low.len(), 0, true, true)
            .expect("map the low slot");
        if options.mode == crate::VcpuMode::Long && options.page_tables.is_none() {
            options.page_tables = Some(MemoryRange::new(
                at::PAGE_TABLES..at::PAGE_TABLES + PAGE_TABLES_SIZE,
            ));
        }
        let writer = |gpa: u64, data: &[u8]| -> Result<(), virt::Error> {
            let offset = usize::try_from(gpa)?;
            if offset + data.len() > low.len() {
                return Err("page tables outside the low slot".into());
            }
            low.write(offset, data);
            Ok(())
        };
        let vcpu = partition
            .create_vcpu(&options, &writer)
            .expect("create the vCPU");
        Some(Self {
            partition,
            low,
            vcpu,
        })
    }

    /// Sets `rip` and the registers `set` changes, keeping the rest (rflags included).
    pub(crate) fn start_at(&self, rip: u64, set: impl FnOnce(&mut Registers)) {
        let written = self
            .vcpu
            .update_registers(|registers| {
                registers.rip = rip;
                set(registers);
            })
            .expect("update registers");
        assert_eq!(self.vcpu.get_registers().expect("get registers"), written);
    }
}
