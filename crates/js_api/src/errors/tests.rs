//! The error table, row by row, and its completeness: every code of [`ErrorCode`] is produced by
//! some row (or is the TypeScript loader's own), and every code is spelled `ERR_` plus its
//! variant name.

use super::*;
use crate::hooks::JsHookFailure;
use guestmem::GuestMemory;
use guestmem::GuestMemoryErrorKind;
use guestmem::GuestMemoryHooks;
use guestmem::PageFaultAction;
use guestmem::PageFaultError;
use memory_range::MemoryRange;
use sparse_mmap::SparseMapping;
use std::collections::BTreeSet;
use std::sync::Arc;

fn io(kind: io::ErrorKind, message: &str) -> io::Error {
    io::Error::new(kind, message.to_owned())
}

fn enomem() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOMEM)
}

/// A reversed range (which `try_new` refuses).
fn reversed() -> std::ops::Range<u64> {
    let (start, end) = (0x3000, 0x2000);
    start..end
}

fn json(error: &JsError) -> serde_json::Value {
    serde_json::from_str(&crate::json::to_json(error)).unwrap()
}

/// A sparse mapping of two pages whose second page is never placed.
fn half_placed() -> Arc<SparseMapping> {
    let mapping = Arc::new(SparseMapping::new(0x2000).unwrap());
    mapping.alloc(0, 0x1000).unwrap();
    mapping
}

/// A guest memory over [`half_placed`] whose page-fault hook fails with `kind` (and `failure`).
fn failing_memory(kind: GuestMemoryErrorKind, failure: JsHookFailure) -> GuestMemory {
    let hooks = GuestMemoryHooks {
        page_fault: Some(Box::new(move |_, _, _, _| {
            PageFaultAction::Fail(PageFaultError::new(kind, failure.clone()))
        })),
        ..GuestMemoryHooks::default()
    };
    GuestMemory::from_sparse_mapping("test".to_owned(), half_placed(), hooks)
}

fn guest_memory_errors() -> Vec<guestmem::GuestMemoryError> {
    let mut byte = [0u8; 1];
    let mut errors = vec![
        GuestMemory::empty().read_at(0x1000, &mut byte).unwrap_err(),
        GuestMemory::from_sparse_mapping(
            "holes".to_owned(),
            half_placed(),
            GuestMemoryHooks::default(),
        )
        .read_at(0x1000, &mut byte)
        .unwrap_err(),
    ];
    let fallback_fails = GuestMemory::from_sparse_mapping(
        "fallback".to_owned(),
        half_placed(),
        GuestMemoryHooks {
            page_fault: Some(Box::new(|_, _, _, _| PageFaultAction::Fallback)),
            read_fallback: Some(Box::new(|address, _| {
                Err(guestmem::GuestMemoryBackingError::other(
                    address,
                    JsHookFailure::new("the JavaScript readFallback hook failed", Some(8)),
                ))
            })),
            ..GuestMemoryHooks::default()
        },
    );
    errors.push(fallback_fails.read_at(0x1000, &mut byte).unwrap_err());
    for kind in [
        GuestMemoryErrorKind::Other,
        GuestMemoryErrorKind::VtlProtected,
        GuestMemoryErrorKind::NotPrivate,
        GuestMemoryErrorKind::NotShared,
    ] {
        let memory = failing_memory(kind, JsHookFailure::new("refused", Some(3)));
        errors.push(memory.read_at(0x1000, &mut byte).unwrap_err());
    }
    errors
}

fn fatal() -> membacking::region_manager::FatalError {
    membacking::region_manager::FatalError {
        op: "unmap 0xa0000-0xc0000".to_owned(),
        source: Box::new(virt::InjectedFailure {
            op: virt::RecordedOp::Unmap,
            gpa: 0xa0000,
        }),
    }
}

/// Mapping a region that was removed (the planner's answer to a stale id).
fn no_such_region() -> membacking::RegionManagerError {
    use membacking::region_manager::{Change, ChangeOutcome, NewRegion, RegionManagerState};
    let mut state = RegionManagerState::<()>::new(1 << 30);
    let mut transaction = state.begin();
    let added = transaction
        .apply(Change::AddRegion(NewRegion::new(
            "gone",
            MemoryRange::new(0..0x1000),
            1,
            false,
        )))
        .unwrap();
    let ChangeOutcome::RegionAdded(id) = added else {
        panic!("a region was added");
    };
    transaction.apply(Change::RemoveRegion(id)).unwrap();
    transaction.apply(Change::UnmapRegion(id)).unwrap_err()
}

fn region_manager_errors() -> Vec<membacking::RegionManagerError> {
    use membacking::RegionManagerError as E;
    let range = MemoryRange::new(0x1000..0x2000);
    let name = || "vga".to_owned();
    vec![
        E::OverlapError(membacking::OverlapError {
            existing: name(),
            new: "dev".to_owned(),
        }),
        E::InvalidRamRegion(membacking::InvalidRamRegion(range)),
        E::RegionOutOfRange {
            name: name(),
            range,
            window_len: 0x1000,
        },
        E::EmptyRegion {
            name: name(),
            range,
        },
        E::MappingOverlap {
            region: name(),
            range,
            existing: range,
        },
        E::MappingOutOfRange {
            region: name(),
            range,
            region_len: 0x1000,
        },
        E::EmptyMapping {
            region: name(),
            range,
        },
        E::PartialUnmap {
            region: name(),
            range,
            mapping: range,
        },
        E::InvalidPartitionOffset {
            offset: 1,
            window_len: 2,
        },
        E::PartitionMapper(membacking::PartitionMapperError::Pin("no".into())),
        E::ManagerPoisoned {
            cause: Arc::new(fatal()),
        },
        E::ManagerGone,
        no_such_region(),
        E::RegionOverlapsPrivateRam {
            name: name(),
            range,
        },
        E::MappingBeyondObject {
            region: name(),
            file_offset: 0,
            len: 0x2000,
            object_size: 0x1000,
        },
        E::DecommitFailed {
            range,
            source: enomem(),
        },
        E::NoFreeSlot {
            partition: 0,
            needed: 2,
            free: 1,
            max_slots: 32764,
        },
    ]
}

fn build_errors() -> Vec<membacking::MemoryBuildError> {
    use membacking::MemoryBuildError as E;
    vec![
        E::RamTooLarge(u64::MAX),
        E::AllocationFailed(io::Error::from_raw_os_error(libc::EFBIG)),
        E::VaMapper(membacking::VaMapperError::Reserve(enomem())),
        E::AliasMapWontFit,
        E::InvalidRamForX86,
        E::PrivateMemoryWithLegacy,
        E::PrivateMemoryWithExistingBacking,
        E::PrivateRamAlloc(enomem(), MemoryRange::new(0..0x1000)),
        E::ThpWithoutPrivateMemory,
        E::ThpUnsupportedPlatform,
        E::InvalidLayout {
            end_of_ram: 0x1000,
            suggested_end: 0x2000,
        },
        E::ExistingBackingTooSmall {
            size: 1,
            required: 2,
        },
        E::ExistingBackingNotWritable,
        E::Thread(enomem()),
        E::RegionManager(membacking::RegionManagerError::ManagerGone),
    ]
}

fn va_mapper_errors() -> Vec<membacking::VaMapperError> {
    use membacking::VaMapperError as E;
    vec![
        E::MemoryManagerGone(membacking::ManagerGone),
        E::Reserve(enomem()),
        E::RemoteWithPrivateMemory,
        E::Thread(enomem()),
    ]
}

fn attach_errors() -> Vec<membacking::PartitionAttachError> {
    use membacking::PartitionAttachError as E;
    vec![
        E::VaMapper(membacking::VaMapperError::RemoteWithPrivateMemory),
        E::PartitionMapper(membacking::PartitionMapperError::Map(Box::new(
            virt::InjectedFailure {
                op: virt::RecordedOp::Map,
                gpa: 0,
            },
        ))),
        E::Unsupported,
        E::Manager(membacking::RegionManagerError::ManagerGone),
        E::AlreadyAttached(membacking::AttachedTo::ThisManager),
        E::AlreadyAttached(membacking::AttachedTo::AnotherManager),
    ]
}

