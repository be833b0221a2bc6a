//! Guarded data access to a [`SparseMapping`]: copies, fills and typed loads/stores that turn a
//! fault (an inaccessible, read-only or truncated page) into an error instead of a crash.
//!
//! Every helper first checks the access against the reserved length (it fails when
//! `offset > len()` or fewer than `size` bytes remain, so an empty access at `offset == len()`
//! succeeds) and then uses the `trycopy` primitives.

// Unsafe code: the guarded copies take raw pointers into the reservation.
#![allow(unsafe_code)]

use crate::SparseMapping;
use std::mem::size_of;
use trycopy::MemoryError;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;

/// A guarded access to a sparse mapping failed.
#[derive(Debug, thiserror::Error)]
pub enum SparseMappingError {
    /// The access does not lie inside the reservation.
    #[error("out of bounds")]
    OutOfBounds,
    /// The guarded access faulted (inaccessible page, write to a read-only page, file view beyond
    /// end of file, ...).
    #[error(transparent)]
    Memory(MemoryError),
}

impl SparseMapping {
    /// The address of `offset` after checking that `size` bytes from there lie in the mapping.
    fn checked_address(&self, offset: usize, size: usize) -> Result<*mut u8, SparseMappingError> {
        assert!(self.is_local(), "the mapping is not in this process");
        if offset > self.len() || self.len() - offset < size {
            return Err(SparseMappingError::OutOfBounds);
        }
        Ok(self.as_ptr().cast::<u8>().wrapping_add(offset))
    }

    /// Copies `data.len()` bytes at `offset` into `data`.
    pub fn read_at(&self, offset: usize, data: &mut [u8]) -> Result<(), SparseMappingError> {
        let source = self.checked_address(offset, data.len())?;
        // SAFETY: the source range lies inside the reservation, which stays reserved while
        // `self` lives (a fault there is recovered); `data` is a valid exclusive buffer.
        unsafe { trycopy::try_copy(source.cast_const(), data.as_mut_ptr(), data.len()) }
            .map_err(SparseMappingError::Memory)
    }

    /// Copies `data` to `offset`.
    pub fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), SparseMappingError> {
        let destination = self.checked_address(offset, data.len())?;
        // SAFETY: the destination range lies inside the reservation, which stays reserved while
        // `self` lives (a fault there is recovered); `data` is a valid buffer.
        unsafe { trycopy::try_copy(data.as_ptr(), destination, data.len()) }
            .map_err(SparseMappingError::Memory)
    }

    /// Copies `len` bytes at `offset` to `dest`. For a caller whose buffer other threads may
    /// write at the same time (a JavaScript `SharedArrayBuffer`): it is never turned into a
    /// slice, only handed to the guarded copy.
    ///
    /// # Safety
    /// `dest` must be valid for writes of `len` bytes for the duration of the call.
    pub unsafe fn read_to_ptr(
        &self,
        offset: usize,
        dest: *mut u8,
        len: usize,
    ) -> Result<(), SparseMappingError> {
        let source = self.checked_address(offset, len)?;
        // SAFETY: the source range lies inside the reservation, which stays reserved while
        // `self` lives (a fault there is recovered); `dest` is valid for `len` bytes (caller).
        unsafe { trycopy::try_copy(source.cast_const(), dest, len) }
            .map_err(SparseMappingError::Memory)
    }

    /// Copies `len` bytes from `src` to `offset` (see [`SparseMapping::read_to_ptr`]).
    ///
    /// # Safety
    /// `src` must be valid for reads of `len` bytes for the duration of the call.
    pub unsafe fn write_from_ptr(
        &self,
        offset: usize,
        src: *const u8,
        len: usize,
    ) -> Result<(), SparseMappingError> {
        let destination = self.checked_address(offset, len)?;
        // SAFETY: the destination range lies inside the reservation (faults are recovered);
        // `src` is valid for `len` bytes (caller).
        unsafe { trycopy::try_copy(src, destination, len) }.map_err(SparseMappingError::Memory)
    }

    /// Sets `len` bytes at `offset` to `val`.
    pub fn fill_at(&self, offset: usize, val: u8, len: usize) -> Result<(), SparseMappingError> {
        let destination = self.checked_address(offset, len)?;
        // SAFETY: the destination range lies inside the reservation (faults are recovered).
        unsafe { trycopy::try_write_bytes(destination, val, len) }
            .map_err(SparseMappingError::Memory)
    }

    /// Reads a `T` at `offset` with one load instruction when `T` is 1, 2, 4 or 8 bytes long
    /// (single-copy atomic when `offset` is naturally aligned); other sizes are copied bytewise.
    pub fn read_volatile<T: FromBytes + Immutable + KnownLayout>(
        &self,
        offset: usize,
    ) -> Result<T, SparseMappingError> {
        let source = self.checked_address(offset, size_of::<T>())?;
        // SAFETY: the `size_of::<T>()` bytes at `source` lie inside the reservation (faults are
        // recovered).
        unsafe { read_guarded::<T>(source) }.map_err(SparseMappingError::Memory)
    }

    /// Writes `value` at `offset` with one store instruction when `T` is 1, 2, 4 or 8 bytes long;
    /// other sizes are copied bytewise.
    pub fn write_volatile<T: IntoBytes + Immutable + KnownLayout>(
        &self,
        offset: usize,
        value: &T,
    ) -> Result<(), SparseMappingError> {
        let destination = self.checked_address(offset, size_of::<T>())?;
        // SAFETY: the `size_of::<T>()` bytes at `destination` lie inside the reservation
        // (faults are recovered).
        unsafe { write_guarded(destination, value.as_bytes()) }.map_err(SparseMappingError::Memory)
    }

    /// Reads a plain-old-data `T` at `offset` (see [`SparseMapping::read_volatile`]).
    pub fn read_plain<T: FromBytes + Immutable + KnownLayout>(
        &self,
        offset: usize,
    ) -> Result<T, SparseMappingError> {
        self.read_volatile(offset)
    }
}

