//! `MemoryLayout.fromJSON`: the inverse of `MemoryLayout#toJSON`, strict.
//!
//! The JSON form has the layout's three defining parts, `ram` (ranges with their vnodes), `mmio`
//! (the gaps as given) and `vtl2Range` (or `null`), and the figures derived from them
//! (`ramSize`, `endOfRam`, …). u64 values are `'0x…'` hex strings, ranges `{start, end}`
//! objects of them. Reading it back rebuilds the layout from its defining parts with the
//! constructor that made it: `MemoryLayout::new` when there is a VTL2 range (only it takes one;
//! its RAM must then be what `new` lays out), `MemoryLayout::new_from_ranges` otherwise (which
//! gives the same layout for RAM that `new` laid out). Every figure present must equal what the
//! rebuilt layout reports. An unknown key, a missing part, a value of the wrong type or a figure
//! that does not match is an argument error that names the key, the value and what is accepted;
//! a layout the core refuses is its `MemoryLayoutError`.

use crate::errors::JsError;
use crate::errors::ToJsError;
use memory_range::MemoryRange;
use serde_json::Map;
use serde_json::Value;
use vm_topology::memory::MemoryLayout;
use vm_topology::memory::MemoryRangeWithNode;

/// The keys of the JSON form, in `toJSON`'s order.
pub const LAYOUT_KEYS: [&str; 10] = [
    "ram",
    "mmio",
    "vtl2Range",
    "ramSize",
    "endOfRam",
    "ramBelow4gb",
    "ramAbove4gb",
    "ramAboveHighMmio",
    "maxRamBelow4gb",
    "endOfRamOrMmio",
];

const WHO: &str = "MemoryLayout.fromJSON";

/// A short description of a JSON value for messages.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(flag) => flag.to_string(),
        Value::Number(number) => number.to_string(),
        Value::String(text) => format!("'{text}'"),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(object) => {
            // A bigint the TypeScript layer tagged on its way here.
            match object.get("$bigint").and_then(Value::as_str) {
                Some(hex) if object.len() == 1 => format!("the bigint {hex}"),
                _ => "an object".to_owned(),
            }
        }
    }
}

fn wrong_type(path: &str, expected: &str, value: &Value) -> JsError {
    JsError::arg_type(format!(
        "{WHO}: {path} must be {expected}, got {}",
        describe(value)
    ))
}

fn bad_value(message: String) -> JsError {
    JsError::arg_value(format!("{WHO}: {message}"))
}

/// Checks that `object` has only `accepted` keys.
fn only_keys(object: &Map<String, Value>, accepted: &[&str], path: &str) -> Result<(), JsError> {
    match object.keys().find(|key| !accepted.contains(&key.as_str())) {
        Some(key) => Err(bad_value(format!(
            "unknown key '{key}'{} (accepted: {})",
            if path.is_empty() {
                String::new()
            } else {
                format!(" in {path}")
            },
            accepted.join(", ")
        ))),
        None => Ok(()),
    }
}

/// A u64 written as `toJSON` writes it: `'0x'` and hex digits.
fn hex_u64(value: &Value, path: &str) -> Result<u64, JsError> {
    let text = value
        .as_str()
        .ok_or_else(|| wrong_type(path, "a '0x…' hex string", value))?;
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .filter(|digits| !digits.is_empty() && digits.chars().all(|c| c.is_ascii_hexdigit()))
        .ok_or_else(|| bad_value(format!("{path} must be a '0x…' hex string, got '{text}'")))?;
    u64::from_str_radix(digits, 16)
        .map_err(|_| bad_value(format!("{path} {text} does not fit in 64 bits")))
}

/// A range `{start, end}` of hex strings.
fn range(value: &Value, path: &str) -> Result<MemoryRange, JsError> {
    let object = value
        .as_object()
        .ok_or_else(|| wrong_type(path, "a {start, end} object", value))?;
    only_keys(object, &["start", "end"], path)?;
    let bound = |key: &str| -> Result<u64, JsError> {
        let value = object
            .get(key)
            .ok_or_else(|| bad_value(format!("{path} has no '{key}'")))?;
        hex_u64(value, &format!("{path}.{key}"))
    };
    let (start, end) = (bound("start")?, bound("end")?);
    MemoryRange::try_new(start..end)
        .map_err(|error| bad_value(format!("{path} is not a valid range: {error}")))
}

