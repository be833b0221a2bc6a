//! Conformance vector generator: runs the original OpenVMM code (laid out beside this program by
//! `scripts/conformance-upstream.js`) and writes vector files in the formats of the repository's
//! `conformance/` folder, or replays existing files' inputs through the original.
//!
//! ```text
//! generate --out DIR [--seed N] [--scale F] [--commit AREA=SHA]...
//! evaluate --in FILE --out FILE        (each case's outcome, one JSON object per line)
//! replay --vectors DIR --report FILE   (compare each case's recorded outcome with the original's)
//! ```
//!
//! `generate` writes the areas this build has (cargo features `layout`, `registrar`, `x86`;
//! `memory_range` areas are always there). Cases are edge cases followed by a random stream
//! drawn from SplitMix64 seeded with `--seed`: the same seed and the same original code give
//! the same files byte for byte.

mod harness;
#[cfg(feature = "layout")]
mod layout;
mod ranges;

use harness::{strip_panic_messages, Rng};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The default seed (the value the committed vector files name in their header).
const DEFAULT_SEED: u64 = 0x5eed_0001;

/// One vector case before its outcome is known.
pub struct Case {
    pub op: &'static str,
    pub category: String,
    pub input: Value,
}

impl Case {
    pub fn new(op: &'static str, category: &str, input: Value) -> Self {
        Self { op, category: category.to_owned(), input }
    }
}

/// The areas this build can run, with their file names and upstream files.
fn areas() -> Vec<(&'static str, &'static [&'static str])> {
    let mut areas: Vec<(&'static str, &'static [&'static str])> = vec![
        ("memory_range_ops", &["memory_range"]),
        ("memory_range_algorithms", &["memory_range"]),
    ];
    if cfg!(feature = "layout") {
        areas.push(("memory_layout", &["vm_topology", "memory_range"]));
    }
    if cfg!(feature = "registrar") {
        areas.push(("registrar", &["registrar", "vm_topology", "memory_range"]));
    }
    if cfg!(feature = "x86") {
        areas.push(("x86_legacy_ram_split", &["x86_legacy_ram_split", "vm_topology", "memory_range"]));
    }
    areas
}

/// The original's outcome for one case of `area`. `recorded` is the recorded outcome, when
/// replaying (memory layouts probe the addresses it lists).
fn evaluate(area: &str, op: &str, input: &Value, recorded: Option<&Value>) -> Value {
    let _ = recorded;
    match area {
        "memory_range_ops" => ranges::run_op(op, input),
        "memory_range_algorithms" => ranges::run_algorithm(op, input),
        #[cfg(feature = "layout")]
        "memory_layout" => {
            let probes = recorded.and_then(|value| value["ok"]["probes"].as_array()).map(|probes| {
                probes.iter().map(|probe| harness::hex(&probe["address"])).collect()
            });
            layout::run_layout(input, probes)
        }
        #[cfg(feature = "registrar")]
        "registrar" => layout::run_registrar(input),
        #[cfg(feature = "x86")]
        "x86_legacy_ram_split" => layout::run_x86(input),
        other => panic!("area {other} is not in this build"),
    }
}

fn cases(area: &str, rng: &mut Rng, scale: f64) -> Vec<Case> {
    let n = |count: f64| (count * scale) as usize;
    match area {
        "memory_range_ops" => ranges::op_cases(rng, n(1200.0)),
        "memory_range_algorithms" => ranges::algorithm_cases(rng, n(1500.0)),
        #[cfg(feature = "layout")]
        "memory_layout" => layout::layout_cases(rng, n(1500.0)),
        #[cfg(feature = "registrar")]
        "registrar" => layout::registrar_cases(rng, n(700.0)),
        #[cfg(feature = "x86")]
        "x86_legacy_ram_split" => layout::x86_cases(rng, n(600.0)),
        other => panic!("area {other} is not in this build"),
    }
}

fn write_file(path: &Path, header: &[(&str, Value)], cases: &[Value]) {
    let mut text = String::from("{\n");
    for (key, value) in header {
        text.push_str(&format!("{}: {},\n", json!(key), value));
    }
    text.push_str("\"cases\": [\n");
    for (index, case) in cases.iter().enumerate() {
        text.push_str(&case.to_string());
        text.push_str(if index + 1 < cases.len() { ",\n" } else { "\n" });
    }
    text.push_str("]\n}\n");
    std::fs::write(path, text).unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
}

fn generate(out: &Path, seed: u64, scale: f64, commits: &BTreeMap<String, String>) {
    std::fs::create_dir_all(out).expect("create the output folder");
    let upstream_path = |name: &str| match name {
        "memory_range" => "vm/vmcore/memory_range/src/lib.rs",
        "vm_topology" => "vm/vmcore/vm_topology/src/memory.rs",
        "registrar" => "openhcl/underhill_mem/src/registrar.rs",
        _ => "openvmm/membacking/src/memory_manager/mod.rs",
    };
    for (area, files) in areas() {
        // Each area draws from its own stream, so adding cases to one leaves the others alone.
        let mut rng = Rng::new(seed ^ area.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b.into())));
        let mut written = Vec::new();
        for (id, case) in cases(area, &mut rng, scale).into_iter().enumerate() {
            let expected = evaluate(area, case.op, &case.input, None);
            let mut value = json!({ "id": id, "op": case.op, "category": case.category, "input": case.input, "expected": expected });
            #[cfg(feature = "x86")]
            if area == "x86_legacy_ram_split" {
                if let Some(project) = layout::x86_project_outcome(&value["expected"]) {
                    value["expected_project"] = project;
                    value["deviation"] = json!("D1: the project omits the empty region that the original creates when the first RAM range ends exactly at 1 MiB (docs/deviations.md)");
                }
            }
            written.push(value);
        }
        let files: Vec<Value> = files
            .iter()
            .map(|name| json!({ "path": upstream_path(name), "commit": commits.get(*name).cloned().unwrap_or_default() }))
            .collect();
        let header = [
            ("format", json!("openvmm-conformance-vectors/1")),
            ("area", json!(area)),
            ("set", json!("generated")),
            ("prng_seed", json!(format!("{seed:#x}"))),
            ("upstream", json!({ "repository": "microsoft/openvmm", "files": files })),
            ("expected_semantics", json!("expected = behaviour of the original code built with overflow checks ON (cargo dev profile); expected_release = behaviour of the same code built with overflow checks OFF where that differs")),
            ("case_count", json!(written.len())),
        ];
        write_file(&out.join(format!("{area}.json")), &header, &written);
        eprintln!("{area}: {} cases", written.len());
    }
}

