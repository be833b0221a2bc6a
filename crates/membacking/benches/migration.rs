//! Benchmarks of live migration, each printed as one JSON line in the project's benchmark
//! format (`name`, `value`, `unit`, `baseline`, `baselineValue`, `ratio`, and `target`/`met`
//! where a target is set) with a baseline measured in the same run over the same socket:
//!
//! - `migration_total_idle_1gib_256mib`: the total time of migrating an idle 1 GiB guest with
//!   256 MiB touched over a Unix socketpair (from the call to the destination's
//!   acknowledgement; the destination builds its manager and writes every page into its RAM),
//!   against writing the same number of bytes raw through the same socketpair, read by a
//!   thread into a reused buffer (target ≤ 1.3×).
//! - `migration_downtime_dirtying_1mib_per_10ms`: the downtime (pause resolved → completion
//!   acknowledged) of a guest that dirties 1 MiB every 10 ms (a KVM guest where `/dev/kvm`
//!   opens, else a thread writing through guest memory), against writing the final round's
//!   page bytes raw through the same socketpair (target ≤ 2×).
//!
//! Each also gets a line without a target against the bare *copy path* of the same bytes
//! (`pread` from the source's RAM memfd, the same socketpair, `pwrite` into a memfd — fresh for
//! the total, onto existing pages for the downtime), which every migration has to pay for: what
//! the protocol adds on top of it; and one against the *data floor*: the sum of the raw send,
//! reading the same bytes out of the source's RAM memfd (`pread`, no socket) and writing them
//! into fresh pages of a memfd (`pwrite`, no socket: page allocation and the copy). The
//! allocation alone (`fallocate` of as many fresh pages) is printed on stderr. On a loaded
//! 2-core machine the parts cannot overlap, so their sum is what any migration that reads the
//! guest's pages and writes them into new memory pays.
//!
//! Every measurement that allocates memory (ours, the raw send, the copy path, the writes into
//! fresh pages, the allocation) is preceded by touching and freeing 1 GiB, so that none of
//! them pays for memory the host handed back to the outer hypervisor.
//!
//! Each figure is the median of interleaved runs; the spread (min–max of both) is printed on
//! stderr. Run with `cargo bench -p membacking --bench migration`
//! (`MIGRATION_BENCH=total|downtime` runs one group, `MIGRATION_BENCH_RUNS` sets the runs).

mod support;

use futures::executor::block_on;
use membacking::migration::MigrateFromOptions;
use membacking::migration::MigrateOptions;
use membacking::migration::MigrationInfo;
use membacking::migration::MigrationTransport;
use membacking::GuestMemoryBuilder;
use membacking::GuestMemoryManager;
use memory_range::MemoryRange;
use std::io::Read;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use support::median;
use support::random_bytes;
use support::warm_up;
use support::Figure;
use support::Rng;
use vm_topology::memory::MemoryLayout;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const PAGE: usize = 4096;
const MMIO_GAP: MemoryRange = MemoryRange::new(0xC000_0000..0x1_0000_0000);

fn spread(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(0.0, f64::max);
    format!("{min:.3}–{max:.3}")
}

/// A 1 GiB guest with `touched` bytes of random data in 128 KiB chunks spread over it.
fn guest(touched: u64, seed: u64) -> GuestMemoryManager {
    let layout = MemoryLayout::new(GIB, &[MMIO_GAP], None).unwrap();
    let manager = block_on(GuestMemoryBuilder::new().build(&layout)).unwrap();
    let memory = block_on(manager.client().guest_memory()).unwrap();
    let mut rng = Rng(seed | 1);
    let chunk = 128 * 1024;
    let slots = GIB / chunk;
    let mut chosen = std::collections::BTreeSet::new();
    while (chosen.len() as u64) < touched / chunk {
        // Above 64 MiB: the low part is the downtime benchmark's guest code and working set.
        let slot = rng.next() % slots;
        if slot * chunk >= 64 * MIB {
            chosen.insert(slot);
        }
    }
    let data = random_bytes(&mut rng, usize::try_from(chunk).unwrap());
    for slot in chosen {
        memory.write_at(slot * chunk, &data).unwrap();
    }
    manager
}

