//! Tests of sparse mappings (reservation, placement, unmapping, protection, decommit, huge
//! pages, names and guarded access) and of the shared-memory helpers.

// Unsafe code: the tests read and write the mapped pages through raw pointers.
#![allow(unsafe_code)]

use crate::alloc_shared_memory;
use crate::alloc_shared_memory_steps;
use crate::mappable_from_fd;
use crate::AllocSharedMemoryStep;
use crate::SparseMapping;
use crate::SparseMappingError;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;

const SEGV_MAPERR: i32 = 1;
const SEGV_ACCERR: i32 = 2;
const BUS_ADRERR: i32 = 2;

fn page() -> usize {
    SparseMapping::page_size()
}

fn assert_invalid_input<T: std::fmt::Debug>(result: io::Result<T>) {
    let err = result.expect_err("expected InvalidInput");
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err:?}");
    assert_eq!(err.raw_os_error(), None, "{err:?}");
}

fn assert_os_error<T: std::fmt::Debug>(result: io::Result<T>, errno: i32) {
    let err = result.expect_err("expected an OS error");
    assert_eq!(err.raw_os_error(), Some(errno), "{err:?}");
}

fn memory_error(result: Result<(), SparseMappingError>) -> trycopy::MemoryError {
    match result {
        Err(SparseMappingError::Memory(err)) => err,
        other => panic!("expected a memory fault, got {other:?}"),
    }
}

/// The `/proc/self/maps` lines of VMAs that overlap `[start, start + len)`.
fn maps_lines(start: usize, len: usize) -> Vec<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter(|line| {
            let range = line.split_whitespace().next().unwrap();
            let (low, high) = range.split_once('-').unwrap();
            let low = usize::from_str_radix(low, 16).unwrap();
            let high = usize::from_str_radix(high, 16).unwrap();
            low < start + len && high > start
        })
        .map(str::to_owned)
        .collect()
}

fn memfd_blocks(fd: &impl AsFd) -> u64 {
    let file = File::from(fd.as_fd().try_clone_to_owned().unwrap());
    std::os::unix::fs::MetadataExt::blocks(&file.metadata().unwrap())
}

#[test]
fn zero_length_is_invalid_input() {
    let err = SparseMapping::new(0).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(err.to_string(), "length must be greater than 0");
}

#[test]
fn small_mapping_rounds_to_4k() {
    let mapping = SparseMapping::new(1).unwrap();
    assert_eq!(mapping.len(), 4096);
    assert_eq!(mapping.as_ptr() as usize % 4096, 0);
    assert!(mapping.is_local());
    assert!(!mapping.is_empty());
}

#[test]
fn alignment_follows_length() {
    let mapping = SparseMapping::new(3 << 20).unwrap();
    assert_eq!(mapping.len(), 4 << 20);
    assert_eq!(mapping.as_ptr() as usize % (2 << 20), 0);

    let mapping = SparseMapping::new((1 << 30) + 4096).unwrap();
    assert_eq!(mapping.len(), 2 << 30);
    assert_eq!(mapping.as_ptr() as usize % (1 << 30), 0);

    let mapping = SparseMapping::new((2 << 20) - 1).unwrap();
    assert_eq!(mapping.len(), 2 << 20);
    assert_eq!(mapping.as_ptr() as usize % 4096, 0);
}

#[test]
fn overflowing_length_is_invalid_input() {
    let err = SparseMapping::new(usize::MAX - 10).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(
        err.to_string(),
        "length and alignment combination causes overflow"
    );
    // Rounds fine but the reservation with its alignment slack overflows.
    let err = SparseMapping::new(usize::MAX - (1 << 30) + 2).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn read_of_unplaced_reservation_is_an_access_error() {
    let mapping = SparseMapping::new(16 * page()).unwrap();
    let mut buffer = [0u8; 16];
    let err = memory_error(mapping.read_at(0, &mut buffer));
    assert_eq!(err.offset(), 0);
    assert!(!err.is_write());
    assert_eq!(err.fault().signal, libc::SIGSEGV);
    assert_eq!(err.fault().si_code, SEGV_ACCERR);
    // The reservation is still an inaccessible private mapping.
    let lines = maps_lines(mapping.as_ptr() as usize, mapping.len());
    assert!(!lines.is_empty());
    assert!(
        lines.iter().all(|line| line.contains(" ---p ")),
        "{lines:?}"
    );
}

#[test]
fn alloc_round_trip_and_zeroed() {
    let mapping = SparseMapping::new(4 * page()).unwrap();
    mapping.alloc(page(), page()).unwrap();
    let mut fresh = vec![0xFFu8; page()];
    mapping.read_at(page(), &mut fresh).unwrap();
    assert!(fresh.iter().all(|&b| b == 0));
    mapping.write_at(page(), &vec![0xCC; page()]).unwrap();
    let mut back = vec![0u8; page()];
    mapping.read_at(page(), &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0xCC));
    // The neighbours are still inaccessible.
    let mut one = [0u8; 1];
    assert!(matches!(
        mapping.read_at(0, &mut one),
        Err(SparseMappingError::Memory(_))
    ));
    assert!(matches!(
        mapping.read_at(2 * page(), &mut one),
        Err(SparseMappingError::Memory(_))
    ));
}

