//! Binding of `vm_topology`: `MemoryLayout` construction, its accessors (as one JSON view),
//! address probing and the x86 legacy RAM split.

use crate::args::U64;
use crate::errors::guard;
use crate::errors::throw;
use crate::errors::OrThrow;
use js_api::args::paired;
use js_api::args::range_pairs;
use js_api::enums::JsEnum;
use js_api::errors::invalid_ram_for_x86;
use js_api::json::to_json;
use js_api::views::LayoutView;
use js_api::views::RamRegionView;
use js_api::views::X86LegacyAreaView;
use napi::bindgen_prelude::BigUint64Array;
use napi::bindgen_prelude::Uint32Array;
use napi_derive::napi;
use vm_topology::memory::MemoryLayout;
use vm_topology::memory::MemoryRangeWithNode;
use vm_topology::x86_legacy::x86_legacy_ram_ranges;

/// A built `MemoryLayout`.
#[napi]
pub struct NativeLayout {
    inner: MemoryLayout,
}

impl NativeLayout {
    /// The core layout (used by the other bindings).
    pub fn layout(&self) -> &MemoryLayout {
        &self.inner
    }
}

#[napi]
impl NativeLayout {
    /// `MemoryLayout::new(ram_size, gaps, vtl2_range)`; ranges as `[start, end, …]`.
    #[napi(factory)]
    pub fn create(
        ram_size: U64,
        gaps: BigUint64Array,
        vtl2_range: Option<BigUint64Array>,
    ) -> napi::Result<Self> {
        let gaps = range_pairs(&gaps, "gaps").or_throw()?;
        let vtl2 = vtl2_range
            .map(|bounds| js_api::args::one_range(&bounds, "vtl2Range"))
            .transpose()
            .or_throw()?;
        guard(|| {
            MemoryLayout::new_explained(ram_size.0, &gaps, vtl2)
                .map(|inner| NativeLayout { inner })
                .or_throw()
        })
    }

    /// `MemoryLayout::new_from_ranges(memory, gaps)`, one vnode per RAM range.
    #[napi(factory)]
    pub fn from_ranges(
        memory: BigUint64Array,
        vnodes: Uint32Array,
        gaps: BigUint64Array,
    ) -> napi::Result<Self> {
        let ranges = range_pairs(&memory, "memory").or_throw()?;
        let memory: Vec<MemoryRangeWithNode> = paired(ranges, &vnodes, "vnode per memory range")
            .or_throw()?
            .into_iter()
            .map(|(range, vnode)| MemoryRangeWithNode { range, vnode })
            .collect();
        let gaps = range_pairs(&gaps, "gaps").or_throw()?;
        guard(|| {
            MemoryLayout::new_from_ranges_explained(&memory, &gaps)
                .map(|inner| NativeLayout { inner })
                .or_throw()
        })
    }

    /// `MemoryLayout.fromJSON`: the layout the JSON text of its `toJSON` form describes.
    #[napi(factory)]
    pub fn from_json(text: String) -> napi::Result<Self> {
        guard(|| {
            js_api::layout_json::layout_from_json(&text)
                .map(|inner| NativeLayout { inner })
                .or_throw()
        })
    }

    /// Every accessor's value (JSON).
    #[napi]
    pub fn describe(&self) -> String {
        to_json(&LayoutView::from(&self.inner))
    }

    /// `probe_address`: an `AddressType` value or `null`.
    #[napi]
    pub fn probe_address(&self, address: U64) -> Option<&'static str> {
        self.inner.probe_address(address.0).map(JsEnum::js_str)
    }

    /// The RAM regions the builder creates (JSON `[{range, fileOffset}]`).
    #[napi]
    pub fn x86_legacy_ram_ranges(&self, x86_legacy_support: bool) -> napi::Result<String> {
        let regions = x86_legacy_ram_ranges(&self.inner, x86_legacy_support)
            .map_err(|error| throw(invalid_ram_for_x86(&error, &self.inner)))?;
        Ok(to_json(&RamRegionView::list(
            regions
                .iter()
                .map(|region| (region.range, region.file_offset)),
        )))
    }
}

/// The named areas of the first megabyte that x86 legacy support splits off (JSON
/// `[{name, range, usable}]`).
#[napi]
pub fn x86_legacy_areas() -> String {
    to_json(&X86LegacyAreaView::list())
}
