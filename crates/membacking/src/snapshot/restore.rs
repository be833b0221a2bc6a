//! Restoring a snapshot: [`GuestMemoryBuilder::restore`].
//!
//! 1. The chain is loaded and checked before anything is built: the snapshot's manifest, its
//!    base's, and so on down to a full snapshot, each manifest and extent index verified
//!    against its checksum, each memory file against its size, each base against the id the
//!    snapshot above it recorded, and every layer against the same machine. The layers are
//!    flattened into one sorted list of pieces of the RAM backing, each taken from the newest
//!    layer that has it ([`flatten`]).
//! 2. A manager is built with the snapshot's layout and build options.
//! 3. The RAM is filled: [`RestoreMode::Copy`] reads every data page, checks its CRC-32C and
//!    writes it into the new RAM (two workers); [`RestoreMode::Lazy`] registers the RAM views
//!    with userfaultfd and returns at once (see the `lazy` module).
//! 4. Visibility and device windows are recreated.
//!
//! A failure in any step closes the half-built manager: nothing is returned half-built.

use super::describe;
use super::format;
use super::format::ExtentKind;
use super::format::Index;
use super::format::Manifest;
use super::lazy::LazyRestore;
use super::on_thread;
use super::writer::ITEM_PAGES;
use super::Progress;
use super::SnapshotError;
use crate::mapping_manager::va_mapper::VaMapper;
use crate::ram_visibility::RamRegionSpec;
use crate::GuestMemoryBuilder;
use crate::GuestMemoryManager;
use crate::MappableGuestMemory;
use crate::MappedMemoryRegion;
use crate::RamVisibility;
use memory_range::MemoryRange;
use sparse_mmap::Mappable;
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use vm_topology::memory::MemoryLayout;
use vm_topology::memory::MemoryRangeWithNode;

const PAGE_SIZE: u64 = format::PAGE_SIZE;
const PAGE: usize = 4096;
/// Longer chains are refused (a loop of bases, or a mistake).
const MAX_CHAIN: usize = 4096;

/// How a restore fills guest RAM.
#[derive(Debug, Copy, Clone, PartialEq, Eq, Default)]
pub enum RestoreMode {
    /// Copy every page before returning.
    #[default]
    Copy,
    /// Return at once; pages are filled on first touch (userfaultfd) and by a background
    /// thread, which unregisters everything when it is done.
    Lazy,
}

/// A backing for recorded mappings of a device window (the snapshot holds none).
#[derive(Debug)]
pub struct WindowBacking {
    /// The window's name.
    pub window: String,
    /// The offset in the window of the one recorded mapping this backs, or `None` for every
    /// recorded mapping of the window (one object behind the whole window).
    pub offset: Option<u64>,
    /// The object to map (mapped with each mapping's recorded length, object offset and
    /// writability).
    pub object: Mappable,
}

impl WindowBacking {
    /// Whether this backs the recorded mapping at `offset` of window `window`.
    fn backs(&self, window: &str, offset: u64) -> bool {
        self.window == window && self.offset.is_none_or(|own| own == offset)
    }
}

/// Options of [`GuestMemoryBuilder::restore`].
#[derive(Default)]
pub struct RestoreOptions {
    /// Copy or lazy.
    pub mode: RestoreMode,
    /// Told `(done, total)` bytes of page data restored, from a worker thread.
    pub progress: Option<Progress>,
    /// The layout the caller expects; a snapshot of another layout is refused
    /// ([`SnapshotError::Layout`]).
    pub layout: Option<MemoryLayout>,
    /// Backings of device-window mappings, by window name and offset. Each must name a
    /// recorded mapping; recorded mappings without one are listed in
    /// [`RestoredWindow::missing`].
    pub window_backings: Vec<WindowBacking>,
    /// Start dirty tracking on the restored manager with this snapshot as the chain head, so
    /// the next snapshot can be incremental on it.
    pub start_dirty_tracking: bool,
    /// Lazy mode: start the background fill at once (default). When false, pages are only
    /// filled on first touch until [`LazyRestore::start_background`].
    pub defer_background_fill: bool,
}

impl std::fmt::Debug for RestoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreOptions")
            .field("mode", &self.mode)
            .field("progress", &self.progress.is_some())
            .field("layout", &self.layout)
            .field("window_backings", &self.window_backings)
            .field("start_dirty_tracking", &self.start_dirty_tracking)
            .field("defer_background_fill", &self.defer_background_fill)
            .finish()
    }
}

/// A device window recreated by a restore (placed where it was, with the mappings whose
/// backings were supplied). Keep both halves: dropping them removes the window.
#[derive(Debug)]
pub struct RestoredWindow {
    /// The window as the snapshot recorded it.
    pub record: format::DeviceWindowRecord,
    /// The placement half.
    pub control: MappableGuestMemory,
    /// The mapping half: map the missing backings with it.
    pub region: Arc<MappedMemoryRegion>,
    /// Recorded mappings that no backing was supplied for.
    pub missing: Vec<format::DeviceMappingRecord>,
}

