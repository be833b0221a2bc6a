//! Fuzz checks of `trycopy`, the copies that recover from faults: an area of 16 pages is
//! mapped with a random protection per page (read-write, read-only, none), then a random
//! guarded operation runs over it — a copy inside the area (overlapping either way), out of
//! it, into it, a fill, a scalar load or store of 1/2/4/8 bytes (misaligned too, across page
//! boundaries), an aligned compare-exchange, or an access through an unmapped or non-canonical
//! pointer. The process must never die, and:
//!
//! - the operation succeeds iff every byte it touches is accessible in its direction, and then
//!   the result equals `memmove`/`memset`/the plain load or store on a shadow copy;
//! - a failure reports a faulting address that is inaccessible in the direction of the buffer
//!   it lies in, the offset and direction the attribution rule gives for that address
//!   (destination first, then source), SIGSEGV with `SEGV_ACCERR` on a protected page; a
//!   forward copy or fill reports the first inaccessible byte (within one 128-byte block), a
//!   backward copy the last, and the bytes before the faulting block are already written;
//!   a faulting scalar store or compare-exchange changed nothing.

// Unsafe code: the checks map pages with random protections and run the raw-pointer guarded
// routines on them.
#![allow(unsafe_code)]

use crate::input::Unstructured;
use std::sync::Once;
use trycopy::MemoryError;

const PAGES: usize = 16;
const AREA: usize = PAGES * PAGE_BYTES;
/// The page size (`crate::input::PAGE`) as a host size.
const PAGE_BYTES: usize = 4096;
/// Faults inside a forward copy or fill are reported within this many bytes of the first
/// inaccessible byte, and everything this far before it is already written: the AVX copy
/// loads four 32-byte blocks before storing them (the crate's documented strategy).
const BLOCK_SLACK: usize = 128;
/// `si_code` of an access to a mapped page that its protection forbids (asm-generic siginfo.h).
const SEGV_ACCERR: i32 = 2;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Protection {
    ReadWrite,
    ReadOnly,
    None,
}

/// The 16-page area: its mapping and, per page, the protection and the expected bytes.
struct Area {
    base: *mut u8,
    protection: [Protection; PAGES],
    shadow: Vec<u8>,
}

impl Area {
    fn new(u: &mut Unstructured<'_>) -> Self {
        // SAFETY: an anonymous private mapping of AREA bytes at a kernel-chosen address; the
        // result is checked against MAP_FAILED before use.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                AREA,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED, "mmap failed");
        let base = base.cast::<u8>();
        let shadow: Vec<u8> = (0..AREA)
            .map(|i| i.to_le_bytes()[0].wrapping_mul(31).wrapping_add(7))
            .collect();
        // SAFETY: the area is AREA bytes, readable and writable, and owned by this struct.
        unsafe { std::ptr::copy_nonoverlapping(shadow.as_ptr(), base, AREA) };
        let mut protection = [Protection::ReadWrite; PAGES];
        for (page, slot) in protection.iter_mut().enumerate() {
            *slot = match u.int_in_range(0u8..=5).unwrap_or(0) {
                0..=2 => Protection::ReadWrite,
                3 | 4 => Protection::ReadOnly,
                _ => Protection::None,
            };
            let prot = match slot {
                Protection::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
                Protection::ReadOnly => libc::PROT_READ,
                Protection::None => libc::PROT_NONE,
            };
            // SAFETY: the page lies inside the area mapped above.
            let rc =
                unsafe { libc::mprotect(base.add(page * PAGE_BYTES).cast(), PAGE_BYTES, prot) };
            assert_eq!(rc, 0, "mprotect failed");
        }
        Self {
            base,
            protection,
            shadow,
        }
    }

    fn contains(&self, address: usize) -> bool {
        address >= self.base as usize && address < self.base as usize + AREA
    }

    fn page_of(&self, address: usize) -> Protection {
        self.protection[(address - self.base as usize) / PAGE_BYTES]
    }

    /// Whether `address` (in the area, or in an always-accessible heap buffer) may be read.
    fn readable(&self, address: usize) -> bool {
        !self.contains(address) || self.page_of(address) != Protection::None
    }

