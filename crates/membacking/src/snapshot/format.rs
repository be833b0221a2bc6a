//! The on-disk (and on-the-wire) format of a snapshot, version 1; `docs/snapshots.md` is its
//! reference. Pure encoding, decoding and validation: no I/O.
//!
//! A snapshot directory holds three files:
//!
//! - `manifest.json`: `{"format":"membacking-snapshot","version":1,"checksum":"crc32c:…",
//!   "manifest":{…}}`. The checksum is the CRC-32C of the exact bytes of the `manifest` value as
//!   they appear in the file. The manifest describes the machine (layout, build options, RAM
//!   regions with their backing offsets and visibility, placed device windows), the snapshot's
//!   place in a chain (`base`), and the sizes and CRC-32C of the other two files.
//! - `extents.bin`: the extent index. A 32-byte header, then one record per extent in ascending
//!   RAM-offset order — 24 bytes (`ram_offset`, `page_count`, `kind`, `data_offset`), followed,
//!   for data extents, by one CRC-32C per page — then the CRC-32C of everything before it.
//! - `memory.bin`: the page payloads of the data extents, each at its record's `data_offset`.
//!
//! An extent record followed by its payload is also the unit a stream (live migration) sends.
//! All integers are little-endian; every address and size in the JSON is a `"0x…"` string.

use serde::Deserialize;
use serde::Serialize;
use serde_json::value::RawValue;
use std::fmt;

/// The `format` value of every manifest.
pub const FORMAT: &str = "membacking-snapshot";
/// The version this build writes and reads.
pub const VERSION: u32 = 1;
/// The page size of every snapshot.
pub const PAGE_SIZE: u64 = crate::PAGE_SIZE;
/// The manifest's file name.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The extent index's file name.
pub const INDEX_FILE: &str = "extents.bin";
/// The page payload file's name.
pub const MEMORY_FILE: &str = "memory.bin";

const INDEX_MAGIC: [u8; 8] = *b"MBSNAPX\0";
const INDEX_HEADER_LEN: usize = 32;
/// The length of an extent record (its page CRC-32Cs follow it for data extents).
pub const RECORD_LEN: usize = 24;

/// A `u64` written as a `"0x…"` string.
#[derive(Debug, Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hex(pub u64);

impl Serialize for Hex {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{:#x}", self.0))
    }
}

impl<'de> Deserialize<'de> for Hex {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.strip_prefix("0x")
            .and_then(|digits| u64::from_str_radix(digits, 16).ok())
            .map(Hex)
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not a 0x… number")))
    }
}

/// A GPA range `[start, end)`.
#[derive(Debug, Copy, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRecord {
    /// First address.
    pub start: Hex,
    /// One past the last address.
    pub end: Hex,
}

/// A RAM range of the layout and its virtual NUMA node.
#[derive(Debug, Copy, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RamRangeRecord {
    /// First address.
    pub start: Hex,
    /// One past the last address.
    pub end: Hex,
    /// The virtual NUMA node.
    pub vnode: u32,
}

/// The memory layout the manager was built for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutRecord {
    /// The RAM ranges.
    pub ram: Vec<RamRangeRecord>,
    /// The MMIO gaps.
    pub mmio: Vec<RangeRecord>,
    /// The VTL2 range.
    pub vtl2: Option<RangeRecord>,
}

/// The builder options that shape the manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OptionsRecord {
    /// `x86_legacy_support`.
    pub x86_legacy_support: bool,
    /// `private_memory`.
    pub private_memory: bool,
    /// `transparent_hugepages`.
    pub transparent_hugepages: bool,
    /// `vtl0_alias_map`.
    pub vtl0_alias_map: Option<Hex>,
    /// `pin_mappings`.
    pub pin_mappings: bool,
    /// `prefetch_ram`.
    pub prefetch_ram: bool,
}

/// One RAM region: its GPA range, its offset in the RAM backing, and its visibility.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RamRegionRecord {
    /// First GPA.
    pub start: Hex,
    /// One past the last GPA.
    pub end: Hex,
    /// The offset of `start` in the RAM backing (and in the extent index).
    pub file_offset: Hex,
    /// `"ReadWrite"`, `"ReadOnly"` or `"Unmapped"`.
    pub visibility: String,
}