/// The result of a restore.
#[derive(Debug)]
pub struct RestoredManager {
    /// The manager.
    pub manager: GuestMemoryManager,
    /// The device windows, in the snapshot's order.
    pub windows: Vec<RestoredWindow>,
    /// The background fill of a lazy restore.
    pub lazy: Option<LazyRestore>,
    /// The restored snapshot's manifest.
    pub manifest: Manifest,
    /// The number of snapshots in the chain (1 for a full snapshot).
    pub layers: usize,
    /// Bytes of page data in the restored memory.
    pub bytes: u64,
}

/// One snapshot of a chain, loaded and verified.
pub(crate) struct Layer {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub index: Index,
    pub memory: File,
    pub memory_path: PathBuf,
}

/// Where a piece of the flattened chain comes from.
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// Pages of a layer's memory file.
    Data {
        /// Offset in the memory file.
        data_offset: u64,
        /// Index of the first page's CRC in the layer's index.
        first_crc: usize,
    },
    /// Pages that read as zeros.
    Zero,
}

/// A run of pages of the RAM backing and where its contents come from.
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub(crate) struct Piece {
    /// Backing offset (page-aligned).
    pub start: u64,
    /// Pages.
    pub pages: u64,
    /// The layer (index into the chain, oldest first).
    pub layer: usize,
    pub source: Source,
}

impl Piece {
    pub fn end(&self) -> u64 {
        self.start + self.pages * PAGE_SIZE
    }

    /// The part from page `skip` on, `pages` long.
    pub fn slice(&self, skip: u64, pages: u64) -> Piece {
        let source = match self.source {
            Source::Data {
                data_offset,
                first_crc,
            } => Source::Data {
                data_offset: data_offset + skip * PAGE_SIZE,
                first_crc: first_crc + usize::try_from(skip).unwrap_or(usize::MAX),
            },
            Source::Zero => Source::Zero,
        };
        Piece {
            start: self.start + skip * PAGE_SIZE,
            pages,
            layer: self.layer,
            source,
        }
    }
}

/// Reads and verifies a snapshot's `manifest.json` (a target left missing by a crash during a
/// replacement is recovered first).
pub fn read_snapshot(dir: &Path) -> Result<Manifest, SnapshotError> {
    if let Ok(target) = super::publish::Target::new(dir) {
        super::publish::recover(&target)?;
    }
    read_manifest(dir)
}

/// A snapshot's chain, newest first: each snapshot's directory and verified manifest, with its
/// index checked against the manifest and its memory file against its size (what a restore
/// checks before it builds anything; the pages themselves are not read).
/// Runs on the snapshot I/O threads.
pub fn read_snapshot_chain(
    dir: impl AsRef<Path>,
) -> impl Future<Output = Result<Vec<(PathBuf, Manifest)>, SnapshotError>> + Send + 'static {
    let dir = dir.as_ref().to_owned();
    on_thread("read", move || {
        if let Ok(target) = super::publish::Target::new(&dir) {
            super::publish::recover(&target)?;
        }
        let mut chain: Vec<_> = load_chain(&dir)?
            .into_iter()
            .map(|layer| (layer.dir, layer.manifest))
            .collect();
        chain.reverse();
        Ok(chain)
    })
}

/// What [`verify_snapshot`] checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSnapshot {
    /// The chain, newest first (as [`read_snapshot_chain`]).
    pub chain: Vec<(PathBuf, Manifest)>,
    /// Pages whose checksum was checked, over every layer.
    pub pages: u64,
}

/// Checks everything a restore checks and, in addition, every page of every layer of the
/// chain against its CRC-32C (a restore reads only the newest layer's copy of a page). The
/// first mismatch is [`SnapshotError::Corrupt`] naming the memory file and the page's offset in
/// it. `progress` is told `(bytes checked, total)`.
pub fn verify_snapshot(
    dir: impl AsRef<Path>,
    progress: Option<Progress>,
) -> impl Future<Output = Result<VerifiedSnapshot, SnapshotError>> + Send + 'static {
    let dir = dir.as_ref().to_owned();
    on_thread("verify", move || {
        if let Ok(target) = super::publish::Target::new(&dir) {
            super::publish::recover(&target)?;
        }
        let layers = load_chain(&dir)?;
        let items: Vec<Piece> = layers
            .iter()
            .enumerate()
            .flat_map(|(layer, loaded)| data_items(&layer_pieces(layer, &loaded.index)))
            .collect();
        super::parallel_items(
            &items,
            |item| item.pages * PAGE_SIZE,
            progress.as_ref(),
            || (),
            |(), buffer, item| {
                let len = usize::try_from(item.pages * PAGE_SIZE).unwrap_or(0);
                read_verified(&layers, item, &mut buffer[..len])
            },
        )?;
        let pages = items.iter().map(|item| item.pages).sum();
        let mut chain: Vec<_> = layers
            .into_iter()
            .map(|layer| (layer.dir, layer.manifest))
            .collect();
        chain.reverse();
        Ok(VerifiedSnapshot { chain, pages })
    })
}

