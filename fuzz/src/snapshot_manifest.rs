//! Fuzz checks of the snapshot format's decoders (`membacking::snapshot::format`): arbitrary
//! bytes given as `manifest.json` or as `extents.bin` never panic; edits of a valid manifest —
//! as they are (so the checksum must catch them) and resealed with a correct checksum (so they
//! reach the manifest parser and its validation) — never panic either; and every manifest or
//! index that is accepted re-encodes to bytes that decode to the same value and satisfies the
//! documented invariants (page-aligned RAM regions inside the backing, payloads inside the
//! memory file, sorted disjoint extents).

use crate::input::{reference_crc32c, Unstructured};
use membacking::snapshot::format::{
    decode_index, decode_manifest, encode_index, encode_manifest, BaseRecord, DeviceMappingRecord,
    DeviceWindowRecord, ExtentKind, FileRecord, Hex, LayoutRecord, Manifest, OptionsRecord,
    RamRangeRecord, RamRegionRecord, RangeRecord, FORMAT, PAGE_SIZE, VERSION,
};

/// A valid manifest with every kind of field.
fn sample() -> Manifest {
    Manifest {
        id: "0123456789abcdef0123456789abcdef".into(),
        created_unix_ms: 1,
        page_size: PAGE_SIZE,
        base: Some(BaseRecord {
            path: "../base".into(),
            id: "fedcba9876543210fedcba9876543210".into(),
        }),
        tracking_session: Some(Hex(42)),
        layout: LayoutRecord {
            ram: vec![RamRangeRecord {
                start: Hex(0),
                end: Hex(0x100_0000),
                vnode: 0,
            }],
            mmio: vec![RangeRecord {
                start: Hex(0xc000_0000),
                end: Hex(0x1_0000_0000),
            }],
            vtl2: None,
        },
        options: OptionsRecord {
            x86_legacy_support: true,
            private_memory: false,
            transparent_hugepages: false,
            vtl0_alias_map: Some(Hex(1 << 40)),
            pin_mappings: false,
            prefetch_ram: true,
        },
        ram_size: Hex(0x100_0000),
        ram_regions: vec![
            RamRegionRecord {
                start: Hex(0),
                end: Hex(0xa0000),
                file_offset: Hex(0),
                visibility: "ReadWrite".into(),
            },
            RamRegionRecord {
                start: Hex(0xa0000),
                end: Hex(0x100_0000),
                file_offset: Hex(0xa0000),
                visibility: "Unmapped".into(),
            },
        ],
        device_windows: vec![DeviceWindowRecord {
            name: "fb".into(),
            gpa: Hex(0xd000_0000),
            len: Hex(0x4000),
            writable: true,
            mappings: vec![DeviceMappingRecord {
                offset: Hex(0x1000),
                len: Hex(0x1000),
                file_offset: Hex(0),
                writable: false,
            }],
        }],
        index: FileRecord {
            size: Hex(60),
            crc32c: Some(1),
        },
        memory: FileRecord {
            size: Hex(0x3000),
            crc32c: None,
        },
        data_pages: 3,
        zero_pages: 1,
        extents: 2,
    }
}

/// Applies up to 8 edits chosen by `u` to `bytes`.
fn edit(u: &mut Unstructured<'_>, bytes: &mut Vec<u8>) {
    let count = u.int_in_range(0u8..=8).unwrap_or(0);
    for _ in 0..count {
        let at = u.int_in_range(0..=bytes.len()).unwrap_or(0);
        match u.int_in_range(0u8..=4).unwrap_or(0) {
            0 if at < bytes.len() => bytes[at] ^= 1 << u.int_in_range(0u8..=7).unwrap_or(0),
            1 if at < bytes.len() => {
                bytes.remove(at);
            }
            2 => {
                let byte = u.arbitrary::<u8>().unwrap_or(b'0');
                bytes.insert(at, byte);
            }
            3 => {
                // Replace a number-looking run with a boundary value.
                let value: &[u8] = match u.int_in_range(0u8..=3).unwrap_or(0) {
                    0 => b"0xffffffffffffffff",
                    1 => b"0x0",
                    2 => b"18446744073709551615",
                    _ => b"-1",
                };
                let end = (at + value.len()).min(bytes.len());
                bytes.splice(at..end, value.iter().copied());
            }
            _ => bytes.truncate(at),
        }
    }
}

fn check_accepted_manifest(manifest: Manifest) {
    let ram_size = manifest.ram_size.0;
    for region in &manifest.ram_regions {
        assert!(region.start.0 < region.end.0 && region.start.0 % PAGE_SIZE == 0);
        assert!(region.file_offset.0 + (region.end.0 - region.start.0) <= ram_size);
    }
    let again = decode_manifest(&encode_manifest(&manifest)).expect("a re-encoded manifest");
    assert_eq!(again, manifest);
}

/// Decodes `data` as both files and as edits of a valid manifest.
pub fn check(data: &[u8]) {
    if let Ok(manifest) = decode_manifest(data) {
        check_accepted_manifest(manifest);
    }
    let mut u = Unstructured::new(data);
    let ram_size = u.int_in_range(0u64..=64).unwrap_or(16) * PAGE_SIZE;
    let memory_len = u.int_in_range(0u64..=16).unwrap_or(4) * PAGE_SIZE;
    if let Ok(index) = decode_index(data, ram_size, memory_len) {
        let mut end = 0;
        for extent in &index.extents {
            assert!(extent.ram_offset >= end && extent.pages > 0);
            end = extent.ram_offset + extent.len();
            assert!(end <= ram_size);
            if extent.kind == ExtentKind::Data {
                assert!(extent.data_offset + extent.len() <= memory_len);
            }
        }
        assert_eq!(
            decode_index(&encode_index(&index), ram_size, memory_len),
            Ok(index)
        );
    }

    let valid = encode_manifest(&sample());
    let mut sealed_edit = valid.clone();
    edit(&mut u, &mut sealed_edit);
    if let Ok(manifest) = decode_manifest(&sealed_edit) {
        check_accepted_manifest(manifest);
    }
    // The body edited and sealed again with a matching checksum.
    let mut body = serde_json_body(&sample());
    edit(&mut u, &mut body);
    let crc = reference_crc32c(&body);
    let mut resealed = format!(
        "{{\"format\":\"{FORMAT}\",\"version\":{VERSION},\"checksum\":\"crc32c:{crc:08x}\",\"manifest\":"
    )
    .into_bytes();
    resealed.extend_from_slice(&body);
    resealed.push(b'}');
    if let Ok(manifest) = decode_manifest(&resealed) {
        check_accepted_manifest(manifest);
    }
}

/// The pretty-printed manifest body, as `encode_manifest` embeds it.
fn serde_json_body(manifest: &Manifest) -> Vec<u8> {
    let encoded = encode_manifest(manifest);
    let text = String::from_utf8(encoded).expect("UTF-8");
    let start = text.find("\"manifest\":").expect("a manifest field") + "\"manifest\":".len();
    let end = text.trim_end().len() - 1;
    text.as_bytes()[start..end].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_crc_and_the_resealed_sample_agree_with_membacking() {
        assert_eq!(reference_crc32c(b"123456789"), 0xe306_9283);
        let body = serde_json_body(&sample());
        let sealed = format!(
            "{{\"format\":\"{FORMAT}\",\"version\":{VERSION},\"checksum\":\"crc32c:{:08x}\",\"manifest\":{}}}",
            reference_crc32c(&body),
            String::from_utf8(body).unwrap()
        );
        assert_eq!(decode_manifest(sealed.as_bytes()), Ok(sample()));
    }
}