#[test]
fn range_validation() {
    let mapping = SparseMapping::new(4 * page()).unwrap();
    let len = mapping.len();
    assert_invalid_input(mapping.alloc(100, page()));
    assert_invalid_input(mapping.alloc(0, 100));
    assert_invalid_input(mapping.alloc(0, len + page()));
    assert_invalid_input(mapping.alloc(len, page()));
    assert_invalid_input(mapping.alloc(usize::MAX - page() + 1, page()));
    assert_invalid_input(mapping.alloc(page(), usize::MAX - page() + 1));
    assert_os_error(mapping.alloc(0, 0), libc::EINVAL);
    assert_os_error(mapping.map_zero(0, 0), libc::EINVAL);
    assert_invalid_input(mapping.unmap(0, 0));
    assert_invalid_input(mapping.unmap(0, len + page()));
    assert_invalid_input(mapping.unmap(1, page()));
    mapping.decommit(0, 0).unwrap();
    mapping.commit(0, 0).unwrap();
    mapping.madvise_hugepage(0, 0).unwrap();
    mapping.set_writable(0, 0, true).unwrap();
    assert_invalid_input(mapping.commit(0, len + page()));
    assert_invalid_input(mapping.decommit(100, page()));
    assert_invalid_input(mapping.set_writable(0, len + page(), true));
    assert_invalid_input(mapping.madvise_hugepage(page() + 1, page()));
    let memfd = alloc_shared_memory(page(), "validation").unwrap();
    assert_invalid_input(mapping.map_file(len, page(), &memfd, 0, true));
    assert_os_error(mapping.map_file(0, 0, &memfd, 0, true), libc::EINVAL);
}

#[test]
fn unmap_returns_a_page_to_the_reserved_state() {
    let mapping = SparseMapping::new(4 * page()).unwrap();
    mapping.alloc(0, 4 * page()).unwrap();
    for index in 0..4 {
        mapping
            .fill_at(index * page(), 0x10 + u8::try_from(index).unwrap(), page())
            .unwrap();
    }
    mapping.unmap(page(), page()).unwrap();
    let mut byte = [0u8; 1];
    let err = memory_error(mapping.read_at(page(), &mut byte));
    assert_eq!(err.fault().si_code, SEGV_ACCERR);
    for index in [0, 2, 3] {
        let mut data = vec![0u8; page()];
        mapping.read_at(index * page(), &mut data).unwrap();
        assert!(data
            .iter()
            .all(|&b| b == 0x10 + u8::try_from(index).unwrap()));
    }
    let lines = maps_lines(mapping.as_ptr() as usize + page(), page());
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(" ---p "), "{lines:?}");
    // Unmapping a valid range that holds nothing (or is already unmapped) is fine.
    mapping.unmap(page(), page()).unwrap();
    let fresh = SparseMapping::new(4 * page()).unwrap();
    fresh.unmap(0, fresh.len()).unwrap();
}

#[test]
fn map_zero_is_read_only_zeros() {
    let mapping = SparseMapping::new(page()).unwrap();
    mapping.map_zero(0, page()).unwrap();
    let mut data = vec![0xFFu8; page()];
    mapping.read_at(0, &mut data).unwrap();
    assert!(data.iter().all(|&b| b == 0));
    let err = memory_error(mapping.write_at(0, &[1]));
    assert!(err.is_write());
    assert_eq!(err.offset(), 0);
    assert_eq!(err.fault().signal, libc::SIGSEGV);
    assert_eq!(err.fault().si_code, SEGV_ACCERR);
    assert_eq!(mapping.read_plain::<u8>(0).unwrap(), 0);
}

#[test]
fn set_writable_toggles_writes() {
    let mapping = SparseMapping::new(page()).unwrap();
    mapping.alloc(0, page()).unwrap();
    mapping.write_at(0, &[5]).unwrap();
    mapping.set_writable(0, page(), false).unwrap();
    let err = memory_error(mapping.write_at(0, &[6]));
    assert!(err.is_write());
    assert_eq!(err.fault().si_code, SEGV_ACCERR);
    assert_eq!(mapping.read_plain::<u8>(0).unwrap(), 5);
    mapping.set_writable(0, page(), true).unwrap();
    mapping.write_at(0, &[6]).unwrap();
    assert_eq!(mapping.read_plain::<u8>(0).unwrap(), 6);
}

#[test]
fn overlapping_placements() {
    let mapping = SparseMapping::new(16 * page()).unwrap();
    mapping.alloc(0, 8 * page()).unwrap();
    mapping.alloc(2 * page(), 2 * page()).unwrap();
    mapping.alloc(6 * page(), 6 * page()).unwrap();
    mapping.unmap(3 * page(), 4 * page()).unwrap();
    let memfd = alloc_shared_memory(4 * page(), "overlap").unwrap();
    mapping.map_file(0, 4 * page(), &memfd, 0, true).unwrap();
    mapping
        .map_file(2 * page(), 4 * page(), &memfd, 0, true)
        .unwrap();
    mapping
        .map_file(3 * page(), 2 * page(), &memfd, 2 * page() as u64, false)
        .unwrap();
    mapping.write_at(2 * page(), &[0x77]).unwrap();
    // Offset 2P is the start of the second view, i.e. file offset 0, also seen at offset 0.
    assert_eq!(mapping.read_plain::<u8>(0).unwrap(), 0x77);
    // The read-only view at 3P shows file offset 2P.
    mapping
        .write_at(2 * page() + 2 * page() - 1, &[0x12])
        .unwrap_err();
    drop(mapping);
}

