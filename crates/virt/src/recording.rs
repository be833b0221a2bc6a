//! [`RecordingPartition`]: a partition that records every call it receives.
//!
//! It is the test double of the memory-manager tests: each `map`/`unmap`/`prefetch`/`pin` call is appended to a
//! log as a [`RecordedCall`] (`map` calls also carry the writable and executable flags and the VA
//! as an offset from a base the caller names, normally the manager's VA window). Failures can be
//! injected per operation and GPA; they stay in force until cleared and the failing call is still
//! logged, with `failed` set. [`RecordingPartition::close`] makes the partition *gone*: later
//! calls are neither logged nor failed, while the log stays readable.
//!
//! Every logged call also takes a number from a process-wide sequence
//! ([`next_sequence_number`]) that other logs (the VA mappers' event logs) share, so logs kept in
//! different places can be interleaved in the order things happened.

use crate::Error;
use crate::PartitionMemoryMap;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The process-wide event sequence shared by every recording log.
static SEQUENCE: AtomicU64 = AtomicU64::new(1);

/// Takes the next number of the process-wide event sequence (starting at 1, strictly
/// increasing). Recording logs stamp their entries with it so separate logs can be merged in
/// the order the events happened.
pub fn next_sequence_number() -> u64 {
    SEQUENCE.fetch_add(1, Ordering::Relaxed)
}

/// The kind of a recorded partition call.
#[derive(Debug, Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordedOp {
    /// [`PartitionMemoryMap::map_range`].
    Map,
    /// [`PartitionMemoryMap::unmap_range`].
    Unmap,
    /// [`PartitionMemoryMap::prefetch_range`].
    Prefetch,
    /// [`PartitionMemoryMap::pin_range`].
    Pin,
}

impl RecordedOp {
    /// The lower-case name used in logs and by the JavaScript API (`"map"`, `"unmap"`, …).
    pub fn as_str(&self) -> &'static str {
        match self {
            RecordedOp::Map => "map",
            RecordedOp::Unmap => "unmap",
            RecordedOp::Prefetch => "prefetch",
            RecordedOp::Pin => "pin",
        }
    }
}

impl fmt::Display for RecordedOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`RecordedOp`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown partition operation {0:?} (expected map, unmap, prefetch or pin)")]
pub struct ParseRecordedOpError(pub String);

impl FromStr for RecordedOp {
    type Err = ParseRecordedOpError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "map" => Ok(RecordedOp::Map),
            "unmap" => Ok(RecordedOp::Unmap),
            "prefetch" => Ok(RecordedOp::Prefetch),
            "pin" => Ok(RecordedOp::Pin),
            other => Err(ParseRecordedOpError(other.to_owned())),
        }
    }
}

/// One call a [`RecordingPartition`] received.
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub struct RecordedCall {
    /// Which method was called.
    pub op: RecordedOp,
    /// The guest physical address.
    pub gpa: u64,
    /// The size in bytes.
    pub size: u64,
    /// `map` only: whether the mapping is writable.
    pub writable: Option<bool>,
    /// `map` only: whether the mapping is executable.
    pub exec: Option<bool>,
    /// `map` only: the host VA minus the partition's VA base (wrapping).
    pub va_offset: Option<u64>,
    /// Whether the call returned an injected error.
    pub failed: bool,
}

impl RecordedCall {
    /// A successful `map` call.
    pub fn map(gpa: u64, size: u64, writable: bool, exec: bool, va_offset: u64) -> Self {
        Self {
            op: RecordedOp::Map,
            gpa,
            size,
            writable: Some(writable),
            exec: Some(exec),
            va_offset: Some(va_offset),
            failed: false,
        }
    }

    /// A successful `unmap` call.
    pub fn unmap(gpa: u64, size: u64) -> Self {
        Self::plain(RecordedOp::Unmap, gpa, size)
    }

    /// A successful `prefetch` call.
    pub fn prefetch(gpa: u64, size: u64) -> Self {
        Self::plain(RecordedOp::Prefetch, gpa, size)
    }

    /// A successful `pin` call.
    pub fn pin(gpa: u64, size: u64) -> Self {
        Self::plain(RecordedOp::Pin, gpa, size)
    }

