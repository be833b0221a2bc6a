//! Binding of `sparse_mmap` and `trycopy`: `SparseMapping`, `Mappable`, the fault handler's
//! installation and status, and the test hook that faults outside the guarded routines.

// Unsafe code: the test hook reads an inaccessible page on purpose, and the guarded copies take
// the caller's typed arrays as raw pointers.
#![allow(unsafe_code)]

use crate::args::host_size;
use crate::args::RawBytes;
use crate::args::U64;
use crate::errors::throw;
use crate::external::ExternalCharge;
use crate::handles::open;
use crate::handles::Shared;
use crate::handles::HANDLES;
use js_api::enums::JsEnum;
use js_api::JsError;
use napi::bindgen_prelude::ObjectFinalize;
use napi::Env;
use napi_derive::napi;
use sparse_mmap::Mappable;
use sparse_mmap::SparseMapping;
use std::io;
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

/// Installs (or re-arms, when displaced) the process-wide SIGSEGV/SIGBUS handler.
#[napi]
pub fn initialize() -> &'static str {
    trycopy::initialize_try_copy();
    trycopy::rearm_handler().js_str()
}

/// Tells the fault handler whether the process listens for SIGSEGV and SIGBUS (re-arming it over
/// the handler a listener installs, or over the default a removed one leaves); the status after.
#[napi]
pub fn set_signal_listeners(segv: bool, bus: bool) -> &'static str {
    trycopy::set_signal_listeners(segv, bus).js_str()
}

/// A `HandlerStatus` value.
#[napi]
pub fn handler_status() -> &'static str {
    trycopy::handler_status().js_str()
}

/// Test hook (the internal entry only): a plain read of an inaccessible page, outside every
/// guarded routine. The handler must forward it, so the process dies with SIGSEGV (run it in
/// a child process).
#[napi]
pub fn test_fault_outside_guarded_region() -> napi::Result<u32> {
    let mapping = SparseMapping::new(SparseMapping::page_size())
        .map_err(|error| throw(JsError::os(&error, "mmap")))?;
    let pointer = mapping.as_ptr().cast::<u32>();
    // SAFETY: deliberately faulting, never unsound: the page is reserved PROT_NONE, so the
    // volatile read faults before it reads anything. This shows that a fault outside the
    // guarded routines still ends the process.
    Ok(unsafe { std::ptr::read_volatile(pointer) })
}

fn os(syscall: &'static str) -> impl Fn(io::Error) -> napi::Error {
    move |error| throw(JsError::os(&error, syscall))
}

/// A reservation of virtual address space whose pages are placed and removed at runtime.
#[napi]
pub struct NativeSparseMapping {
    inner: Option<Arc<SparseMapping>>,
}

impl NativeSparseMapping {
    /// The mapping, or `ERR_CLOSED`.
    pub fn mapping(&self) -> napi::Result<&Arc<SparseMapping>> {
        self.inner
            .as_ref()
            .ok_or_else(|| throw(JsError::closed("SparseMapping")))
    }

    /// Runs `change` on `(offset, len)` as host sizes; its failure is the OS error of
    /// `syscall`.
    fn change(
        &self,
        offset: U64,
        len: U64,
        syscall: &'static str,
        change: impl FnOnce(&SparseMapping, usize, usize) -> io::Result<()>,
    ) -> napi::Result<()> {
        let mapping = self.mapping()?;
        let (offset, len) = (host_size(offset, "offset")?, host_size(len, "len")?);
        change(mapping, offset, len).map_err(os(syscall))
    }
}

#[napi]
impl NativeSparseMapping {
    /// Reserves `len` bytes (rounded up by size); re-arms a displaced fault handler.
    #[napi(constructor)]
    pub fn new(len: U64) -> napi::Result<Self> {
        let len = host_size(len, "len")?;
        let mapping = SparseMapping::new(len)
            .map_err(|error| throw(js_api::errors::sparse_mapping_reserve(&error, len)))?;
        guestmem::ensure_fault_handler();
        Ok(NativeSparseMapping {
            inner: Some(Arc::new(mapping)),
        })
    }

