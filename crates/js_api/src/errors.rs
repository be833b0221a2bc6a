//! The one table from every Rust error to the JavaScript error it becomes: class, code, message,
//! fields and cause.
//!
//! [`ToJsError`] is implemented for each error type of the core crates as an exhaustive `match`
//! over its variants, so a new variant does not compile until it has a row here. The binding
//! never decides a class or a code itself: it calls `to_js_error()` (or one of the
//! [`JsError`] constructors for its own failures: bad arguments, closed objects) and throws the
//! result as JSON (`crate::json`). The TypeScript layer builds the error object from it and
//! nothing else (`ts/errors.ts`).
//!
//! Codes are `ERR_` plus the variant name in SCREAMING_SNAKE_CASE (`BadSize` →
//! `ERR_BAD_SIZE`), except where a row says otherwise; an OS error's code is its errno name,
//! which the TypeScript layer spells as Node does (`EINVAL`). [`ErrorCode`] lists every code the
//! package throws; `ts/generated/errors.ts` is written from it.

use crate::enums::string_union;
use crate::enums::FaultSignal;
use crate::enums::Form;
use crate::enums::Js;
use crate::enums::JsEnum;
use crate::enums::JsValue;
use crate::json::BigInt;
use memory_range::MemoryRange;
use serde::Serialize;
use std::error::Error as StdError;
use std::io;

/// Declares [`ErrorCode`] with its JavaScript spelling.
macro_rules! error_codes {
    ($($variant:ident = $code:literal,)+) => {
        /// Every error code the package throws (causes included), besides errno names.
        #[derive(Debug, Copy, Clone, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $(
                #[doc = $code]
                $variant,
            )+
        }

        string_union!(ErrorCode, "ErrorCode", "Every error code membacking throws (OS errors add errno names).", {
            $($variant = $code,)+
        });
    };
}

error_codes! {
    // Arguments and lifecycle (the binding).
    InvalidArgType = "ERR_INVALID_ARG_TYPE",
    InvalidArgValue = "ERR_INVALID_ARG_VALUE",
    BufferChanged = "ERR_BUFFER_CHANGED",
    InvalidInput = "ERR_INVALID_INPUT",
    Closed = "ERR_CLOSED",
    Panic = "ERR_PANIC",
    NativeBindingLoadFailed = "ERR_NATIVE_BINDING_LOAD_FAILED",
    // memory_range, vm_topology, the registrar.
    InvalidMemoryRange = "ERR_INVALID_MEMORY_RANGE",
    BadSize = "ERR_BAD_SIZE",
    BadMmioGaps = "ERR_BAD_MMIO_GAPS",
    BadMemoryRanges = "ERR_BAD_MEMORY_RANGES",
    Vtl2RangeBeforeEndOfRam = "ERR_VTL2_RANGE_BEFORE_END_OF_RAM",
    InvalidRamForX86 = "ERR_INVALID_RAM_FOR_X86",
    RegistrationFailed = "ERR_REGISTRATION_FAILED",
    RegistrarReentry = "ERR_REGISTRAR_REENTRY",
    // sparse_mmap, trycopy, guestmem.
    OutOfBounds = "ERR_OUT_OF_BOUNDS",
    Memory = "ERR_MEMORY",
    GuestMemoryOther = "ERR_GUEST_MEMORY_OTHER",
    GuestMemoryOutOfRange = "ERR_GUEST_MEMORY_OUT_OF_RANGE",
    GuestMemoryVtlProtected = "ERR_GUEST_MEMORY_VTL_PROTECTED",
    GuestMemoryNotPrivate = "ERR_GUEST_MEMORY_NOT_PRIVATE",
    GuestMemoryNotShared = "ERR_GUEST_MEMORY_NOT_SHARED",
    GuestMemoryFault = "ERR_GUEST_MEMORY_FAULT",
    AllocationFailed = "ERR_ALLOCATION_FAILED",
    // GuestMemoryBuilder.build.
    RamTooLarge = "ERR_RAM_TOO_LARGE",
    VaMapper = "ERR_VA_MAPPER",
    AliasMapWontFit = "ERR_ALIAS_MAP_WONT_FIT",
    PrivateMemoryWithLegacy = "ERR_PRIVATE_MEMORY_WITH_LEGACY",
    PrivateMemoryWithExistingBacking = "ERR_PRIVATE_MEMORY_WITH_EXISTING_BACKING",
    PrivateRamAlloc = "ERR_PRIVATE_RAM_ALLOC",
    ThpWithoutPrivateMemory = "ERR_THP_WITHOUT_PRIVATE_MEMORY",
    ThpUnsupportedPlatform = "ERR_THP_UNSUPPORTED_PLATFORM",
    InvalidLayout = "ERR_INVALID_LAYOUT",
    ExistingBackingTooSmall = "ERR_EXISTING_BACKING_TOO_SMALL",
    ExistingBackingNotWritable = "ERR_EXISTING_BACKING_NOT_WRITABLE",
    Thread = "ERR_THREAD",
    // attachPartition and the mappers.
    PartitionMapper = "ERR_PARTITION_MAPPER",
    Map = "ERR_MAP",
    Pin = "ERR_PIN",
    Unsupported = "ERR_UNSUPPORTED",
    AlreadyAttached = "ERR_ALREADY_ATTACHED",
    MemoryManagerGone = "ERR_MEMORY_MANAGER_GONE",
    Reserve = "ERR_RESERVE",
    RemoteWithPrivateMemory = "ERR_REMOTE_WITH_PRIVATE_MEMORY",
    InjectedFailure = "ERR_INJECTED_FAILURE",
    // The region manager, visibility, device windows, the manager's lifecycle.
    NoMapping = "ERR_NO_MAPPING",
    InvalidRamRegion = "ERR_INVALID_RAM_REGION",
    OverlapError = "ERR_OVERLAP_ERROR",
    RegionOutOfRange = "ERR_REGION_OUT_OF_RANGE",
    EmptyRegion = "ERR_EMPTY_REGION",
    MappingOverlap = "ERR_MAPPING_OVERLAP",
    MappingOutOfRange = "ERR_MAPPING_OUT_OF_RANGE",
    EmptyMapping = "ERR_EMPTY_MAPPING",
    PartialUnmap = "ERR_PARTIAL_UNMAP",
    NoSuchRegion = "ERR_NO_SUCH_REGION",
    InvalidPartitionOffset = "ERR_INVALID_PARTITION_OFFSET",
    ManagerPoisoned = "ERR_MANAGER_POISONED",
    FatalError = "ERR_FATAL_ERROR",
    ManagerGone = "ERR_MANAGER_GONE",
    RegionOverlapsPrivateRam = "ERR_REGION_OVERLAPS_PRIVATE_RAM",
    DecommitFailed = "ERR_DECOMMIT_FAILED",
    // KVM.
    KvmUnavailable = "ERR_KVM_UNAVAILABLE",
    KvmIoctl = "ERR_KVM_IOCTL",
    HostCall = "ERR_HOST_CALL",
    SlotOverlap = "ERR_SLOT_OVERLAP",
    PartialSlotUnmap = "ERR_PARTIAL_SLOT_UNMAP",
    NoFreeSlot = "ERR_NO_FREE_SLOT",
    TooManyVcpus = "ERR_TOO_MANY_VCPUS",
    ReadOnlyUnsupported = "ERR_READ_ONLY_UNSUPPORTED",
    VcpuBusy = "ERR_VCPU_BUSY",
    VcpuReadPending = "ERR_VCPU_READ_PENDING",
    NoPendingRead = "ERR_NO_PENDING_READ",
    DirtyLogOff = "ERR_DIRTY_LOG_OFF",
    // Dirty tracking, snapshots and restores.
    SnapshotCorrupt = "ERR_SNAPSHOT_CORRUPT",
    SnapshotVersion = "ERR_SNAPSHOT_VERSION",
    SnapshotLayout = "ERR_SNAPSHOT_LAYOUT",
    DirtyTrackingOff = "ERR_DIRTY_TRACKING_OFF",
    // Live migration.
    MigrationAborted = "ERR_MIGRATION_ABORTED",
    MigrationProtocol = "ERR_MIGRATION_PROTOCOL",
    MigrationDowntime = "ERR_MIGRATION_DOWNTIME",
    MigrationInProgress = "ERR_MIGRATION_IN_PROGRESS",
}

/// The JavaScript class of an error.
#[derive(Debug, Copy, Clone, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// A wrong JavaScript type.
    TypeError,
    /// A well-typed but invalid value, and every input the core would panic on.
    RangeError,
    /// A foreign error in a cause chain (a partition's own error of a type the table does not
    /// know): message only.
    Error,
    /// The base of the package's errors.
    MembackingError,
    /// `MemoryRange.tryNew` failed.
    InvalidMemoryRangeError,
    /// Layout construction and the x86 legacy split.
    MemoryLayoutError,
    /// The registrar.
    RegistrarError,
    /// An operating-system error with an errno.
    OsError,
    /// A guarded access to a sparse mapping.
    SparseMappingError,
    /// A guest memory operation.
    GuestMemoryError,
    /// `GuestMemoryBuilder.build`.
    MemoryBuildError,
    /// `attachPartition`.
    PartitionAttachError,
    /// Mapping into a partition.
    PartitionMapperError,
    /// Creating a VA mapper.
    VaMapperError,
    /// The region manager, visibility, device windows, the manager's lifecycle.
    MemoryManagerError,
    /// KVM partitions and vCPUs.
    KvmError,
    /// Dirty tracking, snapshots and restores.
    SnapshotError,
    /// Live migration.
    MigrationError,
}

