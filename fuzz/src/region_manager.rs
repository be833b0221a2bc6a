//! Fuzz checks of the region manager's pure planner (`membacking::region_manager`): random
//! sequences of changes (regions added and removed at random priorities, mapped and unmapped,
//! mappings added and removed, partition mappers registered), applied through transactions
//! (sometimes several per transaction, sometimes rolled back). After every step:
//!
//! - a dry run (`plan`) left the state unchanged and planned exactly what applying did;
//! - a refused change left the state unchanged; a rolled-back transaction too;
//! - replaying every committed plan into per-partition mapping sets and a mapping-manager set
//!   (map/unmap never overlap or cut an existing mapping; a map is preceded by the populate of
//!   its range; prefetch and pin follow their map) leaves exactly the active regions mapped in
//!   every partition (shifted by its offset, with the region's permissions) and exactly their
//!   mappings in the mapping manager;
//! - I1/I2: active regions are disjoint, and a region is active iff it is mapped and no
//!   overlapping mapped region beats it (higher priority, or equal and older);
//! - the flat view is ordered, disjoint, and names the active region covering each piece.

use crate::input::{Unstructured, PAGE};
use membacking::region_manager::{
    ActiveMapping, Change, ChangeOutcome, MapParams, NewRegion, PartitionMapperInfo, Plan, PlanOp,
    RegionId, RegionManagerError, RegionManagerState, RegionMapping,
};
use memory_range::MemoryRange;
use std::collections::BTreeMap;

type State = RegionManagerState<u8>;

/// A partition as replayed from the plans: gpa → (size, writable, exec).
#[derive(Debug, Default)]
struct Partition {
    offset: u64,
    pin: bool,
    mapped: BTreeMap<u64, (u64, bool, bool)>,
}

/// The mapping manager as replayed from the plans: start → mapping.
type MapperSet = BTreeMap<u64, ActiveMapping<u8>>;

fn range_in(u: &mut Unstructured<'_>, limit_pages: u64) -> MemoryRange {
    let a = u.int_in_range(0..=limit_pages).unwrap_or(0);
    let b = u.int_in_range(0..=limit_pages).unwrap_or(0);
    MemoryRange::new(a.min(b) * PAGE..a.max(b) * PAGE)
}

fn pick_id(u: &mut Unstructured<'_>, ids: &[RegionId]) -> Option<RegionId> {
    if ids.is_empty() {
        return None;
    }
    let index = u.int_in_range(0..=ids.len() - 1).unwrap_or(0);
    Some(ids[index])
}