fn array<'a>(object: &'a Map<String, Value>, key: &str) -> Result<&'a Vec<Value>, JsError> {
    let value = object
        .get(key)
        .ok_or_else(|| bad_value(format!("the layout has no '{key}' (an array of ranges)")))?;
    value
        .as_array()
        .ok_or_else(|| wrong_type(key, "an array", value))
}

fn ram_entry(value: &Value, path: &str) -> Result<MemoryRangeWithNode, JsError> {
    let object = value
        .as_object()
        .ok_or_else(|| wrong_type(path, "a {range, vnode} object", value))?;
    only_keys(object, &["range", "vnode"], path)?;
    let range = range(
        object
            .get("range")
            .ok_or_else(|| bad_value(format!("{path} has no 'range'")))?,
        &format!("{path}.range"),
    )?;
    let vnode_value = object
        .get("vnode")
        .ok_or_else(|| bad_value(format!("{path} has no 'vnode'")))?;
    // An integer out of range (-1, 2^32) is a bad value; only a non-integer is the wrong type.
    let out_of_range = || {
        bad_value(format!(
            "{path}.vnode must be between 0 and 2^32-1, got {vnode_value}"
        ))
    };
    let vnode = match (vnode_value.as_u64(), vnode_value.as_f64()) {
        (Some(vnode), _) => u32::try_from(vnode).map_err(|_| out_of_range())?,
        (None, Some(number)) if number.fract() == 0.0 => return Err(out_of_range()),
        _ => {
            return Err(wrong_type(
                &format!("{path}.vnode"),
                "an integer",
                vnode_value,
            ))
        }
    };
    Ok(MemoryRangeWithNode { range, vnode })
}

/// A figure of the JSON form: absent (not checked), `null` or a hex string.
fn figure(object: &Map<String, Value>, key: &str) -> Result<Option<Option<u64>>, JsError> {
    match object.get(key) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(value) => hex_u64(value, key).map(|value| Some(Some(value))),
    }
}

fn hex_or_null(value: Option<u64>) -> String {
    value.map_or_else(|| "null".to_owned(), |value| format!("{value:#x}"))
}