impl JsEnum for ErrorClass {
    const TS_NAME: &'static str = "ErrorClassName";
    const DOC: &'static str = "The class an error of the native binding becomes.";
    const FORM: Form = Form::Union;
    fn members() -> &'static [Self] {
        &[
            Self::TypeError,
            Self::RangeError,
            Self::Error,
            Self::MembackingError,
            Self::InvalidMemoryRangeError,
            Self::MemoryLayoutError,
            Self::RegistrarError,
            Self::OsError,
            Self::SparseMappingError,
            Self::GuestMemoryError,
            Self::MemoryBuildError,
            Self::PartitionAttachError,
            Self::PartitionMapperError,
            Self::VaMapperError,
            Self::MemoryManagerError,
            Self::KvmError,
            Self::SnapshotError,
            Self::MigrationError,
        ]
    }
    fn member_name(self) -> &'static str {
        match self {
            Self::TypeError => "TypeError",
            Self::RangeError => "RangeError",
            Self::Error => "Error",
            Self::MembackingError => "MembackingError",
            Self::InvalidMemoryRangeError => "InvalidMemoryRangeError",
            Self::MemoryLayoutError => "MemoryLayoutError",
            Self::RegistrarError => "RegistrarError",
            Self::OsError => "OsError",
            Self::SparseMappingError => "SparseMappingError",
            Self::GuestMemoryError => "GuestMemoryError",
            Self::MemoryBuildError => "MemoryBuildError",
            Self::PartitionAttachError => "PartitionAttachError",
            Self::PartitionMapperError => "PartitionMapperError",
            Self::VaMapperError => "VaMapperError",
            Self::MemoryManagerError => "MemoryManagerError",
            Self::KvmError => "KvmError",
            Self::SnapshotError => "SnapshotError",
            Self::MigrationError => "MigrationError",
        }
    }
    fn js_value(self) -> JsValue {
        JsValue::Str(self.member_name())
    }
}

/// A recovered fault as `FaultInfo` (`{signal, siCode, trapno}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultView {
    signal: String,
    si_code: i32,
    trapno: u64,
}

impl From<trycopy::FaultInfo> for FaultView {
    fn from(fault: trycopy::FaultInfo) -> Self {
        FaultView {
            signal: FaultSignal::of(fault.signal).map_or_else(
                || format!("signal {}", fault.signal),
                |signal| signal.js_str().to_owned(),
            ),
            si_code: fault.si_code,
            trapno: fault.trapno,
        }
    }
}

/// A range of a guest memory error (plain bigints, not a `MemoryRange`: it may be unaligned).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpanView {
    start: BigInt,
    end: BigInt,
}

/// The fields an error carries besides class, code and message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Fields {
    /// Our explanation of the error (the values involved, the rule, what to do), where the
    /// message is a text the contract fixes and cannot carry it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// `InvalidMemoryRangeError`: the rejected bounds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<BigInt>,
    /// `InvalidMemoryRangeError`: the rejected bounds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<BigInt>,
    /// `RegistrarError`: the original's `Err` value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<BigInt>,
    /// `OsError`: the errno value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    /// `OsError`: the failing system call, where the binding knows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscall: Option<&'static str>,
    /// `SparseMappingError`: where the access failed, from its start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<BigInt>,
    /// `SparseMappingError`: whether the failing access was a write.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_write: Option<bool>,
    /// `SparseMappingError`, `GuestMemoryError`: the recovered fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultView>,
    /// `GuestMemoryError`: the upstream kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<Js<guestmem::GuestMemoryErrorKind>>,
    /// `GuestMemoryError`: the operation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op: Option<&'static str>,
    /// `GuestMemoryError`: the precise failing address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpa: Option<BigInt>,
    /// `GuestMemoryError`: the requested range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<SpanView>,
    /// `ERR_ALLOCATION_FAILED` of `GuestMemory.allocate`: the size asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<BigInt>,
    /// `SnapshotError` (`ERR_SNAPSHOT_CORRUPT`, `ERR_SNAPSHOT_VERSION`): the snapshot file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// `SnapshotError`: what is wrong or differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub what: Option<String>,
    /// `ERR_SNAPSHOT_VERSION`: the version found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found: Option<u64>,
    /// `ERR_SNAPSHOT_VERSION`: the version this build reads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supported: Option<u32>,
    /// `ERR_SNAPSHOT_LAYOUT`: the snapshot directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// An OS error of a snapshot: the path it concerns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `ERR_DIRTY_TRACKING_OFF`: the base an incremental snapshot was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// `ERR_DIRTY_TRACKING_OFF`, `ERR_UNSUPPORTED` of a lazy restore: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A restore's device-window failure: the window's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// A dirty-log failure: the partition's index (registration order).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<usize>,
    /// The error of one change of a batch (`manager.apply`): the change's index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_index: Option<usize>,
    /// The error of one entry of a vectored copy (`readv`/`writev`): the entry's index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry_index: Option<usize>,
    /// `ERR_MIGRATION_ABORTED`: where the migration stopped (`'handshake'`, `'rounds'`,
    /// `'final'`, `'completing'`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<&'static str>,
    /// `ERR_MIGRATION_PROTOCOL`: the side that found the bad frame (`'source'`,
    /// `'destination'`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detected_by: Option<&'static str>,
    /// `ERR_MIGRATION_DOWNTIME`: the pre-copy rounds sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rounds: Option<u32>,
    /// `ERR_MIGRATION_DOWNTIME`: the bytes still dirty at the last decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remainder_bytes: Option<BigInt>,
    /// `ERR_MIGRATION_DOWNTIME`: the bandwidth measured, bytes per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bandwidth_bytes_per_sec: Option<Float>,
    /// `ERR_MIGRATION_DOWNTIME`: the downtime the remainder would take, milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicted_ms: Option<Float>,
    /// `ERR_MIGRATION_DOWNTIME`: the caller's budget, milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_downtime_ms: Option<u64>,
}

/// A measured figure of an error (a JSON number; compared bit for bit so that [`Fields`] stays
/// `Eq`).
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(transparent)]
pub struct Float(pub f64);

impl PartialEq for Float {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Float {}

/// Whether an error has no extra fields (so the JSON leaves them out).
#[allow(
    clippy::borrowed_box,
    reason = "serde passes the boxed field by reference"
)]
fn no_fields(fields: &Box<Fields>) -> bool {
    **fields == Fields::default()
}

/// An error as JavaScript gets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JsError {
    /// The class.
    pub class: Js<ErrorClass>,
    /// The code; `None` for `OsError` (the TypeScript layer names the errno) and for foreign
    /// `Error` causes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<Js<ErrorCode>>,
    /// The message.
    pub message: String,
    /// Extra fields, set on the error object (boxed: most errors have none).
    #[serde(skip_serializing_if = "no_fields")]
    pub fields: Box<Fields>,
    /// The wrapped source error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<Box<JsError>>,
    /// The token under which the TypeScript layer keeps a value a JavaScript callback threw:
    /// that value becomes the `cause`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause_token: Option<u32>,
}

impl JsError {
    /// An error of `class` with `code`.
    pub fn new(class: ErrorClass, code: ErrorCode, message: impl Into<String>) -> Self {
        JsError {
            class: Js(class),
            code: Some(Js(code)),
            message: message.into(),
            fields: Box::default(),
            cause: None,
            cause_token: None,
        }
    }

    /// The class and code.
    pub fn kind(&self) -> (ErrorClass, Option<ErrorCode>) {
        (self.class.0, self.code.map(|code| code.0))
    }

    /// With extra fields (a `detail` set before is kept unless `fields` has its own).
    pub fn with_fields(mut self, fields: Fields) -> Self {
        let detail = self.fields.detail.take();
        self.fields = Box::new(fields);
        if self.fields.detail.is_none() {
            self.fields.detail = detail;
        }
        self
    }