#[cfg(target_arch = "x86_64")]
fn kvm_errors() -> Vec<virt_kvm::KvmError> {
    use virt_kvm::KvmError as E;
    vec![
        E::KvmUnavailable {
            what: "open /dev/kvm".to_owned(),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        },
        E::KvmIoctl {
            ioctl: "KVM_RUN",
            source: enomem(),
        },
        E::HostCall {
            call: "mlock",
            what: "pins".to_owned(),
            source: enomem(),
        },
        E::SlotOverlap {
            gpa: 0,
            size: 0x1000,
            slot: 1,
            slot_gpa: 0,
            slot_size: 0x1000,
        },
        E::PartialSlotUnmap {
            gpa: 0,
            size: 0x1000,
            slot: 1,
            slot_gpa: 0,
            slot_size: 0x2000,
        },
        E::NoFreeSlot { max_slots: 32 },
        E::TooManyVcpus { limit: 1024 },
        E::InvalidSlotRange {
            gpa: 1,
            size: 0x1000,
            host_address: 0,
        },
        E::ReadOnlyUnsupported,
        E::VcpuBusy,
        E::VcpuClosed,
        E::VcpuReadPending {
            kind: "MMIO read",
            address: 0x1000,
            size: 4,
        },
        E::RegistersWhileReadPending {
            kind: "port input",
            address: 0x12,
            size: 4,
            completed: true,
        },
        E::NoPendingRead,
        E::ValueForWideRead { size: 12 },
        E::DirtyLogOff,
        E::ReadSizeMismatch {
            expected: 4,
            actual: 2,
        },
        E::InvalidPageTables {
            range: None,
            needed: 0x202000,
        },
        E::PageTableWrite {
            gpa: 0x200000,
            source: "not RAM".into(),
        },
        E::InvalidCpl(1),
        E::LongModeOnly { option: "cpl" },
    ]
}

fn snapshot_errors() -> Vec<membacking::SnapshotError> {
    use membacking::SnapshotError as E;
    vec![
        E::Corrupt {
            file: "/s/memory.bin".into(),
            offset: 0x2000,
            what: "checksum".into(),
        },
        E::Version {
            file: "/s/manifest.json".into(),
            found: 9,
            supported: 1,
        },
        E::Layout {
            dir: "/s".into(),
            what: "RAM differs".into(),
        },
        E::DirtyTrackingOff {
            base: "/base".into(),
            reason: "tracking is off".into(),
        },
        E::InvalidArgument {
            what: "the base is the target".into(),
        },
        E::LazyUnavailable {
            reason: "no userfaultfd".into(),
        },
        E::Io {
            op: "open",
            path: "/s/manifest.json".into(),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        },
        E::TargetNotSnapshot {
            dir: "/home/me/notes".into(),
            what: "it holds \"todo.txt\", which is not a snapshot file".into(),
            source: io::Error::from_raw_os_error(libc::ENOTEMPTY),
        },
        E::DirtyTracking(membacking::DirtyTrackingError::Off),
        E::Build(membacking::MemoryBuildError::InvalidLayout {
            end_of_ram: 0x1000,
            suggested_end: 0x2000,
        }),
        E::Manager(membacking::RegionManagerError::ManagerGone),
        E::DeviceWindow {
            window: "fb".into(),
            source: io(io::ErrorKind::Unsupported, "partial"),
        },
        E::NotWritten {
            op: "write",
            path: "/data/.snap.tmp-7-ab/memory.bin".into(),
            target: "/data/snap".into(),
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        },
        E::BaseUnreadable {
            snapshot: "/s/inc".into(),
            base: "/s/full".into(),
            op: "read",
            path: "/s/full/manifest.json".into(),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        },
    ]
}

fn migration_errors() -> Vec<membacking::migration::MigrationError> {
    use membacking::migration::MigrationError as E;
    use membacking::migration::MigrationPhase;
    vec![
        E::Aborted {
            phase: MigrationPhase::Rounds,
            cause: io(io::ErrorKind::BrokenPipe, "the stream was closed"),
        },
        E::Aborted {
            phase: MigrationPhase::Completing,
            cause: io::Error::from_raw_os_error(libc::ECONNRESET),
        },
        E::Protocol {
            what: "bad checksum".into(),
            offset: 12,
            detected_by: membacking::migration::Side::Source,
        },
        E::Downtime {
            rounds: 2,
            remainder_bytes: 0x1000,
            bandwidth_bytes_per_sec: 10.0,
            predicted_ms: 409_600.0,
            max_downtime_ms: 1,
        },
        E::Pause {
            source: "vCPUs did not stop".into(),
        },
        E::InProgress,
        E::TrackingStopped,
        E::InvalidArgument {
            what: "maxRounds must be 1 ..= 10000, got 0".into(),
        },
        E::Io {
            op: "read guest RAM".into(),
            source: io::Error::from_raw_os_error(libc::EIO),
        },
        E::DirtyTracking(membacking::DirtyTrackingError::Off),
        E::Snapshot(membacking::SnapshotError::Layout {
            dir: "<migration>".into(),
            what: "RAM differs".into(),
        }),
    ]
}

/// One error of every row of the table.
fn every_row() -> Vec<JsError> {
    let mut errors = vec![
        JsError::arg_type("t"),
        JsError::arg_value("v"),
        JsError::buffer_changed("dest", "readAt", 8192, 0),
        JsError::closed("SparseMapping"),
        JsError::manager_gone(),
        JsError::internal("bug"),
        JsError::unknown_handle(1),
        JsError::registration_failed(0x8000_0000, Some(2)),
        JsError::registrar_reentry(),
        JsError::os(&enomem(), "mmap"),
        JsError::device_window(&io(io::ErrorKind::Unsupported, "partial unmap")),
        JsError::device_window(&io::Error::other(
            membacking::RegionManagerError::ManagerGone,
        )),
        JsError::sparse_mapping(&sparse_mmap::SparseMappingError::OutOfBounds, access(true)),
        io(io::ErrorKind::InvalidInput, "bad range").to_js_error(),
        io(io::ErrorKind::Unsupported, "remote").to_js_error(),
        io(io::ErrorKind::TimedOut, "odd").to_js_error(),
        vm_topology::x86_legacy::InvalidRamForX86.to_js_error(),
        MemoryRange::try_new(0x1001..0x2000)
            .unwrap_err()
            .to_js_error(),
        GuestMemory::try_allocate(usize::MAX)
            .unwrap_err()
            .to_js_error(),
        virt::InjectedFailure {
            op: virt::RecordedOp::Pin,
            gpa: 0,
        }
        .to_js_error(),
        "spin"
            .parse::<virt::RecordedOp>()
            .unwrap_err()
            .to_js_error(),
        membacking::NoMapping(MemoryRange::new(0..0x1000)).to_js_error(),
        membacking::ReadOnlyMapping(MemoryRange::new(0..0x1000)).to_js_error(),
        fatal().to_js_error(),
    ];
    use vm_topology::memory::Error as LayoutError;
    for error in [
        LayoutError::BadSize,
        LayoutError::BadMmioGaps,
        LayoutError::BadMemoryRanges,
        LayoutError::Vtl2RangeBeforeEndOfRam,
    ] {
        errors.push(error.to_js_error());
    }
    let mapping = half_placed();
    let sparse = mapping.read_at(0x1000, &mut [0u8; 4]).unwrap_err();
    errors.push(JsError::sparse_mapping(&sparse, access(false)));
    let sparse_mmap::SparseMappingError::Memory(memory) = sparse else {
        panic!("an unplaced page faults");
    };
    errors.push(guestmem::LockedPageAccessError::Memory(memory).to_js_error());
    errors.push(guestmem::LockedPageAccessError::PageIndex { index: 9, count: 1 }.to_js_error());
    errors.extend(guest_memory_errors().iter().map(ToJsError::to_js_error));
    errors.extend(region_manager_errors().iter().map(ToJsError::to_js_error));
    errors.extend(build_errors().iter().map(ToJsError::to_js_error));
    errors.extend(va_mapper_errors().iter().map(ToJsError::to_js_error));
    errors.extend(attach_errors().iter().map(ToJsError::to_js_error));
    errors.extend(snapshot_errors().iter().map(ToJsError::to_js_error));
    errors.extend(migration_errors().iter().map(ToJsError::to_js_error));
    #[cfg(target_arch = "x86_64")]
    errors.extend(kvm_errors().iter().map(ToJsError::to_js_error));
    errors
}