    /// Reopens a mapping from a handle made by `toHandle()` (any thread of this process).
    #[napi(factory)]
    pub fn from_handle(id: U64) -> napi::Result<Self> {
        let mapping = open(id.0, "SparseMapping", |shared| match shared {
            Shared::SparseMapping(mapping) => Some(mapping),
            _ => None,
        })?;
        Ok(NativeSparseMapping {
            inner: Some(mapping),
        })
    }

    /// A handle id for `fromHandle` in a worker thread.
    #[napi]
    pub fn to_handle(&self) -> napi::Result<u64> {
        Ok(HANDLES.register(Shared::SparseMapping(self.mapping()?.clone())))
    }

    /// The OS page size.
    #[napi]
    pub fn page_size() -> u64 {
        SparseMapping::page_size() as u64
    }

    /// The reserved length after rounding.
    #[napi(getter)]
    pub fn length(&self) -> napi::Result<u64> {
        Ok(self.mapping()?.len() as u64)
    }

    /// Places private zeroed read-write memory.
    #[napi]
    pub fn alloc(&self, offset: U64, len: U64) -> napi::Result<()> {
        self.change(offset, len, "mmap", SparseMapping::alloc)
    }

    /// Places read-only zero pages.
    #[napi]
    pub fn map_zero(&self, offset: U64, len: U64) -> napi::Result<()> {
        self.change(offset, len, "mmap", SparseMapping::map_zero)
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
    ) -> napi::Result<()> {
        let fd = mappable.fd()?;
        let mapping = self.mapping()?;
        let (offset, len) = (host_size(offset, "offset")?, host_size(len, "len")?);
        mapping
            .map_file(offset, len, fd, file_offset.0, writable)
            .map_err(|error| throw(js_api::errors::sparse_map_file(&error, file_offset.0)))
    }

    /// Returns the range to the reserved (inaccessible) state.
    #[napi]
    pub fn unmap(&self, offset: U64, len: U64) -> napi::Result<()> {
        self.change(offset, len, "mmap", SparseMapping::unmap)
    }

    /// Validates the range (a no-op on Linux).
    #[napi]
    pub fn commit(&self, offset: U64, len: U64) -> napi::Result<()> {
        self.change(offset, len, "madvise", SparseMapping::commit)
    }

    /// Frees the pages: private memory reads back zeros, a memfd view gets a hole punched.
    #[napi]
    pub fn decommit(&self, offset: U64, len: U64) -> napi::Result<()> {
        self.change(offset, len, "madvise", SparseMapping::decommit)
    }

    /// `mprotect` read-write (`true`) or read-only (`false`).
    #[napi]
    pub fn set_writable(&self, offset: U64, len: U64, allow: bool) -> napi::Result<()> {
        self.change(offset, len, "mprotect", |mapping, offset, len| {
            mapping.set_writable(offset, len, allow)
        })
    }

    /// `madvise(MADV_HUGEPAGE)`.
    #[napi]
    pub fn madvise_hugepage(&self, offset: U64, len: U64) -> napi::Result<()> {
        self.change(offset, len, "madvise", SparseMapping::madvise_hugepage)
    }

    /// Names the VMAs (never fails).
    #[napi]
    pub fn set_name(&self, offset: U64, len: U64, name: String) -> napi::Result<()> {
        self.change(offset, len, "prctl", |mapping, offset, len| {
            mapping.set_name(offset, len, &name);
            Ok(())
        })
    }

    /// Fault-safe copy out of the mapping into `dest`.
    #[napi]
    pub fn read_at(&self, offset: U64, dest: RawBytes) -> napi::Result<()> {
        let offset = host_size(offset, "offset")?;
        let mapping = self.mapping()?;
        // SAFETY: `dest` is the caller's typed array of `len` bytes, valid during this call.
        unsafe { mapping.read_to_ptr(offset, dest.ptr, dest.len) }
            .map_err(|error| throw(sparse_error(&error, mapping, offset, dest.len, false)))
    }

    /// Fault-safe copy of `src` into the mapping.
    #[napi]
    pub fn write_at(&self, offset: U64, src: RawBytes) -> napi::Result<()> {
        let offset = host_size(offset, "offset")?;
        let mapping = self.mapping()?;
        // SAFETY: `src` is the caller's typed array of `len` bytes, valid during this call.
        unsafe { mapping.write_from_ptr(offset, src.ptr.cast_const(), src.len) }
            .map_err(|error| throw(sparse_error(&error, mapping, offset, src.len, true)))
    }

