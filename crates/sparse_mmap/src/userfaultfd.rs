//! A minimal userfaultfd: creation (system call, then `/dev/userfaultfd`), the API handshake,
//! missing-mode registration, `UFFDIO_COPY`, `UFFDIO_WAKE` and page-fault events, plus the
//! [`StopEvent`] a fault-serving thread waits on beside it ([`Userfaultfd::wait`]).
//!
//! Every operation on memory names a [`SparseMapping`] and a page-aligned range inside it, never
//! a raw address: only address space a mapping owns can be registered or filled, and a range
//! outside it (or misaligned, or empty) is an `InvalidInput` error before any system call. That
//! is what keeps the API safe. A mapping's memory is shared memory by contract (any thread may
//! write it through `&SparseMapping`, e.g. with [`SparseMapping::write_at`], and its views of a
//! file are written by anyone holding the file), so filling a missing page of it with
//! `UFFDIO_COPY` is no more than such a write. Memory Rust code holds a reference to (a `Vec`,
//! a stack buffer, an [`Allocation`](crate::alloc::Allocation)) cannot be reached. Registering a
//! range only makes the first touch of a missing page wait for a `UFFDIO_COPY` or `UFFDIO_WAKE`
//! (or for the range to be unregistered, or the userfaultfd to be closed): an unserved fault is
//! a hang, never undefined behaviour.
//!
//! Written against the kernel's UAPI (`linux/userfaultfd.h`) with `libc` rather than taken from
//! the `userfaultfd` crate, whose `-sys` crate runs bindgen at build time and so would require
//! libclang and kernel headers on every machine that builds this project.

// Unsafe code: userfaultfd is raw system calls and ioctls on structures of the kernel's UAPI.
#![allow(unsafe_code)]

use crate::SparseMapping;
use std::io;
use std::os::fd::AsRawFd;
use std::os::fd::FromRawFd;
use std::os::fd::OwnedFd;
use std::os::fd::RawFd;

const UFFD_API: u64 = 0xaa;
const UFFD_USER_MODE_ONLY: libc::c_int = 1;
/// `_IOWR(0xaa, 0x3f, struct uffdio_api)`.
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
/// `_IOWR(0xaa, 0x00, struct uffdio_register)`.
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
/// `_IOR(0xaa, 0x01, struct uffdio_range)`.
const UFFDIO_UNREGISTER: libc::c_ulong = 0x8010_aa01;
/// `_IOR(0xaa, 0x02, struct uffdio_range)`.
const UFFDIO_WAKE: libc::c_ulong = 0x8010_aa02;
/// `_IOWR(0xaa, 0x03, struct uffdio_copy)`.
const UFFDIO_COPY: libc::c_ulong = 0xc028_aa03;
/// `_IO(0xaa, 0x00)` on `/dev/userfaultfd`.
const USERFAULTFD_IOC_NEW: libc::c_ulong = 0xaa00;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
/// `1 << _UFFDIO_COPY` in `uffdio_register.ioctls`.
const UFFDIO_COPY_BIT: u64 = 1 << 3;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// `struct uffd_msg` (32 bytes): the event and, for page faults, flags and address.
#[repr(C)]
#[derive(Clone, Copy)]
struct UffdMsg {
    event: u8,
    reserved1: u8,
    reserved2: u16,
    reserved3: u32,
    flags: u64,
    address: u64,
    rest: u64,
}

/// The outcome of a copy.
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub enum Copied {
    /// All bytes were copied.
    All,
    /// A destination page was present already (`EEXIST`); the bytes before it were copied.
    Exists,
}

/// A userfaultfd object (non-blocking, close-on-exec).
#[derive(Debug)]
pub struct Userfaultfd {
    fd: OwnedFd,
}