/// One mapping of a device window (metadata only: the object is the device's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceMappingRecord {
    /// The offset in the window.
    pub offset: Hex,
    /// The length.
    pub len: Hex,
    /// The offset in the mapped object.
    pub file_offset: Hex,
    /// Whether the mapping is writable.
    pub writable: bool,
}

/// A placed device window (metadata only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceWindowRecord {
    /// The window's name.
    pub name: String,
    /// Where it is placed.
    pub gpa: Hex,
    /// Its length.
    pub len: Hex,
    /// Whether it is placed writable.
    pub writable: bool,
    /// Its mappings, in insertion order.
    pub mappings: Vec<DeviceMappingRecord>,
}

/// The snapshot an incremental one is based on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseRecord {
    /// The base directory, relative to this snapshot's directory (or absolute).
    pub path: String,
    /// The base's id.
    pub id: String,
}

/// Size and CRC-32C of a file of the snapshot.
#[derive(Debug, Copy, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Size in bytes.
    pub size: Hex,
    /// CRC-32C of the whole file (`None` for `memory.bin`, whose pages have their own).
    pub crc32c: Option<u32>,
}

/// The manifest (the `manifest` value of `manifest.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// A random 128-bit id (32 hex digits).
    pub id: String,
    /// When it was written (milliseconds since the Unix epoch).
    pub created_unix_ms: u64,
    /// The page size (4096).
    pub page_size: u64,
    /// The base of an incremental snapshot (`None`: a full snapshot).
    pub base: Option<BaseRecord>,
    /// The dirty-tracking session the snapshot was taken in (hex), when tracking was on: a
    /// later snapshot of the same session may be incremental on this one.
    pub tracking_session: Option<Hex>,
    /// The memory layout.
    pub layout: LayoutRecord,
    /// The builder options.
    pub options: OptionsRecord,
    /// The size of the RAM backing (RAM plus VTL2 RAM).
    pub ram_size: Hex,
    /// The RAM regions.
    pub ram_regions: Vec<RamRegionRecord>,
    /// The placed device windows.
    pub device_windows: Vec<DeviceWindowRecord>,
    /// `extents.bin`.
    pub index: FileRecord,
    /// `memory.bin`.
    pub memory: FileRecord,
    /// Pages stored in `memory.bin`.
    pub data_pages: u64,
    /// Pages recorded as zero (incremental snapshots: dirtied pages that now read as zeros).
    pub zero_pages: u64,
    /// Extent records in `extents.bin`.
    pub extents: u64,
}

/// A decoding or validation failure: where in the file, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatError {
    /// The bytes are not a valid snapshot file of this version.
    Corrupt {
        /// The byte offset in the file where the problem was found.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// The file is of another format version.
    Version {
        /// The version found.
        found: u64,
    },
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::Corrupt { offset, what } => write!(f, "at offset {offset}: {what}"),
            FormatError::Version { found } => {
                write!(f, "version {found} (this build reads version {VERSION})")
            }
        }
    }
}

fn corrupt(offset: usize, what: impl Into<String>) -> FormatError {
    FormatError::Corrupt {
        offset: offset as u64,
        what: what.into(),
    }
}

/// The byte offset of a serde_json error position (1-based line and column).
fn json_offset(bytes: &[u8], line: usize, column: usize) -> usize {
    let mut current = 1;
    let mut line_start = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        if current == line {
            break;
        }
        if byte == b'\n' {
            current += 1;
            line_start = index + 1;
        }
    }
    (line_start + column.saturating_sub(1)).min(bytes.len())
}

/// The outer object of `manifest.json`.
#[derive(Deserialize)]
struct Envelope<'a> {
    format: String,
    version: u64,
    checksum: String,
    #[serde(borrow)]
    manifest: &'a RawValue,
}

/// `manifest.json` for `manifest` (the body pretty-printed, so people can read it).
pub fn encode_manifest(manifest: &Manifest) -> Vec<u8> {
    let body = match serde_json::to_string_pretty(manifest) {
        Ok(body) => body,
        // Serializing plain structs of strings, numbers and booleans cannot fail.
        Err(error) => unreachable!("serializing a manifest failed: {error}"),
    };
    let crc = crc32c::crc32c(body.as_bytes());
    format!(
        "{{\"format\":\"{FORMAT}\",\"version\":{VERSION},\"checksum\":\"crc32c:{crc:08x}\",\"manifest\":{body}}}\n"
    )
    .into_bytes()
}