    /// With `detail` as the explanation (kept beside the fields set so far).
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.fields.detail = Some(detail.into());
        self
    }

    /// With `context` (where in a larger call this error happened) put before its detail; the
    /// message stays the error's own.
    pub fn in_context(mut self, context: &str) -> Self {
        self.fields.detail = Some(match self.fields.detail.take() {
            Some(detail) => format!("{context}; {detail}"),
            None => context.to_owned(),
        });
        self
    }

    /// With `cause` as the wrapped source.
    pub fn with_cause(mut self, cause: JsError) -> Self {
        self.cause = Some(Box::new(cause));
        self
    }

    /// With the source of `error` (if any) as the cause.
    fn with_source_of(self, error: &(dyn StdError + 'static)) -> Self {
        match error.source() {
            Some(source) => self.with_cause(from_source(source)),
            None => self,
        }
    }

    /// A wrong JavaScript type (`TypeError`).
    pub fn arg_type(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::TypeError, ErrorCode::InvalidArgType, message)
    }

    /// A well-typed but invalid value (`RangeError`), including a core panic's text.
    pub fn arg_value(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::RangeError, ErrorCode::InvalidArgValue, message)
    }

    /// `name`, a buffer `call` copies into, held `before` bytes when the call began and `now`
    /// bytes after JavaScript ran during it (a hook detached, transferred or resized it).
    pub fn buffer_changed(name: &str, call: &str, before: usize, now: usize) -> Self {
        Self::new(
            ErrorClass::TypeError,
            ErrorCode::BufferChanged,
            format!(
                "{name} changed while {call} was using it: it was {before} bytes and is {now} \
                 bytes now (a hook detached, transferred or resized its ArrayBuffer), so the \
                 bytes read were not copied into it; leave a buffer's ArrayBuffer as it is until \
                 the call returns"
            ),
        )
    }

    /// An object used after `close()` (or after `build()` consumed it).
    pub fn closed(what: &str) -> Self {
        Self::new(
            ErrorClass::MembackingError,
            ErrorCode::Closed,
            format!("{what} is closed"),
        )
    }

    /// An operation on a manager that was closed, as the objects obtained from it report.
    pub fn manager_gone() -> Self {
        Self::new(
            ErrorClass::MemoryManagerError,
            ErrorCode::ManagerGone,
            "the memory manager is closed",
        )
    }

    /// A failure that is a bug in membacking (an N-API call that should not fail, a panic
    /// outside a guarded call, an error of a kind no row expects).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::MembackingError, ErrorCode::Panic, message)
    }

    /// A transfer handle this process never issued.
    pub fn unknown_handle(id: u64) -> Self {
        Self::arg_value(format!(
            "no object for handle {id}: it was not made by toHandle() in this process \
             (handles do not cross processes)"
        ))
    }

    /// A transfer handle that was opened or closed already (handles are single-use).
    pub fn spent_handle(id: u64) -> Self {
        Self::arg_value(format!(
            "handle {id} was already opened or closed: a handle opens once, so call \
             toHandle() again for each fromHandle()"
        ))
    }

    /// A transfer handle of another kind than the `fromHandle` it was given to.
    pub fn wrong_handle(id: u64, is: &str, wanted: &str) -> Self {
        Self::arg_value(format!(
            "handle {id} is a {is} handle, not a {wanted} handle: open it with {is}.fromHandle()"
        ))
    }

    /// An OS error of `syscall`, or the error's own row when it carries no errno.
    pub fn os(error: &io::Error, syscall: &'static str) -> Self {
        match error.raw_os_error() {
            Some(errno) => JsError {
                class: Js(ErrorClass::OsError),
                code: None,
                message: with_descriptor_hint(format!("{syscall}: {error}"), error),
                fields: Box::new(Fields {
                    errno: Some(errno),
                    syscall: Some(syscall),
                    ..Fields::default()
                }),
                cause: None,
                cause_token: None,
            },
            None => error.to_js_error(),
        }
    }

    /// A registration that failed at `address` (the original's `Err` value); `cause_token`
    /// names what the JavaScript callback threw.
    pub fn registration_failed(address: u64, cause_token: Option<u32>) -> Self {
        let mut error = Self::new(
            ErrorClass::RegistrarError,
            ErrorCode::RegistrationFailed,
            format!("failed to register guest memory at {address:#x}"),
        )
        .with_fields(Fields {
            address: Some(BigInt(address)),
            ..Fields::default()
        });
        error.cause_token = cause_token;
        error
    }

    /// `register` called from inside the registration callback.
    pub fn registrar_reentry() -> Self {
        Self::new(
            ErrorClass::RegistrarError,
            ErrorCode::RegistrarReentry,
            "register was called from inside the registration callback",
        )
    }

    /// A device window operation's `io::Error`: without an errno, `Unsupported` (overlapping or
    /// partial mappings) is the manager's error; a wrapped manager error keeps its own row.
    pub fn device_window(error: &io::Error) -> Self {
        if error.raw_os_error().is_none()
            && error.kind() == io::ErrorKind::Unsupported
            && error.get_ref().is_none_or(|inner| known(inner).is_none())
        {
            return Self::new(
                ErrorClass::MemoryManagerError,
                ErrorCode::Unsupported,
                error.to_string(),
            );
        }
        error.to_js_error()
    }

    /// The error of a refused `mapToGuest`: as [`Self::device_window`], and when the manager
    /// refused the placement (an invalid range, an overlap) its `detail` also says that the
    /// window is unplaced now, since the earlier placement is removed before a new one is made
    /// (as in the original).
    pub fn map_to_guest(error: &io::Error) -> Self {
        let mut js_error = Self::device_window(error);
        let refused = matches!(
            js_error.kind().1,
            Some(
                ErrorCode::InvalidInput
                    | ErrorCode::OverlapError
                    | ErrorCode::RegionOutOfRange
                    | ErrorCode::RegionOverlapsPrivateRam
            )
        );
        if refused {
            js_error.fields.detail = Some(match js_error.fields.detail.take() {
                Some(detail) => format!("{detail}; {LEFT_UNPLACED}"),
                None => LEFT_UNPLACED.to_owned(),
            });
        }
        js_error
    }

    /// The error of entry `index` of a vectored copy (`readv`/`writev`): `self` with the entry
    /// named in the message (`list[3]…`, `what` being its failing part, such as `.gpa`, or
    /// empty) and in `entryIndex`.
    pub fn in_entry(mut self, index: usize, what: &str) -> Self {
        self.message = format!("list[{index}]{what}: {}", self.message);
        self.fields.entry_index = Some(index);
        self
    }

    /// A failed guarded `access` to a sparse mapping; an access refused before it started
    /// names its offset, length and the reservation's size.
    pub fn sparse_mapping(error: &sparse_mmap::SparseMappingError, access: SparseAccess) -> Self {
        match error {
            sparse_mmap::SparseMappingError::Memory(memory) => {
                memory_error(memory, error.to_string()).with_detail(fault_detail(memory, access))
            }
            sparse_mmap::SparseMappingError::OutOfBounds => {
                let SparseAccess {
                    offset,
                    len,
                    reserved,
                    is_write,
                } = access;
                let what = if is_write { "write" } else { "read" };
                Self::new(
                    ErrorClass::SparseMappingError,
                    ErrorCode::OutOfBounds,
                    format!(
                        "out of bounds: a {what} of {len:#x} bytes at offset {offset:#x} passes \
                         the end of the {reserved:#x}-byte reservation: keep offset + length at \
                         or below {reserved:#x}"
                    ),
                )
                .with_fields(Fields {
                    // Bytes from the start of the access: nothing was accessed.
                    offset: Some(BigInt(0)),
                    is_write: Some(is_write),
                    ..Fields::default()
                })
            }
        }
    }
}

/// A guarded access to a sparse mapping, for [`JsError::sparse_mapping`].
#[derive(Debug, Clone, Copy)]
pub struct SparseAccess {
    /// Where it starts in the reservation.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
    /// The reservation's size.
    pub reserved: u64,
    /// A write (or fill), not a read.
    pub is_write: bool,
}

/// Where a guarded access to a sparse mapping faulted, why that happens and what to do: the
/// `detail` of `ERR_MEMORY` (whose message, `failed to read memory`, is the core's).
fn fault_detail(memory: &trycopy::MemoryError, access: SparseAccess) -> String {
    let SparseAccess {
        offset,
        len,
        is_write,
        ..
    } = access;
    // The fault's offset within the access is a hint (a copy may run backwards).
    let at = offset.saturating_add(memory.offset() as u64);
    if is_write {
        format!(
            "a write of {len:#x} bytes at offset {offset:#x} of the reservation faulted at offset \
             {at:#x}: nothing writable is placed there (never placed or unmapped, mapZero's \
             read-only zero pages, a read-only mapFile, or setWritable(..., false)); place \
             writable memory there first (alloc, a writable mapFile, setWritable(..., true))"
        )
    } else {
        format!(
            "a read of {len:#x} bytes at offset {offset:#x} of the reservation faulted at offset \
             {at:#x}: nothing readable is placed there (never placed or unmapped, or a mapFile \
             view past the end of its file); place memory there first (alloc, mapZero, mapFile)"
        )
    }
}

/// A guarded access that faulted, with `message`.
fn memory_error(memory: &trycopy::MemoryError, message: String) -> JsError {
    JsError::new(ErrorClass::SparseMappingError, ErrorCode::Memory, message).with_fields(Fields {
        offset: Some(BigInt(memory.offset() as u64)),
        is_write: Some(memory.is_write()),
        fault: Some(FaultView::from(memory.fault())),
        ..Fields::default()
    })
}

