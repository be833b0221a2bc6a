//! Guest memory layouts: RAM around MMIO gaps, NUMA vnodes, the VTL2 range and the x86 legacy RAM split.
//!
//! [`memory::MemoryLayout`] describes where a guest's RAM, MMIO gaps and VTL2 range sit in the
//! guest physical address space; [`x86_legacy::x86_legacy_ram_ranges`] turns a layout into the
//! list of RAM regions a guest-memory builder creates, splitting the first megabyte the way x86
//! legacy devices need it.

#![forbid(unsafe_code)]

pub mod memory;
pub mod x86_legacy;
