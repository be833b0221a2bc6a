//! Helpers shared by the checks: decoding fuzz input and catching the panics an API documents.

pub use libfuzzer_sys::arbitrary::Unstructured;

use std::panic::{self, AssertUnwindSafe};

/// The page size of every range bound.
pub const PAGE: u64 = 4096;

/// Runs `f`, catching a panic and returning its message. The panic hook is silenced meanwhile
/// (and restored after): libFuzzer's hook aborts the process on any panic, even one the caller
/// catches, so a documented panic would otherwise count as a crash.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let previous = panic::take_hook();
    panic::set_hook(Box::new(|_| {}));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    panic::set_hook(previous);
    result.map_err(|payload| {
        if let Some(text) = payload.downcast_ref::<&str>() {
            (*text).to_owned()
        } else if let Some(text) = payload.downcast_ref::<String>() {
            text.clone()
        } else {
            "<non-string panic>".to_owned()
        }
    })
}

/// A u64 biased toward the interesting places: small page multiples, values near the top of
/// the address space, unaligned values, and anything.
pub fn address(u: &mut Unstructured<'_>) -> u64 {
    let choice = u.int_in_range(0u8..=9).unwrap_or(0);
    let pages: u64 = u.int_in_range(0u64..=64).unwrap_or(0);
    match choice {
        0..=4 => pages * PAGE,
        5 => u64::MAX - (u64::MAX % PAGE) - pages * PAGE,
        6 => (pages * PAGE).wrapping_add(u.int_in_range(1u64..=PAGE - 1).unwrap_or(1)),
        7 => pages << 30,
        _ => u.arbitrary().unwrap_or(0),
    }
}

/// A small xorshift generator for the `cargo test` harness (no dependency needed).
pub struct XorShift(pub u64);

impl XorShift {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| (self.next_u64() & 0xff) as u8).collect()
    }
}

/// CRC-32C (Castagnoli), bit by bit: the fuzz crate keeps its own reference.
pub fn reference_crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
