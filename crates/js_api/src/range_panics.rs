//! What the range panics mean for the values a caller gave: the core panics with a bare
//! `left not sorted`, `ranges overlap` or `start must be page aligned` (texts the contract
//! fixes, which stay the message); this finds the element or value that breaks the rule, and
//! the `detail` names it, the rule, and what to do.

use memory_range::MemoryRange;

/// The detail of the panic text `panic` of a range algorithm run over `inputs` (name, list):
/// the element that breaks the rule, the rule and the remedy; `None` when no element does.
pub fn detail(panic: &str, inputs: &[(&str, &[MemoryRange])]) -> Option<String> {
    let list = |name: &str| {
        inputs
            .iter()
            .find(|(input, _)| *input == name)
            .map(|(_, list)| *list)
    };
    match panic {
        "left not sorted" | "right not sorted" => {
            let name = &panic[..panic.find(' ').unwrap_or(0)];
            list(name).and_then(|ranges| walk_violation(name, ranges))
        }
        "ranges are not sorted" => list("ranges").and_then(|ranges| {
            first_pair(ranges, |previous, next| next.start() < previous.start()).map(|i| {
                format!(
                    "ranges[{i}] {} starts below ranges[{}] {}: sort the list by start address",
                    ranges[i],
                    i - 1,
                    ranges[i - 1]
                )
            })
        }),
        "ranges overlap" => list("ranges").and_then(|ranges| {
            first_pair(ranges, |previous, next| next.start() < previous.end()).map(|i| {
                format!(
                    "ranges[{i}] {} starts inside ranges[{}] {}: the ranges must not overlap \
                     (flattenRanges merges overlapping ranges first)",
                    ranges[i],
                    i - 1,
                    ranges[i - 1]
                )
            })
        }),
        _ => None,
    }
}

/// The page size the range rules are about.
const PAGE: u64 = 0x1000;

/// The largest end `MemoryRange::bounding` takes (rounding a larger one up to a page would not
/// fit in 64 bits).
const BOUNDING_MAX_END: u64 = u64::MAX - PAGE - 1;

/// The largest page number whose address fits in 64 bits.
const MAX_PAGE_NUMBER: u64 = u64::MAX / PAGE;

/// The detail of a panic of `MemoryRange::new(start..end)` (also reached through `bounding`,
/// whose own checks come first): which bound breaks which rule, and what to give instead;
/// `name` is the argument the range came from (`gaps[1]`, `range`), when known.
pub fn bounds_detail(panic: &str, start: u64, end: u64, name: Option<&str>) -> Option<String> {
    let of = |bound: &str| match name {
        Some(name) => format!("{name}.{bound}"),
        None => bound.to_owned(),
    };
    let unaligned = |bound: &str, value: u64| {
        format!(
            "{} {value:#x} is not a multiple of the 4 KiB page size ({PAGE:#x}): give a \
             page-aligned {bound} such as {:#x} (MemoryRange.bounding(start, end) rounds both \
             bounds out to pages)",
            of(bound),
            value & !(PAGE - 1)
        )
    };
    match panic {
        "start must be page aligned" => Some(unaligned("start", start)),
        "end must be page aligned" => Some(unaligned("end", end)),
        "start must be <= end" => Some(format!(
            "{} {start:#x} is above {} {end:#x}: a range is start..end (half-open) with \
             start <= end; swap them",
            of("start"),
            of("end")
        )),
        "end is too close to the top of the address space" => Some(format!(
            "{} {end:#x} is above {BOUNDING_MAX_END:#x}: rounding it up to a page would not fit \
             in 64 bits; give an end of at most {BOUNDING_MAX_END:#x}",
            of("end")
        )),
        _ => None,
    }
}

/// The detail of a panic of `MemoryRange::from_4k_gpn_range(first..end)` (page numbers).
pub fn page_bounds_detail(panic: &str, first: u64, end: u64) -> Option<String> {
    let too_large = |which: &str, page: u64| {
        format!(
            "{which} page number {page:#x} is above {MAX_PAGE_NUMBER:#x}: its address \
             ({which} x 4 KiB) would not fit in 64 bits"
        )
    };
    match panic {
        "start page number is too large" => Some(too_large("first", first)),
        "end page number is too large" => Some(too_large("end", end)),
        "start must be <= end" => Some(format!(
            "first page {first:#x} is above end page {end:#x}: the pages are first..end \
             (half-open) with first <= end; swap them"
        )),
        _ => None,
    }
}

