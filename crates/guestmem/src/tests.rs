//! Tests of guest memory's Rust core: allocation, holes and address bounds, on-demand mapping,
//! compare-exchange, probes, typed accesses, dirty tracking, and the retry limit, fallbacks,
//! subranges and locking.

// Unsafe code: the tests build backings (an unsafe trait) and check memory through raw pointers.
#![allow(unsafe_code)]

use crate::*;
use sparse_mmap::SparseMapping;
use std::error::Error as _;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;

const P: u64 = PAGE_SIZE as u64;
const MIB: u64 = 1 << 20;

/// A test size or offset as a `usize`.
fn us(value: u64) -> usize {
    usize::try_from(value).unwrap()
}

/// A 4 MiB mapping with RAM 0–1 MiB, a hole 1–2 MiB, RAM 2–3 MiB, a hole
/// 3 MiB..3 MiB + P and RAM up to 4 MiB.
fn holey_layout() -> (Arc<SparseMapping>, GuestMemory) {
    let mapping = Arc::new(SparseMapping::new(4 * us(MIB)).unwrap());
    mapping.alloc(0, us(MIB)).unwrap();
    mapping.alloc(2 * us(MIB), us(MIB)).unwrap();
    mapping.alloc(us(3 * MIB + P), us(MIB - P)).unwrap();
    let memory = GuestMemory::new("test", mapping.clone());
    (mapping, memory)
}

/// Records the `page_fault` calls of a hook.
#[derive(Clone, Default)]
struct FaultLog(Arc<Mutex<Vec<(u64, usize, bool)>>>);

impl FaultLog {
    fn record(&self, address: u64, len: usize, write: bool) {
        self.0.lock().unwrap().push((address, len, write));
    }