    /// The same call, marked as having returned an injected error.
    pub fn failed(self) -> Self {
        Self {
            failed: true,
            ..self
        }
    }

    fn plain(op: RecordedOp, gpa: u64, size: u64) -> Self {
        Self {
            op,
            gpa,
            size,
            writable: None,
            exec: None,
            va_offset: None,
            failed: false,
        }
    }
}

impl fmt::Display for RecordedCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({:#x}, {:#x}", self.op, self.gpa, self.size)?;
        if let (Some(writable), Some(exec)) = (self.writable, self.exec) {
            let w = if writable { "w" } else { "-" };
            let x = if exec { "x" } else { "-" };
            write!(f, ", {w}{x}")?;
        }
        if let Some(va_offset) = self.va_offset {
            write!(f, ", va+{va_offset:#x}")?;
        }
        f.write_str(")")?;
        if self.failed {
            f.write_str(" failed")?;
        }
        Ok(())
    }
}

/// The error a [`RecordingPartition`] returns for a call it was told to fail.
#[derive(Debug, Copy, Clone, PartialEq, Eq, thiserror::Error)]
#[error("injected {op} failure at gpa {gpa:#x}")]
pub struct InjectedFailure {
    /// The failed operation.
    pub op: RecordedOp,
    /// The GPA the failure rule names.
    pub gpa: u64,
}

#[derive(Debug, Default)]
struct Recorder {
    calls: Vec<(u64, RecordedCall)>,
    failures: HashSet<(RecordedOp, u64)>,
    closed: bool,
    va_base: usize,
}

impl Recorder {
    /// Logs a call (unless closed) and returns the injected failure, if any.
    fn record(&mut self, call: RecordedCall) -> Result<(), Error> {
        if self.closed {
            return Ok(());
        }
        let fail = self.failures.contains(&(call.op, call.gpa));
        self.calls.push((
            next_sequence_number(),
            RecordedCall {
                failed: fail,
                ..call
            },
        ));
        if fail {
            Err(Box::new(InjectedFailure {
                op: call.op,
                gpa: call.gpa,
            }))
        } else {
            Ok(())
        }
    }
}

/// A [`PartitionMemoryMap`] that records every call, for tests and scripting.
///
/// Thread-safe; cloning is not offered (the manager holds a weak reference, so dropping the last
/// `Arc` makes the partition gone). Use [`RecordingPartition::log_handle`] to keep reading the
/// log after the partition itself is dropped.
#[derive(Debug, Default)]
pub struct RecordingPartition {
    shared: Arc<Mutex<Recorder>>,
}

impl RecordingPartition {
    /// An empty log, no failure rules, VA base 0 (so `va_offset` is the raw VA).
    pub fn new() -> Self {
        Self::default()
    }

    /// Like [`RecordingPartition::new`], with `va_offset` measured from `va_base`.
    pub fn with_va_base(va_base: usize) -> Self {
        let partition = Self::new();
        partition.set_va_base(va_base);
        partition
    }

    /// Measures the `va_offset` of later `map` calls from `va_base` (normally the base of the
    /// manager's VA window, which the attaching code knows).
    pub fn set_va_base(&self, va_base: usize) {
        self.shared.lock().va_base = va_base;
    }

    /// The current VA base.
    pub fn va_base(&self) -> usize {
        self.shared.lock().va_base
    }

    /// The whole log, oldest first; does not clear it.
    pub fn log(&self) -> Vec<RecordedCall> {
        self.log_handle().log()
    }

    /// The whole log with each call's process-wide sequence number, oldest first.
    pub fn log_with_sequence(&self) -> Vec<(u64, RecordedCall)> {
        self.log_handle().log_with_sequence()
    }

    /// Empties the log.
    pub fn clear_log(&self) {
        self.log_handle().clear_log();
    }

    /// Returns the log and empties it.
    pub fn take_log(&self) -> Vec<RecordedCall> {
        self.log_handle().take_log()
    }

    /// Makes every later `op` call at exactly `gpa` fail with [`InjectedFailure`] until
    /// [`RecordingPartition::clear_failures`]. The failing call is still logged, with `failed`
    /// set. (The JavaScript API offers `map`, `pin` and `prefetch`; `unmap` is accepted too, for
    /// Rust tests of the manager's fatal-failure path.)
    pub fn fail_on(&self, op: RecordedOp, gpa: u64) {
        self.shared.lock().failures.insert((op, gpa));
    }

