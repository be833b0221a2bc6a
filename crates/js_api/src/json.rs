//! Structured values on their way to JavaScript: JSON written by serde, in which a u64 and a
//! memory range say what they are.
//!
//! JSON numbers lose precision above 2^53, and the API returns every address and size as a
//! `bigint`. So a [`BigInt`] serializes as `{"$bigint":"0x…"}` and a [`Range`] as
//! `{"$range":["0x…","0x…"]}`; the TypeScript layer's reviver (`ts/native_json.ts`) turns
//! exactly these two shapes into a `bigint` and a `MemoryRange` and leaves everything else as
//! it is. Counts, ids and indexes stay JSON numbers. Nothing is guessed from the look of a
//! string.

use memory_range::MemoryRange;
use serde::ser::SerializeMap;
use serde::Serialize;
use serde::Serializer;

/// A u64 that reaches JavaScript as a `bigint`.
#[derive(Debug, Copy, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BigInt(pub u64);

impl Serialize for BigInt {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry("$bigint", &format!("{:#x}", self.0))?;
        map.end()
    }
}

impl From<u64> for BigInt {
    fn from(value: u64) -> Self {
        BigInt(value)
    }
}

/// A memory range that reaches JavaScript as a `MemoryRange`.
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub struct Range(pub MemoryRange);

impl Serialize for Range {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let bounds = [
            format!("{:#x}", self.0.start()),
            format!("{:#x}", self.0.end()),
        ];
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry("$range", &bounds)?;
        map.end()
    }
}

impl From<MemoryRange> for Range {
    fn from(range: MemoryRange) -> Self {
        Range(range)
    }
}

/// The JSON text of `value`.
///
/// The views of this crate serialize infallibly (structs, sequences, strings, numbers and
/// string-keyed maps only), so this never fails for them.
pub fn to_json<T: Serialize + ?Sized>(value: &T) -> String {
    match serde_json::to_string(value) {
        Ok(text) => text,
        // Unreachable for this crate's types; keep the failure visible rather than panicking.
        Err(error) => format!("{{\"$error\":{:?}}}", error.to_string()),
    }
}

/// The JSON of a list of core values, each through its view `V`.
pub fn list_json<'a, T: 'a, V: Serialize + From<&'a T>>(items: &'a [T]) -> String {
    to_json(&items.iter().map(V::from).collect::<Vec<_>>())
}

/// A core future whose value crosses as the JSON its view makes of it, and whose error as the
/// table's row.
pub async fn json_result<T, E: crate::ToJsError>(
    future: impl std::future::Future<Output = Result<T, E>>,
    view: impl FnOnce(&T) -> String,
) -> Result<String, crate::JsError> {
    let value = future.await.map_err(|error| error.to_js_error())?;
    Ok(view(&value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_results_cross_through_their_views() {
        struct Core(u64);
        #[derive(Serialize)]
        struct View {
            at: BigInt,
        }
        impl From<&Core> for View {
            fn from(core: &Core) -> Self {
                View { at: BigInt(core.0) }
            }
        }
        assert_eq!(
            list_json::<Core, View>(&[Core(1), Core(2)]),
            r#"[{"at":{"$bigint":"0x1"}},{"at":{"$bigint":"0x2"}}]"#
        );
        let ok = futures::executor::block_on(json_result(
            async { Ok::<_, crate::JsError>(7u32) },
            to_json,
        ));
        assert_eq!(ok.unwrap(), "7");
        let failed = futures::executor::block_on(json_result(
            async { Err::<u32, _>(crate::JsError::closed("Vcpu")) },
            |_| unreachable!("no view of a failure"),
        ));
        assert_eq!(failed.unwrap_err().message, "Vcpu is closed");
    }

    #[test]
    fn bigints_and_ranges_are_tagged_and_lossless() {
        assert_eq!(
            to_json(&BigInt(u64::MAX)),
            r#"{"$bigint":"0xffffffffffffffff"}"#
        );
        assert_eq!(to_json(&BigInt(0)), r#"{"$bigint":"0x0"}"#);
        assert_eq!(
            to_json(&Range(MemoryRange::new(0x1000..0xa0000))),
            r#"{"$range":["0x1000","0xa0000"]}"#
        );
        #[derive(Serialize)]
        struct Mixed {
            count: u32,
            size: BigInt,
            name: &'static str,
        }
        let text = to_json(&Mixed {
            count: 3,
            size: BigInt(1 << 60),
            name: "0x10",
        });
        assert_eq!(
            text, r#"{"count":3,"size":{"$bigint":"0x1000000000000000"},"name":"0x10"}"#,
            "counts stay numbers and strings that look like hex stay strings"
        );
    }
}
