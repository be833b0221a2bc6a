//! Binding of the partitions: `RecordingPartition` (`virt`) and, on x86-64, `KvmPartition` and
//! its vCPUs (`virt_kvm`). A vCPU runs on its own thread (`virt_kvm::VcpuThread`); `run()`
//! returns a Promise that settles on the next exit.

use crate::args::U64;
use crate::errors::throw;
use crate::errors::OrThrow;
use js_api::json::list_json;
use js_api::views::RecordedCallView;
use js_api::JsError;
use membacking::GuestMemoryManager;
use napi::bindgen_prelude::ClassInstance;
use napi::bindgen_prelude::Either;
use napi_derive::napi;
use std::sync::Arc;
use virt::PartitionMemoryMap;
use virt::RecordingPartition;

/// A partition that records every map/unmap/prefetch/pin call.
#[napi]
pub struct NativeRecordingPartition {
    inner: Arc<RecordingPartition>,
}

#[napi]
impl NativeRecordingPartition {
    /// An empty log and no failure rules.
    #[napi(constructor)]
    #[allow(clippy::new_without_default, reason = "a JavaScript constructor")]
    pub fn new() -> Self {
        NativeRecordingPartition {
            inner: Arc::new(RecordingPartition::new()),
        }
    }

    /// The whole log, oldest first (JSON).
    #[napi]
    pub fn log(&self) -> String {
        list_json::<_, RecordedCallView>(&self.inner.log())
    }

    /// Empties the log.
    #[napi]
    pub fn clear_log(&self) {
        self.inner.clear_log();
    }

    /// Returns the log and empties it (JSON).
    #[napi]
    pub fn take_log(&self) -> String {
        list_json::<_, RecordedCallView>(&self.inner.take_log())
    }

    /// Makes every later `op` call at `gpa` fail until cleared.
    #[napi]
    pub fn fail_on(&self, op: String, gpa: U64) -> napi::Result<()> {
        let op: virt::RecordedOp = op.parse().or_throw()?;
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

/// A partition argument (`attachPartition`, the attach plan).
#[cfg(target_arch = "x86_64")]
pub type AnyPartition<'env> = Either<
    ClassInstance<'env, NativeRecordingPartition>,
    ClassInstance<'env, kvm::NativeKvmPartition>,
>;
/// A partition argument (`attachPartition`, the attach plan).
#[cfg(not(target_arch = "x86_64"))]
pub type AnyPartition<'env> = Either<ClassInstance<'env, NativeRecordingPartition>, ()>;

/// The partition `manager` would attach (a closed recording partition is refused).
pub fn attachable(partition: &AnyPartition<'_>) -> napi::Result<Arc<dyn PartitionMemoryMap>> {
    match partition {
        Either::A(recording) if recording.inner.is_closed() => {
            Err(throw(JsError::closed("RecordingPartition")))
        }
        Either::A(recording) => Ok(recording.inner.clone()),
        #[cfg(target_arch = "x86_64")]
        Either::B(kvm) => Ok(kvm.kvm()?.clone()),
        #[cfg(not(target_arch = "x86_64"))]
        Either::B(()) => Err(throw(JsError::arg_type(
            "partition must be a RecordingPartition",
        ))),
    }
}

/// Makes a recording partition measure its VA offsets from `manager`'s window: done once the
/// partition is claimed for `manager`, so a refused attach leaves its log's offsets alone.
pub fn measure_va_from(partition: &AnyPartition<'_>, manager: &GuestMemoryManager) {
    if let Either::A(recording) = partition {
        recording.inner.set_va_base(manager.va_window_base());
    }
}

/// KVM exists on every Linux architecture, but the vCPU runner programs x86 long mode.
#[cfg(target_arch = "x86_64")]
pub mod kvm {
    use super::*;
    use crate::args::RawBytes;
    use crate::promise::promise;
    use js_api::executor::Polling;
    use js_api::json::to_json;
    use js_api::kvm::register_updates;
    use js_api::kvm::run_outcome;
    use js_api::kvm::vcpu_options;
    use js_api::views::KvmInspectView;
    use js_api::views::RegistersView;
    use js_api::views::SlotLogView;
    use js_api::ToJsError;
    use napi::bindgen_prelude::BigUint64Array;
    use napi::bindgen_prelude::Buffer;
    use napi::bindgen_prelude::Object;
    use napi::Env;
    use virt_kvm::KvmPartition;
    use virt_kvm::KvmPartitionOptions;
    use virt_kvm::VcpuThread;

    /// A real KVM virtual machine whose memory slots follow the manager's regions.
    #[napi]
    pub struct NativeKvmPartition {
        inner: Option<Arc<KvmPartition>>,
    }

    impl NativeKvmPartition {
        pub(super) fn kvm(&self) -> napi::Result<&Arc<KvmPartition>> {
            self.inner
                .as_ref()
                .ok_or_else(|| throw(JsError::closed("KvmPartition")))
        }
    }

    /// Creates a VM (on the executor: it takes a few hundred microseconds).
    #[napi(ts_return_type = "Promise<NativeKvmPartition>")]
    pub fn kvm_partition_create<'env>(
        env: &'env Env,
        disable_slot_zap_all_quirk: bool,
    ) -> napi::Result<Object<'env>> {
        let options = KvmPartitionOptions {
            disable_slot_zap_all_quirk,
            ..Default::default()
        };
        promise(
            env,
            Polling::Pool,
            async move { KvmPartition::create(options).map_err(|error| error.to_js_error()) },
            |_env, partition| {
                Ok(NativeKvmPartition {
                    inner: Some(Arc::new(partition)),
                })
            },
        )
    }

