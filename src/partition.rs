//! Binding of the partitions: `RecordingPartition` (`virt`) and, on x86-64, `KvmPartition` and
//! its vCPUs (`virt_kvm`).
//!
//! A vCPU runs on a thread of its own: `run()` hands the request to that thread and returns a
//! Promise that settles on the next exit, so the JavaScript thread never waits for the guest.
//! Everything else (registers, completing a read, cancel) is a direct call.

use crate::args::U64;
use crate::errors::{closed, coded, invalid_arg, JsError};
use napi_derive::napi;
use std::sync::Arc;
use virt::{PartitionMemoryMap, RecordedOp, RecordingPartition};

/// One recorded partition call.
#[napi(object, object_from_js = false)]
pub struct RecordedCallItem {
    pub op: String,
    pub gpa: u64,
    pub size: u64,
    pub writable: Option<bool>,
    pub exec: Option<bool>,
    pub va_offset: Option<u64>,
    pub failed: bool,
}

fn recorded(calls: Vec<virt::RecordedCall>) -> Vec<RecordedCallItem> {
    calls
        .into_iter()
        .map(|call| RecordedCallItem {
            op: call.op.as_str().to_owned(),
            gpa: call.gpa,
            size: call.size,
            writable: call.writable,
            exec: call.exec,
            va_offset: call.va_offset,
            failed: call.failed,
        })
        .collect()
}

/// A partition that records every map/unmap/prefetch/pin call.
#[napi]
pub struct NativeRecordingPartition {
    inner: Arc<RecordingPartition>,
}

impl NativeRecordingPartition {
    /// The partition, for `attachPartition`.
    pub fn partition(&self) -> Result<Arc<dyn PartitionMemoryMap>, JsError> {
        if self.inner.is_closed() {
            return Err(closed("RecordingPartition"));
        }
        Ok(self.inner.clone())
    }

    /// The concrete partition (the manager binding sets its VA base).
    pub fn recording(&self) -> &Arc<RecordingPartition> {
        &self.inner
    }
}

#[napi]
impl NativeRecordingPartition {
    /// An empty log and no failure rules.
    #[napi(constructor)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        NativeRecordingPartition {
            inner: Arc::new(RecordingPartition::new()),
        }
    }

    /// The whole log, oldest first.
    #[napi]
    pub fn log(&self) -> Vec<RecordedCallItem> {
        recorded(self.inner.log())
    }

    /// Empties the log.
    #[napi]
    pub fn clear_log(&self) {
        self.inner.clear_log();
    }

    /// Returns the log and empties it.
    #[napi]
    pub fn take_log(&self) -> Vec<RecordedCallItem> {
        recorded(self.inner.take_log())
    }

    /// Makes every later `op` call at `gpa` fail until cleared.
    #[napi]
    pub fn fail_on(&self, op: String, gpa: U64) -> Result<(), JsError> {
        let op: RecordedOp = op
            .parse()
            .map_err(|err: virt::ParseRecordedOpError| invalid_arg(err.0))?;
        self.inner.fail_on(op, gpa.0);
        Ok(())
    }

    /// Drops every failure rule.
    #[napi]
    pub fn clear_failures(&self) {
        self.inner.clear_failures();
    }

    /// The partition is gone for managers; the log stays readable.
    #[napi]
    pub fn close(&self) {
        self.inner.close();
    }
}

/// KVM exists on every Linux architecture, but the vCPU runner programs x86 long mode.
#[cfg(target_arch = "x86_64")]
pub mod kvm {
    use super::*;
    use crate::promise::promise;
    use napi::bindgen_prelude::{BigUint64Array, Buffer, Object};
    use napi::Env;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;
    use virt_kvm::{
        CancelReason, KvmError, KvmPartition, KvmPartitionOptions, Registers, Vcpu, VcpuExit,
        VcpuMode, VcpuOptions,
    };