    /// Drops every failure rule.
    pub fn clear_failures(&self) {
        self.shared.lock().failures.clear();
    }

    /// Makes the partition gone: later calls succeed without being logged. The log stays
    /// readable. Managers that hold only a weak reference also see it gone once the last strong
    /// reference is dropped.
    pub fn close(&self) {
        self.shared.lock().closed = true;
    }

    /// Whether [`RecordingPartition::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    /// A handle to the log that stays valid after this partition is dropped.
    pub fn log_handle(&self) -> RecordingLog {
        RecordingLog {
            shared: self.shared.clone(),
        }
    }
}

impl PartitionMemoryMap for RecordingPartition {
    fn unmap_range(&self, addr: u64, size: u64) -> Result<(), Error> {
        self.shared.lock().record(RecordedCall::unmap(addr, size))
    }

    fn map_range(
        &self,
        data: *mut u8,
        size: usize,
        addr: u64,
        writable: bool,
        exec: bool,
    ) -> Result<(), Error> {
        let mut recorder = self.shared.lock();
        // Only the address value is kept; the pointer is never dereferenced.
        let va_offset = (data as usize).wrapping_sub(recorder.va_base) as u64;
        recorder.record(RecordedCall::map(
            addr,
            size as u64,
            writable,
            exec,
            va_offset,
        ))
    }

    fn prefetch_range(&self, addr: u64, size: u64) -> Result<(), Error> {
        self.shared
            .lock()
            .record(RecordedCall::prefetch(addr, size))
    }

    fn pin_range(&self, addr: u64, size: u64) -> Result<(), Error> {
        self.shared.lock().record(RecordedCall::pin(addr, size))
    }

    /// No guest runs on a recording partition: its (empty) dirty log never holds a write.
    fn logs_guest_writes(&self) -> bool {
        false
    }
}

/// A reading handle to a [`RecordingPartition`]'s log, independent of the partition's lifetime.
#[derive(Debug, Clone)]
pub struct RecordingLog {
    shared: Arc<Mutex<Recorder>>,
}

impl RecordingLog {
    /// The whole log, oldest first; does not clear it.
    pub fn log(&self) -> Vec<RecordedCall> {
        self.shared
            .lock()
            .calls
            .iter()
            .map(|(_, call)| *call)
            .collect()
    }

    /// The whole log with each call's process-wide sequence number, oldest first.
    pub fn log_with_sequence(&self) -> Vec<(u64, RecordedCall)> {
        self.shared.lock().calls.clone()
    }

    /// Empties the log.
    pub fn clear_log(&self) {
        self.shared.lock().calls.clear();
    }