/// Decodes one change; `None` when it names a region and none exists yet.
fn change(
    u: &mut Unstructured<'_>,
    window_pages: u64,
    base: u64,
    ids: &[RegionId],
    state: &State,
    serial: &mut u32,
) -> Option<Change<u8>> {
    let kind = u.int_in_range(0u8..=9).unwrap_or(0);
    Some(match kind {
        0..=2 => {
            // Mostly inside the window; sometimes reaching past it (in a small window) or empty.
            let range = range_in(
                u,
                if base == 0 {
                    window_pages + 2
                } else {
                    window_pages
                },
            );
            let range = MemoryRange::new(base + range.start()..base + range.end());
            let priority = match u.int_in_range(0u8..=4).unwrap_or(0) {
                0 => 0,
                1 => 1,
                2 => 2,
                3 => 255,
                _ => u.arbitrary().unwrap_or(7),
            };
            *serial += 1;
            Change::AddRegion(NewRegion::new(
                format!("r{serial}"),
                range,
                priority,
                u.arbitrary().unwrap_or(false),
            ))
        }
        3..=4 => Change::MapRegion(
            pick_id(u, ids)?,
            MapParams {
                writable: u.arbitrary().unwrap_or(true),
                executable: u.arbitrary().unwrap_or(true),
                prefetch: u.arbitrary().unwrap_or(false),
            },
        ),
        5 => Change::UnmapRegion(pick_id(u, ids)?),
        6 => Change::RemoveRegion(pick_id(u, ids)?),
        7 => {
            let id = pick_id(u, ids)?;
            let len_pages = state.region(id).map_or(4, |r| r.range().len() / PAGE);
            let file_offset = if u.ratio(1u8, 8).unwrap_or(false) {
                u.arbitrary().unwrap_or(0)
            } else {
                u.int_in_range(0u64..=64).unwrap_or(0) * PAGE
            };
            Change::AddMapping(
                id,
                RegionMapping {
                    range_in_region: range_in(u, len_pages + 1),
                    object: u.int_in_range(0u8..=3).unwrap_or(0),
                    file_offset,
                    writable: u.arbitrary().unwrap_or(true),
                },
            )
        }
        8 => {
            let id = pick_id(u, ids)?;
            let len_pages = state.region(id).map_or(4, |r| r.range().len() / PAGE);
            Change::RemoveMappings(id, range_in(u, len_pages + 1))
        }
        _ => {
            let offset = match u.int_in_range(0u8..=3).unwrap_or(0) {
                0 => 0,
                1 => u.int_in_range(1u64..=1 << 20).unwrap_or(1) * PAGE,
                2 => {
                    // At the largest offset that fits the window, below it, or one past it.
                    let limit = u64::MAX - state.va_window_len();
                    match u.int_in_range(0u8..=2).unwrap_or(0) {
                        0 => limit,
                        1 => limit.saturating_sub(PAGE),
                        _ => limit + 1,
                    }
                }
                _ => u.arbitrary().unwrap_or(0),
            };
            Change::AddPartition(PartitionMapperInfo {
                offset,
                pin_mappings: u.arbitrary().unwrap_or(false),
            })
        }
    })
}

/// Replays a committed plan into the partitions and the mapping manager, checking the order rules.
fn replay(plan: &Plan<u8>, partitions: &mut [Partition], mapper: &mut MapperSet) {
    let ops: Vec<&PlanOp<u8>> = plan.op_list().collect();
    for (index, op) in ops.iter().enumerate() {
        let earlier = &ops[..index];
        match op {
            PlanOp::AddMapping(mapping) => {
                let clash = mapper.values().find(|m| m.range.overlaps(&mapping.range));
                assert!(
                    clash.is_none(),
                    "mapping manager: {} added over {:?}",
                    mapping.range,
                    clash
                );
                mapper.insert(mapping.range.start(), mapping.clone());
            }
            PlanOp::Invalidate { range } => {
                let inside: Vec<u64> = mapper
                    .values()
                    .filter(|m| m.range.overlaps(range))
                    .map(|m| {
                        assert!(
                            range.contains(&m.range),
                            "invalidate {range} cuts mapping {}",
                            m.range
                        );
                        m.range.start()
                    })
                    .collect();
                for start in inside {
                    mapper.remove(&start);
                }
            }
            PlanOp::PopulateVa { partition, .. } => {
                assert!(
                    *partition < partitions.len(),
                    "populate for unknown partition {partition}"
                );
            }
            PlanOp::Map {
                partition,
                va_offset,
                gpa,
                size,
                writable,
                exec,
            } => {
                let p = &mut partitions[*partition];
                assert_eq!(
                    *gpa,
                    va_offset + p.offset,
                    "map gpa is not the VA offset plus the partition offset"
                );
                assert!(
                    earlier.iter().any(|e| matches!(e, PlanOp::PopulateVa { partition: q, range } if q == partition && range.start() == *va_offset && range.len() == *size)),
                    "map {gpa:#x}+{size:#x} in partition {partition} without populating its VA first"
                );
                let clash = p
                    .mapped
                    .iter()
                    .find(|(&s, &(len, _, _))| s < gpa + size && *gpa < s + len);
                assert!(
                    clash.is_none(),
                    "partition {partition}: map {gpa:#x}+{size:#x} over {clash:?}"
                );
                p.mapped.insert(*gpa, (*size, *writable, *exec));
            }
            PlanOp::Prefetch {
                partition,
                gpa,
                size,
            }
            | PlanOp::Pin {
                partition,
                gpa,
                size,
            } => {
                assert!(
                    earlier.iter().any(|e| matches!(e, PlanOp::Map { partition: q, gpa: g, size: s, .. } if q == partition && g == gpa && s == size)),
                    "{op:?} without its map"
                );
                if matches!(op, PlanOp::Pin { .. }) {
                    assert!(
                        partitions[*partition].pin,
                        "pin in partition {partition}, which does not pin"
                    );
                }
            }
            PlanOp::Unmap {
                partition,
                gpa,
                size,
            } => {
                let p = &mut partitions[*partition];
                let inside: Vec<u64> = p
                    .mapped
                    .iter()
                    .filter(|(&s, &(len, _, _))| s < gpa + size && *gpa < s + len)
                    .map(|(&s, &(len, _, _))| {
                        assert!(
                            s >= *gpa && s + len <= gpa + size,
                            "partition {partition}: unmap {gpa:#x}+{size:#x} cuts {s:#x}+{len:#x}"
                        );
                        s
                    })
                    .collect();
                for s in inside {
                    p.mapped.remove(&s);
                }
            }
        }
    }
}

