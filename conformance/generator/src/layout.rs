//! The `memory_layout`, `registrar` and `x86_legacy_ram_split` areas: building the original's
//! `MemoryLayout` from a constructor input, its accessors and probes, the registrar's call
//! sequences, the x86 legacy split, and the case streams.

use crate::harness::{catch, hex, outcome, range, range_json, ranges, raw_range, to_hex, Rng};
use crate::Case;
use memory_range::MemoryRange;
use serde_json::{json, Value};
use vm_topology::memory::{AddressType, Error, MemoryLayout, MemoryRangeWithNode};

const GB: u64 = 0x4000_0000;
const FOUR_GB: u64 = 0x1_0000_0000;

/// Builds the original's layout from a constructor input.
pub fn build_layout(input: &Value) -> Result<MemoryLayout, Error> {
    let gaps = ranges(&input["gaps"]);
    match input["ctor"].as_str() {
        Some("new") => {
            let vtl2 = (!input["vtl2_range"].is_null()).then(|| range(&input["vtl2_range"]));
            MemoryLayout::new(hex(&input["ram_size"]), &gaps, vtl2)
        }
        Some("new_from_ranges") => {
            let memory: Vec<MemoryRangeWithNode> = input["memory"]
                .as_array()
                .expect("memory list")
                .iter()
                .map(|entry| MemoryRangeWithNode {
                    range: range(&entry["range"]),
                    vnode: entry["vnode"].as_u64().and_then(|v| u32::try_from(v).ok()).expect("vnode"),
                })
                .collect();
            MemoryLayout::new_from_ranges(&memory, &gaps)
        }
        other => panic!("unknown layout constructor {other:?}"),
    }
}

fn error_name(error: &Error) -> String {
    // The variant name, as the vectors record it.
    format!("{error:?}")
}

fn optional_hex(value: Option<u64>) -> Value {
    value.map_or(Value::Null, to_hex)
}

/// Probe addresses for a layout: 0, 4 GiB ± 1, the top, and every range bound ± 1.
fn probe_addresses(layout: &MemoryLayout) -> Vec<u64> {
    let mut addresses = vec![0, FOUR_GB - 1, FOUR_GB, MemoryRange::MAX_ADDRESS, u64::MAX];
    let bounds = layout
        .ram()
        .iter()
        .map(|entry| entry.range)
        .chain(layout.mmio().iter().copied())
        .chain(layout.vtl2_range());
    for r in bounds {
        for address in [r.start(), r.end()] {
            addresses.extend([address.wrapping_sub(1), address, address.wrapping_add(1)]);
        }
    }
    addresses.sort_unstable();
    addresses.dedup();
    addresses
}

fn layout_json(layout: &MemoryLayout, probes: &[u64]) -> Value {
    let ram: Vec<Value> = layout
        .ram()
        .iter()
        .map(|entry| json!({ "range": range_json(&entry.range), "vnode": entry.vnode }))
        .collect();
    let probes: Vec<Value> = probes
        .iter()
        .map(|&address| {
            let result = match layout.probe_address(address) {
                Some(AddressType::Ram) => json!("Ram"),
                Some(AddressType::Mmio) => json!("Mmio"),
                None => Value::Null,
            };
            json!({ "address": to_hex(address), "result": result })
        })
        .collect();
    let accessor = |f: &dyn Fn() -> Value| outcome(catch(f));
    json!({
        "ram": ram,
        "mmio": layout.mmio().iter().map(range_json).collect::<Vec<_>>(),
        "vtl2_range": layout.vtl2_range().as_ref().map_or(Value::Null, range_json),
        "ram_size": accessor(&|| to_hex(layout.ram_size())),
        "end_of_ram": accessor(&|| to_hex(layout.end_of_ram())),
        "ram_below_4gb": accessor(&|| to_hex(layout.ram_below_4gb())),
        "ram_above_4gb": accessor(&|| to_hex(layout.ram_above_4gb())),
        "ram_above_high_mmio": accessor(&|| optional_hex(layout.ram_above_high_mmio())),
        "max_ram_below_4gb": accessor(&|| optional_hex(layout.max_ram_below_4gb())),
        "end_of_ram_or_mmio": accessor(&|| to_hex(layout.end_of_ram_or_mmio())),
        "probes": probes,
    })
}

/// The original's outcome for a `memory_layout` case. `probes` are the addresses to probe
/// (`None`: choose them from the layout).
pub fn run_layout(input: &Value, probes: Option<Vec<u64>>) -> Value {
    match catch(|| build_layout(input)) {
        Ok(Ok(layout)) => {
            let probes = probes.unwrap_or_else(|| probe_addresses(&layout));
            json!({ "ok": layout_json(&layout, &probes) })
        }
        Ok(Err(error)) => json!({ "err": error_name(&error) }),
        Err(message) => json!({ "panic": true, "panic_message": message }),
    }
}

