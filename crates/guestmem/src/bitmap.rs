//! Access bitmaps (cargo feature `bitmap`): per-page read and write permission bits that a
//! backing can publish, checked before every access through its mapping.
//!
//! A backing that returns [`BitmapInfo`] from
//! [`GuestMemoryAccess::access_bitmap`](crate::GuestMemoryAccess::access_bitmap) gives one bit
//! per 4 KiB page of its address space in each of two bitmaps (least significant bit first,
//! starting `bit_offset` bits into the first byte). A set bit lets the page be accessed through
//! the mapping in that direction; a clear bit makes the access ask the backing's `page_fault`
//! with `bitmap_failure = true`, which may change the bits and answer `Retry`, fail the access,
//! or send it to the fallback. The check happens once per attempt, before the guarded access;
//! a retry after a hardware fault does not check the bits again.
//!
//! The bits are read with relaxed atomic byte loads. A backing that clears a bit while accesses
//! run cannot know when every access that saw the old bit has finished: this crate has no
//! grace-period mechanism for that (docs/deviations.md).
//!
//! Without the feature none of this is compiled and the access path has no check at all.

// Unsafe code: the bitmaps are raw pointers a backing publishes, read with atomic loads.
#![allow(unsafe_code)]

use std::ptr::NonNull;
use std::sync::atomic::AtomicU8;
use std::sync::atomic::Ordering;

/// The read and write access bitmaps of a backing.
#[derive(Debug, Copy, Clone)]
pub struct BitmapInfo {
    /// The read bitmap: bit `bit_offset + page` allows reading `page`.
    pub read_bitmap: NonNull<u8>,
    /// The write bitmap: bit `bit_offset + page` allows writing `page`.
    pub write_bitmap: NonNull<u8>,
    /// The bit of the first byte that describes page 0 (0 to 7).
    pub bit_offset: u8,
}

/// The bitmaps of one region, read once when the guest memory is built.
#[derive(Debug, Copy, Clone)]
pub(crate) struct RegionBitmaps(BitmapInfo);

// SAFETY: the bitmaps are only read, with atomic byte loads, and the backing guarantees they
// stay readable from any thread for its lifetime (`GuestMemoryAccess::access_bitmap`).
unsafe impl Send for RegionBitmaps {}
// SAFETY: as above.
unsafe impl Sync for RegionBitmaps {}

impl RegionBitmaps {
    pub fn new(info: BitmapInfo) -> Self {
        Self(info)
    }

    /// The bitmaps of the view that starts `offset` bytes into this region: the bit of page
    /// `offset / 4096` becomes the view's page 0.
    pub fn advanced(&self, offset: u64) -> BitmapInfo {
        let first_bit = u64::from(self.0.bit_offset) + offset / crate::PAGE_SIZE64;
        // The byte index stays inside the bitmap the backing published for its pages.
        let bytes = (first_bit / 8) as usize;
        BitmapInfo {
            read_bitmap: advance(self.0.read_bitmap, bytes),
            write_bitmap: advance(self.0.write_bitmap, bytes),
            bit_offset: (first_bit % 8) as u8,
        }
    }

    /// The first page of `offset .. offset + len` (`len > 0`, inside the region) whose bit is
    /// clear in the read or write bitmap.
    pub fn first_denied_page(&self, offset: u64, len: u64, write: bool) -> Option<u64> {
        let bitmap = if write {
            self.0.write_bitmap
        } else {
            self.0.read_bitmap
        };
        let first = offset / crate::PAGE_SIZE64;
        let last = (offset + len - 1) / crate::PAGE_SIZE64;
        (first..=last).find(|&page| {
            let bit = u64::from(self.0.bit_offset) + page;
            // SAFETY: the backing's bitmap has a bit for every page of its address space, the
            // page lies inside it (the access was located in the region), and the bitmap stays
            // readable atomically for the backing's lifetime.
            let byte = unsafe { AtomicU8::from_ptr(bitmap.as_ptr().add((bit / 8) as usize)) };
            byte.load(Ordering::Relaxed) & (1 << (bit % 8)) == 0
        })
    }
}

