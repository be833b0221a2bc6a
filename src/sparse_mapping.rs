//! Binding of `sparse_mmap` and `trycopy`: `SparseMapping`, `Mappable`, the fault handler's
//! installation and status, and the test hook that faults outside our guarded routines.

use crate::args::{usize_arg, RawBytes, U64};
use crate::errors::{closed, coded_with, fault_field, hex_field, io_error, JsError};
use crate::handles::{self, Shared};
use napi_derive::napi;
use sparse_mmap::{Mappable, SparseMapping, SparseMappingError};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Arc;

/// Installs (or re-arms, when displaced) the process-wide SIGSEGV/SIGBUS handler.
#[napi]
pub fn initialize() -> &'static str {
    trycopy::initialize_try_copy();
    status_name(trycopy::rearm_handler())
}

/// `'installed' | 'displaced' | 'default' | 'not-installed'`.
#[napi]
pub fn handler_status() -> &'static str {
    status_name(trycopy::handler_status())
}

fn status_name(status: trycopy::HandlerStatus) -> &'static str {
    match status {
        trycopy::HandlerStatus::Installed => "installed",
        trycopy::HandlerStatus::Displaced => "displaced",
        trycopy::HandlerStatus::Default => "default",
        trycopy::HandlerStatus::NotInstalled => "not-installed",
    }
}

/// Test hook: a plain read of an inaccessible page, outside every guarded routine. Our handler
/// must forward it to the previous disposition, so the process dies with SIGSEGV (run it in a
/// child process).
#[napi]
pub fn test_fault_outside_guarded_region() -> Result<u32, JsError> {
    let mapping =
        SparseMapping::new(SparseMapping::page_size()).map_err(|err| io_error(&err, "mmap"))?;
    let pointer = mapping.as_ptr().cast::<u32>();
    // SAFETY: deliberately unsound in effect, never in memory safety: the page is reserved
    // PROT_NONE, so the volatile read faults before it reads anything. This function exists only
    // to show that a fault outside our routines still terminates the process.
    let value = unsafe { std::ptr::read_volatile(pointer) };
    Ok(value)
}

/// A `SparseMappingError` as a coded error: `ERR_OUT_OF_BOUNDS` or `ERR_MEMORY` with the offset
/// (relative to the start of the access, as the spec's scenarios S5, S13 and S19 count it), the
/// direction and the fault record. An access out of bounds fails before touching anything:
/// offset 0.
pub fn sparse_error(err: &SparseMappingError, is_write: bool) -> JsError {
    match err {
        SparseMappingError::Memory(memory) => coded_with(
            "ERR_MEMORY",
            err.to_string(),
            &[
                ("offset", hex_field(memory.offset() as u64)),
                ("isWrite", memory.is_write().to_string()),
                ("fault", fault_field(&memory.fault())),
            ],
        ),
        _ => coded_with(
            "ERR_OUT_OF_BOUNDS",
            err.to_string(),
            &[("offset", hex_field(0)), ("isWrite", is_write.to_string())],
        ),
    }
}

/// A reservation of virtual address space whose pages are placed and removed at runtime.
#[napi]
pub struct NativeSparseMapping {
    inner: Option<Arc<SparseMapping>>,
    handles: std::cell::RefCell<Vec<u64>>,
}

impl NativeSparseMapping {
    /// The mapping, or `ERR_CLOSED`.
    pub fn mapping(&self) -> Result<&Arc<SparseMapping>, JsError> {
        self.inner.as_ref().ok_or_else(|| closed("SparseMapping"))
    }
}

impl Drop for NativeSparseMapping {
    fn drop(&mut self) {
        handles::release(&self.handles.borrow());
    }
}

#[napi]
impl NativeSparseMapping {
    /// Reserves `len` bytes (rounded up as the spec says); installs the fault handler.
    #[napi(constructor)]
    pub fn new(len: U64) -> Result<Self, JsError> {
        let len = usize_arg(len, "len")?;
        let mapping = SparseMapping::new(len).map_err(|err| io_error(&err, "mmap"))?;
        // Creating a mapping re-arms a displaced handler (spec R5; the TypeScript layer warns).
        if trycopy::handler_status() != trycopy::HandlerStatus::Installed {
            trycopy::rearm_handler();
        }
        Ok(NativeSparseMapping {
            inner: Some(Arc::new(mapping)),
            handles: Default::default(),
        })
    }

    /// Reopens a mapping from a handle made by `toHandle()` (any thread of this process).
    #[napi(factory)]
    pub fn from_handle(id: U64) -> Result<Self, JsError> {
        match handles::lookup(id.0)? {
            Shared::SparseMapping(mapping) => Ok(NativeSparseMapping {
                inner: Some(mapping),
                handles: Default::default(),
            }),
            _ => Err(crate::errors::invalid_arg(
                "the handle is not a SparseMapping handle",
            )),
        }
    }

