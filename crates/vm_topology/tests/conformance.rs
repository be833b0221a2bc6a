//! Conformance: checks every case of `memory_layout.json` and `x86_legacy_ram_split.json`
//! (recorded from the original) against this crate.
//!
//! One documented difference is allowed: where the original panics because RAM placed by
//! `MemoryLayout::new` would overflow past 2^64, this crate returns `Err(BadMemoryRanges)`
//! (a Rust API may fail with an error where the original panicked). Such a case counts as passing only for that exact error.

use conformance_vectors::{catch, expected, hex, load, outcome, range_json, to_hex, Tally};
use serde_json::{json, Value};
use vm_topology::memory::{AddressType, Error, MemoryLayout};
use vm_topology::x86_legacy::x86_legacy_ram_ranges;

use conformance_vectors::build_layout;

fn error_name(error: Error) -> &'static str {
    match error {
        Error::BadSize => "BadSize",
        Error::BadMmioGaps => "BadMmioGaps",
        Error::BadMemoryRanges => "BadMemoryRanges",
        Error::Vtl2RangeBeforeEndOfRam => "Vtl2RangeBeforeEndOfRam",
    }
}

/// Calls one accessor, recording a panic as `{"panic": true}`.
fn accessor(f: impl FnOnce() -> Value) -> Value {
    outcome(catch(f))
}

fn optional_hex(value: Option<u64>) -> Value {
    value.map_or(Value::Null, to_hex)
}

fn layout_json(layout: &MemoryLayout, probes: &[u64]) -> Value {
    let ram: Vec<Value> = layout
        .ram()
        .iter()
        .map(|entry| json!({ "range": range_json(&entry.range), "vnode": entry.vnode }))
        .collect();
    let mmio: Vec<Value> = layout.mmio().iter().map(range_json).collect();
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
    json!({
        "ram": ram,
        "mmio": mmio,
        "vtl2_range": layout.vtl2_range().as_ref().map_or(Value::Null, range_json),
        "ram_size": accessor(|| to_hex(layout.ram_size())),
        "end_of_ram": accessor(|| to_hex(layout.end_of_ram())),
        "ram_below_4gb": accessor(|| to_hex(layout.ram_below_4gb())),
        "ram_above_4gb": accessor(|| to_hex(layout.ram_above_4gb())),
        "ram_above_high_mmio": accessor(|| optional_hex(layout.ram_above_high_mmio())),
        "max_ram_below_4gb": accessor(|| optional_hex(layout.max_ram_below_4gb())),
        "end_of_ram_or_mmio": accessor(|| to_hex(layout.end_of_ram_or_mmio())),
        "probes": probes,
    })
}

/// The probe addresses a case asks about (taken from its expected `ok.probes`).
fn probe_addresses(case: &Value) -> Vec<u64> {
    expected(case)["ok"]["probes"]
        .as_array()
        .map(|probes| probes.iter().map(|probe| hex(&probe["address"])).collect())
        .unwrap_or_default()
}

#[test]
fn memory_layout() {
    let file = load("memory_layout.json");
    let mut tally = Tally::new(&file);
    let mut errors_for_overflow_panics = 0;
    for case in &file.cases {
        let input = &case["input"];
        let probes = probe_addresses(case);
        let actual = match catch(|| build_layout(input)) {
            Ok(Ok(layout)) => {
                let ok = layout_json(&layout, &probes);
                // The checked form must agree with the panicking one.
                let checked = optional_hex(layout.end_of_ram_or_mmio_checked());
                let panicking = &ok["end_of_ram_or_mmio"];
                assert!(
                    if checked.is_null() {
                        panicking.get("panic").is_some()
                    } else {
                        *panicking == checked
                    },
                    "case {}: end_of_ram_or_mmio_checked disagrees",
                    case["id"]
                );
                json!({ "ok": ok })
            }
            Ok(Err(Error::BadMemoryRanges)) if expected(case).get("panic").is_some() => {
                // The documented extension: an overflowing layout is an error, not a panic.
                errors_for_overflow_panics += 1;
                json!({ "panic": true })
            }
            Ok(Err(error)) => json!({ "err": error_name(error) }),
            Err(message) => json!({ "panic": true, "panic_message": message }),
        };
        tally.check(case, &actual);
    }
    println!(
        "memory_layout.json: {errors_for_overflow_panics} overflow panics of the original are \
         Err(BadMemoryRanges) here"
    );
    tally.finish();
}

#[test]
fn x86_legacy_ram_split() {
    let file = load("x86_legacy_ram_split.json");
    let mut tally = Tally::new(&file);
    for case in &file.cases {
        let input = &case["input"];
        let layout = build_layout(&input["layout"]).expect("the vectors' layouts are valid");
        let legacy = input["x86_legacy_support"].as_bool().expect("bool");
        let actual = match x86_legacy_ram_ranges(&layout, legacy) {
            Ok(regions) => {
                let regions: Vec<Value> = regions
                    .iter()
                    .map(|region| {
                        json!({
                            "range": range_json(&region.range),
                            "file_offset": to_hex(region.file_offset),
                        })
                    })
                    .collect();
                json!({ "ok": regions })
            }
            Err(_) => json!({ "err": "InvalidRamForX86" }),
        };
        tally.check(case, &actual);
    }
    tally.finish();
}