fn gaps_json(gaps: &[MemoryRange]) -> Value {
    Value::Array(gaps.iter().map(range_json).collect())
}

/// A `new` constructor input.
fn new_input(ram_size: u64, gaps: &[MemoryRange], vtl2: Option<MemoryRange>) -> Value {
    json!({
        "ctor": "new",
        "ram_size": to_hex(ram_size),
        "gaps": gaps_json(gaps),
        "vtl2_range": vtl2.as_ref().map_or(Value::Null, range_json),
    })
}

fn r(start: u64, end: u64) -> MemoryRange {
    MemoryRange::new(start..end)
}

/// A random gap list: sorted, usually valid, sometimes broken on purpose.
fn random_gaps(rng: &mut Rng) -> Vec<MemoryRange> {
    let mut gaps = Vec::new();
    let mut position = rng.pick(&[0, 0x1000, GB / 2, GB]);
    for _ in 0..rng.below(4) {
        let start = position + rng.below(4) * rng.pick(&[0x1000, GB / 4, GB]);
        let len = rng.pick(&[0, 0x1000, GB / 4, GB, 4 * GB]);
        gaps.push(r(start, start + len));
        position = start + len;
    }
    if gaps.len() > 1 && rng.below(5) == 0 {
        gaps.swap(0, 1);
    }
    gaps
}

/// The `memory_layout` cases: the spec's scenarios and boundaries, then random layouts.
pub fn layout_cases(rng: &mut Rng, random: usize) -> Vec<Case> {
    let mut cases = Vec::new();
    let t = 1u64 << 40;
    let top = MemoryRange::MAX_ADDRESS;
    let two = [r(GB, 2 * GB), r(3 * GB, 4 * GB)];
    let directed: Vec<Value> = vec![
        new_input(t, &two, None),
        new_input(GB / 2, &two, None),
        new_input(GB, &[r(GB, 2 * GB)], None),
        new_input(0, &two, None),
        new_input(0x800, &two, None),
        new_input(4 * GB, &[], None),
        new_input(GB, &[r(0, GB)], None),
        new_input(2 * GB, &[r(GB, 2 * GB), r(2 * GB, 3 * GB)], None),
        new_input(GB, &[r(GB, 2 * GB), r(2 * GB, 3 * GB)], None),
        new_input(2 * GB, &two, Some(r(4 * GB, 4 * GB + 0x400_0000))),
        new_input(2 * GB, &two, Some(r(3 * GB, 3 * GB + 0x400_0000))),
        new_input(2 * GB, &two, Some(r(5 * GB, 5 * GB))),
        new_input(top, &[], None),
        new_input(top, &[r(3 * GB, 4 * GB)], None),
        new_input(0x2000, &[r(0x1000, top - 0x1000)], None),
        new_input(0x3000, &[r(0x1000, top - 0x1000)], None),
        new_input(0x2000, &[r(0x1000, top)], None),
        json!({ "ctor": "new_from_ranges", "memory": [], "gaps": gaps_json(&two) }),
        json!({ "ctor": "new_from_ranges", "memory": [
            { "range": range_json(&r(0, 2 * GB)), "vnode": 0 },
            { "range": range_json(&r(2 * GB, 6 * GB)), "vnode": 1 }], "gaps": [] }),
    ];
    for input in directed {
        cases.push(Case::new("memory_layout", "directed", input));
    }
    for _ in 0..random {
        let gaps = random_gaps(rng);
        let input = if rng.below(4) == 0 {
            let mut memory = Vec::new();
            let mut position = rng.pick(&[0, 0x10_0000]);
            for node in 0..rng.below(4) {
                let len = rng.pick(&[0, 0x1000, GB, 3 * GB]);
                memory.push(json!({ "range": range_json(&r(position, position + len)), "vnode": node }));
                position += len + rng.pick(&[0, GB]);
            }
            json!({ "ctor": "new_from_ranges", "memory": memory, "gaps": gaps_json(&gaps) })
        } else {
            let near_top = top - rng.below(8) * GB;
            let size = rng.pick(&[0, 0x800, 0x1000, GB / 2, GB, 2 * GB, 5 * GB, t, near_top]);
            let vtl2 = match rng.below(4) {
                0 => {
                    let start = rng.below(24) * GB / 2;
                    Some(r(start, start + rng.pick(&[0, 0x400_0000])))
                }
                _ => None,
            };
            new_input(size, &gaps, vtl2)
        };
        cases.push(Case::new("memory_layout", "random", input));
    }
    cases
}