    /// Returns the log and empties it.
    pub fn take_log(&self) -> Vec<RecordedCall> {
        std::mem::take(&mut self.shared.lock().calls)
            .into_iter()
            .map(|(_, call)| call)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::Weak;

    const BASE: usize = 0x7f00_0000_0000;

    fn va(offset: usize) -> *mut u8 {
        (BASE + offset) as *mut u8
    }

    #[test]
    fn records_every_call_in_order() {
        let partition = RecordingPartition::with_va_base(BASE);
        partition
            .map_range(va(0x2000), 0x1000, 0x2000, true, false)
            .unwrap();
        partition.prefetch_range(0x2000, 0x1000).unwrap();
        partition.pin_range(0x2000, 0x1000).unwrap();
        partition.unmap_range(0x2000, 0x1000).unwrap();
        assert_eq!(
            partition.log(),
            [
                RecordedCall::map(0x2000, 0x1000, true, false, 0x2000),
                RecordedCall::prefetch(0x2000, 0x1000),
                RecordedCall::pin(0x2000, 0x1000),
                RecordedCall::unmap(0x2000, 0x1000),
            ]
        );
        let sequence: Vec<u64> = partition
            .log_with_sequence()
            .iter()
            .map(|(seq, _)| *seq)
            .collect();
        assert!(sequence.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn va_offset_is_relative_to_the_named_base() {
        let partition = RecordingPartition::new();
        partition.map_range(va(0), 0x1000, 0, false, true).unwrap();
        partition.set_va_base(BASE - 0x1000);
        partition.map_range(va(0), 0x1000, 0, false, true).unwrap();
        let log = partition.log();
        assert_eq!(log[0].va_offset, Some(BASE as u64));
        assert_eq!(log[1].va_offset, Some(0x1000));
        assert_eq!(log[1].writable, Some(false));
        assert_eq!(log[1].exec, Some(true));
    }

    #[test]
    fn log_clear_and_take() {
        let partition = RecordingPartition::new();
        partition.unmap_range(0, 0x1000).unwrap();
        assert_eq!(partition.log().len(), 1);
        assert_eq!(partition.log().len(), 1, "log() does not clear");
        partition.clear_log();
        assert!(partition.log().is_empty());
        partition.unmap_range(0x1000, 0x1000).unwrap();
        assert_eq!(partition.take_log(), [RecordedCall::unmap(0x1000, 0x1000)]);
        assert!(partition.log().is_empty());
    }

    #[test]
    fn injected_failures_are_standing_rules_and_logged() {
        let partition = RecordingPartition::new();
        partition.fail_on(RecordedOp::Pin, 0);
        partition.fail_on(RecordedOp::Map, 0xa0000);
        let err = partition.pin_range(0, 0x1000).unwrap_err();
        assert_eq!(err.to_string(), "injected pin failure at gpa 0x0");
        assert!(partition.pin_range(0, 0x1000).is_err(), "rule stays");
        assert!(partition.pin_range(0x1000, 0x1000).is_ok(), "other gpa");
        assert!(
            partition.map_range(va(0), 0x1000, 0, true, true).is_ok(),
            "other op"
        );
        assert!(partition
            .map_range(va(0xa0000), 0x20000, 0xa0000, true, true)
            .is_err());
        let log = partition.take_log();
        assert_eq!(
            log.iter().map(|call| call.failed).collect::<Vec<_>>(),
            [true, true, false, false, true]
        );
        assert_eq!(log[0], RecordedCall::pin(0, 0x1000).failed());
        partition.clear_failures();
        assert!(partition.pin_range(0, 0x1000).is_ok());
        assert!(!partition.take_log()[0].failed);
    }

    #[test]
    fn closed_partition_is_silent_but_log_stays_readable() {
        let partition = RecordingPartition::new();
        partition.fail_on(RecordedOp::Map, 0);
        partition.unmap_range(0, 0x1000).unwrap();
        partition.close();
        assert!(partition.is_closed());
        assert!(partition.map_range(va(0), 0x1000, 0, true, true).is_ok());
        partition.unmap_range(0, 0x1000).unwrap();
        assert_eq!(partition.log(), [RecordedCall::unmap(0, 0x1000)]);
    }

    #[test]
    fn log_handle_outlives_the_partition() {
        let partition = Arc::new(RecordingPartition::new());
        let as_trait: Arc<dyn PartitionMemoryMap> = partition.clone();
        let weak: Weak<dyn PartitionMemoryMap> = Arc::downgrade(&as_trait);
        let log = partition.log_handle();
        weak.upgrade().unwrap().unmap_range(0x3000, 0x1000).unwrap();
        drop(as_trait);
        drop(partition);
        assert!(
            weak.upgrade().is_none(),
            "gone once the last Arc is dropped"
        );
        assert_eq!(log.log(), [RecordedCall::unmap(0x3000, 0x1000)]);
        assert_eq!(log.take_log().len(), 1);
        assert!(log.log().is_empty());
    }

    #[test]
    fn op_names_parse_and_display() {
        for op in [
            RecordedOp::Map,
            RecordedOp::Unmap,
            RecordedOp::Prefetch,
            RecordedOp::Pin,
        ] {
            assert_eq!(op.as_str().parse::<RecordedOp>(), Ok(op));
        }
        assert!("flush".parse::<RecordedOp>().is_err());
        assert_eq!(
            RecordedCall::map(0xa0000, 0x20000, true, false, 0xa0000).to_string(),
            "map(0xa0000, 0x20000, w-, va+0xa0000)"
        );
        assert_eq!(
            RecordedCall::pin(0, 0x1000).failed().to_string(),
            "pin(0x0, 0x1000) failed"
        );
    }

    #[test]
    fn is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<RecordingPartition>();
        assert_send_sync::<RecordingLog>();
    }
}
