//! The data operations of [`GuestMemory`]: copies, fills, typed loads and stores,
//! compare-exchange and probes, each running the access protocol of `protocol.rs`.

// Unsafe code: every operation runs a guarded access through a backing's raw mapping.
#![allow(unsafe_code)]

use crate::error::GuestMemoryOperation;
use crate::guarded;
use crate::protocol::out_of_range;
use crate::GuestMemory;
use crate::GuestMemoryAccess;
use crate::GuestMemoryBackingError;
use crate::GuestMemoryError;
use crate::GuestMemoryErrorKind;
use std::mem::size_of;
use std::sync::atomic::AtomicU8;
use trycopy::MemoryError;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;

impl GuestMemory {
    /// Wraps a backing error into the public error of `operation`.
    #[cold]
    #[inline(never)]
    pub(crate) fn operation_error(
        &self,
        operation: GuestMemoryOperation,
        range: Option<std::ops::Range<u64>>,
        error: GuestMemoryBackingError,
    ) -> GuestMemoryError {
        GuestMemoryError::new(&self.inner.debug_name, operation, range, error)
    }

    /// Runs an access whose error reports `gpa..gpa + len` as the requested range.
    #[inline]
    fn ranged<T>(
        &self,
        operation: GuestMemoryOperation,
        gpa: u64,
        len: u64,
        write: bool,
        attempt: impl FnMut(*mut u8) -> Result<T, MemoryError>,
        fallback: impl FnOnce(&dyn GuestMemoryAccess, u64) -> Result<T, GuestMemoryBackingError>,
    ) -> Result<T, GuestMemoryError> {
        self.run_access(gpa, len, write, attempt, fallback)
            .map_err(|error| {
                self.operation_error(operation, Some(gpa..gpa.wrapping_add(len)), error)
            })
    }

    /// Copies guest memory at `gpa` to the raw buffer `dest..dest + len` (no range in errors
    /// when `ranged` is false).
    #[inline]
    pub(crate) fn read_raw(
        &self,
        gpa: u64,
        dest: *mut u8,
        len: usize,
    ) -> Result<(), GuestMemoryBackingError> {
        self.run_access(
            gpa,
            len as u64,
            false,
            // SAFETY: the source is reserved VA of the backing (faults are recovered); `dest` is
            // valid for `len` bytes (callers pass a live buffer).
            move |source| unsafe { trycopy::try_copy(source.cast_const(), dest, len) },
            // SAFETY: `dest` is valid for `len` bytes.
            move |backing, address| unsafe { backing.read_fallback(address, dest, len) },
        )
    }

    /// Copies the raw buffer `src..src + len` to guest memory at `gpa`.
    #[inline]
    pub(crate) fn write_raw(
        &self,
        gpa: u64,
        src: *const u8,
        len: usize,
    ) -> Result<(), GuestMemoryBackingError> {
        self.run_access(
            gpa,
            len as u64,
            true,
            // SAFETY: the destination is reserved VA of the backing (faults are recovered);
            // `src` is valid for `len` bytes.
            move |destination| unsafe { trycopy::try_copy(src, destination, len) },
            // SAFETY: `src` is valid for `len` bytes.
            move |backing, address| unsafe { backing.write_fallback(address, src, len) },
        )
    }

    /// Fills `len` bytes of guest memory at `gpa`.
    #[inline]
    pub(crate) fn fill_raw(
        &self,
        gpa: u64,
        val: u8,
        len: usize,
    ) -> Result<(), GuestMemoryBackingError> {
        self.run_access(
            gpa,
            len as u64,
            true,
            // SAFETY: the destination is reserved VA of the backing (faults are recovered).
            move |destination| unsafe { trycopy::try_write_bytes(destination, val, len) },
            move |backing, address| backing.fill_fallback(address, val, len),
        )
    }

    /// Copies `dest.len()` bytes at `gpa` into `dest`. Empty reads always succeed.
    #[inline]
    pub fn read_at(&self, gpa: u64, dest: &mut [u8]) -> Result<(), GuestMemoryError> {
        // SAFETY: `dest` is a live exclusive buffer of that length.
        unsafe { self.read_ptr(gpa, dest.as_mut_ptr(), dest.len()) }
    }

    /// Copies `dest.len()` bytes at `gpa` into `dest`, which other threads may access
    /// concurrently. Empty reads always succeed.
    #[inline]
    pub fn read_to_atomic(&self, gpa: u64, dest: &[AtomicU8]) -> Result<(), GuestMemoryError> {
        // SAFETY: atomic bytes may be written through a pointer derived from a shared reference.
        unsafe { self.read_ptr(gpa, dest.as_ptr().cast::<u8>().cast_mut(), dest.len()) }
    }