/// The detail of a panic of `range.split_at_offset(offset)`.
pub fn split_detail(panic: &str, range: MemoryRange, offset: u64) -> Option<String> {
    match panic {
        "offset must be within the range" => Some(format!(
            "offset {offset:#x} is beyond the length {:#x} of {range}: give an offset from 0 to \
             the length",
            range.len()
        )),
        "offset must be page aligned" => Some(format!(
            "offset {offset:#x} is not a multiple of the 4 KiB page size ({PAGE:#x}): both \
             halves must be page-aligned ranges"
        )),
        _ => None,
    }
}

/// The detail of a panic of `range.alignment(base)`.
pub fn alignment_detail(panic: &str, range: MemoryRange, base: u64) -> Option<String> {
    match panic {
        "attempt to add with overflow" => Some(format!(
            "base {base:#x} plus the bounds of {range} exceeds 2^64-1: give a smaller base"
        )),
        "attempt to shift left with overflow" => Some(format!(
            "base {base:#x} plus both bounds of {range} is 0, which every power of two divides: \
             there is no largest alignment; ask for a non-empty range or one away from address 0"
        )),
        _ => None,
    }
}

/// The detail of a panic of `range.aligned_subrange(alignment)`.
pub fn aligned_subrange_detail(panic: &str, range: MemoryRange, alignment: u64) -> Option<String> {
    match panic {
        "alignment must be a power of two" => Some(format!(
            "alignment {alignment:#x} is not a power of two: give one such as 0x1000 or 0x200000"
        )),
        "attempt to add with overflow" => Some(format!(
            "the start of {range} plus the alignment {alignment:#x} exceeds 2^64-1 (the start is \
             rounded up as start + alignment - 1): give a smaller alignment"
        )),
        _ => None,
    }
}

/// The index of the first element that `breaks` the rule against the one before it.
fn first_pair(
    ranges: &[MemoryRange],
    breaks: impl Fn(&MemoryRange, &MemoryRange) -> bool,
) -> Option<usize> {
    (1..ranges.len()).find(|&i| breaks(&ranges[i - 1], &ranges[i]))
}