#[test]
fn shared_memory_views_and_descriptor_properties() {
    let memfd = alloc_shared_memory(4 * page(), "t").unwrap();
    let mapping = SparseMapping::new(16 * page()).unwrap();
    mapping.map_file(0, 4 * page(), &memfd, 0, true).unwrap();
    mapping
        .map_file(8 * page(), 4 * page(), &memfd, 0, true)
        .unwrap();
    mapping.write_at(page() + 3, b"hello").unwrap();
    let mut back = [0u8; 5];
    mapping.read_at(9 * page() + 3, &mut back).unwrap();
    assert_eq!(&back, b"hello");

    let link = std::fs::read_link(format!("/proc/self/fd/{}", memfd.as_raw_fd())).unwrap();
    assert_eq!(link.to_str().unwrap(), "/memfd:t (deleted)");
    // SAFETY: F_GETFD on a valid descriptor.
    let fd_flags = unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_GETFD) };
    assert_eq!(fd_flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    // SAFETY: F_GET_SEALS on a valid descriptor.
    let seals = unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_GET_SEALS) };
    assert_eq!(seals, libc::F_SEAL_SEAL);
    assert_eq!(
        File::from(memfd.try_clone().unwrap())
            .metadata()
            .unwrap()
            .len(),
        4 * page() as u64
    );
    // The maps show the object's name.
    let lines = maps_lines(mapping.as_ptr() as usize, page());
    assert!(lines[0].contains("/memfd:t (deleted)"), "{lines:?}");
}

#[test]
fn mappable_duplicates_are_cloexec_and_share_the_object() {
    let memfd = alloc_shared_memory(page(), "dup").unwrap();
    let duplicate = mappable_from_fd(memfd.as_fd()).unwrap();
    assert_ne!(duplicate.as_raw_fd(), memfd.as_raw_fd());
    // SAFETY: F_GETFD on a valid descriptor.
    let fd_flags = unsafe { libc::fcntl(duplicate.as_raw_fd(), libc::F_GETFD) };
    assert_eq!(fd_flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    let mapping = SparseMapping::new(2 * page()).unwrap();
    mapping.map_file(0, page(), &memfd, 0, true).unwrap();
    mapping
        .map_file(page(), page(), &duplicate, 0, true)
        .unwrap();
    drop(memfd);
    mapping.write_at(10, &[9]).unwrap();
    assert_eq!(mapping.read_plain::<u8>(page() + 10).unwrap(), 9);
}

#[test]
fn shared_memory_name_errors() {
    assert_invalid_input(alloc_shared_memory(page(), "a\0b"));
    assert_os_error(alloc_shared_memory(page(), &"x".repeat(300)), libc::EINVAL);
}

#[test]
fn shared_memory_errors_name_the_step_that_failed() {
    let long_name = alloc_shared_memory_steps(page(), &"x".repeat(300)).unwrap_err();
    assert_eq!(long_name.step, AllocSharedMemoryStep::MemfdCreate);
    assert_eq!(long_name.source.raw_os_error(), Some(libc::EINVAL));
    let nul = alloc_shared_memory_steps(page(), "a\0b").unwrap_err();
    assert_eq!(nul.step, AllocSharedMemoryStep::MemfdCreate);
    assert_eq!(nul.source.kind(), io::ErrorKind::InvalidInput);
    // A size beyond the largest file offset is what ftruncate refuses (EFBIG); the plain
    // function still returns the bare OS error.
    let huge = usize::try_from(i64::MAX).unwrap() + 1;
    let error = alloc_shared_memory_steps(huge, "huge").unwrap_err();
    assert_eq!(error.step, AllocSharedMemoryStep::Ftruncate);
    assert_eq!(error.step.syscall(), "ftruncate");
    assert_eq!(error.size, huge);
    assert_eq!(error.source.raw_os_error(), Some(libc::EFBIG));
    assert!(
        error
            .to_string()
            .starts_with("ftruncate of a 0x8000000000000000-byte shared memory object failed"),
        "{error}"
    );
    assert_os_error(alloc_shared_memory(huge, "huge"), libc::EFBIG);
}

#[test]
fn shared_memory_sized_beyond_the_file_size_limit_fails_at_ftruncate() {
    // The file size limit (ulimit -f) is the whole process's: set in a process of its own.
    if !isolated("shared_memory_sized_beyond_the_file_size_limit_fails_at_ftruncate") {
        return;
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit the call fills in.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit) };
    assert_eq!(got, 0);
    limit.rlim_cur = u64::try_from(page()).unwrap();
    // SAFETY: lowers this process's soft limit; `limit` is a valid rlimit. Ignoring SIGXFSZ
    // makes a size beyond it an EFBIG error instead of the signal's default (ending the process).
    unsafe {
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let descriptors = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let before = descriptors();
    let error = alloc_shared_memory_steps(2 * page(), "limited").unwrap_err();
    assert_eq!(error.step, AllocSharedMemoryStep::Ftruncate);
    assert_eq!(error.source.raw_os_error(), Some(libc::EFBIG));
    assert_eq!(descriptors(), before, "the memfd is closed on failure");
    assert!(alloc_shared_memory_steps(page(), "within").is_ok());
}

/// Runs the test `name` (a function of this module) in a fresh process of the test binary, for
/// a process-wide setting. Returns true in that process, where the caller runs the test's body;
/// in the original process it waits for the child and checks it passed.
fn isolated(name: &str) -> bool {
    const VAR: &str = "SPARSE_MMAP_ISOLATED_TEST";
    if std::env::var(VAR).as_deref() == Ok(name) {
        return true;
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            &format!("tests::{name}"),
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(VAR, name)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "isolated test {name} failed:\n{stdout}\n{stderr}"
    );
    false
}

#[test]
fn view_beyond_end_of_file_is_a_bus_error() {
    let memfd = alloc_shared_memory(page(), "short").unwrap();
    let mapping = SparseMapping::new(2 * page()).unwrap();
    mapping.map_file(0, 2 * page(), &memfd, 0, true).unwrap();
    let mut first = vec![0u8; page()];
    mapping.read_at(0, &mut first).unwrap();
    let mut both = vec![0u8; 2 * page()];
    let err = memory_error(mapping.read_at(0, &mut both));
    assert_eq!(err.fault().signal, libc::SIGBUS);
    assert_eq!(err.fault().si_code, BUS_ADRERR);
    assert_eq!(err.offset(), page());
    assert!(!err.is_write());
    // Still alive and working.
    mapping.write_at(0, &[1, 2, 3]).unwrap();
}

#[test]
fn map_file_os_errors() {
    let memfd = alloc_shared_memory(2 * page(), "ro").unwrap();
    let read_only = File::open(format!("/proc/self/fd/{}", memfd.as_raw_fd())).unwrap();
    let mapping = SparseMapping::new(2 * page()).unwrap();
    assert_os_error(
        mapping.map_file(0, page(), &read_only, 0, true),
        libc::EACCES,
    );
    // A read-only view of a read-only descriptor works.
    mapping.map_file(0, page(), &read_only, 0, false).unwrap();
    assert_eq!(mapping.read_plain::<u64>(0).unwrap(), 0);
    assert_os_error(mapping.map_file(0, page(), &memfd, 100, true), libc::EINVAL);
    assert_os_error(
        mapping.map_file(0, page(), &memfd, u64::MAX - 4095, true),
        libc::EINVAL,
    );
}

#[test]
fn unmappable_descriptor() {
    let (reader, _writer) = {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid out array of two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors were just created and are owned here.
        unsafe {
            (
                <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fds[0]),
                <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fds[1]),
            )
        }
    };
    let mapping = SparseMapping::new(page()).unwrap();
    let err = mapping.map_file(0, page(), &reader, 0, false).unwrap_err();
    assert!(
        matches!(err.raw_os_error(), Some(libc::ENODEV | libc::EACCES)),
        "{err:?}"
    );
}