    fn take(&self) -> Vec<(u64, usize, bool)> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

fn hooked(
    mapping: &Arc<SparseMapping>,
    page_fault: impl Fn(u64, usize, bool, bool) -> PageFaultAction + Send + Sync + 'static,
) -> GuestMemory {
    GuestMemory::from_sparse_mapping(
        "hooked",
        mapping.clone(),
        GuestMemoryHooks {
            page_fault: Some(Box::new(page_fault)),
            ..Default::default()
        },
    )
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TestError(&'static str);

#[test]
fn allocate_round_trip_and_inner_buffer_ownership() {
    let mut memory = GuestMemory::allocate(0x10000);
    assert_eq!(memory.debug_name(), "heap");
    memory.write_at(0, &[0x42; 0x10000]).unwrap();
    let mut back = vec![0u8; 0x10000];
    memory.read_at(0, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0x42));
    assert_eq!(memory.inner_buf().unwrap().len(), 0x10000);
    assert_eq!(memory.inner_buf_mut().unwrap()[5], 0x42);
    memory.inner_buf_mut().unwrap()[5] = 7;
    assert_eq!(memory.read_plain::<u8>(5).unwrap(), 7);

    let clone = memory.clone();
    assert!(memory.inner_buf_mut().is_none());
    let memory = memory.into_inner_buf().unwrap_err();
    drop(clone);
    let mut heap = memory.into_inner_buf().unwrap();
    assert_eq!(heap.as_mut_bytes()[5], 7);

    // A non-allocated memory has no inner buffer.
    let (_mapping, sparse) = holey_layout();
    assert!(sparse.inner_buf().is_none());
    assert!(sparse.into_inner_buf().is_err());
}

#[test]
fn allocate_rounds_up_to_a_page() {
    assert_eq!(GuestMemory::allocate(1).max_address(), 4096);
    assert_eq!(GuestMemory::allocate(4096).max_address(), 4096);
    assert_eq!(GuestMemory::allocate(0).max_address(), 0);
    assert!(GuestMemory::try_allocate(usize::MAX - 10).is_err());
    assert!(GuestMemory::try_allocate(1 << 62).is_err());
}

#[test]
fn holes_in_a_sparse_mapping_are_kind_other() {
    let (_mapping, memory) = holey_layout();
    assert_eq!(memory.max_address(), 4 * MIB);
    assert_eq!(memory.read_plain::<u8>(0).unwrap(), 0);
    for gpa in [0, 2 * MIB] {
        memory.write_at(gpa, b"hello").unwrap();
        let mut five = [0u8; 5];
        memory.read_at(gpa, &mut five).unwrap();
        assert_eq!(&five, b"hello");
        let pattern: Vec<u8> = (0..MIB).map(|i| (i * 7 % 251) as u8).collect();
        memory.write_at(gpa, &pattern).unwrap();
        let mut back = vec![0u8; us(MIB)];
        memory.read_at(gpa, &mut back).unwrap();
        assert_eq!(back, pattern);
    }

    let err = memory.read_plain::<u8>(MIB).unwrap_err();
    assert_eq!(err.kind(), GuestMemoryErrorKind::Other);
    assert_eq!(err.gpa(), Some(MIB));
    assert_eq!(err.operation(), GuestMemoryOperation::Read);
    let fault = err.fault().expect("a hardware fault ended the access");
    assert_eq!(fault.signal, libc::SIGSEGV);

    let mut eight = [0u8; 8];
    let err = memory.read_at(3 * MIB - 4, &mut eight).unwrap_err();
    assert_eq!(err.kind(), GuestMemoryErrorKind::Other);
    assert_eq!(err.gpa(), Some(3 * MIB));
    assert_eq!(err.range(), Some(3 * MIB - 4..3 * MIB + 4));
    let message = err.to_string();
    assert_eq!(
        message,
        "guest memory 'test': read error: failed to access 0x2ffffc-0x300004 at 0x300000"
    );
    assert!(err
        .source()
        .unwrap()
        .to_string()
        .contains("page not mapped"));
}

#[test]
fn out_of_range() {
    let (_mapping, memory) = holey_layout();
    let max = memory.max_address();
    let cases: [(u64, usize); 4] = [(max, 1), (max - 1, 2), (1 << 63, 1), (u64::MAX, 2)];
    for (gpa, len) in cases {
        let mut buffer = vec![0u8; len];
        let err = memory.read_at(gpa, &mut buffer).unwrap_err();
        assert_eq!(err.kind(), GuestMemoryErrorKind::OutOfRange, "{gpa:#x}");
        assert_eq!(err.gpa(), Some(gpa));
        assert!(err.fault().is_none());
        let err = memory.write_at(gpa, &buffer).unwrap_err();
        assert_eq!(err.kind(), GuestMemoryErrorKind::OutOfRange);
        assert_eq!(err.operation(), GuestMemoryOperation::Write);
        let err = memory.fill_at(gpa, 1, len).unwrap_err();
        assert_eq!(err.kind(), GuestMemoryErrorKind::OutOfRange);
        assert_eq!(err.operation(), GuestMemoryOperation::Fill);
    }
    let err = memory.read_plain::<u64>(max - 4).unwrap_err();
    assert_eq!(err.kind(), GuestMemoryErrorKind::OutOfRange);
    // The range wraps around in the message, without panicking.
    let err = memory.read_at(u64::MAX, &mut [0u8; 2]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "guest memory 'test': read error: failed to access 0xffffffffffffffff-0x1"
    );
}

#[test]
fn zero_length_operations_always_succeed() {
    let (_mapping, memory) = holey_layout();
    memory.read_at(u64::MAX, &mut []).unwrap();
    memory.write_at(u64::MAX, &[]).unwrap();
    memory.fill_at(u64::MAX, 0, 0).unwrap();
    memory.read_to_atomic(u64::MAX, &[]).unwrap();
    memory.write_from_atomic(u64::MAX, &[]).unwrap();
    let empty = PagedRange::empty();
    memory.read_range(&empty, &mut []).unwrap();
    memory.write_range(&empty, &[]).unwrap();
    memory.zero_range(&empty).unwrap();
    memory.probe_gpn_readable_range(&empty).unwrap();
    memory.probe_gpn_writable_range(&empty).unwrap();
    GuestMemory::empty().read_at(0, &mut []).unwrap();
}

#[test]
fn on_demand_mapping_retries() {
    let mapping = Arc::new(SparseMapping::new(16 * us(P)).unwrap());
    let log = FaultLog::default();
    let memory = {
        let mapping = mapping.clone();
        let log = log.clone();
        hooked(
            &mapping.clone(),
            move |address, len, write, bitmap_failure| {
                assert!(!bitmap_failure);
                log.record(address, len, write);
                let page = address & !(P - 1);
                mapping.alloc(us(page), us(P)).unwrap();
                PageFaultAction::Retry
            },
        )
    };
    let data: Vec<u8> = (0..3 * P).map(|i| i.to_le_bytes()[0]).collect();
    let gpa = 2 * P + P / 2;
    memory.write_at(gpa, &data).unwrap();
    let len = 3 * P;
    assert_eq!(
        log.take(),
        vec![
            (gpa, us(len), true),
            (3 * P, us(gpa + len - 3 * P), true),
            (4 * P, us(gpa + len - 4 * P), true),
            (5 * P, us(gpa + len - 5 * P), true),
        ]
    );
    memory.write_at(gpa, &data).unwrap();
    assert!(log.take().is_empty());
    let mut back = vec![0u8; data.len()];
    memory.read_at(gpa, &mut back).unwrap();
    assert_eq!(back, data);
    assert!(log.take().is_empty());
}

/// Read-only on demand: `page_fault` places zero pages for reads and fails writes; page 0 is
/// writable.
fn read_only_on_demand_layout() -> (Arc<SparseMapping>, GuestMemory, FaultLog) {
    let mapping = Arc::new(SparseMapping::new(16 * us(P)).unwrap());
    mapping.alloc(0, us(P)).unwrap();
    let log = FaultLog::default();
    let memory = {
        let mapping = mapping.clone();
        let log = log.clone();
        hooked(&mapping.clone(), move |address, len, write, _| {
            log.record(address, len, write);
            if write {
                return PageFaultAction::Fail(PageFaultError::other(TestError("read-only")));
            }
            let page = address & !(P - 1);
            mapping.map_zero(us(page), us(P)).unwrap();
            PageFaultAction::Retry
        })
    };
    (mapping, memory, log)
}

#[test]
fn read_only_on_demand() {
    let (_mapping, memory, log) = read_only_on_demand_layout();
    assert_eq!(memory.read_plain::<u8>(5 * P + 3).unwrap(), 0);
    assert_eq!(log.take(), vec![(5 * P + 3, 1, false)]);
    let err = memory.write_plain(5 * P + 3, &1u8).unwrap_err();
    assert_eq!(err.kind(), GuestMemoryErrorKind::Other);
    assert_eq!(err.gpa(), Some(5 * P + 3));
    assert_eq!(err.operation(), GuestMemoryOperation::Write);
    assert!(err.fault().is_some());
    assert_eq!(err.source().unwrap().to_string(), "read-only");

    // Page 1 becomes read-only zero pages after a read.
    memory.read_plain::<u8>(P).unwrap();
    memory.write_plain(P - 2, &0xAAAAu16).unwrap();
    let err = memory.write_plain(P - 1, &0x1234u16).unwrap_err();
    assert_eq!(err.gpa(), Some(P));
    assert_eq!(memory.read_plain::<u8>(P - 1).unwrap(), 0xAA);
}

#[test]
fn page_fault_failure_kind_reaches_the_caller() {
    let mapping = Arc::new(SparseMapping::new(4 * us(P)).unwrap());
    mapping.alloc(0, us(P)).unwrap();
    let memory = hooked(&mapping, |_, _, _, _| {
        PageFaultAction::Fail(PageFaultError::new(
            GuestMemoryErrorKind::VtlProtected,
            TestError("protected"),
        ))
    });
    let mut buffer = [0u8; 8];
    let err = memory.read_at(P - 4, &mut buffer).unwrap_err();
    assert_eq!(err.kind(), GuestMemoryErrorKind::VtlProtected);
    assert_eq!(err.operation(), GuestMemoryOperation::Read);
    assert_eq!(err.gpa(), Some(P));
    assert!(err.fault().is_none(), "only kind Other carries the fault");
    for kind in [
        GuestMemoryErrorKind::NotPrivate,
        GuestMemoryErrorKind::NotShared,
    ] {
        let memory = hooked(&mapping, move |_, _, _, _| {
            PageFaultAction::Fail(PageFaultError::new(kind, TestError("x")))
        });
        assert_eq!(memory.read_plain::<u8>(2 * P).unwrap_err().kind(), kind);
    }
}

#[test]
fn fallback_paths() {
    let mapping = Arc::new(SparseMapping::new(4 * us(P)).unwrap());
    let reads = FaultLog::default();
    let writes = FaultLog::default();
    let fills = FaultLog::default();
    let stored = Arc::new(Mutex::new(vec![0u8; 4 * us(P)]));
    let hooks = GuestMemoryHooks {
        page_fault: Some(Box::new(|_, _, _, _| PageFaultAction::Fallback)),
        read_fallback: Some(Box::new({
            let reads = reads.clone();
            let stored = stored.clone();
            move |address, dest: &mut [u8]| {
                reads.record(address, dest.len(), false);
                let stored = stored.lock().unwrap();
                dest.copy_from_slice(&stored[us(address)..us(address) + dest.len()]);
                Ok(())
            }
        })),
        write_fallback: Some(Box::new({
            let writes = writes.clone();
            let stored = stored.clone();
            move |address, src: &[u8]| {
                writes.record(address, src.len(), true);
                stored.lock().unwrap()[us(address)..us(address) + src.len()].copy_from_slice(src);
                Ok(())
            }
        })),
        fill_fallback: Some(Box::new({
            let fills = fills.clone();
            let stored = stored.clone();
            move |address, val, len| {
                fills.record(address, len, true);
                stored.lock().unwrap()[us(address)..us(address) + len].fill(val);
                Ok(())
            }
        })),
        compare_exchange_fallback: Some(Box::new({
            let stored = stored.clone();
            move |address, current: &mut [u8], new: &[u8]| {
                let mut stored = stored.lock().unwrap();
                let target = &mut stored[us(address)..us(address) + new.len()];
                if target == current {
                    target.copy_from_slice(new);
                    Ok(true)
                } else {
                    current.copy_from_slice(target);
                    Ok(false)
                }
            }
        })),
        ..Default::default()
    };
    let memory = GuestMemory::from_sparse_mapping("fallback", mapping.clone(), hooks);
    memory.write_at(100, b"fallback data").unwrap();
    assert_eq!(writes.take(), vec![(100, 13, true)]);
    let mut back = [0u8; 13];
    memory.read_at(100, &mut back).unwrap();
    assert_eq!(&back, b"fallback data");
    assert_eq!(reads.take(), vec![(100, 13, false)]);
    memory.fill_at(P, 0x5A, 10).unwrap();
    assert_eq!(fills.take(), vec![(P, 10, true)]);
    assert_eq!(memory.read_plain::<u16>(P + 8).unwrap(), 0x5A5A);
    memory.write_plain(8, &0x1122u16).unwrap();
    assert_eq!(memory.read_plain::<u16>(8).unwrap(), 0x1122);
    assert_eq!(memory.compare_exchange(8, 0x1122u16, 7).unwrap(), Ok(7));
    assert_eq!(memory.compare_exchange(8, 0x1122u16, 9).unwrap(), Err(7));

    // Without fallbacks: kind Other, "no fallback".
    let bare = hooked(&mapping, |_, _, _, _| PageFaultAction::Fallback);
    let err = bare.read_at(100, &mut back).unwrap_err();
    assert_eq!(err.kind(), GuestMemoryErrorKind::Other);
    assert_eq!(err.gpa(), Some(100));
    assert!(err.source().unwrap().to_string().contains("no fallback"));
    assert!(bare.write_at(0, &[1]).is_err());
    assert!(bare.fill_at(0, 1, 1).is_err());
    assert!(bare.compare_exchange(0, 0u8, 1).is_err());
}

#[test]
fn memory_without_mapping_uses_fallbacks_directly() {
    struct Fallbacks(AtomicUsize);
    // SAFETY: no mapping; the read fallback initialises every byte.
    unsafe impl GuestMemoryAccess for Fallbacks {
        fn mapping(&self) -> Option<std::ptr::NonNull<u8>> {
            None
        }
        fn max_address(&self) -> u64 {
            P
        }
        unsafe fn read_fallback(
            &self,
            _address: u64,
            dest: *mut u8,
            len: usize,
        ) -> Result<(), GuestMemoryBackingError> {
            self.0.fetch_add(1, Ordering::Relaxed);
            // SAFETY: `dest` is valid for `len` bytes.
            unsafe { std::ptr::write_bytes(dest, 0x33, len) };
            Ok(())
        }
    }
    let backing = Arc::new(Fallbacks(AtomicUsize::new(0)));
    let memory = GuestMemory::new("fallbacks", backing.clone());
    assert_eq!(memory.read_plain::<u32>(4).unwrap(), 0x3333_3333);
    assert_eq!(backing.0.load(Ordering::Relaxed), 1);
    assert!(memory.full_mapping().is_none());
    let err = memory.write_at(0, &[1]).unwrap_err();
    assert_eq!(err.kind(), GuestMemoryErrorKind::Other);
}

#[test]
fn retry_limit_ends_an_unresolved_fault() {
    let mapping = Arc::new(SparseMapping::new(4 * us(P)).unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    let memory = {
        let calls = calls.clone();
        hooked(&mapping, move |_, _, _, _| {
            calls.fetch_add(1, Ordering::Relaxed);
            PageFaultAction::Retry
        })
    };
    assert_eq!(memory.retry_limit(), DEFAULT_RETRY_LIMIT);
    let err = memory.read_plain::<u8>(P).unwrap_err();
    assert_eq!(err.kind(), GuestMemoryErrorKind::Other);
    assert_eq!(err.gpa(), Some(P));
    assert!(err.fault().is_some());
    assert!(err
        .source()
        .unwrap()
        .to_string()
        .contains("page fault not resolved"));
    assert_eq!(
        calls.swap(0, Ordering::Relaxed),
        DEFAULT_RETRY_LIMIT as usize + 1
    );

    let limited = memory.clone().with_retry_limit(5);
    assert!(limited.write_at(0, &[1, 2]).is_err());
    assert_eq!(calls.swap(0, Ordering::Relaxed), 6);
    let none = memory.with_retry_limit(0);
    assert!(none.read_plain::<u8>(0).is_err());
    assert_eq!(calls.swap(0, Ordering::Relaxed), 1);
    // Subranges inherit the limit.
    let sub = limited.subrange(P, P, false).unwrap();
    assert_eq!(sub.retry_limit(), 5);
    assert!(sub.read_plain::<u8>(0).is_err());
    assert_eq!(calls.swap(0, Ordering::Relaxed), 6);
}

#[test]
fn progress_resets_the_retry_count() {
    // Each fault is resolved: a long access over many lazily mapped pages needs more retries in
    // total than the limit, but never more than one per faulting address.
    let mapping = Arc::new(SparseMapping::new(64 * us(P)).unwrap());
    let memory = {
        let mapping = mapping.clone();
        hooked(&mapping.clone(), move |address, _, _, _| {
            mapping.alloc(us(address & !(P - 1)), us(P)).unwrap();
            PageFaultAction::Retry
        })
    }
    .with_retry_limit(1);
    memory.fill_at(0, 9, 64 * us(P)).unwrap();
    assert_eq!(memory.read_plain::<u8>(63 * P).unwrap(), 9);
}

#[test]
fn compare_exchange_semantics() {
    fn check<T>(memory: &GuestMemory, zero: T, one: T, two: T)
    where
        T: zerocopy::IntoBytes
            + zerocopy::FromBytes
            + zerocopy::Immutable
            + zerocopy::KnownLayout
            + Copy
            + PartialEq
            + std::fmt::Debug,
    {
        memory.write_plain(8, &zero).unwrap();
        assert_eq!(memory.compare_exchange(8, zero, one).unwrap(), Ok(one));
        assert_eq!(memory.read_plain::<T>(8).unwrap(), one);
        assert_eq!(memory.compare_exchange(8, zero, two).unwrap(), Err(one));
        assert_eq!(memory.read_plain::<T>(8).unwrap(), one);
        assert_eq!(memory.compare_exchange(8, one, two).unwrap(), Ok(two));
        assert_eq!(memory.read_plain::<T>(8).unwrap(), two);
    }
    let (_mapping, sparse) = holey_layout();
    for memory in [GuestMemory::allocate(us(P)), sparse] {
        check(&memory, 0u8, 1, 2);
        check(&memory, 0u16, 1, 0xFFFF);
        check(&memory, 0u32, 1, 0xFFFF_FFFF);
        check(&memory, 0u64, 1, u64::MAX);
    }

    let mapping = Arc::new(SparseMapping::new(4 * us(P)).unwrap());
    let log = FaultLog::default();
    let memory = {
        let log = log.clone();
        hooked(&mapping, move |address, len, write, _| {
            log.record(address, len, write);
            PageFaultAction::Fail(PageFaultError::other(TestError("nope")))
        })
    };
    let err = memory.compare_exchange(2 * P + 8, 0u64, 1).unwrap_err();
    assert_eq!(log.take(), vec![(2 * P + 8, 8, true)]);
    assert_eq!(err.operation(), GuestMemoryOperation::CompareExchange);
    assert_eq!(err.gpa(), Some(2 * P + 8));
    assert_eq!(err.range(), Some(2 * P + 8..2 * P + 16));
    assert!(err.to_string().contains("compare exchange error"));
}

#[test]
fn compare_exchange_on_read_only_page() {
    let mapping = Arc::new(SparseMapping::new(2 * us(P)).unwrap());
    mapping.alloc(0, us(P)).unwrap();
    mapping.write_at(0, &[5]).unwrap();
    mapping.set_writable(0, us(P), false).unwrap();
    let memory = GuestMemory::new("ro", mapping.clone());
    // Fails although the comparison would fail too.
    let err = memory.compare_exchange(0, 9u8, 1).unwrap_err();
    assert_eq!(err.kind(), GuestMemoryErrorKind::Other);
    assert_eq!(memory.probe_gpa_readable(0), Ok(()));
    assert_eq!(
        memory.probe_gpa_writable(0),
        Err(GuestMemoryErrorKind::Other)
    );
    assert_eq!(memory.read_plain::<u8>(0).unwrap(), 5);
    mapping.set_writable(0, us(P), true).unwrap();
    assert_eq!(memory.probe_gpa_writable(0), Ok(()));
    assert_eq!(
        memory.read_plain::<u8>(0).unwrap(),
        5,
        "probing changes nothing"
    );
    assert_eq!(
        memory.probe_gpa_readable(P),
        Err(GuestMemoryErrorKind::Other)
    );
    assert_eq!(
        memory.probe_gpa_readable(2 * P),
        Err(GuestMemoryErrorKind::OutOfRange)
    );
}

#[test]
fn compare_exchange_is_atomic_across_threads() {
    let mapping = Arc::new(SparseMapping::new(us(P)).unwrap());
    mapping.alloc(0, us(P)).unwrap();
    let memory = GuestMemory::new("atomic", mapping);
    const THREADS: u64 = 8;
    const INCREMENTS: u64 = 100_000;
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| {
                for _ in 0..INCREMENTS {
                    let mut current = memory.read_plain::<u64>(64).unwrap();
                    loop {
                        match memory.compare_exchange(64, current, current + 1).unwrap() {
                            Ok(_) => break,
                            Err(observed) => current = observed,
                        }
                    }
                }
            });
        }
    });
    assert_eq!(memory.read_plain::<u64>(64).unwrap(), THREADS * INCREMENTS);

    let stop = AtomicBool::new(false);
    let torn = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for value in [0u64, u64::MAX] {
            let memory = &memory;
            let stop = &stop;
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    memory.write_plain(128, &value).unwrap();
                }
            });
        }
        for _ in 0..200_000 {
            let value = memory.read_plain::<u64>(128).unwrap();
            if value != 0 && value != u64::MAX {
                torn.fetch_add(1, Ordering::Relaxed);
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(torn.load(Ordering::Relaxed), 0);
}

#[test]
fn multi_region() {
    let region = 1u64 << 30;
    let make = |size: usize| {
        let mapping = SparseMapping::new(size).unwrap();
        mapping.alloc(0, size).unwrap();
        Arc::new(mapping)
    };
    let memory = GuestMemory::new_multi_region(
        "multi",
        region,
        vec![Some(make(4 * us(MIB))), None, Some(make(4 * us(MIB)))],
    )
    .unwrap();
    assert_eq!(memory.max_address(), 4 * region);
    memory.write_plain(0, &1u32).unwrap();
    memory.write_plain(2 * region, &2u32).unwrap();
    assert_eq!(memory.read_plain::<u32>(0).unwrap(), 1);
    assert_eq!(memory.read_plain::<u32>(2 * region).unwrap(), 2);
    for gpa in [
        4 * MIB,
        region,
        2 * region + 4 * MIB,
        3 * region,
        4 * region,
    ] {
        let err = memory.read_plain::<u8>(gpa).unwrap_err();
        assert_eq!(err.kind(), GuestMemoryErrorKind::OutOfRange, "{gpa:#x}");
    }
    let err = memory.read_at(region - 2, &mut [0u8; 4]).unwrap_err();
    assert_eq!(err.kind(), GuestMemoryErrorKind::OutOfRange);
    assert!(memory.full_mapping().is_none());
    assert!(memory.sharing().is_none());

    let none: Vec<Option<Arc<SparseMapping>>> = vec![None];
    assert_eq!(
        GuestMemory::new_multi_region("x", 3 << 30, none.clone()).unwrap_err(),
        MultiRegionError::NotPowerOfTwo(3 << 30)
    );
    assert_eq!(
        GuestMemory::new_multi_region("x", 2048, none.clone()).unwrap_err(),
        MultiRegionError::RegionSizeTooSmall(2048)
    );
    assert!(matches!(
        GuestMemory::new_multi_region("x", 4096, vec![Some(make(8192))]).unwrap_err(),
        MultiRegionError::BackingTooLarge {
            backing_size: 8192,
            region_size: 4096
        }
    ));
    assert!(matches!(
        GuestMemory::new_multi_region("x", 1 << 62, vec![none[0].clone(), None, None]).unwrap_err(),
        MultiRegionError::TooManyRegions {
            region_count: 4,
            max_region_count: 2,
            region_size: 0x4000_0000_0000_0000
        }
    ));
    // The messages are the original's, word for word.
    assert_eq!(
        MultiRegionError::NotPowerOfTwo(0xc000_0000).to_string(),
        "region size 0xc0000000 is not a power of 2"
    );
    assert_eq!(
        GuestMemory::new_multi_region("x", 1 << 62, vec![none[0].clone(), None, None])
            .unwrap_err()
            .to_string(),
        "too many regions (4) for region size 0x4000000000000000; max is 2"
    );
    // An empty list still makes one (empty) region.
    let empty = GuestMemory::new_multi_region("x", 4096, none[..0].to_vec()).unwrap();
    assert_eq!(
        empty.read_plain::<u8>(0).unwrap_err().kind(),
        GuestMemoryErrorKind::OutOfRange
    );
}

#[test]
fn subrange_views_and_their_bounds() {
    let (_mapping, memory) = holey_layout();
    memory.write_at(2 * MIB, b"subrange").unwrap();
    let sub = memory.subrange(2 * MIB, MIB, false).unwrap();
    assert_eq!(sub.max_address(), MIB);
    let mut back = [0u8; 8];
    sub.read_at(0, &mut back).unwrap();
    assert_eq!(&back, b"subrange");
    sub.write_at(8, b"!").unwrap();
    assert_eq!(memory.read_plain::<u8>(2 * MIB + 8).unwrap(), b'!');
    let err = sub.read_plain::<u8>(MIB).unwrap_err();
    assert_eq!(err.kind(), GuestMemoryErrorKind::OutOfRange);

    let err = memory.subrange(3 * MIB, 2 * MIB, false).unwrap_err();
    assert_eq!(err.operation(), GuestMemoryOperation::Subrange);
    assert_eq!(err.kind(), GuestMemoryErrorKind::OutOfRange);
    assert_eq!(err.range(), Some(3 * MIB..5 * MIB));

    // Faults: the view reports its own addresses, the backing sees the parent's.
    let mapping = Arc::new(SparseMapping::new(16 * us(P)).unwrap());
    let log = FaultLog::default();
    let parent = {
        let log = log.clone();
        hooked(&mapping, move |address, len, write, _| {
            log.record(address, len, write);
            PageFaultAction::Fail(PageFaultError::other(TestError("hole")))
        })
    };
    let view = parent.subrange(4 * P, 8 * P, false).unwrap();
    let err = view.read_plain::<u32>(P + 4).unwrap_err();
    assert_eq!(err.gpa(), Some(P + 4));
    assert_eq!(log.take(), vec![(5 * P + 4, 4, false)]);
    // A nested view stays relative to the root.
    let nested = view.subrange(2 * P, 2 * P, false).unwrap();
    let err = nested.write_plain(8, &1u8).unwrap_err();
    assert_eq!(err.gpa(), Some(8));
    assert_eq!(log.take(), vec![(6 * P + 8, 1, true)]);
    assert!(view.subrange(7 * P, 2 * P, false).is_err());
    assert!(memory.lockable_subrange(0, MIB).is_ok());
}

/// A backing over a sparse mapping that counts lock and unlock calls.
struct CountingLocks {
    mapping: SparseMapping,
    locks: AtomicUsize,
    unlocks: Mutex<Vec<Vec<u64>>>,
}

// SAFETY: forwards the mapping of a sparse mapping it owns.
unsafe impl GuestMemoryAccess for CountingLocks {
    fn mapping(&self) -> Option<std::ptr::NonNull<u8>> {
        self.mapping.mapping()
    }
    fn max_address(&self) -> u64 {
        self.mapping.max_address()
    }
    fn lock_gpns(&self, _gpns: &[u64]) -> Result<bool, GuestMemoryBackingError> {
        self.locks.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }
    fn unlock_gpns(&self, gpns: &[u64]) {
        self.unlocks.lock().unwrap().push(gpns.to_vec());
    }
}

#[test]
fn locked_pages_read_write_and_unlock() {
    let (_mapping, memory) = holey_layout();
    memory.write_at(0, &[1; 8]).unwrap();
    memory.write_at(P, &[2; 8]).unwrap();
    memory.write_at(512 * P, &[3; 8]).unwrap();
    let locked = memory.lock_gpns(false, &[0, 1, 512]).unwrap();
    assert_eq!(locked.len(), 3);
    assert_eq!(locked.gpns(), &[0, 1, 512]);
    for (index, &gpn) in locked.gpns().iter().enumerate() {
        let mut page = vec![0u8; PAGE_SIZE];
        locked.read_at(index, 0, &mut page).unwrap();
        let mut expected = vec![0u8; PAGE_SIZE];
        memory.read_at(gpn * P, &mut expected).unwrap();
        assert_eq!(page, expected);
        assert_eq!(
            locked.pages()[index][0].load(Ordering::Relaxed),
            expected[0]
        );
    }
    locked.write_at(1, 4, &[9]).unwrap();
    assert_eq!(memory.read_plain::<u8>(P + 4).unwrap(), 9);
    // The original's view of the pages through `AsRef` on a reference.
    let borrowed = &locked;
    let pages: &[&Page] = borrowed.as_ref();
    assert_eq!(pages[1][4].load(Ordering::Relaxed), 9);
    let error = locked.read_at(3, 0, &mut [0]).unwrap_err();
    assert!(matches!(
        error,
        LockedPageAccessError::PageIndex { index: 3, count: 3 }
    ));
    assert_eq!(
        error.to_string(),
        "page index 3 is out of range: 3 pages are locked (indexes 0 to 2)"
    );
    assert!(matches!(
        locked.read_at(0, PAGE_SIZE - 1, &mut [0; 2]),
        Err(LockedPageAccessError::OutOfBounds { .. })
    ));

    let err = memory.lock_gpns(false, &[256]).unwrap_err();
    assert_eq!(err.operation(), GuestMemoryOperation::Lock);
    assert_eq!(err.kind(), GuestMemoryErrorKind::Other);
    assert_eq!(err.range(), None);
    assert_eq!(
        err.to_string(),
        "guest memory 'test': lock error: failed to access memory at 0x100000"
    );
    let err = memory.lock_gpns(false, &[1 << 52]).unwrap_err();
    assert_eq!(err.kind(), GuestMemoryErrorKind::OutOfRange);
    assert_eq!(err.gpa(), None);
    let err = memory.lock_gpns(true, &[1024]).unwrap_err();
    assert_eq!(err.kind(), GuestMemoryErrorKind::OutOfRange);
    // Memory without a mapping is not lockable.
    let err = GuestMemory::new("nomap", Arc::new(NoMapping))
        .lock_gpns(false, &[0])
        .unwrap_err();
    assert_eq!(err.kind(), GuestMemoryErrorKind::Other);
    assert!(err.source().unwrap().to_string().contains("not lockable"));

    // Unlock exactly once, however many clones.
    let mapping = SparseMapping::new(4 * us(P)).unwrap();
    mapping.alloc(0, 4 * us(P)).unwrap();
    let backing = Arc::new(CountingLocks {
        mapping,
        locks: AtomicUsize::new(0),
        unlocks: Mutex::new(Vec::new()),
    });
    let memory = GuestMemory::new("locks", backing.clone());
    let locked = memory.lock_gpns(false, &[3, 1]).unwrap();
    let clone = locked.clone();
    drop(locked);
    assert!(backing.unlocks.lock().unwrap().is_empty());
    drop(clone);
    assert_eq!(backing.locks.load(Ordering::Relaxed), 1);
    assert_eq!(*backing.unlocks.lock().unwrap(), vec![vec![3, 1]]);
    // Through a subrange the page numbers are translated to the parent.
    let view = memory.subrange(P, 3 * P, false).unwrap();
    drop(view.lock_gpns(false, &[0, 2]).unwrap());
    assert_eq!(backing.unlocks.lock().unwrap()[1], vec![1, 3]);
}

struct NoMapping;

// SAFETY: no mapping.
unsafe impl GuestMemoryAccess for NoMapping {
    fn mapping(&self) -> Option<std::ptr::NonNull<u8>> {
        None
    }
    fn max_address(&self) -> u64 {
        P
    }
}

#[derive(Default)]
struct Runs(Vec<(usize, usize)>);

impl LockedRange for Runs {
    fn push_sub_range(&mut self, sub_range: &[std::sync::atomic::AtomicU8]) {
        self.0.push((sub_range.as_ptr() as usize, sub_range.len()));
    }
}

#[test]
fn lock_range_hands_out_runs_of_consecutive_pages() {
    let mapping = Arc::new(SparseMapping::new(16 * us(P)).unwrap());
    mapping.alloc(0, 16 * us(P)).unwrap();
    let memory = GuestMemory::new("runs", mapping.clone());
    let gpns = [2, 3, 4, 9, 10];
    let range = PagedRange::new(0x100, 5 * PAGE_SIZE - 0x200, &gpns).unwrap();
    let locked = memory.lock_range(range, Runs::default()).unwrap();
    let base = mapping.as_ptr() as usize;
    assert_eq!(
        locked.get().0,
        vec![
            (base + 2 * PAGE_SIZE + 0x100, 3 * PAGE_SIZE - 0x100),
            (base + 9 * PAGE_SIZE, 2 * PAGE_SIZE - 0x100),
        ]
    );
    let hole = Arc::new(SparseMapping::new(4 * us(P)).unwrap());
    let memory = GuestMemory::new("hole", hole);
    let gpns = [0];
    let err = memory
        .lock_range(PagedRange::new(0, 10, &gpns).unwrap(), Runs::default())
        .unwrap_err();
    assert_eq!(err.operation(), GuestMemoryOperation::Lock);
}

#[test]
fn probing_ranges() {
    let (_mapping, memory, _log) = read_only_on_demand_layout();
    // Page 0 writable, page 1 read-only zero pages after the first read.
    memory.read_plain::<u8>(P).unwrap();
    let gpns = [0, 1];
    let both = PagedRange::new(0, 2 * PAGE_SIZE, &gpns).unwrap();
    let err = memory.probe_gpn_writable_range(&both).unwrap_err();
    assert_eq!(err.operation(), GuestMemoryOperation::Probe);
    assert_eq!(err.gpa(), Some(P));
    memory.probe_gpn_readable_range(&both).unwrap();
    let partial = PagedRange::new(100, 500, &gpns).unwrap();
    memory.probe_gpn_writable_range(&partial).unwrap();
    memory.probe_gpns(&[0, 1]).unwrap();
    let err = memory.probe_gpns(&[1 << 60]).unwrap_err();
    assert_eq!(err.kind(), GuestMemoryErrorKind::OutOfRange);
    assert_eq!(
        memory.probe_gpns(&[16]).unwrap_err().kind(),
        GuestMemoryErrorKind::OutOfRange
    );

    // Probing never changes memory, even with a concurrent writer.
    let stop = AtomicBool::new(false);
    let page0 = [0u64];
    let range = PagedRange::new(0, PAGE_SIZE, &page0).unwrap();
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let mut value = 0u8;
            while !stop.load(Ordering::Relaxed) {
                value = value.wrapping_add(1);
                memory.write_plain(0, &value).unwrap();
            }
            value
        });
        for _ in 0..20_000 {
            memory.probe_gpn_writable_range(&range).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let last = writer.join().unwrap();
        assert_eq!(memory.read_plain::<u8>(0).unwrap(), last);
    });
}

