//! The JSON shapes of the structured results the API returns: each view is built from a core
//! value and serializes (see [`crate::json`]) to exactly the object the TypeScript layer hands
//! to the user, with camelCase keys, `bigint` addresses and sizes, `MemoryRange` ranges and the
//! enums' JavaScript values.

use crate::enums::Js;
use crate::json::BigInt;
use crate::json::Range;
use membacking::region_manager::FlatEntry;
use membacking::region_manager::RegionRef;
use membacking::PreviewStep;
use membacking::PreviewStepKind;
use membacking::SharedObject;
use memory_range::MemoryRange;
use serde::Serialize;
use std::os::fd::AsFd;

/// `MemoryLayout`'s accessors (`describe()`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LayoutView {
    ram: Vec<RangeWithNode>,
    mmio: Vec<Range>,
    vtl2_range: Option<Range>,
    ram_size: BigInt,
    end_of_ram: BigInt,
    #[serde(rename = "ramBelow4gb")]
    ram_below_4gb: BigInt,
    #[serde(rename = "ramAbove4gb")]
    ram_above_4gb: BigInt,
    ram_above_high_mmio: Option<BigInt>,
    #[serde(rename = "maxRamBelow4gb")]
    max_ram_below_4gb: Option<BigInt>,
    /// `null` where the core accessor would panic (no MMIO gaps).
    end_of_ram_or_mmio: Option<BigInt>,
}

#[derive(Debug, Serialize)]
struct RangeWithNode {
    range: Range,
    vnode: u32,
}

impl From<&vm_topology::memory::MemoryLayout> for LayoutView {
    fn from(layout: &vm_topology::memory::MemoryLayout) -> Self {
        LayoutView {
            ram: layout
                .ram()
                .iter()
                .map(|ram| RangeWithNode {
                    range: Range(ram.range),
                    vnode: ram.vnode,
                })
                .collect(),
            mmio: layout.mmio().iter().copied().map(Range).collect(),
            vtl2_range: layout.vtl2_range().map(Range),
            ram_size: BigInt(layout.ram_size()),
            end_of_ram: BigInt(layout.end_of_ram()),
            ram_below_4gb: BigInt(layout.ram_below_4gb()),
            ram_above_4gb: BigInt(layout.ram_above_4gb()),
            ram_above_high_mmio: layout.ram_above_high_mmio().map(BigInt),
            max_ram_below_4gb: layout.max_ram_below_4gb().map(BigInt),
            end_of_ram_or_mmio: layout.end_of_ram_or_mmio_checked().map(BigInt),
        }
    }
}

/// A RAM range and its offset in the RAM object (`x86LegacyRamRanges`, `ramRegions`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RamRegionView {
    range: Range,
    file_offset: BigInt,
}

impl RamRegionView {
    /// The regions `(range, file_offset)`.
    pub fn list(regions: impl IntoIterator<Item = (MemoryRange, u64)>) -> Vec<Self> {
        regions
            .into_iter()
            .map(|(range, file_offset)| RamRegionView {
                range: Range(range),
                file_offset: BigInt(file_offset),
            })
            .collect()
    }
}

/// The named areas of the first megabyte that x86 legacy support splits off (the CLI's
/// `layout --x86-legacy` labels the regions with them).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct X86LegacyAreaView {
    name: &'static str,
    range: Range,
    usable: bool,
}

impl X86LegacyAreaView {
    /// Every area, in address order.
    pub fn list() -> Vec<Self> {
        vm_topology::x86_legacy::x86_legacy_areas()
            .into_iter()
            .map(|area| X86LegacyAreaView {
                name: area.name,
                range: Range(area.range),
                usable: area.usable,
            })
            .collect()
    }
}

/// One call of a recording partition's log.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedCallView {
    op: Js<virt::RecordedOp>,
    gpa: BigInt,
    size: BigInt,
    #[serde(skip_serializing_if = "Option::is_none")]
    writable: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exec: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    va_offset: Option<BigInt>,
    failed: bool,
}

impl From<&virt::RecordedCall> for RecordedCallView {
    fn from(call: &virt::RecordedCall) -> Self {
        RecordedCallView {
            op: Js(call.op),
            gpa: BigInt(call.gpa),
            size: BigInt(call.size),
            writable: call.writable,
            exec: call.exec,
            va_offset: call.va_offset.map(BigInt),
            failed: call.failed,
        }
    }
}

