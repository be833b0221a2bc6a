//! Memory copies and scalar accesses that recover from SIGSEGV/SIGBUS raised inside them.
//!
//! Guest memory may be inaccessible, read-only, a file view beyond end-of-file, or remapped by
//! another thread while a copy runs. The functions here use ordinary instructions and, when the
//! CPU faults inside them, resume at a recovery point and return a [`MemoryError`] that says
//! where and how it faulted, so callers can map the page and retry, take a slow path, or fail
//! cleanly.
//!
//! How it works (Linux x86-64): scalar accesses and copies or fills of up to 256 bytes are inline
//! assembly emitted at the call site (so a length known at compile time costs one straight-line
//! sequence, like a plain copy), each recorded in a table of guarded sites; longer copies and
//! fills call routines of one assembly block with its own fixup table (`x86_64` module). A
//! process-wide SIGSEGV/SIGBUS handler (`handler` module) recovers only kernel-generated faults
//! whose instruction pointer is in one of those tables and forwards every other signal to the
//! handler installed before it, so Node's/V8's WebAssembly trap handling and genuine crashes
//! behave as without us.
//!
//! Copy and fill strategies (which affect speed, never results) are described in the `x86_64`
//! module: up to 256 bytes, straight-line 16-byte SSE loads and stores; beyond, with AVX,
//! destination-aligned 32-byte blocks (a measured deviation from the original's `rep movsb` from
//! 1 KiB); otherwise the original strategy.
//!
//! Call [`initialize_try_copy`] once before relying on recovery: without the handler a fault
//! takes the default action (the process dies). Guarded operations must not run on a thread that
//! blocks SIGSEGV/SIGBUS or inside a signal handler (the kernel would force the default action).
//!
//! On other targets the crate compiles with an unguarded fallback: the operations behave the
//! same on accessible memory, but a fault is fatal; [`fault_recovery_supported`] returns `false`
//! and [`handler_status`] always reports [`HandlerStatus::NotInstalled`].
//!
//! A shared object embedding this crate must never be unloaded while the handler is installed:
//! link it with `-z nodelete`.

// Unsafe code: raw-pointer copies and the `unsafe` entry points that callers use to name guest
// memory.
#![allow(unsafe_code)]

mod error;

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod handler;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod x86_64;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
use x86_64 as arch;

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod unsupported;
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
use unsupported as arch;
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
use unsupported as handler;

#[cfg(all(test, target_arch = "x86_64", target_os = "linux"))]
mod tests;

use error::Span;
pub use error::{FaultInfo, MemoryError};
use std::mem::{size_of, MaybeUninit};

/// Whether faults inside the guarded operations are recovered on this target (Linux x86-64).
pub const fn fault_recovery_supported() -> bool {
    cfg!(all(target_arch = "x86_64", target_os = "linux"))
}

/// Where our SIGSEGV/SIGBUS handler stands.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum HandlerStatus {
    /// Our handler is the current disposition of both SIGSEGV and SIGBUS.
    Installed,
    /// Another handler (or ignore) replaced ours for at least one of the signals.
    Displaced,
    /// The disposition was reset to default for at least one of the signals (for example by
    /// libuv when the last `process.on('SIGSEGV')` listener was removed), and nothing else
    /// replaced ours.
    Default,
    /// [`initialize_try_copy`] has not been called in this process (or the target has no fault
    /// recovery).
    NotInstalled,
}

/// Installs the process-wide SIGSEGV/SIGBUS handler that makes the guarded operations
/// recoverable.
///
/// Idempotent and thread-safe: the first call installs, later calls return at once (they do not
/// re-install over a handler that displaced ours; see [`rearm_handler`]). The handler installed
/// before ours becomes the target of every fault we do not recover.
pub fn initialize_try_copy() {
    handler::initialize();
}

