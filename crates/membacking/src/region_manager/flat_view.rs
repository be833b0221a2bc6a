//! The flat view: what the guest sees, as an ordered list of non-overlapping GPA pieces.
//!
//! Each piece carries the region that wins there (the active one), the permissions the
//! partitions map it with, the backing object and offset of the mapping that covers it (none in
//! a hole of a device window), and the regions present there but hidden (lower priority,
//! unmapped or blocked). Pieces are split at every region boundary and at every mapping
//! boundary of the winning region; addresses covered by no region at all are left out.

use super::state::RegionManagerState;
use super::types::Region;
use super::types::RegionId;
use super::types::RegionRef;
use memory_range::MemoryRange;
use std::cmp::Reverse;

/// What backs a piece of the flat view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlatBacking<O> {
    /// The mapped object.
    pub object: O,
    /// The object offset of the piece's first byte.
    pub file_offset: u64,
    /// Effective VA writability (mapping AND region).
    pub writable: bool,
}

/// One piece of the flat view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlatEntry<O> {
    /// The GPA range of the piece.
    pub range: MemoryRange,
    /// The active region here, or `None` where every region present is hidden.
    pub region: Option<RegionRef>,
    /// Writable in partitions (the winner's parameters; false without a winner).
    pub writable: bool,
    /// Executable in partitions (the winner's parameters; false without a winner).
    pub executable: bool,
    /// The backing of the winner's mapping here; `None` without a winner or in a hole.
    pub backing: Option<FlatBacking<O>>,
    /// The other regions present here, outermost (highest priority) first.
    pub hidden: Vec<RegionRef>,
}

impl<O: Clone> RegionManagerState<O> {
    /// The whole flat view, in address order.
    pub fn flat_view(&self) -> Vec<FlatEntry<O>> {
        self.flat_view_range(MemoryRange::new(0..self.va_window_len & !0xfff))
    }

    /// The flat view clipped to `span`, in address order. Costs O(log n + k log k) for the k
    /// regions overlapping `span` (plus the winners' mappings there).
    pub fn flat_view_range(&self, span: MemoryRange) -> Vec<FlatEntry<O>> {
        if span.is_empty() {
            return Vec::new();
        }
        let (ids, _) = self.find_overlapping_regions(span);
        let mut regions: Vec<&Region<O>> = ids.iter().map(|id| &self.regions[id]).collect();
        // Outer regions first: by start, then longer first, then higher priority, then older.
        regions.sort_by_key(|region| {
            (
                region.range.start(),
                Reverse(region.range.end()),
                Reverse(region.priority),
                region.id,
            )
        });

        let clip = |address: u64| address.clamp(span.start(), span.end());
        let mut boundaries = vec![span.start(), span.end()];
        for region in &regions {
            boundaries.push(clip(region.range.start()));
            boundaries.push(clip(region.range.end()));
            if region.active {
                let inside = MemoryRange::new(
                    clip(region.range.start()) - region.range.start()
                        ..clip(region.range.end()) - region.range.start(),
                );
                for seq in region.mappings.overlapping(inside) {
                    let mapping = &region.mappings.by_seq[&seq];
                    boundaries.push(clip(region.range.start() + mapping.range_in_region.start()));
                    boundaries.push(clip(region.range.start() + mapping.range_in_region.end()));
                }
            }
        }
        boundaries.sort_unstable();
        boundaries.dedup();

        let mut entries = Vec::new();
        let mut open: Vec<&Region<O>> = Vec::new();
        let mut next = 0;
        for pair in boundaries.windows(2) {
            let (start, end) = (pair[0], pair[1]);
            open.retain(|region| region.range.end() > start);
            while next < regions.len() && regions[next].range.start() <= start {
                if regions[next].range.end() > start {
                    open.push(regions[next]);
                }
                next += 1;
            }
            if open.is_empty() {
                continue;
            }
            let winner = open.iter().find(|region| region.active).copied();
            let hidden = open
                .iter()
                .filter(|region| Some(region.id) != winner.map(|winner| winner.id))
                .map(|region| region.to_ref())
                .collect();
            let params = winner.and_then(|winner| winner.params);
            entries.push(FlatEntry {
                range: MemoryRange::new(start..end),
                region: winner.map(|winner| winner.to_ref()),
                writable: params.is_some_and(|params| params.writable),
                executable: params.is_some_and(|params| params.executable),
                backing: winner.and_then(|winner| backing_at(winner, start)),
                hidden,
            });
        }
        entries
    }

    /// The active region covering `gpa`, if any.
    pub fn active_region_at(&self, gpa: u64) -> Option<RegionId> {
        let (_, &id) = self.active.range(..=gpa).next_back()?;
        self.regions[&id].range.contains_addr(gpa).then_some(id)
    }
}

/// The backing of `region`'s mapping covering `gpa`.
fn backing_at<O: Clone>(region: &Region<O>, gpa: u64) -> Option<FlatBacking<O>> {
    let offset = gpa - region.range.start();
    let (_, seq) = region.mappings.by_start.range(..=offset).next_back()?;
    let mapping = &region.mappings.by_seq[seq];
    if !mapping.range_in_region.contains_addr(offset) {
        return None;
    }
    let writable = region.params.is_some_and(|params| params.writable);
    Some(FlatBacking {
        object: mapping.object.clone(),
        file_offset: mapping.file_offset + (offset - mapping.range_in_region.start()),
        writable: mapping.writable && writable,
    })
}
