//! The identity map a long-mode vCPU runs on: 4-level x86-64 page tables with 2 MiB pages
//! mapping every GPA below 512 GiB to itself.
//!
//! Layout inside the caller's range, starting at `base`: the PML4 (one 4 KiB page), the PDPT
//! (one page, 512 entries of 1 GiB each), then 512 page directories (2 MiB), one per GiB.
//! Every entry is present, writable and user-accessible, with the accessed (and, for the 2 MiB
//! leaves, dirty) bits preset so the processor never has to write to the tables.

/// Bytes of page tables [`identity_map`] produces: PML4 + PDPT + 512 page directories.
pub const PAGE_TABLES_SIZE: u64 = 2 * 4096 + 512 * 4096;

/// GPAs below this are identity-mapped by [`identity_map`] (512 GiB).
pub const IDENTITY_MAPPED_LIMIT: u64 = 512 << 30;

/// Where, from the start of the tables, the vCPU runner places its 64-bit TSS: in the PML4
/// page, past its one entry, where the tables are zero to the end of the page.
pub const TSS_OFFSET: u64 = 8;

/// The limit of that TSS: it and its I/O permission bitmap (at offset 0, since the bitmap
/// pointer at offset 0x66 is zero) end at the last byte of the PML4 page. A processor that
/// checks the bitmap reads two bytes at `port / 8`, so every port up to [`TSS_LAST_PORT`] is
/// allowed and the rest are not.
pub const TSS_LIMIT: u32 = 4096 - 8 - 2;

/// The highest port the TSS's (all-zero) I/O permission bitmap allows: `TSS_LIMIT * 8 + 7`.
pub const TSS_LAST_PORT: u16 = 0x7fb7;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const ACCESSED: u64 = 1 << 5;
const DIRTY: u64 = 1 << 6;
const LARGE_PAGE: u64 = 1 << 7;

const TABLE_FLAGS: u64 = PRESENT | WRITABLE | USER | ACCESSED;
const LEAF_2MIB_FLAGS: u64 = PRESENT | WRITABLE | USER | ACCESSED | DIRTY | LARGE_PAGE;

/// Builds the page tables for placement at GPA `base` (4 KiB aligned). The result is
/// [`PAGE_TABLES_SIZE`] bytes, to be written to guest memory at `base`; CR3 = `base`.
pub fn identity_map(base: u64) -> Vec<u8> {
    let mut tables = vec![0u8; (2 + 512) * 4096];
    let mut put = |byte_offset: usize, entry: u64| {
        tables[byte_offset..byte_offset + 8].copy_from_slice(&entry.to_le_bytes());
    };
    let pdpt = base + 4096;
    let first_pd = base + 2 * 4096;
    put(0, pdpt | TABLE_FLAGS);
    for gib in 0..512usize {
        let gib_u64 = gib as u64;
        put(4096 + gib * 8, (first_pd + gib_u64 * 4096) | TABLE_FLAGS);
        for two_mib in 0..512usize {
            let address = (gib_u64 << 30) | ((two_mib as u64) << 21);
            put(
                2 * 4096 + gib * 4096 + two_mib * 8,
                address | LEAF_2MIB_FLAGS,
            );
        }
    }
    tables
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tables: &[u8], offset: usize) -> u64 {
        u64::from_le_bytes(tables[offset..offset + 8].try_into().unwrap())
    }

    /// Walks the tables as the processor would and returns the physical address.
    fn translate(tables: &[u8], base: u64, va: u64) -> Option<u64> {
        let read = |table_gpa: u64, index: u64| {
            let offset = usize::try_from(table_gpa - base + index * 8).unwrap();
            entry(tables, offset)
        };
        let pml4e = read(base, (va >> 39) & 511);
        if pml4e & PRESENT == 0 {
            return None;
        }
        let pdpte = read(pml4e & 0x000f_ffff_ffff_f000, (va >> 30) & 511);
        if pdpte & PRESENT == 0 || pdpte & LARGE_PAGE != 0 {
            return None;
        }
        let pde = read(pdpte & 0x000f_ffff_ffff_f000, (va >> 21) & 511);
        if pde & PRESENT == 0 || pde & LARGE_PAGE == 0 {
            return None;
        }
        Some((pde & 0x000f_ffff_ffe0_0000) | (va & 0x1f_ffff))
    }

    #[test]
    fn every_address_below_512_gib_maps_to_itself() {
        let base = 0x20_0000;
        let tables = identity_map(base);
        assert_eq!(tables.len() as u64, PAGE_TABLES_SIZE);
        for va in [
            0,
            0x1234,
            0xfee0_0000,
            0x1_0000_0000,
            0x1_2345_6789,
            0x40_0000_0000,
            IDENTITY_MAPPED_LIMIT - 1,
        ] {
            assert_eq!(translate(&tables, base, va), Some(va), "{va:#x}");
        }
        // Nothing above the limit (the second PML4 entry is empty).
        assert_eq!(translate(&tables, base, IDENTITY_MAPPED_LIMIT), None);
    }

    #[test]
    fn the_tss_and_its_io_bitmap_lie_in_zeros_inside_the_pml4_page() {
        let tables = identity_map(0x20_0000);
        let start = usize::try_from(TSS_OFFSET).unwrap();
        // The last port's two bitmap bytes are the last two bytes of the PML4 page.
        let end = start + usize::from(TSS_LAST_PORT / 8) + 2;
        assert_eq!(end, 4096);
        assert_eq!(usize::try_from(TSS_LIMIT).unwrap() + start + 2, 4096);
        assert!(tables[start..end].iter().all(|&byte| byte == 0));
        assert_eq!(u32::from(TSS_LAST_PORT), TSS_LIMIT * 8 + 7);
    }

    #[test]
    fn leaves_are_user_writable_and_preset_accessed_dirty() {
        let tables = identity_map(0);
        let leaf = entry(&tables, 2 * 4096 + 5 * 8);
        assert_eq!(leaf & 0xfff, LEAF_2MIB_FLAGS);
        assert_eq!(leaf & !0xfff, 5 << 21);
    }
}