/// Queries the current SIGSEGV/SIGBUS dispositions and reports whether ours is still in place.
pub fn handler_status() -> HandlerStatus {
    handler::status()
}

/// Re-installs our handler where another handler or the default disposition displaced it, and
/// returns the status afterwards.
///
/// The displacing action becomes the new "previous" action, except that a plain default
/// disposition keeps the previous action recorded earlier (restoring the chain that libuv wipes).
/// Returns [`HandlerStatus::NotInstalled`] without installing anything when
/// [`initialize_try_copy`] was never called.
pub fn rearm_handler() -> HandlerStatus {
    handler::rearm()
}

/// Tells the handler whether the process has signal listeners for SIGSEGV and SIGBUS
/// (`segv`, `bus`): in Node, a `process.on('SIGSEGV')` listener installs libuv's handler, which
/// queues the signal for the event loop and returns, so a fault delivered to it repeats forever.
///
/// While listening, a handler found over ours is taken for the listeners' handler: ours goes on
/// top again, signals sent with `kill`/`raise` are passed to it (the listeners run), and
/// kernel-raised faults never are (ours recovers the guarded ones; the rest go to the previous
/// action as without listeners). When a signal stops being listened to (libuv then resets its
/// disposition to default), ours is re-installed with the previous action kept. Call it right
/// after listeners are added or removed; it installs nothing before [`initialize_try_copy`] and
/// returns the status afterwards.
pub fn set_signal_listeners(segv: bool, bus: bool) -> HandlerStatus {
    handler::set_listeners([segv, bus])
}

#[inline(always)]
fn byte_len<T>(count: usize) -> usize {
    count
        .checked_mul(size_of::<T>())
        .expect("element count times element size overflows usize")
}

/// Copies `count` elements from `src` to `dest`, recovering from faults (memmove semantics:
/// the ranges may overlap).
///
/// Access width and order are unspecified. On failure any prefix, suffix or partial element of
/// the destination may already be written. A zero-byte copy touches no memory and succeeds
/// whatever the pointers.
///
/// # Panics
/// If `count * size_of::<T>()` overflows `usize`.
///
/// # Safety
/// Both ranges must lie in memory that may be read (source) and written (destination) without
/// violating Rust's aliasing rules — typically raw guest memory or a buffer owned by the caller.
/// Accessibility of the pages is *not* required: that is what the fault recovery is for (once
/// [`initialize_try_copy`] has run).
#[inline(always)]
pub unsafe fn try_copy<T>(src: *const T, dest: *mut T, count: usize) -> Result<(), MemoryError> {
    let len = byte_len::<T>(count);
    if len == 0 {
        return Ok(());
    }
    // SAFETY: the caller's contract covers both ranges.
    unsafe { arch::copy(dest.cast::<u8>(), src.cast::<u8>(), len) }.map_err(|record| {
        MemoryError::from_fault(Some(Span::new(src, len)), Span::new(dest, len), record)
    })
}

/// Sets `count * size_of::<T>()` bytes at `dest` to `val`, recovering from faults.
///
/// On failure part of the range may be written. A zero-byte fill touches no memory.
///
/// # Panics
/// If `count * size_of::<T>()` overflows `usize`.
///
/// # Safety
/// As for [`try_copy`], for the destination range.
#[inline(always)]
pub unsafe fn try_write_bytes<T>(dest: *mut T, val: u8, count: usize) -> Result<(), MemoryError> {
    let len = byte_len::<T>(count);
    if len == 0 {
        return Ok(());
    }
    // SAFETY: the caller's contract covers the range.
    unsafe { arch::fill(dest.cast::<u8>(), val, len) }
        .map_err(|record| MemoryError::from_fault(None, Span::new(dest, len), record))
}