    /// A handle id for `fromHandle` in a worker thread.
    #[napi]
    pub fn to_handle(&self) -> Result<u64, JsError> {
        let id = handles::register(Shared::SparseMapping(self.mapping()?.clone()));
        self.handles.borrow_mut().push(id);
        Ok(id)
    }

    /// The OS page size.
    #[napi]
    pub fn page_size() -> u32 {
        SparseMapping::page_size() as u32
    }

    /// The reserved length after rounding.
    #[napi(getter)]
    pub fn length(&self) -> Result<u64, JsError> {
        Ok(self.mapping()?.len() as u64)
    }

    /// Places private zeroed read-write memory.
    #[napi]
    pub fn alloc(&self, offset: U64, len: U64) -> Result<(), JsError> {
        let (offset, len) = (usize_arg(offset, "offset")?, usize_arg(len, "len")?);
        self.mapping()?
            .alloc(offset, len)
            .map_err(|err| io_error(&err, "mmap"))
    }

    /// Places read-only zero pages.
    #[napi]
    pub fn map_zero(&self, offset: U64, len: U64) -> Result<(), JsError> {
        let (offset, len) = (usize_arg(offset, "offset")?, usize_arg(len, "len")?);
        self.mapping()?
            .map_zero(offset, len)
            .map_err(|err| io_error(&err, "mmap"))
    }

    /// Places a shared view of `mappable` at `file_offset`.
    #[napi]
    pub fn map_file(
        &self,
        offset: U64,
        len: U64,
        mappable: &NativeMappable,
        file_offset: U64,
        writable: bool,
    ) -> Result<(), JsError> {
        let (offset, len) = (usize_arg(offset, "offset")?, usize_arg(len, "len")?);
        let fd = mappable.fd()?;
        self.mapping()?
            .map_file(offset, len, fd, file_offset.0, writable)
            .map_err(|err| io_error(&err, "mmap"))
    }

    /// Returns the range to the reserved (inaccessible) state.
    #[napi]
    pub fn unmap(&self, offset: U64, len: U64) -> Result<(), JsError> {
        let (offset, len) = (usize_arg(offset, "offset")?, usize_arg(len, "len")?);
        self.mapping()?
            .unmap(offset, len)
            .map_err(|err| io_error(&err, "mmap"))
    }

    /// Validates the range (a no-op on Linux).
    #[napi]
    pub fn commit(&self, offset: U64, len: U64) -> Result<(), JsError> {
        let (offset, len) = (usize_arg(offset, "offset")?, usize_arg(len, "len")?);
        self.mapping()?
            .commit(offset, len)
            .map_err(|err| io_error(&err, "madvise"))
    }

    /// Frees the pages: private memory reads back zeros, a memfd view gets a hole punched.
    #[napi]
    pub fn decommit(&self, offset: U64, len: U64) -> Result<(), JsError> {
        let (offset, len) = (usize_arg(offset, "offset")?, usize_arg(len, "len")?);
        self.mapping()?
            .decommit(offset, len)
            .map_err(|err| io_error(&err, "madvise"))
    }

    /// `mprotect` read-write (`true`) or read-only (`false`).
    #[napi]
    pub fn set_writable(&self, offset: U64, len: U64, allow: bool) -> Result<(), JsError> {
        let (offset, len) = (usize_arg(offset, "offset")?, usize_arg(len, "len")?);
        self.mapping()?
            .set_writable(offset, len, allow)
            .map_err(|err| io_error(&err, "mprotect"))
    }

    /// `madvise(MADV_HUGEPAGE)`.
    #[napi]
    pub fn madvise_hugepage(&self, offset: U64, len: U64) -> Result<(), JsError> {
        let (offset, len) = (usize_arg(offset, "offset")?, usize_arg(len, "len")?);
        self.mapping()?
            .madvise_hugepage(offset, len)
            .map_err(|err| io_error(&err, "madvise"))
    }

    /// Names the VMAs (never fails).
    #[napi]
    pub fn set_name(&self, offset: U64, len: U64, name: String) -> Result<(), JsError> {
        let (offset, len) = (usize_arg(offset, "offset")?, usize_arg(len, "len")?);
        self.mapping()?.set_name(offset, len, &name);
        Ok(())
    }

    /// Fault-safe copy out of the mapping into `dest`.
    #[napi]
    pub fn read_at(&self, offset: U64, dest: RawBytes) -> Result<(), JsError> {
        let offset = usize_arg(offset, "offset")?;
        let mapping = self.mapping()?;
        check_bounds(mapping, offset, dest.len, false)?;
        let source = mapping.as_ptr().cast::<u8>().wrapping_add(offset);
        // SAFETY: `source..+len` lies inside the reservation (checked above), which stays
        // reserved while `mapping` lives; faults there are recovered. `dest` is the caller's
        // buffer of `len` bytes, valid for the duration of this call.
        unsafe { trycopy::try_copy(source.cast_const(), dest.ptr, dest.len) }
            .map_err(|err| sparse_error(&SparseMappingError::Memory(err), false))
    }

