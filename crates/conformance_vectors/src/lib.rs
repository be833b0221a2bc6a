//! Test support for the conformance vectors recorded by running the original code.
//!
//! The vectors live in the repository's `conformance/` folder (see its README for their
//! provenance); `MEMBACKING_CONFORMANCE_DIR` points the tests at another set. Every crate's conformance test uses this crate to find and parse them, to turn the hex
//! strings into numbers and ranges, to run a case while catching a panic, and to print how many
//! cases of a file passed. A missing folder is a test failure, not a skip.
#![forbid(unsafe_code)]

use memory_range::MemoryRange;
use serde_json::Value;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Once;
use vm_topology::memory::{Error as LayoutError, MemoryLayout, MemoryRangeWithNode};

/// The folder holding the vectors: `<repository root>/conformance`.
///
/// Resolved from this crate's manifest directory, not the working directory (cargo runs a
/// crate's tests in that crate's folder). `MEMBACKING_CONFORMANCE_DIR` overrides it.
pub fn conformance_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MEMBACKING_CONFORMANCE_DIR") {
        return PathBuf::from(dir);
    }
    let repo_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    repo_root.join("conformance")
}

/// A parsed vector file: its header fields and its cases.
pub struct VectorFile {
    /// File name, e.g. `memory_layout.json`.
    pub name: String,
    /// The header object (everything but `cases`).
    pub header: Value,
    /// Every case, in file order.
    pub cases: Vec<Value>,
}

/// Loads one vector file; panics with a clear message if the folder or file is missing.
pub fn load(file_name: &str) -> VectorFile {
    let path = conformance_dir().join(file_name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| {
        panic!(
            "conformance vectors are required: cannot read {}: {err} \
             (the repository's conformance/ folder, or MEMBACKING_CONFORMANCE_DIR)",
            path.display()
        )
    });
    let mut value: Value = serde_json::from_str(&text)
        .unwrap_or_else(|err| panic!("{} is not valid JSON: {err}", path.display()));
    let cases = match value.get_mut("cases").map(Value::take) {
        Some(Value::Array(cases)) => cases,
        _ => panic!("{} has no `cases` array", path.display()),
    };
    let declared = value["case_count"].as_u64();
    assert_eq!(
        declared,
        Some(cases.len() as u64),
        "{}: case_count does not match the number of cases",
        file_name
    );
    VectorFile {
        name: file_name.to_owned(),
        header: value,
        cases,
    }
}

/// Parses a `"0x…"` u64 string.
pub fn hex(value: &Value) -> u64 {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("expected a hex string, found {value}"));
    let digits = text
        .strip_prefix("0x")
        .unwrap_or_else(|| panic!("hex string without 0x prefix: {text}"));
    u64::from_str_radix(digits, 16).unwrap_or_else(|err| panic!("bad hex {text}: {err}"))
}

/// Formats a u64 the way the vectors do: lower-case hex, `0x` prefix, no padding.
pub fn to_hex(value: u64) -> Value {
    Value::String(format!("{value:#x}"))
}

/// Parses a `{start, end}` object as raw bounds (no validation).
pub fn raw_range(value: &Value) -> (u64, u64) {
    (hex(&value["start"]), hex(&value["end"]))
}

/// Parses a `{start, end}` object that the vectors guarantee is a valid range.
pub fn range(value: &Value) -> MemoryRange {
    let (start, end) = raw_range(value);
    MemoryRange::new(start..end)
}

/// Formats a range as `{start, end}`.
pub fn range_json(range: &MemoryRange) -> Value {
    serde_json::json!({ "start": to_hex(range.start()), "end": to_hex(range.end()) })
}

/// Parses a list of `{start, end}` objects that are valid ranges.
pub fn ranges(value: &Value) -> Vec<MemoryRange> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("expected an array of ranges, found {value}"))
        .iter()
        .map(range)
        .collect()
}

