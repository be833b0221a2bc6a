//! KVM partition costs, each printed as one JSON line in the project's benchmark format
//! (`docs/design.md`, "Benchmarks"): `{"name","value","unit","baseline","baselineValue","ratio"}`,
//! with `ratio = value / baselineValue` (times).
//!
//! 1. One delete + create of a 16 KiB slot through `KvmPartition` (`unmap_range` +
//!    `map_range`) against the raw `KVM_SET_USER_MEMORY_REGION` pair, on an idle VM.
//! 2. The same slot change on a VM whose guest has 256 MiB mapped, with
//!    `KVM_X86_QUIRK_SLOT_ZAP_ALL` off (the partition's default) against on (KVM's default),
//!    and the guest's re-touch of the 256 MiB afterwards.
//! 3. Guest first touch of 256 MiB of memfd RAM after `prefetch_range` against not prefetched.
//! 4. One `Vcpu::run` exit round trip (guest `out`) against a raw `KVM_RUN` loop on the same
//!    kind of guest, and the cost of running a vCPU from a different thread each time (KVM
//!    re-assigns the vCPU's thread) against always the same thread.
//! 5. `parallel_prefetch`: mapping a fresh memfd of `MEMBACKING_PREFETCH_BENCH_MIB` MiB
//!    (default 1024) as a slot and prefetching it with `KvmPartition` (one thread per CPU)
//!    against the floor measured in the same run: `MADV_POPULATE_WRITE` of a fresh memfd of the
//!    same size with the same number of threads, plus what KVM itself must do, which is creating
//!    the slot (`KVM_SET_USER_MEMORY_REGION`; populating host pages does not involve KVM). Target
//!    floor / ours >= 0.8. Also shown: the same prefetch with one thread, and `fallocate` of the
//!    memfd.
//!
//! Run with `cargo bench -p virt_kvm` (`-- NAME` for one measurement). Needs /dev/kvm (prints a skip line otherwise). The
//! guest is a 64-bit CPL3 loop, the mode that runs natively on software hypervisors (PVM).

// Unsafe code: the raw baselines call KVM ioctls on host memory by address.
#![allow(unsafe_code)]

use kvm_bindings::kvm_userspace_memory_region;
use memory_range::MemoryRange;
use std::time::Duration;
use std::time::Instant;
use virt::PartitionMemoryMap;
use virt_kvm::programs;
use virt_kvm::KvmError;
use virt_kvm::KvmPartition;
use virt_kvm::KvmPartitionOptions;
use virt_kvm::Vcpu;
use virt_kvm::VcpuExit;
use virt_kvm::VcpuOptions;
use virt_kvm::PAGE_TABLES_SIZE;

const MIB: usize = 1 << 20;
const TEST_SIZE: usize = 256 * MIB;
const TEST_GPA: u64 = 0x1000_0000;
const CHURN_GPA: u64 = 0x4000_0000;
const CHURN_SIZE: usize = 16 * 1024;
const LOW_SIZE: usize = 4 * MIB;
const TOUCH_AT: u64 = 0x1000;
const PAGE_TABLES_AT: u64 = 0x10_0000;
const REPS: usize = 5;

/// A host mapping unmapped on drop (with its memfd, closed on drop, or -1).
struct Mapping {
    ptr: *mut u8,
    len: usize,
    fd: libc::c_int,
}

impl Mapping {
    fn anonymous(len: usize) -> Self {
        Self::map(len, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1)
    }

