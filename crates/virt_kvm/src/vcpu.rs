//! A minimal vCPU runner: create a vCPU in real mode or 64-bit long mode, read and write its
//! registers, and run it until the next exit the caller has to handle.
//!
//! Long mode runs on identity-mapped 2 MiB pages covering 512 GiB ([`crate::page_tables`]),
//! written into a guest-RAM range the caller names through [`WriteGuestMemory`] (so it works
//! with any guest-memory object, e.g. `guestmem::GuestMemory` via a closure). By default the
//! guest runs at CPL 3 with IOPL 3 (port I/O allowed): on a software hypervisor such as PVM
//! that is the one mode that runs natively; CPL 0 is available for `hlt` and friends.
//!
//! [`Vcpu::run`] may be called on any thread (the JavaScript binding calls it off the JS
//! thread) but only one at a time; it returns on the next MMIO access, port access, `hlt`,
//! shutdown, failure, [`Vcpu::cancel`] or timeout. Cancel and timeout use a signal aimed at the
//! running thread; see [`crate::cancel_signal`] for why no cancel can be lost.

// Unsafe code: the vCPU's run area is mapped shared memory, and page tables are written into guest
// memory.
#![allow(unsafe_code)]

use crate::cancel_signal;
use crate::cancel_signal::ThreadTimer;
use crate::page_tables;
use crate::page_tables::PAGE_TABLES_SIZE;
use crate::KvmError;
use crate::KvmPartition;
use kvm_bindings::kvm_regs;
use kvm_bindings::kvm_segment;
use kvm_ioctls::VcpuExit as KvmExit;
use kvm_ioctls::VcpuFd;
use memory_range::MemoryRange;
use parking_lot::Mutex;
use serde::Serialize;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// The execution mode a vCPU starts in.
#[derive(Debug, Copy, Clone, PartialEq, Eq, Serialize)]
pub enum VcpuMode {
    /// 16-bit real mode, CS base 0 (so `rip` is the linear address). Emulated, hence slow, on
    /// software hypervisors: keep real-mode programs tiny.
    Real,
    /// 64-bit long mode on the identity map.
    Long,
}

/// How to set a vCPU up.
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub struct VcpuOptions {
    /// The mode. Default [`VcpuMode::Long`].
    pub mode: VcpuMode,
    /// Long mode only (Real mode refuses one): the guest-RAM range (at least
    /// [`PAGE_TABLES_SIZE`] bytes) that receives the page tables; CR3 points at its start.
    pub page_tables: Option<MemoryRange>,
    /// Long mode only (Real mode needs 0): the privilege level, 3 (default, with IOPL 3) or 0.
    /// At CPL 3 ports up to
    /// [`page_tables::TSS_LAST_PORT`] work on every KVM; one that checks the TSS I/O bitmap
    /// despite IOPL 3 (PVM) traps the higher ones (a `Shutdown`: there is no IDT).
    pub cpl: u8,
}

impl Default for VcpuOptions {
    fn default() -> Self {
        Self {
            mode: VcpuMode::Long,
            page_tables: None,
            cpl: 3,
        }
    }
}

impl VcpuOptions {
    /// Real mode.
    pub fn real() -> Self {
        Self {
            mode: VcpuMode::Real,
            page_tables: None,
            cpl: 0,
        }
    }

    /// Long mode at CPL 3, page tables in `page_tables`.
    pub fn long(page_tables: MemoryRange) -> Self {
        Self {
            mode: VcpuMode::Long,
            page_tables: Some(page_tables),
            cpl: 3,
        }
    }
}

/// Writes bytes into guest physical memory: how the runner places its page tables.
///
/// Implemented for every `Fn(u64, &[u8]) -> Result<(), virt::Error>`, e.g.
/// `&|gpa: u64, data: &[u8]| guest_memory.write_at(gpa, data).map_err(Into::into)`.
pub trait WriteGuestMemory {
    /// Writes `data` at `gpa`.
    fn write_guest(&self, gpa: u64, data: &[u8]) -> Result<(), virt::Error>;

    /// `Ok` when `gpa..gpa + len` is guest memory this writer can write (the whole page-table
    /// range a caller names is checked, not only the part the tables fill). By default
    /// everything is, and `write_guest` reports what is not.
    fn check_writable(&self, gpa: u64, len: u64) -> Result<(), virt::Error> {
        let _ = (gpa, len);
        Ok(())
    }
}

impl<F> WriteGuestMemory for F
where
    F: Fn(u64, &[u8]) -> Result<(), virt::Error>,
{
    fn write_guest(&self, gpa: u64, data: &[u8]) -> Result<(), virt::Error> {
        self(gpa, data)
    }
}

/// The general registers, `rip` and `rflags`.
#[derive(Debug, Copy, Clone, Default, PartialEq, Eq, Serialize)]
#[allow(missing_docs)]
pub struct Registers {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
}

impl Registers {
    /// The register names, in the order of [`Registers::values`].
    pub const NAMES: [&'static str; 18] = [
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15", "rip", "rflags",
    ];

    /// The values, in the order of [`Registers::NAMES`].
    pub fn values(&self) -> [u64; 18] {
        let r = self;
        [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15, r.rip, r.rflags,
        ]
    }

    /// The register named `name` (one of [`Registers::NAMES`]).
    pub fn named(&mut self, name: &str) -> Option<&mut u64> {
        let r = self;
        Some(match name {
            "rax" => &mut r.rax,
            "rbx" => &mut r.rbx,
            "rcx" => &mut r.rcx,
            "rdx" => &mut r.rdx,
            "rsi" => &mut r.rsi,
            "rdi" => &mut r.rdi,
            "rsp" => &mut r.rsp,
            "rbp" => &mut r.rbp,
            "r8" => &mut r.r8,
            "r9" => &mut r.r9,
            "r10" => &mut r.r10,
            "r11" => &mut r.r11,
            "r12" => &mut r.r12,
            "r13" => &mut r.r13,
            "r14" => &mut r.r14,
            "r15" => &mut r.r15,
            "rip" => &mut r.rip,
            "rflags" => &mut r.rflags,
            _ => return None,
        })
    }
}

impl From<kvm_regs> for Registers {
    fn from(r: kvm_regs) -> Self {
        Self {
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            rsp: r.rsp,
            rbp: r.rbp,
            r8: r.r8,
            r9: r.r9,
            r10: r.r10,
            r11: r.r11,
            r12: r.r12,
            r13: r.r13,
            r14: r.r14,
            r15: r.r15,
            rip: r.rip,
            rflags: r.rflags,
        }
    }
}

impl From<Registers> for kvm_regs {
    fn from(r: Registers) -> Self {
        Self {
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            rsp: r.rsp,
            rbp: r.rbp,
            r8: r.r8,
            r9: r.r9,
            r10: r.r10,
            r11: r.r11,
            r12: r.r12,
            r13: r.r13,
            r14: r.r14,
            r15: r.r15,
            rip: r.rip,
            rflags: r.rflags,
        }
    }
}

/// Why a run was stopped from outside.
#[derive(Debug, Copy, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CancelReason {
    /// [`Vcpu::cancel`].
    Cancel,
    /// The run's timeout expired.
    Timeout,
}

/// Why [`Vcpu::run`] returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum VcpuExit {
    /// The guest read `size` bytes at `address`, where no slot is mapped: supply the value
    /// with [`Vcpu::complete_read`] before the next run.
    MmioRead {
        /// The guest physical address.
        address: u64,
        /// Bytes read (1, 2, 4 or 8).
        size: usize,
    },
    /// The guest wrote `data` at `address`, where no slot or a read-only slot is mapped.
    MmioWrite {
        /// The guest physical address.
        address: u64,
        /// The bytes written, little-endian.
        data: Vec<u8>,
    },
    /// The guest read `size` bytes from `port`: supply them with [`Vcpu::complete_read`]
    /// before the next run.
    IoIn {
        /// The port.
        port: u16,
        /// Bytes read (access size × repeat count).
        size: usize,
    },
    /// The guest wrote `data` to `port`.
    IoOut {
        /// The port.
        port: u16,
        /// The bytes written (access size × repeat count), little-endian.
        data: Vec<u8>,
    },
    /// The guest executed `hlt`.
    Hlt,
    /// The guest shut down (e.g. a triple fault: there is no IDT).
    Shutdown,
    /// [`Vcpu::cancel`] or the timeout stopped the run.
    Cancelled(CancelReason),
    /// KVM could not run the guest; `reason` says why (e.g. `KVM_RUN` failing with `EFAULT`
    /// because a slot's host memory is gone, an entry failure, an emulation failure).
    Failure {
        /// What happened, in words.
        reason: String,
    },
}

