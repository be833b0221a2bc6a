//! RAM regions and their visibility.
//!
//! The builder creates one region named `ram` (priority 255, DMA target) per RAM range, backs it
//! with one mapping of the guest-RAM object at a dense file offset, and maps it read-write and
//! executable. [`RamRegions`] remembers those regions so that a visibility change can name one
//! by its exact range: `ReadWrite` and `ReadOnly` map it (without prefetch), `Unmapped` unmaps it,
//! letting device memory below surface.

use crate::region_manager::Change;
use crate::region_manager::ChangeOutcome;
use crate::region_manager::InvalidRamRegion;
use crate::region_manager::MapParams;
use crate::region_manager::NewRegion;
use crate::region_manager::RegionCommands;
use crate::region_manager::RegionId;
use crate::region_manager::RegionManagerError;
use crate::region_manager::RegionMapping;
use crate::region_manager::RAM_PRIORITY;
use memory_range::MemoryRange;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// How a RAM region appears to the guest.
#[derive(Debug, Copy, Clone, PartialEq, Eq, Hash)]
pub enum RamVisibility {
    /// Not mapped: accesses reach device memory below, or exit.
    Unmapped,
    /// Mapped read-only (and executable); the VMM's own VA mapping becomes read-only too.
    ReadOnly,
    /// Mapped read-write and executable.
    ReadWrite,
}

impl RamVisibility {
    /// The map parameters this visibility maps the region with (`None` = unmap).
    pub fn map_params(self) -> Option<MapParams> {
        match self {
            RamVisibility::Unmapped => None,
            RamVisibility::ReadOnly => Some(MapParams {
                writable: false,
                executable: true,
                prefetch: false,
            }),
            RamVisibility::ReadWrite => Some(MapParams {
                writable: true,
                executable: true,
                prefetch: false,
            }),
        }
    }

    /// The name (`"Unmapped"`, `"ReadOnly"`, `"ReadWrite"`).
    pub fn as_str(self) -> &'static str {
        match self {
            RamVisibility::Unmapped => "Unmapped",
            RamVisibility::ReadOnly => "ReadOnly",
            RamVisibility::ReadWrite => "ReadWrite",
        }
    }
}

impl fmt::Display for RamVisibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`RamVisibility`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown RAM visibility {0:?} (expected Unmapped, ReadOnly or ReadWrite)")]
pub struct ParseRamVisibilityError(pub String);

impl FromStr for RamVisibility {
    type Err = ParseRamVisibilityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Unmapped" => Ok(RamVisibility::Unmapped),
            "ReadOnly" => Ok(RamVisibility::ReadOnly),
            "ReadWrite" => Ok(RamVisibility::ReadWrite),
            other => Err(ParseRamVisibilityError(other.to_owned())),
        }
    }
}

/// The description of an x86 legacy RAM piece, for plan reasons (`"VGA window"`, …), or
/// `None` for a range that is not one of the pieces.
pub fn x86_legacy_description(range: MemoryRange) -> Option<&'static str> {
    match (range.start(), range.end()) {
        (0, 0xa0000) => Some("conventional memory"),
        (0xa0000, 0xc0000) => Some("VGA window"),
        (start, end) if start >= 0xc0000 && end <= 0xf0000 && end - start == 0x4000 => {
            Some("PAM area")
        }
        (0xf0000, 0x10_0000) => Some("system BIOS area"),
        _ => None,
    }
}

/// One RAM region to create: its range and the offset of its backing in the RAM object.
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub struct RamRegionSpec {
    /// The GPA range.
    pub range: MemoryRange,
    /// The offset into the RAM object.
    pub file_offset: u64,
}

/// RAM region specs sorted for lookups by GPA and by backing offset, in O(log regions) each:
/// snapshots, migrations and lazy restores look regions up per dirty run, per piece of work or
/// per fault, which a scan of every region made quadratic in layouts with thousands of RAM
/// ranges. The regions are disjoint in GPA and in backing offset, as a manager creates them.
#[derive(Debug, Clone, Default)]
pub(crate) struct SpecIndex {
    by_gpa: Vec<RamRegionSpec>,
    by_offset: Vec<RamRegionSpec>,
}

