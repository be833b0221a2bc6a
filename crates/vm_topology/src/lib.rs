//! Guest memory layouts: RAM around MMIO gaps, NUMA vnodes, the VTL2 range and the x86 legacy RAM split.
