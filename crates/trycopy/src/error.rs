//! The failure report of a guarded access: [`MemoryError`] and the OS detail [`FaultInfo`].
//!
//! The signal handler only reports raw facts (fault address, signal, `si_code`, trap number), in
//! two registers of the interrupted access that the wrapper reads back as a [`FaultRecord`]; the
//! wrapper turns that record into a [`MemoryError`] here, attributing the fault to the destination
//! or the source buffer.

use std::fmt;

/// Raw facts about one recovered fault, reported by the signal handler.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FaultRecord {
    /// `si_addr`: the faulting data address, 0 when the kernel reports none.
    pub(crate) address: usize,
    /// The signal number (SIGSEGV or SIGBUS).
    pub(crate) signal: i32,
    /// The kernel's `si_code` (for example `SEGV_ACCERR`).
    pub(crate) si_code: i32,
    /// The x86 trap number from the saved context (14 = page fault, 13 = general protection).
    pub(crate) trapno: u64,
}

impl FaultRecord {
    /// Packs everything but the address into one non-zero status word, which the handler puts
    /// in the interrupted access's status register: bit 0 set, the signal in bits 8..16, the
    /// `si_code` in bits 16..48 and the trap number in bits 48..64. Lossless for what a recovered
    /// fault carries (a signal below 256, a kernel `si_code` — always positive — and an x86
    /// exception vector, below 256); other values are truncated to their field.
    #[cfg_attr(
        not(all(target_arch = "x86_64", target_os = "linux")),
        allow(dead_code)
    )]
    pub(crate) fn to_status(self) -> usize {
        let signal = self.signal.to_le_bytes()[0];
        let si_code = u32::from_le_bytes(self.si_code.to_le_bytes());
        let trapno = self.trapno.to_le_bytes();
        let status = 1
            | u64::from(signal) << 8
            | u64::from(si_code) << 16
            | u64::from(u16::from_le_bytes([trapno[0], trapno[1]])) << 48;
        // x86-64 only (the caller): usize is 64 bits wide.
        usize::try_from(status).unwrap_or(1)
    }

    /// The record that [`to_status`](Self::to_status) packed, with the fault `address`.
    #[cold]
    #[inline(never)]
    #[cfg_attr(
        not(all(target_arch = "x86_64", target_os = "linux")),
        allow(dead_code)
    )]
    pub(crate) fn from_registers(address: usize, status: usize) -> Self {
        let bytes = (status as u64).to_le_bytes();
        Self {
            address,
            signal: i32::from(bytes[1]),
            si_code: i32::from_le_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]),
            trapno: u64::from(u16::from_le_bytes([bytes[6], bytes[7]])),
        }
    }
}

/// Operating-system detail of a recovered fault.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct FaultInfo {
    /// The signal number (`libc::SIGSEGV` or `libc::SIGBUS`).
    pub signal: i32,
    /// The kernel's `si_code`: `SEGV_MAPERR` (1), `SEGV_ACCERR` (2), `BUS_ADRERR` (2), ….
    pub si_code: i32,
    /// The x86 exception vector (14 for a page fault, 13 for a general-protection fault).
    pub trapno: u64,
}

impl fmt::Display for FaultInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match signal_name(self.signal) {
            Some(name) => f.write_str(name)?,
            None => write!(f, "signal {}", self.signal)?,
        }
        write!(
            f,
            " (si_code: {:#x}) (exception: {})",
            self.si_code, self.trapno
        )
    }
}

impl std::error::Error for FaultInfo {}

#[cfg(unix)]
fn signal_name(signal: i32) -> Option<&'static str> {
    match signal {
        libc::SIGSEGV => Some("SIGSEGV"),
        libc::SIGBUS => Some("SIGBUS"),
        libc::SIGILL => Some("SIGILL"),
        _ => None,
    }
}

#[cfg(not(unix))]
fn signal_name(_signal: i32) -> Option<&'static str> {
    None
}

/// A guarded access faulted.
///
/// [`offset`](Self::offset) is a hint: bytes after it may already have been written (backward
/// copy) and bytes before it may not (a faulting 32-byte block). Treat the whole destination as
/// indeterminate on failure.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("failed to {} memory", if self.is_write { "write" } else { "read" })]
pub struct MemoryError {
    offset: usize,
    is_write: bool,
    #[source]
    fault: FaultInfo,
    address: usize,
}

/// A buffer taking part in a guarded operation: its first byte and its length in bytes.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Span {
    pub(crate) start: usize,
    pub(crate) len: usize,
}

impl Span {
    pub(crate) fn new<T>(start: *const T, len: usize) -> Self {
        Self {
            start: start as usize,
            len,
        }
    }

    /// The offset of `address` within this span, if it lies inside.
    fn offset_of(&self, address: usize) -> Option<usize> {
        let offset = address.wrapping_sub(self.start);
        (offset < self.len).then_some(offset)
    }
}

