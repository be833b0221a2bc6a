//! The rules an argument from JavaScript must meet before it reaches the core, each with the
//! error it gets when it does not (a `TypeError` for a wrong type, a `RangeError` for a value
//! the core would refuse or panic on).
//!
//! The TypeScript layer checks arguments too, for messages in the user's terms; these rules
//! keep the raw native functions from misreading a value or crashing whatever calls them.

use crate::enums::JsEnum;
use crate::errors::JsError;
use guestmem::PagedRange;
use memory_range::MemoryRange;
use std::time::Duration;

/// The largest integer a double holds exactly (2^53 − 1).
pub const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

/// A `number` given for a u64: it must be a safe non-negative integer (`TypeError` otherwise,
/// as for a value of the wrong type).
pub fn u64_from_number(number: f64) -> Result<u64, JsError> {
    if !(0.0..=MAX_SAFE_INTEGER).contains(&number) || number.fract() != 0.0 {
        return Err(JsError::arg_type(
            "a number argument must be a safe non-negative integer",
        ));
    }
    // In range and integral (checked above): exact.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a non-negative integer below 2^53 converts exactly"
    )]
    Ok(number as u64)
}

/// A `bigint` given for a u64, as N-API reads it: it must fit (`lossless`).
pub fn u64_from_bigint(value: u64, lossless: bool) -> Result<u64, JsError> {
    if lossless {
        Ok(value)
    } else {
        Err(JsError::arg_value(
            "a bigint argument must be between 0 and 2^64-1",
        ))
    }
}

/// An integer `number` in `0..=max` (a byte, a 16- or 32-bit value): a non-integer is a
/// `TypeError`, an integer out of range a `RangeError`.
pub fn scalar(value: f64, max: u64, name: &str) -> Result<u64, JsError> {
    if !value.is_finite() || value.fract() != 0.0 {
        return Err(JsError::arg_type(format!(
            "{name} must be an integer number, got {value}"
        )));
    }
    #[allow(
        clippy::cast_precision_loss,
        reason = "`max` is at most 2^32 - 1, exact in a double"
    )]
    let in_range = (0.0..=max as f64).contains(&value);
    if !in_range {
        return Err(JsError::arg_value(format!(
            "{name} must be an integer between 0 and {max}, got {value}"
        )));
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "an integer in 0..=max converts exactly"
    )]
    Ok(value as u64)
}

/// A byte value (`fillAt`).
pub fn byte(value: f64, name: &str) -> Result<u8, JsError> {
    let value = scalar(value, u8::MAX.into(), name)?;
    Ok(u8::try_from(value).unwrap_or(u8::MAX))
}

/// A u64 that must fit this process's address space (an offset or length of host memory).
pub fn host_size(value: u64, name: &str) -> Result<usize, JsError> {
    usize::try_from(value)
        .map_err(|_| JsError::arg_value(format!("{name} does not fit in the address space")))
}

/// The length of a new JavaScript `Buffer` (`name` bytes), at most `max` (the running Node's
/// `buffer.constants.MAX_LENGTH`, which differs between versions).
pub fn buffer_length(value: u64, max: u64, name: &str) -> Result<usize, JsError> {
    if value > max {
        return Err(JsError::arg_value(format!(
            "{name} {value:#x} is larger than the largest Buffer (buffer.constants.MAX_LENGTH, \
             {max:#x} on this Node): read it in pieces, or readAt into buffers of your own"
        )));
    }
    host_size(value, name)
}

/// A read of `len` bytes at `gpa` into a new buffer for JavaScript, checked in this order: the
/// range first (an out-of-range read is that error, whatever its length), then the length against
/// the largest Buffer of the running Node (`max_buffer`), then the allocation (a failure is a
/// coded error, never an abort).
pub fn read_for_buffer(
    memory: &guestmem::GuestMemory,
    gpa: u64,
    len: u64,
    max_buffer: u64,
) -> Result<Vec<u8>, JsError> {
    use crate::errors::ToJsError;
    memory
        .check_access(gpa, len, guestmem::GuestMemoryOperation::Read)
        .map_err(|error| error.to_js_error())?;
    let len = buffer_length(len, max_buffer, "len")?;
    memory
        .read_to_vec(gpa, len)
        .map_err(|error| error.to_js_error())
}

/// The range `start..end`, refused (`RangeError`, with the core's text) where
/// `MemoryRange::new` would panic.
pub fn range(start: u64, end: u64, name: &str) -> Result<MemoryRange, JsError> {
    MemoryRange::try_new(start..end).map_err(|error| JsError::arg_value(format!("{name}: {error}")))
}