/// Every code in `error` and its causes.
fn codes(error: &JsError, into: &mut BTreeSet<&'static str>) {
    if let Some(code) = error.code {
        into.insert(code.0.js_str());
    }
    if let Some(cause) = &error.cause {
        codes(cause, into);
    }
}

#[test]
fn every_code_is_produced_by_a_row_of_the_table() {
    let mut produced = BTreeSet::new();
    for error in every_row() {
        codes(&error, &mut produced);
    }
    // The TypeScript loader throws this one, before any native code runs.
    produced.insert(ErrorCode::NativeBindingLoadFailed.js_str());
    let all: BTreeSet<_> = ErrorCode::members()
        .iter()
        .map(|code| code.js_str())
        .collect();
    let never: Vec<_> = all.difference(&produced).collect();
    assert!(never.is_empty(), "codes no row produces: {never:?}");
}

#[test]
fn every_code_is_err_and_its_variant_in_screaming_snake_case() {
    for &code in ErrorCode::members() {
        let variant = format!("{code:?}");
        let mut expected = String::from("ERR");
        for c in variant.chars() {
            if c.is_ascii_uppercase() {
                expected.push('_');
            }
            expected.push(c.to_ascii_uppercase());
        }
        assert_eq!(code.js_str(), expected, "{variant}");
    }
}

#[test]
fn layout_and_range_rows() {
    let error = vm_topology::memory::Error::Vtl2RangeBeforeEndOfRam.to_js_error();
    assert_eq!(
        error.kind(),
        (
            ErrorClass::MemoryLayoutError,
            Some(ErrorCode::Vtl2RangeBeforeEndOfRam)
        )
    );
    assert_eq!(error.message, "vtl2 range is below end of ram");
    let range = MemoryRange::try_new(reversed()).unwrap_err().to_js_error();
    assert_eq!(
        json(&range),
        serde_json::json!({
            "class": "InvalidMemoryRangeError",
            "code": "ERR_INVALID_MEMORY_RANGE",
            "message": "unaligned or invalid memory range: 0x3000-0x2000",
            "fields": {"start": {"$bigint": "0x3000"}, "end": {"$bigint": "0x2000"}},
        })
    );
}

#[test]
fn os_errors_carry_errno_and_syscall_and_no_code() {
    let error = JsError::os(&enomem(), "mmap");
    assert_eq!(
        json(&error),
        serde_json::json!({
            "class": "OsError",
            "message": "mmap: Cannot allocate memory (os error 12)",
            "fields": {"errno": 12, "syscall": "mmap"},
        })
    );
    let invalid = JsError::os(
        &io(io::ErrorKind::InvalidInput, "offset beyond the mapping"),
        "mmap",
    );
    assert_eq!(
        invalid.kind(),
        (ErrorClass::RangeError, Some(ErrorCode::InvalidInput))
    );
}

#[test]
fn io_errors_wrapping_a_known_error_keep_its_row() {
    let wrapped = io::Error::other(membacking::RegionManagerError::MappingBeyondObject {
        region: "gfx".to_owned(),
        file_offset: 0,
        len: 2,
        object_size: 1,
    });
    let beyond = JsError::device_window(&wrapped);
    assert_eq!(
        beyond.kind(),
        (
            ErrorClass::MemoryManagerError,
            Some(ErrorCode::MappingOutOfRange)
        )
    );
    assert_eq!(
        beyond.message,
        "mapping 0x0+0x2 in memory region gfx lies beyond the end of its object (0x1 bytes)"
    );
    assert_eq!(
        JsError::device_window(&io(io::ErrorKind::Unsupported, "x")).kind(),
        (ErrorClass::MemoryManagerError, Some(ErrorCode::Unsupported)),
        "a device window's own Unsupported is the manager's"
    );
    assert_eq!(
        io(io::ErrorKind::Unsupported, "x").to_js_error().kind(),
        (ErrorClass::MembackingError, Some(ErrorCode::Unsupported))
    );
    assert_eq!(
        io(io::ErrorKind::TimedOut, "x").to_js_error().kind(),
        (ErrorClass::MembackingError, Some(ErrorCode::Panic)),
        "a kind no row expects is a bug, reported as such"
    );
}

#[test]
fn guest_memory_rows_carry_kind_op_range_gpa_and_fault() {
    let errors = guest_memory_errors();
    let out_of_range = errors[0].to_js_error();
    assert_eq!(
        out_of_range.kind(),
        (
            ErrorClass::GuestMemoryError,
            Some(ErrorCode::GuestMemoryOutOfRange)
        )
    );
    let fields = &json(&out_of_range)["fields"];
    assert_eq!(fields["kind"], "OutOfRange");
    assert_eq!(fields["op"], "read");
    assert_eq!(
        fields["range"],
        serde_json::json!({"start": {"$bigint": "0x1000"}, "end": {"$bigint": "0x1001"}})
    );
    let hole = errors[1].to_js_error();
    assert_eq!(hole.code, Some(Js(ErrorCode::GuestMemoryFault)));
    let fault = &json(&hole)["fields"]["fault"];
    assert_eq!(fault["signal"], "SIGSEGV");
    assert_eq!(fault["trapno"], 14);
    assert!(hole
        .message
        .starts_with("guest memory 'holes': read error: failed to access 0x1000-0x1001"));
    let fallback = errors[2].to_js_error();
    assert_eq!(
        fallback.code,
        Some(Js(ErrorCode::GuestMemoryOther)),
        "no fault ended it"
    );
    assert_eq!(fallback.cause_token, Some(8));
    let by_hook: Vec<_> = errors[3..].iter().map(ToJsError::to_js_error).collect();
    assert_eq!(by_hook[0].code, Some(Js(ErrorCode::GuestMemoryFault)));
    assert_eq!(
        by_hook[1].code,
        Some(Js(ErrorCode::GuestMemoryVtlProtected))
    );
    assert_eq!(by_hook[2].code, Some(Js(ErrorCode::GuestMemoryNotPrivate)));
    assert_eq!(by_hook[3].code, Some(Js(ErrorCode::GuestMemoryNotShared)));
    for error in &by_hook {
        assert_eq!(
            error.cause_token,
            Some(3),
            "the hook's exception becomes the cause"
        );
        assert!(error.cause.is_none());
    }
}

#[test]
fn a_no_mapping_source_is_a_coded_cause() {
    let mapping = half_placed();
    let hooks = GuestMemoryHooks {
        page_fault: Some(Box::new(|_, _, _, _| {
            PageFaultAction::Fail(PageFaultError::new(
                GuestMemoryErrorKind::OutOfRange,
                membacking::NoMapping(MemoryRange::new(0x1000..0x2000)),
            ))
        })),
        ..GuestMemoryHooks::default()
    };
    let memory = GuestMemory::from_sparse_mapping("ram".to_owned(), mapping, hooks);
    let error = memory
        .read_at(0x1000, &mut [0u8; 2])
        .unwrap_err()
        .to_js_error();
    let cause = error.cause.as_deref().unwrap();
    assert_eq!(
        cause.kind(),
        (ErrorClass::MemoryManagerError, Some(ErrorCode::NoMapping))
    );
    assert_eq!(cause.message, "no mapping for 0x1000-0x2000");
    assert_eq!(cause.fields.detail.as_deref(), Some(NO_MAPPING_DETAIL));
    // The top-level message is the template alone; the cause says the rest.
    assert_eq!(
        error.message,
        "guest memory 'ram': read error: failed to access 0x1000-0x1002"
    );
    assert_eq!(error.fields.detail, None);
}