#[test]
fn paged_range_reads_and_writes() {
    let memory = GuestMemory::allocate(16 * PAGE_SIZE);
    let gpns = [7, 2, 11];
    let range = PagedRange::new(0x10, 2 * PAGE_SIZE, &gpns).unwrap();
    let data: Vec<u8> = (0..2 * PAGE_SIZE)
        .map(|i| u8::try_from(i % 253).unwrap())
        .collect();
    memory.write_range(&range, &data).unwrap();
    let mut first = vec![0u8; PAGE_SIZE - 0x10];
    memory.read_at(7 * P + 0x10, &mut first).unwrap();
    assert_eq!(first, data[..PAGE_SIZE - 0x10]);
    let mut second = vec![0u8; PAGE_SIZE];
    memory.read_at(2 * P, &mut second).unwrap();
    assert_eq!(second, data[PAGE_SIZE - 0x10..2 * PAGE_SIZE - 0x10]);
    let mut third = vec![0u8; 0x10];
    memory.read_at(11 * P, &mut third).unwrap();
    assert_eq!(third, data[2 * PAGE_SIZE - 0x10..]);
    let mut back = vec![0u8; data.len()];
    memory.read_range(&range, &mut back).unwrap();
    assert_eq!(back, data);
    let atomic: Vec<std::sync::atomic::AtomicU8> =
        (0..data.len()).map(|_| Default::default()).collect();
    memory.read_range_to_atomic(&range, &atomic).unwrap();
    assert!(atomic
        .iter()
        .zip(&data)
        .all(|(a, &b)| a.load(Ordering::Relaxed) == b));
    memory.zero_range(&range).unwrap();
    memory.read_range(&range, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0));
    memory.write_range_from_atomic(&range, &atomic).unwrap();
    memory.read_range(&range, &mut back).unwrap();
    assert_eq!(back, data);
    memory.fill_range(&range, 0xEE).unwrap();
    assert_eq!(memory.read_plain::<u8>(11 * P + 0xF).unwrap(), 0xEE);
    assert_eq!(memory.read_plain::<u8>(11 * P + 0x10).unwrap(), 0);

    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        memory.read_range(&range, &mut [0u8; 3])
    }));
    assert!(result.is_err());

    // A failing chunk reports its precise address and no range.
    let outside = [100u64];
    let range = PagedRange::new(8, 8, &outside).unwrap();
    let err = memory.read_range(&range, &mut [0u8; 8]).unwrap_err();
    assert_eq!(err.kind(), GuestMemoryErrorKind::OutOfRange);
    assert_eq!(err.gpa(), Some(100 * P + 8));
    assert_eq!(err.range(), None);
    let invalid = [1u64 << 53];
    let range = PagedRange::new(0, 1, &invalid).unwrap();
    assert_eq!(
        memory.write_range(&range, &[1]).unwrap_err().kind(),
        GuestMemoryErrorKind::OutOfRange
    );
}