/// Whether `bytes` are a `manifest.json` written by this project: a JSON envelope whose
/// `format` is [`FORMAT`], of any version, whether or not its body is intact.
pub fn is_snapshot_manifest(bytes: &[u8]) -> bool {
    serde_json::from_slice::<Envelope<'_>>(bytes).is_ok_and(|envelope| envelope.format == FORMAT)
}

/// Decodes and validates `manifest.json`: the envelope, the version, the checksum, the
/// manifest and its internal consistency (see [`Manifest::validate`]).
pub fn decode_manifest(bytes: &[u8]) -> Result<Manifest, FormatError> {
    let envelope: Envelope<'_> = serde_json::from_slice(bytes).map_err(|error| {
        corrupt(
            json_offset(bytes, error.line(), error.column()),
            format!("not a manifest: {error}"),
        )
    })?;
    if envelope.format != FORMAT {
        return Err(corrupt(
            0,
            format!("format is {:?}, expected {FORMAT:?}", envelope.format),
        ));
    }
    if envelope.version != u64::from(VERSION) {
        return Err(FormatError::Version {
            found: envelope.version,
        });
    }
    let raw = envelope.manifest.get();
    let raw_offset = (raw.as_ptr() as usize).saturating_sub(bytes.as_ptr() as usize);
    let stored = envelope
        .checksum
        .strip_prefix("crc32c:")
        .filter(|digits| digits.len() == 8)
        .and_then(|digits| u32::from_str_radix(digits, 16).ok())
        .ok_or_else(|| corrupt(0, format!("bad checksum field {:?}", envelope.checksum)))?;
    let computed = crc32c::crc32c(raw.as_bytes());
    if stored != computed {
        return Err(corrupt(
            raw_offset,
            format!("manifest checksum mismatch (stored {stored:08x}, computed {computed:08x})"),
        ));
    }
    let manifest: Manifest = serde_json::from_str(raw).map_err(|error| {
        let offset = raw_offset + json_offset(raw.as_bytes(), error.line(), error.column());
        corrupt(offset, format!("invalid manifest: {error}"))
    })?;
    manifest
        .validate()
        .map_err(|what| corrupt(raw_offset, what))?;
    Ok(manifest)
}

fn aligned(value: u64) -> bool {
    value.is_multiple_of(PAGE_SIZE)
}