#[test]
fn a_write_to_a_read_only_mapping_fails_no_mapping_and_says_read_only_in_detail() {
    let error = membacking::ReadOnlyMapping(MemoryRange::new(0xa0000..0xa1000)).to_js_error();
    assert_eq!(
        error.kind(),
        (ErrorClass::MemoryManagerError, Some(ErrorCode::NoMapping))
    );
    assert_eq!(error.message, "no mapping for 0xa0000-0xa1000");
    let detail = error.fields.detail.as_deref().unwrap_or_default();
    assert!(
        detail.starts_with(
            "0xa0000-0xa1000 is mapped read-only, so it cannot be written: make it writable first"
        ),
        "{detail}"
    );
    assert_eq!(json(&error)["fields"]["detail"], detail);
}

#[test]
fn a_source_that_is_not_the_cause_is_the_detail() {
    let mapping = half_placed();
    let memory = GuestMemory::from_sparse_mapping(
        "ram".to_owned(),
        mapping,
        GuestMemoryHooks {
            page_fault: Some(Box::new(|_, _, _, _| {
                PageFaultAction::Fail(PageFaultError::new(
                    GuestMemoryErrorKind::VtlProtected,
                    io::Error::other("the page belongs to VTL2"),
                ))
            })),
            ..GuestMemoryHooks::default()
        },
    );
    let error = memory
        .read_at(0x1000, &mut [0u8; 2])
        .unwrap_err()
        .to_js_error();
    assert_eq!(
        error.message,
        "guest memory 'ram': read error: failed to access 0x1000-0x1002"
    );
    assert_eq!(
        error.fields.detail.as_deref(),
        Some("the page belongs to VTL2")
    );
    assert!(error.cause.is_none());
}

#[test]
fn sparse_mapping_rows_report_offset_direction_and_fault() {
    let out = JsError::sparse_mapping(&sparse_mmap::SparseMappingError::OutOfBounds, access(true));
    assert_eq!(
        json(&out)["fields"],
        serde_json::json!({"offset": {"$bigint": "0x0"}, "isWrite": true})
    );
    assert_eq!(
        out.message,
        "out of bounds: a write of 0x4 bytes at offset 0x3ffe passes the end of the 0x4000-byte \
         reservation: keep offset + length at or below 0x4000"
    );
    let mapping = half_placed();
    let error = mapping.read_at(0xffe, &mut [0u8; 4]).unwrap_err();
    let fault = JsError::sparse_mapping(&error, access(false));
    let fields = &json(&fault)["fields"];
    assert_eq!(fault.code, Some(Js(ErrorCode::Memory)));
    assert_eq!(fields["offset"], serde_json::json!({"$bigint": "0x2"}));
    assert_eq!(fields["isWrite"], false);
}

#[test]
fn manager_rows_unwrap_transparent_variants_and_keep_chains() {
    let build =
        membacking::MemoryBuildError::VaMapper(membacking::VaMapperError::Reserve(enomem()));
    let error = build.to_js_error();
    assert_eq!(
        error.kind(),
        (ErrorClass::MemoryBuildError, Some(ErrorCode::VaMapper))
    );
    let reserve = error.cause.as_deref().unwrap();
    assert_eq!(
        reserve.kind(),
        (ErrorClass::VaMapperError, Some(ErrorCode::Reserve))
    );
    let os = reserve.cause.as_deref().unwrap();
    assert_eq!(os.kind(), (ErrorClass::OsError, None));
    assert_eq!(os.fields.errno, Some(libc::ENOMEM));

    let transparent = membacking::MemoryBuildError::RegionManager(
        membacking::RegionManagerError::OverlapError(membacking::OverlapError {
            existing: "a".to_owned(),
            new: "b".to_owned(),
        }),
    );
    assert_eq!(
        transparent.to_js_error().kind(),
        (
            ErrorClass::MemoryManagerError,
            Some(ErrorCode::OverlapError)
        )
    );

    for refused in &attach_errors()[4..] {
        let refused = refused.to_js_error();
        assert_eq!(
            refused.kind(),
            (
                ErrorClass::PartitionAttachError,
                Some(ErrorCode::AlreadyAttached)
            )
        );
        assert!(refused
            .message
            .starts_with("partition is already attached to "));
        assert!(refused.cause.is_none());
    }

    let attach = &attach_errors()[1].to_js_error();
    assert_eq!(
        attach.kind(),
        (
            ErrorClass::PartitionAttachError,
            Some(ErrorCode::PartitionMapper)
        )
    );
    let mapper = attach.cause.as_deref().unwrap();
    assert_eq!(
        mapper.kind(),
        (ErrorClass::PartitionMapperError, Some(ErrorCode::Map))
    );
    let injected = mapper.cause.as_deref().unwrap();
    assert_eq!(
        injected.kind(),
        (
            ErrorClass::MembackingError,
            Some(ErrorCode::InjectedFailure)
        )
    );
    assert_eq!(injected.message, "injected map failure at gpa 0x0");

    let poisoned = membacking::RegionManagerError::ManagerPoisoned {
        cause: Arc::new(fatal()),
    }
    .to_js_error();
    let fatal = poisoned.cause.as_deref().unwrap();
    assert_eq!(fatal.code, Some(Js(ErrorCode::FatalError)));
    assert_eq!(
        fatal.cause.as_deref().unwrap().code,
        Some(Js(ErrorCode::InjectedFailure))
    );
}

#[test]
fn a_batch_change_error_is_the_changes_own_error_with_its_index() {
    let region = membacking::BatchError::Change {
        index: 3,
        source: membacking::BatchChangeError::Region(no_such_region()),
    }
    .to_js_error();
    let alone = no_such_region().to_js_error();
    assert_eq!(region.kind(), alone.kind());
    assert_eq!(region.message, alone.message);
    assert_eq!(
        region.fields.detail.as_deref(),
        Some("changes[3] (nothing in the batch was applied)")
    );
    assert_eq!(json(&region)["fields"]["changeIndex"], 3);
    let device = membacking::BatchError::Change {
        index: 0,
        source: membacking::BatchChangeError::Device(io(io::ErrorKind::Unsupported, "overlap")),
    }
    .to_js_error();
    assert_eq!(
        device.kind(),
        (ErrorClass::MemoryManagerError, Some(ErrorCode::Unsupported))
    );
    let foreign = membacking::BatchError::ForeignWindow {
        index: 1,
        name: "vram".into(),
    }
    .to_js_error();
    assert_eq!(
        foreign.kind(),
        (ErrorClass::RangeError, Some(ErrorCode::InvalidArgValue))
    );
    assert!(foreign
        .message
        .contains("\"vram\" belongs to another memory manager"));
    assert_eq!(foreign.fields.change_index, Some(1));
    let manager =
        membacking::BatchError::Manager(membacking::RegionManagerError::ManagerGone).to_js_error();
    assert_eq!(
        manager,
        membacking::RegionManagerError::ManagerGone.to_js_error()
    );
}

#[test]
fn a_vectored_copy_error_is_the_entrys_own_error_with_its_index() {
    let memory = GuestMemory::allocate(0x1000);
    let (mut first, mut buffer) = ([0u8; 8], [0u8; 8]);
    let error = memory
        .read_v(&mut [(0, &mut first[..]), (0x1000, &mut buffer[..])])
        .unwrap_err();
    let alone = memory
        .read_at(0x1000, &mut buffer)
        .unwrap_err()
        .to_js_error();
    let js = error.to_js_error();
    assert_eq!(js.kind(), alone.kind());
    assert_eq!(js.message, alone.message);
    let context = "list[1] failed (the entries before it were copied)";
    match &alone.fields.detail {
        Some(detail) => assert_eq!(js.fields.detail, Some(format!("{context}; {detail}"))),
        None => assert_eq!(js.fields.detail.as_deref(), Some(context)),
    }
    assert_eq!(js.fields.entry_index, Some(1));
    assert_eq!(js.fields.gpa, alone.fields.gpa);
    let value = json(&js);
    assert_eq!(value["fields"]["entryIndex"], 1);
    let argument = JsError::arg_type("a number argument must be a safe non-negative integer")
        .in_entry(4, ".gpa");
    assert_eq!(
        argument.message,
        "list[4].gpa: a number argument must be a safe non-negative integer"
    );
    assert_eq!(argument.fields.entry_index, Some(4));
}

