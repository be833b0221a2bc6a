//! [`KvmError`]: every error of the KVM partition and the vCPU runner.
//!
//! The binding's error table (`js_api::errors`, see `docs/design.md`, "Errors") gives each
//! variant its JavaScript class and code: `KvmUnavailable` → `ERR_KVM_UNAVAILABLE`, …

use memory_range::MemoryRange;
use std::io;

/// An error of [`KvmPartition`](crate::KvmPartition) or [`Vcpu`](crate::Vcpu).
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// `/dev/kvm` could not be opened, or the VM could not be created.
    #[error("KVM is not available: {what}")]
    KvmUnavailable {
        /// What failed (`open /dev/kvm`, `KVM_CREATE_VM`).
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A KVM ioctl failed.
    #[error("KVM ioctl {ioctl} failed")]
    KvmIoctl {
        /// The ioctl (`KVM_SET_USER_MEMORY_REGION`, `KVM_SET_SREGS`, …).
        ioctl: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The dirty log was read while dirty-page logging was off.
    #[error("dirty-page logging is off: start it before reading the dirty log")]
    DirtyLogOff,
    /// A host memory call (`madvise`, `mlock`, `sigaction`, `timer_create`, …) failed.
    #[error("{call} failed for {what}")]
    HostCall {
        /// The system call.
        call: &'static str,
        /// What it was for.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A map request overlaps a memory slot that already exists.
    #[error("range {gpa:#x}-{end:#x} overlaps memory slot {slot} at {slot_gpa:#x}-{slot_end:#x}", end = gpa.wrapping_add(*size), slot_end = slot_gpa.wrapping_add(*slot_size))]
    SlotOverlap {
        /// Start of the requested range.
        gpa: u64,
        /// Length of the requested range.
        size: u64,
        /// The slot it overlaps.
        slot: u32,
        /// Start of that slot.
        slot_gpa: u64,
        /// Length of that slot.
        slot_size: u64,
    },
    /// An unmap request covers only part of a memory slot (slots are never split).
    #[error("unmap of {gpa:#x}-{end:#x} covers only part of memory slot {slot} at {slot_gpa:#x}-{slot_end:#x}", end = gpa.wrapping_add(*size), slot_end = slot_gpa.wrapping_add(*slot_size))]
    PartialSlotUnmap {
        /// Start of the requested range.
        gpa: u64,
        /// Length of the requested range.
        size: u64,
        /// The slot it cuts.
        slot: u32,
        /// Start of that slot.
        slot_gpa: u64,
        /// Length of that slot.
        slot_size: u64,
    },
    /// Every memory slot the kernel offers is in use.
    #[error("no free memory slot (the VM offers {max_slots})")]
    NoFreeSlot {
        /// How many slots the VM offers (`KVM_CAP_NR_MEMSLOTS`).
        max_slots: u32,
    },
    /// A map request that KVM cannot express: GPA, size or host address not 4 KiB aligned, or
    /// the range wraps past 2^64.
    #[error("memory slot range {gpa:#x}+{size:#x} at host address {host_address:#x} is not page aligned or overflows")]
    InvalidSlotRange {
        /// Requested GPA.
        gpa: u64,
        /// Requested size.
        size: u64,
        /// Requested host address.
        host_address: u64,
    },
    /// The VM has created as many vCPUs as KVM allows it. Closed vCPUs count: KVM keeps every
    /// vCPU until the VM is destroyed, so a vCPU id is never free again.
    #[error(
        "this VM has created {limit} vCPUs, the most KVM allows a VM (KVM_CAP_MAX_VCPUS): closed \
         vCPUs count too, since KVM keeps every vCPU until the VM is destroyed; create another \
         KvmPartition for more vCPUs"
    )]
    TooManyVcpus {
        /// vCPUs a VM may create (the smaller of `KVM_CAP_MAX_VCPUS` and `KVM_CAP_MAX_VCPU_ID`).
        limit: u32,
    },
    /// A read-only mapping was requested but the kernel lacks `KVM_CAP_READONLY_MEM`.
    #[error("read-only memory slots are not supported by this KVM")]
    ReadOnlyUnsupported,
    /// The vCPU is running (or another thread holds it): registers and reads cannot be changed,
    /// and it cannot be run twice at once.
    #[error("the vCPU is busy running on another thread")]
    VcpuBusy,
    /// The vCPU (or its partition) was closed: its fd is released.
    #[error("Vcpu is closed")]
    VcpuClosed,
    /// `run()` was called while an MMIO read or port input still waits for its value.
    #[error("the vCPU waits for the value of its pending {kind} of {size} bytes at {address:#x}: complete the read first")]
    VcpuReadPending {
        /// `MMIO read` or `port input`.
        kind: &'static str,
        /// Address or port.
        address: u64,
        /// Bytes expected.
        size: usize,
    },
    /// Registers were written between an MMIO read or port input exit and the run that
    /// delivers its value: KVM finishes the read on that run and would lose the value (or
    /// mix it with the new registers).
    #[error(
        "the vCPU's registers cannot be set while its {kind} of {size} bytes at {address:#x} is \
         pending: {}",
        if *completed {
            "the value is given, run() the vCPU once to deliver it, then set the registers"
        } else {
            "complete the read with its value and run() the vCPU once, then set the registers"
        }
    )]
    RegistersWhileReadPending {
        /// `MMIO read` or `port input`.
        kind: &'static str,
        /// Address or port.
        address: u64,
        /// Bytes expected.
        size: usize,
        /// The value was given already (it is delivered by the next run).
        completed: bool,
    },
    /// A read was completed while none was pending.
    #[error("the vCPU has no pending MMIO read or port input to complete")]
    NoPendingRead,
    /// A read wider than 8 bytes (string port input) was completed with a number.
    #[error(
        "the pending read is {size} bytes, more than a number gives (8 at most): complete it \
         with exactly {size} bytes"
    )]
    ValueForWideRead {
        /// Bytes expected.
        size: usize,
    },
    /// A read was completed with the wrong number of bytes.
    #[error("the pending read expects {expected} bytes, got {actual}")]
    ReadSizeMismatch {
        /// Bytes the guest reads.
        expected: usize,
        /// Bytes supplied.
        actual: usize,
    },
    /// A read was completed with a value that does not fit the bytes the guest reads.
    #[error(
        "the pending read is {size} bytes, so its value must be below 2^{bits}, got {value:#x}: \
         complete it with a value of that size (or with exactly {size} bytes)",
        bits = 8 * size
    )]
    ReadValueTooLarge {
        /// Bytes the guest reads.
        size: usize,
        /// The value supplied.
        value: u64,
    },
    /// Long mode needs a page-table range; it was missing or too small.
    #[error(
        "long mode needs a page-table range of at least {needed:#x} bytes in guest RAM, got {}: \
         pass pageTables, a page-aligned range of guest RAM that the guest does not use",
        given_page_tables(range)
    )]
    InvalidPageTables {
        /// The range given, if any.
        range: Option<MemoryRange>,
        /// The size needed ([`crate::PAGE_TABLES_SIZE`]).
        needed: u64,
    },
    /// Writing the page tables into guest memory failed (e.g. the range is not RAM).
    #[error("failed to write the vCPU page tables at {gpa:#x}")]
    PageTableWrite {
        /// Where the write went.
        gpa: u64,
        /// The guest-memory writer's error.
        #[source]
        source: virt::Error,
    },
    /// A privilege level other than 0 or 3 was requested.
    #[error("unsupported privilege level {0} (use 0 or 3)")]
    InvalidCpl(u8),
    /// A Real-mode vCPU was given an option that only Long mode has (page tables, CPL 3).
    #[error(
        "{option} applies to Long mode only: a Real-mode vCPU runs at privilege level 0 \
         without paging; leave {option} out or use mode 'Long'"
    )]
    LongModeOnly {
        /// The option's name (`pageTables`, `cpl`).
        option: &'static str,
    },
}

impl KvmError {
    pub(crate) fn ioctl(ioctl: &'static str, source: impl Into<io::Error>) -> Self {
        KvmError::KvmIoctl {
            ioctl,
            source: source.into(),
        }
    }
}

/// The page-table range of [`KvmError::InvalidPageTables`] as a user reads it.
fn given_page_tables(range: &Option<MemoryRange>) -> String {
    match range {
        None => "none".to_owned(),
        Some(range) => format!("{range} ({:#x} bytes)", range.len()),
    }
}
