//! Vectored copies: many guest ranges, each to or from its own buffer, in one call
//! ([`GuestMemory::read_v`], [`GuestMemory::write_v`] and their raw-pointer forms).
//!
//! The entries are copied in order, each exactly as `read_at`/`write_at` would copy it (an empty
//! entry always succeeds). The first entry that fails stops the call: its index and its error
//! (which names the failing GPA) are returned. Every entry before it has been copied completely;
//! the failing entry may have been copied in part (as a failing `read_at`/`write_at` may have
//! touched any part of its range); the entries after it are not touched.

// Unsafe code: the raw forms take the callers' buffers as pointers (memory shared with
// JavaScript is neither a Rust slice nor atomic).
#![allow(unsafe_code)]

use crate::GuestMemory;
use crate::GuestMemoryError;
use std::fmt;

/// One entry of a raw vectored copy: `len` bytes at `gpa`, to or from `buffer`.
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub struct VectoredEntry {
    /// The guest physical address.
    pub gpa: u64,
    /// The caller's buffer (written by a read, read by a write).
    pub buffer: *mut u8,
    /// The number of bytes.
    pub len: usize,
}

/// A vectored copy stopped at entry `index` (the entries before it were copied).
#[derive(Debug)]
pub struct VectoredError {
    /// The failing entry's position in the list.
    pub index: usize,
    /// Its error, as `read_at`/`write_at` of that entry would return it.
    pub error: GuestMemoryError,
}

impl fmt::Display for VectoredError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "entry {} failed (the entries before it were copied): {}",
            self.index, self.error
        )
    }
}

impl std::error::Error for VectoredError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl GuestMemory {
    /// Reads each entry's range of guest memory into its buffer, in order; see the module
    /// documentation for what a failure leaves.
    pub fn read_v(&self, entries: &mut [(u64, &mut [u8])]) -> Result<(), VectoredError> {
        for (index, (gpa, buffer)) in entries.iter_mut().enumerate() {
            self.read_at(*gpa, buffer)
                .map_err(|error| VectoredError { index, error })?;
        }
        Ok(())
    }

    /// Writes each entry's buffer to its guest range, in order; see the module documentation
    /// for what a failure leaves.
    pub fn write_v(&self, entries: &[(u64, &[u8])]) -> Result<(), VectoredError> {
        for (index, (gpa, buffer)) in entries.iter().enumerate() {
            self.write_at(*gpa, buffer)
                .map_err(|error| VectoredError { index, error })?;
        }
        Ok(())
    }

    /// [`GuestMemory::read_v`] into raw buffers.
    ///
    /// # Safety
    /// Each entry's buffer is valid for writing `len` bytes for the duration of the call.
    pub unsafe fn read_v_ptr(&self, entries: &[VectoredEntry]) -> Result<(), VectoredError> {
        for (index, entry) in entries.iter().enumerate() {
            // SAFETY: the caller's contract, for this entry.
            unsafe { self.read_ptr(entry.gpa, entry.buffer, entry.len) }
                .map_err(|error| VectoredError { index, error })?;
        }
        Ok(())
    }

    /// [`GuestMemory::write_v`] from raw buffers.
    ///
    /// # Safety
    /// Each entry's buffer is valid for reading `len` bytes for the duration of the call.
    pub unsafe fn write_v_ptr(&self, entries: &[VectoredEntry]) -> Result<(), VectoredError> {
        for (index, entry) in entries.iter().enumerate() {
            // SAFETY: the caller's contract, for this entry.
            unsafe { self.write_ptr(entry.gpa, entry.buffer.cast_const(), entry.len) }
                .map_err(|error| VectoredError { index, error })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GuestMemoryErrorKind;

    const PAGE: usize = 4096;

    fn memory() -> GuestMemory {
        GuestMemory::allocate(16 * PAGE)
    }

    #[test]
    fn entries_are_copied_in_order_each_like_a_single_copy() {
        let memory = memory();
        let pages: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i + 1; PAGE]).collect();
        let writes: Vec<(u64, &[u8])> = pages
            .iter()
            .enumerate()
            .map(|(i, page)| ((2 * i * PAGE) as u64, page.as_slice()))
            .collect();
        memory.write_v(&writes).unwrap();
        // Overlapping entries: the later one wins, as two writes would.
        memory
            .write_v(&[(0, &[9u8; 16][..]), (8, &[7u8; 16][..]), (100, &[][..])])
            .unwrap();
        let mut first = [0u8; 32];
        let mut third = vec![0u8; PAGE];
        let mut empty = [0u8; 0];
        memory
            .read_v(&mut [
                (0, &mut first[..]),
                (4 * PAGE as u64, &mut third[..]),
                (u64::MAX, &mut empty[..]),
            ])
            .unwrap();
        assert_eq!(&first[..8], &[9; 8]);
        assert_eq!(&first[8..24], &[7; 16]);
        assert_eq!(&first[24..], &[1; 8]);
        assert_eq!(third, vec![3; PAGE]);
    }

    #[test]
    fn a_failing_entry_stops_the_copy_and_is_named() {
        let memory = memory();
        memory.fill_at(0, 0xaa, 16 * PAGE).unwrap();
        let end = memory.max_address();
        let mut a = [0u8; 8];
        let mut b = [0u8; 8];
        let mut c = [0u8; 8];
        let error = memory
            .read_v(&mut [(0, &mut a[..]), (end - 4, &mut b[..]), (8, &mut c[..])])
            .unwrap_err();
        assert_eq!(error.index, 1);
        assert_eq!(error.error.kind(), GuestMemoryErrorKind::OutOfRange);
        assert_eq!(error.error.gpa(), Some(end - 4));
        assert_eq!(a, [0xaa; 8], "the entry before was read");
        assert_eq!(c, [0; 8], "the entry after was not touched");
        assert!(error.to_string().starts_with("entry 1 failed"));
        let error = memory
            .write_v(&[(0, &[1u8; 8][..]), (8, &[2u8; 8][..]), (end, &[3u8][..])])
            .unwrap_err();
        assert_eq!(error.index, 2);
        let mut back = [0u8; 16];
        memory.read_at(0, &mut back).unwrap();
        assert_eq!(back, [[1u8; 8], [2u8; 8]].concat()[..]);
    }

    #[test]
    fn raw_entries_behave_like_slices() {
        let memory = memory();
        let mut source = vec![0x5au8; 3 * PAGE];
        let mut dest = vec![0u8; 3 * PAGE];
        let entries = |buffer: &mut Vec<u8>| -> Vec<VectoredEntry> {
            (0..3)
                .map(|i| VectoredEntry {
                    gpa: (i * 5 * PAGE) as u64,
                    buffer: buffer[i * PAGE..].as_mut_ptr(),
                    len: PAGE,
                })
                .collect()
        };
        // SAFETY: each entry lies inside its live owned buffer.
        unsafe { memory.write_v_ptr(&entries(&mut source)) }.unwrap();
        // SAFETY: as above.
        unsafe { memory.read_v_ptr(&entries(&mut dest)) }.unwrap();
        assert_eq!(dest, source);
        let mut bad = entries(&mut dest);
        bad[2].gpa = memory.max_address();
        // SAFETY: as above.
        let error = unsafe { memory.read_v_ptr(&bad) }.unwrap_err();
        assert_eq!(error.index, 2);
    }
}