/// Issues `request` on `fd` with a pointer to `argument`.
///
/// # Safety
/// `T` must be the `repr(C)` structure of the kernel's UAPI that `request` takes, and what the
/// request does to memory must be allowed: a `UFFDIO_COPY` destination must lie in a
/// [`SparseMapping`] borrowed for the call, and its source must be readable for its length.
unsafe fn ioctl<T>(fd: RawFd, request: libc::c_ulong, argument: &mut T) -> io::Result<()> {
    // SAFETY: the pointer is to a live structure held exclusively for the call, of the type the
    // request takes, and the memory it names is allowed (both promised by the caller).
    let result = unsafe { libc::ioctl(fd, request, std::ptr::from_mut(argument)) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Userfaultfd {
    /// A userfaultfd that also handles kernel-mode faults (KVM's, system calls'), through the
    /// system call or, where that is refused, `/dev/userfaultfd`.
    pub fn new() -> io::Result<Self> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        // SAFETY: the system call creates a new descriptor and touches no memory.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
        let fd = if fd >= 0 {
            RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?
        } else {
            let syscall_error = io::Error::last_os_error();
            let device = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/userfaultfd")
                .map_err(|_| syscall_error)?;
            // SAFETY: USERFAULTFD_IOC_NEW takes the flags as its argument and returns a new
            // descriptor.
            let fd = unsafe { libc::ioctl(device.as_raw_fd(), USERFAULTFD_IOC_NEW, flags) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            fd
        };
        // SAFETY: `fd` is a new descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: 0,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API takes a `uffdio_api`, which it reads and fills; it touches no
        // other memory.
        unsafe { ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api) }?;
        Ok(Self { fd })
    }

    /// Whether only user-mode faults could be handled (`UFFD_USER_MODE_ONLY`): such a
    /// userfaultfd can be created, but KVM guests would fail on the pages it serves.
    pub fn user_mode_only_available() -> bool {
        // SAFETY: as in `new`.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_userfaultfd,
                libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY,
            )
        };
        if fd < 0 {
            return false;
        }
        if let Ok(fd) = RawFd::try_from(fd) {
            // SAFETY: `fd` is the descriptor just created, owned by nobody else; dropping the
            // `OwnedFd` closes it.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        true
    }

    /// Registers the pages `offset..offset + len` of `mapping` for missing-page faults: from
    /// now on the first touch of a missing page there (by any thread, or by the kernel on its
    /// behalf) waits until [`copy`](Self::copy) fills it or [`wake`](Self::wake) retries it, the
    /// range is unregistered, or this userfaultfd is dropped. Placing something new over a
    /// registered range (e.g. [`SparseMapping::map_file`]) drops the registration there.
    ///
    /// The range must be non-empty, page-aligned and inside the mapping (an `InvalidInput`
    /// error otherwise). Fails (`Unsupported`) when `UFFDIO_COPY` is not offered for the memory
    /// there (the range is then left unregistered), and with the OS error when the kernel
    /// refuses the registration.
    pub fn register(&self, mapping: &SparseMapping, offset: usize, len: usize) -> io::Result<()> {
        let address = mapping.checked_pages(offset, len)?;
        let mut register = UffdioRegister {
            range: UffdioRange {
                start: address as u64,
                len: len as u64,
            },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER takes a `uffdio_register`; it changes no memory contents, and
        // the range lies inside `mapping`'s reservation (checked above).
        unsafe { ioctl(self.fd.as_raw_fd(), UFFDIO_REGISTER, &mut register) }?;
        if register.ioctls & UFFDIO_COPY_BIT == 0 {
            let _ = self.unregister(mapping, offset, len);
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "UFFDIO_COPY is not offered for this memory",
            ));
        }
        Ok(())
    }

    /// Unregisters the pages `offset..offset + len` of `mapping` (waking every thread waiting
    /// there; missing pages are then supplied as without a userfaultfd). Parts of the range
    /// that are not registered are fine. The range is checked as in [`register`](Self::register).
    pub fn unregister(&self, mapping: &SparseMapping, offset: usize, len: usize) -> io::Result<()> {
        let address = mapping.checked_pages(offset, len)?;
        let mut range = UffdioRange {
            start: address as u64,
            len: len as u64,
        };
        // SAFETY: UFFDIO_UNREGISTER takes a `uffdio_range`; it changes no memory contents, and
        // the range lies inside `mapping`'s reservation (checked above).
        unsafe { ioctl(self.fd.as_raw_fd(), UFFDIO_UNREGISTER, &mut range) }
    }

    /// Wakes the threads waiting on the pages `offset..offset + len` of `mapping` (each
    /// retries its access). The range is checked as in [`register`](Self::register).
    pub fn wake(&self, mapping: &SparseMapping, offset: usize, len: usize) -> io::Result<()> {
        let address = mapping.checked_pages(offset, len)?;
        let mut range = UffdioRange {
            start: address as u64,
            len: len as u64,
        };
        // SAFETY: UFFDIO_WAKE takes a `uffdio_range` and changes no memory contents; the range
        // lies inside `mapping`'s reservation (checked above).
        unsafe { ioctl(self.fd.as_raw_fd(), UFFDIO_WAKE, &mut range) }
    }

    /// Atomically fills the missing pages `offset..offset + data.len()` of `mapping`, in a range
    /// registered with this userfaultfd, with `data`, waking the threads waiting there.
    ///
    /// `offset` must be page-aligned and `data` a non-empty whole number of pages that ends
    /// inside the mapping (an `InvalidInput` error otherwise). Stops at the first page that is
    /// present already ([`Copied::Exists`], the pages before it filled). A destination that is
    /// not registered with this userfaultfd is an OS error (`ENOENT` or `EINVAL`), and nothing
    /// is written.
    ///
    /// The kernel fills a missing page whatever its protection: a registered
    /// [`SparseMapping::map_zero`] page then reads `data`, and an unplaced (inaccessible) page
    /// holds it once [`SparseMapping::set_writable`] opens it up. Register only ranges whose
    /// pages are meant to be filled.
    pub fn copy(&self, mapping: &SparseMapping, offset: usize, data: &[u8]) -> io::Result<Copied> {
        let destination = mapping.checked_pages(offset, data.len())?;
        let mut done = 0usize;
        let mut retries = 0;
        while done < data.len() {
            let mut copy = UffdioCopy {
                dst: destination as u64 + done as u64,
                src: data.as_ptr() as u64 + done as u64,
                len: (data.len() - done) as u64,
                mode: 0,
                copy: 0,
            };
            // SAFETY: UFFDIO_COPY takes a `uffdio_copy`. Its source is the rest of `data`, a
            // live slice readable for that length. Its destination is the rest of
            // `offset..offset + data.len()`, inside the reservation of `mapping` (checked
            // above), which stays reserved while it is borrowed for this call; the kernel only
            // fills pages there that are missing, which is a write by another party to memory
            // that the mapping hands out as shared memory only (atomics, guarded copies, raw
            // pointers), never as a Rust reference that assumes no one else writes.
            match unsafe { ioctl(self.fd.as_raw_fd(), UFFDIO_COPY, &mut copy) } {
                Ok(()) => return Ok(Copied::All),
                Err(error) if error.raw_os_error() == Some(libc::EEXIST) => {
                    return Ok(Copied::Exists)
                }
                Err(error) if error.raw_os_error() == Some(libc::EAGAIN) && retries < 1000 => {
                    // Partly copied, or the address space was changing: go on from there.
                    done += usize::try_from(copy.copy).unwrap_or(0);
                    retries += 1;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(Copied::All)
    }

    /// Reads the pending page-fault addresses into `faults` (none when nothing is pending).
    pub fn read_faults(&self, faults: &mut Vec<u64>) -> io::Result<()> {
        const BATCH: usize = 64;
        let mut messages = [UffdMsg {
            event: 0,
            reserved1: 0,
            reserved2: 0,
            reserved3: 0,
            flags: 0,
            address: 0,
            rest: 0,
        }; BATCH];
        let size = std::mem::size_of::<UffdMsg>();
        // SAFETY: reads whole messages into a live buffer of BATCH messages.
        let read = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                messages.as_mut_ptr().cast(),
                BATCH * size,
            )
        };
        if read < 0 {
            let error = io::Error::last_os_error();
            return if error.kind() == io::ErrorKind::WouldBlock {
                Ok(())
            } else {
                Err(error)
            };
        }
        let count = usize::try_from(read).unwrap_or(0) / size;
        faults.extend(
            messages[..count]
                .iter()
                .filter(|message| message.event == UFFD_EVENT_PAGEFAULT)
                .map(|message| message.address),
        );
        Ok(())
    }

    /// Blocks until page faults are pending or `stop` is signalled (whichever comes first;
    /// both when both are). An interrupted wait is retried.
    pub fn wait(&self, stop: &StopEvent) -> io::Result<Ready> {
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: stop.fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfd entries that live across the call; poll only writes
            // their `revents`.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if ready < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            return Ok(Ready {
                faults: fds[0].revents & libc::POLLIN != 0,
                stopped: fds[1].revents & libc::POLLIN != 0,
            });
        }
    }
}

