//! Binding of `vm_topology`: `MemoryLayout` construction, accessors, address probing and the
//! x86 legacy RAM split.
//!
//! A layout is immutable, so the TypeScript class asks for every accessor once (`describe`) and
//! keeps the values; only `probeAddress` and the split call back in.

use crate::args::{flatten, range_arg, range_list, U64};
use crate::errors::{coded, JsError};
use napi::bindgen_prelude::{BigUint64Array, Uint32Array};
use napi_derive::napi;
use vm_topology::memory::{AddressType, Error as LayoutError, MemoryLayout, MemoryRangeWithNode};
use vm_topology::x86_legacy::x86_legacy_ram_ranges;

/// The stable code of a layout error: `ERR_` plus the variant name.
fn layout_error(err: LayoutError) -> crate::errors::JsError {
    let code = match err {
        LayoutError::BadSize => "ERR_BAD_SIZE",
        LayoutError::BadMmioGaps => "ERR_BAD_MMIO_GAPS",
        LayoutError::BadMemoryRanges => "ERR_BAD_MEMORY_RANGES",
        LayoutError::Vtl2RangeBeforeEndOfRam => "ERR_VTL2_RANGE_BEFORE_END_OF_RAM",
    };
    coded(code, err.to_string())
}

/// Every accessor of a layout (u64 values as bigints, absent values as `null`).
#[napi(object, object_from_js = false)]
pub struct LayoutDescription {
    /// RAM ranges as `[start, end, …]`.
    pub ram: BigUint64Array,
    /// The vnode of each RAM range.
    pub vnodes: Uint32Array,
    /// MMIO gaps as `[start, end, …]`.
    pub mmio: BigUint64Array,
    /// The VTL2 range as `[start, end]`, or `null`.
    pub vtl2_range: Option<BigUint64Array>,
    pub ram_size: u64,
    pub end_of_ram: u64,
    pub ram_below_4gb: u64,
    pub ram_above_4gb: u64,
    pub ram_above_high_mmio: Option<u64>,
    pub max_ram_below_4gb: Option<u64>,
    /// `null` where the core accessor would panic (no MMIO gaps).
    pub end_of_ram_or_mmio: Option<u64>,
}

/// A built `MemoryLayout`.
#[napi]
pub struct NativeLayout {
    inner: MemoryLayout,
}

impl NativeLayout {
    /// The core layout (used by other bindings, e.g. the registrar).
    pub fn layout(&self) -> &MemoryLayout {
        &self.inner
    }
}

#[napi]
impl NativeLayout {
    /// `MemoryLayout::new(ram_size, gaps, vtl2_range)`.
    #[napi(factory)]
    pub fn create(
        ram_size: U64,
        gaps: BigUint64Array,
        vtl2_range: Option<BigUint64Array>,
    ) -> Result<Self, JsError> {
        let ram_size = ram_size.0;
        let gaps = range_list(&gaps, "gaps")?;
        let vtl2 = match vtl2_range {
            Some(bounds) if bounds.len() == 2 => {
                Some(range_arg(bounds[0], bounds[1], "vtl2Range")?)
            }
            Some(_) => return Err(crate::errors::invalid_arg("vtl2Range must be one range")),
            None => None,
        };
        crate::errors::guard(|| {
            MemoryLayout::new(ram_size, &gaps, vtl2)
                .map(|inner| NativeLayout { inner })
                .map_err(layout_error)
        })
    }

    /// `MemoryLayout::new_from_ranges(memory, gaps)`.
    #[napi(factory)]
    pub fn from_ranges(
        memory: BigUint64Array,
        vnodes: Uint32Array,
        gaps: BigUint64Array,
    ) -> Result<Self, JsError> {
        let ranges = range_list(&memory, "memory")?;
        if vnodes.len() != ranges.len() {
            return Err(crate::errors::invalid_arg(
                "one vnode per memory range is required",
            ));
        }
        let memory: Vec<MemoryRangeWithNode> = ranges
            .into_iter()
            .zip(vnodes.iter().copied())
            .map(|(range, vnode)| MemoryRangeWithNode { range, vnode })
            .collect();
        let gaps = range_list(&gaps, "gaps")?;
        crate::errors::guard(|| {
            MemoryLayout::new_from_ranges(&memory, &gaps)
                .map(|inner| NativeLayout { inner })
                .map_err(layout_error)
        })
    }

    /// Every accessor's value.
    #[napi]
    pub fn describe(&self) -> LayoutDescription {
        let layout = &self.inner;
        LayoutDescription {
            ram: flatten(layout.ram().iter().map(|r| r.range)),
            vnodes: Uint32Array::new(layout.ram().iter().map(|r| r.vnode).collect()),
            mmio: flatten(layout.mmio().iter().copied()),
            vtl2_range: layout.vtl2_range().map(|r| flatten([r])),
            ram_size: layout.ram_size(),
            end_of_ram: layout.end_of_ram(),
            ram_below_4gb: layout.ram_below_4gb(),
            ram_above_4gb: layout.ram_above_4gb(),
            ram_above_high_mmio: layout.ram_above_high_mmio(),
            max_ram_below_4gb: layout.max_ram_below_4gb(),
            end_of_ram_or_mmio: layout.end_of_ram_or_mmio_checked(),
        }
    }

    /// `probe_address`: `"Ram"`, `"Mmio"` or `null`.
    #[napi]
    pub fn probe_address(&self, address: U64) -> Result<Option<&'static str>, JsError> {
        let address = address.0;
        Ok(self.inner.probe_address(address).map(|kind| match kind {
            AddressType::Ram => "Ram",
            AddressType::Mmio => "Mmio",
        }))
    }

    /// The RAM regions the builder creates, as `[start, end, fileOffset, …]`.
    #[napi]
    pub fn x86_legacy_ram_ranges(
        &self,
        x86_legacy_support: bool,
    ) -> Result<BigUint64Array, JsError> {
        let regions = x86_legacy_ram_ranges(&self.inner, x86_legacy_support)
            .map_err(|err| coded("ERR_INVALID_RAM_FOR_X86", err.to_string()))?;
        let flat: Vec<u64> = regions
            .iter()
            .flat_map(|region| [region.range.start(), region.range.end(), region.file_offset])
            .collect();
        Ok(BigUint64Array::new(flat))
    }
}