/// The largest `manifest.json` read (a real one is a few KiB).
pub(crate) const MANIFEST_READ_LIMIT: u64 = 16 << 20;

/// Opens a snapshot file for reading, and only a regular file: anything else in its place is
/// [`SnapshotError::Corrupt`]. The open does not wait: a FIFO put there would otherwise block
/// it until a writer came, holding one of the snapshot-io threads for good (and with both
/// held, every later snapshot and restore of the process); a device such as `/dev/zero` would
/// never end a read.
///
/// `op` names the operation in an error of the open (`read` for a file read whole, `open`).
pub(crate) fn open_regular(path: &Path, op: &'static str) -> Result<File, SnapshotError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|error| SnapshotError::io(op, path, error))?;
    let kind = file
        .metadata()
        .map_err(|error| SnapshotError::io("stat", path, error))?
        .file_type();
    if !kind.is_file() {
        return Err(SnapshotError::Corrupt {
            file: path.to_owned(),
            offset: 0,
            what: format!(
                "it is {}, not a regular file; a snapshot directory holds only the regular files it was written with",
                describe_file_type(kind)
            ),
        });
    }
    // A regular file: reads ignore O_NONBLOCK, but clear it so the descriptor is an ordinary one.
    rustix::fs::fcntl_setfl(&file, rustix::fs::OFlags::empty())
        .map_err(|error| SnapshotError::io("fcntl", path, error.into()))?;
    Ok(file)
}

/// "a directory", "a FIFO", … for a message.
fn describe_file_type(kind: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

/// Reads the regular file `path`, refusing one longer than `limit` bytes (it would not be what
/// the snapshot wrote) as [`SnapshotError::Corrupt`] naming `expected`.
fn read_regular(path: &Path, limit: u64, expected: &str) -> Result<Vec<u8>, SnapshotError> {
    let bytes = read_at_most(&open_regular(path, "read")?, path, limit.saturating_add(1))?;
    if bytes.len() as u64 > limit {
        return Err(SnapshotError::Corrupt {
            file: path.to_owned(),
            offset: limit,
            what: format!("it is longer than {limit} bytes, {expected}"),
        });
    }
    Ok(bytes)
}

/// The first `limit` bytes of `file` (at `path`), or all of it when it is shorter.
fn read_at_most(file: &File, path: &Path, limit: u64) -> Result<Vec<u8>, SnapshotError> {
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(file, limit), &mut bytes)
        .map_err(|error| SnapshotError::io("read", path, error))?;
    Ok(bytes)
}

pub(crate) fn read_manifest(dir: &Path) -> Result<Manifest, SnapshotError> {
    let path = dir.join(format::MANIFEST_FILE);
    let bytes = read_regular(
        &path,
        MANIFEST_READ_LIMIT,
        "the most a manifest is read to (a manifest is a few KiB)",
    )?;
    format::decode_manifest(&bytes).map_err(|error| SnapshotError::format(&path, error))
}

/// The manifest of the snapshot in `dir` and the directories of its chain (oldest first, `dir`
/// last), once everything a restore of it checks before building is checked: each layer's
/// manifest, index and memory-file size, and its chain of bases. An incremental snapshot on a
/// base that fails this could never be restored.
pub(crate) fn read_restorable_manifest(
    dir: &Path,
) -> Result<(Manifest, Vec<PathBuf>), SnapshotError> {
    let mut chain = load_chain(dir)?;
    let layers = chain.iter().map(|layer| layer.dir.clone()).collect();
    match chain.pop() {
        Some(top) => Ok((top.manifest, layers)),
        None => Ok((read_manifest(dir)?, layers)),
    }
}