/// Reinterprets a `u8`/`u16`/`u32`/`u64` as a `T` of the same size.
///
/// # Safety
/// `size_of::<T>() == size_of::<U>()` and the bits form a valid `T`.
unsafe fn from_bits<T, U: Copy>(bits: U) -> T {
    debug_assert_eq!(size_of::<T>(), size_of::<U>());
    // SAFETY: same size per the contract; the caller vouches for validity.
    unsafe { std::mem::transmute_copy(&bits) }
}

/// The bits of `value` as a `u8`/`u16`/`u32`/`u64` of the same size (the value is not moved).
///
/// # Safety
/// `size_of::<T>() == size_of::<U>()` and `T` has no padding (its bytes are initialised).
unsafe fn to_bits<T, U: Copy>(value: &T) -> U {
    debug_assert_eq!(size_of::<T>(), size_of::<U>());
    // SAFETY: same size and initialised bytes per the contract; `transmute_copy` reads without
    // moving and copes with any alignment.
    unsafe { std::mem::transmute_copy(value) }
}

/// Reads one `T` from `src`, recovering from faults.
///
/// For a `T` of 1, 2, 4 or 8 bytes this is exactly one load instruction, so an aligned access is
/// single-copy atomic (a misaligned one is allowed, just not atomic). Other sizes use a guarded
/// byte copy.
///
/// # Safety
/// As for [`try_copy`] for the source; in addition every bit pattern must be a valid `T`.
#[inline(always)]
pub unsafe fn try_read_volatile<T>(src: *const T) -> Result<T, MemoryError> {
    let source = Span::new(src, size_of::<T>());
    let error = |record| MemoryError::from_fault(Some(source), Span::new(src, 0), record);
    // SAFETY: the caller's contract covers the source; each arm reads exactly size_of::<T>()
    // bytes and reinterprets them as T, which the caller declares valid for any bits.
    unsafe {
        match size_of::<T>() {
            0 => Ok(MaybeUninit::<T>::zeroed().assume_init()),
            1 => arch::read_u8(src.cast())
                .map(|v| from_bits(v))
                .map_err(error),
            2 => arch::read_u16(src.cast())
                .map(|v| from_bits(v))
                .map_err(error),
            4 => arch::read_u32(src.cast())
                .map(|v| from_bits(v))
                .map_err(error),
            8 => arch::read_u64(src.cast())
                .map(|v| from_bits(v))
                .map_err(error),
            len => {
                let mut value = MaybeUninit::<T>::uninit();
                arch::copy(value.as_mut_ptr().cast::<u8>(), src.cast::<u8>(), len)
                    .map(|()| value.assume_init())
                    .map_err(error)
            }
        }
    }
}

/// Writes `*value` to `dest`, recovering from faults.
///
/// For a `T` of 1, 2, 4 or 8 bytes this is exactly one store instruction; other sizes use a
/// guarded byte copy (then part of the value may be written on failure).
///
/// # Safety
/// As for [`try_copy`] for the destination; in addition `T` must have no padding bytes (its
/// bytes are stored as an integer).
#[inline(always)]
pub unsafe fn try_write_volatile<T>(dest: *mut T, value: &T) -> Result<(), MemoryError> {
    let error = |record| MemoryError::from_fault(None, Span::new(dest, size_of::<T>()), record);
    // SAFETY: the caller's contract covers the destination and says `T` has no padding; each arm
    // reads `value` as an integer of exactly its size (any bits are valid as an integer).
    unsafe {
        match size_of::<T>() {
            0 => Ok(()),
            1 => arch::write_u8(dest.cast(), to_bits(value)).map_err(error),
            2 => arch::write_u16(dest.cast(), to_bits(value)).map_err(error),
            4 => arch::write_u32(dest.cast(), to_bits(value)).map_err(error),
            8 => arch::write_u64(dest.cast(), to_bits(value)).map_err(error),
            len => arch::copy(
                dest.cast::<u8>(),
                std::ptr::from_ref(value).cast::<u8>(),
                len,
            )
            .map_err(error),
        }
    }
}