    /// A `KvmError` as a coded error (`ERR_KVM_UNAVAILABLE`, `ERR_SLOT_OVERLAP`, …; argument
    /// problems as `RangeError`s).
    pub fn kvm_error(err: &KvmError) -> JsError {
        let message = err.to_string();
        match err {
            KvmError::KvmUnavailable { .. } => coded("ERR_KVM_UNAVAILABLE", message),
            KvmError::KvmIoctl { .. } | KvmError::HostCall { .. } => {
                coded("ERR_KVM_IOCTL", message)
            }
            KvmError::SlotOverlap { .. } => coded("ERR_SLOT_OVERLAP", message),
            KvmError::PartialSlotUnmap { .. } => coded("ERR_PARTIAL_SLOT_UNMAP", message),
            KvmError::NoFreeSlot { .. } => coded("ERR_NO_FREE_SLOT", message),
            KvmError::VcpuBusy => coded("ERR_VCPU_BUSY", message),
            KvmError::VcpuReadPending { .. } => coded("ERR_VCPU_READ_PENDING", message),
            KvmError::NoPendingRead => coded("ERR_NO_PENDING_READ", message),
            KvmError::ReadOnlyUnsupported => coded("ERR_READ_ONLY_UNSUPPORTED", message),
            KvmError::PageTableWrite { .. } => coded("ERR_PAGE_TABLE_WRITE", message),
            _ => invalid_arg(message),
        }
    }

    /// A real KVM virtual machine whose memory slots follow the manager's regions.
    #[napi]
    pub struct NativeKvmPartition {
        inner: Option<Arc<KvmPartition>>,
    }

    impl NativeKvmPartition {
        fn kvm(&self) -> Result<&Arc<KvmPartition>, JsError> {
            self.inner.as_ref().ok_or_else(|| closed("KvmPartition"))
        }

        /// The partition, for `attachPartition`.
        pub fn partition(&self) -> Result<Arc<dyn PartitionMemoryMap>, JsError> {
            Ok(self.kvm()?.clone())
        }

        /// The concrete partition (slot predictions for the planner).
        pub fn kvm_partition(&self) -> Result<&Arc<KvmPartition>, JsError> {
            self.kvm()
        }
    }

    /// One memory slot.
    #[napi(object, object_from_js = false)]
    pub struct KvmSlot {
        pub slot: u32,
        pub gpa: u64,
        pub size: u64,
        pub readonly: bool,
        pub pinned: bool,
    }

    /// The slot table and partition facts.
    #[napi(object, object_from_js = false)]
    pub struct KvmInspect {
        pub slots: Vec<KvmSlot>,
        pub max_slots: u32,
        pub slot_zap_all_quirk_disabled: bool,
        pub readonly_supported: bool,
        pub vcpu_count: u32,
    }

    /// One map or unmap call of the partition and its slot changes.
    #[napi(object, object_from_js = false)]
    pub struct KvmSlotLogItem {
        /// Process-wide sequence number shared with the recording partition's log.
        pub sequence: u64,
        /// `map` or `unmap`.
        pub op: String,
        pub gpa: u64,
        pub size: u64,
        /// Slot ids created, in order.
        pub created: Vec<u32>,
        /// Slot ids deleted, in GPA order.
        pub deleted: Vec<u32>,
        pub failed: bool,
    }

    fn slot_log_items(entries: Vec<virt_kvm::SlotLogEntry>) -> Vec<KvmSlotLogItem> {
        entries
            .into_iter()
            .map(|entry| KvmSlotLogItem {
                sequence: entry.sequence,
                op: match entry.op {
                    virt_kvm::SlotOp::Map => "map",
                    virt_kvm::SlotOp::Unmap => "unmap",
                }
                .to_owned(),
                gpa: entry.gpa,
                size: entry.size,
                created: entry.changes.created,
                deleted: entry.changes.deleted,
                failed: entry.failed,
            })
            .collect()
    }