    /// A fresh memfd of `len` bytes, mapped shared (the memory manager's kind of RAM).
    fn memfd(len: usize) -> Self {
        // SAFETY: creates a new anonymous file; the name is a valid C string.
        let fd = unsafe { libc::memfd_create(c"virt_kvm-bench".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create failed");
        let size = libc::off_t::try_from(len).expect("a memfd size");
        // SAFETY: `fd` is the memfd just created.
        assert_eq!(unsafe { libc::ftruncate(fd, size) }, 0);
        Self::map(len, libc::MAP_SHARED, fd)
    }

    fn map(len: usize, flags: libc::c_int, fd: libc::c_int) -> Self {
        // SAFETY: a new mapping at a kernel-chosen address; nothing existing is replaced.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap failed");
        Self {
            ptr: ptr.cast(),
            len,
            fd,
        }
    }

    fn write(&self, offset: usize, data: &[u8]) {
        assert!(offset + data.len() <= self.len);
        // SAFETY: in bounds of the live mapping; the guest is not running.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(offset), data.len()) };
    }

    fn populate(&self) {
        // SAFETY: populates pages of this live mapping only.
        let rc = unsafe { libc::madvise(self.ptr.cast(), self.len, libc::MADV_POPULATE_WRITE) };
        assert_eq!(rc, 0, "MADV_POPULATE_WRITE failed");
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly this mapping and closes our own descriptor.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
            if self.fd >= 0 {
                libc::close(self.fd);
            }
        }
    }
}

/// Allocates, touches and frees 1 GiB, so later first touches do not measure the outer
/// hypervisor handing memory back: on the project machine the kernel reports memory that stayed
/// free for a few seconds to the outer hypervisor, and touching it again then costs several
/// microseconds per page there.
fn warm_vm_memory() {
    let warm = Mapping::anonymous(1 << 30);
    warm.populate();
}

/// A partition with a low RAM slot holding the touch loop and the page tables, plus one vCPU.
struct Guest {
    partition: KvmPartition,
    _low: Mapping,
    vcpu: Vcpu,
}

impl Guest {
    fn new(options: KvmPartitionOptions) -> Result<Self, KvmError> {
        let partition = KvmPartition::create(options)?;
        let low = Mapping::anonymous(LOW_SIZE);
        low.write(usize::try_from(TOUCH_AT).unwrap(), programs::TOUCH_PAGES);
        partition
            .map_range(low.ptr, low.len, 0, true, true)
            .expect("map the low slot");
        let writer = |gpa: u64, data: &[u8]| -> Result<(), virt::Error> {
            low.write(usize::try_from(gpa)?, data);
            Ok(())
        };
        let vcpu = partition.create_vcpu(
            &VcpuOptions::long(MemoryRange::new(
                PAGE_TABLES_AT..PAGE_TABLES_AT + PAGE_TABLES_SIZE,
            )),
            &writer,
        )?;
        Ok(Self {
            partition,
            _low: low,
            vcpu,
        })
    }