fn load_layer(dir: &Path) -> Result<Layer, SnapshotError> {
    let manifest = read_manifest(dir)?;
    let index_path = dir.join(format::INDEX_FILE);
    let index_file = open_regular(&index_path, "read")?;
    // At most one byte more than the manifest records: enough to see that it is longer.
    let bytes = read_at_most(
        &index_file,
        &index_path,
        manifest.index.size.0.saturating_add(1),
    )?;
    let corrupt = |offset: u64, what: String| SnapshotError::Corrupt {
        file: index_path.clone(),
        offset,
        what,
    };
    if bytes.len() as u64 != manifest.index.size.0 {
        let len = index_file
            .metadata()
            .map_or(bytes.len() as u64, |metadata| metadata.len());
        return Err(corrupt(
            len,
            format!("{len} bytes, the manifest says {}", manifest.index.size.0),
        ));
    }
    let crc = crc32c::crc32c(&bytes);
    if Some(crc) != manifest.index.crc32c {
        return Err(corrupt(
            0,
            format!(
                "checksum {crc:08x} does not match the manifest's {:08x}",
                manifest.index.crc32c.unwrap_or(0)
            ),
        ));
    }
    let index = format::decode_index(&bytes, manifest.ram_size.0, manifest.memory.size.0)
        .map_err(|error| SnapshotError::format(&index_path, error))?;
    let memory_path = dir.join(format::MEMORY_FILE);
    let memory = open_regular(&memory_path, "open")?;
    let size = memory
        .metadata()
        .map_err(|error| SnapshotError::io("stat", &memory_path, error))?
        .len();
    if size != manifest.memory.size.0 {
        return Err(SnapshotError::Corrupt {
            file: memory_path,
            offset: size,
            what: format!("{size} bytes, the manifest says {}", manifest.memory.size.0),
        });
    }
    Ok(Layer {
        dir: dir.to_owned(),
        manifest,
        index,
        memory,
        memory_path,
    })
}

/// Loads `dir` and its bases, oldest first, checking ids and machines.
pub(crate) fn load_chain(dir: &Path) -> Result<Vec<Layer>, SnapshotError> {
    let top = load_layer(dir)?;
    let mut chain = vec![top];
    loop {
        let (base_path, base_id, above_dir) = {
            let above = chain.last().map(|layer| (&layer.manifest, &layer.dir));
            match above {
                Some((manifest, above_dir)) => match &manifest.base {
                    Some(base) => (base.path.clone(), base.id.clone(), above_dir.clone()),
                    None => break,
                },
                None => break,
            }
        };
        if chain.len() >= MAX_CHAIN {
            return Err(SnapshotError::Layout {
                dir: dir.to_owned(),
                what: format!("its chain of bases is longer than {MAX_CHAIN}"),
            });
        }
        let joined = above_dir.join(&base_path);
        let base_dir = joined.canonicalize().unwrap_or(joined);
        let base = load_layer(&base_dir).map_err(|error| match error {
            SnapshotError::Io { op, path, source } => SnapshotError::BaseUnreadable {
                snapshot: above_dir.clone(),
                base: base_dir.clone(),
                op,
                path,
                source,
            },
            other => other,
        })?;
        if base.manifest.id != base_id {
            return Err(SnapshotError::Layout {
                dir: above_dir,
                what: format!(
                    "its base {} is now snapshot {}, not {} it was taken on (was the base replaced?)",
                    base_dir.display(),
                    base.manifest.id,
                    base_id
                ),
            });
        }
        super::writer::check_same_machine(
            &base_dir,
            &base.manifest,
            "the restored snapshot's",
            &chain[0].manifest,
        )?;
        chain.push(base);
    }
    chain.reverse();
    Ok(chain)
}

/// The pieces of one layer's index.
fn layer_pieces(layer: usize, index: &Index) -> Vec<Piece> {
    index
        .extents
        .iter()
        .map(|extent| Piece {
            start: extent.ram_offset,
            pages: u64::from(extent.pages),
            layer,
            source: match extent.kind {
                ExtentKind::Data => Source::Data {
                    data_offset: extent.data_offset,
                    first_crc: extent.first_crc,
                },
                ExtentKind::Zero => Source::Zero,
            },
        })
        .collect()
}

/// Lays the sorted, disjoint `top` over the sorted, disjoint `old`: the result is sorted and
/// disjoint, with `top` winning wherever both have pages.
pub(crate) fn overlay(old: Vec<Piece>, top: Vec<Piece>) -> Vec<Piece> {
    let mut out = Vec::with_capacity(old.len() + top.len());
    let mut next = 0;
    for piece in old {
        let mut rest = Some(piece);
        while let Some(current) = rest.take() {
            while next < top.len() && top[next].end() <= current.start {
                next += 1;
            }
            let Some(cover) = top.get(next).filter(|cover| cover.start < current.end()) else {
                out.push(current);
                break;
            };
            if cover.start > current.start {
                out.push(current.slice(0, (cover.start - current.start) / PAGE_SIZE));
            }
            if cover.end() < current.end() {
                let skip = (cover.end() - current.start) / PAGE_SIZE;
                rest = Some(current.slice(skip, current.pages - skip));
            }
        }
    }
    out.extend(top);
    out.sort_unstable_by_key(|piece| piece.start);
    out
}

/// The flattened chain: for every page with data or a recorded zero, the newest layer's.
pub(crate) fn flatten(layers: &[Layer]) -> Vec<Piece> {
    let mut pieces = Vec::new();
    for (layer, loaded) in layers.iter().enumerate() {
        pieces = overlay(pieces, layer_pieces(layer, &loaded.index));
    }
    pieces
}

