//! A minimal userfaultfd: creation (system call, then `/dev/userfaultfd`), the API handshake,
//! missing-mode registration, `UFFDIO_COPY`, `UFFDIO_WAKE` and page-fault events, plus the
//! [`StopEvent`] a fault-serving thread waits on beside it ([`Userfaultfd::wait`]).
//!
//! Written against the kernel's UAPI (`linux/userfaultfd.h`) with `libc` rather than taken from
//! the `userfaultfd` crate, whose `-sys` crate runs bindgen at build time and so would require
//! libclang and kernel headers on every machine that builds this project.

// Unsafe code: userfaultfd is raw system calls and ioctls on structures of the kernel's UAPI.
#![allow(unsafe_code)]

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

fn ioctl<T>(fd: RawFd, request: libc::c_ulong, argument: &mut T) -> io::Result<()> {
    // SAFETY: every request used here takes a pointer to the `repr(C)` structure of the
    // kernel's UAPI that `T` is, live and exclusive for the call.
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
        ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api)?;
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

    /// Registers `[address, address + len)` for missing-page faults; fails when `UFFDIO_COPY`
    /// is not offered there.
    pub fn register(&self, address: *mut u8, len: usize) -> io::Result<()> {
        let mut register = UffdioRegister {
            range: UffdioRange {
                start: address as u64,
                len: len as u64,
            },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        ioctl(self.fd.as_raw_fd(), UFFDIO_REGISTER, &mut register)?;
        if register.ioctls & UFFDIO_COPY_BIT == 0 {
            let _ = self.unregister(address, len);
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "UFFDIO_COPY is not offered for this memory",
            ));
        }
        Ok(())
    }

    /// Unregisters `[address, address + len)` (waking every thread waiting there).
    pub fn unregister(&self, address: *mut u8, len: usize) -> io::Result<()> {
        let mut range = UffdioRange {
            start: address as u64,
            len: len as u64,
        };
        ioctl(self.fd.as_raw_fd(), UFFDIO_UNREGISTER, &mut range)
    }

    /// Wakes the threads waiting on `[address, address + len)`.
    pub fn wake(&self, address: *mut u8, len: usize) -> io::Result<()> {
        let mut range = UffdioRange {
            start: address as u64,
            len: len as u64,
        };
        ioctl(self.fd.as_raw_fd(), UFFDIO_WAKE, &mut range)
    }

    /// Atomically fills the missing pages `[destination, destination + data.len())` of a
    /// registered range with `data`, waking the threads waiting there.
    pub fn copy(&self, destination: *mut u8, data: &[u8]) -> io::Result<Copied> {
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
            match ioctl(self.fd.as_raw_fd(), UFFDIO_COPY, &mut copy) {
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
    use crate::alloc::Allocation;
    use std::sync::atomic::Ordering;

    const PAGE: usize = 4096;

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

    fn byte(memory: &Allocation, offset: usize) -> u8 {
        memory.as_atomic_bytes()[offset].load(Ordering::Relaxed)
    }

    #[test]
    fn copy_fills_missing_pages_once_and_reports_present_ones() {
        let Some(uffd) = userfaultfd_or_skip("copy_fills_missing_pages_once") else {
            return;
        };
        let memory = Allocation::new(2 * PAGE).unwrap();
        let base = memory.as_ptr().cast::<u8>();
        uffd.register(base, 2 * PAGE).unwrap();
        let data = vec![0x5a; PAGE];
        assert_eq!(uffd.copy(base, &data).unwrap(), Copied::All);
        assert_eq!(byte(&memory, 0), 0x5a);
        assert_eq!(byte(&memory, PAGE - 1), 0x5a);
        // The page is present now: a second copy changes nothing.
        assert_eq!(uffd.copy(base, &[0x11; PAGE]).unwrap(), Copied::Exists);
        assert_eq!(byte(&memory, 0), 0x5a);
        uffd.unregister(base, 2 * PAGE).unwrap();
        // Unregistered, the second page is ordinary memory again: it reads zeros.
        assert_eq!(byte(&memory, PAGE), 0);
        let mut faults = Vec::new();
        uffd.read_faults(&mut faults).unwrap();
        assert!(faults.is_empty(), "no fault was taken: {faults:x?}");
    }

    #[test]
    fn a_touched_registered_page_is_reported_and_served() {
        let Some(uffd) = userfaultfd_or_skip("a_touched_registered_page_is_reported") else {
            return;
        };
        let memory = Allocation::new(PAGE).unwrap();
        let base = memory.as_ptr().cast::<u8>();
        uffd.register(base, PAGE).unwrap();
        let stop = StopEvent::new().unwrap();
        std::thread::scope(|scope| {
            // Blocks in the kernel until the page is filled.
            let reader = scope.spawn(|| memory.as_atomic_bytes()[7].load(Ordering::Relaxed));
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
            assert_eq!(faults, [base as u64]);
            assert_eq!(uffd.copy(base, &[0x77; PAGE]).unwrap(), Copied::All);
            assert_eq!(reader.join().unwrap(), 0x77);
        });
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
