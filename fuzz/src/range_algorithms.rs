//! Fuzz checks of `memory_range`: `walk_ranges`, `overlapping_ranges`, `subtract_ranges`,
//! `flatten_ranges`, `merge_adjacent_ranges` and `AlignedSubranges` against page-level
//! reference answers, the `MemoryRange` methods against their documented contracts, and
//! arbitrary (unsorted, overlapping) inputs: the only panics allowed are the documented ones.

use crate::input::{address, catch, Unstructured, PAGE};
use memory_range::{
    flatten_ranges, merge_adjacent_ranges, overlapping_ranges, subtract_ranges, walk_ranges,
    AlignedSubranges, MemoryRange, RangeWalkResult,
};
use std::collections::BTreeMap;

/// Pages in the window the lists are drawn from.
const DOMAIN_PAGES: u64 = 512;

/// Panic messages the range algorithms document for inputs that break their ordering rules.
const ORDER_PANICS: [&str; 4] = [
    "left not sorted",
    "right not sorted",
    "ranges are not sorted",
    "ranges overlap",
];

/// Panic messages of the `MemoryRange` methods (their `# Panics` sections and the crate rule
/// that arithmetic overflow panics).
const METHOD_PANICS: [&str; 12] = [
    "start must be page aligned",
    "end must be page aligned",
    "start must be <= end",
    "end is too close to the top of the address space",
    "start page number is too large",
    "end page number is too large",
    "offset must be within the range",
    "offset must be page aligned",
    "alignment must be a power of two",
    "attempt to add with overflow",
    "attempt to subtract with overflow",
    "attempt to shift left with overflow",
];

pub fn check(data: &[u8]) {
    let mut u = Unstructured::new(data);
    // Where the window lies: at 0, in the middle, or against the top of the address space.
    let base = match u.int_in_range(0u8..=2).unwrap_or(0) {
        0 => 0,
        1 => 1 << 40,
        _ => MemoryRange::MAX_ADDRESS - DOMAIN_PAGES * PAGE,
    };
    match u.int_in_range(0u8..=4).unwrap_or(0) {
        0 => walk(&mut u, base),
        1 => flatten(&mut u, base),
        2 => merge_adjacent(&mut u, base),
        3 => unsorted(&mut u, base),
        _ => methods(&mut u),
    }
}

/// A sorted list of tagged ranges in the window; empty elements included. Each element starts
/// at or after the end of the previous one (the walk's ordering rule).
fn sorted_list(u: &mut Unstructured<'_>, base: u64) -> Vec<(MemoryRange, u32)> {
    let count = u.int_in_range(0usize..=8).unwrap_or(0);
    let mut cursor = 0u64;
    let mut list = Vec::new();
    for tag in 0..u32::try_from(count).unwrap_or(0) {
        let gap = u.int_in_range(0u64..=24).unwrap_or(0);
        let len = if u.ratio(1u8, 6).unwrap_or(false) {
            0
        } else {
            u.int_in_range(1u64..=40).unwrap_or(1)
        };
        let start = cursor + gap;
        let end = start + len;
        if end > DOMAIN_PAGES {
            break;
        }
        list.push((
            MemoryRange::new(base + start * PAGE..base + end * PAGE),
            tag,
        ));
        cursor = if len == 0 { start } else { end };
    }
    list
}

/// Which element of `list` (non-empty) covers `address`.
fn covering(list: &[(MemoryRange, u32)], address: u64) -> Option<u32> {
    list.iter()
        .find(|(range, _)| !range.is_empty() && range.contains_addr(address))
        .map(|&(_, tag)| tag)
}

