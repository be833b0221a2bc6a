//! The `memory_range_ops` and `memory_range_algorithms` areas: running the original's
//! `MemoryRange` methods and range algorithms on an input, and the case streams.

use crate::harness::{
    catch, hex, outcome, range, range_json, ranges, raw_range, raw_range_json, run_eager,
    run_lazy, to_hex, Rng,
};
use crate::Case;
use memory_range::{
    flatten_ranges, merge_adjacent_ranges, overlapping_ranges, subtract_ranges, walk_ranges,
    AlignedSubranges, MemoryRange, RangeWalkResult,
};
use serde_json::{json, Value};

/// At most this many `AlignedSubranges` items are recorded.
const ALIGNED_SUBRANGES_LIMIT: usize = 256;
const TOP: u64 = MemoryRange::MAX_ADDRESS;

/// The original's outcome for one `memory_range_ops` case.
pub fn run_op(op: &str, input: &Value) -> Value {
    match op {
        "try_new" => {
            let (start, end) = raw_range(input);
            match MemoryRange::try_new(start..end) {
                Ok(r) => json!({ "ok": range_json(&r) }),
                Err(err) => json!({ "err": {
                    "start": to_hex(start), "end": to_hex(end), "message": err.to_string(),
                }}),
            }
        }
        "new" => {
            let (start, end) = raw_range(input);
            run_eager(|| range_json(&MemoryRange::new(start..end)))
        }
        "bounding" => {
            let (start, end) = raw_range(input);
            run_eager(|| range_json(&MemoryRange::bounding(start..end)))
        }
        "from_4k_gpn_range" => {
            let (start, end) = raw_range(input);
            run_eager(|| range_json(&MemoryRange::from_4k_gpn_range(start..end)))
        }
        "accessors" => {
            let r = range(&input["range"]);
            run_eager(|| {
                json!({
                    "start": to_hex(r.start()),
                    "end": to_hex(r.end()),
                    "start_4k_gpn": to_hex(r.start_4k_gpn()),
                    "end_4k_gpn": to_hex(r.end_4k_gpn()),
                    "page_count_4k": to_hex(r.page_count_4k()),
                    "page_count_2m": to_hex(r.page_count_2m()),
                    "len": to_hex(r.len()),
                    "is_empty": r.is_empty(),
                    "display": r.to_string(),
                })
            })
        }
        "alignment" => {
            let (r, base) = (range(&input["range"]), hex(&input["base"]));
            run_eager(|| to_hex(r.alignment(base)))
        }
        "aligned_subrange" => {
            let (r, alignment) = (range(&input["range"]), hex(&input["alignment"]));
            run_eager(|| range_json(&r.aligned_subrange(alignment)))
        }
        "overlaps" | "contains" | "cmp" | "intersection" => {
            let (a, b) = (range(&input["a"]), range(&input["b"]));
            run_eager(|| match op {
                "overlaps" => json!(a.overlaps(&b)),
                "contains" => json!(a.contains(&b)),
                "cmp" => json!(a.cmp(&b) as i8),
                _ => range_json(&a.intersection(&b)),
            })
        }
        "contains_addr" => {
            let (r, addr) = (range(&input["range"]), hex(&input["addr"]));
            run_eager(|| json!(r.contains_addr(addr)))
        }
        "offset_of" => {
            let (r, addr) = (range(&input["range"]), hex(&input["addr"]));
            run_eager(|| r.offset_of(addr).map_or(Value::Null, to_hex))
        }
        "split_at_offset" => {
            let (r, offset) = (range(&input["range"]), hex(&input["offset"]));
            run_eager(|| {
                let (first, second) = r.split_at_offset(offset);
                json!([range_json(&first), range_json(&second)])
            })
        }
        other => panic!("unknown memory_range_ops op {other}"),
    }
}

fn tagged(value: &Value) -> Vec<(MemoryRange, u64)> {
    let items = value.as_array().expect("tagged list");
    items.iter().map(|item| (range(&item["range"]), item["tag"].as_u64().expect("tag"))).collect()
}