/// What [`Userfaultfd::wait`] found.
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub struct Ready {
    /// Page faults can be read ([`Userfaultfd::read_faults`]).
    pub faults: bool,
    /// The [`StopEvent`] was signalled.
    pub stopped: bool,
}

/// A one-way signal (an eventfd) that ends a [`Userfaultfd::wait`]: once signalled it stays
/// signalled.
#[derive(Debug)]
pub struct StopEvent {
    fd: OwnedFd,
}

impl StopEvent {
    /// A new, unsignalled event (non-blocking, close-on-exec).
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd creates a new descriptor and touches no memory.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// Signals the event (every present and future wait on it returns).
    pub fn signal(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of a live u64 to the eventfd this value owns.
        let written =
            unsafe { libc::write(self.fd.as_raw_fd(), std::ptr::from_ref(&one).cast(), 8) };
        if written < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsRawFd for Userfaultfd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc_shared_memory;
    use crate::read_exact_at;
    use std::os::fd::AsFd;

    fn page() -> usize {
        SparseMapping::page_size()
    }

    /// A userfaultfd, or `None` (with the reason printed) where this process may not have one.
    fn userfaultfd_or_skip(test: &str) -> Option<Userfaultfd> {
        match Userfaultfd::new() {
            Ok(uffd) => Some(uffd),
            Err(error) => {
                println!("{test}: skipped, no userfaultfd here: {error}");
                None
            }
        }
    }

    /// A mapping of `pages` pages of private read-write memory.
    fn private_mapping(pages: usize) -> SparseMapping {
        let mapping = SparseMapping::new(pages * page()).unwrap();
        mapping.alloc(0, pages * page()).unwrap();
        mapping
    }

    fn byte(mapping: &SparseMapping, offset: usize) -> u8 {
        mapping.read_plain::<u8>(offset).unwrap()
    }

    fn assert_invalid_input<T: std::fmt::Debug>(result: io::Result<T>) {
        let error = result.expect_err("expected InvalidInput");
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{error:?}");
        assert_eq!(error.raw_os_error(), None, "{error:?}");
    }

    #[test]
    fn copy_fills_missing_pages_once_and_reports_present_ones() {
        let Some(uffd) = userfaultfd_or_skip("copy_fills_missing_pages_once") else {
            return;
        };
        let mapping = private_mapping(2);
        uffd.register(&mapping, 0, 2 * page()).unwrap();
        let data = vec![0x5a; page()];
        assert_eq!(uffd.copy(&mapping, 0, &data).unwrap(), Copied::All);
        assert_eq!(byte(&mapping, 0), 0x5a);
        assert_eq!(byte(&mapping, page() - 1), 0x5a);
        // The page is present now: a second copy changes nothing.
        assert_eq!(
            uffd.copy(&mapping, 0, &vec![0x11; page()]).unwrap(),
            Copied::Exists
        );
        assert_eq!(byte(&mapping, 0), 0x5a);
        uffd.unregister(&mapping, 0, 2 * page()).unwrap();
        // Unregistered, the second page is ordinary memory again: it reads zeros.
        assert_eq!(byte(&mapping, page()), 0);
        let mut faults = Vec::new();
        uffd.read_faults(&mut faults).unwrap();
        assert!(faults.is_empty(), "no fault was taken: {faults:x?}");
    }

    #[test]
    fn copy_into_a_registered_file_view_fills_the_file() {
        let Some(uffd) = userfaultfd_or_skip("copy_into_a_registered_file_view") else {
            return;
        };
        let object = alloc_shared_memory(2 * page(), "uffd-test").unwrap();
        let mapping = SparseMapping::new(4 * page()).unwrap();
        mapping
            .map_file(2 * page(), 2 * page(), object.as_fd(), 0, true)
            .unwrap();
        uffd.register(&mapping, 2 * page(), 2 * page()).unwrap();
        let data = vec![0x3c; page()];
        assert_eq!(uffd.copy(&mapping, 3 * page(), &data).unwrap(), Copied::All);
        let mut read = vec![0; page()];
        read_exact_at(object.as_fd(), &mut read, page() as u64).unwrap();
        assert_eq!(read, data);
        assert_eq!(byte(&mapping, 3 * page()), 0x3c);
        uffd.unregister(&mapping, 2 * page(), 2 * page()).unwrap();
    }

    #[test]
    fn a_touched_registered_page_is_reported_and_served() {
        let Some(uffd) = userfaultfd_or_skip("a_touched_registered_page_is_reported") else {
            return;
        };
        let mapping = private_mapping(1);
        uffd.register(&mapping, 0, page()).unwrap();
        let stop = StopEvent::new().unwrap();
        std::thread::scope(|scope| {
            // Blocks in the kernel until the page is filled.
            let reader = scope.spawn(|| byte(&mapping, 7));
            let ready = uffd.wait(&stop).unwrap();
            assert_eq!(
                ready,
                Ready {
                    faults: true,
                    stopped: false
                }
            );
            let mut faults = Vec::new();
            uffd.read_faults(&mut faults).unwrap();
            assert_eq!(faults, [mapping.as_ptr() as u64]);
            assert_eq!(
                uffd.copy(&mapping, 0, &vec![0x77; page()]).unwrap(),
                Copied::All
            );
            assert_eq!(reader.join().unwrap(), 0x77);
        });
    }

    #[test]
    fn ranges_outside_the_mapping_are_invalid_input() {
        let Some(uffd) = userfaultfd_or_skip("ranges_outside_the_mapping") else {
            return;
        };
        let mapping = private_mapping(2);
        let len = mapping.len();
        let data = vec![0x42; page()];
        // An offset at or past the end.
        assert_invalid_input(uffd.register(&mapping, len, page()));
        assert_invalid_input(uffd.unregister(&mapping, len, page()));
        assert_invalid_input(uffd.wake(&mapping, len, page()));
        assert_invalid_input(uffd.copy(&mapping, len, &data));
        assert_invalid_input(uffd.copy(&mapping, usize::MAX & !(page() - 1), &data));
        // A length that runs past the end (and one that overflows).
        assert_invalid_input(uffd.register(&mapping, page(), 2 * page()));
        assert_invalid_input(uffd.register(&mapping, page(), usize::MAX & !(page() - 1)));
        assert_invalid_input(uffd.unregister(&mapping, 0, len + page()));
        assert_invalid_input(uffd.wake(&mapping, page(), 2 * page()));
        assert_invalid_input(uffd.copy(&mapping, page(), &vec![0x42; 2 * page()]));
        // Nothing was registered or written: the memory is ordinary zeroed memory.
        assert_eq!(byte(&mapping, 0), 0);
        assert_eq!(byte(&mapping, len - 1), 0);
    }

    #[test]
    fn misaligned_and_empty_ranges_are_invalid_input() {
        let Some(uffd) = userfaultfd_or_skip("misaligned_and_empty_ranges") else {
            return;
        };
        let mapping = private_mapping(2);
        // A misaligned offset, a length that is not whole pages, an empty range.
        assert_invalid_input(uffd.register(&mapping, 1, page()));
        assert_invalid_input(uffd.register(&mapping, 0, page() + 1));
        assert_invalid_input(uffd.register(&mapping, 0, 0));
        assert_invalid_input(uffd.unregister(&mapping, 8, page()));
        assert_invalid_input(uffd.wake(&mapping, 0, 100));
        uffd.register(&mapping, 0, 2 * page()).unwrap();
        assert_invalid_input(uffd.copy(&mapping, 16, &vec![0x42; page()]));
        assert_invalid_input(uffd.copy(&mapping, 0, &[0x42; 100]));
        assert_invalid_input(uffd.copy(&mapping, 0, &[]));
        // None of those wrote anything: a whole-page copy still finds the page missing.
        assert_eq!(
            uffd.copy(&mapping, 0, &vec![0x42; page()]).unwrap(),
            Copied::All
        );
        assert_eq!(byte(&mapping, 16), 0x42);
        uffd.unregister(&mapping, 0, 2 * page()).unwrap();
    }

    #[test]
    fn copy_into_an_unregistered_range_fails_cleanly() {
        let Some(uffd) = userfaultfd_or_skip("copy_into_an_unregistered_range") else {
            return;
        };
        let registered = private_mapping(1);
        let other = private_mapping(2);
        uffd.register(&registered, 0, page()).unwrap();
        let data = vec![0x99; page()];
        // Never registered, or registered only in another mapping: an OS error, nothing written.
        for (mapping, offset) in [(&other, 0), (&other, page())] {
            let error = uffd.copy(mapping, offset, &data).unwrap_err();
            assert!(
                matches!(error.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)),
                "{error:?}"
            );
            assert_eq!(byte(mapping, offset), 0);
        }
        // Registered, then unregistered: the same.
        uffd.unregister(&registered, 0, page()).unwrap();
        let error = uffd.copy(&registered, 0, &data).unwrap_err();
        assert!(
            matches!(error.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)),
            "{error:?}"
        );
        assert_eq!(byte(&registered, 0), 0);
        // Unregistering or waking a range that was never registered is harmless.
        uffd.unregister(&other, 0, 2 * page()).unwrap();
        uffd.wake(&other, 0, 2 * page()).unwrap();
    }

    #[test]
    fn a_new_placement_drops_the_registration() {
        let Some(uffd) = userfaultfd_or_skip("a_new_placement_drops_the_registration") else {
            return;
        };
        let mapping = private_mapping(1);
        uffd.register(&mapping, 0, page()).unwrap();
        mapping.alloc(0, page()).unwrap();
        // The new memory is not registered: touching it does not wait, and copy refuses it.
        assert_eq!(byte(&mapping, 0), 0);
        mapping.alloc(0, page()).unwrap();
        assert!(uffd.copy(&mapping, 0, &vec![1; page()]).is_err());
        assert_eq!(byte(&mapping, 0), 0);
    }

    #[test]
    fn a_signalled_stop_event_ends_the_wait() {
        let Some(uffd) = userfaultfd_or_skip("a_signalled_stop_event_ends_the_wait") else {
            return;
        };
        let stop = StopEvent::new().unwrap();
        stop.signal().unwrap();
        let ready = uffd.wait(&stop).unwrap();
        assert_eq!(
            ready,
            Ready {
                faults: false,
                stopped: true
            }
        );
        // It stays signalled.
        assert!(uffd.wait(&stop).unwrap().stopped);
    }

    #[test]
    fn message_and_argument_layouts_match_the_kernel() {
        assert_eq!(std::mem::size_of::<UffdMsg>(), 32);
        assert_eq!(std::mem::size_of::<UffdioApi>(), 24);
        assert_eq!(std::mem::size_of::<UffdioRegister>(), 32);
        assert_eq!(std::mem::size_of::<UffdioCopy>(), 40);
        assert_eq!(std::mem::size_of::<UffdioRange>(), 16);
    }
}