/// Writes `bytes` through `socket` from a reused 1 MiB buffer while a thread reads them from
/// `peer` into its own; returns the seconds until the reader has them all.
fn raw_send(socket: &UnixStream, peer: &UnixStream, bytes: u64) -> f64 {
    let mut peer = peer.try_clone().unwrap();
    let buffer = vec![0x5au8; 1 << 20];
    let start = Instant::now();
    let reader = std::thread::spawn(move || {
        let mut scratch = vec![0u8; 1 << 20];
        let mut left = bytes;
        while left > 0 {
            let want = usize::try_from(left.min(scratch.len() as u64)).unwrap();
            let read = peer.read(&mut scratch[..want]).unwrap();
            assert!(read > 0);
            left -= read as u64;
        }
    });
    let mut socket = socket;
    let mut left = bytes;
    while left > 0 {
        let len = usize::try_from(left.min(buffer.len() as u64)).unwrap();
        socket.write_all(&buffer[..len]).unwrap();
        left -= len as u64;
    }
    reader.join().unwrap();
    start.elapsed().as_secs_f64()
}

/// The data path of a migration without the protocol: `runs` of `source`'s RAM object (all
/// its data when `None`) read with `pread` into a reused 1 MiB buffer and written through
/// `socket`, while a thread reads them from `peer` and `pwrite`s them at the same offsets into
/// a memfd of the same size — fresh, or (`existing`) with those pages already written, as a
/// destination has them in its final round. Returns the seconds until the last page is
/// written.
fn copy_path(
    source: &GuestMemoryManager,
    socket: &UnixStream,
    peer: &UnixStream,
    runs: Option<Vec<(u64, u64)>>,
    existing: bool,
) -> f64 {
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileExt;
    let backing = source.shared_memory_backing().unwrap();
    let object = std::fs::File::from(backing.as_fd().try_clone_to_owned().unwrap());
    let size = object.metadata().unwrap().len();
    let runs = runs.unwrap_or_else(|| support::data_runs(object.as_fd(), size));
    let fd = sparse_mmap::alloc_shared_memory(usize::try_from(size).unwrap(), "copy").unwrap();
    let target = std::fs::File::from(fd);
    if existing {
        for &(from, to) in &runs {
            target
                .write_all_at(&vec![1u8; usize::try_from(to - from).unwrap()], from)
                .unwrap();
        }
    }
    let mut peer = peer.try_clone().unwrap();
    let start = Instant::now();
    let receiver = {
        let runs = runs.clone();
        std::thread::spawn(move || {
            let mut buffer = vec![0u8; 1 << 20];
            for (from, to) in runs {
                let mut at = from;
                while at < to {
                    let len = usize::try_from((to - at).min(1 << 20)).unwrap();
                    peer.read_exact(&mut buffer[..len]).unwrap();
                    target.write_all_at(&buffer[..len], at).unwrap();
                    at += len as u64;
                }
            }
            target
        })
    };
    let mut buffer = vec![0u8; 1 << 20];
    let mut socket = socket;
    for &(from, to) in &runs {
        let mut at = from;
        while at < to {
            let len = usize::try_from((to - at).min(1 << 20)).unwrap();
            object.read_exact_at(&mut buffer[..len], at).unwrap();
            socket.write_all(&buffer[..len]).unwrap();
            at += len as u64;
        }
    }
    let target = receiver.join().unwrap();
    let seconds = start.elapsed().as_secs_f64();
    drop(target);
    seconds
}

/// The seconds to `pread` the `runs` of `source`'s RAM object into a reused 1 MiB buffer: reading
/// the guest's pages, which every migration does once.
fn read_ram(source: &GuestMemoryManager, runs: &[(u64, u64)]) -> f64 {
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileExt;
    let backing = source.shared_memory_backing().unwrap();
    let object = std::fs::File::from(backing.as_fd().try_clone_to_owned().unwrap());
    let mut buffer = vec![0u8; 1 << 20];
    let start = Instant::now();
    for &(from, to) in runs {
        let mut at = from;
        while at < to {
            let len = usize::try_from((to - at).min(1 << 20)).unwrap();
            object.read_exact_at(&mut buffer[..len], at).unwrap();
            at += len as u64;
        }
    }
    std::hint::black_box(&buffer);
    start.elapsed().as_secs_f64()
}

