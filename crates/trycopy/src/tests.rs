//! Tests of the guarded operations: results on accessible memory (compared with `std::ptr`
//! references), faults on inaccessible, read-only, unmapped and truncated pages, and concurrent
//! remapping. Tests of the handler's installation and forwarding are in `handler/tests.rs`.

// Unsafe code: the tests map, protect and unmap pages and call the guarded routines on them.
#![allow(unsafe_code)]

use super::*;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

const PAGE: usize = 4096;
/// `si_code` values of Linux (`<asm-generic/siginfo.h>`).
const SEGV_MAPERR: i32 = 1;
const SEGV_ACCERR: i32 = 2;
const BUS_ADRERR: i32 = 2;

/// An anonymous private mapping unmapped on drop.
pub(crate) struct Mapping {
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory addressed by raw pointers; tests coordinate access.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `pages` read-write pages.
    pub(crate) fn new(pages: usize) -> Self {
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choice.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                pages * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED, "mmap failed");
        Self {
            base: base.cast(),
            len: pages * PAGE,
        }
    }

    /// Maps `pages` pages at a fixed high address far from the kernel's usual choices, so that
    /// a hole punched with [`unmap_page`](Self::unmap_page) stays unmapped while other tests
    /// map memory concurrently.
    fn new_isolated(pages: usize) -> Self {
        for slot in 0..64usize {
            let hint = (0x3a5a_0000_0000usize + slot * 0x1_0000_0000) as *mut libc::c_void;
            // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
            let base = unsafe {
                libc::mmap(
                    hint,
                    pages * PAGE,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                    -1,
                    0,
                )
            };
            if base == hint {
                return Self {
                    base: base.cast(),
                    len: pages * PAGE,
                };
            }
            if base != libc::MAP_FAILED {
                // An old kernel ignoring NOREPLACE placed it elsewhere.
                // SAFETY: unmapping what we just mapped.
                unsafe { libc::munmap(base, pages * PAGE) };
            }
        }
        panic!("no free isolated address range");
    }

    pub(crate) fn ptr(&self, offset: usize) -> *mut u8 {
        assert!(offset <= self.len);
        self.base.wrapping_add(offset)
    }

    pub(crate) fn protect(&self, page: usize, pages: usize, prot: libc::c_int) {
        // SAFETY: the range lies inside our own mapping.
        let rc = unsafe { libc::mprotect(self.ptr(page * PAGE).cast(), pages * PAGE, prot) };
        assert_eq!(rc, 0, "mprotect failed");
    }

    fn unmap_page(&self, page: usize) {
        // SAFETY: the page lies inside our own mapping; nothing references it any more.
        let rc = unsafe { libc::munmap(self.ptr(page * PAGE).cast(), PAGE) };
        assert_eq!(rc, 0, "munmap failed");
    }

    /// Replaces `pages` pages at `page` with fresh zeroed read-write memory.
    fn remap(&self, page: usize, pages: usize) {
        // SAFETY: MAP_FIXED over a range inside our own mapping.
        let rc = unsafe {
            libc::mmap(
                self.ptr(page * PAGE).cast(),
                pages * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        assert_ne!(rc, libc::MAP_FAILED, "mmap MAP_FIXED failed");
    }

    /// Reads one byte with a plain access (the page must be readable).
    fn byte(&self, offset: usize) -> u8 {
        // SAFETY: offset is inside the mapping and the caller knows the page is readable.
        unsafe { self.ptr(offset).read_volatile() }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping (holes are fine for munmap).
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// A deterministic byte pattern that differs between neighbouring positions and lengths.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| i.to_le_bytes()[0].wrapping_mul(31).wrapping_add(seed) ^ i.to_le_bytes()[1])
        .collect()
}

fn copy_bytes(src: *const u8, dst: *mut u8, len: usize) -> Result<(), MemoryError> {
    initialize_try_copy();
    // SAFETY: every caller passes ranges inside buffers or mappings it owns.
    unsafe { try_copy(src, dst, len) }
}

// ---- results on accessible memory ---------------------------------------------------------

#[test]
fn copy_every_length_and_alignment_matches_reference() {
    initialize_try_copy();
    const GUARD: usize = 64;
    let alignments = [(0, 0), (1, 3), (7, 0), (0, 5), (13, 9), (32, 16)];
    let source = pattern(4096 + 64, 0x11);
    let mut destination = vec![0u8; 4096 + 64 + 2 * GUARD];
    for (src_off, dst_off) in alignments {
        for len in 0..=4096 {
            destination.fill(0xEE);
            let dst = destination[GUARD + dst_off..].as_mut_ptr();
            copy_bytes(source[src_off..].as_ptr(), dst, len).unwrap();
            let copied = &destination[GUARD + dst_off..GUARD + dst_off + len];
            assert_eq!(
                copied,
                &source[src_off..src_off + len],
                "len {len} align {src_off}/{dst_off}"
            );
            assert!(
                destination[..GUARD + dst_off].iter().all(|&b| b == 0xEE),
                "underrun {len}"
            );
            assert!(
                destination[GUARD + dst_off + len..]
                    .iter()
                    .all(|&b| b == 0xEE),
                "overrun {len}"
            );
        }
    }
}

#[test]
fn copy_lengths_up_to_8000_cross_the_string_threshold() {
    let source = pattern(8000 + 3, 0x5A);
    let mut destination = vec![0u8; 8000 + 8];
    for len in 0..8000 {
        destination.fill(0);
        copy_bytes(source[3..].as_ptr(), destination[1..].as_mut_ptr(), len).unwrap();
        assert_eq!(&destination[1..1 + len], &source[3..3 + len], "len {len}");
        assert_eq!(destination[1 + len], 0, "overrun at len {len}");
        assert_eq!(destination[0], 0);
    }
}

#[test]
fn large_copies_match_reference() {
    for len in [64 * 1024, (1 << 20) + 3, 3 << 20] {
        let source = pattern(len + 1, len.to_le_bytes()[0]);
        let mut destination = vec![0u8; len + 2];
        copy_bytes(source[1..].as_ptr(), destination[1..].as_mut_ptr(), len).unwrap();
        assert!(destination[1..=len] == source[1..=len], "len {len}");
        assert_eq!((destination[0], destination[len + 1]), (0, 0));
    }
}

#[test]
fn overlapping_moves_match_memmove() {
    // Overlapping moves, plus larger lengths on both strategies and both directions.
    let shifts: [isize; 12] = [-257, -33, -32, -8, -1, 1, 2, 7, 8, 32, 33, 1000];
    let lengths = [
        0usize, 1, 7, 8, 15, 31, 32, 33, 255, 256, 1023, 1024, 1025, 4000, 70000,
    ];
    let base = pattern(80000, 0x3C);
    for shift in shifts {
        for len in lengths {
            let mut ours = base.clone();
            let mut reference = base.clone();
            let src = 4096usize;
            let dst = src.checked_add_signed(shift).unwrap();
            copy_bytes(ours[src..].as_ptr(), ours[dst..].as_mut_ptr(), len).unwrap();
            // SAFETY: both ranges lie inside `reference`.
            unsafe {
                ptr::copy(
                    reference[src..].as_ptr(),
                    reference[dst..].as_mut_ptr(),
                    len,
                );
            }
            assert!(ours == reference, "shift {shift} len {len}");
        }
    }
}

#[test]
fn overlapping_one_byte_shifts_over_256_bytes() {
    for shift in [-1isize, 1] {
        for len in 0..=256usize {
            let mut ours = pattern(300, 9);
            let mut reference = ours.clone();
            let dst = 20usize.checked_add_signed(shift).unwrap();
            copy_bytes(ours[20..].as_ptr(), ours[dst..].as_mut_ptr(), len).unwrap();
            reference.copy_within(20..20 + len, dst);
            assert_eq!(ours, reference, "shift {shift} len {len}");
        }
    }
}

#[test]
fn copy_of_typed_elements_counts_elements() {
    let source: Vec<u64> = (0..100).map(|i| i * 0x0101_0101_0101).collect();
    let mut destination = vec![0u64; 101];
    // SAFETY: both buffers hold at least 100 u64.
    unsafe { try_copy(source.as_ptr(), destination.as_mut_ptr(), 100) }.unwrap();
    assert_eq!(&destination[..100], &source[..]);
    assert_eq!(destination[100], 0);
}

#[test]
fn fill_every_length_and_alignment_matches_reference() {
    initialize_try_copy();
    const GUARD: usize = 40;
    let mut buffer = vec![0u8; 4096 + 16 + 2 * GUARD];
    for byte in [0x00u8, 0x5F, 0xFF] {
        for align in [0usize, 1, 3, 8, 13] {
            for len in 0..=4096 {
                buffer.fill(0xA5);
                let dst = buffer[GUARD + align..].as_mut_ptr();
                // SAFETY: the range lies inside `buffer`.
                unsafe { try_write_bytes(dst, byte, len) }.unwrap();
                let start = GUARD + align;
                assert!(
                    buffer[start..start + len].iter().all(|&b| b == byte),
                    "len {len}"
                );
                assert!(buffer[..start].iter().all(|&b| b == 0xA5), "underrun {len}");
                assert!(
                    buffer[start + len..].iter().all(|&b| b == 0xA5),
                    "overrun {len}"
                );
            }
        }
    }
}

#[test]
fn fill_spec_lengths_and_large_fill() {
    // Lengths on both sides of every block size, plus a large fill and a typed count.
    for byte in [0x00u8, 0x5F] {
        for len in [
            0usize,
            1,
            15,
            16,
            31,
            32,
            63,
            64,
            127,
            128,
            255,
            256,
            528,
            1942,
            4097,
            1 << 20,
        ] {
            let mut buffer = vec![0xC3u8; len + 2];
            // SAFETY: the range lies inside `buffer`.
            unsafe { try_write_bytes(buffer[1..].as_mut_ptr(), byte, len) }.unwrap();
            assert!(buffer[1..=len].iter().all(|&b| b == byte), "len {len}");
            assert_eq!((buffer[0], buffer[len + 1]), (0xC3, 0xC3));
        }
    }
    let mut words = [0u32; 5];
    // SAFETY: 4 elements of a 5-element array.
    unsafe { try_write_bytes(words.as_mut_ptr(), 0x7F, 4) }.unwrap();
    assert_eq!(
        words,
        [0x7F7F_7F7F, 0x7F7F_7F7F, 0x7F7F_7F7F, 0x7F7F_7F7F, 0]
    );
}

#[test]
fn zero_length_operations_touch_no_memory() {
    // Null and garbage pointers succeed when nothing is to be moved.
    initialize_try_copy();
    let garbage = 0xdead_0000_beefusize as *mut u8;
    // SAFETY: zero-length operations never dereference.
    unsafe {
        try_copy(ptr::null::<u8>(), garbage, 0).unwrap();
        try_copy(garbage.cast_const(), ptr::null_mut::<u8>(), 0).unwrap();
        try_copy(garbage.cast_const().cast::<u64>(), 0x100 as *mut u64, 0).unwrap();
        try_write_bytes(garbage, 0x5A, 0).unwrap();
        try_write_bytes(ptr::null_mut::<u32>(), 0, 0).unwrap();
        // Zero-sized elements: any count is zero bytes.
        try_copy(ptr::null::<()>(), garbage.cast::<()>(), 1000).unwrap();
        try_write_bytes(garbage.cast::<()>(), 1, usize::MAX).unwrap();
        try_read_volatile(garbage.cast_const().cast::<()>()).unwrap();
        try_write_volatile(garbage.cast::<()>(), &()).unwrap();
    }
}

#[test]
fn scalar_reads_and_writes_round_trip() {
    initialize_try_copy();
    let mapping = Mapping::new(1);
    // SAFETY: every access lies inside the readable, writable mapping.
    unsafe {
        try_write_volatile(mapping.ptr(0x10).cast::<u64>(), &0x1122_3344_5566_7788).unwrap();
        assert_eq!(
            try_read_volatile(mapping.ptr(0x10).cast::<u64>()),
            Ok(0x1122_3344_5566_7788)
        );
        assert_eq!(
            try_read_volatile(mapping.ptr(0x10).cast::<u32>()),
            Ok(0x5566_7788)
        );
        assert_eq!(
            try_read_volatile(mapping.ptr(0x12).cast::<u16>()),
            Ok(0x5566)
        );
        assert_eq!(try_read_volatile(mapping.ptr(0x17)), Ok(0x11u8));
        // Misaligned scalars are allowed (not single-copy atomic).
        try_write_volatile(mapping.ptr(0x21).cast::<u32>(), &0xCAFE_F00D).unwrap();
        assert_eq!(
            try_read_volatile(mapping.ptr(0x21).cast::<u32>()),
            Ok(0xCAFE_F00D)
        );
        try_write_volatile(mapping.ptr(0x31).cast::<u16>(), &0xBEEF).unwrap();
        assert_eq!(mapping.byte(0x31), 0xEF);
        assert_eq!(mapping.byte(0x32), 0xBE);
        try_write_volatile(mapping.ptr(0x40), &0x9Au8).unwrap();
        assert_eq!(mapping.byte(0x40), 0x9A);
        try_write_volatile(mapping.ptr(0x48).cast::<i64>(), &-2).unwrap();
        assert_eq!(
            try_read_volatile(mapping.ptr(0x48).cast::<u64>()),
            Ok(u64::MAX - 1)
        );
        // Other sizes go through the guarded byte copy.
        try_write_volatile(mapping.ptr(0x51).cast::<[u8; 3]>(), &[1, 2, 3]).unwrap();
        assert_eq!(
            try_read_volatile(mapping.ptr(0x51).cast::<[u8; 3]>()),
            Ok([1, 2, 3])
        );
        let wide = [0x0102_0304_0506_0708u64, 0x090A_0B0C_0D0E_0F10];
        try_write_volatile(mapping.ptr(0x60).cast::<[u64; 2]>(), &wide).unwrap();
        assert_eq!(
            try_read_volatile(mapping.ptr(0x60).cast::<[u64; 2]>()),
            Ok(wide)
        );
    }
}

#[test]
fn compare_exchange_success_and_failure_for_every_size() {
    initialize_try_copy();
    let mapping = Mapping::new(1);
    // SAFETY: every target is naturally aligned inside the writable mapping.
    unsafe {
        let p8 = mapping.ptr(0x1);
        assert_eq!(try_compare_exchange(p8, 0u8, 0xFF), Ok(Ok(0xFF)));
        assert_eq!(try_compare_exchange(p8, 0u8, 2), Ok(Err(0xFF)));
        assert_eq!(mapping.byte(0x1), 0xFF);
        assert_eq!(try_compare_exchange(p8, 0xFFu8, 3), Ok(Ok(3)));

        let p16 = mapping.ptr(0x10).cast::<u16>();
        assert_eq!(try_compare_exchange(p16, 0u16, 0xABCD), Ok(Ok(0xABCD)));
        assert_eq!(try_compare_exchange(p16, 0xABCCu16, 1), Ok(Err(0xABCD)));
        assert_eq!(try_read_volatile(p16), Ok(0xABCD));

        let p32 = mapping.ptr(0x20).cast::<u32>();
        assert_eq!(
            try_compare_exchange(p32, 0u32, 0xDEAD_BEEF),
            Ok(Ok(0xDEAD_BEEF))
        );
        assert_eq!(try_compare_exchange(p32, 0u32, 1), Ok(Err(0xDEAD_BEEF)));
        assert_eq!(try_read_volatile(p32), Ok(0xDEAD_BEEF));

        // The compare-exchange sequence on a u64 at offset 8.
        let p64 = mapping.ptr(8).cast::<u64>();
        assert_eq!(try_compare_exchange(p64, 0u64, 1), Ok(Ok(1)));
        assert_eq!(try_compare_exchange(p64, 0u64, 2), Ok(Err(1)));
        assert_eq!(try_read_volatile(p64), Ok(1));
        assert_eq!(try_compare_exchange(p64, 1u64, 2), Ok(Ok(2)));
        assert_eq!(try_read_volatile(p64), Ok(2));

        let signed = mapping.ptr(0x30).cast::<i32>();
        assert_eq!(try_compare_exchange(signed, 0i32, -5), Ok(Ok(-5)));
        assert_eq!(try_compare_exchange(signed, 5i32, 6), Ok(Err(-5)));
        let narrow = mapping.ptr(0x38).cast::<i8>();
        assert_eq!(try_compare_exchange(narrow, 0i8, -1), Ok(Ok(-1)));
        assert_eq!(try_compare_exchange(narrow, 0i8, 1), Ok(Err(-1)));
    }
}

#[test]
fn compare_exchange_is_atomic_across_threads() {
    // Scaled down: concurrent CAS increments never lose an update.
    initialize_try_copy();
    let mapping = Arc::new(Mapping::new(1));
    let threads = 4;
    let increments = 20_000u64;
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let mapping = Arc::clone(&mapping);
            std::thread::spawn(move || {
                let counter = mapping.ptr(0x40).cast::<u64>();
                for _ in 0..increments {
                    // SAFETY: aligned u64 inside the writable mapping, kept alive by the Arc.
                    let mut observed = unsafe { try_read_volatile(counter) }.unwrap();
                    loop {
                        // SAFETY: as above.
                        match unsafe { try_compare_exchange(counter, observed, observed + 1) } {
                            Ok(Ok(_)) => break,
                            Ok(Err(now)) => observed = now,
                            Err(err) => panic!("unexpected fault {err}"),
                        }
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    // SAFETY: as above.
    let total = unsafe { try_read_volatile(mapping.ptr(0x40).cast::<u64>()) };
    assert_eq!(total, Ok(threads * increments));
}

// ---- faults -----------------------------------------------------------------------------

fn assert_fault(err: &MemoryError, offset: usize, is_write: bool, signal: i32, si_code: i32) {
    assert_eq!(
        (
            err.offset(),
            err.is_write(),
            err.fault().signal,
            err.fault().si_code
        ),
        (offset, is_write, signal, si_code),
        "{err:?}"
    );
}

#[test]
fn read_of_inaccessible_page_reports_read_fault_at_offset() {
    // Reading a PROT_NONE page → SIGSEGV, SEGV_ACCERR, trap 14, read, offset 0.
    let mapping = Mapping::new(2);
    mapping.protect(0, 2, libc::PROT_NONE);
    for len in [1usize, 16, 100, 1024, 4096, 8192] {
        let mut destination = vec![0u8; len];
        let err = copy_bytes(mapping.ptr(0), destination.as_mut_ptr(), len).unwrap_err();
        assert_fault(&err, 0, false, libc::SIGSEGV, SEGV_ACCERR);
        assert_eq!(err.fault().trapno, 14);
        assert_eq!(err.address(), mapping.ptr(0) as usize);
        assert_eq!(err.to_string(), "failed to read memory");
    }
}

#[test]
fn read_straddling_into_inaccessible_page_reports_offset_of_page() {
    // Page 0 accessible, 16-byte read at P - 8 → offset 8; aligned reads on page 0 work.
    let mapping = Mapping::new(2);
    mapping.protect(1, 1, libc::PROT_NONE);
    let mut destination = [0u8; 16];
    let err = copy_bytes(mapping.ptr(PAGE - 8), destination.as_mut_ptr(), 16).unwrap_err();
    assert_fault(&err, 8, false, libc::SIGSEGV, SEGV_ACCERR);
    // SAFETY: inside the accessible page.
    unsafe {
        try_write_volatile(mapping.ptr(PAGE - 8).cast::<u64>(), &77).unwrap();
        assert_eq!(
            try_read_volatile(mapping.ptr(PAGE - 8).cast::<u64>()),
            Ok(77)
        );
        // A scalar straddling the boundary faults at the first byte of the inaccessible page.
        let err = try_read_volatile(mapping.ptr(PAGE - 2).cast::<u32>()).unwrap_err();
        assert_fault(&err, 2, false, libc::SIGSEGV, SEGV_ACCERR);
    }
}

#[test]
fn write_to_read_only_page_reports_write_fault() {
    // Writes into a read-only page fail with the write direction; reads work.
    let mapping = Mapping::new(2);
    // SAFETY: writable before protection.
    unsafe { ptr::write_bytes(mapping.ptr(0), 0x42, 2 * PAGE) };
    mapping.protect(1, 1, libc::PROT_READ);
    let source = vec![0x17u8; 2 * PAGE];
    for (start, len) in [
        (0usize, 2 * PAGE),
        (PAGE - 100, 200),
        (PAGE - 3, 5),
        (PAGE, 1),
    ] {
        let err = copy_bytes(source.as_ptr(), mapping.ptr(start), len).unwrap_err();
        assert_fault(&err, PAGE - start, true, libc::SIGSEGV, SEGV_ACCERR);
        assert_eq!(err.fault().trapno, 14);
        assert_eq!(err.to_string(), "failed to write memory");
        // SAFETY: fill into the same range.
        let err = unsafe { try_write_bytes(mapping.ptr(start), 0, len) }.unwrap_err();
        assert_fault(&err, PAGE - start, true, libc::SIGSEGV, SEGV_ACCERR);
    }
    // The read-only page is intact and readable.
    let mut destination = vec![0u8; PAGE];
    copy_bytes(mapping.ptr(PAGE), destination.as_mut_ptr(), PAGE).unwrap();
    assert!(destination.iter().all(|&b| b == 0x42));
    // SAFETY: scalar store into the read-only page.
    let err = unsafe { try_write_volatile(mapping.ptr(PAGE + 8).cast::<u64>(), &1) }.unwrap_err();
    assert_fault(&err, 0, true, libc::SIGSEGV, SEGV_ACCERR);
    assert_eq!(mapping.byte(PAGE + 8), 0x42);
}

#[test]
fn direction_attribution_uses_the_faulting_buffer() {
    // Inaccessible source → read relative to the source; read-only destination → write
    // relative to the destination.
    let source_pages = Mapping::new(1);
    source_pages.protect(0, 1, libc::PROT_NONE);
    let mut valid = vec![0u8; 64];
    let err = copy_bytes(source_pages.ptr(0), valid.as_mut_ptr(), 64).unwrap_err();
    assert_fault(&err, 0, false, libc::SIGSEGV, SEGV_ACCERR);
    let destination_pages = Mapping::new(1);
    destination_pages.protect(0, 1, libc::PROT_READ);
    let err = copy_bytes(valid.as_ptr(), destination_pages.ptr(32), 32).unwrap_err();
    assert_fault(&err, 0, true, libc::SIGSEGV, SEGV_ACCERR);
}

#[test]
fn copy_into_unmapped_page_stops_there_with_prefix_copied() {
    // A copy crossing from a mapped page into an unmapped one: SEGV_MAPERR at the right
    // offset, with the mapped prefix already copied up to the faulting block (at most 128
    // bytes plus a 32-byte alignment step before the fault; exact for `rep movsb`).
    let mapping = Mapping::new_isolated(2);
    let source = pattern(80 * 1024, 0x61);
    // SAFETY: the first page is writable.
    unsafe { ptr::copy_nonoverlapping(source.as_ptr(), mapping.ptr(0), PAGE) };
    mapping.unmap_page(1);
    let cases = [
        (PAGE - 1000, 70_000usize),
        (PAGE - 1000, 3000),
        (PAGE - 700, 900),
        (PAGE - 5, 6),
    ];
    for (start, len) in cases {
        let mut destination = vec![0u8; len];
        let err = copy_bytes(mapping.ptr(start), destination.as_mut_ptr(), len).unwrap_err();
        let mapped = PAGE - start;
        assert_fault(&err, mapped, false, libc::SIGSEGV, SEGV_MAPERR);
        let guaranteed = mapped.saturating_sub(160);
        assert_eq!(
            &destination[..guaranteed],
            &source[start..start + guaranteed],
            "len {len}"
        );
        // Writing towards the hole: the prefix lands in the mapped page (which then holds the
        // pattern again for the next round).
        // SAFETY: the range up to the hole is mapped and writable.
        unsafe { ptr::write_bytes(mapping.ptr(start), 0, mapped) };
        let err = copy_bytes(source[start..].as_ptr(), mapping.ptr(start), len).unwrap_err();
        assert_fault(&err, mapped, true, libc::SIGSEGV, SEGV_MAPERR);
        for offset in 0..guaranteed {
            assert_eq!(
                mapping.byte(start + offset),
                source[start + offset],
                "len {len}"
            );
        }
        // SAFETY: restore the whole mapped page.
        unsafe { ptr::copy_nonoverlapping(source.as_ptr(), mapping.ptr(0), PAGE) };
    }
}

#[test]
fn every_forward_copy_strategy_copies_and_stops_at_a_hole() {
    // Which strategy `try_copy` uses depends on the CPU (AVX, ERMS): each one that this CPU can
    // run is checked directly, for lengths around the thresholds and every small misalignment,
    // and with its source running into an unmapped page.
    initialize_try_copy();
    let source = pattern(70_000, 0x3c);
    let mapping = Mapping::new_isolated(3);
    // SAFETY: the first two pages are writable.
    unsafe { ptr::copy_nonoverlapping(source.as_ptr(), mapping.ptr(0), 2 * PAGE) };
    mapping.unmap_page(2);
    for (name, strategy) in x86_64::forward_copy_strategies() {
        for len in [257, 1000, 1023, 1024, 1025, 4096, 4097, 65_536 + 13] {
            for (src_shift, dst_shift) in [(0, 0), (1, 0), (0, 3), (5, 7), (31, 1)] {
                let mut destination = vec![0u8; len + 8];
                // SAFETY: both ranges lie inside their buffers and do not overlap.
                let result = unsafe {
                    strategy(
                        destination.as_mut_ptr().add(dst_shift),
                        source.as_ptr().add(src_shift),
                        len,
                    )
                };
                assert!(result.is_ok(), "{name} len {len}");
                assert_eq!(
                    &destination[dst_shift..dst_shift + len],
                    &source[src_shift..src_shift + len],
                    "{name} len {len} shifts {src_shift}/{dst_shift}"
                );
                assert!(destination[..dst_shift].iter().all(|&b| b == 0), "{name}");
                assert!(
                    destination[dst_shift + len..].iter().all(|&b| b == 0),
                    "{name}"
                );
            }
        }
        for start in [PAGE + 1, 2 * PAGE - 1500] {
            let len = 5000;
            let mut destination = vec![0u8; len];
            // SAFETY: the source runs from mapped pages into the unmapped third page, which the
            // strategy reports; the destination is a buffer of `len` bytes.
            let fault = unsafe { strategy(destination.as_mut_ptr(), mapping.ptr(start), len) }
                .expect_err(name);
            assert_eq!(fault.address, mapping.ptr(2 * PAGE) as usize, "{name}");
            assert_eq!(
                (fault.signal, fault.si_code),
                (libc::SIGSEGV, SEGV_MAPERR),
                "{name}"
            );
            let mapped = 2 * PAGE - start;
            let guaranteed = mapped.saturating_sub(160);
            assert_eq!(
                &destination[..guaranteed],
                &source[start..start + guaranteed],
                "{name} start {start:#x}"
            );
        }
    }
}

#[test]
fn copies_and_fills_running_past_the_end_of_the_address_space_fail_without_panicking() {
    // A destination in the last bytes of the address space (non-canonical, so a general
    // protection fault with no address): every inline length and the long paths report a write
    // failure; none panics on the address arithmetic.
    initialize_try_copy();
    let source = [0x11u8; 300];
    for len in [1usize, 16, 64, 128, 129, 159, 160, 200, 256, 300] {
        for back in [len / 2, 10] {
            let dst = (usize::MAX - back) as *mut u8;
            // SAFETY: the address is inaccessible; the faults are recovered.
            let fill =
                unsafe { try_write_bytes(dst, 0x6B, std::hint::black_box(len)) }.unwrap_err();
            assert!(fill.is_write(), "fill len {len} back {back}: {fill:?}");
            // SAFETY: as above; the source is a host buffer of at least `len` bytes.
            let copy =
                unsafe { try_copy(source.as_ptr(), dst, std::hint::black_box(len)) }.unwrap_err();
            assert!(copy.is_write(), "copy len {len} back {back}: {copy:?}");
        }
    }
    // SAFETY: as above, with constant lengths (the straight-line sites).
    let err = unsafe { try_write_bytes((usize::MAX - 100) as *mut u8, 0x6B, 256) }.unwrap_err();
    assert!(err.is_write(), "{err:?}");
}

#[test]
fn primitives_at_address_0x100_fail_and_leave_values_untouched() {
    // Read, write and CAS of every size at 0x100 fail; the fault address is 0x100.
    initialize_try_copy();
    let bad = 0x100usize;
    macro_rules! check {
        ($ty:ty) => {{
            // SAFETY: the address is unmapped; the faults are recovered.
            unsafe {
                let err = try_read_volatile(bad as *const $ty).unwrap_err();
                assert_eq!(
                    (err.address(), err.offset(), err.is_write()),
                    (bad, 0, false)
                );
                assert_eq!(err.fault().si_code, SEGV_MAPERR);
                let value: $ty = 0x5A;
                let err = try_write_volatile(bad as *mut $ty, &value).unwrap_err();
                assert_eq!(
                    (err.address(), err.offset(), err.is_write()),
                    (bad, 0, true)
                );
                assert_eq!(value, 0x5A);
                let err = try_compare_exchange(bad as *mut $ty, 0, 1).unwrap_err();
                assert_eq!(
                    (err.address(), err.offset(), err.is_write()),
                    (bad, 0, true)
                );
                let mut host: $ty = 0x33;
                let err = try_copy(bad as *const $ty, &mut host, 1).unwrap_err();
                assert_eq!((err.address(), err.is_write()), (bad, false));
                assert_eq!(host, 0x33);
            }
        }};
    }
    check!(u8);
    check!(u16);
    check!(u32);
    check!(u64);
}

#[test]
fn non_canonical_address_reports_no_address() {
    // A general-protection fault carries no fault address: offset 0, direction of the
    // operation, trap 13.
    initialize_try_copy();
    let non_canonical = 0x8000_0000_0000_0000usize;
    let mut host = [0u8; 8];
    // SAFETY: the accesses fault and are recovered.
    unsafe {
        let err = try_copy(non_canonical as *const u8, host.as_mut_ptr(), 8).unwrap_err();
        assert_eq!((err.address(), err.offset(), err.is_write()), (0, 0, false));
        assert_eq!(
            (err.fault().signal, err.fault().trapno),
            (libc::SIGSEGV, 13)
        );
        assert!(err.fault().si_code > 0);
        let err = try_write_bytes(non_canonical as *mut u8, 0, 8).unwrap_err();
        assert_eq!((err.address(), err.offset(), err.is_write()), (0, 0, true));
    }
}

#[test]
fn compare_exchange_on_read_only_page_faults_even_without_match() {
    // The locked instruction always writes, so a read-only page faults.
    initialize_try_copy();
    let mapping = Mapping::new(1);
    // SAFETY: writable before protection.
    unsafe { mapping.ptr(8).cast::<u64>().write(7) };
    mapping.protect(0, 1, libc::PROT_READ);
    // SAFETY: aligned targets in the read-only page; faults are recovered.
    unsafe {
        for expected in [7u64, 8] {
            let err = try_compare_exchange(mapping.ptr(8).cast::<u64>(), expected, 9).unwrap_err();
            assert_fault(&err, 0, true, libc::SIGSEGV, SEGV_ACCERR);
        }
        let err = try_compare_exchange(mapping.ptr(1), 0u8, 1).unwrap_err();
        assert_fault(&err, 0, true, libc::SIGSEGV, SEGV_ACCERR);
        let err = try_compare_exchange(mapping.ptr(2).cast::<u16>(), 1u16, 1).unwrap_err();
        assert_fault(&err, 0, true, libc::SIGSEGV, SEGV_ACCERR);
        let err = try_compare_exchange(mapping.ptr(4).cast::<u32>(), 0u32, 1).unwrap_err();
        assert_fault(&err, 0, true, libc::SIGSEGV, SEGV_ACCERR);
        assert_eq!(try_read_volatile(mapping.ptr(8).cast::<u64>()), Ok(7));
    }
    mapping.protect(0, 1, libc::PROT_NONE);
    // SAFETY: as above.
    let err = unsafe { try_compare_exchange(mapping.ptr(16).cast::<u64>(), 0u64, 1) }.unwrap_err();
    assert_fault(&err, 0, true, libc::SIGSEGV, SEGV_ACCERR);
}

/// Creates a memfd of `size` bytes.
fn memfd(size: usize) -> libc::c_int {
    // SAFETY: a plain system call with a NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"trycopy-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create failed");
    let size = libc::off_t::try_from(size).unwrap();
    // SAFETY: `fd` is ours.
    assert_eq!(unsafe { libc::ftruncate(fd, size) }, 0);
    fd
}

#[test]
fn file_view_beyond_end_of_file_reports_sigbus() {
    // Memfd of one page mapped over two; page 1 raises SIGBUS/BUS_ADRERR.
    initialize_try_copy();
    let fd = memfd(PAGE);
    // SAFETY: a fresh shared mapping of our memfd.
    let base = unsafe {
        libc::mmap(
            ptr::null_mut(),
            2 * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED);
    let base = base.cast::<u8>();
    let mut destination = vec![0u8; 2 * PAGE];
    // SAFETY: inside the two-page view; faults are recovered.
    unsafe {
        try_write_bytes(base, 0x3E, PAGE).unwrap();
        let err = try_copy(base, destination.as_mut_ptr(), 2 * PAGE).unwrap_err();
        assert_fault(&err, PAGE, false, libc::SIGBUS, BUS_ADRERR);
        // Complete up to the faulting block.
        assert!(destination[..PAGE - 160].iter().all(|&b| b == 0x3E));
        let err = try_write_bytes(base.add(PAGE / 2), 1, PAGE).unwrap_err();
        assert_fault(&err, PAGE / 2, true, libc::SIGBUS, BUS_ADRERR);
        let err = try_read_volatile(base.add(PAGE + 8).cast::<u64>()).unwrap_err();
        assert_fault(&err, 0, false, libc::SIGBUS, BUS_ADRERR);
        assert_eq!(err.to_string(), "failed to read memory");
        libc::munmap(base.cast(), 2 * PAGE);
        libc::close(fd);
    }
}

/// Reads RFLAGS.
fn rflags() -> u64 {
    let flags: u64;
    // SAFETY: pushes and pops one word; no other effect.
    unsafe { std::arch::asm!("pushfq", "pop {}", out(reg) flags) };
    flags
}

#[test]
fn failed_backward_copy_leaves_direction_flag_clear() {
    // Backward overlapping copy whose source ends in an inaccessible page fails; DF is
    // clear afterwards and a libc memcpy of 64 KiB on this thread is correct.
    let mapping = Mapping::new(2);
    mapping.protect(1, 1, libc::PROT_NONE);
    // Destination 40 bytes above the source: an overlapping backward copy, whose first access
    // is the source's last byte, in the inaccessible page.
    let source = mapping.ptr(PAGE - 100);
    let destination = mapping.ptr(PAGE - 60);
    let err = copy_bytes(source, destination, 200).unwrap_err();
    assert!(err.fault().signal == libc::SIGSEGV && err.fault().si_code == SEGV_ACCERR);
    assert_eq!(rflags() & (1 << 10), 0, "direction flag left set");
    let big_source = pattern(64 * 1024, 0x77);
    let mut big_destination = vec![0u8; 64 * 1024];
    // SAFETY: libc memcpy between two owned, disjoint buffers of 64 KiB.
    unsafe {
        libc::memcpy(
            big_destination.as_mut_ptr().cast(),
            big_source.as_ptr().cast(),
            64 * 1024,
        );
    }
    assert!(big_destination == big_source);
}

#[test]
fn concurrent_remapping_during_copies_only_yields_ok_or_memory_error() {
    // Scaled down: one thread toggles protection/unmaps the range while others copy.
    initialize_try_copy();
    const PAGES: usize = 64;
    let mapping = Arc::new(Mapping::new(PAGES));
    let stop = Arc::new(AtomicBool::new(false));
    let faults = Arc::new(AtomicUsize::new(0));
    let successes = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..2)
        .map(|worker| {
            let (mapping, stop) = (Arc::clone(&mapping), Arc::clone(&stop));
            let (faults, successes) = (Arc::clone(&faults), Arc::clone(&successes));
            std::thread::spawn(move || {
                let mut buffer = vec![u8::try_from(worker).unwrap(); PAGES * PAGE];
                let mut round = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let len = [PAGES * PAGE, 3 * PAGE + 17, 512, 8][round % 4];
                    // SAFETY: ranges inside the reservation (kept alive by the Arc) and the
                    // owned buffer; the reservation's pages may vanish, which is recovered.
                    let result = unsafe {
                        if round & 1 == 0 {
                            try_copy(mapping.ptr(0).cast_const(), buffer.as_mut_ptr(), len)
                        } else {
                            try_copy(buffer.as_ptr(), mapping.ptr(0), len)
                        }
                    };
                    match result {
                        Ok(()) => successes.fetch_add(1, Ordering::Relaxed),
                        Err(err) => {
                            assert!(err.offset() < len);
                            assert!(matches!(err.fault().signal, libc::SIGSEGV | libc::SIGBUS));
                            faults.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    round += 1;
                }
            })
        })
        .collect();
    // Churn until both outcomes were seen (and at least 300 changes made), not for a fixed
    // time: on a loaded machine the copying threads may not run at all within a time slice, and
    // the test failed with "no fault was provoked". The minute is only a guard against a hang.
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut step = 0usize;
    while (step < 300
        || faults.load(Ordering::Relaxed) == 0
        || successes.load(Ordering::Relaxed) == 0)
        && std::time::Instant::now() < give_up
    {
        match step % 3 {
            0 => mapping.protect(0, PAGES, libc::PROT_NONE),
            1 => mapping.protect(0, PAGES, libc::PROT_READ),
            _ => mapping.remap(0, PAGES),
        }
        step += 1;
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().unwrap();
    }
    mapping.remap(0, PAGES);
    let data = pattern(PAGES * PAGE, 3);
    let mut back = vec![0u8; PAGES * PAGE];
    copy_bytes(data.as_ptr(), mapping.ptr(0), data.len()).unwrap();
    copy_bytes(mapping.ptr(0), back.as_mut_ptr(), back.len()).unwrap();
    assert!(back == data);
    assert!(faults.load(Ordering::Relaxed) > 0, "no fault was provoked");
    assert!(successes.load(Ordering::Relaxed) > 0, "no copy succeeded");
}

#[test]
fn fault_reports_are_independent_per_thread() {
    // Faults on several threads at once each get their own record (no shared cell).
    initialize_try_copy();
    let mapping = Arc::new(Mapping::new(8));
    mapping.protect(0, 8, libc::PROT_NONE);
    let handles: Vec<_> = (0..4)
        .map(|thread| {
            let mapping = Arc::clone(&mapping);
            std::thread::spawn(move || {
                for round in 0..2000usize {
                    let offset = (thread * 2 + round % 2) * PAGE + round % 64;
                    let mut host = [0u8; 8];
                    // SAFETY: inaccessible range inside the mapping; faults are recovered.
                    let err =
                        unsafe { try_copy(mapping.ptr(offset), host.as_mut_ptr(), 8) }.unwrap_err();
                    assert_eq!(err.address(), mapping.ptr(offset) as usize);
                    assert_eq!(err.offset(), 0);
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
}

// ---- inlined guarded sites ----------------------------------------------------------------

/// Checks that a copy and a fill of `len` bytes straddling into an inaccessible page (page 1
/// of `mapping`), in both directions, fail at the page boundary; `copy`/`fill` are the
/// operations under test (a constant-length instantiation or the dynamic one).
fn check_site_faults(
    mapping: &Mapping,
    len: usize,
    copy: &dyn Fn(*const u8, *mut u8) -> Result<(), MemoryError>,
    fill: &dyn Fn(*mut u8) -> Result<(), MemoryError>,
) {
    let mut host = vec![0u8; len];
    // Fully inside the inaccessible page, and straddling into it at every split point.
    for before in [0usize, 1, len / 2, len - 1]
        .into_iter()
        .filter(|&b| b < len)
    {
        let start = mapping.ptr(PAGE - before);
        let err = copy(start, host.as_mut_ptr()).unwrap_err();
        assert_fault(&err, before, false, libc::SIGSEGV, SEGV_ACCERR);
        let err = copy(host.as_ptr(), start).unwrap_err();
        assert_fault(&err, before, true, libc::SIGSEGV, SEGV_ACCERR);
        let err = fill(start).unwrap_err();
        assert_fault(&err, before, true, libc::SIGSEGV, SEGV_ACCERR);
    }
}

#[test]
fn every_inline_copy_and_fill_length_recovers_faults() {
    // Each inline length (1..=64, with a run-time length) is its own sequence of guarded
    // instructions: every one must be recovered, at the exact page boundary.
    initialize_try_copy();
    let mapping = Mapping::new(2);
    mapping.protect(1, 1, libc::PROT_NONE);
    for len in 1..=x86_64::INLINE_MAX {
        let len = std::hint::black_box(len);
        check_site_faults(
            &mapping,
            len,
            // SAFETY: ranges in our mapping or the host buffer; faults are recovered.
            &|src, dst| unsafe { try_copy(src, dst, len) },
            // SAFETY: as above.
            &|dst| unsafe { try_write_bytes(dst, 0x5C, len) },
        );
    }
}

#[test]
fn inline_copies_and_fills_of_constant_length_recover_faults() {
    // A constant length selects one straight-line site at the call site (a different site
    // from the run-time-length one): each arm of the selection is instantiated here.
    initialize_try_copy();
    let mapping = Mapping::new(2);
    mapping.protect(1, 1, libc::PROT_NONE);
    macro_rules! constant {
        ($($len:literal),*) => {$(
            check_site_faults(
                &mapping,
                $len,
                // SAFETY: ranges in our mapping or the host buffer; faults are recovered.
                &|src, dst| unsafe { try_copy(src, dst, $len) },
                // SAFETY: as above.
                &|dst| unsafe { try_write_bytes(dst, 0xA3, $len) },
            );
        )*};
    }
    constant!(
        1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 127, 128, 129, 200, 255,
        256
    );
    // Typed copies: the byte length is `count * size_of::<T>()`.
    let mut host = [0u64; 4];
    // SAFETY: reads the inaccessible page; the fault is recovered.
    let err = unsafe { try_copy(mapping.ptr(PAGE).cast::<u64>(), host.as_mut_ptr(), 4) };
    assert_fault(&err.unwrap_err(), 0, false, libc::SIGSEGV, SEGV_ACCERR);
}

/// Checks what a fault in the middle of an inline copy or fill of `len` bytes leaves behind, the
/// page boundary `before` bytes after the start: a fault in a load writes nothing (every load
/// precedes the first store); a fault in a store leaves every byte before the faulting store
/// written (a copy stores at most 16 bytes at a time, a fill at most `fill_store_width`), so at
/// least the first `before - 15` (or `before - (fill_store_width - 1)`) bytes; the error names
/// the first byte of the inaccessible page.
fn check_site_partial_results(
    mapping: &Mapping,
    len: usize,
    before: usize,
    copy: &dyn Fn(*const u8, *mut u8) -> Result<(), MemoryError>,
    fill: &dyn Fn(*mut u8) -> Result<(), MemoryError>,
    fill_store_width: usize,
) {
    let boundary = mapping.ptr(PAGE);
    let start = mapping.ptr(PAGE - before);
    let written = before.saturating_sub(15);
    let source = pattern(len, len.to_le_bytes()[0]);
    // Load fault: the source straddles into the inaccessible page.
    // SAFETY: the first page is read-write.
    unsafe { ptr::copy_nonoverlapping(source.as_ptr(), start, before) };
    let mut host = vec![0xEEu8; len];
    let err = copy(start, host.as_mut_ptr()).unwrap_err();
    assert_fault(&err, before, false, libc::SIGSEGV, SEGV_ACCERR);
    assert_eq!(err.address(), boundary as usize, "len {len}");
    assert!(host.iter().all(|&b| b == 0xEE), "len {len} before {before}");
    // Store fault: the destination straddles into the inaccessible page.
    // SAFETY: the first page is read-write.
    unsafe { ptr::write_bytes(start, 0, before) };
    let err = copy(source.as_ptr(), start).unwrap_err();
    assert_fault(&err, before, true, libc::SIGSEGV, SEGV_ACCERR);
    assert_eq!(err.address(), boundary as usize, "len {len}");
    for (offset, &expected) in source.iter().enumerate().take(written) {
        assert_eq!(
            mapping.byte(PAGE - before + offset),
            expected,
            "len {len} before {before} offset {offset}"
        );
    }
    // SAFETY: as above.
    unsafe { ptr::write_bytes(start, 0, before) };
    let err = fill(start).unwrap_err();
    assert_fault(&err, before, true, libc::SIGSEGV, SEGV_ACCERR);
    assert_eq!(err.address(), boundary as usize, "len {len}");
    let written = before.saturating_sub(fill_store_width - 1);
    for offset in 0..written {
        assert_eq!(
            mapping.byte(PAGE - before + offset),
            0x6B,
            "len {len} before {before} offset {offset}"
        );
    }
}

#[test]
fn faults_inside_inline_copies_and_fills_leave_exact_partial_results() {
    // Every split point of the longest inline sites (65..=256 bytes: up to 16 vector loads, then
    // the stores) with a run-time length, the fills of each family this CPU has; and the sites
    // that `try_copy` and `try_write_bytes` pick for constant lengths.
    initialize_try_copy();
    let mapping = Mapping::new(2);
    mapping.protect(1, 1, libc::PROT_NONE);
    for family in x86_64::inline_fills() {
        let lengths = [65usize, 96, 127, 128, 129, 159, 160, 200, 255, 256];
        for len in lengths.into_iter().filter(|&len| len >= family.min_len) {
            for before in 1..len {
                let len = std::hint::black_box(len);
                check_site_partial_results(
                    &mapping,
                    len,
                    before,
                    // SAFETY: ranges in our mapping or the host buffer; faults are recovered.
                    &|src, dst| unsafe { try_copy(src, dst, len) },
                    &|dst| {
                        // SAFETY: as above.
                        unsafe { (family.fill)(dst, 0x6B, len) }.map_err(|record| {
                            MemoryError::from_fault(None, Span::new(dst, len), record)
                        })
                    },
                    family.store_width,
                );
            }
        }
    }
    macro_rules! constant {
        ($($len:literal),*) => {$(
            for before in [1usize, 15, 16, 17, 31, 32, 33, 63, 64, 65, $len / 2, $len - 16, $len - 1] {
                check_site_partial_results(
                    &mapping,
                    $len,
                    before.min($len - 1),
                    // SAFETY: ranges in our mapping or the host buffer; faults are recovered.
                    &|src, dst| unsafe { try_copy(src, dst, $len) },
                    // SAFETY: as above.
                    &|dst| unsafe { try_write_bytes(dst, 0x6B, $len) },
                    x86_64::inline_fill_store_width($len),
                );
            }
        )*};
    }
    constant!(17, 64, 65, 128, 129, 159, 160, 256);
}

#[test]
fn inline_copies_of_every_length_match_memmove_for_any_overlap() {
    // Loads before stores: an inline copy behaves like `memmove` whatever the overlap.
    for len in 1..=x86_64::INLINE_MAX {
        for shift in 0..=len {
            for forward in [true, false] {
                let original = pattern(2 * x86_64::INLINE_MAX + 1, len.to_le_bytes()[0]);
                let mut ours = original.clone();
                let mut reference = original.clone();
                let (src, dst) = if forward { (shift, 0) } else { (0, shift) };
                let base = ours.as_mut_ptr();
                copy_bytes(base.wrapping_add(src), base.wrapping_add(dst), len).unwrap();
                reference.copy_within(src..src + len, dst);
                assert_eq!(ours, reference, "len {len} shift {shift} forward {forward}");
            }
        }
    }
}

#[test]
fn inline_fills_of_every_length_set_exactly_their_bytes() {
    // Each fill family this CPU has (the one `try_write_bytes` picks and the others), at every
    // inline length and every destination alignment modulo 32.
    for family in x86_64::inline_fills() {
        for len in family.min_len..=x86_64::INLINE_MAX {
            for shift in 0..32 {
                let mut ours = vec![0u8; len + 128];
                let aligned = ours.as_ptr().align_offset(32);
                let start = aligned + 32 + shift;
                let byte = len.to_le_bytes()[0] | 1;
                // SAFETY: `len` bytes from `start` lie inside `ours` (`start + len <= 95 + len`).
                unsafe { (family.fill)(ours.as_mut_ptr().add(start), byte, len) }.unwrap();
                let (name, end) = (family.name, start + len);
                assert!(ours[..start].iter().all(|&b| b == 0), "{name} len {len}");
                assert!(
                    ours[start..end].iter().all(|&b| b == byte),
                    "{name} len {len}"
                );
                assert!(ours[end..].iter().all(|&b| b == 0), "{name} len {len}");
            }
        }
    }
}

#[test]
fn site_table_lists_inline_sites_and_nothing_else() {
    // Every site the handler would recover is a non-empty instruction range; an address
    // right after a site (where execution resumes) and the test's own code are not guarded.
    let sites = x86_64::sites_for_tests();
    assert!(!sites.is_empty(), "no inline site was recorded");
    for &(start, end) in &sites {
        assert!(
            start < end && end - start < 256,
            "site {start:#x}..{end:#x}"
        );
        assert_eq!(x86_64::fixup_for(start), Some(end));
        assert_eq!(x86_64::fixup_for(end - 1), Some(end));
    }
    let here = site_table_lists_inline_sites_and_nothing_else as *const () as usize;
    assert_eq!(x86_64::fixup_for(here), None);
}

/// The original's bounds: `try_read_volatile`/`try_write_volatile` take any `T` (also one that
/// is not `Copy`), `try_compare_exchange` any `Copy` type of an atomic shape.
#[test]
fn generic_callers_with_the_original_bounds_compile_and_work() {
    #[derive(Debug, PartialEq, Eq)]
    #[repr(transparent)]
    struct NotCopy(u32);

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[repr(transparent)]
    struct Flags(u16);

    unsafe fn read_any<T>(source: *const T) -> Result<T, MemoryError> {
        // SAFETY: forwarded from the caller.
        unsafe { try_read_volatile(source) }
    }

    let mut slot = NotCopy(5);
    // SAFETY: `slot` is a live local of the written type.
    unsafe { try_write_volatile(&raw mut slot, &NotCopy(9)) }.unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { read_any(&raw const slot) }.unwrap(), NotCopy(9));

    let mut flags = Flags(1);
    // SAFETY: `flags` is a live local; `Flags` is a padding-free u16.
    let swapped = unsafe { try_compare_exchange(&raw mut flags, Flags(1), Flags(3)) }.unwrap();
    assert_eq!(swapped, Ok(Flags(3)));
    // SAFETY: as above.
    let refused = unsafe { try_compare_exchange(&raw mut flags, Flags(1), Flags(7)) }.unwrap();
    assert_eq!(refused, Err(Flags(3)));
    assert_eq!(flags, Flags(3));
}