#[test]
fn a_foreign_cause_is_a_plain_error_with_its_message() {
    let mapper =
        membacking::PartitionMapperError::Map("the hypervisor said no".into()).to_js_error();
    let foreign = mapper.cause.as_deref().unwrap();
    assert_eq!(foreign.kind(), (ErrorClass::Error, None));
    assert_eq!(foreign.message, "the hypervisor said no");
    assert_eq!(
        from_boxed(&*Box::<dyn StdError + Send + Sync>::from("odd")).kind(),
        (ErrorClass::MembackingError, Some(ErrorCode::Panic)),
        "thrown at top level, an unknown error type is a bug"
    );
}

#[cfg(target_arch = "x86_64")]
#[test]
fn kvm_rows_split_argument_errors_from_kvm_errors() {
    let errors: Vec<_> = kvm_errors().iter().map(ToJsError::to_js_error).collect();
    let classes: Vec<_> = errors.iter().map(|error| error.kind().0).collect();
    assert_eq!(
        classes
            .iter()
            .filter(|&&c| c == ErrorClass::RangeError)
            .count(),
        7
    );
    let page_tables = errors
        .iter()
        .find(|e| e.message.starts_with("pageTables"))
        .unwrap();
    assert_eq!(
        page_tables.message,
        "pageTables: cannot write the page tables at 0x200000: not RAM"
    );
    assert_eq!(
        errors[0].kind(),
        (ErrorClass::KvmError, Some(ErrorCode::KvmUnavailable))
    );
    assert_eq!(
        errors[0].cause.as_deref().unwrap().fields.errno,
        Some(libc::ENOENT)
    );
}

#[test]
fn the_registrars_rows_carry_the_address_and_the_callbacks_exception() {
    let error = JsError::registration_failed(0x8000_0000, Some(7));
    assert_eq!(
        json(&error),
        serde_json::json!({
            "class": "RegistrarError",
            "code": "ERR_REGISTRATION_FAILED",
            "message": "failed to register guest memory at 0x80000000",
            "fields": {"address": {"$bigint": "0x80000000"}},
            "causeToken": 7,
        })
    );
}

#[test]
fn snapshot_rows_name_the_file_offset_version_layout_and_path() {
    let rows: Vec<serde_json::Value> = snapshot_errors()
        .iter()
        .map(|error| json(&error.to_js_error()))
        .collect();
    assert_eq!(
        rows[0],
        serde_json::json!({
            "class": "SnapshotError",
            "code": "ERR_SNAPSHOT_CORRUPT",
            "message": "snapshot file /s/memory.bin is corrupt at offset 8192: checksum",
            "fields": {"file": "/s/memory.bin", "offset": {"$bigint": "0x2000"}, "what": "checksum"},
        })
    );
    assert_eq!(rows[1]["code"], "ERR_SNAPSHOT_VERSION");
    assert_eq!(
        rows[1]["fields"],
        serde_json::json!({"file": "/s/manifest.json", "found": 9, "supported": 1})
    );
    assert_eq!(rows[2]["code"], "ERR_SNAPSHOT_LAYOUT");
    assert_eq!(
        rows[2]["fields"],
        serde_json::json!({"dir": "/s", "what": "RAM differs"})
    );
    assert_eq!(rows[3]["code"], "ERR_DIRTY_TRACKING_OFF");
    assert_eq!(rows[3]["fields"]["base"], "/base");
    assert_eq!(rows[4]["class"], "RangeError");
    assert_eq!(rows[4]["code"], "ERR_INVALID_ARG_VALUE");
    assert_eq!(rows[5]["code"], "ERR_UNSUPPORTED");
    assert_eq!(rows[5]["fields"]["reason"], "no userfaultfd");
    // An OS error: the errno (the TypeScript layer names it), the operation and the path.
    assert_eq!(rows[6]["class"], "OsError");
    assert!(rows[6].get("code").is_none());
    assert_eq!(
        rows[6]["fields"],
        serde_json::json!({"errno": libc::ENOENT, "op": "open", "path": "/s/manifest.json"})
    );
    assert!(
        rows[6]["message"]
            .as_str()
            .unwrap()
            .starts_with("open /s/manifest.json failed: "),
        "{}",
        rows[6]["message"]
    );
    // A refused target: an OS error too, with the rule and the way out in the message.
    assert_eq!(
        rows[7],
        serde_json::json!({
            "class": "OsError",
            "message": "cannot write a snapshot to /home/me/notes: it holds \"todo.txt\", which is \
                        not a snapshot file; a snapshot replaces only an existing snapshot or an \
                        empty directory, so choose an empty or new directory, or remove it first",
            "fields": {
                "errno": libc::ENOTEMPTY,
                "op": "replace",
                "path": "/home/me/notes",
                "what": "it holds \"todo.txt\", which is not a snapshot file",
            },
        })
    );
    assert_eq!(rows[8]["code"], "ERR_DIRTY_TRACKING_OFF");
    assert_eq!(rows[9]["code"], "ERR_INVALID_LAYOUT");
    assert_eq!(rows[10]["code"], "ERR_MANAGER_GONE");
    assert_eq!(rows[11]["code"], "ERR_UNSUPPORTED");
    assert_eq!(rows[11]["fields"]["window"], "fb");
    assert!(rows[11]["message"]
        .as_str()
        .unwrap()
        .starts_with("recreating device window \"fb\" failed: "));
    // A base that cannot be read: an OS error naming the base, the snapshot built on it, and
    // in detail what needs it and what to do.
    assert_eq!(rows[13]["class"], "OsError");
    assert_eq!(
        rows[13]["fields"]["path"], "/s/full/manifest.json",
        "{}",
        rows[13]
    );
    assert!(rows[13]["message"]
        .as_str()
        .unwrap()
        .starts_with("snapshot /s/inc is built on /s/full, which cannot be read: read /s/full/manifest.json failed: "));
    assert!(rows[13]["fields"]["detail"]
        .as_str()
        .unwrap()
        .contains("put the base back at /s/full"));
}

#[test]
fn a_partitions_dirty_log_failure_is_its_own_error_naming_the_partition() {
    let known = membacking::DirtyTrackingError::Partition {
        index: 1,
        action: "start",
        source: Box::new(virt::InjectedFailure {
            op: virt::RecordedOp::Map,
            gpa: 0,
        }),
    }
    .to_js_error();
    assert_eq!(
        known.kind(),
        (
            ErrorClass::MembackingError,
            Some(ErrorCode::InjectedFailure)
        )
    );
    assert_eq!(known.fields.partition, Some(1));
    assert!(known
        .message
        .starts_with("partition 1 could not start its dirty log: "));
    assert_eq!(known.cause.as_ref().unwrap().code, known.code);
    let foreign = membacking::DirtyTrackingError::Partition {
        index: 0,
        action: "read",
        source: "odd".into(),
    }
    .to_js_error();
    assert_eq!(
        foreign.kind(),
        (ErrorClass::SnapshotError, Some(ErrorCode::Unsupported))
    );
    assert_eq!(
        foreign.cause.as_ref().unwrap().kind(),
        (ErrorClass::Error, None)
    );
}