impl Manifest {
    /// Checks the manifest's internal consistency; the error says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.page_size != PAGE_SIZE {
            return Err(format!("page size {} is not {PAGE_SIZE}", self.page_size));
        }
        if self.id.len() != 32 || !self.id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("id {:?} is not 32 hex digits", self.id));
        }
        let ram_size = self.ram_size.0;
        if ram_size == 0 || !aligned(ram_size) {
            return Err(format!(
                "RAM size {ram_size:#x} is not a non-zero page multiple"
            ));
        }
        let check_range = |what: &str, start: u64, end: u64| {
            if start >= end || !aligned(start) || !aligned(end) {
                Err(format!(
                    "{what} {start:#x}..{end:#x} is not a page-aligned range"
                ))
            } else {
                Ok(())
            }
        };
        for ram in &self.layout.ram {
            check_range("layout RAM", ram.start.0, ram.end.0)?;
        }
        for gap in &self.layout.mmio {
            check_range("MMIO gap", gap.start.0, gap.end.0)?;
        }
        if let Some(vtl2) = &self.layout.vtl2 {
            check_range("VTL2 range", vtl2.start.0, vtl2.end.0)?;
        }
        if self.ram_regions.is_empty() {
            return Err("no RAM regions".into());
        }
        let mut previous_end = 0;
        for (index, region) in self.ram_regions.iter().enumerate() {
            check_range("RAM region", region.start.0, region.end.0)?;
            if index > 0 && region.start.0 < previous_end {
                return Err(format!("RAM region {index} is not after the one before it"));
            }
            previous_end = region.end.0;
            let len = region.end.0 - region.start.0;
            let fits = aligned(region.file_offset.0)
                && region
                    .file_offset
                    .0
                    .checked_add(len)
                    .is_some_and(|end| end <= ram_size);
            if !fits {
                return Err(format!(
                    "RAM region {index} at backing offset {:#x} does not fit the {ram_size:#x}-byte backing",
                    region.file_offset.0
                ));
            }
            if region.visibility.parse::<crate::RamVisibility>().is_err() {
                return Err(format!(
                    "RAM region {index} has an unknown visibility {:?}",
                    region.visibility
                ));
            }
        }
        for window in &self.device_windows {
            let len = window.len.0;
            let placed = window.gpa.0.checked_add(len).is_some();
            if len == 0 || !aligned(len) || !aligned(window.gpa.0) || !placed {
                return Err(format!(
                    "device window {:?} at {:#x}+{len:#x} is not a page-aligned range",
                    window.name, window.gpa.0
                ));
            }
            for mapping in &window.mappings {
                let end = mapping.offset.0.checked_add(mapping.len.0);
                let valid = mapping.len.0 > 0
                    && aligned(mapping.offset.0)
                    && aligned(mapping.len.0)
                    && end.is_some_and(|end| end <= len);
                if !valid {
                    return Err(format!(
                        "a mapping of device window {:?} at {:#x}+{:#x} is not inside it",
                        window.name, mapping.offset.0, mapping.len.0
                    ));
                }
            }
        }
        if let Some(base) = &self.base {
            if base.id.len() != 32 || base.path.is_empty() {
                return Err(format!(
                    "base {:?} (id {:?}) is not valid",
                    base.path, base.id
                ));
            }
        }
        if self.memory.size.0 != self.data_pages.saturating_mul(PAGE_SIZE) {
            return Err(format!(
                "memory file size {:#x} does not hold {} data pages",
                self.memory.size.0, self.data_pages
            ));
        }
        if self.index.crc32c.is_none() {
            return Err("the extent index has no checksum".into());
        }
        Ok(())
    }
}

/// What an extent record holds.
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub enum ExtentKind {
    /// Pages whose contents are in `memory.bin`.
    Data,
    /// Pages that read as zeros (no payload).
    Zero,
}

/// One extent record.
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub struct Extent {
    /// Offset in the RAM backing (page-aligned).
    pub ram_offset: u64,
    /// Number of pages (at least 1).
    pub pages: u32,
    /// Data or zero.
    pub kind: ExtentKind,
    /// Offset of the payload in `memory.bin` (data extents; 0 for zero extents).
    pub data_offset: u64,
    /// Index of the first page's CRC-32C in [`Index::crcs`] (data extents).
    pub first_crc: usize,
}

impl Extent {
    /// The byte length of the pages.
    pub fn len(&self) -> u64 {
        u64::from(self.pages) * PAGE_SIZE
    }

    /// Whether the extent has no pages (never true for a decoded one).
    pub fn is_empty(&self) -> bool {
        self.pages == 0
    }
}

/// The decoded extent index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Index {
    /// The records, by ascending RAM offset.
    pub extents: Vec<Extent>,
    /// The per-page CRC-32Cs of the data extents.
    pub crcs: Vec<u32>,
    /// The number of data pages.
    pub data_pages: u64,
}

/// Appends one extent record and, for a data extent, its page CRC-32Cs (`crcs`, one per page;
/// ignored for a zero extent). The unit of `extents.bin` and of the migration stream.
pub fn encode_extent(out: &mut Vec<u8>, extent: &Extent, crcs: &[u32]) {
    out.extend_from_slice(&extent.ram_offset.to_le_bytes());
    out.extend_from_slice(&extent.pages.to_le_bytes());
    let kind: u32 = match extent.kind {
        ExtentKind::Data => 0,
        ExtentKind::Zero => 1,
    };
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&extent.data_offset.to_le_bytes());
    if extent.kind == ExtentKind::Data {
        for crc in crcs {
            out.extend_from_slice(&crc.to_le_bytes());
        }
    }
}