    fn writable(&self, address: usize) -> bool {
        !self.contains(address) || self.page_of(address) == Protection::ReadWrite
    }

    /// The area's readable bytes now, against the shadow (unreadable pages are skipped).
    fn assert_matches_shadow(&self, what: &str) {
        for page in 0..PAGES {
            if self.protection[page] == Protection::None {
                continue;
            }
            let start = page * PAGE_BYTES;
            // SAFETY: the page is mapped readable.
            let actual = unsafe { std::slice::from_raw_parts(self.base.add(start), PAGE_BYTES) };
            if actual != &self.shadow[start..start + PAGE_BYTES] {
                let at = (0..PAGE_BYTES)
                    .find(|&i| actual[i] != self.shadow[start + i])
                    .unwrap_or(0);
                panic!(
                    "{what}: area byte {:#x} is {:#x}, expected {:#x}",
                    start + at,
                    actual[at],
                    self.shadow[start + at]
                );
            }
        }
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the area mapped in `new`; nothing refers to it afterwards.
        unsafe { libc::munmap(self.base.cast(), AREA) };
    }
}

/// The bytes at `address` as the reference sees them (area shadow or heap buffer).
fn shadow_byte(area: &Area, heap: &[u8], address: usize) -> u8 {
    if area.contains(address) {
        area.shadow[address - area.base as usize]
    } else {
        heap[address - heap.as_ptr() as usize]
    }
}

/// Checks a reported failure against the accessible-byte model of the touched spans.
///
/// `source` is (start, len) of the source span, if the operation reads one; `destination` the
/// span written (or, for a load, an empty span). `bad` lists the inaccessible indexes (into
/// the spans) in access order: a fault must lie at one of the indexes `allowed` accepts.
fn check_fault(
    what: &str,
    area: &Area,
    error: &MemoryError,
    source: Option<(usize, usize)>,
    destination: (usize, usize),
    allowed: impl Fn(usize) -> bool,
) {
    let address = error.address();
    let in_span = |span: (usize, usize)| address >= span.0 && address < span.0 + span.1;
    // The address faulted in the direction of a span it lies in.
    let as_source = source
        .filter(|&s| in_span(s) && !area.readable(address))
        .map(|s| address - s.0);
    let as_destination = Some(destination)
        .filter(|&d| in_span(d) && !area.writable(address))
        .map(|d| address - d.0);
    assert!(
        as_source.is_some() || as_destination.is_some(),
        "{what}: fault at {address:#x} lies in no span it could fault in (source {source:x?}, destination {destination:x?})"
    );
    assert!(
        as_source.into_iter().chain(as_destination).any(&allowed),
        "{what}: fault at {address:#x} (index {as_source:?} as source, {as_destination:?} as destination) is not where the copy must first fault"
    );
    // The attribution of the address: an offset into the destination when it lies there (a
    // write), else into the source (a read).
    let expected = if in_span(destination) {
        (address - destination.0, true)
    } else {
        (address - source.map_or(0, |s| s.0), false)
    };
    assert_eq!(
        (error.offset(), error.is_write()),
        expected,
        "{what}: fault at {address:#x} reported as offset {} {}",
        error.offset(),
        if error.is_write() { "write" } else { "read" }
    );
    let fault = error.fault();
    assert_eq!(
        fault.signal,
        libc::SIGSEGV,
        "{what}: signal {}",
        fault.signal
    );
    assert_eq!(
        fault.si_code, SEGV_ACCERR,
        "{what}: si_code {}",
        fault.si_code
    );
}

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(trycopy::initialize_try_copy);
}