fn walk(u: &mut Unstructured<'_>, base: u64) {
    let left = sorted_list(u, base);
    let right = sorted_list(u, base);
    let pieces: Vec<_> = walk_ranges(left.clone(), right.clone()).collect();

    // Expected: a piece between every pair of consecutive boundaries (0, MAX_ADDRESS, and the
    // bounds of every non-empty element), labelled by the elements covering it.
    let mut bounds = vec![0, MemoryRange::MAX_ADDRESS];
    for (range, _) in left.iter().chain(&right).filter(|(r, _)| !r.is_empty()) {
        bounds.push(range.start());
        bounds.push(range.end());
    }
    bounds.sort_unstable();
    bounds.dedup();
    let expected: Vec<_> = bounds
        .windows(2)
        .map(|pair| {
            let result = match (covering(&left, pair[0]), covering(&right, pair[0])) {
                (None, None) => RangeWalkResult::Neither,
                (Some(l), None) => RangeWalkResult::Left(l),
                (None, Some(r)) => RangeWalkResult::Right(r),
                (Some(l), Some(r)) => RangeWalkResult::Both(l, r),
            };
            (MemoryRange::new(pair[0]..pair[1]), result)
        })
        .collect();
    assert_eq!(pieces, expected, "walk_ranges of {left:?} and {right:?}");

    let plain = |list: &[(MemoryRange, u32)]| list.iter().map(|&(r, _)| r).collect::<Vec<_>>();
    let both: Vec<_> = overlapping_ranges(plain(&left), plain(&right)).collect();
    let expected_both: Vec<_> = expected
        .iter()
        .filter(|(_, r)| matches!(r, RangeWalkResult::Both(..)))
        .map(|&(range, _)| range)
        .collect();
    assert_eq!(both, expected_both, "overlapping_ranges");
    let only_left: Vec<_> = subtract_ranges(plain(&left), plain(&right)).collect();
    let expected_left: Vec<_> = expected
        .iter()
        .filter(|(_, r)| matches!(r, RangeWalkResult::Left(_)))
        .map(|&(range, _)| range)
        .collect();
    assert_eq!(only_left, expected_left, "subtract_ranges");
}

/// The pages (relative to `base`) covered by `ranges`.
fn pages(ranges: impl IntoIterator<Item = MemoryRange>, base: u64) -> Vec<bool> {
    let mut covered = vec![false; usize::try_from(DOMAIN_PAGES).unwrap()];
    for range in ranges {
        for page in (range.start() - base) / PAGE..(range.end() - base) / PAGE {
            covered[usize::try_from(page).unwrap()] = true;
        }
    }
    covered
}

fn flatten(u: &mut Unstructured<'_>, base: u64) {
    // Sorted by start, overlapping and touching allowed.
    let count = u.int_in_range(0usize..=10).unwrap_or(0);
    let mut start = 0u64;
    let mut input = Vec::new();
    for _ in 0..count {
        start += u.int_in_range(0u64..=16).unwrap_or(0);
        let len = u.int_in_range(0u64..=32).unwrap_or(0);
        if start + len > DOMAIN_PAGES {
            break;
        }
        input.push(MemoryRange::new(
            base + start * PAGE..base + (start + len) * PAGE,
        ));
    }
    let output: Vec<_> = flatten_ranges(input.clone()).collect();
    assert_eq!(
        pages(output.clone(), base),
        pages(input.clone(), base),
        "flatten_ranges({input:?}) covers other pages: {output:?}"
    );
    for pair in output.windows(2) {
        assert!(
            pair[0].end() < pair[1].start(),
            "flatten_ranges({input:?}) left touching or overlapping runs: {output:?}"
        );
    }
    for range in &output {
        assert!(
            input.iter().any(|r| r.start() == range.start()),
            "{range} starts at no input start"
        );
        assert!(
            input.iter().any(|r| r.end() == range.end()),
            "{range} ends at no input end"
        );
    }
}

fn merge_adjacent(u: &mut Unstructured<'_>, base: u64) {
    // Sorted, non-overlapping (touching allowed), tags from a small set.
    let count = u.int_in_range(0usize..=10).unwrap_or(0);
    let mut cursor = 0u64;
    let mut input = Vec::new();
    for _ in 0..count {
        let start = cursor
            + if u.ratio(1u8, 2).unwrap_or(true) {
                0
            } else {
                u.int_in_range(1u64..=8).unwrap_or(1)
            };
        let end = start + u.int_in_range(1u64..=16).unwrap_or(1);
        if end > DOMAIN_PAGES {
            break;
        }
        let tag = u.int_in_range(0u8..=2).unwrap_or(0);
        input.push((
            MemoryRange::new(base + start * PAGE..base + end * PAGE),
            tag,
        ));
        cursor = end;
    }
    let output: Vec<_> = merge_adjacent_ranges(input.clone()).collect();
    let tags = |list: &[(MemoryRange, u8)]| {
        let mut map = BTreeMap::new();
        for &(range, tag) in list {
            for page in range.start_4k_gpn()..range.end_4k_gpn() {
                map.insert(page, tag);
            }
        }
        map
    };
    assert_eq!(
        tags(&output),
        tags(&input),
        "merge_adjacent_ranges({input:?}) = {output:?} changes which tag covers a page"
    );
    for pair in output.windows(2) {
        assert!(
            !(pair[0].0.end() == pair[1].0.start() && pair[0].1 == pair[1].1),
            "merge_adjacent_ranges({input:?}) left touching pieces with equal tags: {output:?}"
        );
    }
    for (range, _) in &output {
        assert!(
            input.iter().any(|(r, _)| r.start() == range.start()),
            "{range} starts at no input start"
        );
    }
}

