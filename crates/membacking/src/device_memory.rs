//! Device memory windows, without the OS and thread parts.
//!
//! A device gets a fixed-length window that it can place at a GPA (a priority-0, non-DMA region
//! named after the device) and into which it maps objects at run time. [`DeviceWindow`] holds
//! the window's record — its mappings (kept across placements) and its current placement — and
//! turns each device operation into region-manager changes through [`RegionCommands`], so the
//! same code applies a change (with the synchronous manager or, later, the manager's client)
//! and plans it (with a [`Transaction`](crate::region_manager::Transaction) on a copy of the
//! window).
//!
//! Errors follow the original: `std::io::Error` with kind `InvalidInput` for a bad range,
//! `Unsupported` for overlapping or partial operations (the original aborts), and kind `Other`
//! wrapping a [`RegionManagerError`](crate::region_manager::RegionManagerError) (for example an [`OverlapError`](crate::region_manager::OverlapError))
//! from the region manager; find it with `error.get_ref()` and `downcast_ref`.

use crate::region_manager::Change;
use crate::region_manager::ChangeOutcome;
use crate::region_manager::MapParams;
use crate::region_manager::NewRegion;
use crate::region_manager::RegionCommands;
use crate::region_manager::RegionId;
use crate::region_manager::RegionMapping;
use crate::region_manager::DEVICE_PRIORITY;
use crate::PAGE_SIZE;
use memory_range::MemoryRange;
use std::collections::BTreeMap;
use std::io;

/// One mapping recorded in a device window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceMapping<O> {
    /// The range inside the window.
    pub range: MemoryRange,
    /// The mapped object.
    pub object: O,
    /// The offset into the object.
    pub file_offset: u64,
    /// Whether the mapping may be written (further limited by the placement).
    pub writable: bool,
}

/// Where a window is placed.
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The region that shows the window.
    pub region: RegionId,
    /// The GPA of the window's start.
    pub gpa: u64,
    /// Whether the region is mapped writable.
    pub writable: bool,
}

/// A device memory window: its record of mappings and its placement.
#[derive(Debug, Clone)]
pub struct DeviceWindow<O> {
    name: String,
    len: u64,
    /// Start offset → (insertion sequence, mapping); mappings are non-empty and disjoint.
    mappings: BTreeMap<u64, (u64, DeviceMapping<O>)>,
    next_seq: u64,
    placement: Option<Placement>,
}

impl<O: Clone> DeviceWindow<O> {
    /// A window of `len` bytes named `debug_name`, unplaced, with no mappings. Never fails
    /// (`new_region` sends nothing to any actor).
    pub fn new(len: u64, debug_name: impl Into<String>) -> Self {
        Self {
            name: debug_name.into(),
            len,
            mappings: BTreeMap::new(),
            next_seq: 0,
            placement: None,
        }
    }

    /// The window's name (the name of its region).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The window's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the window has length zero (it can then never be placed).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The current placement, if placed.
    pub fn placement(&self) -> Option<Placement> {
        self.placement
    }

    /// Puts back `placement`, saved before a placement change whose transaction was rolled
    /// back (the region manager's side is then as it was before the change).
    pub(crate) fn restore_placement(&mut self, placement: Option<Placement>) {
        self.placement = placement;
    }

    /// The recorded mappings in insertion order.
    pub fn mappings(&self) -> Vec<&DeviceMapping<O>> {
        let mut mappings: Vec<_> = self.mappings.values().collect();
        mappings.sort_by_key(|(seq, _)| *seq);
        mappings.into_iter().map(|(_, mapping)| mapping).collect()
    }