fn walk_item((piece, result): (MemoryRange, RangeWalkResult<u64, u64>)) -> Value {
    let r = range_json(&piece);
    match result {
        RangeWalkResult::Neither => json!({ "range": r, "kind": "Neither" }),
        RangeWalkResult::Left(left) => json!({ "range": r, "kind": "Left", "left": left }),
        RangeWalkResult::Right(right) => json!({ "range": r, "kind": "Right", "right": right }),
        RangeWalkResult::Both(left, right) => {
            json!({ "range": r, "kind": "Both", "left": left, "right": right })
        }
    }
}

fn range_item(piece: MemoryRange) -> Value {
    range_json(&piece)
}

/// The original's outcome for one `memory_range_algorithms` case.
pub fn run_algorithm(op: &str, input: &Value) -> Value {
    match op {
        "overlapping_ranges" | "subtract_ranges" => {
            let (left, right) = (ranges(&input["left"]), ranges(&input["right"]));
            if op == "overlapping_ranges" {
                run_lazy(|| overlapping_ranges(left, right), range_item, None).0
            } else {
                run_lazy(|| subtract_ranges(left, right), range_item, None).0
            }
        }
        "walk_ranges" => {
            let (left, right) = (tagged(&input["left"]), tagged(&input["right"]));
            run_lazy(|| walk_ranges(left, right), walk_item, None).0
        }
        "flatten_ranges" => {
            let list = ranges(&input["ranges"]);
            run_lazy(|| flatten_ranges(list), range_item, None).0
        }
        "merge_adjacent_ranges" => {
            let list = tagged(&input["ranges"]);
            let item = |(piece, tag): (MemoryRange, u64)| json!({ "range": range_json(&piece), "tag": tag });
            run_lazy(|| merge_adjacent_ranges(list), item, None).0
        }
        "aligned_subranges" => {
            let whole = range(&input["range"]);
            let offset = input.get("offset").map(hex);
            let max_len = input.get("max_len").map(hex);
            let base = offset.unwrap_or(0);
            let make = || {
                let mut iter = AlignedSubranges::new(whole);
                if let Some(offset) = offset {
                    iter = iter.with_offset(offset);
                }
                if let Some(max_len) = max_len {
                    iter = iter.with_max_range_len(max_len);
                }
                iter
            };
            let item_json = |piece: MemoryRange| {
                let alignment = outcome(catch(|| piece.alignment(base)).map(to_hex));
                json!({ "range": range_json(&piece), "alignment": alignment })
            };
            let (mut result, truncated) = run_lazy(make, item_json, Some(ALIGNED_SUBRANGES_LIMIT));
            if result.get("ok").is_some() {
                result["truncated"] = json!(truncated);
            }
            result
        }
        other => panic!("unknown memory_range_algorithms op {other}"),
    }
}

/// Interesting raw u64 values for the constructors and arithmetic.
const EDGES: [u64; 16] = [
    0,
    1,
    0xfff,
    0x1000,
    0x1001,
    0x20_0000,
    0x4000_0000,
    1 << 32,
    1 << 63,
    TOP - 0x20_0000,
    TOP - 0x1000,
    TOP,
    u64::MAX - 0x1001,
    u64::MAX - 0x1000,
    u64::MAX - 0xfff,
    u64::MAX,
];

/// Valid ranges at the edges (including the top of the address space).
fn edge_ranges() -> Vec<MemoryRange> {
    let two_mb_line = 0u64.wrapping_sub(0x20_0000);
    let gb_line = 0u64.wrapping_sub(0x4000_0000);
    let bounds = [
        (0, 0),
        (0, 0x1000),
        (0x1000, 0x3000),
        (0x1000, 0x20_1000),
        (0, 1 << 32),
        (0x20_0000, 0x40_0000),
        (gb_line, gb_line),
        (gb_line, TOP),
        (gb_line + 0x1000, TOP),
        (two_mb_line, TOP),
        (two_mb_line + 0x1000, TOP),
        (TOP - 0x1000, TOP),
        (TOP, TOP),
        (0, TOP),
    ];
    bounds.iter().map(|&(start, end)| MemoryRange::new(start..end)).collect()
}