/// The manager's inspect snapshot.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagerSnapshotView {
    alias_offset: Option<BigInt>,
    pin_mappings: bool,
    mapper_count: usize,
    regions: Vec<RegionView>,
    mappings: Vec<MappingView>,
    partitions: Vec<PartitionView>,
    prefetch_failures: PrefetchFailuresView,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RegionView {
    id: u64,
    name: String,
    range: Range,
    priority: u8,
    dma_target: bool,
    map_params: Option<MapParamsView>,
    active: bool,
    mappings: Vec<RegionMappingView>,
}

#[derive(Debug, Serialize)]
struct MapParamsView {
    writable: bool,
    executable: bool,
    prefetch: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RegionMappingView {
    range_in_region: Range,
    file_offset: BigInt,
    writable: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct MappingView {
    range: Range,
    file_offset: BigInt,
    writable: bool,
    dma_target: bool,
    active_mappers: Vec<u32>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PartitionView {
    offset: BigInt,
    pin_mappings: bool,
}

impl From<&membacking::ManagerSnapshot> for ManagerSnapshotView {
    fn from(snapshot: &membacking::ManagerSnapshot) -> Self {
        ManagerSnapshotView {
            alias_offset: snapshot.alias_offset.map(BigInt),
            pin_mappings: snapshot.pin_mappings,
            mapper_count: snapshot.mapper_count,
            regions: snapshot
                .regions
                .iter()
                .map(|region| RegionView {
                    id: region.id.get(),
                    name: region.name.clone(),
                    range: Range(region.range),
                    priority: region.priority,
                    dma_target: region.dma_target,
                    map_params: region.map_params.map(|params| MapParamsView {
                        writable: params.writable,
                        executable: params.executable,
                        prefetch: params.prefetch,
                    }),
                    active: region.active,
                    mappings: region
                        .mappings
                        .iter()
                        .map(|mapping| RegionMappingView {
                            range_in_region: Range(mapping.range_in_region),
                            file_offset: BigInt(mapping.file_offset),
                            writable: mapping.writable,
                        })
                        .collect(),
                })
                .collect(),
            mappings: snapshot
                .mappings
                .iter()
                .map(|mapping| MappingView {
                    range: Range(mapping.range),
                    file_offset: BigInt(mapping.file_offset),
                    writable: mapping.writable,
                    dma_target: mapping.dma_target,
                    active_mappers: mapping.active_mappers.iter().map(|id| id.0).collect(),
                })
                .collect(),
            partitions: snapshot
                .partitions
                .iter()
                .map(|partition| PartitionView {
                    offset: BigInt(partition.offset),
                    pin_mappings: partition.pin_mappings,
                })
                .collect(),
            prefetch_failures: PrefetchFailuresView {
                recent: snapshot
                    .prefetch_failures
                    .recent
                    .iter()
                    .map(PrefetchFailureView::from)
                    .collect(),
                count: snapshot.prefetch_failures.count,
            },
        }
    }
}

/// A piece of RAM that could not be prefetched into a partition (`PrefetchFailure`).
#[derive(Debug, Serialize)]
struct PrefetchFailureView {
    /// The partition mapper's index (registration order).
    partition: usize,
    range: Range,
    /// `null` when the partition's error carries no OS error number.
    errno: Option<i32>,
    message: String,
}

impl From<&membacking::PrefetchFailureRecord> for PrefetchFailureView {
    fn from(failure: &membacking::PrefetchFailureRecord) -> Self {
        PrefetchFailureView {
            partition: failure.partition,
            range: Range(failure.range),
            errno: failure.errno,
            message: failure.message.clone(),
        }
    }
}

/// `inspect().prefetchFailures`: the most recent failures, oldest first, and the total count.
#[derive(Debug, Serialize)]
struct PrefetchFailuresView {
    recent: Vec<PrefetchFailureView>,
    count: u64,
}

/// One prefetch progress report: the arguments of `onProgress(done, total, failure)`.
#[derive(Debug, Serialize)]
pub struct PrefetchReportView {
    done: BigInt,
    total: BigInt,
    failure: Option<PrefetchFailureView>,
}

impl From<&membacking::PrefetchReport> for PrefetchReportView {
    fn from(report: &membacking::PrefetchReport) -> Self {
        PrefetchReportView {
            done: BigInt(report.done),
            total: BigInt(report.total),
            failure: report.failure.as_ref().map(PrefetchFailureView::from),
        }
    }
}

/// A region as the flat view names it.
#[derive(Debug, Serialize)]
struct RegionNameView {
    id: u64,
    name: String,
}

impl From<&RegionRef> for RegionNameView {
    fn from(region: &RegionRef) -> Self {
        RegionNameView {
            id: region.id.get(),
            name: region.name.to_string(),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BackingView {
    /// The object's name (`memfd:guest-ram`, a path, or `fd N`).
    object: String,
    file_offset: BigInt,
}

/// One piece of the flat view.
#[derive(Debug, Serialize)]
pub struct FlatEntryView {
    range: Range,
    region: Option<RegionNameView>,
    backing: Option<BackingView>,
    writable: bool,
    executable: bool,
    hidden: Vec<RegionNameView>,
}

impl FlatEntryView {
    /// The flat view, naming each backing object as `/proc/self/fd` shows it.
    pub fn list(entries: &[FlatEntry<SharedObject>]) -> Vec<Self> {
        entries
            .iter()
            .map(|entry| FlatEntryView {
                range: Range(entry.range),
                region: entry.region.as_ref().map(RegionNameView::from),
                backing: entry.backing.as_ref().map(|backing| BackingView {
                    object: sparse_mmap::object_name(backing.object.as_fd()),
                    file_offset: BigInt(backing.file_offset),
                }),
                writable: entry.writable,
                executable: entry.executable,
                hidden: entry.hidden.iter().map(RegionNameView::from).collect(),
            })
            .collect()
    }
}

/// One planned operation.
#[derive(Debug, Serialize)]
struct PlannedOpView {
    op: Js<PreviewStepKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    partition: Option<usize>,
    gpa: BigInt,
    size: BigInt,
    #[serde(skip_serializing_if = "Option::is_none")]
    writable: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exec: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    slots: Option<Vec<u32>>,
    reason: String,
}

impl From<&PreviewStep> for PlannedOpView {
    fn from(step: &PreviewStep) -> Self {
        PlannedOpView {
            op: Js(step.kind),
            partition: step.partition,
            gpa: BigInt(step.gpa),
            size: BigInt(step.size),
            writable: step.writable,
            exec: step.exec,
            slots: step.slots.clone(),
            reason: step.reason.clone(),
        }
    }
}

/// A dry run's result.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanView {
    flat_view: Vec<FlatEntryView>,
    ops: Vec<PlannedOpView>,
}

impl From<&membacking::PlanPreview> for PlanView {
    fn from(preview: &membacking::PlanPreview) -> Self {
        PlanView {
            flat_view: FlatEntryView::list(&preview.flat_view),
            ops: preview.steps.iter().map(PlannedOpView::from).collect(),
        }
    }
}

/// What `manager.apply(changes)` resolves with: the operations it carried out.
#[derive(Debug, Serialize)]
pub struct AppliedPlanView {
    ops: Vec<PlannedOpView>,
}

impl From<&membacking::AppliedBatch> for AppliedPlanView {
    fn from(applied: &membacking::AppliedBatch) -> Self {
        AppliedPlanView {
            ops: applied.steps.iter().map(PlannedOpView::from).collect(),
        }
    }
}

/// A registrar's inspect fields.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrarView {
    chunks_registered: u64,
    chunk_count: u64,
    registration_offset: BigInt,
}

impl<T> From<&underhill_mem::MemoryRegistrar<T>> for RegistrarView {
    fn from(registrar: &underhill_mem::MemoryRegistrar<T>) -> Self {
        RegistrarView {
            chunks_registered: registrar.chunks_registered(),
            chunk_count: registrar.chunk_count(),
            registration_offset: BigInt(registrar.registration_offset()),
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub use kvm::*;

#[cfg(target_arch = "x86_64")]
mod kvm {
    use super::*;

    /// One memory slot.
    #[derive(Debug, Serialize)]
    struct SlotView {
        slot: u32,
        gpa: BigInt,
        size: BigInt,
        readonly: bool,
        pinned: bool,
    }

    /// A KVM partition's slot table and facts.
    #[derive(Debug, Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct KvmInspectView {
        slots: Vec<SlotView>,
        max_slots: u32,
        slot_zap_all_quirk_disabled: bool,
        readonly_supported: bool,
        vcpu_count: u32,
    }

    impl From<&virt_kvm::KvmPartitionInspect> for KvmInspectView {
        fn from(inspect: &virt_kvm::KvmPartitionInspect) -> Self {
            KvmInspectView {
                slots: inspect
                    .slots
                    .iter()
                    .map(|slot| SlotView {
                        slot: slot.slot,
                        gpa: BigInt(slot.gpa),
                        size: BigInt(slot.size),
                        readonly: slot.readonly,
                        pinned: slot.pinned,
                    })
                    .collect(),
                max_slots: inspect.max_slots,
                slot_zap_all_quirk_disabled: inspect.slot_zap_all_quirk_disabled,
                readonly_supported: inspect.readonly_supported,
                vcpu_count: inspect.vcpu_count,
            }
        }
    }

    /// A vCPU's registers: `{rax: bigint, …, rflags: bigint}`.
    #[derive(Debug)]
    pub struct RegistersView(pub virt_kvm::Registers);

    impl Serialize for RegistersView {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let values = self.0.values();
            let mut map = serializer.serialize_map(Some(values.len()))?;
            for (name, value) in virt_kvm::Registers::NAMES.iter().zip(values) {
                map.serialize_entry(name, &BigInt(value))?;
            }
            map.end()
        }
    }

    /// Why a run settled (`VcpuExit`): `data` as a byte array the TypeScript layer makes a
    /// `Buffer` of.
    #[derive(Debug, Serialize)]
    pub struct VcpuExitView {
        kind: Js<crate::enums::VcpuExitKind>,
        #[serde(skip_serializing_if = "Option::is_none")]
        address: Option<BigInt>,
        #[serde(skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
        #[serde(skip_serializing_if = "Option::is_none")]
        size: Option<usize>,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<Vec<u8>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    }

    impl From<&virt_kvm::VcpuExit> for VcpuExitView {
        fn from(exit: &virt_kvm::VcpuExit) -> Self {
            use crate::enums::JsEnum;
            use virt_kvm::VcpuExit as E;
            let mut view = VcpuExitView {
                kind: Js(crate::enums::VcpuExitKind::of(exit)),
                address: None,
                port: None,
                size: None,
                data: None,
                reason: None,
            };
            match exit {
                E::MmioRead { address, size } => {
                    view.address = Some(BigInt(*address));
                    view.size = Some(*size);
                }
                E::MmioWrite { address, data } => {
                    view.address = Some(BigInt(*address));
                    view.size = Some(data.len());
                    view.data = Some(data.clone());
                }
                E::IoIn { port, size } => {
                    view.port = Some(*port);
                    view.size = Some(*size);
                }
                E::IoOut { port, data } => {
                    view.port = Some(*port);
                    view.size = Some(data.len());
                    view.data = Some(data.clone());
                }
                E::Hlt | E::Shutdown => {}
                E::Cancelled(reason) => view.reason = Some(reason.js_str().to_owned()),
                E::Failure { reason } => view.reason = Some(reason.clone()),
            }
            view
        }
    }

    /// One map or unmap call of a KVM partition and the slots it changed.
    #[derive(Debug, Serialize)]
    pub struct SlotLogView {
        /// Process-wide call sequence number (shared with recording partitions' logs).
        sequence: u64,
        op: Js<virt_kvm::SlotOp>,
        gpa: BigInt,
        size: BigInt,
        created: Vec<u32>,
        deleted: Vec<u32>,
        failed: bool,
    }

    impl From<&virt_kvm::SlotLogEntry> for SlotLogView {
        fn from(entry: &virt_kvm::SlotLogEntry) -> Self {
            SlotLogView {
                sequence: entry.sequence,
                op: Js(entry.op),
                gpa: BigInt(entry.gpa),
                size: BigInt(entry.size),
                created: entry.changes.created.clone(),
                deleted: entry.changes.deleted.clone(),
                failed: entry.failed,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::to_json;
    use vm_topology::memory::MemoryLayout;

    const GIB: u64 = 1 << 30;

    #[test]
    fn a_layout_shows_every_accessor_with_tagged_values() {
        let gap = MemoryRange::new(3 * GIB..4 * GIB);
        let layout = MemoryLayout::new(4 * GIB, &[gap], None).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&to_json(&LayoutView::from(&layout))).unwrap();
        assert_eq!(
            json["ram"][1],
            serde_json::json!({"range": {"$range": ["0x100000000", "0x140000000"]}, "vnode": 0})
        );
        assert_eq!(
            json["ramSize"],
            serde_json::json!({"$bigint": "0x100000000"})
        );
        assert_eq!(
            json["ramBelow4gb"],
            serde_json::json!({"$bigint": "0xc0000000"})
        );
        assert_eq!(json["vtl2Range"], serde_json::Value::Null);
        assert_eq!(
            json["endOfRamOrMmio"],
            serde_json::json!({"$bigint": "0x140000000"})
        );
        let no_gaps = MemoryLayout::new(GIB, &[], None).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&to_json(&LayoutView::from(&no_gaps))).unwrap();
        assert_eq!(
            json["endOfRamOrMmio"],
            serde_json::Value::Null,
            "where Rust would panic"
        );
    }

    #[test]
    fn legacy_areas_have_names_ranges_and_e820_usability() {
        let json: serde_json::Value =
            serde_json::from_str(&to_json(&X86LegacyAreaView::list())).unwrap();
        assert_eq!(json.as_array().map(Vec::len), Some(15));
        assert_eq!(
            json[1],
            serde_json::json!({"name": "VGA window", "range": {"$range": ["0xa0000", "0xc0000"]}, "usable": false})
        );
        assert_eq!(json[0]["usable"], serde_json::Value::Bool(true));
    }

    #[test]
    fn a_recorded_call_has_map_fields_only_for_maps() {
        let map = virt::RecordedCall::map(0x1000, 0x2000, true, false, 0x1000);
        assert_eq!(
            to_json(&RecordedCallView::from(&map)),
            concat!(
                r#"{"op":"map","gpa":{"$bigint":"0x1000"},"size":{"$bigint":"0x2000"},"#,
                r#""writable":true,"exec":false,"vaOffset":{"$bigint":"0x1000"},"failed":false}"#
            )
        );
        let unmap = virt::RecordedCall {
            op: virt::RecordedOp::Unmap,
            writable: None,
            exec: None,
            va_offset: None,
            ..map
        };
        let json = to_json(&RecordedCallView::from(&unmap));
        assert!(json.starts_with(r#"{"op":"unmap","#));
        assert!(!json.contains("writable") && !json.contains("vaOffset"));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vcpu_exits_and_registers_have_the_apis_shapes() {
        let exit = virt_kvm::VcpuExit::IoOut {
            port: 0x10,
            data: vec![0x42],
        };
        assert_eq!(
            to_json(&VcpuExitView::from(&exit)),
            r#"{"kind":"IoOut","port":16,"size":1,"data":[66]}"#
        );
        let cancelled = virt_kvm::VcpuExit::Cancelled(virt_kvm::CancelReason::Timeout);
        assert_eq!(
            to_json(&VcpuExitView::from(&cancelled)),
            r#"{"kind":"Cancelled","reason":"timeout"}"#
        );
        let registers = virt_kvm::Registers {
            rip: 0x1000,
            ..Default::default()
        };
        let json: serde_json::Value =
            serde_json::from_str(&to_json(&RegistersView(registers))).unwrap();
        assert_eq!(json["rip"], serde_json::json!({"$bigint": "0x1000"}));
        assert_eq!(json.as_object().unwrap().len(), 18);
    }

    #[test]
    fn prefetch_reports_carry_the_failed_piece_with_its_range_and_errno() {
        let failure = membacking::PrefetchFailureRecord {
            partition: 1,
            range: MemoryRange::new(0x20_0000..0x40_0000),
            errno: Some(12),
            message: "madvise failed".to_owned(),
        };
        let report = membacking::PrefetchReport {
            done: 0x40_0000,
            total: 0x100_0000,
            failure: Some(failure),
        };
        assert_eq!(
            to_json(&PrefetchReportView::from(&report)),
            concat!(
                r#"{"done":{"$bigint":"0x400000"},"total":{"$bigint":"0x1000000"},"#,
                r#""failure":{"partition":1,"range":{"$range":["0x200000","0x400000"]},"#,
                r#""errno":12,"message":"madvise failed"}}"#
            )
        );
        let fine = membacking::PrefetchReport {
            failure: None,
            ..report
        };
        assert!(to_json(&PrefetchReportView::from(&fine)).ends_with(r#""failure":null}"#));
    }

    #[test]
    fn planned_ops_name_their_partition_and_slots_only_where_they_have_them() {
        let step = PreviewStep {
            kind: PreviewStepKind::Invalidate,
            partition: None,
            gpa: 0xa0000,
            size: 0x20000,
            writable: None,
            exec: None,
            slots: None,
            reason: "VGA hidden".to_owned(),
        };
        assert_eq!(
            to_json(&PlannedOpView::from(&step)),
            r#"{"op":"invalidate","gpa":{"$bigint":"0xa0000"},"size":{"$bigint":"0x20000"},"reason":"VGA hidden"}"#
        );
        let map = PreviewStep {
            kind: PreviewStepKind::Map,
            partition: Some(1),
            writable: Some(true),
            exec: Some(true),
            slots: Some(vec![4]),
            ..step
        };
        let json: serde_json::Value =
            serde_json::from_str(&to_json(&PlannedOpView::from(&map))).unwrap();
        assert_eq!(json["op"], "map");
        assert_eq!(json["partition"], 1);
        assert_eq!(json["slots"], serde_json::json!([4]));
    }
}