/// A list of arbitrary valid ranges in the window, in any order.
fn any_list(u: &mut Unstructured<'_>, base: u64) -> Vec<MemoryRange> {
    let count = u.int_in_range(0usize..=8).unwrap_or(0);
    (0..count)
        .map(|_| {
            let a = u.int_in_range(0u64..=DOMAIN_PAGES).unwrap_or(0);
            let b = u.int_in_range(0u64..=DOMAIN_PAGES).unwrap_or(0);
            MemoryRange::new(base + a.min(b) * PAGE..base + a.max(b) * PAGE)
        })
        .collect()
}

fn allowed(result: Result<(), String>, allowed: &[&str], what: &str) {
    if let Err(message) = result {
        assert!(
            allowed.contains(&message.as_str()),
            "{what} panicked with an undocumented message: {message}"
        );
    }
}

fn unsorted(u: &mut Unstructured<'_>, base: u64) {
    let left = any_list(u, base);
    let right = any_list(u, base);
    let tagged = |list: &[MemoryRange]| {
        list.iter()
            .enumerate()
            .map(|(i, &r)| (r, i))
            .collect::<Vec<_>>()
    };
    allowed(
        catch(|| {
            walk_ranges(tagged(&left), tagged(&right)).count();
        }),
        &ORDER_PANICS,
        "walk_ranges",
    );
    allowed(
        catch(|| {
            overlapping_ranges(left.clone(), right.clone()).count();
        }),
        &ORDER_PANICS,
        "overlapping_ranges",
    );
    allowed(
        catch(|| {
            subtract_ranges(left.clone(), right.clone()).count();
        }),
        &ORDER_PANICS,
        "subtract_ranges",
    );
    allowed(
        catch(|| {
            flatten_ranges(left.clone()).count();
        }),
        &ORDER_PANICS,
        "flatten_ranges",
    );
    let tags: Vec<_> = left.iter().map(|&r| (r, r.len() % 3)).collect();
    allowed(
        catch(|| {
            merge_adjacent_ranges(tags.clone()).count();
        }),
        &ORDER_PANICS,
        "merge_adjacent_ranges",
    );
    // A list the rules accept never panics: sorting and flattening makes one.
    let mut sorted = left.clone();
    sorted.sort();
    let flat: Vec<_> = flatten_ranges(sorted).collect();
    let mut other = right.clone();
    other.sort();
    let other_flat: Vec<_> = flatten_ranges(other).collect();
    assert!(
        catch(|| walk_ranges(tagged(&flat), tagged(&other_flat)).count()).is_ok(),
        "walk_ranges of flattened lists panicked"
    );
}

/// Checks one method call: it either returns or panics with a documented message.
fn method<T>(what: &str, f: impl FnOnce() -> T) -> Option<T> {
    match catch(f) {
        Ok(value) => Some(value),
        Err(message) => {
            assert!(
                METHOD_PANICS.contains(&message.as_str()),
                "{what} panicked with an undocumented message: {message}"
            );
            None
        }
    }
}