/// I1, I2, the partitions and the mapping manager against the state, and the flat view.
fn check_state(state: &State, partitions: &[Partition], mapper: &MapperSet) {
    let regions: Vec<_> = state.regions().collect();
    let active: Vec<_> = state.active_regions().collect();
    for pair in active.windows(2) {
        assert!(
            pair[0].range().end() <= pair[1].range().start(),
            "I1: active {} and {} overlap",
            pair[0].range(),
            pair[1].range()
        );
    }
    for region in &regions {
        let beaten = regions.iter().any(|o| {
            o.id() != region.id()
                && o.params().is_some()
                && o.range().overlaps(&region.range())
                && (o.priority() > region.priority()
                    || (o.priority() == region.priority() && o.id() < region.id()))
        });
        assert_eq!(
            region.is_active(),
            region.params().is_some() && !beaten,
            "I2 for {:?}",
            region.inspect()
        );
    }
    for (index, p) in partitions.iter().enumerate() {
        let expected: BTreeMap<u64, (u64, bool, bool)> = active
            .iter()
            .map(|r| {
                let params = r.params().expect("active regions are mapped");
                (
                    r.range().start() + p.offset,
                    (r.range().len(), params.writable, params.executable),
                )
            })
            .collect();
        assert_eq!(
            p.mapped, expected,
            "partition {index} (offset {:#x}) does not hold exactly the active regions",
            p.offset
        );
    }
    let mut expected_mappings = MapperSet::new();
    for r in &active {
        let params = r.params().expect("active regions are mapped");
        for m in r.mappings() {
            let range = MemoryRange::new(
                r.range().start() + m.range_in_region.start()
                    ..r.range().start() + m.range_in_region.end(),
            );
            expected_mappings.insert(
                range.start(),
                ActiveMapping {
                    range,
                    object: m.object,
                    file_offset: m.file_offset,
                    writable: m.writable && params.writable,
                    dma_target: r.dma_target(),
                },
            );
        }
    }
    assert_eq!(
        mapper, &expected_mappings,
        "the mapping manager does not hold exactly the active regions' mappings"
    );

    let view = state.flat_view();
    for pair in view.windows(2) {
        assert!(
            pair[0].range.end() <= pair[1].range.start(),
            "flat view pieces overlap"
        );
    }
    for piece in &view {
        assert!(!piece.range.is_empty(), "empty flat view piece");
        let winner = active.iter().find(|r| r.range().contains(&piece.range));
        assert_eq!(
            piece.region.as_ref().map(|r| r.id),
            winner.map(|r| r.id()),
            "flat view winner at {}",
            piece.range
        );
        assert_eq!(
            state.active_region_at(piece.range.start()),
            winner.map(|r| r.id())
        );
    }
    for r in &active {
        if r.range().end() <= state.va_window_len() & !(PAGE - 1) {
            let covered: u64 = view
                .iter()
                .filter(|p| p.region.as_ref().is_some_and(|w| w.id == r.id()))
                .map(|p| p.range.len())
                .sum();
            assert_eq!(
                covered,
                r.range().len(),
                "flat view covers active {} only partly",
                r.range()
            );
        }
    }
}