#[test]
fn decommit_private_memory() {
    let mapping = SparseMapping::new(4 * page()).unwrap();
    mapping.alloc(0, 4 * page()).unwrap();
    mapping.fill_at(0, 0xAB, 2 * page()).unwrap();
    mapping.decommit(0, page()).unwrap();
    let mut data = vec![0xFFu8; page()];
    mapping.read_at(0, &mut data).unwrap();
    assert!(data.iter().all(|&b| b == 0));
    mapping.read_at(page(), &mut data).unwrap();
    assert!(data.iter().all(|&b| b == 0xAB));
    mapping.commit(0, page()).unwrap();
    mapping.commit(0, page()).unwrap();
    mapping.read_at(0, &mut data).unwrap();
    assert!(data.iter().all(|&b| b == 0));
    mapping.write_at(0, &[1]).unwrap();
    assert_eq!(mapping.read_plain::<u8>(0).unwrap(), 1);
    // Decommitting never-placed reserved pages is harmless and they stay inaccessible.
    let reserved = SparseMapping::new(2 * page()).unwrap();
    reserved.decommit(0, 2 * page()).unwrap();
    assert!(reserved.read_plain::<u8>(0).is_err());
}

#[test]
fn decommit_memfd_view_punches_a_hole() {
    let size = 64 * page();
    let memfd = alloc_shared_memory(size, "decommit").unwrap();
    let mapping = SparseMapping::new(2 * size).unwrap();
    mapping.map_file(0, size, &memfd, 0, true).unwrap();
    mapping.map_file(size, size, &memfd, 0, true).unwrap();
    mapping.fill_at(0, 0x5A, size).unwrap();
    let blocks_before = memfd_blocks(&memfd);
    assert!(blocks_before * 512 >= size as u64, "{blocks_before}");

    // Decommit the first half through the second view.
    mapping.decommit(size, size / 2).unwrap();
    let blocks_after = memfd_blocks(&memfd);
    assert!(
        blocks_before.saturating_sub(blocks_after) * 512 >= (size / 2) as u64,
        "blocks {blocks_before} -> {blocks_after}"
    );
    let mut data = vec![0xFFu8; size / 2];
    mapping.read_at(0, &mut data).unwrap();
    assert!(data.iter().all(|&b| b == 0), "first view sees the hole");
    mapping.read_at(size, &mut data).unwrap();
    assert!(data.iter().all(|&b| b == 0), "second view sees the hole");
    mapping.read_at(size / 2, &mut data).unwrap();
    assert!(data.iter().all(|&b| b == 0x5A), "the rest is kept");
    // The view remains usable.
    mapping.write_at(size, &[3]).unwrap();
    assert_eq!(mapping.read_plain::<u8>(0).unwrap(), 3);
}

