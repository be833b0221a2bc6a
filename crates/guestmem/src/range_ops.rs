//! Operations of [`GuestMemory`] on paged ranges and page lists: each per-page chunk
//! of the range runs the full access protocol; the first failing chunk stops the operation
//! (earlier chunks stay applied). Errors carry the operation and the precise GPA, no range.

// Unsafe code: each page of a paged range is accessed through a backing's raw mapping.
#![allow(unsafe_code)]

use crate::error::Cause;
use crate::error::GuestMemoryOperation;
use crate::paged_range::PageChunk;
use crate::GuestMemory;
use crate::GuestMemoryBackingError;
use crate::GuestMemoryError;
use crate::GuestMemoryErrorKind;
use crate::PagedRange;
use crate::PAGE_SIZE64;
use std::sync::atomic::AtomicU8;

fn invalid_gpn(gpn: u64) -> GuestMemoryBackingError {
    GuestMemoryBackingError::at(
        GuestMemoryErrorKind::OutOfRange,
        None,
        Cause::InvalidGpn(gpn),
    )
}

fn chunk_gpa(chunk: &PageChunk) -> Result<u64, GuestMemoryBackingError> {
    chunk.gpa().map_err(|invalid| invalid_gpn(invalid.0))
}

impl GuestMemory {
    /// Runs `per_chunk(gpa, offset_in_range, len)` on every chunk of `range`.
    fn for_each_chunk(
        &self,
        operation: GuestMemoryOperation,
        range: &PagedRange<'_>,
        mut per_chunk: impl FnMut(u64, usize, usize) -> Result<(), GuestMemoryBackingError>,
    ) -> Result<(), GuestMemoryError> {
        let mut position = 0;
        for chunk in range.chunks() {
            chunk_gpa(&chunk)
                .and_then(|gpa| per_chunk(gpa, position, chunk.len))
                .map_err(|error| self.operation_error(operation, None, error))?;
            position += chunk.len;
        }
        Ok(())
    }

    fn check_data_len(range: &PagedRange<'_>, data_len: usize) {
        assert_eq!(
            range.len(),
            data_len,
            "the data length {data_len:#x} does not match the paged range length {:#x}",
            range.len()
        );
    }

    /// Reads `range` into `data`.
    ///
    /// # Panics
    /// If `data.len() != range.len()`.
    pub fn read_range(
        &self,
        range: &PagedRange<'_>,
        data: &mut [u8],
    ) -> Result<(), GuestMemoryError> {
        Self::check_data_len(range, data.len());
        let dest = data.as_mut_ptr();
        self.for_each_chunk(GuestMemoryOperation::Read, range, |gpa, position, len| {
            // `position + len <= data.len()` because the chunks partition the range.
            self.read_raw(gpa, dest.wrapping_add(position), len)
        })
    }

    /// Reads `range` into atomic bytes.
    ///
    /// # Panics
    /// If `data.len() != range.len()`.
    pub fn read_range_to_atomic(
        &self,
        range: &PagedRange<'_>,
        data: &[AtomicU8],
    ) -> Result<(), GuestMemoryError> {
        Self::check_data_len(range, data.len());
        let dest = data.as_ptr().cast::<u8>().cast_mut();
        self.for_each_chunk(GuestMemoryOperation::Read, range, |gpa, position, len| {
            self.read_raw(gpa, dest.wrapping_add(position), len)
        })
    }

    /// Writes `data` to `range`.
    ///
    /// # Panics
    /// If `data.len() != range.len()`.
    pub fn write_range(&self, range: &PagedRange<'_>, data: &[u8]) -> Result<(), GuestMemoryError> {
        Self::check_data_len(range, data.len());
        let src = data.as_ptr();
        self.for_each_chunk(GuestMemoryOperation::Write, range, |gpa, position, len| {
            self.write_raw(gpa, src.wrapping_add(position), len)
        })
    }

    /// Writes atomic bytes to `range`.
    ///
    /// # Panics
    /// If `data.len() != range.len()`.
    pub fn write_range_from_atomic(
        &self,
        range: &PagedRange<'_>,
        data: &[AtomicU8],
    ) -> Result<(), GuestMemoryError> {
        Self::check_data_len(range, data.len());
        let src = data.as_ptr().cast::<u8>();
        self.for_each_chunk(GuestMemoryOperation::Write, range, |gpa, position, len| {
            self.write_raw(gpa, src.wrapping_add(position), len)
        })
    }

    /// Fills `range` with `val`.
    pub fn fill_range(&self, range: &PagedRange<'_>, val: u8) -> Result<(), GuestMemoryError> {
        self.for_each_chunk(GuestMemoryOperation::Fill, range, |gpa, _, len| {
            self.fill_raw(gpa, val, len)
        })
    }

    /// Zeroes `range`.
    pub fn zero_range(&self, range: &PagedRange<'_>) -> Result<(), GuestMemoryError> {
        self.fill_range(range, 0)
    }

    /// Checks that the first byte of every page in `gpns` can be read.
    pub fn probe_gpns(&self, gpns: &[u64]) -> Result<(), GuestMemoryError> {
        for &gpn in gpns {
            gpn.checked_mul(PAGE_SIZE64)
                .ok_or_else(|| invalid_gpn(gpn))
                .and_then(|gpa| self.read_byte(gpa).map(drop))
                .map_err(|error| self.operation_error(GuestMemoryOperation::Probe, None, error))?;
        }
        Ok(())
    }

    /// Checks that the first byte of every chunk of `range` can be read.
    pub fn probe_gpn_readable_range(&self, range: &PagedRange<'_>) -> Result<(), GuestMemoryError> {
        self.for_each_chunk(GuestMemoryOperation::Probe, range, |gpa, _, _| {
            self.read_byte(gpa).map(drop)
        })
    }

    /// Checks that the first byte of every chunk of `range` can be written, without changing
    /// memory even with a concurrent writer: the byte is read, then compare-exchanged with
    /// itself (upstream writes the read byte back, which can clobber a concurrent write).
    pub fn probe_gpn_writable_range(&self, range: &PagedRange<'_>) -> Result<(), GuestMemoryError> {
        self.for_each_chunk(GuestMemoryOperation::Probe, range, |gpa, _, _| {
            let value = self.read_byte(gpa)?;
            self.compare_exchange_byte(gpa, value).map(drop)
        })
    }

    /// A 1-byte read through the full protocol.
    pub(crate) fn read_byte(&self, gpa: u64) -> Result<u8, GuestMemoryBackingError> {
        let mut value = 0u8;
        self.read_raw(gpa, &mut value, 1)?;
        Ok(value)
    }

    /// A 1-byte compare-exchange of `value` with itself through the full protocol.
    fn compare_exchange_byte(&self, gpa: u64, value: u8) -> Result<bool, GuestMemoryBackingError> {
        self.run_access(
            gpa,
            1,
            true,
            |destination| {
                // SAFETY: the destination is reserved VA of the backing (faults are recovered).
                unsafe { crate::guarded::compare_exchange::<u8>(destination, value, value) }
                    .map(|result| result.is_ok())
            },
            |backing, address| {
                let mut current = [value];
                backing.compare_exchange_fallback(address, &mut current, &[value])
            },
        )
    }

    /// The region offset check used by locking: `gpn` as a GPA.
    pub(crate) fn gpn_to_gpa(gpn: u64) -> Result<u64, GuestMemoryBackingError> {
        gpn.checked_mul(PAGE_SIZE64).ok_or_else(|| invalid_gpn(gpn))
    }
}