impl SpecIndex {
    pub(crate) fn new(specs: &[RamRegionSpec]) -> Self {
        let mut by_gpa = specs.to_vec();
        by_gpa.sort_unstable_by_key(|spec| spec.range.start());
        let mut by_offset = specs.to_vec();
        by_offset.sort_unstable_by_key(|spec| spec.file_offset);
        Self { by_gpa, by_offset }
    }

    /// The regions whose GPA range overlaps `[start, end)`, in GPA order.
    pub(crate) fn overlapping(&self, start: u64, end: u64) -> &[RamRegionSpec] {
        let from = self
            .by_gpa
            .partition_point(|spec| spec.range.end() <= start);
        let count = self.by_gpa[from..].partition_point(|spec| spec.range.start() < end);
        &self.by_gpa[from..from + count]
    }

    /// The region holding `gpa`.
    pub(crate) fn at_gpa(&self, gpa: u64) -> Option<&RamRegionSpec> {
        self.overlapping(gpa, gpa.saturating_add(1))
            .first()
            .filter(|spec| spec.range.contains_addr(gpa))
    }

    /// The first region, in backing-offset order, whose backing ends after `offset`: the one
    /// holding `offset`, or else the next one.
    pub(crate) fn backing_after(&self, offset: u64) -> Option<&RamRegionSpec> {
        let index = self
            .by_offset
            .partition_point(|spec| spec.file_offset + spec.range.len() <= offset);
        self.by_offset.get(index)
    }

    /// The region whose backing holds `offset`.
    pub(crate) fn at_offset(&self, offset: u64) -> Option<&RamRegionSpec> {
        self.backing_after(offset)
            .filter(|spec| spec.file_offset <= offset)
    }
}

/// The RAM regions of a manager, found by exact range.
#[derive(Debug, Clone, Default)]
pub struct RamRegions {
    list: Vec<(MemoryRange, RegionId)>,
    by_range: BTreeMap<MemoryRange, RegionId>,
}

impl RamRegions {
    /// No RAM regions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a RAM region (list order). For equal ranges the first one added is the one found.
    pub fn push(&mut self, range: MemoryRange, id: RegionId) {
        self.list.push((range, id));
        self.by_range.entry(range).or_insert(id);
    }

    /// The RAM regions in list order.
    pub fn iter(&self) -> impl Iterator<Item = (MemoryRange, RegionId)> + '_ {
        self.list.iter().copied()
    }

    /// The RAM region whose range equals `range` exactly.
    pub fn find(&self, range: MemoryRange) -> Result<RegionId, InvalidRamRegion> {
        self.by_range
            .get(&range)
            .copied()
            .ok_or(InvalidRamRegion(range))
    }

    /// Whether any RAM region overlaps `range` (RAM regions are disjoint).
    pub fn overlaps(&self, range: MemoryRange) -> bool {
        let before = self
            .by_range
            .range(..MemoryRange::new(range.start()..range.start()))
            .next_back();
        let from = self
            .by_range
            .range(MemoryRange::new(range.start()..range.start())..)
            .next();
        before
            .into_iter()
            .chain(from)
            .any(|(ram, _)| ram.overlaps(&range))
    }

    /// Creates the RAM regions like the builder: for each spec, a region
    /// `ram` (priority 255, DMA target, described for x86 legacy pieces), a writable mapping
    /// of `object` over the whole region at the spec's file offset (skipped when `object` is
    /// `None`, i.e. private memory), and a map with `{writable, executable, prefetch}`.
    pub fn create<O: Clone>(
        commands: &mut impl RegionCommands<O>,
        specs: &[RamRegionSpec],
        object: Option<&O>,
        prefetch: bool,
    ) -> Result<Self, RegionManagerError> {
        let mut regions = Self::new();
        for spec in specs {
            let mut new = NewRegion::new("ram", spec.range, RAM_PRIORITY, true);
            if let Some(description) = x86_legacy_description(spec.range) {
                new = new.with_description(description);
            }
            let ChangeOutcome::RegionAdded(id) = commands.run(Change::AddRegion(new), None)? else {
                continue;
            };
            if let Some(object) = object {
                commands.run(
                    Change::AddMapping(
                        id,
                        RegionMapping {
                            range_in_region: MemoryRange::new(0..spec.range.len()),
                            object: object.clone(),
                            file_offset: spec.file_offset,
                            writable: true,
                        },
                    ),
                    None,
                )?;
            }
            commands.run(
                Change::MapRegion(
                    id,
                    MapParams {
                        writable: true,
                        executable: true,
                        prefetch,
                    },
                ),
                None,
            )?;
            regions.push(spec.range, id);
        }
        Ok(regions)
    }

    /// The change a visibility request makes, with its cause (`"RAM visibility Unmapped"`).
    pub fn change_for<O>(
        &self,
        range: MemoryRange,
        visibility: RamVisibility,
    ) -> Result<(Change<O>, String), InvalidRamRegion> {
        let id = self.find(range)?;
        let change = match visibility.map_params() {
            Some(params) => Change::MapRegion(id, params),
            None => Change::UnmapRegion(id),
        };
        Ok((change, format!("RAM visibility {visibility}")))
    }

    /// `set_ram_visibility(range, visibility)`.
    pub fn set_ram_visibility<O>(
        &self,
        commands: &mut impl RegionCommands<O>,
        range: MemoryRange,
        visibility: RamVisibility,
    ) -> Result<(), RegionManagerError> {
        let (change, cause) = self.change_for(range, visibility)?;
        commands.run(change, Some(&cause)).map(drop)
    }
}