    /// Validates `[offset, offset + len)` as a non-empty page-aligned range inside the window.
    pub fn window_range(&self, offset: u64, len: u64) -> io::Result<MemoryRange> {
        offset
            .checked_add(len)
            .and_then(|end| MemoryRange::try_new(offset..end).ok())
            .filter(|range| !range.is_empty() && range.end() <= self.len)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "invalid range {offset:#x}+{len:#x} for device memory window {} of length {:#x}",
                        self.name, self.len
                    ),
                )
            })
    }

    /// The recorded mappings overlapping `range`, by start.
    fn overlapping(&self, range: MemoryRange) -> Vec<MemoryRange> {
        let before = self
            .mappings
            .range(..range.start())
            .next_back()
            .map(|(_, (_, mapping))| mapping.range);
        before
            .into_iter()
            .chain(
                self.mappings
                    .range(range.start()..range.end())
                    .map(|(_, (_, mapping))| mapping.range),
            )
            .filter(|mapping| mapping.overlaps(&range))
            .collect()
    }

    /// `region.map(offset, object, file_offset, len, writable)`: records the mapping and, if
    /// the window is placed, adds it to the region. Errors change nothing.
    pub fn map(
        &mut self,
        commands: &mut impl RegionCommands<O>,
        offset: u64,
        object: O,
        file_offset: u64,
        len: u64,
        writable: bool,
    ) -> io::Result<()> {
        let range = self.window_range(offset, len)?;
        if !file_offset.is_multiple_of(PAGE_SIZE) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "file offset {file_offset:#x} of mapping {range} in device memory window {} is not a multiple of 4 KiB (0x1000): objects are mapped in whole pages, so start the mapping at a page of the object",
                    self.name
                ),
            ));
        }
        if let Some(existing) = self.overlapping(range).first() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "mapping {range} overlaps mapping {existing} in device memory window {}; replacing mappings is not supported",
                    self.name
                ),
            ));
        }
        let mapping = DeviceMapping {
            range,
            object,
            file_offset,
            writable,
        };
        if let Some(placement) = self.placement {
            commands
                .run(
                    Change::AddMapping(placement.region, region_mapping(&mapping)),
                    None,
                )
                .map_err(io::Error::other)?;
        }
        self.mappings
            .insert(range.start(), (self.next_seq, mapping));
        self.next_seq += 1;
        Ok(())
    }

    /// `region.unmap(offset, len)`: removes the recorded mappings inside the range (keeping
    /// all others — the original inverts this, D2) and, if placed, removes them from the
    /// region. A mapping only partly inside is `Unsupported`; errors change nothing.
    pub fn unmap(
        &mut self,
        commands: &mut impl RegionCommands<O>,
        offset: u64,
        len: u64,
    ) -> io::Result<()> {
        let range = self.window_range(offset, len)?;
        let overlapping = self.overlapping(range);
        if let Some(partial) = overlapping.iter().find(|mapping| !range.contains(mapping)) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "unmapping {range} would split mapping {partial} in device memory window {}; partial unmap is not supported",
                    self.name
                ),
            ));
        }
        if let Some(placement) = self.placement {
            commands
                .run(Change::RemoveMappings(placement.region, range), None)
                .map_err(io::Error::other)?;
        }
        for mapping in &overlapping {
            self.mappings.remove(&mapping.start());
        }
        Ok(())
    }

    /// `control.map_to_guest(gpa, writable)`: removes the current placement (from here on a
    /// failure leaves the window unplaced), then creates the region `[gpa, gpa + len)`, adds
    /// every recorded mapping and maps it `{writable, executable: true, prefetch: false}`.
    pub fn map_to_guest(
        &mut self,
        commands: &mut impl RegionCommands<O>,
        gpa: u64,
        writable: bool,
    ) -> io::Result<()> {
        self.unplace(commands)?;
        let range = gpa
            .checked_add(self.len)
            .and_then(|end| MemoryRange::try_new(gpa..end).ok())
            .filter(|range| !range.is_empty())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "invalid guest range {gpa:#x}+{:#x} for device memory window {}",
                        self.len, self.name
                    ),
                )
            })?;
        let new = NewRegion::new(self.name.clone(), range, DEVICE_PRIORITY, false);
        let outcome = commands
            .run(Change::AddRegion(new), None)
            .map_err(io::Error::other)?;
        let ChangeOutcome::RegionAdded(region) = outcome else {
            return Err(io::Error::other("region creation produced no region"));
        };
        self.placement = Some(Placement {
            region,
            gpa,
            writable,
        });
        for mapping in self.mappings() {
            commands
                .run(Change::AddMapping(region, region_mapping(mapping)), None)
                .map_err(io::Error::other)?;
        }
        commands
            .run(
                Change::MapRegion(
                    region,
                    MapParams {
                        writable,
                        executable: true,
                        prefetch: false,
                    },
                ),
                None,
            )
            .map_err(io::Error::other)?;
        Ok(())
    }

    /// `control.unmap_from_guest()`: removes the placement; the recorded mappings are kept.
    /// Infallible like the original (a gone or poisoned manager is ignored).
    pub fn unmap_from_guest(&mut self, commands: &mut impl RegionCommands<O>) {
        if let Err(error) = self.unplace(commands) {
            tracing::debug!(
                error = &error as &dyn std::error::Error,
                "removing a device window's region failed; ignored"
            );
        }
    }

    fn unplace(&mut self, commands: &mut impl RegionCommands<O>) -> io::Result<()> {
        if let Some(placement) = self.placement.take() {
            commands
                .run(Change::RemoveRegion(placement.region), None)
                .map_err(io::Error::other)?;
        }
        Ok(())
    }
}

fn region_mapping<O: Clone>(mapping: &DeviceMapping<O>) -> RegionMapping<O> {
    RegionMapping {
        range_in_region: mapping.range,
        object: mapping.object.clone(),
        file_offset: mapping.file_offset,
        writable: mapping.writable,
    }
}