pub fn check(data: &[u8]) {
    let mut u = Unstructured::new(data);
    // A small window (dense overlaps) or one reaching the top of the address space.
    let (window_len, window_pages, base) = match u.int_in_range(0u8..=3).unwrap_or(0) {
        0..=2 => {
            let pages = u.int_in_range(8u64..=96).unwrap_or(32);
            (pages * PAGE, pages, 0)
        }
        _ => (
            MemoryRange::MAX_ADDRESS,
            64,
            MemoryRange::MAX_ADDRESS - 64 * PAGE,
        ),
    };
    let mut state = State::new(window_len);
    let mut ids: Vec<RegionId> = Vec::new();
    let mut partitions: Vec<Partition> = Vec::new();
    let mut mapper = MapperSet::new();
    let mut serial = 0u32;
    let steps = u.int_in_range(1usize..=48).unwrap_or(1);
    for _ in 0..steps {
        let batch = if u.ratio(1u8, 6).unwrap_or(false) {
            u.int_in_range(2usize..=4).unwrap_or(2)
        } else {
            1
        };
        let changes: Vec<Change<u8>> = (0..batch)
            .filter_map(|_| change(&mut u, window_pages, base, &ids, &state, &mut serial))
            .collect();
        if changes.is_empty() {
            continue;
        }
        let rollback = u.ratio(1u8, 8).unwrap_or(false);
        let before = state.inspect();

        // A dry run of a single change changes nothing and plans what applying does.
        let dry = (changes.len() == 1).then(|| state.plan(changes[0].clone()));
        assert_eq!(state.inspect(), before, "a dry run changed the state");

        let mut new_ids = Vec::new();
        let mut new_partitions = Vec::new();
        let mut transaction = state.begin();
        let mut refused: Vec<RegionManagerError> = Vec::new();
        for change in changes.clone() {
            let plan_before = transaction.plan().clone();
            match transaction.apply(change) {
                Ok(ChangeOutcome::RegionAdded(id)) => new_ids.push(id),
                Ok(ChangeOutcome::PartitionAdded(index)) => new_partitions.push(index),
                Ok(_) => {}
                Err(error) => {
                    assert_eq!(
                        transaction.plan(),
                        &plan_before,
                        "a refused change altered the plan"
                    );
                    refused.push(error);
                }
            }
        }
        let plan = transaction.take_plan();
        if let Some(dry) = dry {
            match (&dry, refused.is_empty()) {
                (Ok(dry_plan), true) => assert_eq!(
                    dry_plan, &plan,
                    "the dry run planned something else than applying"
                ),
                (Err(_), false) => {}
                _ => panic!("dry run {dry:?} disagrees with applying (refused: {refused:?})"),
            }
        }
        if rollback {
            transaction.rollback();
            assert_eq!(state.inspect(), before, "rollback left changes behind");
        } else {
            transaction.commit();
            if changes.len() == 1 && !refused.is_empty() {
                assert_eq!(
                    state.inspect(),
                    before,
                    "a refused change altered the state"
                );
            }
            ids.extend(new_ids);
            for index in new_partitions {
                assert_eq!(index, partitions.len());
                let info = state.partitions()[index];
                partitions.push(Partition {
                    offset: info.offset,
                    pin: info.pin_mappings,
                    mapped: BTreeMap::new(),
                });
            }
            replay(&plan, &mut partitions, &mut mapper);
        }
        check_state(&state, &partitions, &mapper);
    }
}