/// Reads a scalar of type `S` (1, 2, 4 or 8 bytes) with one guarded load and reinterprets its
/// bytes as a `T` of the same size.
///
/// # Safety
/// `source` must point into reserved address space for `size_of::<S>()` bytes, and
/// `size_of::<S>() == size_of::<T>()`.
unsafe fn read_scalar_as<S: Copy + IntoBytes + Immutable, T: FromBytes>(
    source: *const u8,
) -> Result<T, MemoryError> {
    // SAFETY: the caller guarantees `source` is in reserved VA; a fault is recovered.
    let scalar: S = unsafe { trycopy::try_read_volatile(source.cast::<S>()) }?;
    let mut value = T::new_zeroed();
    // SAFETY: both types have the same size (caller); `T: FromBytes` accepts any bytes, so
    // overwriting its representation with the scalar's bytes yields a valid `T`.
    unsafe {
        std::ptr::copy_nonoverlapping(
            scalar.as_bytes().as_ptr(),
            std::ptr::from_mut(&mut value).cast::<u8>(),
            size_of::<T>(),
        )
    };
    Ok(value)
}

/// Reads a `T` from guest-controlled memory with the fewest guarded instructions.
///
/// # Safety
/// `source` must point into reserved address space for `size_of::<T>()` bytes.
pub(crate) unsafe fn read_guarded<T: FromBytes>(source: *const u8) -> Result<T, MemoryError> {
    // SAFETY: (all arms) forwarded from the caller; each scalar has the size of `T`.
    unsafe {
        match size_of::<T>() {
            1 => read_scalar_as::<u8, T>(source),
            2 => read_scalar_as::<u16, T>(source),
            4 => read_scalar_as::<u32, T>(source),
            8 => read_scalar_as::<u64, T>(source),
            size => {
                let mut value = T::new_zeroed();
                trycopy::try_copy(source, std::ptr::from_mut(&mut value).cast::<u8>(), size)?;
                Ok(value)
            }
        }
    }
}

/// Builds the scalar `S` whose bytes are `bytes` (which has exactly `size_of::<S>()` bytes).
fn scalar_from_bytes<S: FromBytes + IntoBytes>(bytes: &[u8]) -> S {
    let mut scalar = S::new_zeroed();
    scalar.as_mut_bytes().copy_from_slice(bytes);
    scalar
}

/// Writes `bytes` to guest-controlled memory with one guarded store when it is 1, 2, 4 or 8
/// bytes long, otherwise with a guarded copy.
///
/// # Safety
/// `destination` must point into reserved address space for `bytes.len()` bytes.
pub(crate) unsafe fn write_guarded(destination: *mut u8, bytes: &[u8]) -> Result<(), MemoryError> {
    // SAFETY: (all arms) forwarded from the caller.
    unsafe {
        match bytes.len() {
            1 => trycopy::try_write_volatile(destination, &bytes[0]),
            2 => trycopy::try_write_volatile(
                destination.cast::<u16>(),
                &scalar_from_bytes::<u16>(bytes),
            ),
            4 => trycopy::try_write_volatile(
                destination.cast::<u32>(),
                &scalar_from_bytes::<u32>(bytes),
            ),
            8 => trycopy::try_write_volatile(
                destination.cast::<u64>(),
                &scalar_from_bytes::<u64>(bytes),
            ),
            len => trycopy::try_copy(bytes.as_ptr(), destination, len),
        }
    }
}