#[test]
fn empty_memory() {
    let memory = GuestMemory::empty();
    assert_eq!(memory.debug_name(), "empty");
    assert_eq!(memory.max_address(), 0);
    let err = memory.read_at(0, &mut [0]).unwrap_err();
    assert_eq!(err.kind(), GuestMemoryErrorKind::OutOfRange);
    let err = memory.write_at(0, &[0]).unwrap_err();
    assert_eq!(err.kind(), GuestMemoryErrorKind::OutOfRange);
    assert_eq!(
        GuestMemory::default()
            .read_plain::<u8>(0)
            .unwrap_err()
            .kind(),
        GuestMemoryErrorKind::OutOfRange
    );
}

#[test]
fn concurrent_unmap_while_copying() {
    let size = us(MIB);
    let mapping = Arc::new(SparseMapping::new(size).unwrap());
    mapping.alloc(0, size).unwrap();
    let memory = GuestMemory::new("concurrent", mapping.clone());
    let stop = AtomicBool::new(false);
    let toggles = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let toggler = scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                mapping.unmap(0, size).unwrap();
                mapping.alloc(0, size).unwrap();
                toggles.fetch_add(1, Ordering::Relaxed);
            }
        });
        let mut buffer = vec![0u8; size];
        let (mut ok, mut failed) = (0, 0);
        // Copy until the toggler has remapped a few hundred times (and as many copies were
        // made), not for a fixed time: on a loaded machine the toggler may not run at all within
        // a time slice. The minute is only a guard against a hang.
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while (toggles.load(Ordering::Relaxed) < 200 || ok + failed < 200)
            && std::time::Instant::now() < give_up
        {
            let result = if (ok + failed) % 2 == 0 {
                memory.read_at(0, &mut buffer)
            } else {
                memory.write_at(0, &buffer)
            };
            match result {
                Ok(()) => ok += 1,
                Err(err) => {
                    assert_eq!(err.kind(), GuestMemoryErrorKind::Other);
                    assert!(err.fault().is_some());
                    failed += 1;
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        toggler.join().unwrap();
        assert!(
            toggles.load(Ordering::Relaxed) >= 200,
            "the toggler remapped"
        );
        assert!(ok + failed >= 200, "copies ran: {ok} ok, {failed} failed");
    });
    memory.write_at(0, &[1, 2, 3]).unwrap();
    let mut back = [0u8; 3];
    memory.read_at(0, &mut back).unwrap();
    assert_eq!(back, [1, 2, 3]);
}