/// The walk rule: every element starts at or after the end of the latest non-empty one before it.
fn walk_violation(name: &str, ranges: &[MemoryRange]) -> Option<String> {
    let mut latest: Option<usize> = None;
    for (i, range) in ranges.iter().enumerate() {
        if let Some(j) = latest {
            if range.start() < ranges[j].end() {
                return Some(format!(
                    "{name}[{i}] {range} starts before {:#x}, the end of {name}[{j}] {}: each \
                     list must be sorted by address without overlaps (flattenRanges merges \
                     overlapping ranges of a sorted list)",
                    ranges[j].end(),
                    ranges[j]
                ));
            }
        }
        if !range.is_empty() {
            latest = Some(i);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> MemoryRange {
        MemoryRange::new(start..end)
    }

    #[test]
    fn walk_panics_name_the_element_and_the_one_it_collides_with() {
        let left = [r(0x10_0000, 0x20_0000), r(0, 0x10_0000)];
        let right = [r(0, 0x2000), r(0x1000, 0x1000)];
        let inputs = [("left", &left[..]), ("right", &right[..])];
        assert_eq!(
            detail("left not sorted", &inputs).as_deref(),
            Some(
                "left[1] 0x0-0x100000 starts before 0x200000, the end of left[0] \
                 0x100000-0x200000: each list must be sorted by address without overlaps \
                 (flattenRanges merges overlapping ranges of a sorted list)"
            )
        );
        assert!(detail("right not sorted", &inputs).is_some_and(
            |detail| detail.starts_with("right[1] 0x1000-0x1000 starts before 0x2000")
        ));
    }

    #[test]
    fn flatten_and_merge_panics_name_the_pair() {
        let unsorted = [r(0, 0x4000), r(0x5000, 0x7000), r(0x3000, 0x8000)];
        assert_eq!(
            detail("ranges are not sorted", &[("ranges", &unsorted)]).as_deref(),
            Some("ranges[2] 0x3000-0x8000 starts below ranges[1] 0x5000-0x7000: sort the list by start address")
        );
        let overlapping = [r(0, 0x6000), r(0x5000, 0x7000)];
        assert!(
            detail("ranges overlap", &[("ranges", &overlapping)]).is_some_and(
                |detail| detail.starts_with("ranges[1] 0x5000-0x7000 starts inside ranges[0]")
            )
        );
    }

    #[test]
    fn other_panics_and_lists_that_keep_the_rule_have_no_detail() {
        let sorted = [r(0, 0x1000)];
        assert_eq!(detail("left not sorted", &[("left", &sorted)]), None);
        assert_eq!(detail("something else", &[]), None);
    }

    #[test]
    fn bound_panics_name_the_value_and_a_fix() {
        assert_eq!(
            bounds_detail("start must be page aligned", 0x1001, 0x4000, None).as_deref(),
            Some(
                "start 0x1001 is not a multiple of the 4 KiB page size (0x1000): give a \
                 page-aligned start such as 0x1000 (MemoryRange.bounding(start, end) rounds \
                 both bounds out to pages)"
            )
        );
        assert!(bounds_detail("end must be page aligned", 0, 0x1001, None)
            .is_some_and(|detail| detail.starts_with("end 0x1001 is not a multiple")));
        assert!(bounds_detail("start must be <= end", 0x2000, 0x1000, None)
            .is_some_and(|detail| detail.starts_with("start 0x2000 is above end 0x1000")));
        // The argument the range came from, when known, names the bound.
        assert!(
            bounds_detail("end must be page aligned", 0, 0x1800, Some("gaps[1]"))
                .is_some_and(|detail| detail.starts_with("gaps[1].end 0x1800 is not a multiple"))
        );
        assert!(
            bounds_detail("start must be <= end", 0x2000, 0x1000, Some("range")).is_some_and(
                |detail| detail.starts_with("range.start 0x2000 is above range.end 0x1000")
            )
        );
        assert!(bounds_detail(
            "end is too close to the top of the address space",
            0,
            u64::MAX,
            None
        )
        .is_some_and(|detail| detail.contains("0xffffffffffffeffe")));
        assert!(
            page_bounds_detail("end page number is too large", 0, 1 << 52)
                .is_some_and(|detail| detail
                    .starts_with("end page number 0x10000000000000 is above 0xfffffffffffff"))
        );
        assert!(page_bounds_detail("start must be <= end", 3, 2)
            .is_some_and(|detail| detail.starts_with("first page 0x3 is above end page 0x2")));
        assert!(
            split_detail("offset must be within the range", r(0, 0x1000), 0x2000)
                .is_some_and(|detail| detail
                    .starts_with("offset 0x2000 is beyond the length 0x1000 of 0x0-0x1000"))
        );
        assert!(split_detail("offset must be page aligned", r(0, 0x2000), 1)
            .is_some_and(|detail| detail.starts_with("offset 0x1 is not a multiple")));
        assert!(
            alignment_detail("attempt to shift left with overflow", r(0, 0), 0).is_some_and(
                |detail| detail.starts_with("base 0x0 plus both bounds of 0x0-0x0 is 0")
            )
        );
        assert!(
            aligned_subrange_detail("alignment must be a power of two", r(0, 0x2000), 3)
                .is_some_and(|detail| detail.starts_with("alignment 0x3 is not a power of two"))
        );
        assert_eq!(bounds_detail("something else", 0, 0, None), None);
    }

    #[test]
    fn the_details_match_the_panics_of_the_core() {
        // Each detail is keyed by a panic text of memory_range: these are the texts it panics with.
        let text = |f: &dyn Fn()| {
            let payload = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_err();
            payload
                .downcast_ref::<&str>()
                .map(|text| (*text).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default()
        };
        let new = |start: u64, end: u64| {
            text(&|| {
                let _ = MemoryRange::new(start..end);
            })
        };
        assert!(bounds_detail(&new(1, 0x1000), 1, 0x1000, None).is_some());
        assert!(bounds_detail(&new(0, 1), 0, 1, None).is_some());
        assert!(bounds_detail(&new(0x2000, 0x1000), 0x2000, 0x1000, None).is_some());
        let bounding = text(&|| {
            let _ = MemoryRange::bounding(0..u64::MAX);
        });
        assert!(bounds_detail(&bounding, 0, u64::MAX, None).is_some());
        let pages = text(&|| {
            let _ = MemoryRange::from_4k_gpn_range(0..1 << 52);
        });
        assert!(page_bounds_detail(&pages, 0, 1 << 52).is_some());
        let split = text(&|| {
            let _ = r(0, 0x1000).split_at_offset(0x2000);
        });
        assert!(split_detail(&split, r(0, 0x1000), 0x2000).is_some());
        let shift = text(&|| {
            let _ = MemoryRange::EMPTY.alignment(0);
        });
        assert!(alignment_detail(&shift, MemoryRange::EMPTY, 0).is_some());
        let power = text(&|| {
            let _ = r(0, 0x2000).aligned_subrange(3);
        });
        assert!(aligned_subrange_detail(&power, r(0, 0x2000), 3).is_some());
    }
}