/// The seconds to put the `runs` into fresh pages of a new memfd of `size` bytes: `pwrite`
/// from a reused 1 MiB buffer (page allocation and the copy), or with `allocate_only` a
/// `fallocate` of the same ranges (the allocation alone).
fn write_fresh(size: u64, runs: &[(u64, u64)], allocate_only: bool) -> f64 {
    use std::os::unix::fs::FileExt;
    let fd = sparse_mmap::alloc_shared_memory(usize::try_from(size).unwrap(), "fresh").unwrap();
    let target = std::fs::File::from(fd);
    let buffer = vec![0x5au8; 1 << 20];
    let start = Instant::now();
    for &(from, to) in runs {
        if allocate_only {
            rustix::fs::fallocate(
                &target,
                rustix::fs::FallocateFlags::empty(),
                from,
                to - from,
            )
            .unwrap();
            continue;
        }
        let mut at = from;
        while at < to {
            let len = usize::try_from((to - at).min(1 << 20)).unwrap();
            target.write_all_at(&buffer[..len], at).unwrap();
            at += len as u64;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(target);
    seconds
}

/// The runs of `source`'s RAM object that hold data, and its size.
fn ram_runs(source: &GuestMemoryManager) -> (Vec<(u64, u64)>, u64) {
    use std::os::fd::AsFd;
    let backing = source.shared_memory_backing().unwrap();
    let object = std::fs::File::from(backing.as_fd().try_clone_to_owned().unwrap());
    let size = object.metadata().unwrap().len();
    (support::data_runs(object.as_fd(), size), size)
}

/// Migrates `source` over the socketpair `(ours, theirs)`; returns the figures, the seconds
/// from the call to the acknowledgement, and closes the destination.
fn migrate(
    source: &GuestMemoryManager,
    ours: &UnixStream,
    theirs: &UnixStream,
    options: MigrateOptions,
) -> (MigrationInfo, f64) {
    let destination_end = MigrationTransport::unix(theirs.try_clone().unwrap()).unwrap();
    let destination = std::thread::spawn(move || {
        block_on(GuestMemoryBuilder::migrate_from(
            destination_end,
            MigrateFromOptions::default(),
        ))
    });
    let source_end = MigrationTransport::unix(ours.try_clone().unwrap()).unwrap();
    let start = Instant::now();
    let info = block_on(source.migrate(source_end, options)).unwrap();
    let seconds = start.elapsed().as_secs_f64();
    let migrated = destination.join().unwrap().unwrap();
    block_on(migrated.manager.close());
    (info, seconds)
}

fn runs() -> usize {
    std::env::var("MIGRATION_BENCH_RUNS")
        .ok()
        .and_then(|runs| runs.parse().ok())
        .unwrap_or(7)
}

fn total_time() {
    let touched = 256 * MIB;
    let source = guest(touched, 0x1234);
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut migration = Vec::new();
    let mut raw = Vec::new();
    let mut copy = Vec::new();
    let (data, size) = ram_runs(&source);
    let (mut read, mut write, mut allocate, mut floor) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut sent = 0;
    for _ in 0..runs() {
        warm_up();
        let (info, seconds) = migrate(
            &source,
            &ours,
            &theirs,
            MigrateOptions::new(|| async { Ok(None) }),
        );
        sent = info.bytes;
        migration.push(seconds * 1000.0);
        warm_up();
        raw.push(raw_send(&ours, &theirs, touched) * 1000.0);
        warm_up();
        copy.push(copy_path(&source, &ours, &theirs, None, false) * 1000.0);
        read.push(read_ram(&source, &data) * 1000.0);
        warm_up();
        write.push(write_fresh(size, &data, false) * 1000.0);
        warm_up();
        allocate.push(write_fresh(size, &data, true) * 1000.0);
        floor.push(raw.last().unwrap() + read.last().unwrap() + write.last().unwrap());
    }
    assert_eq!(
        sent, touched,
        "every touched byte, and only those, was sent"
    );
    eprintln!(
        "migration_total_idle_1gib_256mib: ours {} ms, raw {} ms, copy path {} ms, read RAM {} ms, write into fresh pages {} ms, allocate them (fallocate) {} ms, data floor {} ms over {} runs",
        spread(&migration),
        spread(&raw),
        spread(&copy),
        spread(&read),
        spread(&write),
        spread(&allocate),
        spread(&floor),
        migration.len()
    );
    let against_floor: Vec<f64> = migration.iter().zip(&floor).map(|(m, f)| m / f).collect();
    // No target: how far the migration is from reading the pages once, sending them raw and
    // writing them into fresh memory once.
    println!(
        "{{\"name\":\"migration_total_idle_1gib_256mib_vs_data_floor\",\"value\":{:.3},\"unit\":\"ms\",\"baseline\":\"the same bytes raw through the socketpair + pread from the source memfd + pwrite into fresh memfd pages (each alone, summed; allocation alone {:.1} ms)\",\"baselineValue\":{:.3},\"ratio\":{:.3}}}",
        median(&migration),
        median(&allocate),
        median(&floor),
        median(&against_floor)
    );
    let ratios: Vec<f64> = migration.iter().zip(&copy).map(|(m, c)| m / c).collect();
    // No target: what the protocol (checksums, framing, tracking, the destination's build)
    // adds to the copies any migration makes.
    println!(
        "{{\"name\":\"migration_total_idle_1gib_256mib_vs_copy_path\",\"value\":{:.3},\"unit\":\"ms\",\"baseline\":\"pread from the source memfd, the same socketpair, pwrite into a fresh memfd (no checksums or framing)\",\"baselineValue\":{:.3},\"ratio\":{:.3}}}",
        median(&migration),
        median(&copy),
        median(&ratios)
    );
    let paired: Vec<f64> = migration.iter().zip(&raw).map(|(m, r)| m / r).collect();
    Figure {
        name: "migration_total_idle_1gib_256mib",
        value: median(&migration),
        unit: "ms",
        baseline: "the same bytes written raw through the same Unix socketpair",
        baseline_value: median(&raw),
        ratio: median(&paired),
        target: ("<=", 1.3),
    }
    .print();
    block_on(source.close());
}

/// Dirties 1 MiB every 10 ms, cycling through 32 MiB at `base`, until stopped: a KVM guest
/// running the fill program where `/dev/kvm` opens, else a thread writing through guest
/// memory. Returns what dirties and whether it is a KVM guest.
struct Dirtier {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    kvm: bool,
}

const DIRTY_BASE: u64 = 16 * MIB;

impl Dirtier {
    fn start(manager: &GuestMemoryManager) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let memory = block_on(manager.client().guest_memory()).unwrap();
        let guest = kvm::Guest::attach(manager, &memory);
        let kvm = guest.is_some();
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let block = vec![0xa5u8; 1 << 20];
                let mut pass = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let gpa = DIRTY_BASE + (pass % 32) * MIB;
                    match &guest {
                        Some(guest) => guest.fill(gpa, MIB / 8, pass),
                        None => memory.write_at(gpa, &block).unwrap(),
                    }
                    pass += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Self {
            stop,
            thread: Some(thread),
            kvm,
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

fn downtime() {
    let source = guest(64 * MIB, 0x5678);
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut downtime = Vec::new();
    let mut raw = Vec::new();
    let mut copy = Vec::new();
    let mut remainders = Vec::new();
    let mut floor = Vec::new();
    let mut kvm = false;
    for _ in 0..runs() {
        warm_up();
        let dirtier = Dirtier::start(&source);
        kvm = dirtier.kvm;
        // Let the writer run a while first, as a running guest would.
        std::thread::sleep(Duration::from_millis(50));
        let mut dirtier = Some(dirtier);
        let options = MigrateOptions::new(move || async move {
            if let Some(mut dirtier) = dirtier.take() {
                dirtier.stop();
            }
            Ok(None)
        });
        let (info, _) = migrate(&source, &ours, &theirs, options);
        let remainder = *info.bytes_per_round.last().unwrap();
        downtime.push(info.downtime_ms);
        remainders.push(remainder as f64);
        warm_up();
        raw.push(raw_send(&ours, &theirs, remainder.max(PAGE as u64)) * 1000.0);
        // The same number of bytes from where the guest dirties them, onto existing pages.
        let dirtied = vec![(DIRTY_BASE, DIRTY_BASE + remainder.max(PAGE as u64))];
        copy.push(copy_path(&source, &ours, &theirs, Some(dirtied.clone()), true) * 1000.0);
        let read = read_ram(&source, &dirtied) * 1000.0;
        warm_up();
        let write = write_fresh(GIB, &dirtied, false) * 1000.0;
        floor.push(raw.last().unwrap() + read + write);
        eprintln!(
            "  run: {} rounds, bytes per round {:?}, downtime {:.3} ms, raw remainder {:.3} ms, copy path {:.3} ms, data floor {:.3} ms",
            info.rounds,
            info.bytes_per_round,
            info.downtime_ms,
            raw.last().unwrap(),
            copy.last().unwrap(),
            floor.last().unwrap()
        );
    }
    eprintln!(
        "migration_downtime_dirtying_1mib_per_10ms ({}): downtime {} ms, raw {} ms, copy path {} ms, remainder {} bytes over {} runs",
        if kvm { "KVM guest" } else { "guest-memory thread" },
        spread(&downtime),
        spread(&raw),
        spread(&copy),
        spread(&remainders),
        downtime.len()
    );
    let against_copy: Vec<f64> = downtime.iter().zip(&copy).map(|(d, c)| d / c).collect();
    // No target: what the final round's protocol work (harvest, checksums, framing, the final
    // manifest, windows, the acknowledgement) adds to the copies of its pages.
    println!(
        "{{\"name\":\"migration_downtime_dirtying_1mib_per_10ms_vs_copy_path\",\"value\":{:.3},\"unit\":\"ms\",\"baseline\":\"pread of as many bytes from the source memfd, the same socketpair, pwrite onto existing pages of a memfd\",\"baselineValue\":{:.3},\"ratio\":{:.3}}}",
        median(&downtime),
        median(&copy),
        median(&against_copy)
    );
    let against_floor: Vec<f64> = downtime.iter().zip(&floor).map(|(d, f)| d / f).collect();
    // No target: the final round's bytes read once, sent raw and written into fresh pages once.
    println!(
        "{{\"name\":\"migration_downtime_dirtying_1mib_per_10ms_vs_data_floor\",\"value\":{:.3},\"unit\":\"ms\",\"baseline\":\"the final round's bytes raw through the socketpair + pread from the source memfd + pwrite into fresh memfd pages (each alone, summed)\",\"baselineValue\":{:.3},\"ratio\":{:.3}}}",
        median(&downtime),
        median(&floor),
        median(&against_floor)
    );
    let ratios: Vec<f64> = downtime.iter().zip(&raw).map(|(d, r)| d / r).collect();
    let (value, baseline) = (median(&downtime), median(&raw));
    Figure {
        name: "migration_downtime_dirtying_1mib_per_10ms",
        value,
        unit: "ms",
        baseline: "the final round's page bytes written raw through the same Unix socketpair",
        baseline_value: baseline,
        ratio: median(&ratios),
        target: ("<=", 2.0),
    }
    .print();
    block_on(source.close());
}

#[cfg(target_arch = "x86_64")]
mod kvm {
    //! A KVM partition on the benchmark's manager running the fill program at CPL 3.
    use guestmem::GuestMemory;
    use membacking::GuestMemoryManager;
    use memory_range::MemoryRange;
    use std::sync::Arc;
    use virt::PartitionMemoryMap;
    use virt::Vtl;
    use virt_kvm::programs;
    use virt_kvm::KvmPartition;
    use virt_kvm::KvmPartitionOptions;
    use virt_kvm::Vcpu;
    use virt_kvm::VcpuExit;
    use virt_kvm::VcpuOptions;
    use virt_kvm::PAGE_TABLES_SIZE;

    const FILL_AT: u64 = 0x1000;
    const PAGE_TABLES_AT: u64 = 0x20_0000;

    pub struct Guest {
        _partition: Arc<KvmPartition>,
        vcpu: Vcpu,
    }

    impl Guest {
        pub fn attach(manager: &GuestMemoryManager, memory: &GuestMemory) -> Option<Self> {
            let partition = Arc::new(KvmPartition::create(KvmPartitionOptions::default()).ok()?);
            let as_map: Arc<dyn PartitionMemoryMap> = partition.clone();
            futures::executor::block_on(manager.attach_partition(Vtl::Vtl0, &as_map, None)).ok()?;
            memory.write_at(FILL_AT, programs::FILL_PATTERN).ok()?;
            let options = VcpuOptions::long(MemoryRange::new(
                PAGE_TABLES_AT..PAGE_TABLES_AT + PAGE_TABLES_SIZE,
            ));
            let writer = |gpa: u64, data: &[u8]| -> Result<(), virt::Error> {
                memory.write_at(gpa, data).map_err(Into::into)
            };
            let vcpu = partition.create_vcpu(&options, &writer).ok()?;
            Some(Self {
                _partition: partition,
                vcpu,
            })
        }

        /// The guest writes `qwords` qwords from `gpa` with `address ^ key`.
        pub fn fill(&self, gpa: u64, qwords: u64, key: u64) {
            self.vcpu
                .update_registers(|r| {
                    r.rip = FILL_AT;
                    r.rdi = gpa;
                    r.rcx = qwords;
                    r.rdx = key;
                })
                .unwrap();
            match self.vcpu.run(None).unwrap() {
                VcpuExit::IoOut { port, .. } if port == programs::DONE_PORT => {}
                other => panic!("unexpected exit {other:?}"),
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod kvm {
    pub struct Guest;

    impl Guest {
        pub fn attach(
            _: &membacking::GuestMemoryManager,
            _: &guestmem::GuestMemory,
        ) -> Option<Self> {
            None
        }

        pub fn fill(&self, _: u64, _: u64, _: u64) {}
    }
}

fn main() {
    let only = std::env::var("MIGRATION_BENCH").ok();
    let wanted = |group: &str| only.as_deref().is_none_or(|only| only == group);
    if wanted("total") {
        total_time();
    }
    if wanted("downtime") {
        downtime();
    }
}
