//! Shareable memory objects: owned file descriptors that can be mapped into a
//! [`SparseMapping`](crate::SparseMapping) with `map_file`, and memfd allocation.
//!
//! On Linux a mappable object is simply an open file descriptor: [`Mappable`] owns one (closed on
//! drop), [`MappableRef`] borrows one. Anything that implements `AsFd` can be passed to
//! `map_file`. The queries and changes a memory manager makes on such an object (its size and
//! identity, whether it is a regular file, where its data and holes are, reading and writing it
//! at an offset, punching a hole, the name it shows in `/proc/self/fd`) are here too, so that the
//! crates above need no system calls of their own.

// Unsafe code: memfd_create/ftruncate/fstat/fallocate/fcntl/lseek are libc calls on raw
// descriptors, and positioned reads and writes go through a `File` that borrows one.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::os::fd::BorrowedFd;
use std::os::fd::FromRawFd;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;

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

/// Duplicates the descriptor numbered `fd` (close-on-exec), e.g. one a parent process passed
/// to this one. An invalid number is `EBADF`; nothing is assumed about the descriptor, which
/// stays open.
pub fn mappable_from_raw_fd(fd: i32) -> io::Result<Mappable> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: `F_DUPFD_CLOEXEC` only reads the descriptor number; an invalid one makes the call
    // fail with EBADF, which is reported.
    let duplicate = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if duplicate < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `duplicate` is a descriptor this call just created, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(duplicate) })
}

fn stat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `fd` is a valid open descriptor (borrowed) and `stat` a valid out pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), stat.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded and filled the structure.
    Ok(unsafe { stat.assume_init() })
}

/// The size of the object in bytes (`fstat`).
pub fn object_size(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let size = stat(fd)?.st_size;
    u64::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))
}

/// The object's identity: its device and inode numbers (`fstat`). Two descriptors of the same
/// object, however obtained, have the same identity.
pub fn object_id(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let stat = stat(fd)?;
    Ok((stat.st_dev, stat.st_ino))
}

/// Runs `action` on a `File` that borrows `fd` for the duration of the call.
fn with_file<T>(fd: BorrowedFd<'_>, action: impl FnOnce(&File) -> T) -> T {
    // SAFETY: the `File` only borrows the descriptor, which `fd` keeps open for the call;
    // `ManuallyDrop` never closes it and it does not escape `action`.
    let file = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(fd.as_raw_fd()) });
    action(&file)
}

/// Reads exactly `buffer.len()` bytes of the object at `offset` (`pread`; never faults this
/// process). Reading past the end is `UnexpectedEof`.
pub fn read_exact_at(fd: BorrowedFd<'_>, buffer: &mut [u8], offset: u64) -> io::Result<()> {
    with_file(fd, |file| file.read_exact_at(buffer, offset))
}

/// Writes all of `data` into the object at `offset` (`pwrite`).
pub fn write_all_at(fd: BorrowedFd<'_>, data: &[u8], offset: u64) -> io::Result<()> {
    with_file(fd, |file| file.write_all_at(data, offset))
}

/// What [`seek`] looks for.
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub enum Seek {
    /// The next byte that holds data (`SEEK_DATA`).
    Data,
    /// The next byte of a hole (`SEEK_HOLE`; the end of the object counts as a hole).
    Hole,
}

/// The offset of the first data byte or hole byte at or after `offset` (`lseek` with
/// `SEEK_DATA`/`SEEK_HOLE`), or `None` when there is none before the end of the object. On a
/// memfd a written or swapped-out page is data, a never-written or punched one a hole. Moves
/// the descriptor's file offset (shared by every duplicate of it).
pub fn seek(fd: BorrowedFd<'_>, offset: u64, what: Seek) -> io::Result<Option<u64>> {
    let offset =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let whence = match what {
        Seek::Data => libc::SEEK_DATA,
        Seek::Hole => libc::SEEK_HOLE,
    };
    // SAFETY: lseek on a valid (borrowed) descriptor only moves its file offset.
    let result = unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) };
    if result < 0 {
        let error = io::Error::last_os_error();
        // ENXIO: no data (or hole) at or after the offset.
        return if error.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(error)
        };
    }
    Ok(u64::try_from(result).ok())
}

/// Whether the descriptor is open for both reading and writing (`fcntl(F_GETFL)`), as a
/// shared writable view of its object needs.
pub fn is_open_read_write(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: `F_GETFL` only reads the flags of `fd`, which is open for the call.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(flags & libc::O_ACCMODE == libc::O_RDWR)
}