fn load_cases(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    let mut value: Value = serde_json::from_str(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    match value.get_mut("cases").map(Value::take) {
        Some(Value::Array(cases)) => cases,
        _ => panic!("{} has no cases", path.display()),
    }
}

fn area_of(path: &Path) -> String {
    path.file_stem().and_then(|stem| stem.to_str()).expect("file name").to_owned()
}

/// Writes each case's outcome (this build's overflow semantics), one `{id, expected}` per line.
fn evaluate_file(input: &Path, out: &Path) {
    let area = area_of(input);
    let mut text = String::new();
    for case in load_cases(input) {
        let op = case["op"].as_str().expect("op");
        let expected = evaluate(&area, op, &case["input"], Some(&case["expected"]));
        text.push_str(&json!({ "id": case["id"], "expected": expected }).to_string());
        text.push('\n');
    }
    std::fs::write(out, text).expect("write the outcomes");
}

/// Re-runs every case of the vector files in `dir` through the original and compares outcomes.
fn replay(dir: &Path, report: &Path) {
    let mut areas_report = Vec::new();
    for (area, _) in areas() {
        let path = dir.join(format!("{area}.json"));
        if !path.exists() {
            continue;
        }
        let cases = load_cases(&path);
        let mut matched = 0usize;
        let mut differences = Vec::new();
        for case in &cases {
            let op = case["op"].as_str().expect("op");
            let actual = evaluate(area, op, &case["input"], Some(&case["expected"]));
            if strip_panic_messages(&actual) == strip_panic_messages(&case["expected"]) {
                matched += 1;
            } else if differences.len() < 20 {
                differences.push(json!({ "id": case["id"], "op": op, "input": case["input"], "recorded": case["expected"], "original": actual }));
            }
        }
        eprintln!("replay {area}: {} cases, {matched} outcomes reproduced", cases.len());
        areas_report.push(json!({ "area": area, "cases": cases.len(), "matched": matched, "differences": differences }));
    }
    std::fs::write(report, serde_json::to_string_pretty(&areas_report).expect("json") + "\n").expect("write the report");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| args.iter().position(|arg| arg == name).and_then(|i| args.get(i + 1)).cloned();
    let path = |name: &str| value(name).map(PathBuf::from).unwrap_or_else(|| panic!("{name} is required"));
    match args.first().map(String::as_str) {
        Some("generate") => {
            let seed = value("--seed").map_or(DEFAULT_SEED, |text| {
                let parsed = match text.strip_prefix("0x") {
                    Some(digits) => u64::from_str_radix(digits, 16),
                    None => text.parse(),
                };
                parsed.unwrap_or_else(|err| panic!("--seed {text}: {err}"))
            });
            let scale = value("--scale").map_or(1.0, |text| text.parse().expect("--scale is a number"));
            let commits = args
                .windows(2)
                .filter(|pair| pair[0] == "--commit")
                .filter_map(|pair| pair[1].split_once('=').map(|(area, sha)| (area.to_owned(), sha.to_owned())))
                .collect();
            generate(&path("--out"), seed, scale, &commits);
        }
        Some("evaluate") => evaluate_file(&path("--in"), &path("--out")),
        Some("replay") => replay(&path("--vectors"), &path("--report")),
        Some("areas") => {
            for (area, _) in areas() {
                println!("{area}");
            }
        }
        _ => {
            eprintln!("usage: generate --out DIR [--seed N] [--scale F] [--commit AREA=SHA]... | evaluate --in FILE --out FILE | replay --vectors DIR --report FILE | areas");
            std::process::exit(2);
        }
    }
}
