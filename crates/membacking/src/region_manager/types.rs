//! The data the region manager keeps: regions, their map parameters and mappings, and the
//! partition mappers attached to it.

use memory_range::MemoryRange;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// The priority of guest RAM regions: RAM wins over everything.
pub const RAM_PRIORITY: u8 = 255;
/// The priority of device memory windows: visible only where no RAM is mapped.
pub const DEVICE_PRIORITY: u8 = 0;

/// Identifies a region. Ids start at 1, increase by one per created region and are never
/// reused; list order (creation order) is id order.
#[derive(Debug, Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct RegionId(pub(crate) u64);

impl RegionId {
    /// Smaller than every real id (used as a lower bound in index queries).
    pub(crate) const MIN: RegionId = RegionId(0);
    /// Larger than every real id (used as an upper bound in index queries).
    pub(crate) const MAX: RegionId = RegionId(u64::MAX);

    /// The numeric id.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// How a mapped region appears in partitions: writable, executable, and whether partitions are
/// asked to prefetch it when it is mapped.
#[derive(Debug, Copy, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct MapParams {
    /// Writable in partitions; also limits the writability of the region's VA mappings.
    pub writable: bool,
    /// Executable in partitions.
    pub executable: bool,
    /// Ask partitions to prefetch the region after mapping it.
    pub prefetch: bool,
}

impl fmt::Display for MapParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.writable { "rw" } else { "r-" })?;
        f.write_str(if self.executable { "x" } else { "-" })?;
        if self.prefetch {
            f.write_str(" prefetch")?;
        }
        Ok(())
    }
}

/// A mapping inside a region: `range_in_region` (offsets from the region's start) shows the
/// object's bytes from `file_offset` on.
///
/// `O` is the mappable object (an OS memory object handle in the manager; anything cloneable in
/// tests). The planner never looks inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionMapping<O> {
    /// Where the mapping lies, relative to the region's start.
    pub range_in_region: MemoryRange,
    /// The object whose bytes are shown.
    pub object: O,
    /// The offset into the object of the mapping's first byte.
    pub file_offset: u64,
    /// Whether the mapping may be written (further limited by the region's parameters).
    pub writable: bool,
}

/// A mapping of an active region as the mapping manager holds it: absolute GPA range, effective
/// writability (mapping AND region), and whether DMA consumers may see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveMapping<O> {
    /// The absolute GPA range (equal to the VA window offsets).
    pub range: MemoryRange,
    /// The object whose bytes are shown.
    pub object: O,
    /// The offset into the object of the mapping's first byte.
    pub file_offset: u64,
    /// Effective writability: the mapping's flag AND the region's `writable` parameter.
    pub writable: bool,
    /// Copied from the region: whether the mapping is reported to DMA-sharing consumers.
    pub dma_target: bool,
}

/// The arguments of a region creation (`AddRegion(name, range, priority, dma_target)`), plus an
/// optional human description used only in plan reasons (e.g. `"VGA window"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRegion {
    /// The region's name (`"ram"` for RAM, the device's debug name for device windows).
    pub name: String,
    /// The GPA range; must be non-empty and inside the VA window.
    pub range: MemoryRange,
    /// Higher wins; see [`RAM_PRIORITY`] and [`DEVICE_PRIORITY`].
    pub priority: u8,
    /// Whether the region's mappings are reported to DMA-sharing consumers.
    pub dma_target: bool,
    /// A description for plan reasons; the name is used when absent.
    pub description: Option<String>,
}

impl NewRegion {
    /// A region with no description.
    pub fn new(
        name: impl Into<String>,
        range: MemoryRange,
        priority: u8,
        dma_target: bool,
    ) -> Self {
        Self {
            name: name.into(),
            range,
            priority,
            dma_target,
            description: None,
        }
    }

    /// Sets the description used in plan reasons.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }
}

/// A region's mappings, kept in insertion order with an index by start offset.
#[derive(Debug, Clone)]
pub(crate) struct Mappings<O> {
    /// Insertion sequence number → mapping.
    pub(crate) by_seq: BTreeMap<u64, RegionMapping<O>>,
    /// Start offset in the region → insertion sequence number. Mappings are non-empty and
    /// pairwise disjoint, so starts are unique.
    pub(crate) by_start: BTreeMap<u64, u64>,
    /// The sequence number the next mapping gets.
    pub(crate) next_seq: u64,
}

impl<O> Default for Mappings<O> {
    fn default() -> Self {
        Self {
            by_seq: BTreeMap::new(),
            by_start: BTreeMap::new(),
            next_seq: 0,
        }
    }
}