/// Whether the object is a regular file (a memfd, a tmpfs or disk file), whose size bounds
/// what a view of it can reach; false for devices and pipes, and when `fstat` fails.
pub fn is_regular_file(fd: BorrowedFd<'_>) -> bool {
    stat(fd).is_ok_and(|stat| (stat.st_mode & libc::S_IFMT) == libc::S_IFREG)
}

/// Punches a hole of `len` bytes at `offset` (`fallocate(PUNCH_HOLE | KEEP_SIZE)`): the pages
/// are freed and every view of the object reads zeros there; the size stays. A range the
/// kernel's `off_t` cannot express is `EINVAL`.
pub fn punch_hole(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: `fallocate` on a valid descriptor only changes the file's contents; no memory of
    // this process is touched directly.
    let rc = unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The name the object shows in `/proc/self/fd`, without the leading `/` and the
/// ` (deleted)` suffix: `memfd:guest-ram` for a memfd, a path for a file. `fd N` when the link
/// cannot be read.
pub fn object_name(fd: BorrowedFd<'_>) -> String {
    let number = fd.as_raw_fd();
    std::fs::read_link(format!("/proc/self/fd/{number}")).map_or_else(
        |_| format!("fd {number}"),
        |target| {
            let target = target.to_string_lossy();
            target
                .trim_start_matches('/')
                .trim_end_matches(" (deleted)")
                .to_owned()
        },
    )
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
/// `InvalidInput`; a name longer than the kernel accepts (249 bytes) is `EINVAL`. The error is
/// the OS error of whichever step failed; [`alloc_shared_memory_steps`] also says which.
pub fn alloc_shared_memory(size: usize, name: &str) -> io::Result<Mappable> {
    alloc_shared_memory_steps(size, name).map_err(|error| error.source)
}

/// The step of [`alloc_shared_memory_steps`] that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocSharedMemoryStep {
    /// Creating the object (`memfd_create`), including a name it cannot take.
    MemfdCreate,
    /// Sizing it (`ftruncate`): a size beyond the largest file offset (`EFBIG` without a
    /// system call), or one the kernel refuses (`EFBIG` beyond `ulimit -f`, `ENOSPC`, ...).
    Ftruncate,
}

impl AllocSharedMemoryStep {
    /// The system call of this step, as an error names it.
    pub fn syscall(self) -> &'static str {
        match self {
            AllocSharedMemoryStep::MemfdCreate => "memfd_create",
            AllocSharedMemoryStep::Ftruncate => "ftruncate",
        }
    }
}

/// A failed [`alloc_shared_memory_steps`]: the step, the size asked for and the OS error.
#[derive(Debug, thiserror::Error)]
#[error("{} of a {size:#x}-byte shared memory object failed", .step.syscall())]
pub struct AllocSharedMemoryError {
    /// The step that failed.
    pub step: AllocSharedMemoryStep,
    /// The size asked for, in bytes.
    pub size: usize,
    /// The step's error (an OS error, or `InvalidInput` for a name containing NUL).
    #[source]
    pub source: io::Error,
}

/// [`alloc_shared_memory`], with an error that says which step failed (creating the object
/// or sizing it); nothing is left open on failure.
pub fn alloc_shared_memory_steps(
    size: usize,
    name: &str,
) -> Result<Mappable, AllocSharedMemoryError> {
    let failed = |step, source| AllocSharedMemoryError { step, size, source };
    let name = CString::new(name).map_err(|_| {
        failed(
            AllocSharedMemoryStep::MemfdCreate,
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "shared memory name contains a NUL byte",
            ),
        )
    })?;
    // A size that is no file offset is what ftruncate would refuse: checked before the object
    // is made, it is that step's error.
    let length = libc::off_t::try_from(size).map_err(|_| {
        failed(
            AllocSharedMemoryStep::Ftruncate,
            io::Error::from_raw_os_error(libc::EFBIG),
        )
    })?;
    // SAFETY: `name` is a valid NUL-terminated string; the call creates a new descriptor.
    let raw_fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if raw_fd < 0 {
        return Err(failed(
            AllocSharedMemoryStep::MemfdCreate,
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: `raw_fd` was just returned by memfd_create and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw_fd) };
    // SAFETY: `fd` is a valid memfd owned by this function.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), length) } != 0 {
        return Err(failed(
            AllocSharedMemoryStep::Ftruncate,
            io::Error::last_os_error(),
        ));
    }
    Ok(fd)
}