#[test]
fn a_snapshot_not_written_is_the_os_error_of_its_file_with_what_it_left_and_what_to_do() {
    let cases = [
        (libc::ENOSPC, "file system is full"),
        (libc::EROFS, "mounted read-only"),
        (libc::EACCES, "may not write there"),
        (libc::EINVAL, "once the cause is removed"),
    ];
    for (errno, advice) in cases {
        let error = membacking::SnapshotError::NotWritten {
            op: "write",
            path: "/data/.snap.tmp-7-ab/memory.bin".into(),
            target: "/data/snap".into(),
            source: io::Error::from_raw_os_error(errno),
        }
        .to_js_error();
        // As an `Io` error of the same file: the errno, the operation and the path.
        assert_eq!(error.kind(), (ErrorClass::OsError, None));
        assert_eq!(error.fields.errno, Some(errno));
        assert_eq!(error.fields.op, Some("write"));
        assert_eq!(
            error.fields.path.as_deref(),
            Some("/data/.snap.tmp-7-ab/memory.bin")
        );
        assert!(
            error
                .message
                .starts_with("write /data/.snap.tmp-7-ab/memory.bin failed: "),
            "{}",
            error.message
        );
        // The detail says the target is unchanged, and what to do.
        let detail = error.fields.detail.as_deref().unwrap_or_default();
        assert!(detail.contains("/data/snap is unchanged"), "{detail}");
        assert!(detail.contains(advice), "{errno}: {detail}");
    }
}

#[test]
fn running_out_of_descriptors_says_what_to_do() {
    for errno in [libc::EMFILE, libc::ENFILE] {
        let error =
            membacking::MemoryBuildError::AllocationFailed(io::Error::from_raw_os_error(errno))
                .to_js_error();
        assert_eq!(
            error.kind(),
            (
                ErrorClass::MemoryBuildError,
                Some(ErrorCode::AllocationFailed)
            )
        );
        assert!(
            error
                .message
                .starts_with("failed to allocate memory: too many open files: "),
            "{}",
            error.message
        );
        assert!(
            error.message.contains("manager.close()"),
            "{}",
            error.message
        );
        assert!(error.message.contains("ulimit -n"), "{}", error.message);
        let cause = error.cause.as_deref().expect("the OS error is the cause");
        assert_eq!(cause.fields.errno, Some(errno));
        let os = JsError::os(&io::Error::from_raw_os_error(errno), "memfd_create");
        assert!(os.message.contains(OUT_OF_DESCRIPTORS), "{}", os.message);
        // A snapshot's or a migration's file or descriptor operation (a restore duplicating
        // the RAM object, a snapshot creating its files) says it too.
        let snapshot = membacking::SnapshotError::Io {
            op: "duplicate",
            path: "the RAM object".into(),
            source: io::Error::from_raw_os_error(errno),
        }
        .to_js_error();
        assert_eq!(snapshot.fields.errno, Some(errno));
        assert!(
            snapshot
                .message
                .starts_with("duplicate the RAM object failed: "),
            "{}",
            snapshot.message
        );
        assert!(
            snapshot.message.ends_with(OUT_OF_DESCRIPTORS),
            "{}",
            snapshot.message
        );
        let migration = membacking::migration::MigrationError::Io {
            op: "start".into(),
            source: io::Error::from_raw_os_error(errno),
        }
        .to_js_error();
        assert!(
            migration.message.ends_with(OUT_OF_DESCRIPTORS),
            "{}",
            migration.message
        );
    }
    let other =
        membacking::MemoryBuildError::AllocationFailed(io::Error::from_raw_os_error(libc::ENOMEM))
            .to_js_error();
    assert!(
        !other.message.contains("too many open files"),
        "{}",
        other.message
    );
}

#[test]
fn a_read_buffer_that_cannot_be_allocated_is_coded_with_its_size() {
    let error = guestmem::ReadToVecError::Allocation { size: 1 << 40 }.to_js_error();
    assert_eq!(
        error.kind(),
        (
            ErrorClass::MembackingError,
            Some(ErrorCode::AllocationFailed)
        )
    );
    assert_eq!(error.fields.size, Some(crate::json::BigInt(1 << 40)));
    assert!(
        error.message.contains("0x10000000000-byte buffer")
            && error.message.contains("smaller pieces"),
        "{}",
        error.message
    );
    let memory = guestmem::GuestMemory::allocate(4096);
    let out_of_range = memory.read_to_vec(0, 8192).unwrap_err().to_js_error();
    assert_eq!(
        out_of_range.kind(),
        (
            ErrorClass::GuestMemoryError,
            Some(ErrorCode::GuestMemoryOutOfRange)
        )
    );
}

#[test]
fn a_refused_layout_keeps_its_code_and_says_which_range_breaks_which_rule() {
    use vm_topology::memory::MemoryLayout;
    let gap = |start: u64, end: u64| MemoryRange::new(start..end);
    let error = MemoryLayout::new_explained(
        4 << 30,
        &[gap(3 << 30, 4 << 30), gap(1 << 30, 2 << 30)],
        None,
    )
    .unwrap_err()
    .to_js_error();
    assert_eq!(
        error.kind(),
        (
            ErrorClass::MemoryLayoutError,
            Some(ErrorCode::BadMemoryRanges)
        )
    );
    assert_eq!(error.message, "invalid memory or MMIO ranges");
    assert_eq!(
        error.fields.detail.as_deref(),
        Some(
            "gaps[1] 0x40000000-0x80000000 comes after gaps[0] 0xc0000000-0x100000000 but \
             starts before it: list them in ascending order"
        )
    );
    let size = MemoryLayout::new_explained(0x1001, &[], None)
        .unwrap_err()
        .to_js_error();
    assert_eq!(size.kind().1, Some(ErrorCode::BadSize));
    assert_eq!(size.message, "invalid memory size");
    assert_eq!(
        size.fields.detail.as_deref(),
        Some("the RAM size 0x1001 is not a positive multiple of 4 KiB (0x1000)")
    );
    let vtl2 = vm_topology::memory::LayoutProblem::Vtl2BeforeEndOfRam {
        vtl2: MemoryRange::new(0..0x1000),
        end_of_ram: 0x2000,
    }
    .to_js_error();
    assert_eq!(vtl2.kind().1, Some(ErrorCode::Vtl2RangeBeforeEndOfRam));
    assert_eq!(vtl2.message, "vtl2 range is below end of ram");
    assert!(vtl2.fields.detail.is_some());
}

/// A 4-byte access at 0x3ffe of a 0x4000-byte reservation.
fn access(is_write: bool) -> SparseAccess {
    SparseAccess {
        offset: 0x3ffe,
        len: 4,
        reserved: 0x4000,
        is_write,
    }
}

#[test]
fn a_va_window_the_kernel_refuses_says_why_and_what_to_do() {
    // Under `ulimit -v`, building a manager failed with "failed to create VA mapper" caused by
    // "failed to reserve address space" (messages the contract fixes) and no detail at all.
    let refused = || membacking::VaMapperError::Reserve(io::Error::from_raw_os_error(libc::ENOMEM));
    let build = membacking::MemoryBuildError::VaMapper(refused()).to_js_error();
    assert_eq!(build.message, "failed to create VA mapper");
    assert_eq!(build.fields.detail.as_deref(), Some(RESERVE_REFUSED));
    let reserve = build
        .cause
        .as_deref()
        .expect("the VaMapperError is the cause");
    assert_eq!(
        reserve.kind(),
        (ErrorClass::VaMapperError, Some(ErrorCode::Reserve))
    );
    assert_eq!(reserve.message, "failed to reserve address space");
    assert_eq!(reserve.fields.detail.as_deref(), Some(RESERVE_REFUSED));
    assert_eq!(
        reserve.cause.as_deref().and_then(|os| os.fields.errno),
        Some(libc::ENOMEM)
    );
    let attach = membacking::PartitionAttachError::VaMapper(refused()).to_js_error();
    assert_eq!(attach.fields.detail.as_deref(), Some(RESERVE_REFUSED));
    assert!(RESERVE_REFUSED.contains("ulimit -v"));
    // Another reason (here a window that does not fit the address space) says its own.
    let other =
        membacking::MemoryBuildError::VaMapper(membacking::VaMapperError::Reserve(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the window length does not fit",
        )))
        .to_js_error();
    assert_eq!(other.fields.detail, None);
}

