//! Shareable memory objects: owned file descriptors that can be mapped into a
//! [`SparseMapping`](crate::SparseMapping) with `map_file`, and memfd allocation.
//!
//! On Linux a mappable object is simply an open file descriptor: [`Mappable`] owns one (closed on
//! drop), [`MappableRef`] borrows one. Anything that implements `AsFd` can be passed to
//! `map_file`.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::os::fd::BorrowedFd;
use std::os::fd::FromRawFd;
use std::os::fd::OwnedFd;

/// An owned descriptor of a shareable memory object (memfd or file).
pub type Mappable = OwnedFd;

/// A borrowed descriptor of a shareable memory object.
pub type MappableRef<'a> = BorrowedFd<'a>;

/// Duplicates `fd` (close-on-exec) into a new [`Mappable`].
///
/// The duplicate refers to the same open file description: it shares the object, its size and
/// its access mode, but closing one does not close the other.
pub fn mappable_from_fd(fd: BorrowedFd<'_>) -> io::Result<Mappable> {
    fd.try_clone_to_owned()
}

/// Makes a [`Mappable`] of `file` by duplicating its descriptor (close-on-exec).
///
/// `writable` and `executable` are accepted for API compatibility and ignored on Linux: the
/// access a view gets is decided by the descriptor's open mode and `map_file`'s `writable`.
pub fn new_mappable_from_file(
    file: &File,
    writable: bool,
    executable: bool,
) -> io::Result<Mappable> {
    let _ = (writable, executable);
    mappable_from_fd(file.as_fd())
}

/// Creates a memfd of `size` bytes named `name` (`memfd_create(name, MFD_CLOEXEC)` then
/// `ftruncate`).
///
/// The object is not sealable (no `MFD_ALLOW_SEALING`), so its size can still change. Its
/// contents start zeroed and memory is allocated on first touch. A name containing NUL is
/// `InvalidInput`; a name longer than the kernel accepts (249 bytes) is `EINVAL`.
pub fn alloc_shared_memory(size: usize, name: &str) -> io::Result<Mappable> {
    let name = CString::new(name).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "shared memory name contains a NUL byte",
        )
    })?;
    let size =
        libc::off_t::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: `name` is a valid NUL-terminated string; the call creates a new descriptor.
    let raw_fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if raw_fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw_fd` was just returned by memfd_create and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw_fd) };
    // SAFETY: `fd` is a valid memfd owned by this function.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}