    /// Runs the touch loop over `[gpa, gpa + len)`; returns ns per 4 KiB page.
    fn touch(&self, gpa: u64, len: usize) -> f64 {
        let pages = (len / 4096) as u64;
        let mut registers = self.vcpu.get_registers().expect("registers");
        registers.rip = TOUCH_AT;
        registers.rsi = gpa;
        registers.rcx = pages;
        self.vcpu.set_registers(&registers).expect("registers");
        let start = Instant::now();
        let exit = self.vcpu.run(Some(Duration::from_secs(120))).expect("run");
        let elapsed = start.elapsed();
        assert!(
            matches!(
                exit,
                VcpuExit::IoOut {
                    port: programs::DONE_PORT,
                    ..
                }
            ),
            "touch loop ended with {exit:?}"
        );
        elapsed.as_nanos() as f64 / pages as f64
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn round3(value: f64) -> f64 {
    if value == 0.0 {
        return 0.0;
    }
    // Three significant digits: round at the power of ten two below the leading digit.
    let scale = 10f64.powf(2.0 - value.abs().log10().floor());
    (value * scale).round() / scale
}

/// One benchmark line (field order as `docs/design.md` lists it).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Line<'a> {
    name: &'a str,
    value: f64,
    unit: &'a str,
    baseline: &'a str,
    baseline_value: f64,
    ratio: f64,
}

fn report(name: &str, value: f64, unit: &str, baseline: &str, baseline_value: f64) {
    let line = Line {
        name,
        value: round3(value),
        unit,
        baseline,
        baseline_value: round3(baseline_value),
        ratio: round3(value / baseline_value),
    };
    println!("{}", serde_json::to_string(&line).expect("serialisable"));
}

/// A benchmark line with a target on `ratio = baseline / value` (a floor reached when >= 1).
fn report_target(
    name: &str,
    value: f64,
    unit: &str,
    baseline: &str,
    baseline_value: f64,
    target: &str,
) {
    let ratio = round3(baseline_value / value);
    let bound: f64 = target
        .trim_start_matches(">=")
        .trim()
        .parse()
        .expect("target");
    println!(
        "{}",
        serde_json::json!({
            "name": name,
            "value": round3(value),
            "unit": unit,
            "baseline": baseline,
            "baselineValue": round3(baseline_value),
            "ratio": ratio,
            "target": target,
            "met": ratio >= bound,
        })
    );
}

fn raw_region(slot: u32, memory: &Mapping, size: usize) -> kvm_userspace_memory_region {
    kvm_userspace_memory_region {
        slot,
        flags: 0,
        guest_phys_addr: CHURN_GPA,
        memory_size: size as u64,
        userspace_addr: memory.ptr as u64,
    }
}

/// 1. Idle VM: KvmPartition unmap+map of a 16 KiB slot vs the raw ioctl pair.
fn slot_churn_idle() {
    let raw_vm = kvm_ioctls::Kvm::new()
        .and_then(|kvm| kvm.create_vm())
        .expect("raw VM");
    let partition = KvmPartition::create(KvmPartitionOptions::default()).expect("partition");
    let memory = Mapping::anonymous(CHURN_SIZE);
    const N: usize = 200;
    let set = |region| {
        // SAFETY: `memory` outlives the VM's use of it (the slot is deleted before it is
        // dropped), and no vCPU runs.
        unsafe { raw_vm.set_user_memory_region(region) }.expect("raw ioctl");
    };
    set(raw_region(0, &memory, CHURN_SIZE));
    partition
        .map_range(memory.ptr, CHURN_SIZE, CHURN_GPA, true, false)
        .unwrap();
    let (mut raw, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..REPS {
        let start = Instant::now();
        for _ in 0..N {
            set(raw_region(0, &memory, 0));
            set(raw_region(0, &memory, CHURN_SIZE));
        }
        raw.push(start.elapsed().as_nanos() as f64 / N as f64 / 1e3);
        let start = Instant::now();
        for _ in 0..N {
            partition.unmap_range(CHURN_GPA, CHURN_SIZE as u64).unwrap();
            partition
                .map_range(memory.ptr, CHURN_SIZE, CHURN_GPA, true, false)
                .unwrap();
        }
        ours.push(start.elapsed().as_nanos() as f64 / N as f64 / 1e3);
    }
    set(raw_region(0, &memory, 0));
    partition.unmap_range(CHURN_GPA, CHURN_SIZE as u64).unwrap();
    report(
        "KvmPartition unmap_range+map_range 16KiB slot (idle VM)",
        median(&mut ours),
        "us",
        "raw KVM_SET_USER_MEMORY_REGION delete+create 16KiB (idle VM)",
        median(&mut raw),
    );
}

/// 2. Running VM with 256 MiB guest-mapped: the slot change and the guest's re-touch, with the
///    SLOT_ZAP_ALL quirk off (default) vs on.
fn slot_churn_running() {
    let mut results = Vec::new();
    for disable in [true, false] {
        warm_vm_memory();
        let guest = Guest::new(KvmPartitionOptions {
            disable_slot_zap_all_quirk: disable,
            ..Default::default()
        })
        .expect("guest");
        let ram = Mapping::memfd(TEST_SIZE);
        ram.populate();
        guest
            .partition
            .map_range(ram.ptr, ram.len, TEST_GPA, true, false)
            .unwrap();
        let churn = Mapping::anonymous(CHURN_SIZE);
        guest
            .partition
            .map_range(churn.ptr, CHURN_SIZE, CHURN_GPA, true, false)
            .unwrap();
        guest.touch(TEST_GPA, TEST_SIZE);
        let (mut change, mut retouch) = (Vec::new(), Vec::new());
        for _ in 0..REPS {
            guest.touch(TEST_GPA, TEST_SIZE);
            let start = Instant::now();
            guest
                .partition
                .unmap_range(CHURN_GPA, CHURN_SIZE as u64)
                .unwrap();
            guest
                .partition
                .map_range(churn.ptr, CHURN_SIZE, CHURN_GPA, true, false)
                .unwrap();
            change.push(start.elapsed().as_nanos() as f64 / 1e3);
            retouch.push(guest.touch(TEST_GPA, TEST_SIZE));
        }
        assert_eq!(guest.partition.slot_zap_all_quirk_disabled(), disable);
        results.push((median(&mut change), median(&mut retouch)));
    }
    let ((off_change, off_retouch), (on_change, on_retouch)) = (results[0], results[1]);
    report(
        "KvmPartition 16KiB slot delete+create, 256MiB guest-mapped, SLOT_ZAP_ALL off (default)",
        off_change,
        "us",
        "same with KVM_X86_QUIRK_SLOT_ZAP_ALL on (KVM default)",
        on_change,
    );
    report(
        "guest re-touch of 256MiB after a 16KiB slot change, SLOT_ZAP_ALL off (per 4K)",
        off_retouch,
        "ns/page",
        "same with KVM_X86_QUIRK_SLOT_ZAP_ALL on",
        on_retouch,
    );
}

/// 3. Guest first touch of 256 MiB of fresh memfd RAM, prefetched vs not.
fn first_touch() {
    let (mut plain, mut prefetched, mut with_prefetch) = (Vec::new(), Vec::new(), Vec::new());
    warm_vm_memory();
    for _ in 0..REPS {
        for prefetch in [false, true] {
            let guest = Guest::new(KvmPartitionOptions::default()).expect("guest");
            let ram = Mapping::memfd(TEST_SIZE);
            guest
                .partition
                .map_range(ram.ptr, ram.len, TEST_GPA, true, false)
                .unwrap();
            let mut prefetch_ns = 0.0;
            if prefetch {
                let start = Instant::now();
                guest
                    .partition
                    .prefetch_range(TEST_GPA, TEST_SIZE as u64)
                    .unwrap();
                prefetch_ns = start.elapsed().as_nanos() as f64 / (TEST_SIZE / 4096) as f64;
            }
            let touch = guest.touch(TEST_GPA, TEST_SIZE);
            if prefetch {
                prefetched.push(touch);
                with_prefetch.push(touch + prefetch_ns);
            } else {
                plain.push(touch);
            }
        }
    }
    let plain = median(&mut plain);
    report(
        "guest first touch of 256MiB memfd RAM after prefetch_range (per 4K)",
        median(&mut prefetched),
        "ns/page",
        "guest first touch of 256MiB memfd RAM, not prefetched",
        plain,
    );
    report(
        "prefetch_range + guest first touch of 256MiB memfd RAM (per 4K)",
        median(&mut with_prefetch),
        "ns/page",
        "guest first touch of 256MiB memfd RAM, not prefetched",
        plain,
    );
}

/// The DONE_PORT loop the touch program ends in: every run is one `out` exit.
fn out_loop_guest() -> Guest {
    let guest = Guest::new(KvmPartitionOptions::default()).expect("guest");
    guest.touch(0x20_0000, 4096);
    guest
}

fn run_out(vcpu: &Vcpu) {
    let exit = vcpu.run(None).expect("run");
    assert!(matches!(
        exit,
        VcpuExit::IoOut {
            port: programs::DONE_PORT,
            ..
        }
    ));
}

/// 4a. `Vcpu::run` round trip vs a raw `VcpuFd::run` loop on an identical guest.
fn exit_round_trip() {
    const N: usize = 2000;
    let guest = out_loop_guest();
    // The raw guest: same memory layout, registers and segments, driven by kvm-ioctls only.
    let kvm = kvm_ioctls::Kvm::new().expect("kvm");
    let vm = kvm.create_vm().expect("vm");
    let low = Mapping::anonymous(LOW_SIZE);
    low.write(usize::try_from(TOUCH_AT).unwrap(), programs::TOUCH_PAGES);
    low.write(
        usize::try_from(PAGE_TABLES_AT).unwrap(),
        &virt_kvm::page_tables::identity_map(PAGE_TABLES_AT),
    );
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: LOW_SIZE as u64,
        userspace_addr: low.ptr as u64,
    };
    // SAFETY: `low` stays mapped until after `vm` is dropped at the end of this function.
    unsafe { vm.set_user_memory_region(region) }.expect("slot");
    let mut raw = vm.create_vcpu(0).expect("vcpu");
    let cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .expect("cpuid");
    raw.set_cpuid2(&cpuid).expect("cpuid");
    let source = guest.vcpu.get_registers().expect("registers");
    // The mode setup `create_vcpu` does for CPL 3 (control registers, flat segments).
    let mut sregs = raw.get_sregs().expect("sregs");
    sregs.cr0 = 0x8005_0033;
    sregs.cr3 = PAGE_TABLES_AT;
    sregs.cr4 = 0x620;
    sregs.efer = 0x500;
    let code = kvm_bindings::kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x1b,
        type_: 11,
        present: 1,
        dpl: 3,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        ..Default::default()
    };
    let data = kvm_bindings::kvm_segment {
        selector: 0x23,
        type_: 3,
        db: 1,
        l: 0,
        ..code
    };
    sregs.cs = code;
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    raw.set_sregs(&sregs).expect("sregs");
    raw.set_regs(&kvm_bindings::kvm_regs {
        rip: source.rip,
        rflags: source.rflags,
        ..Default::default()
    })
    .expect("regs");
    let mut raw_out = || match raw.run() {
        Ok(kvm_ioctls::VcpuExit::IoOut(port, _)) => assert_eq!(port, programs::DONE_PORT),
        other => panic!("raw guest: {other:?}"),
    };
    raw_out();
    let (mut ours, mut baseline) = (Vec::new(), Vec::new());
    for _ in 0..REPS {
        let start = Instant::now();
        for _ in 0..N {
            raw_out();
        }
        baseline.push(start.elapsed().as_nanos() as f64 / N as f64 / 1e3);
        let start = Instant::now();
        for _ in 0..N {
            run_out(&guest.vcpu);
        }
        ours.push(start.elapsed().as_nanos() as f64 / N as f64 / 1e3);
    }
    report(
        "Vcpu::run exit round trip, 64-bit CPL3 guest out",
        median(&mut ours),
        "us",
        "raw KVM_RUN loop (kvm-ioctls VcpuFd::run), same guest",
        median(&mut baseline),
    );
    drop(raw);
    drop(vm);
    drop(low);
}

/// 4b. Each run on another thread vs always the same thread, both handed over by channels.
fn thread_switch() {
    use std::sync::mpsc;
    const N: usize = 100;
    let guest = out_loop_guest();
    let (mut alternating, mut same) = (Vec::new(), Vec::new());
    std::thread::scope(|scope| {
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let workers: Vec<mpsc::Sender<bool>> = (0..2)
            .map(|_| {
                let (tx, rx) = mpsc::channel::<bool>();
                let done_tx = done_tx.clone();
                let vcpu = &guest.vcpu;
                scope.spawn(move || {
                    for run in rx {
                        if run {
                            run_out(vcpu);
                        }
                        done_tx.send(()).unwrap();
                    }
                });
                tx
            })
            .collect();
        let round = |pick: &dyn Fn(usize) -> (usize, usize)| {
            let start = Instant::now();
            for i in 0..N {
                // Both workers get a job each time (same handoff cost); only one runs.
                let (runner, idle) = pick(i);
                workers[runner].send(true).unwrap();
                done_rx.recv().unwrap();
                workers[idle].send(false).unwrap();
                done_rx.recv().unwrap();
            }
            start.elapsed().as_nanos() as f64 / N as f64 / 1e3
        };
        for _ in 0..REPS {
            alternating.push(round(&|i| (i % 2, 1 - i % 2)));
            same.push(round(&|_| (0, 1)));
        }
        drop(workers);
    });
    report(
        "Vcpu::run exit round trip from a different thread each run",
        median(&mut alternating),
        "us",
        "same, always from the same thread",
        median(&mut same),
    );
}

/// The size of the `parallel_prefetch` measurement.
fn prefetch_bench_size() -> usize {
    std::env::var("MEMBACKING_PREFETCH_BENCH_MIB")
        .ok()
        .and_then(|mib| mib.parse::<usize>().ok())
        .filter(|&mib| mib > 0)
        .unwrap_or(1024)
        * MIB
}

/// Populates `mapping` with `threads` threads, each one contiguous share (the floor).
fn populate_in_parallel(mapping: &Mapping, threads: usize) {
    let share = (mapping.len / threads).next_multiple_of(2 * MIB);
    let base = mapping.ptr as usize;
    std::thread::scope(|scope| {
        for start in (0..mapping.len).step_by(share) {
            let len = share.min(mapping.len - start);
            scope.spawn(move || {
                // SAFETY: populates pages of the live mapping only.
                let rc = unsafe {
                    libc::madvise(
                        (base + start) as *mut libc::c_void,
                        len,
                        libc::MADV_POPULATE_WRITE,
                    )
                };
                assert_eq!(rc, 0, "MADV_POPULATE_WRITE failed");
            });
        }
    });
}

/// 5. Parallel prefetch of a fresh memfd slot against `MADV_POPULATE_WRITE` with as many
///    threads plus the slot creation.
fn parallel_prefetch() {
    let size = prefetch_bench_size();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    const GPA: u64 = 1 << 32;
    let secs = |start: Instant| start.elapsed().as_secs_f64();
    let (mut populate, mut slot, mut ours, mut single, mut fallocate) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..3 {
        // Alternate the order, so drift in the machine's load does not favour one side.
        let order: [u8; 4] = if round % 2 == 0 {
            [0, 1, 2, 3]
        } else {
            [3, 2, 1, 0]
        };
        for which in order {
            warm_vm_memory();
            let memory = Mapping::memfd(size);
            match which {
                0 => {
                    let start = Instant::now();
                    populate_in_parallel(&memory, threads);
                    populate.push(secs(start));
                    let vm = kvm_ioctls::Kvm::new()
                        .and_then(|kvm| kvm.create_vm())
                        .expect("raw VM");
                    let region = kvm_userspace_memory_region {
                        slot: 0,
                        flags: 0,
                        guest_phys_addr: GPA,
                        memory_size: size as u64,
                        userspace_addr: memory.ptr as u64,
                    };
                    let start = Instant::now();
                    // SAFETY: `memory` outlives the VM, which runs no vCPU.
                    unsafe { vm.set_user_memory_region(region) }.expect("raw slot");
                    slot.push(secs(start));
                }
                1 | 2 => {
                    let partition = KvmPartition::create(KvmPartitionOptions {
                        prefetch_threads: if which == 1 { threads } else { 1 },
                        ..Default::default()
                    })
                    .expect("partition");
                    let start = Instant::now();
                    partition
                        .map_range(memory.ptr, size, GPA, true, false)
                        .expect("map");
                    partition
                        .prefetch_range(GPA, size as u64)
                        .expect("prefetch");
                    if which == 1 { &mut ours } else { &mut single }.push(secs(start));
                }
                _ => {
                    // The memfd is already mapped; fallocate allocates its pages without
                    // touching the mapping.
                    let length = libc::off_t::try_from(size).expect("a memfd size");
                    let start = Instant::now();
                    // SAFETY: allocating the blocks of our own memfd.
                    let rc = unsafe { libc::fallocate(memory.fd, 0, 0, length) };
                    fallocate.push(secs(start));
                    assert_eq!(rc, 0, "fallocate failed");
                }
            }
        }
    }
    let (populate, slot) = (median(&mut populate), median(&mut slot));
    let floor = populate + slot;
    let ours = median(&mut ours);
    let mib = size / MIB;
    report_target(
        &format!("KvmPartition map + prefetch of a fresh {mib} MiB memfd slot, {threads} threads (floor / ours)"),
        ours,
        "s",
        &format!(
            "floor: MADV_POPULATE_WRITE with {threads} threads ({populate:.3} s) + KVM's part, the slot creation ({slot:.4} s)"
        ),
        floor,
        ">= 0.8",
    );
    report(
        &format!("KvmPartition map + prefetch of a fresh {mib} MiB memfd slot, 1 thread"),
        median(&mut single),
        "s",
        &format!("same with {threads} threads"),
        ours,
    );
    report(
        &format!("fallocate of a fresh {mib} MiB memfd (allocation only, nothing mapped)"),
        median(&mut fallocate),
        "s",
        &format!("KvmPartition map + prefetch, {threads} threads"),
        ours,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too, briefly: skip then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("kvm_costs: run with `cargo bench -p virt_kvm` to measure");
        return;
    }
    if let Err(err) = KvmPartition::create(KvmPartitionOptions::default()) {
        let cause = std::error::Error::source(&err).map_or(String::new(), |s| format!(": {s}"));
        println!("kvm_costs: SKIPPED: {err}{cause}");
        return;
    }
    // `cargo bench -p virt_kvm -- NAME` runs only the measurements whose name contains NAME.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let all: [(&str, fn()); 6] = [
        ("slot_churn_idle", slot_churn_idle),
        ("slot_churn_running", slot_churn_running),
        ("first_touch", first_touch),
        ("exit_round_trip", exit_round_trip),
        ("thread_switch", thread_switch),
        ("parallel_prefetch", parallel_prefetch),
    ];
    for (name, measure) in all {
        if filter.as_deref().is_none_or(|f| name.contains(f)) {
            measure();
        }
    }
}