fn advance(pointer: NonNull<u8>, bytes: usize) -> NonNull<u8> {
    // SAFETY: the pointer stays inside (or one past) the backing's bitmap, so it is non-null.
    unsafe { NonNull::new_unchecked(pointer.as_ptr().wrapping_add(bytes)) }
}

#[cfg(test)]
mod tests {
    use crate::BitmapInfo;
    use crate::GuestMemory;
    use crate::GuestMemoryAccess;
    use crate::GuestMemoryErrorKind;
    use crate::PageFaultAction;
    use crate::PagedRange;
    use sparse_mmap::SparseMapping;
    use std::ptr::NonNull;
    use std::sync::atomic::AtomicU8;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::sync::Mutex;

    const P: u64 = 4096;

    /// A backing over a read-write mapping of `pages` pages with separate read and write
    /// bitmaps (one byte each, from `bit_offset`), that logs every `page_fault` and answers it
    /// with `answer`.
    struct BitmapBacking {
        mapping: SparseMapping,
        read: Box<AtomicU8>,
        write: Box<AtomicU8>,
        bit_offset: u8,
        faults: Mutex<Vec<(u64, usize, bool, bool)>>,
        answer: fn(&BitmapBacking, u64) -> PageFaultAction,
    }

    impl BitmapBacking {
        fn new(pages: u64, read: u8, write: u8, bit_offset: u8) -> Self {
            let len = crate::host_offset(pages * P);
            let mapping = SparseMapping::new(len).unwrap();
            mapping.alloc(0, len).unwrap();
            Self {
                mapping,
                read: Box::new(AtomicU8::new(read)),
                write: Box::new(AtomicU8::new(write)),
                bit_offset,
                faults: Mutex::new(Vec::new()),
                answer: |_, _| PageFaultAction::Fail(crate::PageFaultError::other(Denied)),
            }
        }

        fn faults(&self) -> Vec<(u64, usize, bool, bool)> {
            self.faults.lock().unwrap().clone()
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("denied by the test bitmap")]
    struct Denied;

    // SAFETY: the mapping is reserved for the backing's lifetime; the bitmaps are boxed atomics
    // that live as long as the backing.
    unsafe impl GuestMemoryAccess for BitmapBacking {
        fn mapping(&self) -> Option<NonNull<u8>> {
            NonNull::new(self.mapping.as_ptr().cast())
        }

        fn max_address(&self) -> u64 {
            self.mapping.len() as u64
        }

        fn access_bitmap(&self) -> Option<BitmapInfo> {
            Some(BitmapInfo {
                read_bitmap: NonNull::new(self.read.as_ptr()).unwrap(),
                write_bitmap: NonNull::new(self.write.as_ptr()).unwrap(),
                bit_offset: self.bit_offset,
            })
        }

        fn page_fault(
            &self,
            address: u64,
            len: usize,
            write: bool,
            bitmap_failure: bool,
        ) -> PageFaultAction {
            self.faults
                .lock()
                .unwrap()
                .push((address, len, write, bitmap_failure));
            (self.answer)(self, address)
        }

        unsafe fn read_fallback(
            &self,
            address: u64,
            dest: *mut u8,
            len: usize,
        ) -> Result<(), crate::GuestMemoryBackingError> {
            let _ = address;
            // SAFETY: the caller guarantees `dest` is valid for `len` bytes.
            unsafe { std::ptr::write_bytes(dest, 0xfb, len) };
            Ok(())
        }
    }

    // 4 pages, bitmap 0b0101 (pages 0 and 2 accessible).
    #[test]
    fn reads_are_gated_by_the_bitmap() {
        let backing = Arc::new(BitmapBacking::new(4, 0b0101, 0b0101, 0));
        let gm = GuestMemory::new("bitmap", backing.clone());
        gm.read_plain::<[u8; 1]>(0).unwrap();
        gm.read_plain::<[u8; 1]>(P - 1).unwrap();
        assert!(backing.faults().is_empty());
        let error = gm.read_plain::<[u8; 2]>(P - 1).unwrap_err();
        assert_eq!(error.kind(), GuestMemoryErrorKind::Other);
        // The fault names the first byte of the denied page and the bytes left from there.
        assert_eq!(backing.faults(), vec![(P, 1, false, true)]);
        gm.read_plain::<[u8; 1]>(P).unwrap_err();
        gm.read_plain::<[u8; 1]>(2 * P).unwrap();
        gm.read_plain::<[u8; 4096 * 2]>(0).unwrap_err();
        assert_eq!(
            backing.faults()[2..],
            [(P, crate::host_offset(P), false, true)],
            "a read from 0 of two pages fails at page 1"
        );
    }