/// A pending guest read that [`Vcpu::complete_read`] has to satisfy.
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
struct PendingRead {
    port_io: bool,
    address: u64,
    size: usize,
    completed: bool,
}

impl PendingRead {
    /// `MMIO read` or `port input`, for messages.
    fn kind(&self) -> &'static str {
        if self.port_io {
            "port input"
        } else {
            "MMIO read"
        }
    }
}

/// Cancel bookkeeping shared between a vCPU, its cancellers and its partition.
#[derive(Debug, Default)]
pub(crate) struct CancelState {
    requested: AtomicBool,
    /// The thread inside [`Vcpu::run`], if any; cleared under this lock before the run returns,
    /// so a thread id found here is alive while the lock is held.
    running_thread: Mutex<Option<libc::pthread_t>>,
}

impl CancelState {
    pub(crate) fn cancel(&self) {
        self.requested.store(true, Ordering::SeqCst);
        let running = self.running_thread.lock();
        if let Some(thread) = *running {
            if let Ok(signal) = cancel_signal::cancel_signal() {
                cancel_signal::kick(thread, signal);
            }
        }
    }

    fn take_request(&self) -> bool {
        self.requested.swap(false, Ordering::SeqCst)
    }
}

/// Registers the current thread as the running one until dropped.
struct RunningThread<'a>(&'a CancelState);

impl<'a> RunningThread<'a> {
    fn register(state: &'a CancelState) -> Self {
        // SAFETY: pthread_self has no preconditions.
        *state.running_thread.lock() = Some(unsafe { libc::pthread_self() });
        Self(state)
    }
}

impl Drop for RunningThread<'_> {
    fn drop(&mut self) {
        *self.0.running_thread.lock() = None;
    }
}

/// A handle that cancels a vCPU's run from any thread (cheap to clone, `Send + Sync`).
#[derive(Debug, Clone)]
pub struct VcpuCanceller(Arc<CancelState>);

impl VcpuCanceller {
    /// See [`Vcpu::cancel`].
    pub fn cancel(&self) {
        self.0.cancel();
    }
}

#[derive(Debug)]
struct VcpuInner {
    fd: VcpuFd,
    pending: Option<PendingRead>,
    /// The signal mask last given to KVM_SET_SIGNAL_MASK.
    kvm_signal_mask: Option<u64>,
}

/// Called once when a vCPU is closed.
type CloseHook = Box<dyn FnOnce() + Send>;

/// Whether the vCPU is closed, and what to call when it is.
#[derive(Default)]
struct CloseGate {
    closed: bool,
    on_close: Vec<CloseHook>,
}

impl std::fmt::Debug for CloseGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloseGate")
            .field("closed", &self.closed)
            .field("on_close", &self.on_close.len())
            .finish()
    }
}

/// The state of a vCPU that its partition reaches too (to cancel and to close it).
#[derive(Debug)]
pub(crate) struct VcpuShared {
    cancel: Arc<CancelState>,
    /// Every acquisition and release of `inner` happens under this lock, so a close either
    /// finds `inner` free and drops the fd at once, or its holder drops the fd on release.
    gate: Mutex<CloseGate>,
    /// The fd and run state; `None` once closed (the fd is released).
    inner: Mutex<Option<VcpuInner>>,
}

/// A held `inner` of a vCPU; on drop it releases the fd too if the vCPU was closed meanwhile.
struct HeldInner<'a> {
    shared: &'a VcpuShared,
    guard: Option<parking_lot::MutexGuard<'a, Option<VcpuInner>>>,
}

impl Drop for HeldInner<'_> {
    fn drop(&mut self) {
        let gate = self.shared.gate.lock();
        if let Some(mut guard) = self.guard.take() {
            if gate.closed {
                *guard = None;
            }
        }
    }
}

impl VcpuShared {
    fn new(inner: VcpuInner) -> Self {
        Self {
            cancel: Arc::new(CancelState::default()),
            gate: Mutex::new(CloseGate::default()),
            inner: Mutex::new(Some(inner)),
        }
    }

    /// Holds the vCPU while `f` runs: [`KvmError::VcpuClosed`] once closed,
    /// [`KvmError::VcpuBusy`] while another caller holds it.
    fn with_inner<R>(
        &self,
        f: impl FnOnce(&mut VcpuInner) -> Result<R, KvmError>,
    ) -> Result<R, KvmError> {
        let mut held = {
            let gate = self.gate.lock();
            if gate.closed {
                return Err(KvmError::VcpuClosed);
            }
            let guard = self.inner.try_lock().ok_or(KvmError::VcpuBusy)?;
            HeldInner {
                shared: self,
                guard: Some(guard),
            }
        };
        match held.guard.as_mut().and_then(|guard| guard.as_mut()) {
            Some(inner) => f(inner),
            None => Err(KvmError::VcpuClosed),
        }
    }

    /// Cancels a run in flight and releases the fd: now if the vCPU is idle, else when the
    /// run (or register access) holding it returns. Then calls the close hooks. Idempotent.
    pub(crate) fn close(&self) {
        let hooks = {
            let mut gate = self.gate.lock();
            if gate.closed {
                return;
            }
            gate.closed = true;
            if let Some(mut idle) = self.inner.try_lock() {
                *idle = None;
            }
            std::mem::take(&mut gate.on_close)
        };
        self.cancel.cancel();
        for hook in hooks {
            hook();
        }
    }

    pub(crate) fn cancel(&self) {
        self.cancel.cancel();
    }

    fn is_closed(&self) -> bool {
        self.gate.lock().closed
    }

    /// Whether a thread is inside a run (for tests: polling register access for `VcpuBusy`
    /// instead would hold the vCPU for a moment, and a run starting then fails as busy).
    #[cfg(test)]
    pub(crate) fn in_run(&self) -> bool {
        self.cancel.running_thread.lock().is_some()
    }

    /// Whether the fd is released (for tests: closed and no holder left).
    #[cfg(test)]
    pub(crate) fn fd_released(&self) -> bool {
        self.inner.try_lock().is_some_and(|inner| inner.is_none())
    }
}

/// One vCPU of a [`KvmPartition`]. `Send + Sync`; see the module docs for threading.
///
/// [`Vcpu::close`] (or [`KvmPartition::close_vcpus`], or dropping it) releases the vCPU's fd;
/// the kernel destroys the VM once every vCPU fd and the partition are gone.
#[derive(Debug)]
pub struct Vcpu {
    id: u32,
    mode: VcpuMode,
    shared: Arc<VcpuShared>,
}

/// `_IOW(KVMIO, 0x8b, struct kvm_signal_mask)` (the struct's fixed part is 4 bytes).
const KVM_SET_SIGNAL_MASK: libc::c_ulong = 0x4004_ae8b;

/// `struct kvm_signal_mask` with room for the x86-64 kernel's 8-byte sigset.
#[repr(C)]
struct KvmSignalMask {
    len: u32,
    sigset: [u8; 8],
}

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_AM: u64 = 1 << 18;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_FIXED: u64 = 1 << 1;
const RFLAGS_IOPL3: u64 = 3 << 12;

