//! What the range algorithms' panics mean for the lists a caller gave: the core panics with a
//! bare `left not sorted` or `ranges overlap` (texts the contract fixes, which stay the
//! message) at the element that breaks its rule; this finds that element, and the `detail`
//! names it, the rule, and what to do.

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
}