pub fn check(data: &[u8]) {
    init();
    let mut u = Unstructured::new(data);
    let mut area = Area::new(&mut u);
    let mut heap: Vec<u8> = (0..AREA).map(|i| i.to_le_bytes()[0] ^ 0xa5).collect();
    let base = area.base as usize;
    let offset = |u: &mut Unstructured<'_>| u.int_in_range(0usize..=AREA - 1).unwrap_or(0);
    let length = |u: &mut Unstructured<'_>, room: usize| {
        let len = match u.int_in_range(0u8..=3).unwrap_or(0) {
            0 => u.int_in_range(0usize..=64).unwrap_or(0),
            1 => u.int_in_range(0usize..=2048).unwrap_or(0),
            _ => u.int_in_range(0usize..=AREA).unwrap_or(0),
        };
        len.min(room)
    };

    match u.int_in_range(0u8..=6).unwrap_or(0) {
        // Copies: inside the area (may overlap), area → heap, heap → area.
        kind @ 0..=2 => {
            let (src, dst, len) = match kind {
                0 => {
                    let (s, d) = (offset(&mut u), offset(&mut u));
                    let len = length(&mut u, AREA - s.max(d));
                    (base + s, base + d, len)
                }
                1 => {
                    let s = offset(&mut u);
                    let len = length(&mut u, AREA - s);
                    (base + s, heap.as_mut_ptr() as usize, len)
                }
                _ => {
                    let d = offset(&mut u);
                    let len = length(&mut u, AREA - d);
                    (heap.as_ptr() as usize, base + d, len)
                }
            };
            let bad: Vec<usize> = (0..len)
                .filter(|&i| !area.readable(src + i) || !area.writable(dst + i))
                .collect();
            let forward = dst.wrapping_sub(src) >= len;
            // The reference result (memmove on the shadow).
            let moved: Vec<u8> = (0..len)
                .map(|i| shadow_byte(&area, &heap, src + i))
                .collect();
            // SAFETY: both spans lie in the area or the heap buffer, which stay alive; faults on
            // protected pages are what the guarded copy recovers.
            let result = unsafe { trycopy::try_copy(src as *const u8, dst as *mut u8, len) };
            let what = format!(
                "try_copy({src:#x} -> {dst:#x}, {len:#x}, {})",
                if forward { "forward" } else { "backward" }
            );
            match (&result, bad.first(), bad.last()) {
                (Ok(()), None, _) => {
                    for (i, &byte) in moved.iter().enumerate() {
                        if area.contains(dst + i) {
                            area.shadow[dst + i - base] = byte;
                        } else {
                            assert_eq!(
                                heap[dst + i - heap.as_ptr() as usize],
                                byte,
                                "{what}: heap byte {i:#x}"
                            );
                        }
                    }
                    area.assert_matches_shadow(&what);
                }
                (Ok(()), Some(first), _) => {
                    panic!("{what} succeeded although byte {first:#x} is inaccessible")
                }
                (Err(error), None, _) => panic!("{what} failed on accessible memory: {error:?}"),
                (Err(error), Some(&first), Some(&last)) => {
                    if forward {
                        check_fault(&what, &area, error, Some((src, len)), (dst, len), |k| {
                            k >= first && k < first + BLOCK_SLACK
                        });
                        // Everything before the faulting block is already copied.
                        let done = first.saturating_sub(BLOCK_SLACK);
                        for (i, &expected) in moved[..done].iter().enumerate() {
                            // SAFETY: dst + i is writable (before the first bad byte), so mapped.
                            let actual = unsafe { *((dst + i) as *const u8) };
                            assert_eq!(
                                actual, expected,
                                "{what}: byte {i:#x} before the fault was not copied"
                            );
                        }
                    } else {
                        check_fault(&what, &area, error, Some((src, len)), (dst, len), |k| {
                            k == last
                        });
                    }
                }
                (Err(_), Some(_), None) => unreachable!(),
            }
        }
        // Fill.
        3 => {
            let d = offset(&mut u);
            let len = length(&mut u, AREA - d);
            let byte: u8 = u.arbitrary().unwrap_or(0);
            let dst = base + d;
            let bad: Vec<usize> = (0..len).filter(|&i| !area.writable(dst + i)).collect();
            // SAFETY: the span lies in the area; faults are recovered.
            let result = unsafe { trycopy::try_write_bytes(dst as *mut u8, byte, len) };
            let what = format!("try_write_bytes({dst:#x}, {byte:#x}, {len:#x})");
            match (&result, bad.first()) {
                (Ok(()), None) => {
                    area.shadow[d..d + len].fill(byte);
                    area.assert_matches_shadow(&what);
                }
                (Ok(()), Some(first)) => {
                    panic!("{what} succeeded although byte {first:#x} is not writable")
                }
                (Err(error), None) => panic!("{what} failed on writable memory: {error:?}"),
                (Err(error), Some(&first)) => {
                    check_fault(&what, &area, error, None, (dst, len), |k| {
                        k >= first && k < first + BLOCK_SLACK
                    });
                    for i in 0..first.saturating_sub(BLOCK_SLACK) {
                        // SAFETY: before the first bad byte, so mapped writable.
                        let actual = unsafe { *((dst + i) as *const u8) };
                        assert_eq!(
                            actual, byte,
                            "{what}: byte {i:#x} before the fault was not filled"
                        );
                    }
                }
            }
        }
        // Scalar loads and stores, any alignment (page-crossing included).
        4 => {
            let size = [1usize, 2, 4, 8][u.int_in_range(0usize..=3).unwrap_or(0)];
            let at = if u.ratio(1u8, 2).unwrap_or(false) {
                // Straddle a page boundary.
                let page = u.int_in_range(1usize..=PAGES - 1).unwrap_or(1);
                page * PAGE_BYTES
                    - u.int_in_range(1usize..=size)
                        .unwrap_or(1)
                        .min(size - 1)
                        .max(if size == 1 { 0 } else { 1 })
            } else {
                u.int_in_range(0usize..=AREA - size).unwrap_or(0)
            };
            let address = base + at;
            let store = u.arbitrary::<bool>().unwrap_or(false);
            let value: u64 = u.arbitrary().unwrap_or(0);
            let readable = (0..size).all(|i| area.readable(address + i));
            let writable = (0..size).all(|i| area.writable(address + i));
            let what = format!(
                "{} of {size} bytes at {address:#x}",
                if store { "store" } else { "load" }
            );
            // SAFETY: the scalar lies in the area; faults are recovered.
            let result: Result<u64, MemoryError> = unsafe {
                match (store, size) {
                    (false, 1) => trycopy::try_read_volatile(address as *const u8).map(u64::from),
                    (false, 2) => trycopy::try_read_volatile(address as *const u16).map(u64::from),
                    (false, 4) => trycopy::try_read_volatile(address as *const u32).map(u64::from),
                    (false, _) => trycopy::try_read_volatile(address as *const u64),
                    (true, 1) => {
                        trycopy::try_write_volatile(address as *mut u8, &((value & 0xff) as u8))
                            .map(|()| 0)
                    }
                    (true, 2) => {
                        trycopy::try_write_volatile(address as *mut u16, &((value & 0xffff) as u16))
                            .map(|()| 0)
                    }
                    (true, 4) => trycopy::try_write_volatile(
                        address as *mut u32,
                        &((value & 0xffff_ffff) as u32),
                    )
                    .map(|()| 0),
                    (true, _) => {
                        trycopy::try_write_volatile(address as *mut u64, &value).map(|()| 0)
                    }
                }
            };
            let allowed_ok = if store { writable } else { readable };
            match result {
                Ok(loaded) => {
                    assert!(allowed_ok, "{what} succeeded on inaccessible memory");
                    if store {
                        area.shadow[at..at + size].copy_from_slice(&value.to_le_bytes()[..size]);
                    } else {
                        let mut bytes = [0u8; 8];
                        bytes[..size].copy_from_slice(&area.shadow[at..at + size]);
                        assert_eq!(loaded, u64::from_le_bytes(bytes), "{what}");
                    }
                }
                Err(error) => {
                    assert!(!allowed_ok, "{what} failed on accessible memory: {error:?}");
                    let (source, destination) = if store {
                        (None, (address, size))
                    } else {
                        (Some((address, size)), (address, 0))
                    };
                    check_fault(&what, &area, &error, source, destination, |k| k < size);
                }
            }
            // A faulting store wrote nothing; a successful one exactly its bytes.
            area.assert_matches_shadow(&what);
        }
        // Aligned compare-exchange (a locked write cycle: read-only pages fault too).
        5 => {
            let size = [1usize, 2, 4, 8][u.int_in_range(0usize..=3).unwrap_or(0)];
            let at = u.int_in_range(0usize..=(AREA / size) - 1).unwrap_or(0) * size;
            let address = base + at;
            let mut bytes = [0u8; 8];
            bytes[..size].copy_from_slice(&area.shadow[at..at + size]);
            let current_value = u64::from_le_bytes(bytes);
            let expected = if u.ratio(1u8, 2).unwrap_or(true) {
                current_value
            } else {
                u.arbitrary().unwrap_or(1)
            };
            let new: u64 = u.arbitrary().unwrap_or(0);
            let mask = if size == 8 {
                u64::MAX
            } else {
                (1u64 << (size * 8)) - 1
            };
            let what = format!("compare-exchange of {size} bytes at {address:#x}");
            // SAFETY: the aligned scalar lies in the area; faults are recovered.
            let result: Result<Result<u64, u64>, MemoryError> = unsafe {
                match size {
                    1 => trycopy::try_compare_exchange(
                        address as *mut u8,
                        (expected & 0xff) as u8,
                        (new & 0xff) as u8,
                    )
                    .map(|r| r.map(u64::from).map_err(u64::from)),
                    2 => trycopy::try_compare_exchange(
                        address as *mut u16,
                        (expected & 0xffff) as u16,
                        (new & 0xffff) as u16,
                    )
                    .map(|r| r.map(u64::from).map_err(u64::from)),
                    4 => trycopy::try_compare_exchange(
                        address as *mut u32,
                        (expected & 0xffff_ffff) as u32,
                        (new & 0xffff_ffff) as u32,
                    )
                    .map(|r| r.map(u64::from).map_err(u64::from)),
                    _ => trycopy::try_compare_exchange(address as *mut u64, expected, new),
                }
            };
            let writable = area.writable(address);
            match result {
                Ok(Ok(swapped)) => {
                    assert!(
                        writable && expected & mask == current_value,
                        "{what}: swapped unexpectedly"
                    );
                    assert_eq!(swapped, new & mask);
                    area.shadow[at..at + size].copy_from_slice(&new.to_le_bytes()[..size]);
                }
                Ok(Err(observed)) => {
                    assert!(
                        writable && expected & mask != current_value,
                        "{what}: refused unexpectedly"
                    );
                    assert_eq!(observed, current_value, "{what}: observed value");
                }
                Err(error) => {
                    assert!(!writable, "{what} failed on writable memory: {error:?}");
                    check_fault(&what, &area, &error, None, (address, size), |k| k < size);
                }
            }
            area.assert_matches_shadow(&what);
        }
        // Pointers with no mapping at all, or non-canonical: never a crash.
        _ => {
            let bad = [
                0x100usize,
                0x8000_0000_0000_0000,
                0xffff_8000_0000_0000 - 0x1000,
            ][u.int_in_range(0usize..=2).unwrap_or(0)];
            let len = u.int_in_range(0usize..=64).unwrap_or(8);
            let mut buffer = [0u8; 64];
            // SAFETY: the bad spans are never valid memory (address 0x100 is never mapped;
            // the others are non-canonical or kernel space); the buffer is ours. A zero-length
            // copy touches nothing.
            let (copy, load, fill) = unsafe {
                (
                    trycopy::try_copy(bad as *const u8, buffer.as_mut_ptr(), len),
                    trycopy::try_read_volatile(bad as *const u64),
                    trycopy::try_write_bytes(bad as *mut u8, 0x5a, len),
                )
            };
            assert_eq!(copy.is_ok(), len == 0, "copy of {len} bytes from {bad:#x}");
            assert_eq!(fill.is_ok(), len == 0, "fill of {len} bytes at {bad:#x}");
            let load = load.expect_err("load from a bad pointer succeeded");
            for (error, is_write) in [(copy.err(), false), (Some(load), false), (fill.err(), true)]
            {
                let Some(error) = error else { continue };
                assert_eq!(error.is_write(), is_write, "{bad:#x}: {error:?}");
                if error.address() == 0 || error.address() == bad {
                    assert_eq!(error.offset(), 0, "{bad:#x}: {error:?}");
                }
                assert_eq!(error.fault().signal, libc::SIGSEGV);
            }
        }
    }
}