impl KvmPartition {
    /// Creates the next vCPU (ids count up from 0) and sets it up for `options.mode`.
    ///
    /// A VM creates at most [`KvmPartition::max_vcpus`] vCPUs over its life: KVM keeps a closed
    /// vCPU until the VM is destroyed, so closed ones count ([`KvmError::TooManyVcpus`]).
    ///
    /// In long mode the page tables are written through `guest_memory` into
    /// `options.page_tables`, which must lie in guest RAM (mapped in this partition before the
    /// first run). Real mode ignores `guest_memory`. `rip` and the other general registers
    /// start at 0 except `rflags` (bit 1, plus IOPL 3 at CPL 3): set them with
    /// [`Vcpu::set_registers`] before running.
    pub fn create_vcpu(
        &self,
        options: &VcpuOptions,
        guest_memory: &dyn WriteGuestMemory,
    ) -> Result<Vcpu, KvmError> {
        if options.cpl != 0 && options.cpl != 3 {
            return Err(KvmError::InvalidCpl(options.cpl));
        }
        if options.mode == VcpuMode::Real {
            if options.page_tables.is_some() {
                return Err(KvmError::LongModeOnly {
                    option: "pageTables",
                });
            }
            if options.cpl != 0 {
                return Err(KvmError::LongModeOnly { option: "cpl" });
            }
        }
        let page_tables = match options.mode {
            VcpuMode::Real => None,
            VcpuMode::Long => match options.page_tables {
                Some(range) if range.len() >= PAGE_TABLES_SIZE => Some(range),
                range => {
                    return Err(KvmError::InvalidPageTables {
                        range,
                        needed: PAGE_TABLES_SIZE,
                    })
                }
            },
        };
        if let Some(range) = page_tables {
            // Written before any lock is taken: the writer may be a guest-memory object that
            // waits on the memory manager, which in turn may call into this partition.
            let base = range.start();
            guest_memory
                .check_writable(base, range.len())
                .map_err(|source| KvmError::PageTableWrite { gpa: base, source })?;
            let tables = page_tables::identity_map(base);
            guest_memory
                .write_guest(base, &tables)
                .map_err(|source| KvmError::PageTableWrite { gpa: base, source })?;
        }
        let page_tables = page_tables.map(|range| range.start());
        let mut vcpus = self.vcpus.lock();
        let id = u32::try_from(vcpus.len()).map_err(|_| {
            KvmError::ioctl(
                "KVM_CREATE_VCPU",
                io::Error::from_raw_os_error(libc::ENOSPC),
            )
        })?;
        if id >= self.max_vcpus() {
            return Err(KvmError::TooManyVcpus {
                limit: self.max_vcpus(),
            });
        }
        let fd = self
            .vm
            .create_vcpu(id.into())
            .map_err(|e| KvmError::ioctl("KVM_CREATE_VCPU", e))?;
        let cpuid = self
            .kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| KvmError::ioctl("KVM_GET_SUPPORTED_CPUID", e))?;
        fd.set_cpuid2(&cpuid)
            .map_err(|e| KvmError::ioctl("KVM_SET_CPUID2", e))?;
        let mut sregs = fd
            .get_sregs()
            .map_err(|e| KvmError::ioctl("KVM_GET_SREGS", e))?;
        let mut rflags = RFLAGS_FIXED;
        match page_tables {
            None => {
                // Real mode: the reset state, but CS based at 0 so rip is the address.
                sregs.cs.base = 0;
                sregs.cs.selector = 0;
            }
            Some(base) => {
                let cpl = options.cpl;
                sregs.cr3 = base;
                sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
                sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG;
                sregs.efer = EFER_LME | EFER_LMA;
                let code = kvm_segment {
                    base: 0,
                    limit: 0xffff_ffff,
                    // GDT index 1 (CPL 0) or 3 (CPL 3), RPL = CPL; no GDT is needed as long as
                    // the guest does not reload segments.
                    selector: if cpl == 3 { 0x1b } else { 0x08 },
                    type_: 11, // execute/read, accessed
                    present: 1,
                    dpl: cpl,
                    db: 0,
                    s: 1,
                    l: 1,
                    g: 1,
                    ..Default::default()
                };
                let data = kvm_segment {
                    selector: if cpl == 3 { 0x23 } else { 0x10 },
                    type_: 3, // read/write, accessed
                    db: 1,
                    l: 0,
                    ..code
                };
                sregs.cs = code;
                sregs.ds = data;
                sregs.es = data;
                sregs.fs = data;
                sregs.gs = data;
                sregs.ss = data;
                // A busy 64-bit TSS, as VT-x requires for a 64-bit guest. It lies in the page
                // tables (zeros in the PML4 page): some KVMs (PVM) check its I/O permission
                // bitmap for port I/O at CPL 3 despite IOPL 3, and a TSS at GPA 0 made the
                // guest's own bytes there decide which ports trapped (a triple fault).
                let (tss_base, tss_limit) = if base + 4096 <= page_tables::IDENTITY_MAPPED_LIMIT {
                    (base + page_tables::TSS_OFFSET, page_tables::TSS_LIMIT)
                } else {
                    // Tables above the identity map: the TSS would not be addressable there.
                    (0, 0x67)
                };
                sregs.tr = kvm_segment {
                    base: tss_base,
                    limit: tss_limit,
                    selector: 0,
                    type_: 11,
                    present: 1,
                    s: 0,
                    ..Default::default()
                };
                if cpl == 3 {
                    rflags |= RFLAGS_IOPL3;
                }
            }
        }
        fd.set_sregs(&sregs)
            .map_err(|e| KvmError::ioctl("KVM_SET_SREGS", e))?;
        fd.set_regs(&kvm_regs {
            rflags,
            ..Default::default()
        })
        .map_err(|e| KvmError::ioctl("KVM_SET_REGS", e))?;
        let shared = Arc::new(VcpuShared::new(VcpuInner {
            fd,
            pending: None,
            kvm_signal_mask: None,
        }));
        vcpus.push(Arc::downgrade(&shared));
        Ok(Vcpu {
            id,
            mode: options.mode,
            shared,
        })
    }
}

impl Vcpu {
    /// The vCPU index within its partition.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The mode it was created in.
    pub fn mode(&self) -> VcpuMode {
        self.mode
    }

    /// Cancels a run in flight and releases the vCPU's fd: at once when it is idle, else as
    /// the run returns. Every later call fails with [`KvmError::VcpuClosed`]. Idempotent.
    pub fn close(&self) {
        self.shared.close();
    }

    /// Whether [`Vcpu::close`] or [`KvmPartition::close_vcpus`] closed it.
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// Calls `hook` once when the vCPU is closed (at once if it already is).
    pub(crate) fn on_close(&self, hook: impl FnOnce() + Send + 'static) {
        let mut gate = self.shared.gate.lock();
        if gate.closed {
            drop(gate);
            hook();
        } else {
            gate.on_close.push(Box::new(hook));
        }
    }

    /// The shared state, for tests.
    #[cfg(test)]
    pub(crate) fn shared(&self) -> &Arc<VcpuShared> {
        &self.shared
    }

    /// Reads the registers. `rip` at an exit is as the hypervisor reports it: past the exiting
    /// instruction on some KVMs, on it on others until the next run. Fails with
    /// [`KvmError::VcpuBusy`] while the vCPU runs.
    pub fn get_registers(&self) -> Result<Registers, KvmError> {
        self.shared.with_inner(|inner| {
            let regs = inner
                .fd
                .get_regs()
                .map_err(|e| KvmError::ioctl("KVM_GET_REGS", e))?;
            Ok(regs.into())
        })
    }

    /// Writes the registers (all of them: read, modify, write to change a few; keep IOPL 3 in
    /// `rflags` for port I/O at CPL 3). Fails with [`KvmError::VcpuBusy`] while the vCPU runs
    /// and with [`KvmError::RegistersWhileReadPending`] from an [`VcpuExit::MmioRead`] or
    /// [`VcpuExit::IoIn`] exit until the run that delivers its value: KVM finishes the read on
    /// that run, and a register write before it loses the value.
    pub fn set_registers(&self, registers: &Registers) -> Result<(), KvmError> {
        self.shared.with_inner(|inner| {
            no_read_pending(inner)?;
            inner
                .fd
                .set_regs(&(*registers).into())
                .map_err(|e| KvmError::ioctl("KVM_SET_REGS", e))
        })
    }