/// The data pieces cut into items of at most [`ITEM_PAGES`] pages.
pub(crate) fn data_items(pieces: &[Piece]) -> Vec<Piece> {
    let mut items = Vec::new();
    for piece in pieces.iter().filter(|piece| piece.source != Source::Zero) {
        let mut skip = 0;
        while skip < piece.pages {
            let pages = (piece.pages - skip).min(ITEM_PAGES);
            items.push(piece.slice(skip, pages));
            skip += pages;
        }
    }
    items
}

/// Reads `item`'s pages from its layer into `buffer` and checks each page's CRC-32C.
pub(crate) fn read_verified(
    layers: &[Layer],
    item: &Piece,
    buffer: &mut [u8],
) -> Result<(), SnapshotError> {
    let Source::Data {
        data_offset,
        first_crc,
    } = item.source
    else {
        buffer.fill(0);
        return Ok(());
    };
    let layer = &layers[item.layer];
    layer
        .memory
        .read_exact_at(buffer, data_offset)
        .map_err(|error| {
            if error.kind() != io::ErrorKind::UnexpectedEof {
                return SnapshotError::io("read", &layer.memory_path, error);
            }
            // Its size was checked when the chain was loaded: it shrank since.
            let now = layer
                .memory
                .metadata()
                .map_or_else(|_| "fewer".to_owned(), |metadata| metadata.len().to_string());
            SnapshotError::Corrupt {
                file: layer.memory_path.clone(),
                offset: data_offset,
                what: format!(
                    "it ends before the {} bytes of RAM offset {:#x} that the index places here: it holds {now} bytes, {} when the restore began (was it truncated meanwhile?)",
                    buffer.len(),
                    item.start,
                    layer.manifest.memory.size.0
                ),
            }
        })?;
    for (page, bytes) in buffer.chunks_exact(PAGE).enumerate() {
        let stored = layer.index.crcs.get(first_crc + page).copied();
        let computed = crc32c::crc32c(bytes);
        if stored != Some(computed) {
            let offset = data_offset + page as u64 * PAGE_SIZE;
            return Err(SnapshotError::Corrupt {
                file: layer.memory_path.clone(),
                offset,
                what: format!(
                    "the page of RAM offset {:#x} has checksum {computed:08x}, the index says {:08x}",
                    item.start + page as u64 * PAGE_SIZE,
                    stored.unwrap_or(0)
                ),
            });
        }
    }
    Ok(())
}

/// The MemoryLayout a manifest records.
pub(crate) fn layout_of(
    dir: &Path,
    record: &format::LayoutRecord,
) -> Result<MemoryLayout, SnapshotError> {
    let invalid = |what: String| SnapshotError::Layout {
        dir: dir.to_owned(),
        what,
    };
    let range = |start: u64, end: u64| {
        MemoryRange::try_new(start..end)
            .map_err(|_| invalid(format!("{start:#x}..{end:#x} is not a valid range")))
    };
    let ram = record
        .ram
        .iter()
        .map(|ram| {
            Ok(MemoryRangeWithNode {
                range: range(ram.start.0, ram.end.0)?,
                vnode: ram.vnode,
            })
        })
        .collect::<Result<Vec<_>, SnapshotError>>()?;
    let mmio = record
        .mmio
        .iter()
        .map(|gap| range(gap.start.0, gap.end.0))
        .collect::<Result<Vec<_>, _>>()?;
    let layout = match &record.vtl2 {
        None => MemoryLayout::new_from_ranges(&ram, &mmio),
        Some(vtl2) => {
            let size = ram.iter().map(|ram| ram.range.len()).sum();
            MemoryLayout::new(size, &mmio, Some(range(vtl2.start.0, vtl2.end.0)?))
        }
    }
    .map_err(|error| invalid(format!("its layout is invalid: {error}")))?;
    if layout.ram() != ram.as_slice() {
        let recorded = describe::layout_record_parts(record);
        let rebuilt = describe::layout_parts(&layout);
        return Err(invalid(format!(
            "its RAM {} cannot be rebuilt with a VTL2 range (that gives {})",
            recorded[0].1, rebuilt[0].1
        )));
    }
    Ok(layout)
}

/// Refuses `layout` when the caller expected another one; `whose` names the layout found in
/// the message ("the snapshot's"), which names each part that differs.
pub(crate) fn check_expected_layout(
    dir: &Path,
    whose: &str,
    layout: &MemoryLayout,
    expected: Option<&MemoryLayout>,
) -> Result<(), SnapshotError> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let same = expected.ram() == layout.ram()
        && expected.mmio() == layout.mmio()
        && expected.vtl2_range() == layout.vtl2_range();
    if same {
        return Ok(());
    }
    let what = describe::differences(
        whose,
        &describe::layout_parts(layout),
        "the expected layout's",
        &describe::layout_parts(expected),
    )
    .unwrap_or_else(|| format!("{whose} layout is not the expected layout"));
    Err(SnapshotError::Layout {
        dir: dir.to_owned(),
        what,
    })
}