#[test]
fn a_client_of_a_stopped_manager_says_why_and_what_to_do() {
    // client.guestMemory() after manager.close() failed with "failed to communicate with the
    // memory manager" (the original's text) and no detail saying that the manager had stopped.
    let gone = membacking::VaMapperError::MemoryManagerGone(membacking::ManagerGone).to_js_error();
    assert_eq!(
        gone.kind(),
        (
            ErrorClass::VaMapperError,
            Some(ErrorCode::MemoryManagerGone)
        )
    );
    assert_eq!(
        gone.message,
        "failed to communicate with the memory manager"
    );
    assert_eq!(gone.fields.detail.as_deref(), Some(MAPPER_MANAGER_GONE));
    assert!(MAPPER_MANAGER_GONE.contains("client.guestMemory()"));
    assert_eq!(
        gone.cause.as_deref().map(JsError::kind),
        Some((ErrorClass::MemoryManagerError, Some(ErrorCode::ManagerGone)))
    );
}

#[test]
fn a_descriptor_that_is_not_open_is_named_with_what_to_pass() {
    // Mappable.fromFd(9999) said only "fcntl: Bad file descriptor (os error 9)".
    let refused = sparse_mmap::mappable_from_raw_fd(9999).expect_err("fd 9999 is not open");
    let error = mappable_from_fd(&refused, 9999);
    assert_eq!(error.kind(), (ErrorClass::OsError, None));
    assert_eq!(error.fields.errno, Some(libc::EBADF));
    assert_eq!(error.fields.syscall, Some("fcntl"));
    assert!(
        error
            .message
            .starts_with("fcntl(F_DUPFD_CLOEXEC) of fd 9999: "),
        "{}",
        error.message
    );
    let detail = error.fields.detail.as_deref().expect("a detail");
    assert!(
        detail.contains("fd 9999 is not an open descriptor"),
        "{detail}"
    );
    assert!(detail.contains("stdio[3]"), "{detail}");
    // Out of descriptors keeps its own hint and gets no EBADF detail.
    let emfile = mappable_from_fd(&io::Error::from_raw_os_error(libc::EMFILE), 3);
    assert!(emfile.message.contains("ulimit -n"), "{}", emfile.message);
    assert_eq!(emfile.fields.detail, None);
}

#[test]
fn a_decommit_outside_ram_names_the_first_byte_that_is_not_ram_and_the_ram() {
    // decommitRam of a range reaching into the MMIO gap said only "… is not a controllable RAM
    // range", the visibility control's text, which names no rule for a decommit.
    let gib = 1 << 30;
    let ram = [
        MemoryRange::new(0..0xa0000),
        MemoryRange::new(0xa0000..0xc0000),
        MemoryRange::new(0xc0000..3 * gib),
        MemoryRange::new(4 * gib..5 * gib),
    ];
    let into_gap = decommit_outside_ram(MemoryRange::new(3 * gib - 0x1000..3 * gib + 0x1000), &ram);
    assert!(
        into_gap.starts_with("0xc0000000 in 0xbffff000-0xc0001000 is not guest RAM"),
        "{into_gap}"
    );
    assert!(
        into_gap.ends_with("lying wholly in guest RAM (0x0-0xc0000000, 0x100000000-0x140000000)"),
        "{into_gap}"
    );
    let beyond = decommit_outside_ram(MemoryRange::new(5 * gib..5 * gib + 0x1000), &ram);
    assert!(beyond.starts_with("0x140000000 in "), "{beyond}");
    let empty = decommit_outside_ram(MemoryRange::new(0x1000..0x1000), &ram);
    assert!(empty.starts_with("0x1000-0x1000 is empty"), "{empty}");
    // The row of a refused decommit carries that detail; a manager that is gone keeps its own.
    let range = MemoryRange::new(5 * gib..5 * gib + 0x1000);
    let refused =
        membacking::RegionManagerError::InvalidRamRegion(membacking::InvalidRamRegion(range));
    let error = decommit_error(&refused, range, &ram);
    assert_eq!(error.kind().1, Some(ErrorCode::InvalidRamRegion));
    assert_eq!(error.fields.detail, Some(beyond));
    let gone = decommit_error(&membacking::RegionManagerError::ManagerGone, range, &ram);
    assert_eq!(gone.kind().1, Some(ErrorCode::ManagerGone));
    assert_ne!(gone.fields.detail, error.fields.detail);
}

#[test]
fn an_alias_map_that_does_not_fit_says_why_the_rule_and_an_offset_that_fits() {
    // vtl0AliasMap(0x1000) failed with the original's "not enough guest address space available
    // for the vtl0 alias map" only: neither the offset nor the bound it must reach.
    let end = 0x1_0000_0000;
    let layout = vm_topology::memory::MemoryLayout::new(
        0x8000_0000,
        &[MemoryRange::new(0xc000_0000..end)],
        None,
    )
    .unwrap();
    let error = membacking::MemoryBuildError::AliasMapWontFit;
    let inside = memory_build_error(&error, Some(0x1000), &layout);
    assert_eq!(
        inside.kind(),
        (
            ErrorClass::MemoryBuildError,
            Some(ErrorCode::AliasMapWontFit)
        )
    );
    assert_eq!(
        inside.message,
        "not enough guest address space available for the vtl0 alias map"
    );
    let detail = inside.fields.detail.as_deref().expect("a detail");
    assert!(
        detail.starts_with("the VTL0 alias offset 0x1000 lies inside the guest address space, which ends at 0x100000000"),
        "{detail}"
    );
    assert!(detail.ends_with("such as 0x100000000"), "{detail}");
    // The VTL2 range is part of the address space the alias repeats.
    let with_vtl2 = vm_topology::memory::MemoryLayout::new(
        0x8000_0000,
        &[MemoryRange::new(0xc000_0000..end)],
        Some(MemoryRange::new(0x2_0000_0000..0x2_0020_0000)),
    )
    .unwrap();
    let detail = memory_build_error(&error, Some(end), &with_vtl2)
        .fields
        .detail
        .unwrap_or_default();
    assert!(detail.contains("which ends at 0x200200000"), "{detail}");
    // Without an alias offset (as no build fails so) the row stays as it is.
    assert_eq!(
        memory_build_error(&error, None, &layout).fields.detail,
        None
    );
    // The x86 refusal of a build gets the layout's detail too.
    let x86 = memory_build_error(
        &membacking::MemoryBuildError::InvalidRamForX86,
        None,
        &layout,
    );
    assert_eq!(x86.fields.detail, Some(invalid_ram_for_x86_detail(&layout)));
    let unaligned = alias_map_wont_fit(0x1_0000_0800, end);
    assert!(
        unaligned.starts_with("the VTL0 alias offset 0x100000800 is not a multiple of 4 KiB"),
        "{unaligned}"
    );
    let past = alias_map_wont_fit(u64::MAX - 0xfff, end);
    assert!(
        past.contains("past the end of the 64-bit address space"),
        "{past}"
    );
}

#[test]
fn a_shared_memory_object_that_cannot_be_sized_names_ftruncate_and_the_size() {
    // Every failure of allocSharedMemory was labelled memfd_create, sizing the object too.
    let huge = 1usize << 63;
    let refused = sparse_mmap::alloc_shared_memory_steps(huge, "huge").expect_err("too large");
    let error = alloc_shared_memory(&refused, "huge");
    assert_eq!(error.fields.syscall, Some("ftruncate"));
    assert_eq!(error.fields.errno, Some(libc::EFBIG));
    assert!(
        error
            .message
            .starts_with("ftruncate to 0x8000000000000000 bytes: "),
        "{}",
        error.message
    );
    let detail = error.fields.detail.as_deref().expect("a detail");
    assert!(detail.contains("ulimit -f"), "{detail}");
    // Creating the object keeps its own call's name.
    let long_name = "x".repeat(300);
    let refused = sparse_mmap::alloc_shared_memory_steps(4096, &long_name).expect_err("EINVAL");
    let error = alloc_shared_memory(&refused, &long_name);
    assert_eq!(error.fields.syscall, Some("memfd_create"));
    assert_eq!(error.fields.errno, Some(libc::EINVAL));
}

