//! Unguarded fallback for targets without fault recovery (anything but Linux x86-64).
//!
//! The operations have the same results as the guarded ones on accessible memory, but a fault
//! is fatal: no handler is installed, so [`status`] is always
//! [`HandlerStatus::NotInstalled`](crate::HandlerStatus::NotInstalled) and no function here ever
//! returns an error. Callers can check [`crate::fault_recovery_supported`].

// Unsafe code: the unguarded fallbacks are raw-pointer copies with the same contract.
#![allow(unsafe_code)]

use crate::error::FaultRecord;
use crate::HandlerStatus;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};

pub(crate) fn initialize() {}

pub(crate) fn status() -> HandlerStatus {
    HandlerStatus::NotInstalled
}

pub(crate) fn rearm() -> HandlerStatus {
    HandlerStatus::NotInstalled
}

pub(crate) fn set_listeners(_listening: [bool; 2]) -> HandlerStatus {
    HandlerStatus::NotInstalled
}

/// # Safety
/// Both ranges must be accessible; see [`crate::try_copy`].
pub(crate) unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) -> Result<(), FaultRecord> {
    // SAFETY: the caller guarantees both ranges are valid; `copy` allows overlap.
    unsafe { std::ptr::copy(src, dst, len) };
    Ok(())
}

/// # Safety
/// The range must be accessible.
pub(crate) unsafe fn fill(dst: *mut u8, byte: u8, len: usize) -> Result<(), FaultRecord> {
    // SAFETY: the caller guarantees the range is valid.
    unsafe { std::ptr::write_bytes(dst, byte, len) };
    Ok(())
}

macro_rules! scalar_fns {
    ($read:ident, $write:ident, $cmpxchg:ident, $ty:ty, $atomic:ty) => {
        /// # Safety
        /// `src` must be readable.
        pub(crate) unsafe fn $read(src: *const $ty) -> Result<$ty, FaultRecord> {
            // SAFETY: the caller guarantees `src` is readable.
            Ok(unsafe { src.read_unaligned() })
        }

        /// # Safety
        /// `dst` must be writable.
        pub(crate) unsafe fn $write(dst: *mut $ty, value: $ty) -> Result<(), FaultRecord> {
            // SAFETY: the caller guarantees `dst` is writable.
            unsafe { dst.write_unaligned(value) };
            Ok(())
        }

        /// # Safety
        /// `dst` must be writable and naturally aligned.
        pub(crate) unsafe fn $cmpxchg(
            dst: *mut $ty,
            expected: $ty,
            new: $ty,
        ) -> Result<$ty, FaultRecord> {
            // SAFETY: the caller guarantees `dst` is valid and aligned for atomic access.
            let atomic = unsafe { <$atomic>::from_ptr(dst) };
            Ok(
                match atomic.compare_exchange(expected, new, Ordering::SeqCst, Ordering::SeqCst) {
                    Ok(previous) | Err(previous) => previous,
                },
            )
        }
    };
}

scalar_fns!(read_u8, write_u8, cmpxchg_u8, u8, AtomicU8);
scalar_fns!(read_u16, write_u16, cmpxchg_u16, u16, AtomicU16);
scalar_fns!(read_u32, write_u32, cmpxchg_u32, u32, AtomicU32);
scalar_fns!(read_u64, write_u64, cmpxchg_u64, u64, AtomicU64);