impl<O> Mappings<O> {
    /// Sequence numbers of the mappings overlapping `range` (offsets in the region), by start.
    pub(crate) fn overlapping(&self, range: MemoryRange) -> Vec<u64> {
        let mut found = Vec::new();
        if let Some((_, &seq)) = self.by_start.range(..range.start()).next_back() {
            if self.by_seq[&seq].range_in_region.overlaps(&range) {
                found.push(seq);
            }
        }
        found.extend(
            self.by_start
                .range(range.start()..range.end())
                .map(|(_, &seq)| seq)
                .filter(|seq| self.by_seq[seq].range_in_region.overlaps(&range)),
        );
        found
    }
}

/// A region: a fixed GPA range with a name, priority, DMA flag, optional map parameters
/// (absent = unmapped), an active flag and its mappings.
#[derive(Debug, Clone)]
pub struct Region<O> {
    pub(crate) id: RegionId,
    pub(crate) name: Arc<str>,
    pub(crate) description: Option<Arc<str>>,
    pub(crate) range: MemoryRange,
    pub(crate) priority: u8,
    pub(crate) dma_target: bool,
    pub(crate) params: Option<MapParams>,
    pub(crate) active: bool,
    pub(crate) mappings: Mappings<O>,
}

impl<O> Region<O> {
    /// The region's id.
    pub fn id(&self) -> RegionId {
        self.id
    }

    /// The region's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The description given at creation, if any.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The GPA range.
    pub fn range(&self) -> MemoryRange {
        self.range
    }

    /// The priority.
    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// Whether the region's mappings are reported to DMA consumers.
    pub fn dma_target(&self) -> bool {
        self.dma_target
    }

    /// The map parameters, or `None` when the region is unmapped.
    pub fn params(&self) -> Option<MapParams> {
        self.params
    }

    /// Whether the region is active (visible to partitions and VA mappers).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The mappings in insertion order.
    pub fn mappings(&self) -> impl Iterator<Item = &RegionMapping<O>> + '_ {
        self.mappings.by_seq.values()
    }

    /// A short reference (id and name) for views and reasons.
    pub fn to_ref(&self) -> RegionRef {
        RegionRef {
            id: self.id,
            name: self.name.clone(),
        }
    }

    /// How the region is named in plan reasons: its description (or name) and range, e.g.
    /// `VGA window 0xa0000-0xc0000`.
    pub fn display_name(&self) -> String {
        format!(
            "{} {}",
            self.description.as_deref().unwrap_or(&self.name),
            self.range
        )
    }
}

/// A region's id and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionRef {
    /// The region's id.
    pub id: RegionId,
    /// The region's name.
    pub name: Arc<str>,
}

/// A partition mapper as the region manager sees it: the GPA offset at which it shows the
/// regions (0, or the VTL0 alias offset) and whether it pins what it maps.
#[derive(Debug, Copy, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionMapperInfo {
    /// Added to every region's GPA when mapping into this partition.
    pub offset: u64,
    /// Pin every range mapped into this partition.
    pub pin_mappings: bool,
}

/// The region manager's part of the inspect snapshot: regions in list order and
/// partition mappers in registration order. Serializes with the upstream snake_case names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegionManagerInspect {
    /// The regions, in list order.
    pub regions: Vec<RegionInspect>,
    /// The partition mappers, in registration order.
    pub partitions: Vec<PartitionMapperInfo>,
}

/// One region as the inspect snapshot shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegionInspect {
    /// The region's id.
    pub id: RegionId,
    /// The region's name.
    pub name: String,
    /// The GPA range.
    #[serde(serialize_with = "serialize_range")]
    pub range: MemoryRange,
    /// The priority.
    pub priority: u8,
    /// The DMA-target flag.
    pub dma_target: bool,
    /// The map parameters, `None` when unmapped.
    pub map_params: Option<MapParams>,
    /// Whether the region is active.
    pub active: bool,
    /// The mappings, in insertion order.
    pub mappings: Vec<MappingInspect>,
}

/// One mapping of a region in the inspect snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MappingInspect {
    /// The mapping's range relative to the region's start.
    #[serde(serialize_with = "serialize_range")]
    pub range_in_region: MemoryRange,
    /// The offset into the mapped object.
    pub file_offset: u64,
    /// The mapping's own writability flag.
    pub writable: bool,
}

impl<O> Region<O> {
    /// The region as the inspect snapshot shows it.
    pub fn inspect(&self) -> RegionInspect {
        RegionInspect {
            id: self.id,
            name: self.name.to_string(),
            range: self.range,
            priority: self.priority,
            dma_target: self.dma_target,
            map_params: self.params,
            active: self.active,
            mappings: self
                .mappings()
                .map(|mapping| MappingInspect {
                    range_in_region: mapping.range_in_region,
                    file_offset: mapping.file_offset,
                    writable: mapping.writable,
                })
                .collect(),
        }
    }
}

/// Serializes a range as `{"start": …, "end": …}`.
pub(crate) fn serialize_range<S: serde::Serializer>(
    range: &MemoryRange,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut state = serializer.serialize_struct("MemoryRange", 2)?;
    state.serialize_field("start", &range.start())?;
    state.serialize_field("end", &range.end())?;
    state.end()
}