#[test]
fn sparse_mapping_memory_installs_the_handler() {
    let (_mapping, _memory) = holey_layout();
    assert_eq!(trycopy::handler_status(), trycopy::HandlerStatus::Installed);
}

#[test]
fn typed_accesses_of_odd_sizes_and_atomic_buffers() {
    let (_mapping, memory) = holey_layout();
    memory.write_plain(3, &[1u8, 2, 3]).unwrap();
    assert_eq!(memory.read_plain::<[u8; 3]>(3).unwrap(), [1, 2, 3]);
    memory.write_plain(17, &0x0102_0304_0506_0708u64).unwrap();
    assert_eq!(memory.read_plain::<u64>(17).unwrap(), 0x0102_0304_0506_0708);
    let atomic: Vec<std::sync::atomic::AtomicU8> = (0..4).map(|i| i.into()).collect();
    memory.write_from_atomic(40, &atomic).unwrap();
    let out: Vec<std::sync::atomic::AtomicU8> = (0..4).map(|_| 0.into()).collect();
    memory.read_to_atomic(40, &out).unwrap();
    assert_eq!(out[3].load(Ordering::Relaxed), 3);
    // A typed read straddling RAM and a hole fails at the hole.
    let err = memory.read_plain::<[u8; 12]>(MIB - 6).unwrap_err();
    assert_eq!(err.gpa(), Some(MIB));
    let (base, len) = memory.full_mapping().unwrap();
    assert_eq!(len, 4 * us(MIB));
    assert!(!base.is_null());
    assert_eq!(memory.iova(0), None);
}