/// A type that [`try_compare_exchange`] can swap with one locked instruction; implementing it
/// records that the type meets that function's safety contract.
///
/// Its size must be 1, 2, 4 or 8 bytes and its alignment at least its size; this is checked at
/// compile time when `try_compare_exchange::<T>` is instantiated.
///
/// # Safety
/// Implementors must be plain data: no padding, and every bit pattern of their size is a valid
/// value. Equality of values is taken to be equality of bits.
pub unsafe trait AtomicScalar: Copy {}

// SAFETY: primitive integers are plain data with size == alignment on x86-64 and aarch64.
unsafe impl AtomicScalar for u8 {}
// SAFETY: as above.
unsafe impl AtomicScalar for u16 {}
// SAFETY: as above.
unsafe impl AtomicScalar for u32 {}
// SAFETY: as above.
unsafe impl AtomicScalar for u64 {}
// SAFETY: as above.
unsafe impl AtomicScalar for usize {}
// SAFETY: as above.
unsafe impl AtomicScalar for i8 {}
// SAFETY: as above.
unsafe impl AtomicScalar for i16 {}
// SAFETY: as above.
unsafe impl AtomicScalar for i32 {}
// SAFETY: as above.
unsafe impl AtomicScalar for i64 {}
// SAFETY: as above.
unsafe impl AtomicScalar for isize {}

/// Compile-time shape check for [`try_compare_exchange`].
struct AtomicShape<T>(std::marker::PhantomData<T>);

impl<T> AtomicShape<T> {
    const CHECK: () = assert!(
        matches!(size_of::<T>(), 1 | 2 | 4 | 8) && std::mem::align_of::<T>() >= size_of::<T>(),
        "try_compare_exchange needs a type of 1, 2, 4 or 8 bytes aligned to its size"
    );
}

/// Atomically replaces `*dest` with `new` if it equals `current` (one locked compare-and-swap,
/// sequentially consistent), recovering from faults.
///
/// Returns `Ok(Ok(new))` when the swap happened (note: the *new* value), `Ok(Err(observed))`
/// when memory held `observed != current` (memory unchanged), and `Err` when the access faulted.
/// On x86-64 the locked instruction always performs a write cycle, so a read-only page faults
/// even when the comparison fails.
///
/// `T` must be 1, 2, 4 or 8 bytes and aligned at least to its size (checked at compile time).
///
/// # Safety
/// As for [`try_copy`] for the destination; `T` must be plain data as an [`AtomicScalar`]
/// would be (no padding, every bit pattern valid, equality is equality of bits). `dest` should be
/// naturally aligned (a misaligned target is a slow split lock on x86-64, and faults where split
/// locks are fatal).
#[inline(always)]
pub unsafe fn try_compare_exchange<T: Copy>(
    dest: *mut T,
    current: T,
    new: T,
) -> Result<Result<T, T>, MemoryError> {
    #[allow(clippy::let_unit_value)]
    let () = AtomicShape::<T>::CHECK;
    let error = |record| MemoryError::from_fault(None, Span::new(dest, size_of::<T>()), record);
    // SAFETY: the caller's contract covers the destination; `T` has the size of the integer of
    // each arm (checked above) and any bits are a valid `T` (the caller's contract).
    unsafe {
        macro_rules! swap {
            ($op:path, $int:ty) => {{
                let expected: $int = from_bits(current);
                $op(dest.cast(), expected, from_bits(new))
                    .map_err(error)
                    .map(|observed| {
                        if observed == expected {
                            Ok(new)
                        } else {
                            Err(from_bits(observed))
                        }
                    })
            }};
        }
        match size_of::<T>() {
            1 => swap!(arch::cmpxchg_u8, u8),
            2 => swap!(arch::cmpxchg_u16, u16),
            4 => swap!(arch::cmpxchg_u32, u32),
            _ => swap!(arch::cmpxchg_u64, u64),
        }
    }
}