    /// Fault-safe fill of `len` bytes with `byte`.
    #[napi]
    pub fn fill_at(&self, offset: U64, byte: u8, len: U64) -> napi::Result<()> {
        let mapping = self.mapping()?;
        let (offset, len) = (host_size(offset, "offset")?, host_size(len, "len")?);
        mapping
            .fill_at(offset, byte, len)
            .map_err(|error| throw(sparse_error(&error, mapping, offset, len, true)))
    }

    /// Drops this reference (the reservation goes when its last user does).
    #[napi]
    pub fn close(&mut self) {
        self.inner = None;
    }
}

/// An owned descriptor of a shareable memory object (memfd or file).
#[napi(custom_finalize)]
pub struct NativeMappable {
    inner: Option<Arc<Mappable>>,
    /// What V8 was told this object holds (a descriptor it opened), returned on close or
    /// finalization; nothing for a wrapper of a descriptor owned elsewhere.
    charge: ExternalCharge,
}

impl ObjectFinalize for NativeMappable {
    fn finalize(self, env: Env) -> napi::Result<()> {
        self.charge.release(&env);
        Ok(())
    }
}

impl NativeMappable {
    /// The descriptor, or `ERR_CLOSED`.
    pub fn fd(&self) -> napi::Result<BorrowedFd<'_>> {
        self.inner
            .as_ref()
            .map(|fd| fd.as_fd())
            .ok_or_else(|| throw(JsError::closed("Mappable")))
    }

    /// A shared reference to the object (no descriptor is duplicated), or `ERR_CLOSED`.
    pub fn shared(&self) -> napi::Result<Arc<Mappable>> {
        self.inner
            .clone()
            .ok_or_else(|| throw(JsError::closed("Mappable")))
    }

    /// Wraps an object owned elsewhere (a manager's RAM memfd, a shareable region).
    pub fn from_shared(mappable: Arc<Mappable>) -> Self {
        NativeMappable {
            inner: Some(mappable),
            charge: ExternalCharge::default(),
        }
    }

    /// Wraps a descriptor this object opened (and charges it).
    fn owned(env: &Env, mappable: Mappable) -> Self {
        NativeMappable {
            inner: Some(Arc::new(mappable)),
            charge: ExternalCharge::new(env, js_api::external_memory::descriptor_charge()),
        }
    }
}

#[napi]
impl NativeMappable {
    /// `memfd_create(name, MFD_CLOEXEC)` + `ftruncate(size)`.
    #[napi(factory)]
    pub fn alloc_shared_memory(env: Env, size: U64, name: String) -> napi::Result<Self> {
        let fd = sparse_mmap::alloc_shared_memory_steps(host_size(size, "size")?, &name)
            .map_err(|error| throw(js_api::errors::alloc_shared_memory(&error, &name)))?;
        Ok(Self::owned(&env, fd))
    }

    /// Duplicates an existing descriptor (close-on-exec).
    #[napi(factory)]
    pub fn from_fd(env: Env, fd: i32) -> napi::Result<Self> {
        let owned = sparse_mmap::mappable_from_raw_fd(fd)
            .map_err(|error| throw(js_api::errors::mappable_from_fd(&error, fd)))?;
        Ok(Self::owned(&env, owned))
    }

    /// The owned descriptor number.
    #[napi(getter)]
    pub fn fd_number(&self) -> napi::Result<i32> {
        Ok(self.fd()?.as_raw_fd())
    }

    /// Closes this reference to the descriptor (it closes with its last user).
    #[napi]
    pub fn close(&mut self, env: Env) {
        self.charge.release(&env);
        self.inner = None;
    }
}

/// The error of a guarded access of `len` bytes at `offset` of `mapping`.
fn sparse_error(
    error: &sparse_mmap::SparseMappingError,
    mapping: &SparseMapping,
    offset: usize,
    len: usize,
    is_write: bool,
) -> JsError {
    JsError::sparse_mapping(
        error,
        js_api::errors::SparseAccess {
            offset: offset as u64,
            len: len as u64,
            reserved: mapping.len() as u64,
            is_write,
        },
    )
}
