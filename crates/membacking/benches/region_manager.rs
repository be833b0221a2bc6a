//! Criterion benchmark of the pure region-manager planner: planning one RAM visibility change
//! (unmap then map read-only) with 100, 1,000 and 10,000 other mapped regions. The plan must
//! cost O(log n + size of the change); the JSON line compares 10,000 regions with 100.

use criterion::{criterion_group, BenchmarkId, Criterion};
use membacking::region_manager::{
    Change, ChangeOutcome, MapParams, NewRegion, PartitionMapperInfo, RegionId, RegionManagerState,
    RAM_PRIORITY,
};
use memory_range::MemoryRange;
use std::time::{Duration, Instant};

const RW: MapParams = MapParams {
    writable: true,
    executable: true,
    prefetch: false,
};

/// A state with `count` mapped device-like regions, one partition, and a mapped RAM region.
fn state_with(count: u64) -> (RegionManagerState<u32>, RegionId) {
    let mut state = RegionManagerState::new(0x1000_0000_0000);
    let mut transaction = state.begin();
    for index in 0..count {
        let start = 0x1_0000_0000 + index * 0x2000;
        let ChangeOutcome::RegionAdded(id) = transaction
            .apply(Change::AddRegion(NewRegion::new(
                "dev",
                MemoryRange::new(start..start + 0x1000),
                0,
                false,
            )))
            .expect("disjoint regions")
        else {
            unreachable!("AddRegion adds a region")
        };
        transaction.apply(Change::MapRegion(id, RW)).expect("map");
    }
    transaction
        .apply(Change::AddPartition(PartitionMapperInfo {
            offset: 0,
            pin_mappings: false,
        }))
        .expect("partition");
    let ChangeOutcome::RegionAdded(ram) = transaction
        .apply(Change::AddRegion(NewRegion::new(
            "ram",
            MemoryRange::new(0..0x10_0000),
            RAM_PRIORITY,
            true,
        )))
        .expect("ram")
    else {
        unreachable!("AddRegion adds a region")
    };
    transaction
        .apply(Change::MapRegion(ram, RW))
        .expect("map ram");
    transaction.commit();
    (state, ram)
}

fn plan_visibility_change(state: &mut RegionManagerState<u32>, ram: RegionId) {
    let read_only = MapParams {
        writable: false,
        ..RW
    };
    let plan = state
        .plan(Change::MapRegion(ram, read_only))
        .expect("a valid change");
    std::hint::black_box(plan);
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("region_manager_plan");
    for count in [100u64, 1_000, 10_000] {
        let (mut state, ram) = state_with(count);
        group.bench_with_input(BenchmarkId::from_parameter(count), &count, |b, _| {
            b.iter(|| plan_visibility_change(&mut state, ram))
        });
    }
    group.finish();
}

/// Nanoseconds per planned change, best of several timed loops (for the JSON line).
fn time_per_plan(count: u64) -> f64 {
    let (mut state, ram) = state_with(count);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let iterations = 20_000;
        let start = Instant::now();
        for _ in 0..iterations {
            plan_visibility_change(&mut state, ram);
        }
        best = best.min(start.elapsed().as_nanos() as f64 / iterations as f64);
    }
    best
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = bench
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    let small = time_per_plan(100);
    let large = time_per_plan(10_000);
    let ratio = large / small;
    println!(
        "{{\"name\":\"region manager plan of one change, 10000 regions (Rust)\",\"value\":{large:.1},\"unit\":\"ns\",\"baseline\":\"the same with 100 regions\",\"baselineValue\":{small:.1},\"ratio\":{ratio:.3},\"target\":\"<= 2\",\"met\":{}}}",
        ratio <= 2.0
    );
}
