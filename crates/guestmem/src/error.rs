//! Error types of guest memory.
//!
//! Backings report [`GuestMemoryBackingError`] (kind, optional precise address, cause) and, from
//! `page_fault`, [`PageFaultError`]. Every public `GuestMemory` method reports a
//! [`GuestMemoryError`], which adds the operation, the memory's debug name and the requested
//! range, and renders as
//! `guest memory '<name>': <op> error: failed to access <start>-<end>[ at <gpa>]`.
//!
//! The hardware fault that made a guarded access give up is not part of the source chain (the
//! backing's decision is); it is kept beside it as [`GuestMemoryError::fault`] for diagnostics.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use trycopy::FaultInfo;

/// A boxed error cause.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The kind of a guest memory failure.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GuestMemoryErrorKind {
    /// Any failure without a more specific kind (a hole in a mapping, a write to a read-only
    /// page, ...).
    Other,
    /// The address is outside valid guest memory.
    OutOfRange,
    /// The access was blocked by a higher virtual trust level.
    VtlProtected,
    /// A shared page was reached through a private address.
    NotPrivate,
    /// A private page was reached through a shared address.
    NotShared,
}

impl GuestMemoryErrorKind {
    /// The kind's name (`"Other"`, `"OutOfRange"`, ...), as the JS API spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Other => "Other",
            Self::OutOfRange => "OutOfRange",
            Self::VtlProtected => "VtlProtected",
            Self::NotPrivate => "NotPrivate",
            Self::NotShared => "NotShared",
        }
    }
}

impl fmt::Display for GuestMemoryErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A failure reported by a backing or by the access machinery, before the operation is known.
#[derive(Debug)]
pub struct GuestMemoryBackingError {
    kind: GuestMemoryErrorKind,
    /// The precise address, if known.
    gpa: Option<u64>,
    source: BoxError,
    fault: Option<FaultInfo>,
}

impl GuestMemoryBackingError {
    /// A failure of `kind` at `gpa` (`u64::MAX` = unknown address).
    pub fn new(
        kind: GuestMemoryErrorKind,
        gpa: u64,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self::at(kind, (gpa != u64::MAX).then_some(gpa), source)
    }

    /// A failure at a known (or explicitly unknown) address; unlike [`Self::new`], `u64::MAX`
    /// is a real address here.
    pub(crate) fn at(
        kind: GuestMemoryErrorKind,
        gpa: Option<u64>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self {
            kind,
            gpa,
            source: source.into(),
            fault: None,
        }
    }

    /// A failure of kind [`GuestMemoryErrorKind::Other`] at `gpa`.
    pub fn other(
        gpa: u64,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self::new(GuestMemoryErrorKind::Other, gpa, source)
    }

    /// The kind.
    pub fn kind(&self) -> GuestMemoryErrorKind {
        self.kind
    }

    /// The precise address, if known.
    pub fn gpa(&self) -> Option<u64> {
        self.gpa
    }

    pub(crate) fn with_fault(mut self, fault: FaultInfo) -> Self {
        self.fault = Some(fault);
        self
    }

    pub(crate) fn with_gpa(mut self, gpa: u64) -> Self {
        self.gpa = Some(gpa);
        self
    }
}

impl fmt::Display for GuestMemoryBackingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.gpa() {
            Some(gpa) => write!(f, "guest memory access error at {gpa:#x}"),
            None => f.write_str("guest memory access error"),
        }
    }
}

impl std::error::Error for GuestMemoryBackingError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

/// The error inside [`PageFaultAction::Fail`](crate::PageFaultAction::Fail).
#[derive(Debug)]
pub struct PageFaultError {
    kind: GuestMemoryErrorKind,
    source: BoxError,
}

impl PageFaultError {
    /// A page-fault failure of `kind`.
    pub fn new(
        kind: GuestMemoryErrorKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self {
            kind,
            source: source.into(),
        }
    }

    /// A page-fault failure of kind [`GuestMemoryErrorKind::Other`].
    pub fn other(source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self::new(GuestMemoryErrorKind::Other, source)
    }

    /// The kind.
    pub fn kind(&self) -> GuestMemoryErrorKind {
        self.kind
    }