/// Converts an error of the core into the JavaScript error it becomes.
pub trait ToJsError {
    /// The JavaScript error (its row of the table).
    fn to_js_error(&self) -> JsError;
}

/// A `JsError` is its own row (for code that already has one).
impl ToJsError for JsError {
    fn to_js_error(&self) -> JsError {
        self.clone()
    }
}

/// An error of `class` with `code`: the error's display as message, its source as cause.
fn row(class: ErrorClass, code: ErrorCode, error: &(dyn StdError + 'static)) -> JsError {
    JsError::new(class, code, error.to_string()).with_source_of(error)
}

/// What to do when building a manager failed because the process or the system ran out of
/// descriptors.
pub const TOO_MANY_OPEN_FILES: &str = "too many open files: close managers you no longer need \
     (manager.close()) or raise the limit (ulimit -n)";

/// What to do about an OS error that says the process or the system ran out of descriptors.
pub const OUT_OF_DESCRIPTORS: &str = "too many open files: close managers and Mappables you no \
     longer need (close()) or raise the limit (ulimit -n)";

/// The `OsError` of a file operation `op` on `path` that failed with `source` (`error` the
/// Rust error, whose text leads the message).
fn path_os_error(
    error: &impl std::fmt::Display,
    op: &'static str,
    path: &std::path::Path,
    source: &io::Error,
) -> JsError {
    let mut js = source.to_js_error();
    js.message = with_descriptor_hint(format!("{error}: {source}"), source);
    if js.fields.errno.is_some() {
        js.fields.op = Some(op);
        js.fields.path = Some(path.display().to_string());
    }
    js
}

/// What a snapshot that could not be written left, and what to do about `source`.
fn not_written_detail(
    target: &std::path::Path,
    path: &std::path::Path,
    source: &io::Error,
) -> String {
    let advice = match source.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT) => {
            "its file system is full (or the quota is reached): free space there, or snapshot to a directory on another file system"
        }
        Some(libc::EROFS) => "its file system is mounted read-only: snapshot to a writable one",
        Some(libc::EACCES | libc::EPERM) => {
            "this process may not write there: snapshot to a directory it can write"
        }
        Some(libc::EIO) => "the storage reported an I/O error",
        _ => "snapshot again once the cause is removed",
    };
    format!(
        "the snapshot of {} was being written at {} (in its temporary directory, which is removed); {} is unchanged: {advice}",
        target.display(),
        path.display(),
        target.display()
    )
}

/// `message`, followed by what to do when `error` is EMFILE or ENFILE.
fn with_descriptor_hint(message: String, error: &io::Error) -> String {
    if out_of_descriptors(error) {
        format!("{message}: {OUT_OF_DESCRIPTORS}")
    } else {
        message
    }
}