/// Decodes the [`RECORD_LEN`] bytes of one extent record (not its CRCs; `first_crc` is 0).
/// Checks only what the record alone can show: a known kind, at least one page, a
/// page-aligned RAM offset and no payload offset on a zero extent. Offsets in the error are
/// relative to the record's first byte.
pub fn decode_extent(record: &[u8; RECORD_LEN]) -> Result<Extent, FormatError> {
    let mut reader = Reader {
        bytes: record,
        position: 0,
    };
    let ram_offset = reader.u64("extent record")?;
    let pages = reader.u32("extent record")?;
    let kind = match reader.u32("extent record")? {
        0 => ExtentKind::Data,
        1 => ExtentKind::Zero,
        other => {
            return Err(corrupt(
                12,
                format!("kind {other} is neither data nor zero"),
            ))
        }
    };
    let data_offset = reader.u64("extent record")?;
    if pages == 0 || !aligned(ram_offset) {
        return Err(corrupt(
            0,
            format!("{pages} pages at {ram_offset:#x} is empty or unaligned"),
        ));
    }
    if kind == ExtentKind::Zero && data_offset != 0 {
        return Err(corrupt(16, "a zero extent has a payload"));
    }
    Ok(Extent {
        ram_offset,
        pages,
        kind,
        data_offset,
        first_crc: 0,
    })
}

/// Encodes `extents.bin` (records sorted by RAM offset; `crcs` as in [`Index`]).
pub fn encode_index(index: &Index) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        INDEX_HEADER_LEN + index.extents.len() * RECORD_LEN + index.crcs.len() * 4 + 4,
    );
    out.extend_from_slice(&INDEX_MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&4096u32.to_le_bytes());
    out.extend_from_slice(&(index.extents.len() as u64).to_le_bytes());
    out.extend_from_slice(&index.data_pages.to_le_bytes());
    for extent in &index.extents {
        let crcs = match extent.kind {
            ExtentKind::Data => {
                &index.crcs[extent.first_crc..extent.first_crc + extent.pages as usize]
            }
            ExtentKind::Zero => &[],
        };
        encode_extent(&mut out, extent, crcs);
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A little-endian reader that reports where it failed.
struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self, what: &str) -> Result<[u8; N], FormatError> {
        let end = self
            .position
            .checked_add(N)
            .filter(|&end| end <= self.bytes.len());
        let Some(end) = end else {
            return Err(corrupt(self.position, format!("truncated {what}")));
        };
        let mut value = [0; N];
        value.copy_from_slice(&self.bytes[self.position..end]);
        self.position = end;
        Ok(value)
    }

    fn u32(&mut self, what: &str) -> Result<u32, FormatError> {
        self.take::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, FormatError> {
        self.take::<8>(what).map(u64::from_le_bytes)
    }
}