/// The `memory_range_ops` cases: every op over the edge values and ranges, then `random`
/// random cases.
pub fn op_cases(rng: &mut Rng, random: usize) -> Vec<Case> {
    let mut cases = Vec::new();
    let ranges = edge_ranges();
    for &start in &EDGES {
        for &end in &EDGES {
            for op in ["try_new", "new", "bounding", "from_4k_gpn_range"] {
                let (start, end) = if op == "from_4k_gpn_range" { (start >> 12, end >> 12) } else { (start, end) };
                cases.push(Case::new(op, "directed", raw_range_json(start, end)));
            }
        }
    }
    for r in &ranges {
        cases.push(Case::new("accessors", "directed", json!({ "range": range_json(r) })));
        for &value in &EDGES {
            cases.push(Case::new("alignment", "directed", json!({ "range": range_json(r), "base": to_hex(value) })));
            cases.push(Case::new("contains_addr", "directed", json!({ "range": range_json(r), "addr": to_hex(value) })));
            cases.push(Case::new("offset_of", "directed", json!({ "range": range_json(r), "addr": to_hex(value) })));
            cases.push(Case::new("split_at_offset", "directed", json!({ "range": range_json(r), "offset": to_hex(value) })));
        }
        for shift in [0, 1, 12, 13, 21, 30, 32, 63] {
            let input = json!({ "range": range_json(r), "alignment": to_hex(1u64 << shift) });
            cases.push(Case::new("aligned_subrange", "directed", input));
        }
        cases.push(Case::new("aligned_subrange", "directed", json!({ "range": range_json(r), "alignment": "0x3" })));
        for other in &ranges {
            for op in ["overlaps", "contains", "cmp", "intersection"] {
                cases.push(Case::new(op, "directed", json!({ "a": range_json(r), "b": range_json(other) })));
            }
        }
    }
    const OPS: [&str; 15] = [
        "try_new", "new", "bounding", "from_4k_gpn_range", "accessors", "alignment",
        "aligned_subrange", "overlaps", "contains", "cmp", "intersection", "contains_addr",
        "offset_of", "split_at_offset", "bounding",
    ];
    for _ in 0..random {
        let op = rng.pick(&OPS);
        let r = rng.range();
        let input = match op {
            "try_new" | "new" | "bounding" => {
                let (a, b) = (rng.address(), rng.address());
                if rng.below(3) == 0 { raw_range_json(a, b) } else { raw_range_json(a.min(b), a.max(b)) }
            }
            "from_4k_gpn_range" => {
                let (a, b) = (rng.address() >> rng.pick(&[0, 12]), rng.address() >> 12);
                raw_range_json(a.min(b), a.max(b))
            }
            "accessors" => json!({ "range": range_json(&r) }),
            "alignment" => json!({ "range": range_json(&r), "base": to_hex(rng.address()) }),
            "aligned_subrange" => {
                json!({ "range": range_json(&r), "alignment": to_hex(1u64 << rng.below(64)) })
            }
            "contains_addr" | "offset_of" => json!({ "range": range_json(&r), "addr": to_hex(rng.address()) }),
            "split_at_offset" => {
                let offset = if rng.below(2) == 0 { rng.below(r.len() / 0x1000 + 2) * 0x1000 } else { rng.address() };
                json!({ "range": range_json(&r), "offset": to_hex(offset) })
            }
            _ => json!({ "a": range_json(&r), "b": range_json(&rng.range()) }),
        };
        cases.push(Case::new(op, "random", input));
    }
    cases
}

fn list_json(list: &[MemoryRange]) -> Value {
    Value::Array(list.iter().map(range_json).collect())
}

fn tagged_json(list: &[MemoryRange], rng: &mut Rng) -> Value {
    Value::Array(list.iter().map(|r| json!({ "range": range_json(r), "tag": rng.below(3) })).collect())
}

