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