    /// Creates a VM (on the executor, as it takes a few hundred microseconds).
    #[napi(ts_return_type = "Promise<NativeKvmPartition>")]
    pub fn kvm_partition_create<'env>(
        env: &'env Env,
        disable_slot_zap_all_quirk: bool,
    ) -> Result<Object<'env>, JsError> {
        promise(
            env,
            async move {
                KvmPartition::create(KvmPartitionOptions {
                    disable_slot_zap_all_quirk,
                })
                .map_err(|err| kvm_error(&err))
            },
            |_env, partition| {
                Ok(NativeKvmPartition {
                    inner: Some(Arc::new(partition)),
                })
            },
        )
    }

    #[napi]
    impl NativeKvmPartition {
        /// The slot table.
        #[napi]
        pub fn inspect(&self) -> Result<KvmInspect, JsError> {
            let inspect = self.kvm()?.inspect();
            Ok(KvmInspect {
                slots: inspect
                    .slots
                    .into_iter()
                    .map(|slot| KvmSlot {
                        slot: slot.slot,
                        gpa: slot.gpa,
                        size: slot.size,
                        readonly: slot.readonly,
                        pinned: slot.pinned,
                    })
                    .collect(),
                max_slots: inspect.max_slots,
                slot_zap_all_quirk_disabled: inspect.slot_zap_all_quirk_disabled,
                readonly_supported: inspect.readonly_supported,
                vcpu_count: inspect.vcpu_count,
            })
        }

        /// Creates a vCPU; long mode writes identity-mapped page tables at `page_tables`
        /// (`[start, end]`, guest RAM mapped in this partition) through the slots' host memory.
        #[napi]
        pub fn create_vcpu(
            &self,
            long_mode: bool,
            page_tables: Option<BigUint64Array>,
            cpl: u32,
        ) -> Result<NativeVcpu, JsError> {
            let kvm = self.kvm()?.clone();
            let page_tables = match page_tables {
                Some(bounds) if bounds.len() == 2 => Some(
                    memory_range::MemoryRange::try_new(bounds[0]..bounds[1])
                        .map_err(|err| invalid_arg(format!("pageTables: {err}")))?,
                ),
                Some(_) => return Err(invalid_arg("pageTables must be one range")),
                None => None,
            };
            if long_mode && page_tables.is_none() {
                return Err(invalid_arg(
                    "pageTables is required in Long mode: name a guest RAM range of at least 2 MiB + 8 KiB",
                ));
            }
            let options = VcpuOptions {
                mode: if long_mode {
                    VcpuMode::Long
                } else {
                    VcpuMode::Real
                },
                page_tables,
                cpl: u8::try_from(cpl).map_err(|_| invalid_arg("cpl must be 0 or 3"))?,
            };
            let writer = SlotWriter { kvm: kvm.clone() };
            let vcpu = kvm
                .create_vcpu(&options, &|gpa: u64, data: &[u8]| writer.write(gpa, data))
                .map_err(|err| match err {
                    // A page-table range that is not writable guest RAM of this partition is a
                    // bad argument (api.md §8: "outside RAM → RangeError").
                    KvmError::PageTableWrite { gpa, source } => invalid_arg(format!(
                        "pageTables: cannot write the page tables at {gpa:#x}: {source}"
                    )),
                    err => kvm_error(&err),
                })?;
            Ok(NativeVcpu::start(Arc::new(vcpu)))
        }

        /// The last map/unmap calls with the slot ids each created and deleted, oldest first.
        #[napi]
        pub fn slot_log(&self) -> Result<Vec<KvmSlotLogItem>, JsError> {
            Ok(slot_log_items(self.kvm()?.slot_log()))
        }

        /// Returns the slot log and empties it.
        #[napi]
        pub fn take_slot_log(&self) -> Result<Vec<KvmSlotLogItem>, JsError> {
            Ok(slot_log_items(self.kvm()?.take_slot_log()))
        }

        /// Destroys the VM for this object: cancels running vCPUs; the kernel frees it when the
        /// last vCPU is gone.
        #[napi]
        pub fn close(&mut self) {
            if let Some(kvm) = self.inner.take() {
                kvm.cancel_all_vcpus();
            }
        }
    }

    /// Writes guest memory through the host memory of the slot that maps it.
    struct SlotWriter {
        kvm: Arc<KvmPartition>,
    }

    impl SlotWriter {
        fn write(&self, gpa: u64, data: &[u8]) -> Result<(), virt::Error> {
            let end = gpa
                .checked_add(data.len() as u64)
                .ok_or_else(|| virt::Error::from(format!("write at {gpa:#x} overflows")))?;
            let slot = self
                .kvm
                .slots()
                .into_iter()
                .find(|slot| slot.gpa <= gpa && end <= slot.gpa + slot.size && !slot.readonly)
                .ok_or_else(|| {
                    virt::Error::from(format!(
                        "{gpa:#x}-{end:#x} is not inside one writable memory slot: attach the partition to a manager first"
                    ))
                })?;
            let host = (slot.host_address + (gpa - slot.gpa)) as usize as *mut u8;
            // SAFETY: `host..+len` lies inside the slot's host memory (checked above), which the
            // memory manager keeps mapped while the slot exists; a fault there (memory the
            // manager has just torn down) is recovered by the guarded copy and reported.
            unsafe { trycopy::try_copy(data.as_ptr(), host, data.len()) }
                .map_err(|err| virt::Error::from(err.to_string()))
        }
    }

    /// An exit as the TypeScript layer turns it into a `VcpuExit`.
    #[napi(object, object_from_js = false)]
    pub struct VcpuExitItem {
        pub kind: String,
        pub address: Option<u64>,
        pub port: Option<u32>,
        pub size: Option<u32>,
        pub data: Option<Buffer>,
        pub reason: Option<String>,
    }

    impl VcpuExitItem {
        fn new(kind: &str) -> Self {
            VcpuExitItem {
                kind: kind.to_owned(),
                address: None,
                port: None,
                size: None,
                data: None,
                reason: None,
            }
        }
    }

    fn exit_item(exit: VcpuExit) -> VcpuExitItem {
        match exit {
            VcpuExit::MmioRead { address, size } => VcpuExitItem {
                address: Some(address),
                size: Some(size as u32),
                ..VcpuExitItem::new("MmioRead")
            },
            VcpuExit::MmioWrite { address, data } => VcpuExitItem {
                address: Some(address),
                size: Some(data.len() as u32),
                data: Some(data.into()),
                ..VcpuExitItem::new("MmioWrite")
            },
            VcpuExit::IoIn { port, size } => VcpuExitItem {
                port: Some(port.into()),
                size: Some(size as u32),
                ..VcpuExitItem::new("IoIn")
            },
            VcpuExit::IoOut { port, data } => VcpuExitItem {
                port: Some(port.into()),
                size: Some(data.len() as u32),
                data: Some(data.into()),
                ..VcpuExitItem::new("IoOut")
            },
            VcpuExit::Hlt => VcpuExitItem::new("Hlt"),
            VcpuExit::Shutdown => VcpuExitItem::new("Shutdown"),
            VcpuExit::Cancelled(reason) => VcpuExitItem {
                reason: Some(
                    match reason {
                        CancelReason::Cancel => "cancel",
                        CancelReason::Timeout => "timeout",
                    }
                    .to_owned(),
                ),
                ..VcpuExitItem::new("Cancelled")
            },
            VcpuExit::Failure { reason } => VcpuExitItem {
                reason: Some(reason),
                ..VcpuExitItem::new("Failure")
            },
        }
    }

    /// Registers as `[rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp, r8 … r15, rip, rflags]`.
    fn pack(r: &Registers) -> Vec<u64> {
        vec![
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15, r.rip, r.rflags,
        ]
    }

    fn slot_of(r: &mut Registers, index: usize) -> Option<&mut u64> {
        Some(match index {
            0 => &mut r.rax,
            1 => &mut r.rbx,
            2 => &mut r.rcx,
            3 => &mut r.rdx,
            4 => &mut r.rsi,
            5 => &mut r.rdi,
            6 => &mut r.rsp,
            7 => &mut r.rbp,
            8 => &mut r.r8,
            9 => &mut r.r9,
            10 => &mut r.r10,
            11 => &mut r.r11,
            12 => &mut r.r12,
            13 => &mut r.r13,
            14 => &mut r.r14,
            15 => &mut r.r15,
            16 => &mut r.rip,
            17 => &mut r.rflags,
            _ => return None,
        })
    }

    type RunRequest = Box<dyn FnOnce(&Vcpu) + Send>;

    /// One vCPU with its run thread.
    #[napi]
    pub struct NativeVcpu {
        vcpu: Arc<Vcpu>,
        runs: Option<mpsc::Sender<RunRequest>>,
        /// Set from `run()` until its exit is known: a second `run()` (or register access) in
        /// that time is `ERR_VCPU_BUSY` instead of being queued behind the first.
        running: Arc<AtomicBool>,
    }

    impl NativeVcpu {
        fn start(vcpu: Arc<Vcpu>) -> Self {
            let (sender, receiver) = mpsc::channel::<RunRequest>();
            let runner = vcpu.clone();
            // The thread ends when the sender is dropped (close or garbage collection).
            let spawned = std::thread::Builder::new()
                .name(format!("membacking-vcpu-{}", vcpu.id()))
                .spawn(move || {
                    while let Ok(request) = receiver.recv() {
                        request(&runner);
                    }
                });
            NativeVcpu {
                vcpu,
                runs: spawned.ok().map(|_| sender),
                running: Arc::new(AtomicBool::new(false)),
            }
        }

        /// The vCPU, if it is open and not running.
        fn idle(&self) -> Result<&Vcpu, JsError> {
            if self.runs.is_none() {
                return Err(closed("Vcpu"));
            }
            if self.running.load(Ordering::SeqCst) {
                return Err(kvm_error(&KvmError::VcpuBusy));
            }
            Ok(&self.vcpu)
        }
    }

    impl Drop for NativeVcpu {
        fn drop(&mut self) {
            self.vcpu.cancel();
        }
    }

    #[napi]
    impl NativeVcpu {
        /// The vCPU index.
        #[napi(getter)]
        pub fn id(&self) -> u32 {
            self.vcpu.id()
        }

        /// The registers as 18 u64 values.
        #[napi]
        pub fn get_registers(&self) -> Result<BigUint64Array, JsError> {
            let registers = self
                .idle()?
                .get_registers()
                .map_err(|err| kvm_error(&err))?;
            Ok(BigUint64Array::new(pack(&registers)))
        }

        /// Sets the registers whose indexes (in `get_registers` order) are listed.
        #[napi]
        pub fn set_registers(
            &self,
            indexes: Vec<u32>,
            values: BigUint64Array,
        ) -> Result<(), JsError> {
            if indexes.len() != values.len() || indexes.iter().any(|&i| i >= 18) {
                return Err(invalid_arg("one value per known register is required"));
            }
            let values: Vec<u64> = values.to_vec();
            self.idle()?
                .update_registers(|registers| {
                    for (&index, &value) in indexes.iter().zip(&values) {
                        if let Some(slot) = slot_of(registers, index as usize) {
                            *slot = value;
                        }
                    }
                })
                .map(drop)
                .map_err(|err| kvm_error(&err))
        }

        /// Completes the pending MMIO read or port input with `value` (little-endian).
        #[napi]
        pub fn complete_read_value(&self, value: U64) -> Result<(), JsError> {
            self.idle()?
                .complete_read_value(value.0)
                .map_err(|err| kvm_error(&err))
        }

        /// Completes the pending read with the given bytes.
        #[napi]
        pub fn complete_read_bytes(&self, data: crate::args::RawBytes) -> Result<(), JsError> {
            let vcpu = self.idle()?;
            let mut bytes = vec![0u8; data.len];
            // SAFETY: `data` is the caller's typed array of `len` bytes, valid during this call.
            unsafe {
                std::ptr::copy_nonoverlapping(data.ptr.cast_const(), bytes.as_mut_ptr(), data.len)
            };
            vcpu.complete_read(&bytes).map_err(|err| kvm_error(&err))
        }

        /// Runs until the next exit on the vCPU's thread; `timeout_ms` (0 = none) stops a
        /// looping guest with a `Cancelled` exit.
        #[napi(ts_return_type = "Promise<VcpuExitItem>")]
        pub fn run<'env>(&self, env: &'env Env, timeout_ms: f64) -> Result<Object<'env>, JsError> {
            let runs = self.runs.as_ref().ok_or_else(|| closed("Vcpu"))?;
            if !(0.0..=1e12).contains(&timeout_ms) {
                return Err(invalid_arg("timeoutMs must be between 0 and 1e12"));
            }
            let timeout = (timeout_ms > 0.0).then(|| Duration::from_secs_f64(timeout_ms / 1000.0));
            if self.running.swap(true, Ordering::SeqCst) {
                return Err(kvm_error(&KvmError::VcpuBusy));
            }
            let (sender, receiver) = futures::channel::oneshot::channel();
            let running = self.running.clone();
            let sent = runs.send(Box::new(move |vcpu: &Vcpu| {
                let outcome = vcpu.run(timeout);
                // Cleared before the Promise can settle, so the caller may run again at once.
                running.store(false, Ordering::SeqCst);
                let _ = sender.send(outcome);
            }));
            if sent.is_err() {
                self.running.store(false, Ordering::SeqCst);
                return Err(closed("Vcpu"));
            }
            promise(
                env,
                async move {
                    match receiver.await {
                        Ok(Ok(exit)) => Ok(exit),
                        Ok(Err(err)) => Err(kvm_error(&err)),
                        Err(_) => Err(closed("Vcpu")),
                    }
                },
                |_env, exit| Ok(exit_item(exit)),
            )
        }

        /// Stops a running guest (its run settles with `Cancelled`), or the next run.
        #[napi]
        pub fn cancel(&self) {
            self.vcpu.cancel();
        }

        /// Releases the vCPU (its thread ends after the current run).
        #[napi]
        pub fn close(&mut self) {
            self.vcpu.cancel();
            self.runs = None;
        }
    }

    /// Tiny guest programs (x86 machine code) and the ports they report on.
    #[napi(object, object_from_js = false)]
    pub struct GuestPrograms {
        /// 64-bit: fills `rcx` qwords from `rdi` with `address ^ rdx`, then `out done, al`.
        pub fill_pattern: Buffer,
        /// 64-bit: sums `rcx` qwords from `rdi`, reports low/high halves on the result port.
        pub sum_qwords: Buffer,
        /// 64-bit: `[rsi] = [rdi] + rdx`, then `out done, al`.
        pub load_add_store: Buffer,
        /// 64-bit: writes 1 to each of `rcx` pages from `rsi`, then `out done, al`.
        pub touch_pages: Buffer,
        /// 64-bit: `in eax, input`; `out result, eax`; `out done, al`.
        pub echo_input: Buffer,
        /// Any mode: loops forever.
        pub spin: Buffer,
        /// Real mode or CPL 0: `hlt`.
        pub halt: Buffer,
        /// Real mode: `out done, 0x42`, then `hlt`.
        pub real_mode_out_then_halt: Buffer,
        pub done_port: u32,
        pub result_port: u32,
        pub input_port: u32,
    }

    /// The guest programs of `virt_kvm::programs`.
    #[napi]
    pub fn guest_programs() -> GuestPrograms {
        use virt_kvm::programs as p;
        GuestPrograms {
            fill_pattern: p::FILL_PATTERN.to_vec().into(),
            sum_qwords: p::SUM_QWORDS.to_vec().into(),
            load_add_store: p::LOAD_ADD_STORE.to_vec().into(),
            touch_pages: p::TOUCH_PAGES.to_vec().into(),
            echo_input: p::ECHO_INPUT.to_vec().into(),
            spin: p::SPIN.to_vec().into(),
            halt: p::HALT.to_vec().into(),
            real_mode_out_then_halt: p::REAL_MODE_OUT_THEN_HALT.to_vec().into(),
            done_port: p::DONE_PORT.into(),
            result_port: p::RESULT_PORT.into(),
            input_port: p::INPUT_PORT.into(),
        }
    }

    /// Benchmark baseline (not public API): the raw cost of changing one memory slot, without
    /// this crate. Opens `/dev/kvm` with plain ioctls, creates a VM (turning off
    /// `KVM_X86_QUIRK_SLOT_ZAP_ALL` where offered, as `KvmPartition` does), maps `size` bytes of
    /// fresh anonymous memory as a scratch slot, then times `pairs` rounds of one
    /// `KVM_SET_USER_MEMORY_REGION` delete and one create of that slot. Returns nanoseconds per
    /// delete+create pair.
    #[napi(js_name = "benchKvmRawSlotChurn")]
    pub fn bench_kvm_raw_slot_churn(size: U64, pairs: u32) -> Result<f64, JsError> {
        let size = size.0;
        if size == 0 || size & 0xfff != 0 || size > 1 << 40 || pairs == 0 {
            return Err(invalid_arg(
                "size must be a non-zero multiple of 4 KiB up to 1 TiB and pairs at least 1",
            ));
        }
        // Declared before the VM so that it is dropped after it.
        let memory = raw::AnonymousMemory::new(size as usize)
            .map_err(|err| crate::errors::io_error(&err, "mmap"))?;
        let vm = raw::RawVm::create().map_err(|err| {
            coded(
                "ERR_KVM_UNAVAILABLE",
                format!("KVM is not available: {err}"),
            )
        })?;
        let ioctl_error = |err: std::io::Error| crate::errors::io_error(&err, "ioctl");
        // Far above anything a guest of this VM would use; the VM has no vCPU anyway.
        let gpa = 1 << 40;
        vm.set_slot(1, gpa, size, memory.address())
            .map_err(ioctl_error)?;
        let start = std::time::Instant::now();
        for _ in 0..pairs {
            vm.set_slot(1, gpa, 0, memory.address())
                .map_err(ioctl_error)?;
            vm.set_slot(1, gpa, size, memory.address())
                .map_err(ioctl_error)?;
        }
        Ok(start.elapsed().as_nanos() as f64 / f64::from(pairs))
    }

    /// Plain-ioctl KVM access for the benchmark baseline (no `kvm-ioctls`, no slot table).
    mod raw {
        use std::io;

        const KVMIO: libc::c_ulong = 0xae;
        /// `_IO(KVMIO, 0x01)`.
        const KVM_CREATE_VM: libc::c_ulong = (KVMIO << 8) | 0x01;
        /// `_IO(KVMIO, 0x03)`.
        const KVM_CHECK_EXTENSION: libc::c_ulong = (KVMIO << 8) | 0x03;
        /// `_IOW(KVMIO, 0x46, struct kvm_userspace_memory_region)` (32 bytes).
        const KVM_SET_USER_MEMORY_REGION: libc::c_ulong =
            (1 << 30) | (32 << 16) | (KVMIO << 8) | 0x46;
        /// `_IOW(KVMIO, 0xa3, struct kvm_enable_cap)` (104 bytes).
        const KVM_ENABLE_CAP: libc::c_ulong = (1 << 30) | (104 << 16) | (KVMIO << 8) | 0xa3;
        const KVM_CAP_DISABLE_QUIRKS2: u32 = 213;
        const KVM_X86_QUIRK_SLOT_ZAP_ALL: u64 = 1 << 7;

        #[repr(C)]
        struct UserspaceMemoryRegion {
            slot: u32,
            flags: u32,
            guest_phys_addr: u64,
            memory_size: u64,
            userspace_addr: u64,
        }

        #[repr(C)]
        struct EnableCap {
            cap: u32,
            flags: u32,
            args: [u64; 4],
            pad: [u8; 64],
        }

        /// An owned file descriptor closed on drop.
        struct Fd(libc::c_int);

        impl Drop for Fd {
            fn drop(&mut self) {
                // SAFETY: the descriptor is owned by this value and closed once.
                unsafe { libc::close(self.0) };
            }
        }

        /// `/dev/kvm` and one VM made from it.
        pub struct RawVm {
            _kvm: Fd,
            vm: Fd,
        }

        impl RawVm {
            pub fn create() -> io::Result<Self> {
                // SAFETY: opens a device by a valid C string path; the result is checked.
                let kvm =
                    unsafe { libc::open(c"/dev/kvm".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
                if kvm < 0 {
                    return Err(io::Error::last_os_error());
                }
                let kvm = Fd(kvm);
                // SAFETY: KVM_CREATE_VM takes a machine type (0) by value.
                let vm = unsafe { libc::ioctl(kvm.0, KVM_CREATE_VM, 0 as libc::c_ulong) };
                if vm < 0 {
                    return Err(io::Error::last_os_error());
                }
                let vm = Fd(vm);
                // SAFETY: KVM_CHECK_EXTENSION takes the capability number by value.
                let quirks = unsafe {
                    libc::ioctl(
                        vm.0,
                        KVM_CHECK_EXTENSION,
                        libc::c_ulong::from(KVM_CAP_DISABLE_QUIRKS2),
                    )
                };
                if quirks > 0 && (quirks as u64 & KVM_X86_QUIRK_SLOT_ZAP_ALL) != 0 {
                    let cap = EnableCap {
                        cap: KVM_CAP_DISABLE_QUIRKS2,
                        flags: 0,
                        args: [KVM_X86_QUIRK_SLOT_ZAP_ALL, 0, 0, 0],
                        pad: [0; 64],
                    };
                    // SAFETY: KVM_ENABLE_CAP reads a `struct kvm_enable_cap`, which `cap` is
                    // (repr(C), 104 bytes). A refusal keeps the quirk, as KvmPartition does.
                    unsafe { libc::ioctl(vm.0, KVM_ENABLE_CAP, &cap) };
                }
                Ok(RawVm { _kvm: kvm, vm })
            }

            /// Creates (size > 0) or deletes (size 0) slot `slot`.
            pub fn set_slot(&self, slot: u32, gpa: u64, size: u64, host: u64) -> io::Result<()> {
                let region = UserspaceMemoryRegion {
                    slot,
                    flags: 0,
                    guest_phys_addr: gpa,
                    memory_size: size,
                    userspace_addr: host,
                };
                // SAFETY: KVM reads the repr(C) region struct. The host range is the caller's
                // `AnonymousMemory`, which outlives the VM (`bench_kvm_raw_slot_churn` declares
                // it first); the VM has no vCPU, and KVM reaches slot memory only through
                // user-copy paths, never as a fault in this process.
                let rc = unsafe { libc::ioctl(self.vm.0, KVM_SET_USER_MEMORY_REGION, &region) };
                if rc < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            }
        }

        /// Private anonymous memory, unmapped on drop.
        pub struct AnonymousMemory {
            ptr: *mut libc::c_void,
            len: usize,
        }

        impl AnonymousMemory {
            pub fn new(len: usize) -> io::Result<Self> {
                // SAFETY: a fresh mapping at a kernel-chosen address; nothing is replaced.
                let ptr = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        len,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                        -1,
                        0,
                    )
                };
                if ptr == libc::MAP_FAILED {
                    return Err(io::Error::last_os_error());
                }
                Ok(AnonymousMemory { ptr, len })
            }

            pub fn address(&self) -> u64 {
                self.ptr as u64
            }
        }

        impl Drop for AnonymousMemory {
            fn drop(&mut self) {
                // SAFETY: unmaps exactly the mapping this value made.
                unsafe { libc::munmap(self.ptr, self.len) };
            }
        }
    }
}