#[test]
fn error_accessors_and_names() {
    assert_eq!(GuestMemoryErrorKind::VtlProtected.name(), "VtlProtected");
    assert_eq!(
        GuestMemoryOperation::CompareExchange.name(),
        "compare exchange"
    );
    let err = GuestMemoryBackingError::other(u64::MAX, TestError("x"));
    assert_eq!(err.gpa(), None);
    assert_eq!(err.kind(), GuestMemoryErrorKind::Other);
    let memory = GuestMemory::allocate(us(P));
    let err = memory.fill_at(P - 1, 0, 2).unwrap_err();
    assert_eq!(err.debug_name(), "heap");
    assert_eq!(
        err.to_string(),
        "guest memory 'heap': fill error: failed to access 0xfff-0x1001"
    );
}

#[test]
fn sharing_comes_from_the_backing() {
    struct Provider;
    // Written as the original's providers are: an `impl Future` return.
    impl ProvideShareableRegions for Provider {
        #[allow(clippy::manual_async_fn)]
        fn get_regions(
            &self,
        ) -> impl std::future::Future<Output = Result<Vec<ShareableRegion>, ShareableRegionError>>
               + Send
               + '_ {
            async {
                let file = Arc::new(sparse_mmap::alloc_shared_memory(4096, "share")?);
                Ok(vec![ShareableRegion {
                    guest_address: 0,
                    size: 4096,
                    file,
                    file_offset: 0,
                }])
            }
        }
    }
    struct Shared(SparseMapping);
    // SAFETY: forwards the mapping of a sparse mapping it owns.
    unsafe impl GuestMemoryAccess for Shared {
        fn mapping(&self) -> Option<std::ptr::NonNull<u8>> {
            self.0.mapping()
        }
        fn max_address(&self) -> u64 {
            self.0.max_address()
        }
        fn sharing(&self) -> Option<GuestMemorySharing> {
            Some(GuestMemorySharing::new(Provider))
        }
    }
    let memory = GuestMemory::new("shared", Shared(SparseMapping::new(4096).unwrap()));
    let sharing = memory.sharing().expect("sharing");
    let regions = block_on(sharing.get_regions()).unwrap();
    assert_eq!(regions.len(), 1);
    assert_eq!(regions[0].size, 4096);
    assert!(GuestMemory::allocate(4096).sharing().is_none());
    assert!(memory.subrange(0, 4096, false).unwrap().sharing().is_none());
}