/// The original's outcome for a `registrar` case.
#[cfg(feature = "registrar")]
pub fn run_registrar(input: &Value) -> Value {
    use std::cell::RefCell;
    use std::rc::Rc;
    use underhill_mem::registrar::MemoryRegistrar;

    let layout = build_layout(&input["layout"]).expect("a registrar case's layout is valid");
    let fail_ranges: Vec<(u64, u64)> =
        input["fail_ranges"].as_array().expect("fail_ranges").iter().map(raw_range).collect();
    let log: Rc<RefCell<Vec<Value>>> = Rc::default();
    let callback = {
        let log = log.clone();
        move |range: MemoryRange| {
            let fail = fail_ranges.iter().any(|&(start, end)| range.end() > start && range.start() < end);
            log.borrow_mut().push(json!({ "range": range_json(&range), "fail": fail }));
            if fail {
                Err(std::io::Error::other("registration refused"))
            } else {
                Ok(())
            }
        }
    };
    let registrar = MemoryRegistrar::new(&layout, hex(&input["registration_offset"]), callback);
    let mut calls = Vec::new();
    for call in input["calls"].as_array().expect("calls") {
        let (address, len) = (hex(&call["address"]), hex(&call["len"]));
        let result = catch(|| registrar.register(address, len));
        let callbacks: Vec<Value> = log.borrow_mut().drain(..).collect();
        let panicked = result.is_err();
        let result = match result {
            Ok(Ok(())) => json!({ "ok": null }),
            Ok(Err(address)) => json!({ "err": to_hex(address) }),
            Err(message) => json!({ "panic": true, "panic_message": message }),
        };
        calls.push(json!({ "callbacks": callbacks, "result": result }));
        if panicked {
            break;
        }
    }
    json!({ "calls": calls })
}

/// A layout input and its RAM ranges (the vectors carry both), for layouts that succeed.
fn valid_layout(rng: &mut Rng) -> (Value, Vec<MemoryRange>, Option<MemoryRange>) {
    loop {
        if rng.below(3) == 0 {
            // Explicit RAM: not always from 0, touching or apart, several vnodes, with MMIO
            // gaps in some of the holes.
            let mut memory = Vec::new();
            let mut gaps = Vec::new();
            let mut position = rng.pick(&[0, 0, 0xa_0000, 0x10_0000, GB, 2 * GB + 0x1000]);
            for _ in 0..1 + rng.below(4) {
                let len = rng.pick(&[0x1000, 0x9_f000, 0x10_0000, GB, 3 * GB, 2 * GB + 0x5000]);
                memory.push(json!({ "range": range_json(&r(position, position + len)), "vnode": rng.below(4) }));
                position += len;
                let hole = rng.pick(&[0, 0x1000, GB, 64 * GB]);
                if hole != 0 && rng.below(2) == 0 {
                    gaps.push(r(position, position + hole));
                }
                position += hole;
            }
            let input = json!({ "ctor": "new_from_ranges", "memory": memory, "gaps": gaps_json(&gaps) });
            if let Ok(layout) = build_layout(&input) {
                let ram = layout.ram().iter().map(|entry| entry.range).collect();
                return (input, ram, None);
            }
            continue;
        }
        let size = rng.pick(&[GB, 3 * GB, 8 * GB, 16 * GB, 1 << 40]);
        let gaps = match rng.below(4) {
            0 => vec![],
            1 => vec![r(3 * GB, 4 * GB)],
            2 => vec![r(0x10000, 0x20000), r(1 << 40, 2 << 40)],
            _ => vec![r(GB, 2 * GB), r(3 * GB, 4 * GB)],
        };
        let vtl2 = (rng.below(4) == 0).then(|| r(64 << 30, (64 << 30) + 0x400_0000));
        let input = new_input(size, &gaps, vtl2);
        if let Ok(layout) = build_layout(&input) {
            let ram = layout.ram().iter().map(|entry| entry.range).collect();
            return (input, ram, layout.vtl2_range());
        }
    }
}

