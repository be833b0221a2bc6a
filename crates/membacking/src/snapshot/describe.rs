//! A machine's parts in the canonical form of error messages (ranges as `0x0-0x40000000`,
//! lists joined by ", "), and sentences naming the parts that differ between two machines.

use super::format::LayoutRecord;
use super::format::OptionsRecord;
use super::format::RamRegionRecord;
use memory_range::MemoryRange;
use vm_topology::memory::MemoryLayout;

/// `0x<start>-0x<end>`.
pub(crate) fn span(start: u64, end: u64) -> String {
    format!("{start:#x}-{end:#x}")
}

/// The items joined by ", ", or "none".
pub(crate) fn list(items: impl IntoIterator<Item = String>) -> String {
    let items: Vec<String> = items.into_iter().collect();
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

/// A RAM range, with its virtual NUMA node when it is not 0.
fn ram_range(start: u64, end: u64, vnode: u32) -> String {
    match vnode {
        0 => span(start, end),
        vnode => format!("{} (vnode {vnode})", span(start, end)),
    }
}

/// A layout's parts by name: RAM, MMIO gaps and the VTL2 range.
pub(crate) fn layout_parts(layout: &MemoryLayout) -> Vec<(&'static str, String)> {
    let ranges = |ranges: &[MemoryRange]| list(ranges.iter().map(|r| span(r.start(), r.end())));
    vec![
        (
            "RAM",
            list(
                layout
                    .ram()
                    .iter()
                    .map(|ram| ram_range(ram.range.start(), ram.range.end(), ram.vnode)),
            ),
        ),
        ("MMIO gaps", ranges(layout.mmio())),
        (
            "VTL2 range",
            layout
                .vtl2_range()
                .map_or_else(|| "none".into(), |r| span(r.start(), r.end())),
        ),
    ]
}

/// A recorded layout's parts, named as [`layout_parts`] names them.
pub(crate) fn layout_record_parts(layout: &LayoutRecord) -> Vec<(&'static str, String)> {
    vec![
        (
            "RAM",
            list(
                layout
                    .ram
                    .iter()
                    .map(|ram| ram_range(ram.start.0, ram.end.0, ram.vnode)),
            ),
        ),
        (
            "MMIO gaps",
            list(layout.mmio.iter().map(|r| span(r.start.0, r.end.0))),
        ),
        (
            "VTL2 range",
            layout
                .vtl2
                .map_or_else(|| "none".into(), |r| span(r.start.0, r.end.0)),
        ),
    ]
}

/// Recorded build options by name.
pub(crate) fn options_parts(options: &OptionsRecord) -> Vec<(&'static str, String)> {
    let flag = |value: bool| value.to_string();
    vec![
        (
            "option x86_legacy_support",
            flag(options.x86_legacy_support),
        ),
        ("option private_memory", flag(options.private_memory)),
        (
            "option transparent_hugepages",
            flag(options.transparent_hugepages),
        ),
        (
            "option vtl0_alias_map",
            options
                .vtl0_alias_map
                .map_or_else(|| "none".into(), |offset| format!("{:#x}", offset.0)),
        ),
        ("option pin_mappings", flag(options.pin_mappings)),
        ("option prefetch_ram", flag(options.prefetch_ram)),
    ]
}

/// RAM regions as `0x0-0xa0000 at backing offset 0x0, …`.
pub(crate) fn ram_regions(regions: impl IntoIterator<Item = (u64, u64, u64)>) -> String {
    list(
        regions.into_iter().map(|(start, end, offset)| {
            format!("{} at backing offset {offset:#x}", span(start, end))
        }),
    )
}

/// The recorded RAM regions, as [`ram_regions`] shows them.
pub(crate) fn ram_region_records(regions: &[RamRegionRecord]) -> String {
    ram_regions(
        regions
            .iter()
            .map(|region| (region.start.0, region.end.0, region.file_offset.0)),
    )
}

/// "`first` RAM is A but `second` RAM is B; …" for every part whose value differs (parts are
/// paired by position and carry the same names), or `None` when none does.
pub(crate) fn differences(
    first: &str,
    first_parts: &[(&str, String)],
    second: &str,
    second_parts: &[(&str, String)],
) -> Option<String> {
    let sentences: Vec<String> = first_parts
        .iter()
        .zip(second_parts)
        .filter(|((_, a), (_, b))| a != b)
        .map(|((name, a), (_, b))| format!("{first} {name} is {a} but {second} {name} is {b}"))
        .collect();
    (!sentences.is_empty()).then(|| sentences.join("; "))
}