/// A minimal executor for a future that never waits.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::task::Context;
    use std::task::Poll;
    use std::task::Waker;
    let mut future = std::pin::pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
    }
}

#[test]
fn handles_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<GuestMemory>();
    assert_send_sync::<GuestMemoryError>();
    assert_send_sync::<LockedPages>();
    assert_send_sync::<SparseMappingBacking>();
    assert_send_sync::<AlignedHeapMemory>();
    assert_send_sync::<SparseMapping>();
}

/// A sparse mapping whose writes are recorded in a dirty bitmap (at bitmap offset `offset`).
struct Tracked {
    mapping: Arc<SparseMapping>,
    bitmap: Arc<DirtyBitmap>,
    offset: u64,
    fallback_only: bool,
}

// SAFETY: the mapping is the sparse mapping's reserved VA, kept alive by `mapping`; the write
// fallback writes through the mapping's guarded accessors.
unsafe impl GuestMemoryAccess for Tracked {
    fn mapping(&self) -> Option<std::ptr::NonNull<u8>> {
        if self.fallback_only {
            return None;
        }
        std::ptr::NonNull::new(self.mapping.as_ptr().cast())
    }

    fn max_address(&self) -> u64 {
        self.mapping.len() as u64
    }

    unsafe fn write_fallback(
        &self,
        address: u64,
        src: *const u8,
        len: usize,
    ) -> Result<(), GuestMemoryBackingError> {
        // SAFETY: the caller guarantees `src` is valid for `len` bytes.
        let data = unsafe { std::slice::from_raw_parts(src, len) };
        let failed = || GuestMemoryBackingError::other(address, TestError("write failed"));
        let offset = usize::try_from(address).map_err(|_| failed())?;
        self.mapping.write_at(offset, data).map_err(|_| failed())
    }

    fn dirty_bitmap(&self) -> Option<(Arc<DirtyBitmap>, u64)> {
        Some((self.bitmap.clone(), self.offset))
    }
}

/// The length of the mapping behind [`tracked`] memories.
const TRACKED_LEN: usize = 1 << 20;

fn tracked(offset: u64, fallback_only: bool) -> (GuestMemory, Arc<DirtyBitmap>) {
    let mapping = SparseMapping::new(TRACKED_LEN).unwrap();
    mapping.alloc(0, TRACKED_LEN).unwrap();
    tracked_over(mapping, offset, fallback_only)
}

/// A dirty-tracked memory over `mapping` (of [`TRACKED_LEN`] bytes), with its bitmap.
fn tracked_over(
    mapping: SparseMapping,
    offset: u64,
    fallback_only: bool,
) -> (GuestMemory, Arc<DirtyBitmap>) {
    let mapping = Arc::new(mapping);
    let bitmap = Arc::new(DirtyBitmap::new(4 * MIB));
    let memory = GuestMemory::new(
        "tracked",
        Tracked {
            mapping,
            bitmap: bitmap.clone(),
            offset,
            fallback_only,
        },
    );
    (memory, bitmap)
}

fn dirty_pages(bitmap: &DirtyBitmap) -> Vec<(u64, u64)> {
    let mut runs = Vec::new();
    bitmap.take(|first, count| runs.push((first, count)));
    runs
}

#[test]
fn every_write_path_marks_the_dirty_bitmap_and_reads_do_not() {
    let (memory, bitmap) = tracked(0, false);
    memory.write_at(0x10, &[1; 4]).unwrap();
    assert_eq!(dirty_pages(&bitmap), vec![], "stopped: nothing recorded");
    bitmap.start();
    let mut buffer = [0u8; 64];
    memory.read_at(0x3000, &mut buffer).unwrap();
    memory.read_plain::<u64>(0x4000).unwrap();
    assert_eq!(dirty_pages(&bitmap), vec![]);

    memory.write_at(0x1ff0, &[1; 0x20]).unwrap(); // pages 1 and 2
    memory.fill_at(0x5000, 7, 1).unwrap();
    memory.write_plain(0x7008, &0x1234u64).unwrap();
    memory
        .compare_exchange(0x9000, 0u32, 5u32)
        .unwrap()
        .unwrap();
    assert_eq!(dirty_pages(&bitmap), vec![(1, 2), (5, 1), (7, 1), (9, 1)]);

    let gpns = [0x20u64, 0x22];
    let range = PagedRange::new(0, 2 * PAGE_SIZE, &gpns).unwrap();
    memory.write_range(&range, &[3; 2 * PAGE_SIZE]).unwrap();
    memory
        .zero_range(&PagedRange::new(0, 16, &[0x30]).unwrap())
        .unwrap();
    assert_eq!(dirty_pages(&bitmap), vec![(0x20, 1), (0x22, 1), (0x30, 1)]);

    // A failed write marks nothing.
    assert!(memory.write_at(MIB - 1, &[0; 2]).is_err());
    assert_eq!(dirty_pages(&bitmap), vec![]);
}

#[test]
fn a_write_that_faults_part_way_marks_the_pages_it_was_to_write() {
    // Pages 0-4 mapped, page 5 not: a write from the end of page 4 into page 5 copies the bytes
    // of page 4, then faults and fails; page 4 changed, so it must be reported.
    let mapping = SparseMapping::new(TRACKED_LEN).unwrap();
    mapping.alloc(0, 5 * PAGE_SIZE).unwrap();
    mapping
        .alloc(6 * PAGE_SIZE, TRACKED_LEN - 6 * PAGE_SIZE)
        .unwrap();
    let (memory, bitmap) = tracked_over(mapping, 0, false);
    bitmap.start();
    let gpa = 5 * P - 16;
    assert!(memory.write_at(gpa, &[0x55; 32]).is_err());
    let mut written = [0u8; 16];
    memory.read_at(gpa, &mut written).unwrap();
    assert_eq!(
        written, [0x55; 16],
        "the bytes before the fault were written"
    );
    assert_eq!(
        dirty_pages(&bitmap),
        vec![(4, 2)],
        "reported, with the page it failed on"
    );
    // The same through a fill and a scatter list.
    assert!(memory.fill_at(gpa, 1, 32).is_err());
    assert_eq!(dirty_pages(&bitmap), vec![(4, 2)]);
}