/// The `registrar` cases: random call sequences with failing ranges and offsets.
#[cfg(feature = "registrar")]
pub fn registrar_cases(rng: &mut Rng, random: usize) -> Vec<Case> {
    let mut cases = Vec::new();
    for index in 0..random {
        let (layout, ram, _) = valid_layout(rng);
        let end = ram.last().map_or(0, |last| last.end());
        let offset = match index % 10 {
            0 => 0x800,
            1 => 0u64.wrapping_sub(rng.pick(&[2 * GB, 3 * GB])),
            _ => rng.pick(&[0, 1 << 40, 1 << 50]),
        };
        let fail_ranges: Vec<Value> = (0..rng.below(3))
            .map(|_| {
                let start = offset.wrapping_add(rng.below(end / 0x1000 + 1) * 0x1000);
                json!({ "start": to_hex(start), "end": to_hex(start.saturating_add(rng.pick(&[1, 0x1000, GB]))) })
            })
            .collect();
        let calls: Vec<Value> = (0..1 + rng.below(6))
            .map(|_| {
                let address = match rng.below(5) {
                    0 => rng.address(),
                    _ => rng.below(end + 8 * GB),
                };
                let any = rng.address();
                let len = rng.pick(&[0, 1, 0x1000, 0x7000, GB, 8 * GB + 1, any]);
                json!({ "address": to_hex(address), "len": to_hex(len) })
            })
            .collect();
        let category = if offset % 0x1000 != 0 { "unaligned_offset" } else if fail_ranges.is_empty() { "" } else { "failures" };
        cases.push(Case::new("registrar", category, json!({
            "layout": layout,
            "layout_ram": ram.iter().map(range_json).collect::<Vec<_>>(),
            "registration_offset": to_hex(offset),
            "fail_ranges": fail_ranges,
            "calls": calls,
        })));
    }
    cases
}

/// The original's outcome for an `x86_legacy_ram_split` case: the region list its
/// `GuestMemoryBuilder::build` statements create, each region with the offset of its backing
/// (the running sum of the earlier regions' lengths, as the original assigns it).
#[cfg(feature = "x86")]
pub fn run_x86(input: &Value) -> Value {
    let layout = build_layout(&input["layout"]).expect("an x86 case's layout is valid");
    let legacy = input["x86_legacy_support"].as_bool().expect("bool");
    match catch(|| vm_topology::x86_split::ram_ranges(&layout, legacy)) {
        Ok(Ok(list)) => {
            let mut file_offset = 0u64;
            let regions: Vec<Value> = list
                .iter()
                .map(|range| {
                    let region = json!({ "range": range_json(range), "file_offset": to_hex(file_offset) });
                    file_offset += range.len();
                    region
                })
                .collect();
            json!({ "ok": regions })
        }
        Ok(Err(_)) => json!({ "err": "InvalidRamForX86" }),
        Err(message) => json!({ "panic": true, "panic_message": message }),
    }
}

/// This project's deliberate difference (deviation D1): no empty region at 1 MiB.
#[cfg(feature = "x86")]
pub fn x86_project_outcome(expected: &Value) -> Option<Value> {
    let regions = expected.get("ok")?.as_array()?;
    let kept: Vec<Value> = regions
        .iter()
        .filter(|region| region["range"]["start"] != region["range"]["end"])
        .cloned()
        .collect();
    (kept.len() != regions.len()).then(|| json!({ "ok": kept }))
}

/// The `x86_legacy_ram_split` cases.
#[cfg(feature = "x86")]
pub fn x86_cases(rng: &mut Rng, random: usize) -> Vec<Case> {
    let mut cases = Vec::new();
    let mb = 0x10_0000;
    let directed = [
        new_input(mb, &[], None),
        new_input(2 * GB, &[r(2 * GB, 4 * GB)], None),
        new_input(8 * GB, &[r(3 * GB, 4 * GB)], Some(r(16 * GB, 16 * GB + 0x400_0000))),
        new_input(mb / 2, &[], None),
        new_input(4 * GB, &[r(0xa0000, 0xc0000)], None),
        json!({ "ctor": "new_from_ranges", "memory": [{ "range": range_json(&r(mb, 2 * GB)), "vnode": 0 }], "gaps": [] }),
    ];
    for layout in directed {
        for legacy in [true, false] {
            cases.push(x86_case(layout.clone(), legacy, "directed"));
        }
    }
    for _ in 0..random {
        let layout = if rng.below(3) == 0 {
            let size = rng.pick(&[mb / 2, mb, mb + 0x1000, 0xa0000, 2 * mb]);
            new_input(size, &[], None)
        } else {
            valid_layout(rng).0
        };
        cases.push(x86_case(layout, rng.below(4) != 0, "random"));
    }
    cases.retain(|case| build_layout(&case.input["layout"]).is_ok());
    cases
}

#[cfg(feature = "x86")]
fn x86_case(layout: Value, legacy: bool, category: &str) -> Case {
    let built = build_layout(&layout);
    let (ram, vtl2) = match &built {
        Ok(layout) => (layout.ram().iter().map(|entry| range_json(&entry.range)).collect(), layout.vtl2_range()),
        Err(_) => (Vec::new(), None),
    };
    Case::new("x86_legacy_ram_split", category, json!({
        "layout": layout,
        "layout_ram": ram,
        "layout_vtl2_range": vtl2.as_ref().map_or(Value::Null, range_json),
        "x86_legacy_support": legacy,
    }))
}