/// Ranges given as `[start0, end0, start1, end1, …]`.
pub fn range_pairs(flat: &[u64], name: &str) -> Result<Vec<MemoryRange>, JsError> {
    if !flat.len().is_multiple_of(2) {
        return Err(JsError::arg_value(format!(
            "{name} must hold start/end pairs"
        )));
    }
    flat.chunks_exact(2)
        .map(|pair| range(pair[0], pair[1], name))
        .collect()
}

/// Exactly one range given as `[start, end]`.
pub fn one_range(flat: &[u64], name: &str) -> Result<MemoryRange, JsError> {
    match flat {
        [start, end] => range(*start, *end, name),
        _ => Err(JsError::arg_value(format!("{name} must be one range"))),
    }
}

/// A compare-exchange address: naturally aligned for `size` bytes.
pub fn aligned(gpa: u64, size: u64) -> Result<u64, JsError> {
    if gpa.is_multiple_of(size) {
        Ok(gpa)
    } else {
        Err(JsError::arg_value(format!(
            "compare-exchange of {size} bytes needs a {size}-byte aligned address, got {gpa:#x}"
        )))
    }
}

/// A scatter list (`offset` in the first page, `len` bytes over `gpns`) and the length of the
/// caller's buffer, which must equal `len`.
pub fn paged_range(
    offset: u32,
    len: u64,
    gpns: &[u64],
    buffer_len: usize,
) -> Result<PagedRange<'_>, JsError> {
    let len = host_size(len, "len")?;
    let offset = host_size(offset.into(), "offset")?;
    if offset >= guestmem::PAGE_SIZE && !(offset == 0 && gpns.is_empty()) {
        return Err(JsError::arg_value(format!(
            "offset must be below the page size, got {offset}"
        )));
    }
    if len != buffer_len {
        return Err(JsError::arg_value(format!(
            "the buffer holds {buffer_len} bytes but the range is {len} bytes long"
        )));
    }
    PagedRange::new(offset, len, gpns).ok_or_else(|| {
        JsError::arg_value(format!(
            "offset {offset} + len {len} exceeds the {} listed pages",
            gpns.len()
        ))
    })
}

/// A member of a string enum (`'ReadOnly'`): another string is a `RangeError` naming the values.
pub fn string_member<E: JsEnum>(value: &str, name: &str) -> Result<E, JsError> {
    E::from_js_str(value).ok_or_else(|| {
        JsError::arg_value(format!(
            "{name} must be {}, got '{value}'",
            E::describe_values()
        ))
    })
}

/// A member of a numeric enum (`Vtl`).
pub fn number_member<E: JsEnum>(value: u32, name: &str) -> Result<E, JsError> {
    u8::try_from(value)
        .ok()
        .and_then(|value| E::from_js(crate::enums::JsValue::Number(value)))
        .ok_or_else(|| {
            JsError::arg_value(format!(
                "{name} must be {}, got {value}",
                E::describe_values()
            ))
        })
}

/// A vCPU run's `timeoutMs` (0 = none), up to 10^12 ms.
pub fn timeout(milliseconds: f64) -> Result<Option<Duration>, JsError> {
    if !(0.0..=1e12).contains(&milliseconds) {
        return Err(JsError::arg_value("timeoutMs must be between 0 and 1e12"));
    }
    Ok((milliseconds > 0.0).then(|| Duration::from_secs_f64(milliseconds / 1000.0)))
}

/// Two lists given side by side (`ranges` and their `vnodes`, say): one item of `b` per item
/// of `a`, paired in order.
pub fn paired<A, B: Copy>(a: Vec<A>, b: &[B], what: &str) -> Result<Vec<(A, B)>, JsError> {
    if a.len() != b.len() {
        return Err(JsError::arg_value(format!("one {what} is required")));
    }
    Ok(a.into_iter().zip(b.iter().copied()).collect())
}

/// Values for named fields (registers): each name one of `known`, one value per name.
pub fn named_values<'a>(
    names: &'a [String],
    values: &[u64],
    known: &[&str],
) -> Result<Vec<(&'a str, u64)>, JsError> {
    if let Some(unknown) = names.iter().find(|name| !known.contains(&name.as_str())) {
        return Err(JsError::arg_value(format!("unknown register '{unknown}'")));
    }
    paired(
        names.iter().map(String::as_str).collect(),
        values,
        "value per register",
    )
}

