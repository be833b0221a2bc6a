//! The JSON shapes of dirty tracking, snapshots and restores: what `take()`, `snapshot()`,
//! `restore()`, a lazy restore's statistics and the snapshot readers hand to JavaScript. Each
//! view is built from the core's value and serializes to exactly the object the TypeScript
//! layer returns (camelCase keys, `bigint` addresses and sizes, `MemoryRange` ranges; counts
//! stay numbers).

use crate::json::BigInt;
use crate::json::Range;
use membacking::snapshot::format::DeviceMappingRecord;
use membacking::snapshot::format::DeviceWindowRecord;
use membacking::snapshot::format::Manifest;
use membacking::snapshot::format::RangeRecord;
use membacking::snapshot::LazyStats;
use membacking::snapshot::RestoreMode;
use membacking::snapshot::RestoredWindow;
use membacking::snapshot::SnapshotInfo;
use memory_range::MemoryRange;
use serde::Serialize;
use std::path::Path;

/// A recorded range as a `MemoryRange` (a verified manifest's ranges are page-aligned and
/// ordered; anything else shows as the empty range rather than failing the view).
fn range(start: u64, end: u64) -> Range {
    Range(MemoryRange::try_new(start..end).unwrap_or(MemoryRange::EMPTY))
}

fn record_range(record: &RangeRecord) -> Range {
    range(record.start.0, record.end.0)
}

/// The ranges `take()` reports.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct RangesView(Vec<Range>);

impl RangesView {
    /// The view of `ranges`.
    pub fn new(ranges: &[MemoryRange]) -> Self {
        RangesView(ranges.iter().copied().map(Range).collect())
    }
}

/// `SnapshotInfo`: what a snapshot wrote.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotInfoView {
    dir: String,
    id: String,
    bytes: BigInt,
    total_bytes: BigInt,
    extents: u64,
    zero_pages: u64,
    incremental: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    warning: Option<String>,
}