    /// Reads the registers, lets `update` change them and writes them back, all while holding
    /// the vCPU (so no run can start in between); returns the registers written. This is how
    /// to set a few registers and keep the rest (IOPL in `rflags` included). Refused like
    /// [`Vcpu::set_registers`] while a read is pending.
    pub fn update_registers(
        &self,
        update: impl FnOnce(&mut Registers),
    ) -> Result<Registers, KvmError> {
        self.shared.with_inner(|inner| {
            no_read_pending(inner)?;
            let mut registers: Registers = inner
                .fd
                .get_regs()
                .map_err(|e| KvmError::ioctl("KVM_GET_REGS", e))?
                .into();
            update(&mut registers);
            inner
                .fd
                .set_regs(&registers.into())
                .map_err(|e| KvmError::ioctl("KVM_SET_REGS", e))?;
            Ok(registers)
        })
    }

    /// Supplies the bytes of the pending [`VcpuExit::MmioRead`] or [`VcpuExit::IoIn`]
    /// (exactly `size` bytes, little-endian); the guest receives them on the next run.
    pub fn complete_read(&self, data: &[u8]) -> Result<(), KvmError> {
        self.shared.with_inner(|inner| complete(inner, data))
    }

    /// Like [`Vcpu::complete_read`], with the value's low `size` bytes (little-endian); for
    /// reads of at most 8 bytes.
    pub fn complete_read_value(&self, value: u64) -> Result<(), KvmError> {
        self.shared.with_inner(|inner| {
            let size = match inner.pending {
                Some(pending) if !pending.completed => pending.size,
                _ => return Err(KvmError::NoPendingRead),
            };
            if size > 8 {
                return Err(KvmError::ValueForWideRead { size });
            }
            let bytes = value.to_le_bytes();
            if bytes[size..].iter().any(|&byte| byte != 0) {
                return Err(KvmError::ReadValueTooLarge { size, value });
            }
            complete(inner, &bytes[..size])
        })
    }

    /// Stops the run in progress, which returns [`VcpuExit::Cancelled`] with
    /// [`CancelReason::Cancel`]. Callable from any thread. A cancel that finds no run in
    /// progress (or arrives as a run returns for another reason) cancels the next run
    /// instead, which then returns at once: a cancel is never lost.
    pub fn cancel(&self) {
        self.shared.cancel();
    }

    /// A handle for [`Vcpu::cancel`] that does not borrow the vCPU.
    pub fn canceller(&self) -> VcpuCanceller {
        VcpuCanceller(self.shared.cancel.clone())
    }

    /// Runs the guest until the next exit the caller handles, or until `timeout` (then
    /// [`VcpuExit::Cancelled`] with [`CancelReason::Timeout`]; `None` waits forever).
    ///
    /// Errors: [`KvmError::VcpuClosed`] once closed, [`KvmError::VcpuBusy`] if another thread
    /// is running it or holds it,
    /// [`KvmError::VcpuReadPending`] if an MMIO read or port input was not completed, and
    /// host-call failures of the cancel machinery. Everything KVM reports is an exit
    /// ([`VcpuExit::Failure`] included).
    ///
    /// Runs on the calling thread, which from then on keeps the process's vCPU cancel signal
    /// (a real-time signal nobody else uses) blocked. Any thread may run the vCPU, one at a
    /// time; some kernels charge an RCU synchronisation whenever the running thread changes
    /// (not measurable on this project's Linux 6.18), so a dedicated thread per vCPU is best.
    pub fn run(&self, timeout: Option<Duration>) -> Result<VcpuExit, KvmError> {
        self.shared
            .with_inner(|inner| self.run_held(inner, timeout))
    }

    /// [`Vcpu::run`] with the vCPU held.
    fn run_held(
        &self,
        inner: &mut VcpuInner,
        timeout: Option<Duration>,
    ) -> Result<VcpuExit, KvmError> {
        if let Some(pending) = inner.pending {
            if !pending.completed {
                return Err(KvmError::VcpuReadPending {
                    kind: pending.kind(),
                    address: pending.address,
                    size: pending.size,
                });
            }
        }
        let start = Instant::now();
        let deadline = timeout.map(|t| start.checked_add(t));
        let signal = cancel_signal::cancel_signal()?;
        let mask = cancel_signal::block_on_this_thread(signal)?;
        if inner.kvm_signal_mask != Some(mask) {
            set_kvm_signal_mask(&inner.fd, mask)?;
            inner.kvm_signal_mask = Some(mask);
        }
        let _running = RunningThread::register(&self.shared.cancel);
        if self.shared.cancel.take_request() {
            return Ok(VcpuExit::Cancelled(CancelReason::Cancel));
        }
        let timed_out = |now: Instant| match deadline {
            None | Some(None) => false,
            Some(Some(deadline)) => now >= deadline,
        };
        if timed_out(start) {
            return Ok(VcpuExit::Cancelled(CancelReason::Timeout));
        }
        let _timer = match deadline {
            Some(Some(_)) => Some(ThreadTimer::arm(signal, timeout.unwrap_or_default())?),
            _ => None,
        };
        // The pending read (if any) was completed; KVM finishes it on this KVM_RUN.
        inner.pending = None;
        loop {
            let outcome = run_once(&mut inner.fd);
            match outcome {
                Outcome::Exit(exit) => {
                    inner.pending = match exit {
                        VcpuExit::MmioRead { address, size } => Some(PendingRead {
                            port_io: false,
                            address,
                            size,
                            completed: false,
                        }),
                        VcpuExit::IoIn { port, size } => Some(PendingRead {
                            port_io: true,
                            address: port.into(),
                            size,
                            completed: false,
                        }),
                        _ => None,
                    };
                    return Ok(exit);
                }
                Outcome::Interrupted => {
                    cancel_signal::drain(signal);
                    if self.shared.cancel.take_request() {
                        return Ok(VcpuExit::Cancelled(CancelReason::Cancel));
                    }
                    if timed_out(Instant::now()) {
                        return Ok(VcpuExit::Cancelled(CancelReason::Timeout));
                    }
                }
                Outcome::InternalError => {
                    let run = inner.fd.get_kvm_run();
                    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, whose union member
                    // is `internal`.
                    let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
                    let what = match suberror {
                        1 => " (instruction emulation failed)",
                        2 => " (exception while delivering an exception)",
                        3 => " (event delivery failed)",
                        _ => "",
                    };
                    return Ok(VcpuExit::Failure {
                        reason: format!("KVM_EXIT_INTERNAL_ERROR suberror {suberror}{what}"),
                    });
                }
                Outcome::Unknown => {
                    let run = inner.fd.get_kvm_run();
                    // SAFETY: the exit reason is KVM_EXIT_UNKNOWN, whose union member is `hw`.
                    let hardware = unsafe { run.__bindgen_anon_1.hw.hardware_exit_reason };
                    return Ok(VcpuExit::Failure {
                        reason: format!("KVM_EXIT_UNKNOWN hardware exit reason {hardware:#x}"),
                    });
                }
            }
        }
    }
}

/// `Ok` unless an MMIO read or port input is pending (its value not given yet, or given but not
/// delivered by a run yet): until `KVM_RUN` has finished the read, a register write makes KVM
/// drop the value (checked on PVM: the guest got the written registers instead).
fn no_read_pending(inner: &VcpuInner) -> Result<(), KvmError> {
    match inner.pending {
        None => Ok(()),
        Some(pending) => Err(KvmError::RegistersWhileReadPending {
            kind: pending.kind(),
            address: pending.address,
            size: pending.size,
            completed: pending.completed,
        }),
    }
}