/// A buffer a call copies into after JavaScript may have run (a hook of the memory) must still
/// have the length it had when the call began (`before` bytes, `now` bytes now): a hook that
/// detached, transferred or resized its `ArrayBuffer` meanwhile gets `ERR_BUFFER_CHANGED`, and the
/// bytes read are not copied into it.
pub fn unchanged_buffer(name: &str, call: &str, before: usize, now: usize) -> Result<(), JsError> {
    if before == now {
        Ok(())
    } else {
        Err(JsError::buffer_changed(name, call, before, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::ErrorClass;
    use crate::errors::ErrorCode;

    #[test]
    fn a_buffer_that_changed_during_the_call_is_refused_with_both_lengths() {
        assert!(unchanged_buffer("dest", "readAt", 8192, 8192).is_ok());
        assert!(unchanged_buffer("dest", "readAt", 0, 0).is_ok());
        for now in [0, 4096, 16384] {
            let error = unchanged_buffer("dest", "readAt", 8192, now).unwrap_err();
            assert_eq!(
                error.kind(),
                (ErrorClass::TypeError, Some(ErrorCode::BufferChanged))
            );
            assert!(
                error.message.starts_with(&format!(
                    "dest changed while readAt was using it: it was 8192 bytes and is {now} bytes now"
                )),
                "{}",
                error.message
            );
        }
    }

    #[test]
    fn a_buffer_length_above_the_limit_names_it() {
        assert_eq!(buffer_length(0x1000, 0x1_0000_0000, "len").unwrap(), 0x1000);
        let error = buffer_length(0x1_0000_0001, 0x1_0000_0000, "len").unwrap_err();
        assert_eq!(
            error.kind(),
            (ErrorClass::RangeError, Some(ErrorCode::InvalidArgValue))
        );
        assert!(
            error.message.starts_with(
                "len 0x100000001 is larger than the largest Buffer (buffer.constants.MAX_LENGTH, 0x100000000 on this Node)"
            ),
            "{}",
            error.message
        );
    }

    #[test]
    fn a_read_for_a_buffer_checks_the_range_before_the_length() {
        let memory = guestmem::GuestMemory::allocate(0x2000);
        memory.write_at(0x1000, b"data").unwrap();
        assert_eq!(read_for_buffer(&memory, 0x1000, 4, 0x10).unwrap(), b"data");
        // Past the end and above the largest Buffer: the range is what is reported.
        let error = read_for_buffer(&memory, 0x1000, 0x10_0000, 0x10).unwrap_err();
        assert_eq!(
            error.kind().1,
            Some(ErrorCode::GuestMemoryOutOfRange),
            "{error:?}"
        );
        // In range but above the largest Buffer: the length is.
        let error = read_for_buffer(&memory, 0, 0x2000, 0x1000).unwrap_err();
        assert_eq!(
            error.kind().1,
            Some(ErrorCode::InvalidArgValue),
            "{error:?}"
        );
        assert!(
            error.message.starts_with("len 0x2000 is larger"),
            "{}",
            error.message
        );
    }

    fn class(result: Result<impl std::fmt::Debug, JsError>) -> (ErrorClass, Option<ErrorCode>) {
        result.unwrap_err().kind()
    }

    const TYPE: (ErrorClass, Option<ErrorCode>) =
        (ErrorClass::TypeError, Some(ErrorCode::InvalidArgType));
    const VALUE: (ErrorClass, Option<ErrorCode>) =
        (ErrorClass::RangeError, Some(ErrorCode::InvalidArgValue));

    #[test]
    fn numbers_for_u64_must_be_safe_non_negative_integers() {
        assert_eq!(u64_from_number(0.0).unwrap(), 0);
        assert_eq!(u64_from_number(MAX_SAFE_INTEGER).unwrap(), (1 << 53) - 1);
        for bad in [-1.0, 0.5, MAX_SAFE_INTEGER + 1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(class(u64_from_number(bad)), TYPE, "{bad}");
        }
        assert_eq!(u64_from_bigint(u64::MAX, true).unwrap(), u64::MAX);
        assert_eq!(class(u64_from_bigint(0, false)), VALUE);
    }

    #[test]
    fn scalars_are_integers_in_range() {
        assert_eq!(scalar(255.0, 255, "byte").unwrap(), 255);
        assert_eq!(byte(7.0, "byte").unwrap(), 7);
        assert_eq!(class(scalar(256.0, 255, "byte")), VALUE);
        assert_eq!(class(scalar(-1.0, 255, "byte")), VALUE);
        assert_eq!(class(scalar(1.5, 255, "byte")), TYPE);
        assert_eq!(class(scalar(f64::NAN, 255, "byte")), TYPE);
        assert_eq!(
            scalar(4_294_967_295.0, u32::MAX.into(), "v").unwrap(),
            u64::from(u32::MAX)
        );
    }

    #[test]
    fn ranges_are_refused_where_memory_range_new_panics() {
        assert_eq!(
            range(0x1000, 0x3000, "r").unwrap(),
            MemoryRange::new(0x1000..0x3000)
        );
        let error = range(0x1001, 0x3000, "gaps").unwrap_err();
        assert_eq!(error.kind(), VALUE);
        assert_eq!(
            error.message,
            "gaps: unaligned or invalid memory range: 0x1001-0x3000"
        );
        assert_eq!(
            range_pairs(&[0, 0x1000, 0x2000, 0x3000], "r")
                .unwrap()
                .len(),
            2
        );
        assert_eq!(class(range_pairs(&[0, 0x1000, 0x2000], "r")), VALUE);
        assert_eq!(class(one_range(&[0, 0x1000, 0x2000, 0x3000], "r")), VALUE);
        assert_eq!(one_range(&[0, 0x1000], "r").unwrap().len(), 0x1000);
    }

    #[test]
    fn compare_exchange_addresses_are_naturally_aligned() {
        assert_eq!(aligned(0x1008, 8).unwrap(), 0x1008);
        assert_eq!(aligned(0x1001, 1).unwrap(), 0x1001);
        let error = aligned(0x1002, 4).unwrap_err();
        assert_eq!(error.kind(), VALUE);
        assert!(error.message.contains("4-byte aligned address, got 0x1002"));
    }

    #[test]
    fn scatter_lists_must_fit_their_pages_and_the_buffer() {
        let gpns = [3, 9];
        let range = paged_range(0x100, 0x1000, &gpns, 0x1000).unwrap();
        assert_eq!(range.len(), 0x1000);
        assert_eq!(class(paged_range(0x100, 0x1000, &gpns, 0x800)), VALUE);
        assert_eq!(class(paged_range(0x1000, 0x10, &gpns, 0x10)), VALUE);
        assert_eq!(class(paged_range(0x100, 0x2000, &gpns, 0x2000)), VALUE);
        assert!(
            paged_range(0, 0, &[], 0).unwrap().is_empty(),
            "an empty list is fine"
        );
    }

    #[test]
    fn enum_members_are_named_in_the_error() {
        let visibility: membacking::RamVisibility =
            string_member("ReadOnly", "visibility").unwrap();
        assert_eq!(visibility, membacking::RamVisibility::ReadOnly);
        let error = string_member::<membacking::RamVisibility>("Hidden", "visibility").unwrap_err();
        assert_eq!(
            error.message,
            "visibility must be 'Unmapped', 'ReadOnly' or 'ReadWrite', got 'Hidden'"
        );
        assert_eq!(
            number_member::<virt::Vtl>(2, "vtl").unwrap(),
            virt::Vtl::Vtl2
        );
        assert_eq!(
            number_member::<virt::Vtl>(300, "vtl").unwrap_err().message,
            "vtl must be 0, 1 or 2, got 300"
        );
    }

    #[test]
    fn timeouts_are_bounded_and_zero_means_none() {
        assert_eq!(timeout(0.0).unwrap(), None);
        assert_eq!(timeout(1500.0).unwrap(), Some(Duration::from_millis(1500)));
        assert_eq!(class(timeout(-1.0)), VALUE);
        assert_eq!(class(timeout(f64::NAN)), VALUE);
        assert_eq!(class(timeout(1e13)), VALUE);
    }

    #[test]
    fn paired_lists_need_one_item_each() {
        assert_eq!(
            paired(vec!['a', 'b'], &[1, 2], "x").unwrap(),
            [('a', 1), ('b', 2)]
        );
        let error = paired(vec!['a'], &[1, 2], "vnode per memory range").unwrap_err();
        assert_eq!(error.kind(), VALUE);
        assert_eq!(error.message, "one vnode per memory range is required");
    }

    #[test]
    fn named_values_need_known_names_and_one_value_each() {
        let names = vec!["rax".to_owned(), "rip".to_owned()];
        let known = ["rax", "rbx", "rip"];
        assert_eq!(
            named_values(&names, &[1, 2], &known).unwrap(),
            [("rax", 1), ("rip", 2)]
        );
        assert_eq!(class(named_values(&names, &[1], &known)), VALUE);
        let bad = vec!["cr0".to_owned()];
        let error = named_values(&bad, &[1], &known).unwrap_err();
        assert_eq!(error.message, "unknown register 'cr0'");
    }
}
