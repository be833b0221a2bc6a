//! A KVM guest on a manager for tests: a [`KvmPartition`] attached to the manager, the test
//! programs and the identity page tables written into guest RAM through the manager's guest
//! memory, and one 64-bit CPL3 vCPU to run them.

use crate::GuestMemoryManager;
use futures::executor::block_on;
use guestmem::GuestMemory;
use memory_range::MemoryRange;
use std::io::Write;
use std::sync::Arc;
use virt::PartitionMemoryMap;
use virt::Vtl;
use virt_kvm::programs;
use virt_kvm::KvmError;
use virt_kvm::KvmPartition;
use virt_kvm::KvmPartitionOptions;
use virt_kvm::Vcpu;
use virt_kvm::VcpuExit;
use virt_kvm::VcpuOptions;
use virt_kvm::PAGE_TABLES_SIZE;

/// Where the programs go (guest RAM must cover `[0, GUEST_LOW_END)`).
const FILL_AT: u64 = 0x1000;
const SUM_AT: u64 = 0x1100;
const PAGE_TABLES_AT: u64 = 0x20_0000;
/// The low RAM the fixture uses for code and page tables.
pub(crate) const GUEST_LOW_END: u64 = PAGE_TABLES_AT + PAGE_TABLES_SIZE;

/// Prints to the real stderr (past the test harness's capture), so skips show in every run.
pub(crate) fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// A KVM partition attached to a manager, with one vCPU.
pub(crate) struct KvmGuest {
    /// Kept alive here: the manager holds partitions weakly.
    _partition: Arc<KvmPartition>,
    vcpu: Vcpu,
}

impl KvmGuest {
    /// Attaches a new partition to `manager` and writes the programs and page tables, or says
    /// why the test is skipped and returns `None` when KVM is unavailable.
    pub fn attach(test: &str, manager: &GuestMemoryManager) -> Option<Self> {
        let partition = match KvmPartition::create(KvmPartitionOptions::default()) {
            Ok(partition) => Arc::new(partition),
            Err(error @ KvmError::KvmUnavailable { .. }) => {
                say(&format!("SKIPPED {test}: {error}"));
                return None;
            }
            Err(error) => panic!("creating the KVM partition failed: {error}"),
        };
        let as_map: Arc<dyn PartitionMemoryMap> = partition.clone();
        block_on(manager.attach_partition(Vtl::Vtl0, &as_map, None)).expect("attach");
        let memory = block_on(manager.client().guest_memory()).expect("guest memory");
        Self::load_programs(&memory);
        let options = VcpuOptions::long(MemoryRange::new(
            PAGE_TABLES_AT..PAGE_TABLES_AT + PAGE_TABLES_SIZE,
        ));
        let writer = |gpa: u64, data: &[u8]| -> Result<(), virt::Error> {
            memory.write_at(gpa, data).map_err(Into::into)
        };
        let vcpu = partition.create_vcpu(&options, &writer).expect("vCPU");
        Some(Self {
            _partition: partition,
            vcpu,
        })
    }

    /// Writes the programs into guest RAM (again, e.g. after a restore that did not hold them).
    pub fn load_programs(memory: &GuestMemory) {
        for (gpa, code) in [
            (FILL_AT, programs::FILL_PATTERN),
            (SUM_AT, programs::SUM_QWORDS),
        ] {
            memory.write_at(gpa, code).expect("write a program");
        }
    }

    fn run_to_done(&self, mut on_out: impl FnMut(u16, &[u8])) {
        loop {
            match self.vcpu.run(None).expect("run") {
                VcpuExit::IoOut { port, .. } if port == programs::DONE_PORT => return,
                VcpuExit::IoOut { port, data } => on_out(port, &data),
                other => panic!("unexpected exit {other:?}"),
            }
        }
    }

    fn start(&self, rip: u64, rdi: u64, rcx: u64, rdx: u64, rsi: u64) {
        self.vcpu
            .update_registers(|r| {
                r.rip = rip;
                r.rdi = rdi;
                r.rcx = rcx;
                r.rdx = rdx;
                r.rsi = rsi;
            })
            .expect("registers");
    }

    /// The guest writes `qwords` qwords from `gpa` with `address ^ key`.
    pub fn fill(&self, gpa: u64, qwords: u64, key: u64) {
        self.start(FILL_AT, gpa, qwords, key, 0);
        self.run_to_done(|port, _| panic!("unexpected port write {port:#x}"));
    }

    /// The guest sums `qwords` qwords from `gpa` (wrapping) and reports the sum.
    pub fn sum(&self, gpa: u64, qwords: u64) -> u64 {
        self.start(SUM_AT, gpa, qwords, 0, 0);
        let mut halves = Vec::new();
        self.run_to_done(|port, data| {
            assert_eq!(port, programs::RESULT_PORT);
            halves.push(u32::from_le_bytes(data.try_into().expect("4 bytes")));
        });
        assert_eq!(halves.len(), 2);
        u64::from(halves[0]) | (u64::from(halves[1]) << 32)
    }
}