/// Whether `error` says the process (EMFILE) or the system (ENFILE) has no descriptor left.
fn out_of_descriptors(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

impl ToJsError for vm_topology::memory::Error {
    fn to_js_error(&self) -> JsError {
        use vm_topology::memory::Error as E;
        let code = match self {
            E::BadSize => ErrorCode::BadSize,
            E::BadMmioGaps => ErrorCode::BadMmioGaps,
            E::BadMemoryRanges => ErrorCode::BadMemoryRanges,
            E::Vtl2RangeBeforeEndOfRam => ErrorCode::Vtl2RangeBeforeEndOfRam,
        };
        row(ErrorClass::MemoryLayoutError, code, self)
    }
}

impl ToJsError for vm_topology::memory::LayoutProblem {
    /// The error the constructor returns (its code, and its text as the message, which the
    /// contract fixes); which range breaks which rule is the `detail`.
    fn to_js_error(&self) -> JsError {
        self.error().to_js_error().with_detail(self.to_string())
    }
}

impl ToJsError for vm_topology::x86_legacy::InvalidRamForX86 {
    fn to_js_error(&self) -> JsError {
        row(
            ErrorClass::MemoryLayoutError,
            ErrorCode::InvalidRamForX86,
            self,
        )
    }
}

/// `x86LegacyRamRanges` of `layout` refused: the core's row with [`invalid_ram_for_x86_detail`].
pub fn invalid_ram_for_x86(
    error: &vm_topology::x86_legacy::InvalidRamForX86,
    layout: &vm_topology::memory::MemoryLayout,
) -> JsError {
    error
        .to_js_error()
        .with_detail(invalid_ram_for_x86_detail(layout))
}

/// The `detail` of `ERR_INVALID_RAM_FOR_X86` (whose message the contract fixes) for `layout`:
/// what its first RAM range is, the rule it breaks and what to do.
pub fn invalid_ram_for_x86_detail(layout: &vm_topology::memory::MemoryLayout) -> String {
    const ONE_MB: u64 = 0x10_0000;
    let rule = "x86 legacy support splits the first megabyte (conventional memory, the VGA \
                window, the PAM pieces, the system BIOS) into RAM regions of their own, so the \
                first RAM range must start at 0 and hold at least 1 MiB (0x100000): give such \
                RAM, or build without x86LegacySupport";
    match layout.ram().first() {
        Some(first) if first.range.start() != 0 => format!(
            "the first RAM range {} starts at {:#x}, not 0: {rule}",
            first.range,
            first.range.start()
        ),
        Some(first) if first.range.end() < ONE_MB => format!(
            "the first RAM range {} holds {:#x} bytes, less than 1 MiB: {rule}",
            first.range,
            first.range.len()
        ),
        _ => format!("the layout has no RAM range that starts at 0 and holds 1 MiB: {rule}"),
    }
}

impl ToJsError for memory_range::InvalidMemoryRange {
    fn to_js_error(&self) -> JsError {
        row(
            ErrorClass::InvalidMemoryRangeError,
            ErrorCode::InvalidMemoryRange,
            self,
        )
        .with_fields(Fields {
            start: Some(BigInt(self.start())),
            end: Some(BigInt(self.end())),
            ..Fields::default()
        })
    }
}

impl ToJsError for io::Error {
    /// Without a syscall name (see [`JsError::os`] for one): an errno is an `OsError`; a
    /// wrapped error of the table keeps its row; `InvalidInput` is a `RangeError`.
    fn to_js_error(&self) -> JsError {
        if let Some(errno) = self.raw_os_error() {
            return JsError {
                class: Js(ErrorClass::OsError),
                code: None,
                message: with_descriptor_hint(self.to_string(), self),
                fields: Box::new(Fields {
                    errno: Some(errno),
                    ..Fields::default()
                }),
                cause: None,
                cause_token: None,
            };
        }
        if let Some(inner) = self.get_ref().and_then(|inner| known(inner)) {
            return inner;
        }
        match self.kind() {
            io::ErrorKind::InvalidInput => JsError::new(
                ErrorClass::RangeError,
                ErrorCode::InvalidInput,
                self.to_string(),
            ),
            io::ErrorKind::Unsupported => JsError::new(
                ErrorClass::MembackingError,
                ErrorCode::Unsupported,
                self.to_string(),
            ),
            _ => JsError::internal(format!("unexpected error (a bug in membacking): {self}")),
        }
    }
}

impl ToJsError for guestmem::GuestMemoryError {
    /// `ERR_GUEST_MEMORY_<KIND>`, or `ERR_GUEST_MEMORY_FAULT` when a hardware fault ended it.
    /// The message is the original's template exactly. A `NoMapping`/`ReadOnlyMapping`/
    /// `ManagerGone` source is the `cause` (with its own message and detail); any other source
    /// (an internal cause, a hook's failure, whose thrown value is the cause through its token)
    /// is the `detail`, so that its text is said once.
    fn to_js_error(&self) -> JsError {
        use guestmem::GuestMemoryErrorKind as K;
        let kind = self.kind();
        let code = if self.fault().is_some() {
            ErrorCode::GuestMemoryFault
        } else {
            match kind {
                K::OutOfRange => ErrorCode::GuestMemoryOutOfRange,
                K::VtlProtected => ErrorCode::GuestMemoryVtlProtected,
                K::NotPrivate => ErrorCode::GuestMemoryNotPrivate,
                K::NotShared => ErrorCode::GuestMemoryNotShared,
                // `Other` and any kind added upstream later (the enum is non-exhaustive).
                _ => ErrorCode::GuestMemoryOther,
            }
        };
        let source = self.source();
        let mut error = JsError::new(ErrorClass::GuestMemoryError, code, self.to_string())
            .with_fields(Fields {
                kind: Some(Js(kind)),
                op: Some(self.operation().name()),
                gpa: self.gpa().map(BigInt),
                range: self.range().map(|range| SpanView {
                    start: BigInt(range.start),
                    end: BigInt(range.end),
                }),
                fault: self.fault().map(FaultView::from),
                ..Fields::default()
            });
        error.cause_token = crate::hooks::cause_token(self);
        if let Some(source) = source {
            let source_is_cause = error.cause_token.is_none()
                && (source.is::<membacking::NoMapping>()
                    || source.is::<membacking::ReadOnlyMapping>()
                    || source.is::<membacking::ManagerGone>());
            error = if source_is_cause {
                error.with_cause(from_source(source))
            } else {
                error.with_detail(source.to_string())
            };
        }
        error
    }
}

impl ToJsError for guestmem::VectoredError {
    /// The failing entry's own error (its message, GPA and range: what `readAt`/`writeAt` of
    /// the entry throws), with the entry's index in `entryIndex` and named in `detail`.
    fn to_js_error(&self) -> JsError {
        let index = self.index;
        let mut error = self.error.to_js_error().in_context(&format!(
            "list[{index}] failed (the entries before it were copied)"
        ));
        error.fields.entry_index = Some(index);
        error
    }
}

impl ToJsError for guestmem::AllocationError {
    fn to_js_error(&self) -> JsError {
        row(
            ErrorClass::MembackingError,
            ErrorCode::AllocationFailed,
            self,
        )
        .with_fields(Fields {
            size: Some(BigInt(self.size() as u64)),
            ..Fields::default()
        })
    }
}

impl ToJsError for guestmem::ReadToVecError {
    /// A read into a new buffer: the guest memory's error, or `ERR_ALLOCATION_FAILED` with the
    /// size and what to do.
    fn to_js_error(&self) -> JsError {
        use guestmem::ReadToVecError as E;
        match self {
            E::Memory(memory) => memory.to_js_error(),
            E::Allocation { size } => JsError::new(
                ErrorClass::MembackingError,
                ErrorCode::AllocationFailed,
                format!("{self}: read it in smaller pieces, or readAt into buffers of your own"),
            )
            .with_fields(Fields {
                size: Some(BigInt(*size as u64)),
                ..Fields::default()
            }),
        }
    }
}

impl ToJsError for guestmem::LockedPageAccessError {
    fn to_js_error(&self) -> JsError {
        use guestmem::LockedPageAccessError as E;
        match self {
            E::Memory(memory) => {
                memory_error(memory, format!("locked page access failed: {memory}"))
            }
            E::PageIndex { .. } | E::OutOfBounds { .. } => JsError::arg_value(self.to_string()),
        }
    }
}

impl ToJsError for virt::ParseRecordedOpError {
    fn to_js_error(&self) -> JsError {
        JsError::arg_value(self.to_string())
    }
}

impl ToJsError for virt::InjectedFailure {
    fn to_js_error(&self) -> JsError {
        row(
            ErrorClass::MembackingError,
            ErrorCode::InjectedFailure,
            self,
        )
    }
}

impl ToJsError for membacking::MemoryBuildError {
    fn to_js_error(&self) -> JsError {
        use membacking::MemoryBuildError as E;
        let code = match self {
            E::RegionManager(inner) => return inner.to_js_error(),
            E::RamTooLarge(_) => ErrorCode::RamTooLarge,
            E::AllocationFailed(source) if out_of_descriptors(source) => {
                let mut error = row(
                    ErrorClass::MemoryBuildError,
                    ErrorCode::AllocationFailed,
                    self,
                );
                error.message = format!("{}: {TOO_MANY_OPEN_FILES}", error.message);
                return error;
            }
            E::AllocationFailed(_) => ErrorCode::AllocationFailed,
            E::VaMapper(inner) => {
                return explain_reserve(
                    row(ErrorClass::MemoryBuildError, ErrorCode::VaMapper, self),
                    inner,
                );
            }
            E::AliasMapWontFit => ErrorCode::AliasMapWontFit,
            E::InvalidRamForX86 => ErrorCode::InvalidRamForX86,
            E::PrivateMemoryWithLegacy => ErrorCode::PrivateMemoryWithLegacy,
            E::PrivateMemoryWithExistingBacking => ErrorCode::PrivateMemoryWithExistingBacking,
            E::PrivateRamAlloc(_, _) => ErrorCode::PrivateRamAlloc,
            E::ThpWithoutPrivateMemory => ErrorCode::ThpWithoutPrivateMemory,
            E::ThpUnsupportedPlatform => ErrorCode::ThpUnsupportedPlatform,
            E::InvalidLayout { .. } => ErrorCode::InvalidLayout,
            E::ExistingBackingTooSmall { .. } => ErrorCode::ExistingBackingTooSmall,
            E::ExistingBackingNotWritable => ErrorCode::ExistingBackingNotWritable,
            E::Thread(_) => ErrorCode::Thread,
        };
        row(ErrorClass::MemoryBuildError, code, self)
    }
}

impl ToJsError for membacking::PartitionAttachError {
    fn to_js_error(&self) -> JsError {
        use membacking::PartitionAttachError as E;
        let code = match self {
            E::Manager(inner) => return inner.to_js_error(),
            E::VaMapper(inner) => {
                return explain_reserve(
                    row(ErrorClass::PartitionAttachError, ErrorCode::VaMapper, self),
                    inner,
                );
            }
            E::PartitionMapper(_) => ErrorCode::PartitionMapper,
            E::Unsupported => ErrorCode::Unsupported,
            E::AlreadyAttached(_) => ErrorCode::AlreadyAttached,
        };
        row(ErrorClass::PartitionAttachError, code, self)
    }
}

impl ToJsError for membacking::VaMapperError {
    fn to_js_error(&self) -> JsError {
        use membacking::VaMapperError as E;
        let code = match self {
            E::MemoryManagerGone(_) => ErrorCode::MemoryManagerGone,
            E::Reserve(_) => ErrorCode::Reserve,
            E::RemoteWithPrivateMemory => ErrorCode::RemoteWithPrivateMemory,
            E::Thread(_) => ErrorCode::Thread,
        };
        explain_reserve(row(ErrorClass::VaMapperError, code, self), self)
    }
}

/// Why the kernel refuses the VA window with ENOMEM, and what to do: the `detail` of
/// `ERR_VA_MAPPER` and `ERR_RESERVE` (whose messages the contract fixes).
pub const RESERVE_REFUSED: &str = "the guest's VA window (address space from 0 to the end of \
     the layout's last MMIO gap, or of its VTL2 range or VTL0 alias map when they end higher) is \
     reserved whole when the manager is built, with no memory committed, and the kernel refused \
     the reservation (ENOMEM): an address-space limit (ulimit -v, RLIMIT_AS) counts it in full, \
     so raise or lift that limit (ulimit -v unlimited), or use a layout that ends lower";

/// The error of `new SparseMapping(len)`: reserving `len` bytes of address space failed. The
/// message stays the OS error's (or the overflow text of `sparse_mmap`); the detail names the
/// length, why it was refused and what to do.
pub fn sparse_mapping_reserve(error: &io::Error, len: usize) -> JsError {
    let js_error = JsError::os(error, "mmap");
    if error.raw_os_error() == Some(libc::ENOMEM) {
        js_error.with_detail(format!(
            "a SparseMapping reserves its whole length ({len:#x} bytes) of address space when \
             it is made, with no memory committed, and the kernel refused (ENOMEM): the length is \
             more than the address space this process has left, or than an address-space limit \
             (ulimit -v) allows; use a smaller length or raise the limit"
        ))
    } else if error.kind() == io::ErrorKind::InvalidInput && len != 0 {
        js_error.with_detail(format!(
            "the length {len:#x}, rounded up to the reservation's alignment (1 GiB for lengths \
             from 1 GiB), does not fit in 64 bits; no process has that much address space, so \
             use a length the guest really needs"
        ))
    } else {
        js_error
    }
}

/// The error of `SparseMapping#mapFile(offset, len, mappable, fileOffset, writable)` (`mmap`):
/// a file offset that `mmap` refuses with EINVAL because it is not a multiple of the page size
/// or beyond the largest file offset is explained in the detail.
pub fn sparse_map_file(error: &std::io::Error, file_offset: u64) -> JsError {
    let js_error = JsError::os(error, "mmap");
    let page = sparse_mmap::SparseMapping::page_size() as u64;
    if error.raw_os_error() != Some(libc::EINVAL) {
        return js_error;
    }
    if file_offset > i64::MAX as u64 {
        return js_error.with_detail(format!(
            "fileOffset {file_offset:#x} is beyond the largest file offset ({:#x}): pass an \
             offset inside the object",
            i64::MAX
        ));
    }
    if !file_offset.is_multiple_of(page) {
        return js_error.with_detail(format!(
            "fileOffset {file_offset:#x} is not a multiple of the page size ({page:#x} bytes), \
             and a file is mapped from page boundaries only: pass a page-aligned fileOffset"
        ));
    }
    js_error
}

/// The longest name `memfd_create` takes, in bytes: `NAME_MAX` less the `memfd:` prefix the
/// kernel gives it.
pub const MEMFD_NAME_MAX: usize = 249;

/// The error of `Mappable.allocSharedMemory(size, name)`: the OS error of the step that failed,
/// named by its system call. A name the kernel refuses as too long (EINVAL) is explained in the
/// detail; a failed `ftruncate` names the size in its message, and when the size is too large
/// (EFBIG) the detail says why and what to do.
pub fn alloc_shared_memory(error: &sparse_mmap::AllocSharedMemoryError, name: &str) -> JsError {
    let mut js_error = JsError::os(&error.source, error.step.syscall());
    if error.step == sparse_mmap::AllocSharedMemoryStep::MemfdCreate
        && error.source.raw_os_error() == Some(libc::EINVAL)
        && name.len() > MEMFD_NAME_MAX
    {
        let start: String = name.chars().take(24).collect();
        return js_error.with_detail(format!(
            "the name ({start:?}…) is {} bytes long, and a shared memory object's name is at \
             most {MEMFD_NAME_MAX} bytes (UTF-8; the kernel's limit for memfd_create): use a \
             shorter name",
            name.len()
        ));
    }
    if error.step != sparse_mmap::AllocSharedMemoryStep::Ftruncate
        || error.source.raw_os_error().is_none()
    {
        return js_error;
    }
    let size = error.size;
    js_error.message = format!("ftruncate to {size:#x} bytes: {}", error.source);
    if error.source.raw_os_error() == Some(libc::EFBIG) {
        js_error = js_error.with_detail(format!(
            "sizing the new shared memory object to {size:#x} bytes failed: the size is beyond \
             the largest file this process may make (at most 0x7fffffffffffffff bytes, and no \
             more than the file size limit, ulimit -f, allows); use a smaller size or raise \
             the limit (ulimit -f unlimited)"
        ));
    }
    js_error
}

/// The error of `Mappable.fromFd(fd)`: duplicating `fd` failed. The message names the
/// descriptor; for one that is not open (EBADF) the detail says what to pass instead.
pub fn mappable_from_fd(error: &io::Error, fd: i32) -> JsError {
    let mut js_error = JsError::os(error, "fcntl");
    if error.raw_os_error().is_none() {
        return js_error;
    }
    js_error.message = format!("fcntl(F_DUPFD_CLOEXEC) of fd {fd}: {}", js_error.message);
    if error.raw_os_error() == Some(libc::EBADF) {
        js_error = js_error.with_detail(format!(
            "fd {fd} is not an open descriptor of this process, so there is nothing to \
             duplicate: pass a descriptor the process has open, such as the one a parent handed \
             down in a child's stdio (stdio[3] arrives as fd 3), or mappable.fd of an open \
             Mappable"
        ));
    }
    js_error
}

/// A failed `decommitRam(range)` of a manager whose RAM regions are `ram`: the core's row, with
/// [`decommit_outside_ram`]'s detail for `InvalidRamRegion`.
pub fn decommit_error(
    error: &membacking::RegionManagerError,
    range: MemoryRange,
    ram: &[MemoryRange],
) -> JsError {
    match error {
        membacking::RegionManagerError::InvalidRamRegion(_) => error
            .to_js_error()
            .with_detail(decommit_outside_ram(range, ram)),
        other => other.to_js_error(),
    }
}

/// The detail of `decommitRam(range)` refused with `ERR_INVALID_RAM_REGION` (whose message is
/// the visibility control's): the first byte of `range` outside `ram` (the manager's RAM
/// regions), the rule, and guest RAM as contiguous ranges.
pub fn decommit_outside_ram(range: MemoryRange, ram: &[MemoryRange]) -> String {
    let mut sorted = ram.to_vec();
    sorted.sort();
    let runs: Vec<MemoryRange> = memory_range::flatten_ranges(sorted).collect();
    let listed = runs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let rule = format!(
        "decommitRam releases pages of guest RAM only: pass a non-empty, page-aligned range \
         lying wholly in guest RAM ({listed})"
    );
    if range.is_empty() {
        return format!("{range} is empty, so there is nothing to release; {rule}");
    }
    // The first byte of `range` that no RAM run covers.
    let mut cursor = range.start();
    for run in &runs {
        if run.contains_addr(cursor) {
            cursor = run.end();
        }
    }
    if cursor >= range.end() {
        return rule;
    }
    format!("{cursor:#x} in {range} is not guest RAM (an MMIO gap, or past the end of RAM); {rule}")
}

/// A failed build of `layout` with the VTL0 alias offset `alias` as JavaScript sees it: the
/// core's row, with a detail from the layout and the offset for the original's variants that
/// carry nothing: `InvalidRamForX86` ([`invalid_ram_for_x86_detail`]) and `AliasMapWontFit`
/// ([`alias_map_wont_fit`]).
pub fn memory_build_error(
    error: &membacking::MemoryBuildError,
    alias: Option<u64>,
    layout: &vm_topology::memory::MemoryLayout,
) -> JsError {
    use membacking::MemoryBuildError as E;
    let js = error.to_js_error();
    match (error, alias, layout.end_of_ram_or_mmio_checked()) {
        (E::InvalidRamForX86, _, _) => js.with_detail(invalid_ram_for_x86_detail(layout)),
        (E::AliasMapWontFit, Some(offset), Some(end)) => {
            let end = end.max(layout.vtl2_range().map_or(0, |range| range.end()));
            js.with_detail(alias_map_wont_fit(offset, end))
        }
        _ => js,
    }
}

/// The detail of `ERR_ALIAS_MAP_WONT_FIT`: why `offset` does not fit above a guest address space
/// ending at `end_of_layout`, the rule and an offset that fits.
pub fn alias_map_wont_fit(offset: u64, end_of_layout: u64) -> String {
    let page = guestmem::PAGE_SIZE as u64;
    let why = if !offset.is_multiple_of(page) {
        format!("the VTL0 alias offset {offset:#x} is not a multiple of 4 KiB (0x1000)")
    } else if offset < end_of_layout {
        format!(
            "the VTL0 alias offset {offset:#x} lies inside the guest address space, which ends \
             at {end_of_layout:#x} (the end of the last MMIO gap, of RAM or of the VTL2 range)"
        )
    } else {
        format!(
            "the VTL0 alias at {offset:#x} would repeat the guest address space (up to \
             {end_of_layout:#x}) past the end of the 64-bit address space"
        )
    };
    let suggested = end_of_layout.div_ceil(page).saturating_mul(page);
    format!(
        "{why}: the alias map repeats the guest address space [0, {end_of_layout:#x}) from the \
         offset, so pass a page-aligned offset at or above {end_of_layout:#x} whose sum with \
         {end_of_layout:#x} fits in 64 bits, such as {suggested:#x}"
    )
}

/// What a refused `mapToGuest` leaves ([`JsError::map_to_guest`]).
pub const LEFT_UNPLACED: &str = "the window is not placed now: its earlier placement (if any) is \
     removed before a new one is made, as in the original, so a refused placement leaves none; \
     place it again (a deviceMapToGuest change of manager.apply() changes nothing when refused)";

/// The detail of `ERR_MEMORY_MANAGER_GONE`: a client asked for guest memory (a VA mapper) after
/// its manager stopped.
pub const MAPPER_MANAGER_GONE: &str = "the memory manager this client belongs to has stopped \
     (closed, or garbage-collected once nothing referenced it), so it cannot give this process \
     guest memory: call client.guestMemory() while the manager is open, and keep the manager \
     referenced (and open) while its clients are in use";

/// `error` with a detail for the VA mapper failures whose message alone does not say what to do:
/// [`RESERVE_REFUSED`] when `cause` is the kernel refusing the VA window for lack of memory,
/// [`MAPPER_MANAGER_GONE`] when the manager had stopped.
fn explain_reserve(error: JsError, cause: &membacking::VaMapperError) -> JsError {
    match cause {
        membacking::VaMapperError::Reserve(source)
            if source.raw_os_error() == Some(libc::ENOMEM) =>
        {
            error.with_detail(RESERVE_REFUSED)
        }
        membacking::VaMapperError::MemoryManagerGone(_) => error.with_detail(MAPPER_MANAGER_GONE),
        _ => error,
    }
}

impl ToJsError for membacking::PartitionMapperError {
    fn to_js_error(&self) -> JsError {
        use membacking::PartitionMapperError as E;
        let code = match self {
            E::Map(_) => ErrorCode::Map,
            E::Pin(_) => ErrorCode::Pin,
        };
        row(ErrorClass::PartitionMapperError, code, self)
    }
}

impl ToJsError for membacking::RegionManagerError {
    fn to_js_error(&self) -> JsError {
        use membacking::RegionManagerError as E;
        let code = match self {
            E::OverlapError(inner) => return inner.to_js_error(),
            E::InvalidRamRegion(inner) => return inner.to_js_error(),
            E::PartitionMapper(inner) => return inner.to_js_error(),
            E::RegionOutOfRange { .. } => ErrorCode::RegionOutOfRange,
            E::EmptyRegion { .. } => ErrorCode::EmptyRegion,
            E::MappingOverlap { .. } => ErrorCode::MappingOverlap,
            // A device mapping past its object's end is MappingOutOfRange, as a mapping past
            // the region's end is; the Rust variant stays distinct, and its message says which
            // bound.
            E::MappingOutOfRange { .. } | E::MappingBeyondObject { .. } => {
                ErrorCode::MappingOutOfRange
            }
            E::EmptyMapping { .. } => ErrorCode::EmptyMapping,
            E::PartialUnmap { .. } => ErrorCode::PartialUnmap,
            E::NoSuchRegion(_) => ErrorCode::NoSuchRegion,
            E::InvalidPartitionOffset { .. } => ErrorCode::InvalidPartitionOffset,
            E::ManagerPoisoned { .. } => ErrorCode::ManagerPoisoned,
            E::ManagerGone => ErrorCode::ManagerGone,
            E::RegionOverlapsPrivateRam { .. } => ErrorCode::RegionOverlapsPrivateRam,
            E::DecommitFailed { .. } => ErrorCode::DecommitFailed,
            // The same code as a KvmPartition's own refusal: the manager foresaw it.
            E::NoFreeSlot { .. } => ErrorCode::NoFreeSlot,
        };
        row(ErrorClass::MemoryManagerError, code, self)
    }
}

impl ToJsError for membacking::BatchError {
    /// A change's error is the error that change makes on its own, with the change's index in
    /// the message and in `changeIndex`; a manager failure is the manager's row.
    fn to_js_error(&self) -> JsError {
        use membacking::BatchChangeError as C;
        use membacking::BatchError as E;
        let (index, error) = match self {
            E::Change { index, source } => {
                let error = match source {
                    C::Region(error) => error.to_js_error(),
                    C::Device(error) => JsError::device_window(error),
                };
                (*index, error)
            }
            E::ForeignWindow { index, name } => (
                *index,
                JsError::arg_value(format!(
                    "device memory window {name:?} belongs to another memory manager: a batch \
                     may only change the windows of the manager that applies it"
                )),
            ),
            E::Manager(inner) => return inner.to_js_error(),
        };
        // The message is the one the change makes on its own; where it sits in the batch is
        // in `changeIndex` and `detail`.
        let mut error = error.in_context(&format!(
            "changes[{index}] (nothing in the batch was applied)"
        ));
        error.fields.change_index = Some(index);
        error
    }
}

impl ToJsError for membacking::OverlapError {
    fn to_js_error(&self) -> JsError {
        row(
            ErrorClass::MemoryManagerError,
            ErrorCode::OverlapError,
            self,
        )
    }
}

/// What `ERR_INVALID_RAM_REGION` (whose message is the original's) asks for: the `detail`.
pub const INVALID_RAM_REGION_DETAIL: &str = "setRamVisibility (and a ramVisibility change of \
     plan/apply) takes exactly one of the manager's RAM regions, as manager.ramRegions() lists \
     them (with x86 legacy support the VGA window, each PAM piece and the system BIOS are regions \
     of their own); decommitRam takes a non-empty range that lies wholly in guest RAM: give such \
     a range";

impl ToJsError for membacking::InvalidRamRegion {
    fn to_js_error(&self) -> JsError {
        row(
            ErrorClass::MemoryManagerError,
            ErrorCode::InvalidRamRegion,
            self,
        )
        .with_detail(INVALID_RAM_REGION_DETAIL)
    }
}

/// Why an access found no mapping, and what to do: the `detail` of `ERR_NO_MAPPING`.
pub const NO_MAPPING_DETAIL: &str = "nothing is mapped there (an MMIO gap without a device \
     window, RAM made Unmapped, past the end of the layout, or RAM whose manager was garbage \
     collected: its regions went with it): map a device window there, make the RAM visible, \
     access guest RAM, or keep the manager referenced while its memory is used";

impl ToJsError for membacking::NoMapping {
    /// The original's message (`no mapping for {range}`); why and what to do in `detail`.
    fn to_js_error(&self) -> JsError {
        row(ErrorClass::MemoryManagerError, ErrorCode::NoMapping, self)
            .with_detail(NO_MAPPING_DETAIL)
    }
}

impl ToJsError for membacking::ReadOnlyMapping {
    /// A write to a read-only mapping fails NoMapping, as in the original: `ERR_NO_MAPPING` with
    /// its message; that the range is read-only, and what to do, is the `detail`.
    fn to_js_error(&self) -> JsError {
        membacking::NoMapping(self.0)
            .to_js_error()
            .with_detail(self.to_string())
    }
}

impl ToJsError for membacking::ManagerGone {
    fn to_js_error(&self) -> JsError {
        row(ErrorClass::MemoryManagerError, ErrorCode::ManagerGone, self)
    }
}

impl ToJsError for membacking::region_manager::FatalError {
    fn to_js_error(&self) -> JsError {
        row(ErrorClass::MemoryManagerError, ErrorCode::FatalError, self)
    }
}

/// `ManagerPoisoned` keeps its fatal error behind an `Arc`, which is what its `source()` is.
impl ToJsError for std::sync::Arc<membacking::region_manager::FatalError> {
    fn to_js_error(&self) -> JsError {
        self.as_ref().to_js_error()
    }
}

#[cfg(target_arch = "x86_64")]
impl ToJsError for virt_kvm::KvmError {
    /// Argument problems (ranges, sizes, privilege levels, a page-table range that is not
    /// writable guest RAM) are `RangeError`s; the rest are `KvmError`s.
    fn to_js_error(&self) -> JsError {
        use virt_kvm::KvmError as E;
        let code = match self {
            E::VcpuClosed => return JsError::closed("Vcpu"),
            E::InvalidSlotRange { .. }
            | E::ReadSizeMismatch { .. }
            | E::ValueForWideRead { .. }
            | E::ReadValueTooLarge { .. }
            | E::InvalidPageTables { .. }
            | E::InvalidCpl(_)
            | E::LongModeOnly { .. } => return JsError::arg_value(self.to_string()),
            E::PageTableWrite { gpa, source } => {
                return JsError::arg_value(format!(
                    "pageTables: cannot write the page tables at {gpa:#x}: {source}"
                ))
            }
            E::KvmUnavailable { .. } => ErrorCode::KvmUnavailable,
            E::KvmIoctl { .. } => ErrorCode::KvmIoctl,
            E::HostCall { .. } => ErrorCode::HostCall,
            E::SlotOverlap { .. } => ErrorCode::SlotOverlap,
            E::PartialSlotUnmap { .. } => ErrorCode::PartialSlotUnmap,
            E::NoFreeSlot { .. } => ErrorCode::NoFreeSlot,
            E::TooManyVcpus { .. } => ErrorCode::TooManyVcpus,
            E::ReadOnlyUnsupported => ErrorCode::ReadOnlyUnsupported,
            E::VcpuBusy => ErrorCode::VcpuBusy,
            E::VcpuReadPending { .. } => ErrorCode::VcpuReadPending,
            E::RegistersWhileReadPending { .. } => ErrorCode::VcpuReadPending,
            E::NoPendingRead => ErrorCode::NoPendingRead,
            E::DirtyLogOff => ErrorCode::DirtyLogOff,
        };
        row(ErrorClass::KvmError, code, self)
    }
}

#[cfg(target_arch = "x86_64")]
impl ToJsError for virt_kvm::RunRefused {
    /// A closed vCPU is `ERR_CLOSED`; a busy one the `KvmError` it carries.
    fn to_js_error(&self) -> JsError {
        match self {
            virt_kvm::RunRefused::Closed => JsError::closed("Vcpu"),
            virt_kvm::RunRefused::Busy(error) => error.to_js_error(),
        }
    }
}

impl ToJsError for membacking::SnapshotError {
    /// Corrupt files, versions and mismatching layouts are `SnapshotError`s naming the file
    /// and offset, the version or what differs; file system failures are `OsError`s with the
    /// errno's code and the path; wrapped build, manager and dirty-tracking errors keep their
    /// own rows.
    fn to_js_error(&self) -> JsError {
        use membacking::SnapshotError as E;
        let snapshot = |code, fields| {
            JsError::new(ErrorClass::SnapshotError, code, self.to_string()).with_fields(fields)
        };
        match self {
            E::Corrupt { file, offset, what } => snapshot(
                ErrorCode::SnapshotCorrupt,
                Fields {
                    file: Some(file.display().to_string()),
                    offset: Some(BigInt(*offset)),
                    what: Some(what.clone()),
                    ..Fields::default()
                },
            ),
            E::Version {
                file,
                found,
                supported,
            } => snapshot(
                ErrorCode::SnapshotVersion,
                Fields {
                    file: Some(file.display().to_string()),
                    found: Some(*found),
                    supported: Some(*supported),
                    ..Fields::default()
                },
            ),
            E::Layout { dir, what } => snapshot(
                ErrorCode::SnapshotLayout,
                Fields {
                    dir: Some(dir.display().to_string()),
                    what: Some(what.clone()),
                    ..Fields::default()
                },
            ),
            E::DirtyTrackingOff { base, reason } => snapshot(
                ErrorCode::DirtyTrackingOff,
                Fields {
                    base: Some(base.display().to_string()),
                    reason: Some(reason.clone()),
                    ..Fields::default()
                },
            ),
            E::InvalidArgument { what } => JsError::arg_value(what.clone()).with_fields(Fields {
                what: Some(what.clone()),
                ..Fields::default()
            }),
            E::LazyUnavailable { reason } => snapshot(
                ErrorCode::Unsupported,
                Fields {
                    reason: Some(reason.clone()),
                    ..Fields::default()
                },
            ),
            E::Io { op, path, source } => path_os_error(self, op, path, source),
            E::BaseUnreadable {
                snapshot,
                base,
                op,
                path,
                source,
            } => path_os_error(self, op, path, source).with_detail(format!(
                "{} is a base of {}: restoring it, reading it or taking an incremental snapshot \
                 on it needs every snapshot of its chain; put the base back at {} (or restore \
                 from a full snapshot)",
                base.display(),
                snapshot.display(),
                base.display()
            )),
            E::NotWritten {
                op,
                path,
                target,
                source,
            } => path_os_error(self, op, path, source)
                .with_detail(not_written_detail(target, path, source)),
            E::TargetNotSnapshot { dir, what, source } => {
                // An `OsError` with the errno's code (`ENOTEMPTY`, `EEXIST`), like `Io`, but
                // the message states the rule and the way out.
                let mut error = source.to_js_error();
                error.message = self.to_string();
                error.fields.op = Some("replace");
                error.fields.path = Some(dir.display().to_string());
                error.fields.what = Some(what.clone());
                error
            }
            E::DirtyTracking(inner) => inner.to_js_error(),
            E::Build(inner) => inner.to_js_error(),
            E::Manager(inner) => inner.to_js_error(),
            E::DeviceWindow { window, source } => {
                let mut error = JsError::device_window(source);
                error.message = format!("{self}: {}", error.message);
                error.fields.window = Some(window.clone());
                error
            }
        }
    }
}

impl ToJsError for membacking::DirtyTrackingError {
    /// `take()` while tracking is off is `ERR_DIRTY_TRACKING_OFF`; a partition's dirty-log
    /// failure is the partition's own error (its row, or `ERR_UNSUPPORTED` for an error type
    /// the table does not know) naming the partition, with that error as cause.
    fn to_js_error(&self) -> JsError {
        use membacking::DirtyTrackingError as E;
        match self {
            E::Off => JsError::new(
                ErrorClass::SnapshotError,
                ErrorCode::DirtyTrackingOff,
                self.to_string(),
            )
            .with_fields(Fields {
                reason: Some("tracking is off".into()),
                ..Fields::default()
            }),
            E::Partition { index, source, .. } => {
                let cause = from_source(source.as_ref());
                let (class, code) = match cause.kind() {
                    (class, Some(code)) => (class, code),
                    (_, None) => (ErrorClass::SnapshotError, ErrorCode::Unsupported),
                };
                JsError::new(class, code, format!("{self}: {}", cause.message))
                    .with_fields(Fields {
                        partition: Some(*index),
                        ..Fields::default()
                    })
                    .with_cause(cause)
            }
            E::Manager(inner) => inner.to_js_error(),
        }
    }
}

impl ToJsError for membacking::migration::MigrationError {
    /// A lost connection, a peer's failure, a cancellation or a failing pause is
    /// `ERR_MIGRATION_ABORTED` with the phase and the cause (the JavaScript value the stream
    /// or the pause failed with, through its token); a bad frame or version
    /// `ERR_MIGRATION_PROTOCOL` naming the frame's offset and the side that found it; a
    /// downtime that cannot be met `ERR_MIGRATION_DOWNTIME` with the figures behind the
    /// decision. Wrapped errors keep their own rows.
    fn to_js_error(&self) -> JsError {
        use membacking::migration::MigrationError as E;
        let migration = |code, fields| {
            JsError::new(ErrorClass::MigrationError, code, self.to_string()).with_fields(fields)
        };
        match self {
            E::Aborted { phase, cause } => {
                let mut error = migration(
                    ErrorCode::MigrationAborted,
                    Fields {
                        phase: Some(phase.as_str()),
                        ..Fields::default()
                    },
                );
                // The stream's own failure is the io::Error's inner error, which a source
                // chain skips.
                error.cause_token = cause
                    .get_ref()
                    .and_then(|inner| crate::hooks::cause_token(inner))
                    .or_else(|| crate::hooks::cause_token(cause));
                if error.cause_token.is_none() {
                    error = error.with_cause(stream_cause(cause));
                }
                error
            }
            E::Pause { source } => {
                let mut error = migration(ErrorCode::MigrationAborted, Fields::default());
                error.message = format!("{self}: {source}");
                error.cause_token = crate::hooks::cause_token(source.as_ref());
                if error.cause_token.is_none() {
                    error = error.with_cause(from_source(source.as_ref()));
                }
                error
            }
            E::Protocol {
                what,
                offset,
                detected_by,
            } => migration(
                ErrorCode::MigrationProtocol,
                Fields {
                    what: Some(what.clone()),
                    offset: Some(BigInt(*offset)),
                    detected_by: Some(detected_by.as_str()),
                    ..Fields::default()
                },
            ),
            E::Downtime {
                rounds,
                remainder_bytes,
                bandwidth_bytes_per_sec,
                predicted_ms,
                max_downtime_ms,
            } => migration(
                ErrorCode::MigrationDowntime,
                Fields {
                    rounds: Some(*rounds),
                    remainder_bytes: Some(BigInt(*remainder_bytes)),
                    bandwidth_bytes_per_sec: Some(Float(*bandwidth_bytes_per_sec)),
                    predicted_ms: Some(Float(*predicted_ms)),
                    max_downtime_ms: Some(*max_downtime_ms),
                    ..Fields::default()
                },
            ),
            E::InProgress => migration(ErrorCode::MigrationInProgress, Fields::default()),
            E::TrackingStopped => migration(
                ErrorCode::DirtyTrackingOff,
                Fields {
                    reason: Some("dirty tracking was stopped during the migration".into()),
                    ..Fields::default()
                },
            ),
            E::InvalidArgument { what } => JsError::arg_value(what.clone()).with_fields(Fields {
                what: Some(what.clone()),
                ..Fields::default()
            }),
            E::Io { op, source } => {
                let mut error = source.to_js_error();
                error.message = with_descriptor_hint(format!("{op} failed: {source}"), source);
                error
            }
            E::DirtyTracking(inner) => inner.to_js_error(),
            E::Snapshot(inner) => inner.to_js_error(),
        }
    }
}

/// The cause of an aborted migration without a JavaScript value behind it: an `OsError` for
/// a socket's errno, else a plain `Error` with the stream's or the peer's message.
fn stream_cause(cause: &io::Error) -> JsError {
    if cause.raw_os_error().is_some() {
        return cause.to_js_error();
    }
    JsError {
        class: Js(ErrorClass::Error),
        code: None,
        message: cause.to_string(),
        fields: Box::default(),
        cause: None,
        cause_token: None,
    }
}

impl ToJsError for crate::hooks::JsHookFailure {
    /// A JavaScript hook failed: its thrown value (by token) is the cause.
    fn to_js_error(&self) -> JsError {
        let mut error = JsError {
            class: Js(ErrorClass::Error),
            code: None,
            message: self.to_string(),
            fields: Box::default(),
            cause: None,
            cause_token: None,
        };
        error.cause_token = self.cause_token();
        error
    }
}

/// The row of an error of a type the table knows, found by downcasting.
fn known(error: &(dyn StdError + 'static)) -> Option<JsError> {
    macro_rules! try_types {
        ($($ty:ty),+ $(,)?) => {
            $(
                if let Some(error) = error.downcast_ref::<$ty>() {
                    return Some(error.to_js_error());
                }
            )+
        };
    }
    try_types!(
        io::Error,
        membacking::RegionManagerError,
        membacking::PartitionMapperError,
        membacking::VaMapperError,
        membacking::MemoryBuildError,
        membacking::PartitionAttachError,
        membacking::OverlapError,
        membacking::InvalidRamRegion,
        membacking::NoMapping,
        membacking::ReadOnlyMapping,
        membacking::ManagerGone,
        membacking::region_manager::FatalError,
        std::sync::Arc<membacking::region_manager::FatalError>,
        guestmem::GuestMemoryError,
        virt::InjectedFailure,
        crate::hooks::JsHookFailure,
        membacking::SnapshotError,
        membacking::DirtyTrackingError,
        membacking::migration::MigrationError,
    );
    #[cfg(target_arch = "x86_64")]
    try_types!(virt_kvm::KvmError);
    None
}

/// The error a source in a cause chain becomes: its row when the table knows its type, else a
/// plain `Error` with its message (and its own source as cause).
pub fn from_source(error: &(dyn StdError + 'static)) -> JsError {
    known(error).unwrap_or_else(|| {
        JsError {
            class: Js(ErrorClass::Error),
            code: None,
            message: error.to_string(),
            fields: Box::default(),
            cause: None,
            cause_token: None,
        }
        .with_source_of(error)
    })
}

/// The error a boxed error thrown at top level becomes: its row, or `ERR_PANIC` (a bug) for a
/// type the table does not know.
pub fn from_boxed(error: &(dyn StdError + 'static)) -> JsError {
    known(error).unwrap_or_else(|| {
        JsError::internal(format!("unexpected error (a bug in membacking): {error}"))
    })
}

#[cfg(test)]
mod tests;