    #[test]
    fn writes_use_the_write_bitmap() {
        // Every page readable, only page 1 writable.
        let backing = Arc::new(BitmapBacking::new(4, 0b1111, 0b0010, 0));
        let gm = GuestMemory::new("bitmap", backing.clone());
        gm.write_at(P, &[7; 16]).unwrap();
        assert_eq!(gm.read_plain::<u8>(P).unwrap(), 7);
        assert!(gm.write_at(0, &[1]).is_err());
        assert!(gm.fill_at(2 * P - 1, 0, 2).is_err());
        assert!(gm.compare_exchange(3 * P, 0u32, 1u32).is_err());
        assert_eq!(
            backing.faults(),
            vec![
                (0, 1, true, true),
                (2 * P, 1, true, true),
                (3 * P, 4, true, true)
            ]
        );
        // Nothing was written where the bitmap refused.
        assert_eq!(gm.read_plain::<u8>(2 * P - 1).unwrap(), 0);
        assert_eq!(gm.read_plain::<u32>(3 * P).unwrap(), 0);
        // Probes follow the same bits.
        let gpns = [1, 2];
        let range = PagedRange::new(0, crate::host_offset(2 * P), &gpns).unwrap();
        gm.probe_gpn_readable_range(&range).unwrap();
        assert!(gm.probe_gpn_writable_range(&range).is_err());
    }

    #[test]
    fn bit_offset_shifts_the_pages() {
        // Page 0 is bit 3: bits 3 and 5 set → pages 0 and 2 accessible.
        let backing = Arc::new(BitmapBacking::new(4, 0b0010_1000, 0b0010_1000, 3));
        let gm = GuestMemory::new("bitmap", backing);
        gm.read_plain::<u8>(0).unwrap();
        gm.read_plain::<u8>(P).unwrap_err();
        gm.read_plain::<u8>(2 * P).unwrap();
        gm.read_plain::<u8>(3 * P).unwrap_err();
    }

    #[test]
    fn retry_after_setting_the_bit_succeeds() {
        let mut backing = BitmapBacking::new(4, 0b0001, 0b0001, 0);
        backing.answer = |backing, address| {
            let bit = 1 << (address / P);
            backing.read.fetch_or(bit, Ordering::Relaxed);
            backing.write.fetch_or(bit, Ordering::Relaxed);
            PageFaultAction::Retry
        };
        let backing = Arc::new(backing);
        let gm = GuestMemory::new("bitmap", backing.clone());
        gm.write_at(P - 2, &[1, 2, 3, 4]).unwrap();
        let mut data = [0; 4];
        gm.read_at(P - 2, &mut data).unwrap();
        assert_eq!(data, [1, 2, 3, 4]);
        assert_eq!(backing.faults(), vec![(P, 2, true, true)]);
    }

    #[test]
    fn fallback_answer_runs_the_fallback() {
        let mut backing = BitmapBacking::new(2, 0b01, 0b01, 0);
        backing.answer = |_, _| PageFaultAction::Fallback;
        let gm = GuestMemory::new("bitmap", backing);
        let mut data = [0; 3];
        gm.read_at(P - 1, &mut data).unwrap();
        assert_eq!(data, [0xfb; 3]);
    }

    #[test]
    fn subranges_see_the_shifted_bits() {
        // Pages 1 and 3 accessible; a view starting at page 1 sees its pages 0 and 2.
        let backing = Arc::new(BitmapBacking::new(4, 0b1010, 0b1010, 0));
        let gm = GuestMemory::new("bitmap", backing);
        let view = gm.subrange(P, 3 * P, false).unwrap();
        view.read_plain::<u8>(0).unwrap();
        view.read_plain::<u8>(P).unwrap_err();
        view.read_plain::<u8>(2 * P).unwrap();
        // A single-region memory with bitmaps offers no full mapping (it would bypass them).
        assert!(gm.full_mapping().is_none());
    }
}