/// Builds a layout from a constructor object in the vectors' `memory_layout` input format
/// (`{"ctor": "new", …}` or `{"ctor": "new_from_ranges", …}`).
pub fn build_layout(input: &Value) -> Result<MemoryLayout, LayoutError> {
    let gaps = ranges(&input["gaps"]);
    match input["ctor"].as_str() {
        Some("new") => {
            let vtl2_range = (!input["vtl2_range"].is_null()).then(|| range(&input["vtl2_range"]));
            MemoryLayout::new(hex(&input["ram_size"]), &gaps, vtl2_range)
        }
        Some("new_from_ranges") => {
            let memory: Vec<MemoryRangeWithNode> = input["memory"]
                .as_array()
                .unwrap_or_else(|| panic!("new_from_ranges input without a memory list: {input}"))
                .iter()
                .map(|entry| MemoryRangeWithNode {
                    range: range(&entry["range"]),
                    vnode: entry["vnode"]
                        .as_u64()
                        .and_then(|vnode| u32::try_from(vnode).ok())
                        .unwrap_or_else(|| panic!("bad vnode in {entry}")),
                })
                .collect();
            MemoryLayout::new_from_ranges(&memory, &gaps)
        }
        other => panic!("unknown layout constructor {other:?}"),
    }
}

fn silence_expected_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !EXPECTING_PANIC.with(|flag| flag.get()) {
                default_hook(info);
            }
        }));
    });
}

thread_local! {
    static EXPECTING_PANIC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic into `Err(message)` without printing it.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    silence_expected_panics();
    EXPECTING_PANIC.with(|flag| flag.set(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    EXPECTING_PANIC.with(|flag| flag.set(false));
    result.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".to_owned())
    })
}

/// The outcome object of a call, in the vectors' shape.
pub fn outcome(result: Result<Value, String>) -> Value {
    match result {
        Ok(value) => value,
        Err(message) => serde_json::json!({ "panic": true, "panic_message": message }),
    }
}

/// Removes every `panic_message` (informational only) so outcomes can be compared deeply.
pub fn strip_panic_messages(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(key, _)| key.as_str() != "panic_message")
                .map(|(key, value)| (key.clone(), strip_panic_messages(value)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(strip_panic_messages).collect()),
        other => other.clone(),
    }
}

/// The outcome a case must be compared against: `expected_project` where this project
/// documents a deliberate deviation, else `expected` (overflow checks on).
pub fn expected(case: &Value) -> &Value {
    case.get("expected_project").unwrap_or(&case["expected"])
}

/// Counts passing cases of one file and reports failures.
pub struct Tally {
    file: String,
    total: usize,
    passed: usize,
    failures: Vec<String>,
}

impl Tally {
    /// Starts counting for `file`.
    pub fn new(file: &VectorFile) -> Self {
        Tally {
            file: file.name.clone(),
            total: 0,
            passed: 0,
            failures: Vec::new(),
        }
    }

    /// Records one case: passes when `actual` equals `expected` (ignoring panic messages).
    pub fn check(&mut self, case: &Value, actual: &Value) {
        self.total += 1;
        let want = strip_panic_messages(expected(case));
        let got = strip_panic_messages(actual);
        if want == got {
            self.passed += 1;
        } else if self.failures.len() < 10 {
            self.failures.push(format!(
                "case {} ({}): input {}\n  expected {}\n  actual   {}",
                case["id"], case["category"], case["input"], want, got
            ));
        }
    }

    /// Prints `file: N cases, M passed` and panics if any case failed.
    pub fn finish(self) {
        println!(
            "conformance {}: {} cases, {} passed",
            self.file, self.total, self.passed
        );
        assert!(self.total > 0, "{}: no case was checked", self.file);
        assert!(
            self.failures.is_empty(),
            "{}: {} of {} cases failed; first failures:\n{}",
            self.file,
            self.total - self.passed,
            self.total,
            self.failures.join("\n")
        );
    }
}