    /// Fault-safe copy of `src` into the mapping.
    #[napi]
    pub fn write_at(&self, offset: U64, src: RawBytes) -> Result<(), JsError> {
        let offset = usize_arg(offset, "offset")?;
        let mapping = self.mapping()?;
        check_bounds(mapping, offset, src.len, true)?;
        let destination = mapping.as_ptr().cast::<u8>().wrapping_add(offset);
        // SAFETY: as in `read_at`, with the roles of the buffers swapped.
        unsafe { trycopy::try_copy(src.ptr.cast_const(), destination, src.len) }
            .map_err(|err| sparse_error(&SparseMappingError::Memory(err), true))
    }

    /// Fault-safe fill of `len` bytes with `byte`.
    #[napi]
    pub fn fill_at(&self, offset: U64, byte: u8, len: U64) -> Result<(), JsError> {
        let (offset, len) = (usize_arg(offset, "offset")?, usize_arg(len, "len")?);
        let mapping = self.mapping()?;
        mapping
            .fill_at(offset, byte, len)
            .map_err(|err| sparse_error(&err, true))
    }

    /// Drops this reference (the reservation goes when its last user does).
    #[napi]
    pub fn close(&mut self) {
        self.inner = None;
        handles::release(&self.handles.take());
    }
}

/// The spec's bounds rule for guarded accesses of the mapping (`ERR_OUT_OF_BOUNDS`).
fn check_bounds(
    mapping: &SparseMapping,
    offset: usize,
    len: usize,
    is_write: bool,
) -> Result<(), JsError> {
    match offset.checked_add(len) {
        Some(end) if end <= mapping.len() => Ok(()),
        _ => Err(sparse_error(&SparseMappingError::OutOfBounds, is_write)),
    }
}

/// An owned descriptor of a shareable memory object (memfd or file).
#[napi]
pub struct NativeMappable {
    inner: Option<Arc<Mappable>>,
}

impl NativeMappable {
    /// The descriptor, or `ERR_CLOSED`.
    pub fn fd(&self) -> Result<BorrowedFd<'_>, JsError> {
        self.inner
            .as_ref()
            .map(|fd| fd.as_fd())
            .ok_or_else(|| closed("Mappable"))
    }

    /// The shared object, for other bindings (the memory manager's backing).
    pub fn shared(&self) -> Result<Arc<Mappable>, JsError> {
        self.inner.clone().ok_or_else(|| closed("Mappable"))
    }

    /// Wraps an object owned elsewhere (e.g. a manager's RAM memfd).
    pub fn from_shared(mappable: Arc<Mappable>) -> Self {
        NativeMappable {
            inner: Some(mappable),
        }
    }
}

#[napi]
impl NativeMappable {
    /// `memfd_create(name, MFD_CLOEXEC)` + `ftruncate(size)`.
    #[napi(factory)]
    pub fn alloc_shared_memory(size: U64, name: String) -> Result<Self, JsError> {
        let size = usize_arg(size, "size")?;
        let fd = sparse_mmap::alloc_shared_memory(size, &name)
            .map_err(|err| io_error(&err, "memfd_create"))?;
        Ok(NativeMappable {
            inner: Some(Arc::new(fd)),
        })
    }

    /// Duplicates an existing descriptor (close-on-exec).
    #[napi(factory)]
    pub fn from_fd(fd: i32) -> Result<Self, JsError> {
        if fd < 0 {
            return Err(crate::errors::invalid_arg(
                "fd must be a non-negative descriptor",
            ));
        }
        // SAFETY: `fcntl(F_DUPFD_CLOEXEC)` only reads the descriptor number; an invalid one
        // makes it fail with EBADF, which is reported.
        let duplicate = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if duplicate < 0 {
            return Err(io_error(&std::io::Error::last_os_error(), "fcntl"));
        }
        // SAFETY: `duplicate` is a descriptor that this call just created and nothing else owns.
        let owned =
            unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(duplicate) };
        Ok(NativeMappable {
            inner: Some(Arc::new(owned)),
        })
    }

    /// The owned descriptor number.
    #[napi(getter)]
    pub fn fd_number(&self) -> Result<i32, JsError> {
        Ok(self.fd()?.as_raw_fd())
    }

    /// Closes this reference to the descriptor (the descriptor closes with its last user).
    #[napi]
    pub fn close(&mut self) {
        self.inner = None;
    }
}