#[test]
fn decommit_mixed_range_and_regular_file_contents_survive() {
    let path = std::env::temp_dir().join(format!("sparse_mmap_decommit_{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    file.set_len(page() as u64).unwrap();
    let memfd = alloc_shared_memory(page(), "mixed").unwrap();
    let mapping = SparseMapping::new(4 * page()).unwrap();
    mapping.alloc(0, page()).unwrap();
    mapping.map_file(page(), page(), &memfd, 0, true).unwrap();
    mapping
        .map_file(2 * page(), page(), &file, 0, true)
        .unwrap();
    mapping.fill_at(0, 0x11, 3 * page()).unwrap();
    mapping.decommit(0, 4 * page()).unwrap();
    assert_eq!(mapping.read_plain::<u8>(0).unwrap(), 0);
    assert_eq!(mapping.read_plain::<u8>(page()).unwrap(), 0);
    // An ordinary file keeps its contents: only the page tables were dropped.
    assert_eq!(mapping.read_plain::<u8>(2 * page()).unwrap(), 0x11);
    let mut contents = [0u8; 1];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut contents, 0).unwrap();
    assert_eq!(contents[0], 0x11);
    // After replacing the memfd view with private memory, decommit no longer touches the memfd.
    mapping.write_at(page(), &[0x22]).unwrap();
    mapping.alloc(page(), page()).unwrap();
    mapping.decommit(page(), page()).unwrap();
    let second = SparseMapping::new(page()).unwrap();
    second.map_file(0, page(), &memfd, 0, false).unwrap();
    assert_eq!(second.read_plain::<u8>(0).unwrap(), 0x22);
}

#[test]
fn decommit_read_only_descriptor_view_keeps_contents() {
    let memfd = alloc_shared_memory(page(), "rofd").unwrap();
    let read_only = File::open(format!("/proc/self/fd/{}", memfd.as_raw_fd())).unwrap();
    let writer = SparseMapping::new(page()).unwrap();
    writer.map_file(0, page(), &memfd, 0, true).unwrap();
    writer.write_at(0, &[0x44]).unwrap();
    let reader = SparseMapping::new(page()).unwrap();
    reader.map_file(0, page(), &read_only, 0, false).unwrap();
    reader.decommit(0, page()).unwrap();
    assert_eq!(reader.read_plain::<u8>(0).unwrap(), 0x44);
}

#[test]
fn huge_page_advice() {
    let size = 2 << 20;
    let mapping = SparseMapping::new(size).unwrap();
    mapping.alloc(0, size).unwrap();
    match mapping.madvise_hugepage(0, size) {
        Ok(()) => {}
        Err(err) => assert_eq!(err.raw_os_error(), Some(libc::EINVAL)),
    }
    mapping.fill_at(0, 0x3C, size).unwrap();
    let mut data = vec![0u8; size];
    mapping.read_at(0, &mut data).unwrap();
    assert!(data.iter().all(|&b| b == 0x3C));
    mapping.decommit(0, size).unwrap();
    mapping.read_at(0, &mut data).unwrap();
    assert!(data.iter().all(|&b| b == 0));
}

/// Whether this kernel supports anonymous VMA names (Linux 5.17+ with CONFIG_ANON_VMA_NAME).
fn vma_names_supported() -> bool {
    let probe = SparseMapping::new(page()).unwrap();
    probe.alloc(0, page()).unwrap();
    probe.set_name(0, page(), "probe-name");
    maps_lines(probe.as_ptr() as usize, page())
        .iter()
        .any(|line| line.contains("[anon:probe-name]"))
}

#[test]
fn names_show_in_maps() {
    let mapping = SparseMapping::new(4 * page()).unwrap();
    // Never fails, whatever the input.
    mapping.set_name(0, mapping.len(), "bad\0name");
    mapping.set_name(1, page(), "unaligned");
    mapping.set_name(0, mapping.len() + page(), "too-long-range");
    mapping.set_name(usize::MAX, 2, "overflow");
    mapping.set_name(0, page(), &"n".repeat(1000));
    mapping.set_name(0, page(), "bad\nchar");
    if !vma_names_supported() {
        eprintln!("SKIPPED: anonymous VMA names are not supported by this kernel");
        return;
    }
    mapping.set_name(0, mapping.len(), "guest-memory");
    let start = mapping.as_ptr() as usize;
    let lines = maps_lines(start, mapping.len());
    assert!(
        lines
            .iter()
            .all(|line| line.contains("[anon:guest-memory]")),
        "{lines:?}"
    );
    mapping.alloc(page(), page()).unwrap();
    let placed = maps_lines(start + page(), page());
    assert!(
        placed.iter().all(|line| !line.contains("[anon:")),
        "{placed:?}"
    );
    let neighbour = maps_lines(start, page());
    assert!(
        neighbour[0].contains("[anon:guest-memory]"),
        "{neighbour:?}"
    );
    mapping.set_name(page(), page(), "renamed");
    let renamed = maps_lines(start + page(), page());
    assert!(renamed[0].contains("[anon:renamed]"), "{renamed:?}");
}

#[test]
fn data_access_bounds() {
    let mapping = SparseMapping::new(page()).unwrap();
    mapping.alloc(0, page()).unwrap();
    let len = mapping.len();
    mapping.read_at(len, &mut []).unwrap();
    mapping.write_at(len, &[]).unwrap();
    mapping.fill_at(len, 0, 0).unwrap();
    assert!(matches!(
        mapping.read_at(len + 1, &mut []),
        Err(SparseMappingError::OutOfBounds)
    ));
    assert!(matches!(
        mapping.read_at(len - 1, &mut [0u8; 2]),
        Err(SparseMappingError::OutOfBounds)
    ));
    assert!(matches!(
        mapping.write_at(usize::MAX, &[1]),
        Err(SparseMappingError::OutOfBounds)
    ));
    assert!(matches!(
        mapping.fill_at(1, 0, len),
        Err(SparseMappingError::OutOfBounds)
    ));
    assert!(matches!(
        mapping.read_plain::<u64>(len - 4),
        Err(SparseMappingError::OutOfBounds)
    ));
    assert!(matches!(
        mapping.write_volatile(len - 1, &0u16),
        Err(SparseMappingError::OutOfBounds)
    ));
    assert_eq!(SparseMappingError::OutOfBounds.to_string(), "out of bounds");
}

#[test]
fn fault_offset_within_access() {
    let mapping = SparseMapping::new(2 * page()).unwrap();
    mapping.alloc(0, page()).unwrap();
    let mut data = [0u8; 16];
    let err = memory_error(mapping.read_at(page() - 8, &mut data));
    assert_eq!(err.offset(), 8);
    assert!(!err.is_write());
    assert_eq!(err.fault().si_code, SEGV_ACCERR);
    let err = memory_error(mapping.write_at(page() - 8, &[1; 16]));
    assert_eq!(err.offset(), 8);
    assert!(err.is_write());
    let err = memory_error(mapping.fill_at(page() - 4, 1, 16));
    assert_eq!(err.offset(), 4);
    for (index, value) in [1u64, u64::MAX, 0x0123_4567_89AB_CDEF]
        .into_iter()
        .enumerate()
    {
        mapping.write_volatile(index * 8, &value).unwrap();
        assert_eq!(mapping.read_volatile::<u64>(index * 8).unwrap(), value);
        assert_eq!(mapping.read_plain::<u64>(index * 8).unwrap(), value);
    }
}

#[test]
fn typed_accesses_of_every_size() {
    let mapping = SparseMapping::new(2 * page()).unwrap();
    mapping.alloc(0, page()).unwrap();
    mapping.write_volatile(1, &0xA5u8).unwrap();
    mapping.write_volatile(2, &0xBEEFu16).unwrap();
    mapping.write_volatile(4, &0xDEAD_BEEFu32).unwrap();
    mapping.write_volatile(8, &[1u8, 2, 3]).unwrap();
    mapping.write_volatile(16, &[7u32; 5]).unwrap();
    // Misaligned scalar accesses work (not single-copy atomic).
    mapping
        .write_volatile(41, &0x1122_3344_5566_7788u64)
        .unwrap();
    assert_eq!(mapping.read_volatile::<u8>(1).unwrap(), 0xA5);
    assert_eq!(mapping.read_volatile::<u16>(2).unwrap(), 0xBEEF);
    assert_eq!(mapping.read_volatile::<u32>(4).unwrap(), 0xDEAD_BEEF);
    assert_eq!(mapping.read_volatile::<[u8; 3]>(8).unwrap(), [1, 2, 3]);
    assert_eq!(mapping.read_plain::<[u32; 5]>(16).unwrap(), [7; 5]);
    assert_eq!(
        mapping.read_plain::<u64>(41).unwrap(),
        0x1122_3344_5566_7788
    );
    let mut bytes = [0u8; 2];
    mapping.read_at(2, &mut bytes).unwrap();
    assert_eq!(u16::from_le_bytes(bytes), 0xBEEF);
    // Typed accesses of the unplaced page fault into errors, for every size.
    let err = memory_error(mapping.read_volatile::<u32>(page()).map(drop));
    assert_eq!(err.offset(), 0);
    let err = memory_error(mapping.write_volatile(page() - 1, &0u16));
    assert!(err.is_write());
    assert!(mapping.read_plain::<[u8; 12]>(page() - 6).is_err());
    assert!(mapping.write_volatile(page() - 6, &[0u8; 12]).is_err());
}

#[test]
fn atomic_slice_views_placed_memory() {
    let mapping = SparseMapping::new(page()).unwrap();
    mapping.alloc(0, page()).unwrap();
    let bytes = mapping.atomic_slice(8, 8);
    bytes[3].store(9, Ordering::Relaxed);
    assert_eq!(mapping.read_plain::<u8>(11).unwrap(), 9);
    assert_eq!(mapping.atomic_slice(page(), 0).len(), 0);
    let result = std::panic::catch_unwind(|| mapping.atomic_slice(page() - 1, 2).len());
    assert!(result.is_err());
}

#[test]
fn concurrent_remapping_while_copying_never_crashes() {
    let size = 64 * page();
    let mapping = Arc::new(SparseMapping::new(size).unwrap());
    mapping.alloc(0, size).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let toggles = Arc::new(AtomicUsize::new(0));
    let remapper = {
        let mapping = mapping.clone();
        let stop = stop.clone();
        let toggles = toggles.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                mapping.unmap(0, size).unwrap();
                mapping.alloc(0, size).unwrap();
                toggles.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let mut buffer = vec![0u8; size];
    let (mut ok, mut failed) = (0u32, 0u32);
    // Copy until the remapper has remapped a few hundred times (and as many copies were made),
    // not for a fixed time: on a loaded machine the remapper may not run at all within a time
    // slice. The minute is only a guard against a hang.
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while (toggles.load(Ordering::Relaxed) < 200 || ok + failed < 200)
        && std::time::Instant::now() < give_up
    {
        let result = if (ok + failed) % 2 == 0 {
            mapping.read_at(0, &mut buffer)
        } else {
            mapping.write_at(0, &buffer)
        };
        match result {
            Ok(()) => ok += 1,
            Err(SparseMappingError::Memory(err)) => {
                assert_eq!(err.fault().signal, libc::SIGSEGV);
                assert!(matches!(err.fault().si_code, SEGV_ACCERR | SEGV_MAPERR));
                failed += 1;
            }
            Err(err) => panic!("unexpected {err:?}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    remapper.join().unwrap();
    assert!(
        toggles.load(Ordering::Relaxed) >= 200,
        "the remapper remapped"
    );
    assert!(ok + failed >= 200, "copies ran: {ok} ok, {failed} failed");
    mapping.write_at(0, &[1, 2, 3]).unwrap();
    let mut back = [0u8; 3];
    mapping.read_at(0, &mut back).unwrap();
    assert_eq!(back, [1, 2, 3]);
}

#[test]
fn new_installs_the_fault_handler() {
    let _mapping = SparseMapping::new(page()).unwrap();
    assert!(matches!(
        trycopy::handler_status(),
        trycopy::HandlerStatus::Installed
    ));
}

#[test]
fn page_size_is_the_os_page_size() {
    // SAFETY: sysconf has no preconditions.
    let expected = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let expected = usize::try_from(expected).unwrap();
    assert_eq!(SparseMapping::page_size(), expected);
}

#[test]
fn advanced_mmap_variants_and_file_mappables() {
    let mapping = SparseMapping::new(4 * page()).unwrap();
    // SAFETY: plain private anonymous read-write memory.
    unsafe {
        mapping
            .mmap_anonymous(
                0,
                page(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
            )
            .unwrap()
    };
    mapping.write_at(0, &[4]).unwrap();
    let memfd = alloc_shared_memory(page(), "advanced").unwrap();
    // SAFETY: a plain shared view.
    unsafe {
        mapping
            .mmap(
                page(),
                page(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                &memfd,
                0,
            )
            .unwrap()
    };
    mapping.write_at(page(), &[8]).unwrap();
    // The shared view was recorded as shmem: decommit punches the hole.
    mapping.decommit(page(), page()).unwrap();
    assert_eq!(memfd_blocks(&memfd), 0);
    // SAFETY: an unaligned offset is rejected before any mapping happens.
    let err = unsafe { mapping.mmap_anonymous(1, page(), libc::PROT_READ, libc::MAP_PRIVATE) };
    assert_invalid_input(err);

    let file = File::from(memfd.try_clone().unwrap());
    let mappable = crate::new_mappable_from_file(&file, true, false).unwrap();
    assert_ne!(mappable.as_raw_fd(), file.as_raw_fd());
    mapping
        .map_file(2 * page(), page(), &mappable, 0, true)
        .unwrap();
    mapping.write_at(2 * page(), &[6]).unwrap();
    mapping
        .map_file(3 * page(), page(), &file, 0, false)
        .unwrap();
    assert_eq!(mapping.read_plain::<u8>(3 * page()).unwrap(), 6);
}

#[test]
fn object_queries_report_size_kind_and_name() {
    let memfd = alloc_shared_memory(3 * page(), "object-queries").unwrap();
    assert_eq!(
        crate::object_size(memfd.as_fd()).unwrap(),
        3 * page() as u64
    );
    assert!(crate::is_regular_file(memfd.as_fd()));
    assert_eq!(crate::object_name(memfd.as_fd()), "memfd:object-queries");
    let null = File::open("/dev/null").unwrap();
    assert!(
        !crate::is_regular_file(null.as_fd()),
        "a device is no regular file"
    );
    assert_eq!(crate::object_name(null.as_fd()), "dev/null");
}

#[test]
fn a_descriptor_opened_read_only_is_not_read_write() {
    let memfd = alloc_shared_memory(page(), "access-mode").unwrap();
    assert!(crate::is_open_read_write(memfd.as_fd()).unwrap());
    let path = format!("/proc/self/fd/{}", memfd.as_raw_fd());
    let read_only = File::open(&path).unwrap();
    assert!(!crate::is_open_read_write(read_only.as_fd()).unwrap());
    let write_only = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    assert!(!crate::is_open_read_write(write_only.as_fd()).unwrap());
}

#[test]
fn punch_hole_zeroes_every_view_and_keeps_the_size() {
    let size = 4 * page();
    let memfd = alloc_shared_memory(size, "punch-hole").unwrap();
    let mapping = SparseMapping::new(size).unwrap();
    mapping.map_file(0, size, &memfd, 0, true).unwrap();
    mapping.fill_at(0, 0x77, size).unwrap();
    crate::punch_hole(memfd.as_fd(), page() as u64, 2 * page() as u64).unwrap();
    let mut data = vec![0u8; size];
    mapping.read_at(0, &mut data).unwrap();
    assert!(data[..page()].iter().all(|&b| b == 0x77));
    assert!(data[page()..3 * page()].iter().all(|&b| b == 0));
    assert!(data[3 * page()..].iter().all(|&b| b == 0x77));
    assert_eq!(crate::object_size(memfd.as_fd()).unwrap(), size as u64);
    let beyond_off_t = crate::punch_hole(memfd.as_fd(), u64::MAX, 1).unwrap_err();
    assert_eq!(beyond_off_t.raw_os_error(), Some(libc::EINVAL));
}

#[test]
fn positioned_io_seek_and_identity_of_an_object() {
    use crate::Seek;
    let size = 8 * page();
    let memfd = alloc_shared_memory(size, "positioned-io").unwrap();
    let fd = memfd.as_fd();
    // A fresh memfd is all hole.
    assert_eq!(crate::seek(fd, 0, Seek::Data).unwrap(), None);
    assert_eq!(crate::seek(fd, 0, Seek::Hole).unwrap(), Some(0));
    crate::write_all_at(fd, b"page three", 3 * page() as u64).unwrap();
    crate::write_all_at(fd, b"page five", 5 * page() as u64).unwrap();
    assert_eq!(
        crate::seek(fd, 0, Seek::Data).unwrap(),
        Some(3 * page() as u64)
    );
    assert_eq!(
        crate::seek(fd, 3 * page() as u64, Seek::Hole).unwrap(),
        Some(4 * page() as u64)
    );
    assert_eq!(
        crate::seek(fd, 4 * page() as u64, Seek::Data).unwrap(),
        Some(5 * page() as u64)
    );
    assert_eq!(
        crate::seek(fd, 6 * page() as u64, Seek::Data).unwrap(),
        None
    );
    let beyond_off_t = crate::seek(fd, u64::MAX, Seek::Data).unwrap_err();
    assert_eq!(beyond_off_t.raw_os_error(), Some(libc::EINVAL));
    let mut back = [0u8; 10];
    crate::read_exact_at(fd, &mut back, 3 * page() as u64).unwrap();
    assert_eq!(&back, b"page three");
    let past_end = crate::read_exact_at(fd, &mut back, size as u64 - 4).unwrap_err();
    assert_eq!(past_end.kind(), io::ErrorKind::UnexpectedEof);
    // The descriptor stays open and usable after the borrowed `File`s are gone.
    assert_eq!(crate::object_size(fd).unwrap(), size as u64);
    // A duplicate has the same identity; another memfd does not.
    let duplicate = mappable_from_fd(fd).unwrap();
    let id = crate::object_id(fd).unwrap();
    assert_eq!(crate::object_id(duplicate.as_fd()).unwrap(), id);
    let other = alloc_shared_memory(page(), "other").unwrap();
    assert_ne!(crate::object_id(other.as_fd()).unwrap(), id);
}

#[test]
fn mappable_from_raw_fd_duplicates_or_reports_ebadf() {
    let memfd = alloc_shared_memory(page(), "raw-fd").unwrap();
    let duplicate = crate::mappable_from_raw_fd(memfd.as_raw_fd()).unwrap();
    assert_ne!(duplicate.as_raw_fd(), memfd.as_raw_fd());
    assert_eq!(crate::object_name(duplicate.as_fd()), "memfd:raw-fd");
    // SAFETY: fcntl(F_GETFD) only reads the descriptor's flags.
    let flags = unsafe { libc::fcntl(duplicate.as_raw_fd(), libc::F_GETFD) };
    assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC, "close-on-exec");
    for bad in [-1, 1 << 30] {
        let error = crate::mappable_from_raw_fd(bad).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EBADF), "fd {bad}");
    }
}

#[test]
fn raw_pointer_copies_check_bounds_and_recover_faults() {
    let mapping = SparseMapping::new(2 * page()).unwrap();
    mapping.alloc(0, page()).unwrap();
    let source = *b"raw copy";
    // SAFETY: `source` is a live local buffer of 8 bytes.
    unsafe { mapping.write_from_ptr(page() - 8, source.as_ptr(), 8) }.unwrap();
    let mut back = [0u8; 8];
    // SAFETY: `back` is a live local buffer of 8 bytes.
    unsafe { mapping.read_to_ptr(page() - 8, back.as_mut_ptr(), 8) }.unwrap();
    assert_eq!(back, source);
    // SAFETY: as above; the access crosses into the unplaced page and faults there.
    let fault = unsafe { mapping.read_to_ptr(page() - 4, back.as_mut_ptr(), 8) }.unwrap_err();
    let SparseMappingError::Memory(memory) = fault else {
        panic!("expected a fault, got {fault:?}");
    };
    assert_eq!(memory.offset(), 4);
    // SAFETY: as above; refused before any byte is read.
    let out = unsafe { mapping.read_to_ptr(2 * page() - 4, back.as_mut_ptr(), 8) }.unwrap_err();
    assert!(matches!(out, SparseMappingError::OutOfBounds));
}

#[test]
fn an_invalid_range_names_offset_length_and_reservation() {
    let mapping = SparseMapping::new(0x4000).unwrap();
    for (offset, len) in [(0x1000, 0x4000), (0x800, 0x1000), (0, 0)] {
        let err = if len == 0 {
            mapping.unmap(offset, len).unwrap_err()
        } else {
            mapping.alloc(offset, len).unwrap_err()
        };
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(
            err.to_string(),
            format!(
                "offset {offset:#x} and length {len:#x} do not name a non-empty page-aligned \
                 range inside the 0x4000-byte reservation: use multiples of 4 KiB that end at \
                 or before 0x4000"
            )
        );
    }
}

#[test]
fn the_original_paths_name_the_same_items() {
    fn map_any(mapping: &crate::unix::SparseMapping, object: impl crate::AsMappableRef) {
        mapping.map_file(0, page(), object, 0, true).unwrap();
    }
    let object: crate::unix::Mappable = crate::unix::alloc_shared_memory(page(), "paths").unwrap();
    let mapping = crate::unix::SparseMapping::new(page()).unwrap();
    let borrowed: crate::unix::MappableRef<'_> = object.as_fd();
    map_any(&mapping, borrowed);
    mapping.write_at(0, b"same").unwrap();
    let mut back = [0u8; 4];
    mapping.read_at(0, &mut back).unwrap();
    assert_eq!(&back, b"same");
}