/// Writes the value of the pending read into the `kvm_run` page, where KVM picks it up on
/// the next `KVM_RUN`.
fn complete(inner: &mut VcpuInner, data: &[u8]) -> Result<(), KvmError> {
    let pending = match inner.pending {
        Some(pending) if !pending.completed => pending,
        _ => return Err(KvmError::NoPendingRead),
    };
    if data.len() != pending.size {
        return Err(KvmError::ReadSizeMismatch {
            expected: pending.size,
            actual: data.len(),
        });
    }
    let run = inner.fd.get_kvm_run();
    if pending.port_io {
        // SAFETY: the last exit was KVM_EXIT_IO (recorded in `pending`) and nothing has run
        // since, so `io` is the live union member.
        let data_offset = unsafe { run.__bindgen_anon_1.io.data_offset };
        let offset = usize::try_from(data_offset)
            .map_err(|_| KvmError::ioctl("KVM_RUN", io::Error::from_raw_os_error(libc::EFAULT)))?;
        // SAFETY: the kernel places `size * count` data bytes at `data_offset` inside the
        // kvm_run mapping, and `data.len()` equals that.
        unsafe {
            let target = (run as *mut kvm_bindings::kvm_run as *mut u8).add(offset);
            std::ptr::copy_nonoverlapping(data.as_ptr(), target, data.len());
        }
    } else {
        // SAFETY: the last exit was KVM_EXIT_MMIO (recorded in `pending`) and nothing has run
        // since, so `mmio` is the live union member; its `len` (at most 8) equals `data.len()`.
        unsafe { run.__bindgen_anon_1.mmio.data[..data.len()].copy_from_slice(data) };
    }
    inner.pending = Some(PendingRead {
        completed: true,
        ..pending
    });
    Ok(())
}

enum Outcome {
    Exit(VcpuExit),
    Interrupted,
    InternalError,
    Unknown,
}

fn run_once(fd: &mut VcpuFd) -> Outcome {
    let failure = |reason: String| Outcome::Exit(VcpuExit::Failure { reason });
    match fd.run() {
        Ok(KvmExit::MmioRead(address, data)) => Outcome::Exit(VcpuExit::MmioRead {
            address,
            size: data.len(),
        }),
        Ok(KvmExit::MmioWrite(address, data)) => Outcome::Exit(VcpuExit::MmioWrite {
            address,
            data: data.to_vec(),
        }),
        Ok(KvmExit::IoIn(port, data)) => Outcome::Exit(VcpuExit::IoIn {
            port,
            size: data.len(),
        }),
        Ok(KvmExit::IoOut(port, data)) => Outcome::Exit(VcpuExit::IoOut {
            port,
            data: data.to_vec(),
        }),
        Ok(KvmExit::Hlt) => Outcome::Exit(VcpuExit::Hlt),
        Ok(KvmExit::Shutdown) => Outcome::Exit(VcpuExit::Shutdown),
        Ok(KvmExit::Intr) => Outcome::Interrupted,
        Ok(KvmExit::InternalError) => Outcome::InternalError,
        Ok(KvmExit::Unknown) => Outcome::Unknown,
        Ok(KvmExit::FailEntry(reason, cpu)) => failure(format!(
            "KVM_EXIT_FAIL_ENTRY hardware entry failure reason {reason:#x} on cpu {cpu}"
        )),
        Ok(KvmExit::MemoryFault { flags, gpa, size }) => failure(format!(
            "KVM_EXIT_MEMORY_FAULT at {gpa:#x}+{size:#x} (flags {flags:#x})"
        )),
        Ok(KvmExit::SystemEvent(kind, _)) => failure(format!("KVM_EXIT_SYSTEM_EVENT type {kind}")),
        Ok(other) => failure(format!("unhandled exit {other:?}")),
        Err(err) if err.errno() == libc::EINTR => Outcome::Interrupted,
        Err(err) => failure(format!("KVM_RUN failed: {}", io::Error::from(err))),
    }
}