/// Checks that every backing names a recorded mapping of exactly one window of `manifest`.
pub(crate) fn check_window_backings(
    dir: &Path,
    manifest: &Manifest,
    backings: &[WindowBacking],
) -> Result<(), SnapshotError> {
    for backing in backings {
        check_window_backing(dir, manifest, backing)?;
    }
    Ok(())
}

/// What to fill RAM with, resolved before the manager is built.
pub(crate) struct Plan {
    pub layers: Arc<Vec<Layer>>,
    pub pieces: Arc<Vec<Piece>>,
    pub layout: MemoryLayout,
}

fn plan(dir: &Path, options: &RestoreOptions) -> Result<Plan, SnapshotError> {
    let layers = load_chain(dir)?;
    let top = &layers[layers.len() - 1].manifest;
    let layout = layout_of(dir, &top.layout)?;
    check_expected_layout(dir, "the snapshot's", &layout, options.layout.as_ref())?;
    check_window_backings(dir, top, &options.window_backings)?;
    let pieces = flatten(&layers);
    Ok(Plan {
        layers: Arc::new(layers),
        pieces: Arc::new(pieces),
        layout,
    })
}

/// A backing must name exactly one recorded window and, with an offset, one of its mappings;
/// a window-wide backing needs a window with mappings.
fn check_window_backing(
    dir: &Path,
    top: &Manifest,
    backing: &WindowBacking,
) -> Result<(), SnapshotError> {
    let matches: Vec<_> = top
        .device_windows
        .iter()
        .filter(|window| window.name == backing.window)
        .collect();
    let what = match (matches.as_slice(), backing.offset) {
        ([window], offset) => {
            let backed = window
                .mappings
                .iter()
                .any(|mapping| backing.backs(&window.name, mapping.offset.0));
            if backed {
                return Ok(());
            }
            match offset {
                Some(offset) => format!(
                    "a backing was given for offset {offset:#x} of device window \"{}\", which has no mapping there (its mappings start at {})",
                    backing.window,
                    describe::list(window.mappings.iter().map(|m| format!("{:#x}", m.offset.0)))
                ),
                None => format!(
                    "a backing was given for device window \"{}\", which has no recorded mappings",
                    backing.window
                ),
            }
        }
        (found, _) => format!(
            "a backing was given for device window \"{}\", but the snapshot has {} window(s) of that name (it has {})",
            backing.window,
            found.len(),
            describe::list(top.device_windows.iter().map(|w| format!("\"{}\"", w.name)))
        ),
    };
    Err(SnapshotError::Layout {
        dir: dir.to_owned(),
        what,
    })
}

/// Where a copy restore writes RAM.
pub(crate) enum Destination {
    /// The RAM object (pwrite at backing offsets).
    Object(Arc<Mappable>),
    /// Private RAM in the VA window of `mapper` (GPA = window offset).
    Private {
        mapper: Arc<VaMapper>,
        specs: Vec<RamRegionSpec>,
    },
}

impl Destination {
    /// Makes `len` bytes at backing offset `offset` read as zeros: a hole punched in the RAM
    /// object (its pages are freed), or zeros written into private RAM.
    pub(crate) fn zero(&self, offset: u64, len: u64) -> std::io::Result<()> {
        match self {
            Destination::Object(object) => sparse_mmap::punch_hole(object.as_fd(), offset, len),
            Destination::Private { .. } => {
                let zeros = vec![0u8; PAGE * usize::try_from(ITEM_PAGES).unwrap_or(1)];
                let mut done = 0;
                while done < len {
                    let step = (len - done).min(zeros.len() as u64);
                    let step_len = usize::try_from(step).unwrap_or(zeros.len());
                    self.write(offset + done, &zeros[..step_len])?;
                    done += step;
                }
                Ok(())
            }
        }
    }

    /// Writes `data` at backing offset `offset` (inside one RAM region for private RAM).
    pub(crate) fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        match self {
            Destination::Object(object) => sparse_mmap::write_all_at(object.as_fd(), data, offset),
            Destination::Private { mapper, specs } => {
                let len = data.len() as u64;
                let spec = specs
                    .iter()
                    .find(|spec| {
                        offset >= spec.file_offset
                            && offset + len <= spec.file_offset + spec.range.len()
                    })
                    .ok_or_else(|| std::io::Error::other("a piece outside the RAM regions"))?;
                let gpa = spec.range.start() + (offset - spec.file_offset);
                mapper
                    .write_at(gpa, data)
                    .map_err(|error| std::io::Error::other(error.to_string()))
            }
        }
    }
}