/// A sorted, mostly disjoint list in a window starting at `base` (sometimes broken on purpose).
fn random_list(rng: &mut Rng, base: u64) -> Vec<MemoryRange> {
    let mut list = Vec::new();
    let mut position = base.min(TOP);
    for _ in 0..rng.below(7) {
        let gap = rng.below(4) * 0x10_0000;
        let len = rng.pick(&[0, 0x1000, 0x10_0000, 0x20_0000, 0x40_0000]);
        let start = position.saturating_add(gap).min(TOP);
        let end = start.saturating_add(len).min(TOP);
        list.push(MemoryRange::new(start..end));
        position = end;
    }
    if !list.is_empty() && rng.below(6) == 0 {
        // Break the order: move one element to the end, or repeat one.
        let index = rng.below(list.len() as u64) as usize;
        let element = if rng.below(2) == 0 { list.remove(index) } else { list[index] };
        list.push(element);
    }
    list
}

/// The `memory_range_algorithms` cases: the spec's directed examples, then `random` random
/// cases at 0, at 2^40 and against the top of the address space.
pub fn algorithm_cases(rng: &mut Rng, random: usize) -> Vec<Case> {
    let mut cases = Vec::new();
    let mb = 0x10_0000u64;
    let r = |start: u64, end: u64| MemoryRange::new(start..end);
    let left = [r(0, 4 * mb), r(8 * mb, 12 * mb), r(12 * mb, 12 * mb), r(16 * mb, 20 * mb), r(24 * mb, 32 * mb), r(40 * mb, 48 * mb)];
    let right = [r(2 * mb, 6 * mb), r(10 * mb, 11 * mb), r(11 * mb, 11 * mb), r(11 * mb, 13 * mb), r(15 * mb, 22 * mb), r(26 * mb, 30 * mb)];
    for op in ["overlapping_ranges", "subtract_ranges"] {
        cases.push(Case::new(op, "directed", json!({ "left": list_json(&left), "right": list_json(&right) })));
        cases.push(Case::new(op, "directed", json!({ "left": list_json(&[r(mb, 2 * mb), r(0, mb)]), "right": list_json(&[r(3 * mb, 4 * mb)]) })));
    }
    for whole in edge_ranges() {
        for (offset, max_len) in [(None, None), (Some(0), None), (Some(0x1000), None), (None, Some(0)), (None, Some(0x1000)), (None, Some(0x800)), (Some(0x800), None)] {
            let mut input = json!({ "range": range_json(&whole) });
            if let Some(offset) = offset {
                input["offset"] = to_hex(offset);
            }
            if let Some(max_len) = max_len {
                input["max_len"] = to_hex(max_len);
            }
            cases.push(Case::new("aligned_subranges", "adversarial", input));
        }
    }
    const OPS: [&str; 6] = ["overlapping_ranges", "subtract_ranges", "walk_ranges", "flatten_ranges", "merge_adjacent_ranges", "aligned_subranges"];
    for _ in 0..random {
        let op = rng.pick(&OPS);
        let base = rng.pick(&[0, 1 << 40, TOP - 0x400_0000]);
        let input = match op {
            "overlapping_ranges" | "subtract_ranges" => {
                json!({ "left": list_json(&random_list(rng, base)), "right": list_json(&random_list(rng, base)) })
            }
            "walk_ranges" => {
                let (left, right) = (random_list(rng, base), random_list(rng, base));
                json!({ "left": tagged_json(&left, rng), "right": tagged_json(&right, rng) })
            }
            "flatten_ranges" => json!({ "ranges": list_json(&random_list(rng, base)) }),
            "merge_adjacent_ranges" => {
                let list = random_list(rng, base);
                json!({ "ranges": tagged_json(&list, rng) })
            }
            _ => {
                let whole = if rng.below(2) == 0 {
                    rng.range()
                } else {
                    let near = rng.address();
                    rng.range_near(near)
                };
                let mut input = json!({ "range": range_json(&whole) });
                if rng.below(2) == 0 {
                    input["offset"] = to_hex((rng.page() >> rng.pick(&[0, 16, 40])) & !0xfff);
                }
                if rng.below(3) == 0 {
                    input["max_len"] = to_hex(rng.pick(&[0x1000, 0x20_0000, 0x4000_0000, 0x1_0000_0000]));
                }
                input
            }
        };
        cases.push(Case::new(op, "random", input));
    }
    cases
}