    #[napi]
    impl NativeKvmPartition {
        /// The slot table and the partition's facts (JSON).
        #[napi]
        pub fn inspect(&self) -> napi::Result<String> {
            Ok(to_json(&KvmInspectView::from(&self.kvm()?.inspect())))
        }

        /// Creates a vCPU in `mode` (a `VcpuMode`); long mode writes identity-mapped page tables
        /// at `page_tables` (`[start, end]`, guest RAM mapped in this partition) through the
        /// slots' host memory.
        #[napi]
        pub fn create_vcpu(
            &self,
            mode: String,
            page_tables: Option<BigUint64Array>,
            cpl: Option<u32>,
        ) -> napi::Result<NativeVcpu> {
            let kvm = self.kvm()?;
            let options = vcpu_options(&mode, page_tables.as_deref(), cpl).or_throw()?;
            let vcpu = kvm.create_vcpu(&options, kvm.as_ref()).or_throw()?;
            let thread = VcpuThread::start(vcpu)
                .map_err(|error| throw(JsError::os(&error, "pthread_create")))?;
            Ok(NativeVcpu { thread })
        }

        /// The last map/unmap calls with the slot ids each created and deleted (JSON).
        #[napi]
        pub fn slot_log(&self) -> napi::Result<String> {
            Ok(list_json::<_, SlotLogView>(&self.kvm()?.slot_log()))
        }

        /// Returns the slot log and empties it (JSON).
        #[napi]
        pub fn take_slot_log(&self) -> napi::Result<String> {
            Ok(list_json::<_, SlotLogView>(&self.kvm()?.take_slot_log()))
        }

        /// Destroys the VM: closes its vCPUs (running ones are cancelled and release their fd
        /// as the run returns) and drops this object's reference, the only lasting one (managers
        /// hold partitions weakly), so the VM fd and its memory slots go now or, if a manager
        /// call is using the partition at this moment, when that call returns.
        #[napi]
        pub fn close(&mut self) {
            if let Some(kvm) = self.inner.take() {
                kvm.close_vcpus();
            }
        }
    }

    /// One vCPU with its run thread.
    #[napi]
    pub struct NativeVcpu {
        thread: VcpuThread,
    }

    #[napi]
    impl NativeVcpu {
        /// The vCPU index.
        #[napi(getter)]
        pub fn id(&self) -> u32 {
            self.thread.id()
        }

        /// Whether the vCPU is closed (by `close()` or by its partition's).
        #[napi(getter)]
        pub fn closed(&self) -> bool {
            self.thread.is_closed()
        }

        /// The registers (JSON `{rax: bigint, …}`).
        #[napi]
        pub fn get_registers(&self) -> napi::Result<String> {
            let vcpu = self.thread.idle().or_throw()?;
            let registers = vcpu.get_registers().or_throw()?;
            Ok(to_json(&RegistersView(registers)))
        }

        /// Sets the registers `names` to `values`; the others keep their values.
        #[napi]
        pub fn set_registers(
            &self,
            names: Vec<String>,
            values: BigUint64Array,
        ) -> napi::Result<()> {
            let update = register_updates(&names, &values).or_throw()?;
            let vcpu = self.thread.idle().or_throw()?;
            vcpu.update_registers(update).map(drop).or_throw()
        }

        /// Completes the pending MMIO read or port input with `value` (little-endian).
        #[napi]
        pub fn complete_read_value(&self, value: U64) -> napi::Result<()> {
            let vcpu = self.thread.idle().or_throw()?;
            vcpu.complete_read_value(value.0).or_throw()
        }

        /// Completes the pending read with the given bytes.
        #[napi]
        pub fn complete_read_bytes(&self, data: RawBytes) -> napi::Result<()> {
            let vcpu = self.thread.idle().or_throw()?;
            vcpu.complete_read(&data.to_vec().or_throw()?).or_throw()
        }

        /// Runs until the next exit on the vCPU's thread (JSON `VcpuExit`); `timeout_ms`
        /// (0 = none) stops a looping guest with a `Cancelled` exit.
        #[napi(ts_return_type = "Promise<string>")]
        pub fn run<'env>(&self, env: &'env Env, timeout_ms: f64) -> napi::Result<Object<'env>> {
            let timeout = js_api::args::timeout(timeout_ms).or_throw()?;
            let (sender, receiver) = futures::channel::oneshot::channel();
            self.thread
                .run(timeout, move |outcome| {
                    let _ = sender.send(outcome);
                })
                .or_throw()?;
            let exit = async move { run_outcome(receiver.await.ok()) };
            promise(env, Polling::Inline, exit, |_env, json| Ok(json))
        }

        /// Stops a running guest (its run settles with `Cancelled`), or the next run.
        #[napi]
        pub fn cancel(&self) {
            self.thread.cancel();
        }

        /// Releases the vCPU: its fd and thread go at once, or as the run in flight (cancelled)
        /// returns.
        #[napi]
        pub fn close(&self) {
            self.thread.close();
        }
    }

    /// Tiny guest programs (x86 machine code) and the ports they report on.
    #[napi(object, object_from_js = false)]
    pub struct GuestPrograms {
        pub fill_pattern: Buffer,
        pub sum_qwords: Buffer,
        pub load_add_store: Buffer,
        pub touch_pages: Buffer,
        pub echo_input: Buffer,
        pub spin: Buffer,
        pub halt: Buffer,
        pub real_mode_out_then_halt: Buffer,
        pub done_port: u16,
        pub result_port: u16,
        pub input_port: u16,
    }

    /// The guest programs of `virt_kvm::programs` (documented there).
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
            done_port: p::DONE_PORT,
            result_port: p::RESULT_PORT,
            input_port: p::INPUT_PORT,
        }
    }
}