/// Copies every data piece into `destination`, checking every page; two workers.
fn copy_all(
    plan: &Plan,
    destination: &Destination,
    progress: Option<&Progress>,
) -> Result<u64, SnapshotError> {
    let items = data_items(&plan.pieces);
    super::parallel_items(
        &items,
        |item| item.pages * PAGE_SIZE,
        progress,
        || (),
        |(), buffer, item| {
            let len = usize::try_from(item.pages * PAGE_SIZE).unwrap_or(0);
            let data = &mut buffer[..len];
            read_verified(&plan.layers, item, data)?;
            destination.write(item.start, data).map_err(|error| {
                let path = &plan.layers[item.layer].memory_path;
                SnapshotError::io("write restored RAM from", path, error)
            })
        },
    )?;
    Ok(items.iter().map(|item| item.pages * PAGE_SIZE).sum())
}

impl GuestMemoryBuilder {
    /// Rebuilds a manager from the snapshot in `dir` and its chain of bases: the same layout,
    /// build options, RAM contents, visibility and (placed) device windows. See the `restore`
    /// module and `docs/snapshots.md`.
    ///
    /// Errors: [`SnapshotError::Corrupt`], [`SnapshotError::Version`], [`SnapshotError::Layout`]
    /// (also for an unexpected layout or a window backing that names no recorded mapping),
    /// [`SnapshotError::LazyUnavailable`], [`SnapshotError::Io`], and the errors of building
    /// and of recreating visibility and windows. Nothing is left half-built.
    pub fn restore(
        dir: impl AsRef<Path>,
        options: RestoreOptions,
    ) -> impl Future<Output = Result<RestoredManager, SnapshotError>> + Send + 'static {
        let dir = dir.as_ref().to_owned();
        async move {
            let mut options = options;
            let plan = {
                let dir = dir.clone();
                let backings = std::mem::take(&mut options.window_backings);
                let layout = options.layout.take();
                let (plan, backings) = on_thread("restore", move || {
                    let probe = RestoreOptions {
                        layout,
                        window_backings: backings,
                        ..RestoreOptions::default()
                    };
                    let plan = plan(&dir, &probe)?;
                    Ok((plan, probe.window_backings))
                })
                .await?;
                options.window_backings = backings;
                plan
            };
            // Created before anything is built, and used by the lazy restore itself.
            let uffd = match options.mode {
                RestoreMode::Copy => None,
                RestoreMode::Lazy => Some(super::lazy::new_userfaultfd()?),
            };
            let top = plan.layers[plan.layers.len() - 1].manifest.clone();
            let manager = builder_for(&top).build(&plan.layout).await?;
            match finish_restore(&dir, manager, plan, top, options, uffd).await {
                Ok(restored) => Ok(restored),
                Err((manager, error)) => {
                    manager.close().await;
                    Err(error)
                }
            }
        }
    }
}

/// Sets the visibility of each RAM region and recreates each device window as `manifest`
/// records them (windows with the mappings `backings` supplies).
pub(crate) async fn recreate_regions(
    manager: &GuestMemoryManager,
    manifest: &Manifest,
    backings: Vec<WindowBacking>,
) -> Result<Vec<RestoredWindow>, SnapshotError> {
    let control = manager.ram_visibility_control();
    for region in &manifest.ram_regions {
        let visibility: RamVisibility = match region.visibility.parse() {
            Ok(visibility) => visibility,
            Err(_) => RamVisibility::ReadWrite,
        };
        if visibility == RamVisibility::ReadWrite {
            continue;
        }
        let range = MemoryRange::new(region.start.0..region.end.0);
        control.set_ram_visibility(range, visibility).await?;
    }
    let mut backings = backings;
    let mapper = manager.device_memory_mapper();
    let mut windows = Vec::new();
    for record in &manifest.device_windows {
        let failed = |source: std::io::Error| SnapshotError::DeviceWindow {
            window: record.name.clone(),
            source,
        };
        let len = usize::try_from(record.len.0).map_err(|_| {
            failed(std::io::Error::other(
                "the window does not fit the address space",
            ))
        })?;
        let (control, region) = mapper
            .new_region(len, record.name.clone())
            .map_err(failed)?;
        let mut missing = Vec::new();
        for mapping in &record.mappings {
            let supplied = backings
                .iter()
                .position(|backing| backing.backs(&record.name, mapping.offset.0));
            let object = match supplied {
                // A window-wide backing stays for the window's other mappings.
                Some(position) if backings[position].offset.is_none() => {
                    sparse_mmap::mappable_from_fd(backings[position].object.as_fd())
                        .map_err(&failed)?
                }
                Some(position) => backings.swap_remove(position).object,
                None => {
                    missing.push(mapping.clone());
                    continue;
                }
            };
            let (Ok(offset), Ok(map_len)) = (
                usize::try_from(mapping.offset.0),
                usize::try_from(mapping.len.0),
            ) else {
                return Err(failed(std::io::Error::other(
                    "mapping beyond the address space",
                )));
            };
            region
                .map(
                    offset,
                    &object,
                    mapping.file_offset.0,
                    map_len,
                    mapping.writable,
                )
                .await
                .map_err(failed)?;
        }
        control
            .map_to_guest(record.gpa.0, record.writable)
            .await
            .map_err(failed)?;
        windows.push(RestoredWindow {
            record: record.clone(),
            control,
            region,
            missing,
        });
    }
    Ok(windows)
}

