//! The reservation itself: creation, placement of memory into it, and maintenance operations.
//!
//! Every placement is a fixed-address `mmap` inside the reservation, so it atomically replaces
//! whatever was there and never leaves a hole. Returning a range to the
//! inaccessible state is a placement too (a fresh `PROT_NONE` private anonymous mapping); only
//! dropping the [`SparseMapping`] gives the address space back to the OS.
//!
//! Which backing `decommit` frees, per kind of placement:
//! * private anonymous memory (`alloc`, `map_zero`, private `mmap`): `madvise(MADV_DONTNEED)`; the
//!   pages are freed and the next access sees zeros;
//! * a shared view of a shmem object (memfd, tmpfs file, shared `/dev/zero`) placed through this
//!   mapping: `madvise(MADV_REMOVE)`, which punches a hole in the object, so the memory is really
//!   freed and every view of it, in any process, reads zeros. If the view's descriptor was not
//!   writable (`EACCES`) or the object refuses hole punching, only the local page tables are
//!   dropped (`MADV_DONTNEED`), and the contents survive;
//! * a shared view of any other file: `madvise(MADV_DONTNEED)` only drops the local page tables;
//!   the file contents survive (a hole is never punched in an ordinary file).
//!
//! The mapping tracks which ranges hold shared shmem views (module `shmem_views`); placements and
//! `decommit` hold a small lock while they call the kernel, so the record always matches what
//! the kernel holds.

// Unsafe code: the reservation is made and changed with mmap/mprotect/madvise on raw addresses.
#![allow(unsafe_code)]

use crate::shmem_views::ShmemViews;
use std::ffi::c_void;
use std::ffi::CString;
use std::io;
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU8;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::sync::MutexGuard;

/// The literal 4 KiB used by the alignment rule of `new` (not the OS page size).
const SMALL_ALIGNMENT: usize = 4096;
const TWO_MIB: usize = 2 << 20;
const ONE_GIB: usize = 1 << 30;

/// `prctl` option and sub-option that label anonymous VMAs (Linux 5.17+).
const PR_SET_VMA: libc::c_int = 0x53564d41;
const PR_SET_VMA_ANON_NAME: libc::c_ulong = 0;

/// A reserved range of virtual address space into which memory can be placed page by page.
///
/// All methods take `&self`; the object is `Send + Sync`. Dropping it unmaps the whole
/// reservation: the owner must make sure no access through it is still in flight.
#[derive(Debug)]
pub struct SparseMapping {
    address: NonNull<c_void>,
    len: usize,
    shmem_views: Mutex<ShmemViews>,
}

// SAFETY: the object only holds the address of a reservation that it owns exclusively and that
// lives until drop; every operation on it is a system call or a guarded access, which are
// thread-safe, and the only mutable state (the shmem record) is behind a mutex.
unsafe impl Send for SparseMapping {}
// SAFETY: as above; concurrent calls through `&self` are serialised by the kernel or the mutex.
unsafe impl Sync for SparseMapping {}

/// `offset..offset + len` is not a page-aligned range inside a reservation of `reserved` bytes
/// (or is empty where a range is needed): an `InvalidInput` error that says so.
fn invalid_range(offset: usize, len: usize, reserved: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "offset {offset:#x} and length {len:#x} do not name a non-empty page-aligned range \
             inside the {reserved:#x}-byte reservation: use multiples of 4 KiB that end at or \
             before {reserved:#x}"
        ),
    )
}

fn overflow_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "length and alignment combination causes overflow",
    )
}

/// The alignment `new` gives a reservation of `len` bytes.
fn alignment_for(len: usize) -> usize {
    if len < TWO_MIB {
        SMALL_ALIGNMENT
    } else if len < ONE_GIB {
        TWO_MIB
    } else {
        ONE_GIB
    }
}

/// Whether `fd` is a regular file of a shmem filesystem (memfd, tmpfs), whose pages
/// `MADV_REMOVE` frees.
fn is_shmem_file(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: `stat` and `statfs` are plain-old-data structures for which all-zero is valid.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is a valid open descriptor (borrowed) and `stat` is a valid out pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) } != 0
        || (stat.st_mode & libc::S_IFMT) != libc::S_IFREG
    {
        return false;
    }
    // SAFETY: as above.
    let mut statfs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is a valid open descriptor and `statfs` is a valid out pointer.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut statfs) } != 0 {
        return false;
    }
    // `f_type` and the magic constants are i64 on glibc but u64 on musl: compare them as the
    // 32-bit magic numbers they are.
    i128::from(statfs.f_type) == i128::from(libc::TMPFS_MAGIC)
}