#[test]
fn a_shared_memory_name_too_long_says_the_limit() {
    // "memfd_create: Invalid argument (os error 22)" named neither the name nor the limit.
    let longest = "x".repeat(MEMFD_NAME_MAX);
    drop(sparse_mmap::alloc_shared_memory_steps(4096, &longest).expect("the longest name"));
    // Bytes, not characters: 125 two-byte characters are 250 bytes.
    for name in ["x".repeat(MEMFD_NAME_MAX + 1), "é".repeat(125)] {
        let refused = sparse_mmap::alloc_shared_memory_steps(4096, &name).expect_err("EINVAL");
        let error = alloc_shared_memory(&refused, &name);
        assert_eq!(error.fields.errno, Some(libc::EINVAL));
        let detail = error.fields.detail.as_deref().expect("a detail");
        assert!(detail.contains("is 250 bytes long"), "{detail}");
        assert!(detail.contains("at most 249 bytes"), "{detail}");
        assert!(detail.contains("use a shorter name"), "{detail}");
    }
}

#[test]
fn a_sparse_mapping_the_kernel_refuses_names_the_length_and_what_to_do() {
    // `new SparseMapping(2n ** 62n)` was "mmap: Cannot allocate memory" with nothing more, and
    // a length near 2^64 only the fixed overflow text.
    let too_big = 1usize << 62;
    let refused = sparse_mmap::SparseMapping::new(too_big).expect_err("no 4 EiB address space");
    let error = sparse_mapping_reserve(&refused, too_big);
    assert_eq!(error.fields.errno, Some(libc::ENOMEM));
    let detail = error.fields.detail.as_deref().expect("a detail");
    assert!(detail.contains("0x4000000000000000 bytes"), "{detail}");
    assert!(detail.contains("ulimit -v"), "{detail}");

    let overflowing = usize::MAX - 4096;
    let overflow = sparse_mmap::SparseMapping::new(overflowing).expect_err("overflows");
    let error = sparse_mapping_reserve(&overflow, overflowing);
    assert_eq!(
        error.message,
        "length and alignment combination causes overflow"
    );
    let detail = error.fields.detail.as_deref().expect("a detail");
    assert!(detail.contains("0xffffffffffffefff"), "{detail}");

    // A zero length keeps its own message, with no detail added.
    let zero = sparse_mmap::SparseMapping::new(0).expect_err("empty");
    assert_eq!(sparse_mapping_reserve(&zero, 0).fields.detail, None);
}

#[test]
fn invalid_ram_for_x86_detail_names_the_first_ram_range() {
    use vm_topology::memory::MemoryLayout;
    use vm_topology::memory::MemoryRangeWithNode;
    let ram = |start: u64, end: u64| MemoryRangeWithNode {
        range: MemoryRange::new(start..end),
        vnode: 0,
    };
    let late = MemoryLayout::new_from_ranges(&[ram(0x10_0000, 0x4000_0000)], &[]).unwrap();
    let detail = invalid_ram_for_x86_detail(&late);
    assert!(
        detail.starts_with("the first RAM range 0x100000-0x40000000 starts at 0x100000, not 0: "),
        "{detail}"
    );
    assert!(
        detail.ends_with("or build without x86LegacySupport"),
        "{detail}"
    );
    // The row of a refused x86LegacyRamRanges carries it.
    let refused = vm_topology::x86_legacy::x86_legacy_ram_ranges(&late, true).unwrap_err();
    assert_eq!(
        invalid_ram_for_x86(&refused, &late).fields.detail,
        Some(detail)
    );
    let small = MemoryLayout::new(0x8_0000, &[], None).unwrap();
    assert!(invalid_ram_for_x86_detail(&small)
        .starts_with("the first RAM range 0x0-0x80000 holds 0x80000 bytes, less than 1 MiB: "));
}

#[test]
fn a_sparse_mapping_fault_says_where_it_faulted_and_what_to_place() {
    let mapping = half_placed();
    let error = mapping.read_at(0xffe, &mut [0u8; 4]).unwrap_err();
    let access = SparseAccess {
        offset: 0xffe,
        len: 4,
        reserved: 0x2000,
        is_write: false,
    };
    let fault = JsError::sparse_mapping(&error, access);
    assert_eq!(fault.message, "failed to read memory");
    let detail = fault.fields.detail.as_deref().unwrap_or_default();
    assert!(
        detail.starts_with(
            "a read of 0x4 bytes at offset 0xffe of the reservation faulted at offset 0x1000: \
             nothing readable is placed there"
        ),
        "{detail}"
    );
    let error = mapping.write_at(0x1000, &[1u8]).unwrap_err();
    let access = SparseAccess {
        offset: 0x1000,
        len: 1,
        reserved: 0x2000,
        is_write: true,
    };
    let detail = JsError::sparse_mapping(&error, access)
        .fields
        .detail
        .unwrap_or_default();
    assert!(
        detail.contains("nothing writable is placed there"),
        "{detail}"
    );
}

#[test]
fn an_invalid_ram_region_says_which_ranges_the_calls_take() {
    let error = membacking::InvalidRamRegion(MemoryRange::new(0..0x1000)).to_js_error();
    assert_eq!(error.message, "0x0-0x1000 is not a controllable RAM range");
    assert_eq!(
        error.fields.detail.as_deref(),
        Some(INVALID_RAM_REGION_DETAIL)
    );
}

#[test]
fn a_file_mapped_from_an_unaligned_offset_says_the_rule() {
    // "mmap: Invalid argument (os error 22)" did not say that fileOffset was the problem.
    let object = sparse_mmap::alloc_shared_memory(0x10000, "unaligned").expect("memfd");
    let mapping = SparseMapping::new(0x10000).expect("reserve");
    let refused = mapping
        .map_file(0, 0x1000, &object, 1, true)
        .expect_err("EINVAL");
    let error = sparse_map_file(&refused, 1);
    assert_eq!(error.fields.errno, Some(libc::EINVAL));
    assert_eq!(error.fields.syscall, Some("mmap"));
    let detail = error.fields.detail.as_deref().expect("a detail");
    assert!(
        detail.starts_with("fileOffset 0x1 is not a multiple of the page size"),
        "{detail}"
    );
    let beyond = 1u64 << 63;
    let refused = mapping
        .map_file(0, 0x1000, &object, beyond, true)
        .expect_err("EINVAL");
    let detail = sparse_map_file(&refused, beyond)
        .fields
        .detail
        .expect("a detail");
    assert!(
        detail.contains("beyond the largest file offset"),
        "{detail}"
    );
    // An aligned offset refused for another reason gets no such detail.
    let other = sparse_map_file(&io::Error::from_raw_os_error(libc::EINVAL), 0x1000);
    assert_eq!(other.fields.detail, None);
}

#[test]
fn a_refused_placement_says_the_window_is_unplaced_now() {
    // The manager removes a window's earlier placement before it makes the new one, so a
    // refused placement leaves the window unplaced, which neither the message nor any field said.
    let invalid = JsError::map_to_guest(&io(io::ErrorKind::InvalidInput, "bad range"));
    assert_eq!(invalid.kind().1, Some(ErrorCode::InvalidInput));
    assert_eq!(invalid.fields.detail.as_deref(), Some(LEFT_UNPLACED));
    // Not a refusal of the placement (the manager is gone): no such detail.
    let gone = JsError::map_to_guest(&io::Error::other(
        membacking::RegionManagerError::ManagerGone,
    ));
    assert_eq!(gone.kind().1, Some(ErrorCode::ManagerGone));
    assert_eq!(gone.fields.detail, None);
}

#[test]
fn a_placement_refused_for_lack_of_slots_is_no_free_slot_and_leaves_the_window_placed() {
    // The slot check refuses before anything changes: the earlier placement stays, so no
    // "unplaced" detail; the code is the KVM partition's own.
    let refused = JsError::map_to_guest(&io::Error::other(
        membacking::RegionManagerError::NoFreeSlot {
            partition: 1,
            needed: 2,
            free: 1,
            max_slots: 32764,
        },
    ));
    assert_eq!(
        refused.kind(),
        (ErrorClass::MemoryManagerError, Some(ErrorCode::NoFreeSlot))
    );
    assert_eq!(refused.fields.detail, None);
    assert!(
        refused.message.starts_with(
            "partition 1 has 1 of its 32764 memory slots free, but the change needs 2 more"
        ),
        "{}",
        refused.message
    );
}