/// Decodes and validates `extents.bin` against the RAM backing size and the memory file size:
/// the trailing checksum, the header, and every record (page-aligned, in order, disjoint,
/// inside the backing; payloads inside the memory file and disjoint).
pub fn decode_index(bytes: &[u8], ram_size: u64, memory_len: u64) -> Result<Index, FormatError> {
    if bytes.len() < INDEX_HEADER_LEN + 4 {
        return Err(corrupt(bytes.len(), "truncated extent index"));
    }
    let body_len = bytes.len() - 4;
    let mut stored = [0; 4];
    stored.copy_from_slice(&bytes[body_len..]);
    let stored = u32::from_le_bytes(stored);
    let computed = crc32c::crc32c(&bytes[..body_len]);
    if stored != computed {
        return Err(corrupt(
            body_len,
            format!(
                "extent index checksum mismatch (stored {stored:08x}, computed {computed:08x})"
            ),
        ));
    }
    let body = &bytes[..body_len];
    let mut reader = Reader {
        bytes: body,
        position: 0,
    };
    if reader.take::<8>("magic")? != INDEX_MAGIC {
        return Err(corrupt(0, "not an extent index (bad magic)"));
    }
    let version = reader.u32("version")?;
    if version != VERSION {
        return Err(FormatError::Version {
            found: u64::from(version),
        });
    }
    let page_size = reader.u32("page size")?;
    if u64::from(page_size) != PAGE_SIZE {
        return Err(corrupt(
            12,
            format!("page size {page_size} is not {PAGE_SIZE}"),
        ));
    }
    let count = reader.u64("extent count")?;
    let data_pages = reader.u64("data page count")?;
    // Each record takes at least RECORD_LEN bytes: a count beyond that is corrupt (and must
    // not size an allocation).
    let max_count = (body_len - INDEX_HEADER_LEN) / RECORD_LEN;
    let count = usize::try_from(count)
        .ok()
        .filter(|&count| count <= max_count)
        .ok_or_else(|| corrupt(16, format!("extent count {count} does not fit the file")))?;
    let mut index = Index {
        extents: Vec::with_capacity(count),
        crcs: Vec::new(),
        data_pages,
    };
    let mut next_ram = 0u64;
    let mut counted_data = 0u64;
    for record in 0..count {
        let at = reader.position;
        let Extent {
            ram_offset,
            pages,
            kind,
            data_offset,
            ..
        } = decode_extent(&reader.take::<RECORD_LEN>("extent record")?).map_err(
            |error| match error {
                FormatError::Corrupt { offset, what } => FormatError::Corrupt {
                    offset: at as u64 + offset,
                    what: format!("extent {record}: {what}"),
                },
                other => other,
            },
        )?;
        let len = u64::from(pages) * PAGE_SIZE;
        let end = ram_offset.checked_add(len);
        if ram_offset < next_ram {
            return Err(corrupt(
                at,
                format!("extent {record} at {ram_offset:#x} is out of order"),
            ));
        }
        let Some(end) = end.filter(|&end| end <= ram_size) else {
            return Err(corrupt(
                at,
                format!(
                    "extent {record} at {ram_offset:#x} ends beyond the {ram_size:#x}-byte RAM"
                ),
            ));
        };
        next_ram = end;
        let first_crc = index.crcs.len();
        if kind == ExtentKind::Data {
            let data_end = data_offset.checked_add(len);
            if !aligned(data_offset) || data_end.is_none_or(|end| end > memory_len) {
                return Err(corrupt(
                    at + 16,
                    format!(
                        "extent {record}'s payload at {data_offset:#x}+{len:#x} is outside the {memory_len:#x}-byte memory file"
                    ),
                ));
            }
            counted_data += u64::from(pages);
            for _ in 0..pages {
                index.crcs.push(reader.u32("page checksums")?);
            }
        }
        index.extents.push(Extent {
            ram_offset,
            pages,
            kind,
            data_offset,
            first_crc,
        });
    }
    if reader.position != body.len() {
        return Err(corrupt(reader.position, "bytes after the last extent"));
    }
    if counted_data != data_pages || data_pages.saturating_mul(PAGE_SIZE) != memory_len {
        return Err(corrupt(
            24,
            format!(
                "{data_pages} data pages declared, {counted_data} recorded, memory file {memory_len:#x} bytes"
            ),
        ));
    }
    // Payloads must not overlap: every page of memory.bin belongs to one data extent.
    let mut payloads: Vec<(u64, u64)> = index
        .extents
        .iter()
        .filter(|extent| extent.kind == ExtentKind::Data)
        .map(|extent| (extent.data_offset, extent.len()))
        .collect();
    payloads.sort_unstable();
    for pair in payloads.windows(2) {
        if pair[0].0 + pair[0].1 > pair[1].0 {
            return Err(corrupt(
                INDEX_HEADER_LEN,
                format!("two extents share the payload at {:#x}", pair[1].0),
            ));
        }
    }
    Ok(index)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_manifest() -> Manifest {
        Manifest {
            id: "0123456789abcdef0123456789abcdef".into(),
            created_unix_ms: 1_700_000_000_000,
            page_size: PAGE_SIZE,
            base: None,
            tracking_session: Some(Hex(0xfeed)),
            layout: LayoutRecord {
                ram: vec![RamRangeRecord {
                    start: Hex(0),
                    end: Hex(0x10_0000),
                    vnode: 0,
                }],
                mmio: vec![RangeRecord {
                    start: Hex(0xc000_0000),
                    end: Hex(0x1_0000_0000),
                }],
                vtl2: None,
            },
            options: OptionsRecord {
                x86_legacy_support: false,
                private_memory: false,
                transparent_hugepages: false,
                vtl0_alias_map: None,
                pin_mappings: false,
                prefetch_ram: false,
            },
            ram_size: Hex(0x10_0000),
            ram_regions: vec![RamRegionRecord {
                start: Hex(0),
                end: Hex(0x10_0000),
                file_offset: Hex(0),
                visibility: "ReadWrite".into(),
            }],
            device_windows: vec![DeviceWindowRecord {
                name: "fb".into(),
                gpa: Hex(0xc000_0000),
                len: Hex(0x2000),
                writable: true,
                mappings: vec![DeviceMappingRecord {
                    offset: Hex(0),
                    len: Hex(0x1000),
                    file_offset: Hex(0x3000),
                    writable: false,
                }],
            }],
            index: FileRecord {
                size: Hex(100),
                crc32c: Some(7),
            },
            memory: FileRecord {
                size: Hex(0x2000),
                crc32c: None,
            },
            data_pages: 2,
            zero_pages: 0,
            extents: 1,
        }
    }

    #[test]
    fn manifests_round_trip_and_every_flipped_byte_is_detected() {
        let manifest = sample_manifest();
        let bytes = encode_manifest(&manifest);
        assert_eq!(decode_manifest(&bytes).unwrap(), manifest);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("\"ram_size\": \"0x100000\""), "{text}");
        for position in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[position] ^= 0x01;
            assert!(
                decode_manifest(&flipped).is_err(),
                "a flipped bit at {position} ({:?}) went unnoticed",
                char::from(bytes[position])
            );
        }
    }

    #[test]
    fn manifest_errors_name_the_offset_and_the_version() {
        let bytes = encode_manifest(&sample_manifest());
        let text = String::from_utf8(bytes).unwrap();
        let newer = text.replacen("\"version\":1", "\"version\":2", 1);
        assert_eq!(
            decode_manifest(newer.as_bytes()),
            Err(FormatError::Version { found: 2 })
        );
        let truncated = &text.as_bytes()[..text.len() / 2];
        match decode_manifest(truncated) {
            Err(FormatError::Corrupt { offset, what }) => {
                assert!(offset > 0 && offset <= truncated.len() as u64, "{offset}");
                assert!(what.contains("not a manifest"), "{what}");
            }
            other => panic!("{other:?}"),
        }
        let mut bad = sample_manifest();
        bad.ram_regions[0].file_offset = Hex(0x1000);
        let error = decode_manifest(&encode_manifest(&bad)).unwrap_err();
        assert!(error.to_string().contains("does not fit"), "{error}");
    }

    fn sample_index() -> Index {
        Index {
            extents: vec![
                Extent {
                    ram_offset: 0x1000,
                    pages: 2,
                    kind: ExtentKind::Data,
                    data_offset: 0x1000,
                    first_crc: 0,
                },
                Extent {
                    ram_offset: 0x5000,
                    pages: 3,
                    kind: ExtentKind::Zero,
                    data_offset: 0,
                    first_crc: 2,
                },
                Extent {
                    ram_offset: 0x9000,
                    pages: 1,
                    kind: ExtentKind::Data,
                    data_offset: 0,
                    first_crc: 2,
                },
            ],
            crcs: vec![1, 2, 3],
            data_pages: 3,
        }
    }

    #[test]
    fn indexes_round_trip_and_every_flipped_byte_is_detected() {
        let index = sample_index();
        let bytes = encode_index(&index);
        assert_eq!(decode_index(&bytes, 0x10_0000, 0x3000).unwrap(), index);
        for position in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[position] ^= 0x10;
            assert!(
                decode_index(&flipped, 0x10_0000, 0x3000).is_err(),
                "byte {position}"
            );
        }
        // Consistent but wrong for this machine: names the offset.
        let error = decode_index(&bytes, 0x8000, 0x3000).unwrap_err();
        assert!(error.to_string().contains("ends beyond"), "{error}");
        let error = decode_index(&bytes, 0x10_0000, 0x4000).unwrap_err();
        assert!(error.to_string().contains("data pages declared"), "{error}");
        assert!(decode_index(&bytes[..20], 0x10_0000, 0x3000).is_err());
    }
}