#[test]
fn fallback_writes_subranges_and_locks_are_recorded() {
    let (memory, bitmap) = tracked(0, true);
    bitmap.start();
    memory.write_at(0x2000, &[9; 8]).unwrap();
    assert_eq!(dirty_pages(&bitmap), vec![(2, 1)], "the write fallback");

    let (memory, bitmap) = tracked(0x10_0000, false);
    bitmap.start();
    memory.write_at(0x1000, &[1]).unwrap();
    assert_eq!(
        dirty_pages(&bitmap),
        vec![(0x101, 1)],
        "bitmap offset applied"
    );
    let view = memory.subrange(0x8000, 0x8000, false).unwrap();
    view.write_at(0x1000, &[1]).unwrap();
    assert_eq!(
        dirty_pages(&bitmap),
        vec![(0x109, 1)],
        "subrange offset applied"
    );
    let nested = view.subrange(0x2000, 0x1000, false).unwrap();
    nested.fill_at(0, 1, 1).unwrap();
    assert_eq!(dirty_pages(&bitmap), vec![(0x10a, 1)]);

    let locked = memory.lock_gpns(false, &[3, 4]).unwrap();
    assert_eq!(
        dirty_pages(&bitmap),
        vec![(0x103, 2)],
        "locked pages count as written"
    );
    assert_eq!(dirty_pages(&bitmap), vec![(0x103, 2)]);
    drop(locked);
    assert_eq!(
        dirty_pages(&bitmap),
        vec![(0x103, 2)],
        "once more after the unlock"
    );
    assert_eq!(dirty_pages(&bitmap), vec![]);
}

#[test]
fn check_access_refuses_out_of_range_and_known_holes_before_any_access() {
    // Bounds: the OutOfRange error the access itself would give, with the range.
    let memory = GuestMemory::allocate(us(4 * P));
    memory
        .check_access(0, 4 * P, GuestMemoryOperation::Read)
        .unwrap();
    memory
        .check_access(5 * P, 0, GuestMemoryOperation::Read)
        .unwrap();
    let error = memory
        .check_access(P, 1 << 40, GuestMemoryOperation::Read)
        .unwrap_err();
    assert_eq!(error.kind(), GuestMemoryErrorKind::OutOfRange);
    assert_eq!(error.operation(), GuestMemoryOperation::Read);
    assert_eq!(error.range(), Some(P..P + (1 << 40)));
    assert!(memory
        .check_access(u64::MAX - 1, 2, GuestMemoryOperation::Read)
        .is_err());

    // A backing that knows a hole: its address is translated to a GPA, in views too.
    struct Holey(Arc<SparseMapping>, AtomicUsize);
    // SAFETY: the mapping is a reservation of `max_address` bytes kept alive by the backing.
    unsafe impl GuestMemoryAccess for Holey {
        fn mapping(&self) -> Option<std::ptr::NonNull<u8>> {
            std::ptr::NonNull::new(self.0.as_ptr().cast())
        }
        fn max_address(&self) -> u64 {
            self.0.len() as u64
        }
        fn check_access(
            &self,
            address: u64,
            len: u64,
            write: bool,
        ) -> Result<(), GuestMemoryBackingError> {
            self.1.fetch_add(1, Ordering::Relaxed);
            let hole = 2 * P..3 * P;
            if address < hole.end && address + len > hole.start && !write {
                Err(GuestMemoryBackingError::new(
                    GuestMemoryErrorKind::OutOfRange,
                    address.max(hole.start),
                    TestError("a hole"),
                ))
            } else {
                Ok(())
            }
        }
    }
    let backing = Arc::new(Holey(
        Arc::new(SparseMapping::new(us(8 * P)).unwrap()),
        AtomicUsize::new(0),
    ));
    let memory = GuestMemory::new("holey", backing.clone());
    memory
        .check_access(0, 2 * P, GuestMemoryOperation::Read)
        .unwrap();
    let error = memory
        .check_access(P, 4 * P, GuestMemoryOperation::Read)
        .unwrap_err();
    assert_eq!(error.gpa(), Some(2 * P));
    assert_eq!(error.kind(), GuestMemoryErrorKind::OutOfRange);
    assert!(error.to_string().contains("failed to access"), "{error}");
    // A write is checked as a write.
    memory
        .check_access(P, 4 * P, GuestMemoryOperation::Write)
        .unwrap();
    let view = memory.subrange(P, 6 * P, false).unwrap();
    let error = view
        .check_access(0, 3 * P, GuestMemoryOperation::Read)
        .unwrap_err();
    assert_eq!(error.gpa(), Some(P), "the hole at 2P is P into the view");
    assert_eq!(backing.1.load(Ordering::Relaxed), 4);
}

#[test]
fn read_to_vec_checks_before_allocating_and_never_aborts() {
    let memory = GuestMemory::allocate(us(4 * P));
    memory.write_at(P, b"hello").unwrap();
    assert_eq!(memory.read_to_vec(P, 5).unwrap(), b"hello");
    assert!(memory.read_to_vec(0, 0).unwrap().is_empty());
    // Beyond the memory: refused before any allocation of 2^62 bytes.
    match memory.read_to_vec(0, 1 << 62) {
        Err(ReadToVecError::Memory(error)) => {
            assert_eq!(error.kind(), GuestMemoryErrorKind::OutOfRange)
        }
        other => panic!("{other:?}"),
    }
    // Inside a huge address space but impossible to allocate: an error, not an abort.
    let mapping = Arc::new(SparseMapping::new(us(1 << 46)).unwrap());
    mapping.alloc(0, us(P)).unwrap();
    let huge = GuestMemory::new("huge", mapping);
    match huge.read_to_vec(0, usize::MAX >> 1) {
        Err(ReadToVecError::Memory(error)) => {
            assert_eq!(error.kind(), GuestMemoryErrorKind::OutOfRange)
        }
        other => panic!("{other:?}"),
    }
    match huge.read_to_vec(0, us(1 << 46)) {
        Err(ReadToVecError::Allocation { size }) => assert_eq!(size, us(1 << 46)),
        // A kernel that overcommits always grants the 64 TiB; the read then faults after
        // the one placed page.
        Err(ReadToVecError::Memory(error)) => assert_eq!(error.gpa(), Some(P)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn heap_memory_views_and_linear_backings() {
    fn linear<T: LinearGuestMemory>(backing: T) -> GuestMemory {
        assert!(backing.mapping().is_some());
        GuestMemory::new("linear", backing)
    }
    let mut heap = AlignedHeapMemory::new(100);
    assert_eq!(heap.len(), PAGE_SIZE);
    AsMut::<[u8]>::as_mut(&mut heap)[1] = 7;
    (*heap)[2].store(8, Ordering::Relaxed);
    let atomic_view: &mut [std::sync::atomic::AtomicU8] = &mut heap;
    *atomic_view[3].get_mut() = 9;
    assert_eq!(
        AsRef::<[std::sync::atomic::AtomicU8]>::as_ref(&heap).len(),
        PAGE_SIZE
    );
    assert_eq!(
        AsMut::<[std::sync::atomic::AtomicU8]>::as_mut(&mut heap).len(),
        PAGE_SIZE
    );
    assert_eq!(&heap.as_bytes()[..4], &[0, 7, 8, 9]);
    let memory = linear(heap);
    assert_eq!(memory.read_plain::<[u8; 4]>(0).unwrap(), [0, 7, 8, 9]);

    let shared =
        sparse_mmap::alloc::SharedMem::new(sparse_mmap::alloc::Allocation::new(PAGE_SIZE).unwrap());
    let memory = linear(shared);
    memory.write_at(10, b"linear").unwrap();
    let mut back = [0u8; 6];
    memory.read_at(10, &mut back).unwrap();
    assert_eq!(&back, b"linear");
}