    /// Copies `len` bytes at `gpa` to the raw buffer `dest` (for buffers that are neither Rust
    /// slices nor atomic, e.g. memory shared with JavaScript).
    ///
    /// # Safety
    /// `dest` is valid for writing `len` bytes for the duration of the call.
    #[inline]
    pub unsafe fn read_ptr(
        &self,
        gpa: u64,
        dest: *mut u8,
        len: usize,
    ) -> Result<(), GuestMemoryError> {
        if len == 0 {
            return Ok(());
        }
        self.read_raw(gpa, dest, len).map_err(|error| {
            self.operation_error(
                GuestMemoryOperation::Read,
                Some(gpa..gpa.wrapping_add(len as u64)),
                error,
            )
        })
    }

    /// Checks, before an `operation` of `len` bytes at `gpa` whose buffer has yet to be
    /// allocated, what can be known without performing it: the range lies inside this memory
    /// (else the `OutOfRange` error the access would give) and its backing does not already
    /// know part of it to be inaccessible (a lazily mapped backing maps the range, or names the
    /// hole). An access that passes may still fail. Empty ranges always pass.
    pub fn check_access(
        &self,
        gpa: u64,
        len: u64,
        operation: GuestMemoryOperation,
    ) -> Result<(), GuestMemoryError> {
        if len == 0 {
            return Ok(());
        }
        let range = Some(gpa..gpa.wrapping_add(len));
        let located = self
            .locate(gpa, len)
            .map_err(|error| self.operation_error(operation, range.clone(), error))?;
        let Some(backing) = located.region.backing() else {
            return Err(self.operation_error(operation, range, out_of_range(gpa)));
        };
        let write = !matches!(
            operation,
            GuestMemoryOperation::Read | GuestMemoryOperation::Probe
        );
        let region_base = gpa - located.offset;
        backing
            .check_access(located.offset, len, write)
            .map_err(|error| {
                let error = match error.gpa() {
                    Some(address) => {
                        let translated = region_base.wrapping_add(address);
                        error.with_gpa(translated)
                    }
                    None => error,
                };
                self.operation_error(operation, range, error)
            })
    }

    /// Reads `len` bytes at `gpa` into a new vector, for reads too large to allocate without
    /// thinking: the range is checked first ([`Self::check_access`]), so a read that cannot
    /// succeed fails before any allocation; then the vector is allocated (a failure is an
    /// error, not an abort) and filled.
    pub fn read_to_vec(&self, gpa: u64, len: usize) -> Result<Vec<u8>, crate::ReadToVecError> {
        self.check_access(gpa, len as u64, GuestMemoryOperation::Read)?;
        let mut data: Vec<u8> = Vec::new();
        data.try_reserve_exact(len)
            .map_err(|_| crate::ReadToVecError::Allocation { size: len })?;
        // SAFETY: the vector's spare capacity holds `len` bytes, valid for writing.
        unsafe { self.read_ptr(gpa, data.as_mut_ptr(), len) }?;
        // SAFETY: the read succeeded, so it wrote all `len` bytes of the spare capacity.
        unsafe { data.set_len(len) };
        Ok(data)
    }

    /// Copies `src` to `gpa`. Empty writes always succeed.
    #[inline]
    pub fn write_at(&self, gpa: u64, src: &[u8]) -> Result<(), GuestMemoryError> {
        // SAFETY: `src` is a live buffer of that length.
        unsafe { self.write_ptr(gpa, src.as_ptr(), src.len()) }
    }

    /// Copies `src`, which other threads may modify concurrently, to `gpa`.
    #[inline]
    pub fn write_from_atomic(&self, gpa: u64, src: &[AtomicU8]) -> Result<(), GuestMemoryError> {
        // SAFETY: atomic bytes may be read through a raw pointer.
        unsafe { self.write_ptr(gpa, src.as_ptr().cast::<u8>(), src.len()) }
    }

    /// Copies `len` bytes from the raw buffer `src` to `gpa`.
    ///
    /// # Safety
    /// `src` is valid for reading `len` bytes for the duration of the call.
    #[inline]
    pub unsafe fn write_ptr(
        &self,
        gpa: u64,
        src: *const u8,
        len: usize,
    ) -> Result<(), GuestMemoryError> {
        if len == 0 {
            return Ok(());
        }
        self.write_raw(gpa, src, len).map_err(|error| {
            self.operation_error(
                GuestMemoryOperation::Write,
                Some(gpa..gpa.wrapping_add(len as u64)),
                error,
            )
        })
    }

