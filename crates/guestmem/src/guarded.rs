//! Typed guarded accesses built on `trycopy`: one load, store or compare-and-swap instruction
//! for 1, 2, 4 and 8-byte values, a guarded byte copy for other sizes.

// Unsafe code: the typed accesses call the raw-pointer guarded routines of `trycopy`.
#![allow(unsafe_code)]

use std::mem::size_of;
use trycopy::MemoryError;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;

/// Reinterprets the bytes of `value` as a `T` of the same size.
///
/// # Safety
/// `size_of::<S>() == size_of::<T>()`.
unsafe fn transmute_bytes<S: IntoBytes + Immutable, T: FromBytes>(value: &S) -> T {
    let mut out = T::new_zeroed();
    // SAFETY: the sizes are equal (caller) and any bytes are a valid `T` (`FromBytes`).
    unsafe {
        std::ptr::copy_nonoverlapping(
            value.as_bytes().as_ptr(),
            std::ptr::from_mut(&mut out).cast::<u8>(),
            size_of::<T>(),
        )
    };
    out
}

/// Reads a `T` at `source`.
///
/// # Safety
/// `source..source + size_of::<T>()` lies in reserved VA (a fault there is recovered).
pub(crate) unsafe fn read<T: FromBytes>(source: *const u8) -> Result<T, MemoryError> {
    // SAFETY: (all arms) forwarded from the caller; each scalar has the size of `T`.
    unsafe {
        match size_of::<T>() {
            1 => Ok(transmute_bytes(&trycopy::try_read_volatile(source)?)),
            2 => Ok(transmute_bytes(&trycopy::try_read_volatile(
                source.cast::<u16>(),
            )?)),
            4 => Ok(transmute_bytes(&trycopy::try_read_volatile(
                source.cast::<u32>(),
            )?)),
            8 => Ok(transmute_bytes(&trycopy::try_read_volatile(
                source.cast::<u64>(),
            )?)),
            size => {
                let mut value = T::new_zeroed();
                trycopy::try_copy(source, std::ptr::from_mut(&mut value).cast::<u8>(), size)?;
                Ok(value)
            }
        }
    }
}

/// Writes `value` at `destination`.
///
/// # Safety
/// `destination..destination + size_of::<T>()` lies in reserved VA (a fault there is
/// recovered).
pub(crate) unsafe fn write<T: IntoBytes + Immutable>(
    destination: *mut u8,
    value: &T,
) -> Result<(), MemoryError> {
    // SAFETY: (all arms) forwarded from the caller; each scalar has the size of `T`.
    unsafe {
        match size_of::<T>() {
            1 => trycopy::try_write_volatile(destination, &transmute_bytes::<T, u8>(value)),
            2 => trycopy::try_write_volatile(
                destination.cast::<u16>(),
                &transmute_bytes::<T, u16>(value),
            ),
            4 => trycopy::try_write_volatile(
                destination.cast::<u32>(),
                &transmute_bytes::<T, u32>(value),
            ),
            8 => trycopy::try_write_volatile(
                destination.cast::<u64>(),
                &transmute_bytes::<T, u64>(value),
            ),
            size => trycopy::try_copy(value.as_bytes().as_ptr(), destination, size),
        }
    }
}

/// Compare-and-swap of a scalar `S` standing for `T`.
///
/// # Safety
/// `destination` lies in reserved VA and `size_of::<S>() == size_of::<T>()`.
unsafe fn compare_exchange_as<S, T>(
    destination: *mut u8,
    current: T,
    new: T,
) -> Result<Result<T, T>, MemoryError>
where
    S: trycopy::AtomicScalar + IntoBytes + Immutable + FromBytes,
    T: IntoBytes + FromBytes + Immutable + Copy,
{
    // SAFETY: forwarded from the caller; the sizes match.
    unsafe {
        let expected: S = transmute_bytes(&current);
        let replacement: S = transmute_bytes(&new);
        Ok(
            match trycopy::try_compare_exchange(destination.cast::<S>(), expected, replacement)? {
                Ok(_) => Ok(new),
                Err(observed) => Err(transmute_bytes(&observed)),
            },
        )
    }
}

/// One locked compare-and-swap of a 1, 2, 4 or 8-byte `T` at `destination`.
///
/// # Safety
/// `destination` lies in reserved VA; `T` is 1, 2, 4 or 8 bytes long (checked at compile time
/// by the caller).
pub(crate) unsafe fn compare_exchange<T: IntoBytes + FromBytes + Immutable + Copy>(
    destination: *mut u8,
    current: T,
    new: T,
) -> Result<Result<T, T>, MemoryError> {
    // SAFETY: (all arms) forwarded from the caller; each scalar has the size of `T`.
    unsafe {
        match size_of::<T>() {
            1 => compare_exchange_as::<u8, T>(destination, current, new),
            2 => compare_exchange_as::<u16, T>(destination, current, new),
            4 => compare_exchange_as::<u32, T>(destination, current, new),
            _ => compare_exchange_as::<u64, T>(destination, current, new),
        }
    }
}
