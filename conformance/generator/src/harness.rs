//! JSON helpers shared by the areas: the vectors' hex and range formats, running a call while
//! catching its panic, outcome objects, and a small seeded random number generator.

use memory_range::MemoryRange;
use serde_json::{json, Value};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

/// Parses a `"0x…"` u64 string.
pub fn hex(value: &Value) -> u64 {
    let text = value.as_str().unwrap_or_else(|| panic!("expected a hex string, found {value}"));
    let digits = text.strip_prefix("0x").unwrap_or_else(|| panic!("no 0x prefix: {text}"));
    u64::from_str_radix(digits, 16).unwrap_or_else(|err| panic!("bad hex {text}: {err}"))
}

/// A u64 as the vectors write it: lower-case hex, `0x` prefix, no padding.
pub fn to_hex(value: u64) -> Value {
    Value::String(format!("{value:#x}"))
}

/// `{start, end}` as raw bounds.
pub fn raw_range(value: &Value) -> (u64, u64) {
    (hex(&value["start"]), hex(&value["end"]))
}

/// `{start, end}` of raw bounds.
pub fn raw_range_json(start: u64, end: u64) -> Value {
    json!({ "start": to_hex(start), "end": to_hex(end) })
}

/// A valid range from `{start, end}`.
pub fn range(value: &Value) -> MemoryRange {
    let (start, end) = raw_range(value);
    MemoryRange::new(start..end)
}

pub fn range_json(range: &MemoryRange) -> Value {
    raw_range_json(range.start(), range.end())
}

pub fn ranges(value: &Value) -> Vec<MemoryRange> {
    value.as_array().expect("an array of ranges").iter().map(range).collect()
}

thread_local! {
    static EXPECTING_PANIC: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, turning a panic into `Err(message)` without printing it.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !EXPECTING_PANIC.with(Cell::get) {
                default_hook(info);
            }
        }));
    });
    EXPECTING_PANIC.with(|flag| flag.set(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    EXPECTING_PANIC.with(|flag| flag.set(false));
    result.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|text| (*text).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".to_owned())
    })
}

/// The outcome object of a call.
pub fn outcome(result: Result<Value, String>) -> Value {
    match result {
        Ok(value) => value,
        Err(message) => json!({ "panic": true, "panic_message": message }),
    }
}

/// `{"ok": value}` or the panic outcome.
pub fn run_eager(f: impl FnOnce() -> Value) -> Value {
    outcome(catch(f).map(|value| json!({ "ok": value })))
}

/// Drains a lazy iterator one `next()` at a time (each under `catch`), stopping after `limit`
/// items. Returns the outcome and whether the limit stopped it.
pub fn run_lazy<I: Iterator>(
    make: impl FnOnce() -> I,
    item_json: impl Fn(I::Item) -> Value,
    limit: Option<usize>,
) -> (Value, bool) {
    let mut iter = match catch(make) {
        Ok(iter) => iter,
        Err(message) => {
            return (json!({ "panic": true, "panic_message": message, "items_before_panic": [] }), false)
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

/// Removes every `panic_message` (informational) so outcomes compare deeply.
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

/// SplitMix64: small, seedable, and the same stream on every platform.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// A u64 drawn from a mix that favours the interesting places: small page multiples, the
    /// boundaries of 2 MiB / 1 GiB / 4 GiB, the top of the address space, and raw values.
    pub fn address(&mut self) -> u64 {
        const TOP: u64 = MemoryRange::MAX_ADDRESS;
        match self.below(8) {
            0 => self.below(64) * 0x1000,
            1 => self.below(16) * 0x20_0000 + self.pick(&[0, 0x1000, 0x1f_f000]),
            2 => self.below(8) * 0x4000_0000 + self.pick(&[0, 0x1000, 0x20_0000, 0x3fff_f000]),
            3 => TOP - self.below(16) * 0x1000,
            4 => 0u64.wrapping_sub(self.pick(&[0x20_0000, 0x4000_0000, 0x1_0000_0000])) + self.below(4) * 0x1000,
            5 => self.next_u64() & !0xfff,
            6 => self.next_u64(),
            _ => self.pick(&[0, 1, 0xfff, 0x1000, 0x1001, 1 << 32, 1 << 63, u64::MAX, u64::MAX - 0xfff]),
        }
    }

    /// A page-aligned address from the same mix.
    pub fn page(&mut self) -> u64 {
        self.address() & !0xfff
    }

    /// A valid range from two page-aligned addresses.
    pub fn range(&mut self) -> MemoryRange {
        let (a, b) = (self.page(), self.page());
        MemoryRange::new(a.min(b)..a.max(b))
    }

    /// A valid range close to `near` (lengths up to a few 2 MiB pages).
    pub fn range_near(&mut self, near: u64) -> MemoryRange {
        let start = (near & !0xfff).min(MemoryRange::MAX_ADDRESS);
        let len = (self.below(0x600) * 0x1000).min(MemoryRange::MAX_ADDRESS - start);
        MemoryRange::new(start..start + len)
    }
}