impl SparseMapping {
    /// The OS page size, queried once and cached. Placement operations validate against it.
    pub fn page_size() -> usize {
        static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);
        let cached = PAGE_SIZE.load(Ordering::Relaxed);
        if cached != 0 {
            return cached;
        }
        // SAFETY: `sysconf` has no preconditions.
        let queried = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page_size = usize::try_from(queried)
            .ok()
            .filter(|size| size.is_power_of_two())
            .unwrap_or(SMALL_ALIGNMENT);
        PAGE_SIZE.store(page_size, Ordering::Relaxed);
        page_size
    }

    /// Reserves at least `len` bytes of inaccessible address space.
    ///
    /// The length is rounded up to a multiple of an alignment chosen from it (below 2 MiB: 4 KiB,
    /// below 1 GiB: 2 MiB, otherwise 1 GiB) and the base is aligned to it. Installs the
    /// process-wide fault handler first, even if the reservation then fails.
    pub fn new(len: usize) -> io::Result<Self> {
        trycopy::initialize_try_copy();
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "length must be greater than 0",
            ));
        }
        let alignment = alignment_for(len);
        let rounded_len =
            len.checked_add(alignment - 1).ok_or_else(overflow_error)? & !(alignment - 1);
        let reserve_len = rounded_len
            .checked_add(alignment - SMALL_ALIGNMENT)
            .ok_or_else(overflow_error)?;

        // SAFETY: a new anonymous, inaccessible mapping at an address of the kernel's choosing
        // does not affect any existing memory.
        let reserved = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserve_len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if reserved == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let reserved_start = reserved as usize;
        let aligned_start = (reserved_start + alignment - 1) & !(alignment - 1);
        let head = aligned_start - reserved_start;
        let tail = reserve_len - head - rounded_len;

        let trim = |start: usize, len: usize| -> io::Result<()> {
            if len == 0 {
                return Ok(());
            }
            // SAFETY: the range lies inside the reservation made above, which nothing else
            // uses yet.
            if unsafe { libc::munmap(start as *mut c_void, len) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        };
        if let Err(err) =
            trim(reserved_start, head).and_then(|()| trim(aligned_start + rounded_len, tail))
        {
            // SAFETY: releases the whole (possibly already partly released) reservation made
            // above; munmap of unmapped pages inside it is harmless.
            unsafe { libc::munmap(reserved, reserve_len) };
            return Err(err);
        }

        let address = NonNull::new(aligned_start as *mut c_void)
            .ok_or_else(|| io::Error::other("the kernel returned a null reservation"))?;
        Ok(Self {
            address,
            len: rounded_len,
            shmem_views: Mutex::new(ShmemViews::default()),
        })
    }

    /// The base of the reservation (aligned as `new` describes).
    pub fn as_ptr(&self) -> *mut c_void {
        self.address.as_ptr()
    }

    /// The reserved length in bytes (after rounding).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a reservation is never empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the reservation lives in this process (always true on Linux).
    pub fn is_local(&self) -> bool {
        true
    }

    /// Checks that `offset..offset + len` is page-aligned and inside the reservation.
    fn validate_offset_len(&self, offset: usize, len: usize) -> io::Result<usize> {
        let invalid = || invalid_range(offset, len, self.len);
        let end = offset.checked_add(len).ok_or_else(invalid)?;
        let page_mask = Self::page_size() - 1;
        if offset & page_mask != 0 || end & page_mask != 0 || end > self.len {
            return Err(invalid());
        }
        Ok(end)
    }

    /// The address of `offset` after checking that `offset..offset + len` is a non-empty,
    /// page-aligned range inside the reservation; otherwise the `InvalidInput` error of
    /// [`invalid_range`].
    pub(crate) fn checked_pages(&self, offset: usize, len: usize) -> io::Result<*mut u8> {
        if len == 0 {
            return Err(invalid_range(offset, len, self.len));
        }
        self.validate_offset_len(offset, len)?;
        Ok(self.address_at(offset).cast())
    }

    fn address_at(&self, offset: usize) -> *mut c_void {
        // The offset has been validated to lie within (or at the end of) the reservation.
        self.address
            .as_ptr()
            .cast::<u8>()
            .wrapping_add(offset)
            .cast()
    }

    fn lock_views(&self) -> MutexGuard<'_, ShmemViews> {
        // A panic while holding the lock cannot leave the record half-changed in a way that
        // matters more than losing the poison flag.
        self.shmem_views
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Places a mapping over a validated range and updates the shmem record.
    ///
    /// # Safety
    /// `prot` and `flags` must not make the memory unreleasable or otherwise break the
    /// reservation's invariants (e.g. `MAP_LOCKED`, `MAP_GROWSDOWN`).
    unsafe fn place(
        &self,
        offset: usize,
        len: usize,
        prot: i32,
        flags: i32,
        fd: Option<BorrowedFd<'_>>,
        file_offset: i64,
    ) -> io::Result<()> {
        let end = self.validate_offset_len(offset, len)?;
        let is_shared_shmem_view = match fd {
            Some(fd) => {
                (flags & (libc::MAP_SHARED | libc::MAP_SHARED_VALIDATE)) != 0 && is_shmem_file(fd)
            }
            None => false,
        };
        let raw_fd = fd.map_or(-1, |fd| fd.as_raw_fd());
        let mut views = self.lock_views();
        // SAFETY: the target range lies inside the reservation this object owns (validated
        // above), so the fixed-address replacement only touches our own address space; the
        // caller vouches for `prot` and `flags`.
        let placed = unsafe {
            libc::mmap(
                self.address_at(offset),
                len,
                prot,
                flags | libc::MAP_FIXED,
                raw_fd,
                file_offset,
            )
        };
        let result = if placed == libc::MAP_FAILED {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        };
        // Whatever was recorded there is gone (a failed fixed mmap may also have removed it).
        views.remove(offset..end);
        if result.is_ok() && is_shared_shmem_view {
            views.insert(offset..end);
        }
        result
    }

    /// Places private, zeroed, read-write anonymous memory at `offset..offset + len`.
    pub fn alloc(&self, offset: usize, len: usize) -> io::Result<()> {
        // SAFETY: plain private anonymous read-write memory.
        unsafe {
            self.place(
                offset,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                None,
                0,
            )
        }
    }

    /// Places read-only zero pages at `offset..offset + len` (reads return zero, writes fault).
    pub fn map_zero(&self, offset: usize, len: usize) -> io::Result<()> {
        // SAFETY: plain private anonymous read-only memory.
        unsafe {
            self.place(
                offset,
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                None,
                0,
            )
        }
    }

    /// Places a shared view of `file_mapping` starting at `file_offset` at
    /// `offset..offset + len`, read-only or read-write.
    ///
    /// Touching the view beyond the end of the file raises SIGBUS, which the guarded accessors
    /// turn into an error.
    pub fn map_file(
        &self,
        offset: usize,
        len: usize,
        file_mapping: impl AsFd,
        file_offset: u64,
        writable: bool,
    ) -> io::Result<()> {
        let file_offset =
            i64::try_from(file_offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a plain shared file view.
        unsafe {
            self.place(
                offset,
                len,
                prot,
                libc::MAP_SHARED,
                Some(file_mapping.as_fd()),
                file_offset,
            )
        }
    }

    /// Places a shared view of `file_mapping` with no access at all: the pages are there (a
    /// userfaultfd or dirty-tracking observer may register them) but any access faults until
    /// [`SparseMapping::set_writable`] opens them up.
    pub fn map_file_inaccessible(
        &self,
        offset: usize,
        len: usize,
        file_mapping: impl AsFd,
        file_offset: u64,
    ) -> io::Result<()> {
        let file_offset =
            i64::try_from(file_offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: a plain shared file view without protection: no flag that breaks the
        // reservation.
        unsafe {
            self.place(
                offset,
                len,
                libc::PROT_NONE,
                libc::MAP_SHARED,
                Some(file_mapping.as_fd()),
                file_offset,
            )
        }
    }

    /// Places a view of `fd` with caller-chosen protection and flags (`MAP_FIXED` is added).
    ///
    /// # Safety
    /// `flags` must not make the memory unreleasable or break the reservation (e.g.
    /// `MAP_LOCKED`, `MAP_GROWSDOWN`, `MAP_FIXED_NOREPLACE`).
    pub unsafe fn mmap(
        &self,
        offset: usize,
        len: usize,
        prot: i32,
        flags: i32,
        fd: impl AsFd,
        file_offset: i64,
    ) -> io::Result<()> {
        // SAFETY: the caller vouches for `prot` and `flags`.
        unsafe { self.place(offset, len, prot, flags, Some(fd.as_fd()), file_offset) }
    }

    /// Places anonymous memory with caller-chosen protection and flags (`MAP_FIXED` and
    /// `MAP_ANONYMOUS` are added).
    ///
    /// # Safety
    /// As [`SparseMapping::mmap`].
    pub unsafe fn mmap_anonymous(
        &self,
        offset: usize,
        len: usize,
        prot: i32,
        flags: i32,
    ) -> io::Result<()> {
        // SAFETY: the caller vouches for `prot` and `flags`.
        unsafe { self.place(offset, len, prot, flags | libc::MAP_ANONYMOUS, None, 0) }
    }

    /// Returns `offset..offset + len` to the inaccessible reserved state.
    ///
    /// A valid range that holds no placement (or only partly) is fine. An empty or invalid range
    /// is an `InvalidInput` error. If the kernel cannot create the replacement mapping (resource
    /// exhaustion) the OS error is returned (upstream panics).
    pub fn unmap(&self, offset: usize, len: usize) -> io::Result<()> {
        if len == 0 {
            return Err(invalid_range(offset, len, self.len));
        }
        // SAFETY: a fresh inaccessible private anonymous mapping, the reservation's own state.
        unsafe {
            self.place(
                offset,
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                None,
                0,
            )
        }
    }

    /// Makes `offset..offset + len` read-write (`allow_writes`) or read-only (`mprotect`).
    ///
    /// Applied to inaccessible reserved pages this makes them accessible anonymous memory.
    pub fn set_writable(&self, offset: usize, len: usize, allow_writes: bool) -> io::Result<()> {
        self.validate_offset_len(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let prot = if allow_writes {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: the range lies inside our own reservation; changing its protection cannot
        // affect memory owned by anyone else.
        if unsafe { libc::mprotect(self.address_at(offset), len, prot) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Validates the range; memory is populated on first touch on Linux, so nothing else happens.
    pub fn commit(&self, offset: usize, len: usize) -> io::Result<()> {
        self.validate_offset_len(offset, len)?;
        Ok(())
    }

    /// Frees the physical pages of `offset..offset + len`; the range stays accessible.
    ///
    /// Private memory reads back as zeros; a shared view of a memfd has its pages punched out of
    /// the object (every view reads zeros). See the module documentation for the details.
    pub fn decommit(&self, offset: usize, len: usize) -> io::Result<()> {
        let end = self.validate_offset_len(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let views = self.lock_views();
        for piece in views.pieces(offset..end) {
            let piece_len = piece.range.end - piece.range.start;
            if piece.is_shmem {
                match self.madvise(piece.range.start, piece_len, libc::MADV_REMOVE) {
                    Ok(()) => continue,
                    Err(err)
                        if matches!(
                            err.raw_os_error(),
                            Some(libc::EACCES | libc::EOPNOTSUPP | libc::EINVAL)
                        ) => {}
                    Err(err) => return Err(err),
                }
            }
            self.madvise(piece.range.start, piece_len, libc::MADV_DONTNEED)?;
        }
        Ok(())
    }

    /// Marks `offset..offset + len` eligible for transparent huge pages (`MADV_HUGEPAGE`).
    pub fn madvise_hugepage(&self, offset: usize, len: usize) -> io::Result<()> {
        self.validate_offset_len(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        self.madvise(offset, len, libc::MADV_HUGEPAGE)
    }

    fn madvise(&self, offset: usize, len: usize, advice: i32) -> io::Result<()> {
        // SAFETY: the range lies inside our own reservation (validated by the caller); none of
        // the advices used here can affect memory outside it.
        if unsafe { libc::madvise(self.address_at(offset), len, advice) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Labels the anonymous VMAs of `offset..offset + len` so that they show as `[anon:name]` in
    /// `/proc/<pid>/maps`.
    ///
    /// Never fails: an invalid range, a name the kernel refuses, a file-backed range or a kernel
    /// without the feature are silently ignored. The label belongs to the VMAs present now; a
    /// later placement over part of the range creates unnamed VMAs.
    pub fn set_name(&self, offset: usize, len: usize, name: &str) {
        if len == 0 || self.validate_offset_len(offset, len).is_err() {
            return;
        }
        let Ok(name) = CString::new(name) else {
            return;
        };
        // SAFETY: the range lies inside our own reservation and `name` is a valid NUL-terminated
        // string that outlives the call (the kernel copies it). The result is ignored on purpose.
        unsafe {
            libc::prctl(
                PR_SET_VMA,
                PR_SET_VMA_ANON_NAME,
                self.address_at(offset) as libc::c_ulong,
                len as libc::c_ulong,
                name.as_ptr() as libc::c_ulong,
            )
        };
    }

    /// The bytes `start..start + len` as atomic bytes.
    ///
    /// # Panics
    /// If the range is outside the reservation. Touching an inaccessible page through the slice
    /// is an unrecoverable fault: use the guarded accessors instead.
    pub fn atomic_slice(&self, start: usize, len: usize) -> &[AtomicU8] {
        assert!(self.is_local(), "the mapping is not in this process");
        let in_bounds = start <= self.len && self.len - start >= len;
        assert!(
            in_bounds,
            "range {start:#x}+{len:#x} is outside the mapping of {:#x} bytes",
            self.len
        );
        // SAFETY: the range lies inside the reservation, which stays reserved for the lifetime
        // of `self`; atomic bytes may alias any memory.
        unsafe { std::slice::from_raw_parts(self.address_at(start).cast::<AtomicU8>(), len) }
    }
}

impl Drop for SparseMapping {
    fn drop(&mut self) {
        // SAFETY: the reservation is owned by this object and nothing can use it after drop.
        // A failure cannot be reported from drop and is ignored (the VA then simply leaks).
        unsafe { libc::munmap(self.address.as_ptr(), self.len) };
    }
}