fn methods(u: &mut Unstructured<'_>) {
    let (a, b, c) = (address(u), address(u), address(u));
    let aligned = |x: u64| x.is_multiple_of(PAGE);

    // new panics exactly where try_new refuses.
    let made = method("new", || MemoryRange::new(a..b));
    let tried = MemoryRange::try_new(a..b).ok();
    assert_eq!(made, tried, "new({a:#x}..{b:#x}) and try_new disagree");
    assert_eq!(
        made.is_some(),
        aligned(a) && aligned(b) && a <= b,
        "new({a:#x}..{b:#x})"
    );

    // bounding: the smallest page-aligned cover.
    if let Some(cover) = method("bounding", || MemoryRange::bounding(a..b)) {
        assert_eq!(
            cover.start(),
            a - a % PAGE,
            "bounding({a:#x}..{b:#x}) = {cover}"
        );
        assert!(
            cover.end() >= b && cover.end() - b < PAGE,
            "bounding({a:#x}..{b:#x}) = {cover}"
        );
    } else {
        assert!(
            a > b || b >= u64::MAX - PAGE,
            "bounding({a:#x}..{b:#x}) panicked"
        );
    }

    // from_4k_gpn_range.
    let (p, q) = (a / PAGE, b / PAGE);
    if let Some(range) = method("from_4k_gpn_range", || MemoryRange::from_4k_gpn_range(p..q)) {
        assert_eq!((range.start_4k_gpn(), range.end_4k_gpn()), (p, q));
    }

    let Some(range) = MemoryRange::try_new(a.min(b) & !(PAGE - 1)..a.max(b) & !(PAGE - 1)).ok()
    else {
        return;
    };
    assert_eq!(range.len(), range.end() - range.start());
    assert_eq!(range.page_count_4k() * PAGE, range.len());
    assert_eq!(range.page_count_2m(), range.len().div_ceil(0x20_0000));
    assert_eq!(
        range.offset_of(c),
        range.contains_addr(c).then(|| c - range.start())
    );

    // split_at_offset: the halves meet at the offset.
    let offset = c % range.len().saturating_add(2 * PAGE + 1);
    if let Some((head, tail)) = method("split_at_offset", || range.split_at_offset(offset)) {
        assert_eq!(
            (head.start(), head.end(), tail.end()),
            (range.start(), range.start() + offset, range.end())
        );
        assert_eq!(tail.start(), head.end());
    } else {
        assert!(offset > range.len() || !aligned(offset));
    }

    // alignment: a power of two dividing both sums, and the largest one.
    if let Some(alignment) = method("alignment", || range.alignment(c)) {
        assert!(alignment.is_power_of_two());
        let (s, e) = (c + range.start(), c + range.end());
        assert!(
            s % alignment == 0 && e % alignment == 0,
            "alignment({c:#x}) of {range} = {alignment:#x}"
        );
        if let Some(double) = alignment.checked_mul(2) {
            assert!(
                s % double != 0 || e % double != 0,
                "alignment({c:#x}) of {range} = {alignment:#x} is not the largest"
            );
        }
    }

    // aligned_subrange: inside, aligned, maximal.
    let power = 1u64 << (c % 64);
    let sub = method("aligned_subrange", || range.aligned_subrange(power));
    // The start is rounded up as `start + power - 1`, left to right, as in the original: it
    // panics exactly when `start + power` overflows.
    assert_eq!(
        sub.is_none(),
        range.start().checked_add(power).is_none(),
        "aligned_subrange({power:#x}) of {range} panicked: {}",
        sub.is_none()
    );
    if let Some(sub) = sub {
        if sub != MemoryRange::EMPTY {
            assert!(
                range.contains(&sub),
                "aligned_subrange({power:#x}) of {range} = {sub}"
            );
            assert!(
                sub.start() % power == 0 && sub.end() % power == 0,
                "aligned_subrange({power:#x}) of {range} = {sub}"
            );
        }
        if !sub.is_empty() {
            assert!(
                sub.start() - range.start() < power && range.end() - sub.end() < power,
                "aligned_subrange({power:#x}) of {range} = {sub} is not the largest"
            );
        }
    }

    // Two ranges: intersection, overlaps and contains agree.
    let other = MemoryRange::try_new(
        (c & !(PAGE - 1)).min(b & !(PAGE - 1))..(c & !(PAGE - 1)).max(b & !(PAGE - 1)),
    )
    .unwrap_or(MemoryRange::EMPTY);
    let meet = range.intersection(&other);
    if range.overlaps(&other) {
        assert!(
            range.contains(&meet) && other.contains(&meet),
            "{range} ∩ {other} = {meet}"
        );
        assert_eq!(meet.start(), range.start().max(other.start()));
        assert_eq!(meet.end(), range.end().min(other.end()));
    }
    if range.contains(&other) && !other.is_empty() {
        assert_eq!(meet, other);
    }

    // AlignedSubranges: consecutive pieces that concatenate to the range, none longer than
    // max_len; a non-zero page-multiple max_len and offset never panic (barring overflow).
    let page_offset = (address(u) & !(PAGE - 1)) % (1 << 48);
    let max_len = match u.int_in_range(0u8..=3).unwrap_or(0) {
        0 => u64::MAX,
        1 => (u.int_in_range(1u64..=1024).unwrap_or(1)) * PAGE,
        2 => 0x20_0000,
        _ => address(u),
    };
    let pieces = {
        let mut pieces = Vec::new();
        let mut panic = None;
        let mut iter = AlignedSubranges::new(range)
            .with_offset(page_offset)
            .with_max_range_len(max_len);
        while pieces.len() < 4096 {
            match catch(|| iter.next()) {
                Ok(Some(piece)) => pieces.push(piece),
                Ok(None) => break,
                Err(message) => {
                    panic = Some(message);
                    break;
                }
            }
        }
        (pieces, panic)
    };
    // Pieces and the panic point agree with a model of the original's arithmetic (which
    // overflows, and so panics, near the top of the address space).
    let (expected, expected_panic) = reference_aligned_subranges(range, page_offset, max_len, 4096);
    assert_eq!(
        (&pieces.0, pieces.1.is_some()),
        (&expected, expected_panic),
        "AlignedSubranges of {range} (offset {page_offset:#x}, max_len {max_len:#x}): {:?}",
        pieces.1
    );
    if let Some(message) = &pieces.1 {
        assert!(
            METHOD_PANICS.contains(&message.as_str()),
            "AlignedSubranges panicked with an undocumented message: {message}"
        );
    }
    let pieces = pieces.0;
    if max_len != 0 && !pieces.is_empty() && pieces.len() < 4096 && !expected_panic {
        assert_eq!(
            pieces[0].start(),
            range.start(),
            "pieces of {range}: {pieces:?}"
        );
        assert_eq!(
            pieces.last().map(|r| r.end()),
            Some(range.end()),
            "pieces of {range}"
        );
        for pair in pieces.windows(2) {
            assert_eq!(
                pair[0].end(),
                pair[1].start(),
                "pieces of {range} are not consecutive"
            );
        }
        for piece in &pieces {
            assert!(
                !piece.is_empty() && piece.len() <= max_len,
                "piece {piece} of {range} (max_len {max_len:#x})"
            );
        }
    }
}