/// Rebuilds the layout the JSON text describes (see the module comment).
pub fn layout_from_json(text: &str) -> Result<MemoryLayout, JsError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|error| bad_value(format!("the layout is not JSON: {error}")))?;
    let object = value
        .as_object()
        .ok_or_else(|| wrong_type("the layout", "an object", &value))?;
    only_keys(object, &LAYOUT_KEYS, "")?;
    let ram = array(object, "ram")?
        .iter()
        .enumerate()
        .map(|(index, entry)| ram_entry(entry, &format!("ram[{index}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let mmio = array(object, "mmio")?
        .iter()
        .enumerate()
        .map(|(index, gap)| range(gap, &format!("mmio[{index}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let vtl2 = match object.get("vtl2Range") {
        None | Some(Value::Null) => None,
        Some(value) => Some(range(value, "vtl2Range")?),
    };
    let layout = match vtl2 {
        None => MemoryLayout::new_from_ranges_explained(&ram, &mmio)
            .map_err(|problem| problem.to_js_error())?,
        Some(vtl2) => {
            let size = ram
                .iter()
                .try_fold(0u64, |sum, entry| sum.checked_add(entry.range.len()))
                .ok_or_else(|| bad_value("the RAM ranges add up to more than 2^64".to_owned()))?;
            let layout =
                MemoryLayout::new(size, &mmio, Some(vtl2)).map_err(|error| error.to_js_error())?;
            if layout.ram() != ram.as_slice() {
                return Err(bad_value(format!(
                    "a layout with a VTL2 range is made by MemoryLayout.new, whose RAM starts at 0 \
                     and fills the space around the gaps with vnode 0 ({}), but ram is {}",
                    ranges_text(layout.ram()),
                    ranges_text(&ram)
                )));
            }
            layout
        }
    };
    let figures: [(&str, Option<u64>); 7] = [
        ("ramSize", Some(layout.ram_size())),
        ("endOfRam", Some(layout.end_of_ram())),
        ("ramBelow4gb", Some(layout.ram_below_4gb())),
        ("ramAbove4gb", Some(layout.ram_above_4gb())),
        ("ramAboveHighMmio", layout.ram_above_high_mmio()),
        ("maxRamBelow4gb", layout.max_ram_below_4gb()),
        ("endOfRamOrMmio", layout.end_of_ram_or_mmio_checked()),
    ];
    for (key, actual) in figures {
        if let Some(given) = figure(object, key)? {
            if given != actual {
                return Err(bad_value(format!(
                    "{key} is {} but the ranges give {} (leave it out, or correct it)",
                    hex_or_null(given),
                    hex_or_null(actual)
                )));
            }
        }
    }
    Ok(layout)
}

fn ranges_text(ram: &[MemoryRangeWithNode]) -> String {
    let items: Vec<String> = ram
        .iter()
        .map(|entry| format!("{} vnode {}", entry.range, entry.vnode))
        .collect();
    format!("[{}]", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::ErrorClass;
    use crate::errors::ErrorCode;
    use crate::json::to_json;
    use crate::views::LayoutView;

    /// The JSON form the TypeScript `toJSON` writes (the view with `'0x…'` strings).
    fn to_json_form(layout: &MemoryLayout) -> String {
        let tagged: Value = serde_json::from_str(&to_json(&LayoutView::from(layout))).unwrap();
        fn untag(value: Value) -> Value {
            match value {
                Value::Object(object) if object.len() == 1 && object.contains_key("$bigint") => {
                    object["$bigint"].clone()
                }
                Value::Object(object) if object.len() == 1 && object.contains_key("$range") => {
                    let bounds = object["$range"].as_array().unwrap();
                    serde_json::json!({ "start": bounds[0], "end": bounds[1] })
                }
                Value::Object(object) => {
                    Value::Object(object.into_iter().map(|(k, v)| (k, untag(v))).collect())
                }
                Value::Array(items) => Value::Array(items.into_iter().map(untag).collect()),
                other => other,
            }
        }
        untag(tagged).to_string()
    }

    fn gib(n: u64) -> u64 {
        n << 30
    }

    fn same(a: &MemoryLayout, b: &MemoryLayout) -> bool {
        a.ram() == b.ram() && a.mmio() == b.mmio() && a.vtl2_range() == b.vtl2_range()
    }

    #[test]
    fn layouts_read_back_from_their_json_form() {
        let layouts = [
            MemoryLayout::new(
                gib(4),
                &[MemoryRange::new(gib(3)..gib(4))],
                Some(MemoryRange::new(gib(8)..gib(8) + (64 << 20))),
            )
            .unwrap(),
            MemoryLayout::new(gib(1), &[], None).unwrap(),
            MemoryLayout::new(
                gib(6),
                &[
                    MemoryRange::new(gib(1)..gib(2)),
                    MemoryRange::new(gib(3)..gib(4)),
                ],
                None,
            )
            .unwrap(),
            MemoryLayout::new_from_ranges(
                &[
                    MemoryRangeWithNode {
                        range: MemoryRange::new(0x1000..gib(2)),
                        vnode: 0,
                    },
                    MemoryRangeWithNode {
                        range: MemoryRange::new(gib(2)..gib(6)),
                        vnode: 3,
                    },
                ],
                &[MemoryRange::new(gib(7)..gib(8))],
            )
            .unwrap(),
        ];
        for layout in &layouts {
            let text = to_json_form(layout);
            let back = layout_from_json(&text).unwrap_or_else(|error| panic!("{text}: {error:?}"));
            assert!(same(layout, &back), "{text}");
            assert_eq!(to_json_form(&back), text);
        }
    }

    fn error_of(text: &str) -> JsError {
        layout_from_json(text).expect_err(text)
    }

    #[test]
    fn unknown_keys_name_the_key_and_the_accepted_ones() {
        let error = error_of(r#"{"ram": [], "mmio": [], "gaps": []}"#);
        assert_eq!(
            error.kind(),
            (ErrorClass::RangeError, Some(ErrorCode::InvalidArgValue))
        );
        assert!(
            error.message.contains("unknown key 'gaps'"),
            "{}",
            error.message
        );
        assert!(
            error
                .message
                .contains("accepted: ram, mmio, vtl2Range, ramSize"),
            "{}",
            error.message
        );
        let nested = error_of(
            r#"{"ram": [{"range": {"start": "0x0", "end": "0x1000", "len": "0x1000"}, "vnode": 0}], "mmio": []}"#,
        );
        assert!(
            nested.message.contains("unknown key 'len' in ram[0].range"),
            "{}",
            nested.message
        );
    }

    #[test]
    fn bad_values_are_coded_errors_that_name_the_path_and_value() {
        let cases = [
            (
                r#"[]"#,
                ErrorClass::TypeError,
                "the layout must be an object",
            ),
            (r#"{"mmio": []}"#, ErrorClass::RangeError, "has no 'ram'"),
            (
                r#"{"ram": [{"range": {"start": 0, "end": "0x1000"}, "vnode": 0}], "mmio": []}"#,
                ErrorClass::TypeError,
                "ram[0].range.start must be a '0x…' hex string, got 0",
            ),
            (
                r#"{"ram": [{"range": {"start": "4096", "end": "0x2000"}, "vnode": 0}], "mmio": []}"#,
                ErrorClass::RangeError,
                "ram[0].range.start must be a '0x…' hex string, got '4096'",
            ),
            (
                r#"{"ram": [{"range": {"start": "0x0", "end": "0x10000000000000000"}, "vnode": 0}], "mmio": []}"#,
                ErrorClass::RangeError,
                "does not fit in 64 bits",
            ),
            (
                r#"{"ram": [{"range": {"start": "0x0", "end": "0x1800"}, "vnode": 0}], "mmio": []}"#,
                ErrorClass::RangeError,
                "ram[0].range is not a valid range",
            ),
            (
                r#"{"ram": [{"range": {"start": "0x0", "end": "0x1000"}, "vnode": -1}], "mmio": []}"#,
                ErrorClass::RangeError,
                "ram[0].vnode must be between 0 and 2^32-1, got -1",
            ),
            (
                r#"{"ram": [{"range": {"start": "0x0", "end": "0x1000"}, "vnode": 4294967296}], "mmio": []}"#,
                ErrorClass::RangeError,
                "ram[0].vnode must be between 0 and 2^32-1, got 4294967296",
            ),
            (
                r#"{"ram": [{"range": {"start": "0x0", "end": "0x1000"}, "vnode": 1.5}], "mmio": []}"#,
                ErrorClass::TypeError,
                "ram[0].vnode must be an integer, got 1.5",
            ),
            (
                r#"{"ram": [{"range": {"start": "0x0", "end": "0x1000"}, "vnode": "0"}], "mmio": []}"#,
                ErrorClass::TypeError,
                "ram[0].vnode must be an integer, got '0'",
            ),
            (
                r#"{"ram": [{"range": {"start": "0x0", "end": "0x1000"}}], "mmio": []}"#,
                ErrorClass::RangeError,
                "ram[0] has no 'vnode'",
            ),
            (
                r#"{"ram": [{"range": {"start": "0x0", "end": "0x1000"}, "vnode": 0}], "mmio": [], "ramSize": "0x2000"}"#,
                ErrorClass::RangeError,
                "ramSize is 0x2000 but the ranges give 0x1000",
            ),
            (
                r#"{"ram": [{"range": {"start": "0x0", "end": "0x1000"}, "vnode": 0}], "mmio": [], "endOfRamOrMmio": "0x1000"}"#,
                ErrorClass::RangeError,
                "endOfRamOrMmio is 0x1000 but the ranges give null",
            ),
            (
                r#"{"ram": [{"range": {"start": "0x1000", "end": "0x2000"}, "vnode": 0}], "mmio": [], "vtl2Range": {"start": "0x10000", "end": "0x20000"}}"#,
                ErrorClass::RangeError,
                "made by MemoryLayout.new",
            ),
            (
                r#"{"ram": [{"range": {"start": "0x0", "end": "0x1000"}, "vnode": 0}], "mmio": [], "ramSize": {"$bigint": "0x1000"}}"#,
                ErrorClass::TypeError,
                "ramSize must be a '0x…' hex string, got the bigint 0x1000",
            ),
        ];
        for (text, class, needle) in cases {
            let error = error_of(text);
            assert_eq!(error.kind().0, class, "{text}: {}", error.message);
            assert!(
                error.message.starts_with("MemoryLayout.fromJSON: "),
                "{}",
                error.message
            );
            assert!(error.message.contains(needle), "{text}: {}", error.message);
        }
    }

    #[test]
    fn a_layout_the_core_refuses_keeps_its_layout_error() {
        let error = error_of(
            r#"{"ram": [{"range": {"start": "0x0", "end": "0x2000"}, "vnode": 0}], "mmio": [{"start": "0x1000", "end": "0x3000"}]}"#,
        );
        assert_eq!(
            error.kind(),
            (
                ErrorClass::MemoryLayoutError,
                Some(ErrorCode::BadMemoryRanges)
            )
        );
    }
}