    /// Sets `len` bytes at `gpa` to `val`. Empty fills always succeed.
    #[inline]
    pub fn fill_at(&self, gpa: u64, val: u8, len: usize) -> Result<(), GuestMemoryError> {
        if len == 0 {
            return Ok(());
        }
        self.fill_raw(gpa, val, len).map_err(|error| {
            self.operation_error(
                GuestMemoryOperation::Fill,
                Some(gpa..gpa.wrapping_add(len as u64)),
                error,
            )
        })
    }

    /// Reads a `T` at `gpa`: single-copy atomic when `T` is 1, 2, 4 or 8 bytes and `gpa` is
    /// naturally aligned.
    #[inline]
    pub fn read_plain<T: FromBytes + Immutable + KnownLayout>(
        &self,
        gpa: u64,
    ) -> Result<T, GuestMemoryError> {
        let len = size_of::<T>();
        if len == 0 {
            return Ok(T::new_zeroed());
        }
        self.ranged(
            GuestMemoryOperation::Read,
            gpa,
            len as u64,
            false,
            // SAFETY: the source is reserved VA of the backing (faults are recovered).
            |source| unsafe { guarded::read::<T>(source) },
            |backing, address| {
                let mut value = T::new_zeroed();
                // SAFETY: `value` is a live `T` of `len` bytes; any bytes are a valid `T`.
                unsafe {
                    backing.read_fallback(address, std::ptr::from_mut(&mut value).cast::<u8>(), len)
                }?;
                Ok(value)
            },
        )
    }

    /// Writes `value` at `gpa`: single-copy atomic when `T` is 1, 2, 4 or 8 bytes and `gpa` is
    /// naturally aligned.
    #[inline]
    pub fn write_plain<T: IntoBytes + Immutable + KnownLayout>(
        &self,
        gpa: u64,
        value: &T,
    ) -> Result<(), GuestMemoryError> {
        let len = size_of::<T>();
        if len == 0 {
            return Ok(());
        }
        self.ranged(
            GuestMemoryOperation::Write,
            gpa,
            len as u64,
            true,
            // SAFETY: the destination is reserved VA of the backing (faults are recovered).
            |destination| unsafe { guarded::write(destination, value) },
            // SAFETY: the bytes of `value` are valid for `len` bytes.
            |backing, address| unsafe {
                backing.write_fallback(address, value.as_bytes().as_ptr(), len)
            },
        )
    }

    /// Atomically replaces the `T` at `gpa` with `new` if it equals `current` (sequentially
    /// consistent).
    ///
    /// Returns `Ok(Ok(new))` when the swap happened and `Ok(Err(observed))` otherwise. `T` must
    /// be 1, 2, 4 or 8 bytes long and aligned to its size (checked at compile time); `gpa`
    /// alignment is not checked (a misaligned target is a slow split lock on x86-64). A
    /// read-only page fails even when the comparison would fail.
    #[inline]
    pub fn compare_exchange<T: IntoBytes + FromBytes + Immutable + KnownLayout + Copy>(
        &self,
        gpa: u64,
        current: T,
        new: T,
    ) -> Result<Result<T, T>, GuestMemoryError> {
        const {
            assert!(
                matches!(size_of::<T>(), 1 | 2 | 4 | 8)
                    && std::mem::align_of::<T>() >= size_of::<T>(),
                "compare_exchange needs a type of 1, 2, 4 or 8 bytes aligned to its size"
            )
        };
        self.ranged(
            GuestMemoryOperation::CompareExchange,
            gpa,
            size_of::<T>() as u64,
            true,
            // SAFETY: the destination is reserved VA of the backing (faults are recovered) and
            // `T` has a supported size (checked above).
            move |destination| unsafe { guarded::compare_exchange(destination, current, new) },
            |backing, address| {
                let mut observed = current;
                if backing.compare_exchange_fallback(
                    address,
                    observed.as_mut_bytes(),
                    new.as_bytes(),
                )? {
                    Ok(Ok(new))
                } else {
                    Ok(Err(observed))
                }
            },
        )
    }

    /// Whether the byte at `gpa` can be read (a 1-byte read through the full protocol).
    pub fn probe_gpa_readable(&self, gpa: u64) -> Result<(), GuestMemoryErrorKind> {
        self.read_plain::<u8>(gpa)
            .map(drop)
            .map_err(|error| error.kind())
    }

    /// Whether the byte at `gpa` can be written, without changing it (a compare-exchange of 0
    /// with 0; a mismatch still counts as writable).
    pub fn probe_gpa_writable(&self, gpa: u64) -> Result<(), GuestMemoryErrorKind> {
        self.compare_exchange::<u8>(gpa, 0, 0)
            .map(drop)
            .map_err(|error| error.kind())
    }
}