impl From<&SnapshotInfo> for SnapshotInfoView {
    fn from(info: &SnapshotInfo) -> Self {
        SnapshotInfoView {
            dir: info.dir.display().to_string(),
            id: info.id.clone(),
            bytes: BigInt(info.bytes),
            total_bytes: BigInt(info.total_bytes),
            extents: info.extents,
            zero_pages: info.zero_pages,
            incremental: info.incremental,
            warning: info.warning.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BaseView {
    path: String,
    id: String,
}

#[derive(Debug, Serialize)]
struct RamRangeView {
    range: Range,
    vnode: u32,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct LayoutRecordView {
    ram: Vec<RamRangeView>,
    mmio: Vec<Range>,
    vtl2_range: Option<Range>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct OptionsView {
    x86_legacy_support: bool,
    private_memory: bool,
    transparent_hugepages: bool,
    vtl0_alias_map: Option<BigInt>,
    pin_mappings: bool,
    prefetch_ram: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RamRegionRecordView {
    range: Range,
    file_offset: BigInt,
    /// The `RamVisibility` value as recorded (`'ReadWrite'`, `'ReadOnly'`, `'Unmapped'`).
    visibility: String,
}

/// A recorded mapping of a device window.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceMappingView {
    offset: BigInt,
    len: BigInt,
    file_offset: BigInt,
    writable: bool,
}

impl From<&DeviceMappingRecord> for DeviceMappingView {
    fn from(record: &DeviceMappingRecord) -> Self {
        DeviceMappingView {
            offset: BigInt(record.offset.0),
            len: BigInt(record.len.0),
            file_offset: BigInt(record.file_offset.0),
            writable: record.writable,
        }
    }
}

/// A device window as a snapshot records it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceWindowView {
    name: String,
    gpa: BigInt,
    len: BigInt,
    writable: bool,
    mappings: Vec<DeviceMappingView>,
}

impl From<&DeviceWindowRecord> for DeviceWindowView {
    fn from(record: &DeviceWindowRecord) -> Self {
        DeviceWindowView {
            name: record.name.clone(),
            gpa: BigInt(record.gpa.0),
            len: BigInt(record.len.0),
            writable: record.writable,
            mappings: record
                .mappings
                .iter()
                .map(DeviceMappingView::from)
                .collect(),
        }
    }
}

/// A snapshot's manifest (`SnapshotManifest`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestView {
    id: String,
    created_unix_ms: u64,
    page_size: u64,
    base: Option<BaseView>,
    tracking_session: Option<BigInt>,
    layout: LayoutRecordView,
    options: OptionsView,
    ram_size: BigInt,
    ram_regions: Vec<RamRegionRecordView>,
    device_windows: Vec<DeviceWindowView>,
    index_bytes: BigInt,
    index_crc32c: Option<u32>,
    memory_bytes: BigInt,
    data_pages: u64,
    zero_pages: u64,
    extents: u64,
}

impl From<&Manifest> for ManifestView {
    fn from(manifest: &Manifest) -> Self {
        ManifestView {
            id: manifest.id.clone(),
            created_unix_ms: manifest.created_unix_ms,
            page_size: manifest.page_size,
            base: manifest.base.as_ref().map(|base| BaseView {
                path: base.path.clone(),
                id: base.id.clone(),
            }),
            tracking_session: manifest.tracking_session.map(|session| BigInt(session.0)),
            layout: LayoutRecordView {
                ram: manifest
                    .layout
                    .ram
                    .iter()
                    .map(|ram| RamRangeView {
                        range: range(ram.start.0, ram.end.0),
                        vnode: ram.vnode,
                    })
                    .collect(),
                mmio: manifest.layout.mmio.iter().map(record_range).collect(),
                vtl2_range: manifest.layout.vtl2.as_ref().map(record_range),
            },
            options: OptionsView {
                x86_legacy_support: manifest.options.x86_legacy_support,
                private_memory: manifest.options.private_memory,
                transparent_hugepages: manifest.options.transparent_hugepages,
                vtl0_alias_map: manifest
                    .options
                    .vtl0_alias_map
                    .map(|offset| BigInt(offset.0)),
                pin_mappings: manifest.options.pin_mappings,
                prefetch_ram: manifest.options.prefetch_ram,
            },
            ram_size: BigInt(manifest.ram_size.0),
            ram_regions: manifest
                .ram_regions
                .iter()
                .map(|region| RamRegionRecordView {
                    range: range(region.start.0, region.end.0),
                    file_offset: BigInt(region.file_offset.0),
                    visibility: region.visibility.clone(),
                })
                .collect(),
            device_windows: manifest
                .device_windows
                .iter()
                .map(DeviceWindowView::from)
                .collect(),
            index_bytes: BigInt(manifest.index.size.0),
            index_crc32c: manifest.index.crc32c,
            memory_bytes: BigInt(manifest.memory.size.0),
            data_pages: manifest.data_pages,
            zero_pages: manifest.zero_pages,
            extents: manifest.extents,
        }
    }
}

/// One snapshot of a chain: its directory and manifest.
#[derive(Debug, Serialize)]
pub struct ChainLinkView {
    dir: String,
    manifest: ManifestView,
}

/// A snapshot's chain, newest first, and (after a verification) the pages checked.
#[derive(Debug, Serialize)]
pub struct ChainView {
    chain: Vec<ChainLinkView>,
    /// Pages whose checksum was checked; `null` when only manifests and indexes were read.
    pages: Option<u64>,
}

impl ChainView {
    /// The view of `chain` (newest first); `pages` after a verification.
    pub fn new(chain: &[(std::path::PathBuf, Manifest)], pages: Option<u64>) -> Self {
        ChainView {
            chain: chain
                .iter()
                .map(|(dir, manifest)| ChainLinkView {
                    dir: dir.display().to_string(),
                    manifest: ManifestView::from(manifest),
                })
                .collect(),
            pages,
        }
    }
}

/// A device window a restore recreated: as recorded, and the recorded mappings no backing was
/// given for (the caller maps them with the window's `region`).
#[derive(Debug, Serialize)]
pub struct RestoredWindowView {
    #[serde(flatten)]
    window: DeviceWindowView,
    missing: Vec<DeviceMappingView>,
}

impl From<&RestoredWindow> for RestoredWindowView {
    fn from(restored: &RestoredWindow) -> Self {
        RestoredWindowView {
            window: DeviceWindowView::from(&restored.record),
            missing: restored
                .missing
                .iter()
                .map(DeviceMappingView::from)
                .collect(),
        }
    }
}

/// What a restore rebuilt from (`manager.restoredFrom`).
#[derive(Debug, Serialize)]
pub struct RestoreInfoView {
    dir: String,
    id: String,
    /// Snapshots in the chain (1 for a full snapshot).
    layers: usize,
    /// Bytes of page data restored.
    bytes: BigInt,
    mode: crate::enums::Js<RestoreMode>,
}

impl RestoreInfoView {
    /// The view of a restore of `dir` (snapshot `id`, `layers` deep, `bytes` of data) in `mode`.
    pub fn new(dir: &Path, id: &str, layers: usize, bytes: u64, mode: RestoreMode) -> Self {
        RestoreInfoView {
            dir: dir.display().to_string(),
            id: id.to_owned(),
            layers,
            bytes: BigInt(bytes),
            mode: crate::enums::Js(mode),
        }
    }
}

/// A lazy restore's statistics (`LazyRestoreStats`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LazyStatsView {
    faults: u64,
    pages_filled: u64,
}

impl From<LazyStats> for LazyStatsView {
    fn from(stats: LazyStats) -> Self {
        LazyStatsView {
            faults: stats.faults,
            pages_filled: stats.pages_filled,
        }
    }
}

/// `snapshotSupport()`: whether lazy restores can run here, and why not.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSupportView {
    lazy_restore: bool,
    reason: Option<String>,
}

impl SnapshotSupportView {
    /// The view of `membacking::snapshot::userfaultfd_available()`'s answer.
    pub fn new(userfaultfd: Result<(), String>) -> Self {
        match userfaultfd {
            Ok(()) => SnapshotSupportView {
                lazy_restore: true,
                reason: None,
            },
            Err(reason) => SnapshotSupportView {
                lazy_restore: false,
                reason: Some(reason),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::to_json;
    use membacking::snapshot::format::BaseRecord;
    use membacking::snapshot::format::FileRecord;
    use membacking::snapshot::format::Hex;
    use membacking::snapshot::format::LayoutRecord;
    use membacking::snapshot::format::OptionsRecord;
    use membacking::snapshot::format::RamRangeRecord;
    use membacking::snapshot::format::RamRegionRecord;

    fn value<T: Serialize>(view: &T) -> serde_json::Value {
        serde_json::from_str(&to_json(view)).unwrap()
    }

    fn manifest() -> Manifest {
        Manifest {
            id: "ab".repeat(16),
            created_unix_ms: 1_765_000_000_000,
            page_size: 4096,
            base: Some(BaseRecord {
                path: "../full".into(),
                id: "cd".repeat(16),
            }),
            tracking_session: Some(Hex(7)),
            layout: LayoutRecord {
                ram: vec![RamRangeRecord {
                    start: Hex(0),
                    end: Hex(0xc000_0000),
                    vnode: 0,
                }],
                mmio: vec![RangeRecord {
                    start: Hex(0xc000_0000),
                    end: Hex(0x1_0000_0000),
                }],
                vtl2: None,
            },
            options: OptionsRecord {
                x86_legacy_support: true,
                private_memory: false,
                transparent_hugepages: false,
                vtl0_alias_map: None,
                pin_mappings: false,
                prefetch_ram: false,
            },
            ram_size: Hex(0xc000_0000),
            ram_regions: vec![RamRegionRecord {
                start: Hex(0xa0000),
                end: Hex(0xc0000),
                file_offset: Hex(0xa0000),
                visibility: "Unmapped".into(),
            }],
            device_windows: vec![DeviceWindowRecord {
                name: "fb".into(),
                gpa: Hex(0xd000_0000),
                len: Hex(0x4000),
                writable: true,
                mappings: vec![DeviceMappingRecord {
                    offset: Hex(0),
                    len: Hex(0x2000),
                    file_offset: Hex(0x1000),
                    writable: false,
                }],
            }],
            index: FileRecord {
                size: Hex(0x40),
                crc32c: Some(99),
            },
            memory: FileRecord {
                size: Hex(0x2000),
                crc32c: None,
            },
            data_pages: 2,
            zero_pages: 1,
            extents: 3,
        }
    }

    #[test]
    fn a_manifest_shows_layout_regions_windows_and_files_with_tagged_values() {
        let view = value(&ManifestView::from(&manifest()));
        assert_eq!(
            view["base"],
            serde_json::json!({"path": "../full", "id": "cd".repeat(16)})
        );
        assert_eq!(
            view["trackingSession"],
            serde_json::json!({"$bigint": "0x7"})
        );
        assert_eq!(
            view["layout"],
            serde_json::json!({
                "ram": [{"range": {"$range": ["0x0", "0xc0000000"]}, "vnode": 0}],
                "mmio": [{"$range": ["0xc0000000", "0x100000000"]}],
                "vtl2Range": null,
            })
        );
        assert_eq!(view["options"]["x86LegacySupport"], true);
        assert_eq!(view["options"]["vtl0AliasMap"], serde_json::Value::Null);
        assert_eq!(
            view["ramRegions"][0],
            serde_json::json!({
                "range": {"$range": ["0xa0000", "0xc0000"]},
                "fileOffset": {"$bigint": "0xa0000"},
                "visibility": "Unmapped",
            })
        );
        assert_eq!(
            view["deviceWindows"][0]["mappings"][0],
            serde_json::json!({
                "offset": {"$bigint": "0x0"},
                "len": {"$bigint": "0x2000"},
                "fileOffset": {"$bigint": "0x1000"},
                "writable": false,
            })
        );
        assert_eq!(view["indexBytes"], serde_json::json!({"$bigint": "0x40"}));
        assert_eq!(view["indexCrc32c"], 99);
        assert_eq!(
            view["memoryBytes"],
            serde_json::json!({"$bigint": "0x2000"})
        );
        assert_eq!(
            (&view["dataPages"], &view["zeroPages"], &view["extents"]),
            (
                &serde_json::json!(2),
                &serde_json::json!(1),
                &serde_json::json!(3)
            )
        );
        assert_eq!(view["createdUnixMs"], 1_765_000_000_000u64);
    }

    #[test]
    fn snapshot_info_has_bigint_sizes_and_number_counts() {
        let info = SnapshotInfo {
            dir: "/tmp/snap".into(),
            id: "ef".repeat(16),
            bytes: 0x10_0000,
            total_bytes: 0x10_1000,
            extents: 4,
            zero_pages: 2,
            incremental: true,
            warning: None,
        };
        assert_eq!(
            value(&SnapshotInfoView::from(&info)),
            serde_json::json!({
                "dir": "/tmp/snap",
                "id": "ef".repeat(16),
                "bytes": {"$bigint": "0x100000"},
                "totalBytes": {"$bigint": "0x101000"},
                "extents": 4,
                "zeroPages": 2,
                "incremental": true,
            })
        );
    }

    #[test]
    fn a_chain_lists_each_snapshot_newest_first_with_the_pages_checked() {
        let chain = vec![
            ("/s/top".into(), manifest()),
            ("/s/full".into(), manifest()),
        ];
        let view = value(&ChainView::new(&chain, Some(12)));
        assert_eq!(view["chain"][0]["dir"], "/s/top");
        assert_eq!(view["chain"][1]["dir"], "/s/full");
        assert_eq!(view["pages"], 12);
        assert_eq!(
            value(&ChainView::new(&chain, None))["pages"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn ranges_restore_info_stats_and_support_have_the_apis_shapes() {
        let ranges = RangesView::new(&[
            MemoryRange::new(0..0x2000),
            MemoryRange::new(0x5000..0x6000),
        ]);
        assert_eq!(
            value(&ranges),
            serde_json::json!([{"$range": ["0x0", "0x2000"]}, {"$range": ["0x5000", "0x6000"]}])
        );
        let info = RestoreInfoView::new(Path::new("/s"), "id", 3, 0x3000, RestoreMode::Lazy);
        assert_eq!(
            value(&info),
            serde_json::json!({"dir": "/s", "id": "id", "layers": 3, "bytes": {"$bigint": "0x3000"}, "mode": "lazy"})
        );
        let stats = LazyStatsView::from(LazyStats {
            faults: 5,
            pages_filled: 9,
        });
        assert_eq!(
            value(&stats),
            serde_json::json!({"faults": 5, "pagesFilled": 9})
        );
        assert_eq!(
            value(&SnapshotSupportView::new(Err("no uffd".into()))),
            serde_json::json!({"lazyRestore": false, "reason": "no uffd"})
        );
        assert_eq!(
            value(&SnapshotSupportView::new(Ok(()))),
            serde_json::json!({"lazyRestore": true, "reason": null})
        );
    }

    #[test]
    fn a_manifest_range_that_is_not_page_aligned_shows_as_empty() {
        assert_eq!(
            to_json(&range(0x1001, 0x2000)),
            to_json(&Range(MemoryRange::EMPTY))
        );
    }
}