    pub(crate) fn into_backing_error(self, gpa: u64) -> GuestMemoryBackingError {
        GuestMemoryBackingError::at(self.kind, Some(gpa), self.source)
    }
}

impl fmt::Display for PageFaultError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "page fault failed ({})", self.kind)
    }
}

impl std::error::Error for PageFaultError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

/// The `GuestMemory` operation that failed.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum GuestMemoryOperation {
    /// `read_at`, `read_plain`, `read_range`, ...
    Read,
    /// `write_at`, `write_plain`, `write_range`, ...
    Write,
    /// `fill_at`, `fill_range`, `zero_range`.
    Fill,
    /// `compare_exchange`.
    CompareExchange,
    /// `lock_gpns`, `lock_range`.
    Lock,
    /// `subrange`.
    Subrange,
    /// `probe_gpns`, `probe_gpn_readable_range`, `probe_gpn_writable_range`.
    Probe,
}

impl GuestMemoryOperation {
    /// The operation's name in messages: `read`, `write`, `fill`, `compare exchange`, `lock`,
    /// `subrange`, `probe`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Fill => "fill",
            Self::CompareExchange => "compare exchange",
            Self::Lock => "lock",
            Self::Subrange => "subrange",
            Self::Probe => "probe",
        }
    }
}

impl fmt::Display for GuestMemoryOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error of every `GuestMemory` operation.
#[derive(Debug)]
pub struct GuestMemoryError {
    debug_name: Arc<str>,
    operation: GuestMemoryOperation,
    range: Option<Range<u64>>,
    gpa: Option<u64>,
    kind: GuestMemoryErrorKind,
    source: BoxError,
    fault: Option<FaultInfo>,
}

impl GuestMemoryError {
    pub(crate) fn new(
        debug_name: &Arc<str>,
        operation: GuestMemoryOperation,
        range: Option<Range<u64>>,
        error: GuestMemoryBackingError,
    ) -> Self {
        Self {
            debug_name: debug_name.clone(),
            operation,
            range,
            gpa: error.gpa(),
            kind: error.kind,
            source: error.source,
            fault: error.fault,
        }
    }

    /// The kind of failure.
    pub fn kind(&self) -> GuestMemoryErrorKind {
        self.kind
    }

    /// The operation that failed.
    pub fn operation(&self) -> GuestMemoryOperation {
        self.operation
    }

    /// The debug name of the memory.
    pub fn debug_name(&self) -> &str {
        &self.debug_name
    }

    /// The precise failing address, if known.
    pub fn gpa(&self) -> Option<u64> {
        self.gpa
    }

    /// The requested range `gpa..gpa + len` (wrapping), absent for lock and probe operations and
    /// for operations on paged ranges.
    pub fn range(&self) -> Option<Range<u64>> {
        self.range.clone()
    }

    /// The hardware fault that ended the access, when a guarded access faulted and the backing's
    /// `page_fault` did not resolve it (it answered `Fail`, or kept answering `Retry` past the
    /// retry limit). The binding reports such an error of kind `Other` as
    /// `ERR_GUEST_MEMORY_FAULT`.
    pub fn fault(&self) -> Option<FaultInfo> {
        self.fault
    }
}

impl fmt::Display for GuestMemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "guest memory '{}': {} error: failed to access ",
            self.debug_name, self.operation
        )?;
        match &self.range {
            Some(range) => write!(f, "{:#x}-{:#x}", range.start, range.end)?,
            None => f.write_str("memory")?,
        }
        if let Some(gpa) = self.gpa {
            if self.range.as_ref().is_none_or(|range| range.start != gpa) {
                write!(f, " at {gpa:#x}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for GuestMemoryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

/// Internal causes, rendered in error chains.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Cause {
    #[error("no memory at address")]
    OutOfRange,
    #[error("memory not lockable")]
    NotLockable,
    #[error("no fallback for this operation")]
    NoFallback,
    #[error("page not mapped")]
    NotMapped,
    #[error("page fault not resolved after {0} retries")]
    RetryLimit(u32),
    #[error("invalid guest page number {0:#x}")]
    InvalidGpn(u64),
    #[error("locked range crosses a region boundary")]
    RunCrossesRegions,
}