/// A model of `AlignedSubranges` with every sum checked in the original's order: the pieces
/// produced (at most `limit`) and whether the iterator panics after them. A panic comes from an
/// overflowing sum or from an unaligned bound (an unaligned `max_len`).
fn reference_aligned_subranges(
    range: MemoryRange,
    offset: u64,
    max_len: u64,
    limit: usize,
) -> (Vec<MemoryRange>, bool) {
    let mut pieces = Vec::new();
    let (mut next_start, end_of_range) = (range.start(), range.end());
    while pieces.len() < limit && next_start != end_of_range {
        let Some(start) = next_start.checked_add(offset) else {
            return (pieces, true);
        };
        let Some(mut end) = end_of_range.checked_add(offset) else {
            return (pieces, true);
        };
        if end - start > max_len {
            end = start + max_len;
        }
        for page in [0x20_0000u64, 0x4000_0000] {
            let Some(bumped) = start.checked_add(page - 1) else {
                return (pieces, true);
            };
            let first_boundary = bumped & !(page - 1);
            if first_boundary >= end & !(page - 1) {
                continue;
            }
            end = if start % page != 0 {
                end.min(first_boundary)
            } else {
                end & !(page - 1)
            };
        }
        let piece_end = end - offset;
        if !piece_end.is_multiple_of(PAGE) {
            return (pieces, true);
        }
        pieces.push(MemoryRange::new(next_start..piece_end));
        next_start = piece_end;
    }
    (pieces, false)
}