fn set_kvm_signal_mask(fd: &VcpuFd, mask: u64) -> Result<(), KvmError> {
    let arg = KvmSignalMask {
        len: 8,
        sigset: mask.to_le_bytes(),
    };
    // SAFETY: KVM_SET_SIGNAL_MASK reads a 4-byte header and `len` (8) sigset bytes from `arg`,
    // which is a live repr(C) struct of exactly that shape; the fd is a vCPU fd.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), KVM_SET_SIGNAL_MASK, &arg) };
    if rc < 0 {
        return Err(KvmError::ioctl(
            "KVM_SET_SIGNAL_MASK",
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::programs;
    use crate::test_support::at;
    use crate::test_support::AnonMemory;
    use crate::test_support::Guest;
    use std::thread;
    use virt::PartitionMemoryMap;

    const GIB: u64 = 1 << 30;
    const MIB: usize = 1 << 20;

    fn done(exit: VcpuExit) {
        assert_eq!(
            exit,
            VcpuExit::IoOut {
                port: programs::DONE_PORT,
                data: vec![exit_al(&exit)]
            }
        );
    }

    /// The `al` byte of a DONE_PORT write (programs leave arbitrary values in al).
    fn exit_al(exit: &VcpuExit) -> u8 {
        match exit {
            VcpuExit::IoOut { data, .. } if data.len() == 1 => data[0],
            other => panic!("expected a 1-byte port write, got {other:?}"),
        }
    }

    fn long3(test: &str) -> Option<Guest> {
        Guest::new(test, VcpuOptions::default())
    }

    #[test]
    fn a_cpl3_guest_writes_a_pattern_below_and_above_4_gib() {
        let Some(guest) = long3("a_cpl3_guest_writes_a_pattern_below_and_above_4_gib") else {
            return;
        };
        let below = AnonMemory::mapped(2 * MIB);
        let above = AnonMemory::mapped(2 * MIB);
        let far = AnonMemory::mapped(2 * MIB);
        let slots = [(GIB, &below), (4 * GIB, &above), (300 * GIB, &far)];
        for (gpa, memory) in slots {
            guest
                .partition
                .map_range(memory.ptr(), memory.len(), gpa, true, false)
                .unwrap();
        }
        let key = 0x5a5a_0000_1234_abcd;
        for (gpa, memory) in slots {
            let qwords = memory.len() as u64 / 8;
            guest.start_at(at::FILL_PATTERN, |r| {
                r.rdi = gpa;
                r.rcx = qwords;
                r.rdx = key;
            });
            done(guest.vcpu.run(None).unwrap());
            for index in [0, 1, qwords / 2, qwords - 1] {
                let address = gpa + index * 8;
                assert_eq!(
                    memory.read_u64(usize::try_from(index * 8).unwrap()),
                    address ^ key,
                    "qword at {address:#x}"
                );
            }
            let registers = guest.vcpu.get_registers().unwrap();
            assert_eq!(registers.rdi, gpa + memory.len() as u64);
            assert_eq!(registers.rcx, 0);
        }
    }

    #[test]
    fn the_guest_reads_what_the_host_wrote_and_reports_it_on_a_port() {
        let Some(guest) = long3("the_guest_reads_what_the_host_wrote_and_reports_it_on_a_port")
        else {
            return;
        };
        let memory = AnonMemory::mapped(2 * MIB);
        guest
            .partition
            .map_range(memory.ptr(), memory.len(), 5 * GIB, true, false)
            .unwrap();
        let mut expected = 0u64;
        let count = 1000u64;
        for index in 0..count {
            let value = (index + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            memory.write_u64(usize::try_from(index * 8).unwrap(), value);
            expected = expected.wrapping_add(value);
        }
        guest.start_at(at::SUM_QWORDS, |r| {
            r.rdi = 5 * GIB;
            r.rcx = count;
        });
        let mut halves = Vec::new();
        for _ in 0..2 {
            match guest.vcpu.run(None).unwrap() {
                VcpuExit::IoOut { port, data } => {
                    assert_eq!(port, programs::RESULT_PORT);
                    halves.push(u32::from_le_bytes(data.try_into().unwrap()));
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            u64::from(halves[0]) | (u64::from(halves[1]) << 32),
            expected
        );
        done(guest.vcpu.run(None).unwrap());
    }

    #[test]
    fn an_mmio_read_is_completed_with_a_value_the_guest_uses() {
        let Some(guest) = long3("an_mmio_read_is_completed_with_a_value_the_guest_uses") else {
            return;
        };
        guest.start_at(at::LOAD_ADD_STORE, |r| {
            r.rdi = 0xe000_0000;
            r.rsi = 0xe000_1008;
            r.rdx = 5;
        });
        assert_eq!(
            guest.vcpu.run(None).unwrap(),
            VcpuExit::MmioRead {
                address: 0xe000_0000,
                size: 8
            }
        );
        assert!(matches!(
            guest.vcpu.run(None),
            Err(KvmError::VcpuReadPending {
                kind: "MMIO read",
                address: 0xe000_0000,
                size: 8
            })
        ));
        assert!(matches!(
            guest.vcpu.complete_read(&[1, 2, 3, 4]),
            Err(KvmError::ReadSizeMismatch {
                expected: 8,
                actual: 4
            })
        ));
        guest
            .vcpu
            .complete_read_value(0x1122_3344_5566_7788)
            .unwrap();
        assert!(matches!(
            guest.vcpu.complete_read_value(1),
            Err(KvmError::NoPendingRead)
        ));
        assert_eq!(
            guest.vcpu.run(None).unwrap(),
            VcpuExit::MmioWrite {
                address: 0xe000_1008,
                data: 0x1122_3344_5566_778du64.to_le_bytes().to_vec()
            }
        );
        done(guest.vcpu.run(None).unwrap());
        assert!(matches!(
            guest.vcpu.complete_read(&[]),
            Err(KvmError::NoPendingRead)
        ));
    }

    #[test]
    fn registers_cannot_be_set_from_a_read_exit_until_the_run_that_delivers_the_value() {
        let Some(guest) =
            long3("registers_cannot_be_set_from_a_read_exit_until_the_run_that_delivers_the_value")
        else {
            return;
        };
        let value = 0x1234_5678u64;
        let store = 0x60_0000;
        for port_io in [false, true] {
            if port_io {
                guest.start_at(at::ECHO_INPUT, |_| {});
            } else {
                guest.start_at(at::LOAD_ADD_STORE, |r| {
                    r.rdi = 0xe000_0000;
                    r.rsi = store;
                    r.rdx = 1;
                });
            }
            let exit = guest.vcpu.run(None).unwrap();
            assert!(
                matches!(exit, VcpuExit::MmioRead { .. } | VcpuExit::IoIn { .. }),
                "{exit:?}"
            );
            let refused = |completed: bool| {
                let error = guest.vcpu.update_registers(|r| r.rbx = 5).unwrap_err();
                assert!(
                    matches!(error, KvmError::RegistersWhileReadPending { completed: c, .. } if c == completed),
                    "{error:?}"
                );
                assert!(matches!(
                    guest.vcpu.set_registers(&Registers::default()),
                    Err(KvmError::RegistersWhileReadPending { .. })
                ));
            };
            refused(false);
            guest.vcpu.complete_read_value(value).unwrap();
            refused(true);
            // A cancel that stops the next run before KVM_RUN leaves the read undelivered.
            guest.vcpu.cancel();
            assert_eq!(
                guest.vcpu.run(None).unwrap(),
                VcpuExit::Cancelled(CancelReason::Cancel)
            );
            refused(true);
            // The run delivers it: the guest used the value, and registers may be set again.
            let next = guest.vcpu.run(None).unwrap();
            if port_io {
                assert_eq!(
                    next,
                    VcpuExit::IoOut {
                        port: programs::RESULT_PORT,
                        data: u32::try_from(value).unwrap().to_le_bytes().to_vec()
                    }
                );
                done(guest.vcpu.run(None).unwrap());
            } else {
                done(next);
                assert_eq!(
                    guest.low.read_u64(usize::try_from(store).unwrap()),
                    value + 1
                );
            }
            guest.vcpu.update_registers(|r| r.rbx = 5).unwrap();
        }
    }

    #[test]
    fn cpl3_port_io_does_not_depend_on_guest_bytes_at_gpa_0_and_reaches_port_0x7fb7() {
        let Some(guest) =
            long3("cpl3_port_io_does_not_depend_on_guest_bytes_at_gpa_0_and_reaches_port_0x7fb7")
        else {
            return;
        };
        // All ones where a TSS at GPA 0 would have its I/O permission bitmap.
        guest.low.write(0, &[0xff; 0x100]);
        guest.start_at(at::ECHO_INPUT, |_| {});
        assert_eq!(
            guest.vcpu.run(None).unwrap(),
            VcpuExit::IoIn {
                port: programs::INPUT_PORT,
                size: 4
            }
        );
        guest.vcpu.complete_read_value(7).unwrap();
        assert_eq!(
            guest.vcpu.run(None).unwrap(),
            VcpuExit::IoOut {
                port: programs::RESULT_PORT,
                data: vec![7, 0, 0, 0]
            }
        );
        // out dx, al; then the done loop.
        let out_dx = 0x1800;
        guest.low.write(out_dx, &[0xee, 0xe6, 0x10, 0xeb, 0xfc]);
        for port in [0x3ffu16, page_tables::TSS_LAST_PORT] {
            guest.start_at(out_dx as u64, |r| {
                r.rdx = port.into();
                r.rax = 0x5a;
            });
            assert_eq!(
                guest.vcpu.run(None).unwrap(),
                VcpuExit::IoOut {
                    port,
                    data: vec![0x5a]
                },
                "port {port:#x}"
            );
        }
    }

    #[test]
    fn a_string_port_input_wider_than_8_bytes_takes_bytes_not_a_number() {
        let Some(guest) = long3("a_string_port_input_wider_than_8_bytes_takes_bytes_not_a_number")
        else {
            return;
        };
        // rep insw (6 words from port dx to [rdi]); then the done loop.
        let rep_insw = 0x1900;
        guest
            .low
            .write(rep_insw, &[0xf3, 0x66, 0x6d, 0xe6, 0x10, 0xeb, 0xfc]);
        guest.start_at(rep_insw as u64, |r| {
            r.rdx = 0x80;
            r.rdi = 0x60_0000;
            r.rcx = 6;
        });
        assert_eq!(
            guest.vcpu.run(None).unwrap(),
            VcpuExit::IoIn {
                port: 0x80,
                size: 12
            }
        );
        let error = guest.vcpu.complete_read_value(1).unwrap_err();
        assert!(
            matches!(error, KvmError::ValueForWideRead { size: 12 }),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .contains("complete it with exactly 12 bytes"),
            "{error}"
        );
        let data: Vec<u8> = (1..=12).collect();
        guest.vcpu.complete_read(&data).unwrap();
        done(guest.vcpu.run(None).unwrap());
        let mut written = [0u8; 12];
        guest.low.read(0x60_0000, &mut written);
        assert_eq!(written.as_slice(), data.as_slice());
    }

    #[test]
    fn a_port_input_is_completed_with_bytes_the_guest_uses() {
        let Some(guest) = long3("a_port_input_is_completed_with_bytes_the_guest_uses") else {
            return;
        };
        guest.start_at(at::ECHO_INPUT, |_| {});
        assert_eq!(
            guest.vcpu.run(None).unwrap(),
            VcpuExit::IoIn {
                port: programs::INPUT_PORT,
                size: 4
            }
        );
        assert!(matches!(
            guest.vcpu.run(None),
            Err(KvmError::VcpuReadPending {
                kind: "port input",
                ..
            })
        ));
        // A value wider than the 4-byte read is refused, and the read stays pending.
        let error = guest.vcpu.complete_read_value(1 << 40).unwrap_err();
        assert!(
            matches!(
                error,
                KvmError::ReadValueTooLarge {
                    size: 4,
                    value: 0x100_0000_0000
                }
            ),
            "{error:?}"
        );
        assert!(error.to_string().contains("below 2^32"), "{error}");
        guest.vcpu.complete_read(&[0xef, 0xbe, 0xad, 0xde]).unwrap();
        assert_eq!(
            guest.vcpu.run(None).unwrap(),
            VcpuExit::IoOut {
                port: programs::RESULT_PORT,
                data: vec![0xef, 0xbe, 0xad, 0xde]
            }
        );
    }

    #[test]
    fn a_read_only_slot_reads_ram_and_turns_writes_into_mmio_exits() {
        let Some(guest) = long3("a_read_only_slot_reads_ram_and_turns_writes_into_mmio_exits")
        else {
            return;
        };
        let memory = AnonMemory::mapped(2 * MIB);
        memory.write_u64(0x100, 0x4000);
        guest
            .partition
            .map_range(memory.ptr(), memory.len(), GIB, false, false)
            .unwrap();
        assert!(guest
            .partition
            .slots()
            .iter()
            .any(|s| s.gpa == GIB && s.readonly));
        guest.start_at(at::LOAD_ADD_STORE, |r| {
            r.rdi = GIB + 0x100;
            r.rsi = GIB + 0x108;
            r.rdx = 2;
        });
        assert_eq!(
            guest.vcpu.run(None).unwrap(),
            VcpuExit::MmioWrite {
                address: GIB + 0x108,
                data: 0x4002u64.to_le_bytes().to_vec()
            }
        );
        assert_eq!(memory.read_u64(0x108), 0);
        done(guest.vcpu.run(None).unwrap());
        // Made writable again (unmap + map), the same store lands in RAM.
        guest
            .partition
            .unmap_range(GIB, memory.len() as u64)
            .unwrap();
        guest
            .partition
            .map_range(memory.ptr(), memory.len(), GIB, true, false)
            .unwrap();
        guest.start_at(at::LOAD_ADD_STORE, |_| {});
        done(guest.vcpu.run(None).unwrap());
        assert_eq!(memory.read_u64(0x108), 0x4002);
    }

    #[test]
    fn hlt_at_cpl0_is_a_hlt_exit() {
        let options = VcpuOptions {
            cpl: 0,
            ..VcpuOptions::default()
        };
        let Some(guest) = Guest::new("hlt_at_cpl0_is_a_hlt_exit", options) else {
            return;
        };
        assert_eq!(guest.vcpu.get_registers().unwrap().rflags & RFLAGS_IOPL3, 0);
        guest.start_at(at::HALT, |_| {});
        assert_eq!(guest.vcpu.run(None).unwrap(), VcpuExit::Hlt);
        assert_eq!(guest.vcpu.run(None).unwrap(), VcpuExit::Hlt);
    }

    #[test]
    fn hlt_at_cpl3_faults_into_a_shutdown() {
        let Some(guest) = long3("hlt_at_cpl3_faults_into_a_shutdown") else {
            return;
        };
        assert_eq!(
            guest.vcpu.get_registers().unwrap().rflags & RFLAGS_IOPL3,
            RFLAGS_IOPL3
        );
        // #GP with no IDT: a triple fault.
        guest.start_at(at::HALT, |_| {});
        assert_eq!(guest.vcpu.run(None).unwrap(), VcpuExit::Shutdown);
    }

    #[test]
    fn a_real_mode_program_does_port_output_then_halts() {
        let Some(guest) = Guest::new(
            "a_real_mode_program_does_port_output_then_halts",
            VcpuOptions::real(),
        ) else {
            return;
        };
        assert_eq!(guest.vcpu.mode(), VcpuMode::Real);
        guest.start_at(at::REAL_MODE_OUT_THEN_HALT, |_| {});
        assert_eq!(
            guest.vcpu.run(None).unwrap(),
            VcpuExit::IoOut {
                port: programs::DONE_PORT,
                data: vec![0x42]
            }
        );
        assert_eq!(guest.vcpu.run(None).unwrap(), VcpuExit::Hlt);
        assert_eq!(guest.vcpu.get_registers().unwrap().rax & 0xff, 0x42);
    }

    #[test]
    fn a_looping_guest_is_stopped_by_cancel_from_another_thread() {
        let Some(guest) = long3("a_looping_guest_is_stopped_by_cancel_from_another_thread") else {
            return;
        };
        guest.start_at(at::SPIN, |_| {});
        let canceller = guest.vcpu.canceller();
        thread::scope(|scope| {
            let runner = scope.spawn(|| guest.vcpu.run(None));
            // Wait until the runner owns the vCPU (then register access is refused).
            let start = Instant::now();
            while !guest.vcpu.shared().in_run() {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "run never started"
                );
                thread::sleep(Duration::from_millis(1));
            }
            thread::sleep(Duration::from_millis(20));
            assert!(
                !runner.is_finished(),
                "the spinning guest returned by itself"
            );
            canceller.cancel();
            assert_eq!(
                runner.join().unwrap().unwrap(),
                VcpuExit::Cancelled(CancelReason::Cancel)
            );
        });
        // The guest was in its loop; it resumes there.
        assert_eq!(guest.vcpu.get_registers().unwrap().rip, at::SPIN);
        assert_eq!(
            guest.vcpu.run(Some(Duration::from_millis(10))).unwrap(),
            VcpuExit::Cancelled(CancelReason::Timeout)
        );
    }

    #[test]
    fn a_looping_guest_is_stopped_by_the_timeout() {
        let Some(guest) = long3("a_looping_guest_is_stopped_by_the_timeout") else {
            return;
        };
        guest.start_at(at::SPIN, |_| {});
        let timeout = Duration::from_millis(100);
        let start = Instant::now();
        assert_eq!(
            guest.vcpu.run(Some(timeout)).unwrap(),
            VcpuExit::Cancelled(CancelReason::Timeout)
        );
        assert!(start.elapsed() >= timeout);
        // A zero timeout does not enter the guest.
        assert_eq!(
            guest.vcpu.run(Some(Duration::ZERO)).unwrap(),
            VcpuExit::Cancelled(CancelReason::Timeout)
        );
        // The timer of a finished run does not leak into the next one.
        guest.start_at(at::FILL_PATTERN, |r| {
            r.rdi = 0x70_0000;
            r.rcx = 1;
        });
        done(guest.vcpu.run(Some(Duration::from_secs(30))).unwrap());
        done(guest.vcpu.run(None).unwrap());
    }

    #[test]
    fn a_cancel_before_the_run_stops_that_run_and_only_that_one() {
        let Some(guest) = long3("a_cancel_before_the_run_stops_that_run_and_only_that_one") else {
            return;
        };
        guest.start_at(at::FILL_PATTERN, |r| {
            r.rdi = 0x70_0000;
            r.rcx = 1;
        });
        guest.vcpu.cancel();
        assert_eq!(
            guest.vcpu.run(None).unwrap(),
            VcpuExit::Cancelled(CancelReason::Cancel)
        );
        done(guest.vcpu.run(None).unwrap());
        assert_eq!(guest.low.read_u64(0x70_0000), 0x70_0000);
    }

    #[test]
    fn cancel_all_vcpus_stops_a_running_vcpu() {
        let Some(guest) = long3("cancel_all_vcpus_stops_a_running_vcpu") else {
            return;
        };
        guest.start_at(at::SPIN, |_| {});
        thread::scope(|scope| {
            let runner = scope.spawn(|| guest.vcpu.run(Some(Duration::from_secs(60))));
            // Wait until the runner is inside `run`; if it came back on its own instead, fail
            // with what it returned rather than wait forever.
            while !guest.vcpu.shared().in_run() {
                if runner.is_finished() {
                    panic!(
                        "the spinning guest's run returned before it was cancelled: {:?}",
                        runner.join()
                    );
                }
                thread::sleep(Duration::from_millis(1));
            }
            guest.partition.cancel_all_vcpus();
            assert_eq!(
                runner.join().unwrap().unwrap(),
                VcpuExit::Cancelled(CancelReason::Cancel)
            );
        });
        assert_eq!(guest.partition.inspect().vcpu_count, 1);
    }

    #[test]
    fn a_slot_whose_host_memory_is_gone_is_a_failure_exit() {
        let Some(guest) = long3("a_slot_whose_host_memory_is_gone_is_a_failure_exit") else {
            return;
        };
        let memory = AnonMemory::mapped(2 * MIB);
        guest
            .partition
            .map_range(memory.ptr(), memory.len(), GIB, true, false)
            .unwrap();
        // Not `drop`: after a munmap another test thread could map its own memory at the same
        // address, and the guest would then write there instead of failing.
        memory.make_inaccessible();
        guest.start_at(at::FILL_PATTERN, |r| {
            r.rdi = GIB;
            r.rcx = 1;
        });
        match guest.vcpu.run(Some(Duration::from_secs(30))).unwrap() {
            VcpuExit::Failure { reason } => {
                assert_eq!(reason, "KVM_RUN failed: Bad address (os error 14)");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn closed_vcpus_count_toward_the_vm_limit() {
        let test = "closed_vcpus_count_toward_the_vm_limit";
        let Some(partition) =
            crate::test_support::partition_or_skip(test, crate::KvmPartitionOptions::default())
        else {
            return;
        };
        let ignore = |_: u64, _: &[u8]| -> Result<(), virt::Error> { Ok(()) };
        let limit = partition.max_vcpus();
        assert!(limit >= 1);
        for id in 0..limit {
            let vcpu = partition
                .create_vcpu(&VcpuOptions::real(), &ignore)
                .unwrap();
            assert_eq!(vcpu.id(), id);
            vcpu.close();
        }
        // Before, KVM's own EINVAL came back (KvmIoctl: "KVM ioctl KVM_CREATE_VCPU failed").
        let error = partition
            .create_vcpu(&VcpuOptions::real(), &ignore)
            .unwrap_err();
        assert!(
            matches!(error, KvmError::TooManyVcpus { limit: l } if l == limit),
            "{error}"
        );
        let message = error.to_string();
        assert!(
            message.contains(&format!("created {limit} vCPUs"))
                && message.contains("closed vCPUs count too")
                && message.contains("create another KvmPartition"),
            "{message}"
        );
        assert_eq!(partition.inspect().vcpu_count, limit);
    }

    #[test]
    fn long_mode_options_are_checked() {
        let Some(guest) = long3("long_mode_options_are_checked") else {
            return;
        };
        let ignore = |_: u64, _: &[u8]| -> Result<(), virt::Error> { Ok(()) };
        let small = MemoryRange::new(0x20_0000..0x20_0000 + PAGE_TABLES_SIZE - 0x1000);
        for page_tables in [None, Some(small)] {
            let options = VcpuOptions {
                page_tables,
                ..VcpuOptions::default()
            };
            let error = guest.partition.create_vcpu(&options, &ignore).unwrap_err();
            assert!(
                matches!(error, KvmError::InvalidPageTables { .. }),
                "{error}"
            );
            let message = error.to_string();
            let given = match page_tables {
                None => "got none: ".to_owned(),
                Some(_) => "got 0x200000-0x401000 (0x201000 bytes): ".to_owned(),
            };
            assert!(
                message.contains(&given)
                    && !message.contains("Some(")
                    && message.contains("pass pageTables"),
                "{message}"
            );
        }
        let options = VcpuOptions {
            cpl: 1,
            ..VcpuOptions::long(MemoryRange::new(0..PAGE_TABLES_SIZE))
        };
        assert!(matches!(
            guest.partition.create_vcpu(&options, &ignore),
            Err(KvmError::InvalidCpl(1))
        ));
        // Real mode has neither paging nor CPL 3: those options are refused, not ignored.
        let real_with_tables = VcpuOptions {
            page_tables: Some(MemoryRange::new(0..PAGE_TABLES_SIZE)),
            ..VcpuOptions::real()
        };
        let real_at_cpl3 = VcpuOptions {
            cpl: 3,
            ..VcpuOptions::real()
        };
        for (options, expected) in [(real_with_tables, "pageTables"), (real_at_cpl3, "cpl")] {
            let error = guest.partition.create_vcpu(&options, &ignore).unwrap_err();
            assert!(
                matches!(error, KvmError::LongModeOnly { option } if option == expected),
                "{error}"
            );
        }
        let refuse = |_: u64, _: &[u8]| -> Result<(), virt::Error> { Err("not RAM".into()) };
        let err = guest
            .partition
            .create_vcpu(
                &VcpuOptions::long(MemoryRange::new(0x1_0000_0000..0x1_0040_0000)),
                &refuse,
            )
            .unwrap_err();
        assert!(matches!(
            err,
            KvmError::PageTableWrite {
                gpa: 0x1_0000_0000,
                ..
            }
        ));
        assert_eq!(
            std::error::Error::source(&err).unwrap().to_string(),
            "not RAM"
        );
    }

    #[test]
    fn the_whole_page_table_range_must_be_writable_slots_and_may_span_adjacent_ones() {
        let Some(guest) =
            long3("the_whole_page_table_range_must_be_writable_slots_and_may_span_adjacent_ones")
        else {
            return;
        };
        let low_end = crate::test_support::LOW_SIZE as u64;
        // The tables would fit below the end of the low slot, but the range goes past it.
        let past_end = MemoryRange::new(low_end / 2..low_end + 0x40_0000);
        let error = guest
            .partition
            .create_vcpu(&VcpuOptions::long(past_end), &guest.partition)
            .unwrap_err();
        let hole = std::error::Error::source(&error)
            .and_then(|source| source.downcast_ref::<crate::SlotWriteError>());
        assert!(
            matches!(hole, Some(crate::SlotWriteError::NotInWritableSlots { hole, .. }) if *hole == low_end),
            "{error:?}"
        );
        assert_eq!(guest.partition.inspect().vcpu_count, 1, "no vCPU was made");
        // RAM split into adjacent slots (as x86 legacy regions are) holds tables across them.
        let next = AnonMemory::mapped(4 * MIB);
        guest
            .partition
            .map_range(next.ptr(), next.len(), low_end, true, false)
            .unwrap();
        let across = MemoryRange::new(low_end - 0x10_0000..low_end - 0x10_0000 + PAGE_TABLES_SIZE);
        let vcpu = guest
            .partition
            .create_vcpu(&VcpuOptions::long(across), &guest.partition)
            .unwrap();
        vcpu.update_registers(|r| {
            r.rip = at::FILL_PATTERN;
            r.rdi = 0x60_0000;
            r.rcx = 2;
            r.rdx = 0x77;
        })
        .unwrap();
        done(vcpu.run(Some(Duration::from_secs(30))).unwrap());
        assert_eq!(guest.low.read_u64(0x60_0008), 0x60_0008 ^ 0x77);
        vcpu.close();
        guest
            .partition
            .unmap_range(low_end, next.len() as u64)
            .unwrap();
    }

    #[test]
    fn registers_round_trip() {
        let Some(guest) = long3("registers_round_trip") else {
            return;
        };
        let initial = guest.vcpu.get_registers().unwrap();
        assert_eq!(initial.rflags, RFLAGS_FIXED | RFLAGS_IOPL3);
        assert_eq!(initial.rip, 0);
        let registers = Registers {
            rax: 1,
            rbx: 2,
            rcx: 3,
            rdx: 4,
            rsi: 5,
            rdi: 6,
            rsp: 7,
            rbp: 8,
            r8: 9,
            r9: 10,
            r10: 11,
            r11: 12,
            r12: 13,
            r13: 14,
            r14: 15,
            r15: u64::MAX,
            rip: 0x1234,
            rflags: RFLAGS_FIXED | RFLAGS_IOPL3 | 1, // CF
        };
        guest.vcpu.set_registers(&registers).unwrap();
        assert_eq!(guest.vcpu.get_registers().unwrap(), registers);
        let updated = guest.vcpu.update_registers(|r| r.rax = 42).unwrap();
        assert_eq!(
            updated,
            Registers {
                rax: 42,
                ..registers
            }
        );
        assert_eq!(guest.vcpu.get_registers().unwrap(), updated);
        assert_eq!(guest.vcpu.id(), 0);
    }

    #[test]
    fn vcpus_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Vcpu>();
        assert_send_sync::<VcpuCanceller>();
    }
}

#[cfg(test)]
mod register_name_tests {
    use super::Registers;

    #[test]
    fn every_name_reaches_its_own_register() {
        let mut registers = Registers::default();
        for (index, name) in Registers::NAMES.iter().enumerate() {
            *registers.named(name).unwrap() = index as u64 + 1;
        }
        let values = registers.values();
        for (index, value) in values.iter().enumerate() {
            assert_eq!(*value, index as u64 + 1, "{}", Registers::NAMES[index]);
        }
        assert_eq!(registers.rip, 17);
        assert_eq!(registers.rflags, 18);
        assert!(registers.named("cr3").is_none());
    }
}