#[cfg(test)]
mod spec_index_tests {
    use super::*;

    fn spec(start: u64, end: u64, file_offset: u64) -> RamRegionSpec {
        RamRegionSpec {
            range: MemoryRange::new(start..end),
            file_offset,
        }
    }

    #[test]
    fn lookups_match_a_scan_of_every_region() {
        // Out of order, with holes in GPA and a last region whose backing comes first (as a
        // VTL2 range may), plus 1,000 one-page regions.
        let mut specs = vec![
            spec(0x10_0000, 0x20_0000, 0x1000),
            spec(0x1000, 0x2000, 0),
            spec(0x8000_0000, 0x8000_4000, 0x10_1000),
        ];
        for i in 0..1000u64 {
            let gpa = 0x1_0000_0000 + i * 0x2000;
            specs.push(spec(gpa, gpa + 0x1000, 0x10_5000 + i * 0x1000));
        }
        let index = SpecIndex::new(&specs);
        let mut probes: Vec<u64> = vec![0, 0xfff, 0x1000, 0x1fff, 0x2000, 0x10_0000, 0x1f_ffff];
        probes.extend([0x20_0000, 0x8000_0000, 0x8000_3fff, 0x8000_4000, u64::MAX]);
        probes.extend((0..2100u64).map(|i| 0x1_0000_0000 + i * 0x1000 - 1));
        probes.extend((0..1200u64).map(|i| i * 0x1000 + 0xfff));
        for &probe in &probes {
            let by_gpa = specs.iter().find(|s| s.range.contains_addr(probe));
            assert_eq!(index.at_gpa(probe), by_gpa, "gpa {probe:#x}");
            let end = |s: &RamRegionSpec| s.file_offset + s.range.len();
            let by_offset = specs
                .iter()
                .find(|s| s.file_offset <= probe && probe < end(s));
            assert_eq!(index.at_offset(probe), by_offset, "offset {probe:#x}");
            let after = specs
                .iter()
                .filter(|s| end(s) > probe)
                .min_by_key(|s| end(s));
            assert_eq!(index.backing_after(probe), after, "after {probe:#x}");
            let span = probe.saturating_add(0x3000);
            let mut overlapping: Vec<RamRegionSpec> = specs
                .iter()
                .filter(|s| s.range.start() < span && probe < s.range.end())
                .copied()
                .collect();
            overlapping.sort_by_key(|s| s.range.start());
            assert_eq!(
                index.overlapping(probe, span),
                overlapping,
                "{probe:#x}+0x3000"
            );
        }
        assert_eq!(index.overlapping(0, u64::MAX).len(), specs.len());
        assert!(SpecIndex::new(&[]).at_gpa(0).is_none());
    }
}