/// A builder with the build options `manifest` records.
pub(crate) fn builder_for(manifest: &Manifest) -> GuestMemoryBuilder {
    let options = &manifest.options;
    GuestMemoryBuilder::new()
        .x86_legacy_support(options.x86_legacy_support)
        .private_memory(options.private_memory)
        .transparent_hugepages(options.transparent_hugepages)
        .vtl0_alias_map(options.vtl0_alias_map.map(|offset| offset.0))
        .pin_mappings(options.pin_mappings)
        .prefetch_ram(options.prefetch_ram)
}

/// Checks that `manager` was built with the RAM regions (ranges and backing offsets)
/// `manifest` records.
pub(crate) fn check_ram_regions(
    dir: &Path,
    manager: &GuestMemoryManager,
    manifest: &Manifest,
) -> Result<(), SnapshotError> {
    let built: Vec<(u64, u64, u64)> = manager
        .ram_regions()
        .iter()
        .map(|(range, offset)| (range.start(), range.end(), *offset))
        .collect();
    let recorded: Vec<(u64, u64, u64)> = manifest
        .ram_regions
        .iter()
        .map(|region| (region.start.0, region.end.0, region.file_offset.0))
        .collect();
    if built != recorded {
        return Err(SnapshotError::Layout {
            dir: dir.to_owned(),
            what: format!(
                "its RAM regions are {} but the manager built {}",
                describe::ram_regions(recorded),
                describe::ram_regions(built)
            ),
        });
    }
    Ok(())
}

/// Where a copy into `manager`'s RAM writes.
pub(crate) fn destination_of(manager: &GuestMemoryManager) -> Result<Destination, SnapshotError> {
    Ok(match manager.shared_memory_backing() {
        Some(backing) => Destination::Object(Arc::new(
            sparse_mmap::mappable_from_fd(std::os::fd::AsFd::as_fd(&backing))
                .map_err(|error| SnapshotError::io("duplicate", "the RAM object", error))?,
        )),
        None => Destination::Private {
            mapper: manager.va_mapper(),
            specs: manager.ram_specs.clone(),
        },
    })
}

type Failed = (GuestMemoryManager, SnapshotError);

/// Fills RAM and recreates visibility and windows; on failure hands the manager back to be
/// closed.
async fn finish_restore(
    dir: &Path,
    manager: GuestMemoryManager,
    plan: Plan,
    top: Manifest,
    options: RestoreOptions,
    uffd: Option<sparse_mmap::userfaultfd::Userfaultfd>,
) -> Result<RestoredManager, Failed> {
    if let Err(error) = check_ram_regions(dir, &manager, &top) {
        return Err((manager, error));
    }
    let layers = plan.layers.len();
    let bytes: u64 = plan
        .pieces
        .iter()
        .filter(|piece| piece.source != Source::Zero)
        .map(|piece| piece.pages * PAGE_SIZE)
        .sum();
    let lazy = match options.mode {
        RestoreMode::Copy => {
            let destination = match destination_of(&manager) {
                Ok(destination) => destination,
                Err(error) => return Err((manager, error)),
            };
            let progress = options.progress.clone();
            let copied = on_thread("restore", move || {
                copy_all(&plan, &destination, progress.as_ref())
            })
            .await;
            if let Err(error) = copied {
                return Err((manager, error));
            }
            None
        }
        RestoreMode::Lazy => match LazyRestore::start(
            &manager,
            uffd,
            plan,
            options.progress.clone(),
            !options.defer_background_fill,
        ) {
            Ok(lazy) => {
                *manager.lazy_restore.lock() = Some(super::lazy::DecommitGuard::new(&lazy));
                Some(lazy)
            }
            Err(error) => return Err((manager, error)),
        },
    };
    let windows = match recreate_regions(&manager, &top, options.window_backings).await {
        Ok(windows) => windows,
        Err(error) => return Err((manager, error)),
    };
    if options.start_dirty_tracking {
        if let Err(error) = manager.regions.adopt_snapshot(top.id.clone()).await {
            return Err((manager, error.into()));
        }
    }
    Ok(RestoredManager {
        manager,
        windows,
        lazy,
        manifest: top,
        layers,
        bytes,
    })
}
