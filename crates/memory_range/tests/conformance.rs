//! Conformance: checks every case of `memory_range_ops.json` and `memory_range_algorithms.json`
//! (recorded from the original with overflow checks on) against this crate.
//!
//! Lazy iterators are advanced one `next()` at a time under `catch`, so a panicking case is
//! compared together with the items produced before the panic.

use conformance_vectors::{
    catch, hex, load, outcome, range, range_json, ranges, raw_range, to_hex, Tally,
};
use memory_range::{
    flatten_ranges, merge_adjacent_ranges, overlapping_ranges, subtract_ranges, walk_ranges,
    AlignedSubranges, MemoryRange, RangeWalkResult,
};
use serde_json::{json, Value};

/// At most this many items of an `aligned_subranges` case were recorded.
const ALIGNED_SUBRANGES_LIMIT: usize = 256;

/// Runs one eager operation, turning a panic into the panic outcome.
fn run_eager(f: impl FnOnce() -> Value) -> Value {
    outcome(catch(f).map(|value| json!({ "ok": value })))
}

/// Drains a lazy iterator one `next()` at a time (each under `catch`), formatting items with
/// `item_json`. Stops after `limit` items. Returns the outcome object and whether it stopped
/// because of the limit.
fn run_lazy<I: Iterator>(
    make: impl FnOnce() -> I,
    item_json: impl Fn(I::Item) -> Value,
    limit: Option<usize>,
) -> (Value, bool) {
    let mut iter = match catch(make) {
        Ok(iter) => iter,
        Err(message) => {
            return (
                json!({ "panic": true, "panic_message": message, "items_before_panic": [] }),
                false,
            )
        }
    };
    let mut items = Vec::new();
    loop {
        if limit.is_some_and(|limit| items.len() >= limit) {
            return (json!({ "ok": items }), true);
        }
        match catch(|| iter.next()) {
            Ok(Some(item)) => items.push(item_json(item)),
            Ok(None) => return (json!({ "ok": items }), false),
            Err(message) => {
                return (
                    json!({ "panic": true, "panic_message": message, "items_before_panic": items }),
                    false,
                )
            }
        }
    }
}

fn range_ops_case(case: &Value) -> Value {
    let input = &case["input"];
    match case["op"].as_str().expect("op") {
        "try_new" => {
            let (start, end) = raw_range(input);
            match MemoryRange::try_new(start..end) {
                Ok(r) => json!({ "ok": range_json(&r) }),
                Err(err) => json!({ "err": {
                    "start": to_hex(start),
                    "end": to_hex(end),
                    "message": err.to_string(),
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
            let r = range(&input["range"]);
            let base = hex(&input["base"]);
            run_eager(|| to_hex(r.alignment(base)))
        }
        "aligned_subrange" => {
            let r = range(&input["range"]);
            let alignment = hex(&input["alignment"]);
            run_eager(|| range_json(&r.aligned_subrange(alignment)))
        }
        "overlaps" => {
            let (a, b) = (range(&input["a"]), range(&input["b"]));
            run_eager(|| json!(a.overlaps(&b)))
        }
        "contains" => {
            let (a, b) = (range(&input["a"]), range(&input["b"]));
            run_eager(|| json!(a.contains(&b)))
        }
        "cmp" => {
            let (a, b) = (range(&input["a"]), range(&input["b"]));
            run_eager(|| json!(a.cmp(&b) as i8))
        }
        "intersection" => {
            let (a, b) = (range(&input["a"]), range(&input["b"]));
            run_eager(|| range_json(&a.intersection(&b)))
        }
        "contains_addr" => {
            let r = range(&input["range"]);
            let addr = hex(&input["addr"]);
            run_eager(|| json!(r.contains_addr(addr)))
        }
        "offset_of" => {
            let r = range(&input["range"]);
            let addr = hex(&input["addr"]);
            run_eager(|| r.offset_of(addr).map_or(Value::Null, to_hex))
        }
        "split_at_offset" => {
            let r = range(&input["range"]);
            let offset = hex(&input["offset"]);
            run_eager(|| {
                let (first, second) = r.split_at_offset(offset);
                json!([range_json(&first), range_json(&second)])
            })
        }
        other => panic!("unknown op {other}"),
    }
}

fn tagged(value: &Value) -> Vec<(MemoryRange, u64)> {
    value
        .as_array()
        .expect("tagged list")
        .iter()
        .map(|item| (range(&item["range"]), item["tag"].as_u64().expect("tag")))
        .collect()
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

fn algorithms_case(case: &Value) -> Value {
    let input = &case["input"];
    match case["op"].as_str().expect("op") {
        "overlapping_ranges" => {
            let (left, right) = (ranges(&input["left"]), ranges(&input["right"]));
            run_lazy(|| overlapping_ranges(left, right), range_item, None).0
        }
        "subtract_ranges" => {
            let (left, right) = (ranges(&input["left"]), ranges(&input["right"]));
            run_lazy(|| subtract_ranges(left, right), range_item, None).0
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
            run_lazy(
                || merge_adjacent_ranges(list),
                |(piece, tag)| json!({ "range": range_json(&piece), "tag": tag }),
                None,
            )
            .0
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
        other => panic!("unknown op {other}"),
    }
}

#[test]
fn memory_range_ops() {
    let file = load("memory_range_ops.json");
    let mut tally = Tally::new(&file);
    for case in &file.cases {
        let actual = range_ops_case(case);
        tally.check(case, &actual);
    }
    tally.finish();
}

#[test]
fn memory_range_algorithms() {
    let file = load("memory_range_algorithms.json");
    let mut tally = Tally::new(&file);
    for case in &file.cases {
        let actual = algorithms_case(case);
        tally.check(case, &actual);
    }
    tally.finish();
}