impl MemoryError {
    /// Derives the report from a fault record.
    ///
    /// * no fault address (general-protection or alignment trap): offset 0, write when the
    ///   operation has no source, else read;
    /// * address in the destination: offset from the destination, write;
    /// * address in the source: offset from the source, read;
    /// * otherwise (not attributable): offset 0 with the computed direction; the raw address is
    ///   kept (the original panics here — a deliberate deviation).
    ///
    /// Out of line and cold: the guarded operations are inlined into their callers, and only
    /// their success path belongs there.
    #[cold]
    #[inline(never)]
    pub(crate) fn from_fault(source: Option<Span>, destination: Span, record: FaultRecord) -> Self {
        let fallback_is_write = source.is_none();
        let (offset, is_write) = if record.address == 0 {
            (0, fallback_is_write)
        } else if let Some(offset) = destination.offset_of(record.address) {
            (offset, true)
        } else if let Some(offset) = source.and_then(|s| s.offset_of(record.address)) {
            (offset, false)
        } else {
            (0, fallback_is_write)
        };
        Self {
            offset,
            is_write,
            fault: FaultInfo {
                signal: record.signal,
                si_code: record.si_code,
                trapno: record.trapno,
            },
            address: record.address,
        }
    }

    /// The byte offset of the fault within the buffer it was attributed to.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Whether the fault was attributed to writing the destination (else to reading the source).
    pub fn is_write(&self) -> bool {
        self.is_write
    }

    /// The operating-system detail of the fault.
    pub fn fault(&self) -> FaultInfo {
        self.fault
    }

    /// The raw faulting address (`si_addr`), 0 when the kernel reported none.
    pub fn address(&self) -> usize {
        self.address
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::error::Error;

    fn span(start: usize, len: usize) -> Span {
        Span { start, len }
    }

    fn record(address: usize) -> FaultRecord {
        FaultRecord {
            address,
            signal: libc::SIGSEGV,
            si_code: 2,
            trapno: 14,
        }
    }

    #[test]
    fn status_word_carries_every_detail_of_a_recovered_fault_and_is_never_zero() {
        for (signal, si_code, trapno) in [
            (libc::SIGSEGV, 1, 14),
            (libc::SIGSEGV, 2, 14),
            (libc::SIGBUS, 2, 14),
            (libc::SIGSEGV, 128, 13),
            (libc::SIGBUS, 5, 255),
            (64, 0x7fff_ffff, 0),
        ] {
            let record = FaultRecord {
                address: 0xffff_8000_0000_1234,
                signal,
                si_code,
                trapno,
            };
            let status = record.to_status();
            assert_ne!(status, 0);
            assert_eq!(FaultRecord::from_registers(record.address, status), record);
        }
    }

    #[test]
    fn fault_in_destination_is_a_write_relative_to_destination() {
        let err = MemoryError::from_fault(
            Some(span(0x1000, 0x100)),
            span(0x5000, 0x100),
            record(0x5010),
        );
        assert_eq!(
            (err.offset(), err.is_write(), err.address()),
            (0x10, true, 0x5010)
        );
        assert_eq!(err.to_string(), "failed to write memory");
    }

    #[test]
    fn fault_in_source_is_a_read_relative_to_source() {
        let err = MemoryError::from_fault(
            Some(span(0x1000, 0x100)),
            span(0x5000, 0x100),
            record(0x10ff),
        );
        assert_eq!((err.offset(), err.is_write()), (0xff, false));
        assert_eq!(err.to_string(), "failed to read memory");
    }

    #[test]
    fn destination_wins_when_the_spans_overlap() {
        let err = MemoryError::from_fault(
            Some(span(0x1000, 0x100)),
            span(0x1080, 0x100),
            record(0x10a0),
        );
        assert_eq!((err.offset(), err.is_write()), (0x20, true));
    }

    #[test]
    fn null_address_uses_the_operation_direction() {
        let copy = MemoryError::from_fault(Some(span(0x1000, 8)), span(0x5000, 8), record(0));
        assert_eq!((copy.offset(), copy.is_write()), (0, false));
        let fill = MemoryError::from_fault(None, span(0x5000, 8), record(0));
        assert_eq!((fill.offset(), fill.is_write()), (0, true));
    }

    #[test]
    fn unattributable_address_keeps_raw_address_with_offset_zero() {
        let err = MemoryError::from_fault(Some(span(0x1000, 8)), span(0x5000, 8), record(0x9000));
        assert_eq!(
            (err.offset(), err.is_write(), err.address()),
            (0, false, 0x9000)
        );
        let fill = MemoryError::from_fault(None, span(0x5000, 8), record(0x9000));
        assert_eq!((fill.offset(), fill.is_write()), (0, true));
    }

    #[test]
    fn end_of_span_is_outside() {
        let err =
            MemoryError::from_fault(Some(span(0x1000, 0x10)), span(0x2000, 0x10), record(0x2010));
        assert_eq!((err.offset(), err.is_write()), (0, false));
    }

    #[test]
    fn source_renders_signal_code_and_exception() {
        let err = MemoryError::from_fault(None, span(0x5000, 8), record(0x5000));
        let source = err.source().map(|s| s.to_string());
        assert_eq!(
            source.as_deref(),
            Some("SIGSEGV (si_code: 0x2) (exception: 14)")
        );
        let bus = FaultInfo {
            signal: libc::SIGBUS,
            si_code: 2,
            trapno: 14,
        };
        assert_eq!(bus.to_string(), "SIGBUS (si_code: 0x2) (exception: 14)");
        let other = FaultInfo {
            signal: 99,
            si_code: 1,
            trapno: 0,
        };
        assert_eq!(other.to_string(), "signal 99 (si_code: 0x1) (exception: 0)");
    }
}
