//! Writing a snapshot: [`GuestMemoryManager::snapshot`].
//!
//! The manager thread is asked once (`SnapshotBegin`): it harvests dirty tracking and hands
//! over, at the same instant, the regions (for visibility and device windows) and — for an
//! incremental snapshot — the RAM pages dirtied since the base. Everything else runs on worker
//! threads: the pages to save (all pages with data, or the dirtied ones) are cut into items of
//! at most [`ITEM_PAGES`] pages; each worker reads an item, checksums each page, skips all-zero
//! pages (a full snapshot) or records them as zero extents (an incremental one, where they
//! overwrite older data), reserves space in `memory.bin` and writes the data pages there. Then
//! the index and the manifest are written, everything is fsynced, and the directory is
//! published (`publish`).
//!
//! The guest may keep running: each page is checksummed as it is stored, so a snapshot is
//! always self-consistent per page; a consistent image of the whole memory needs the vCPUs and
//! other writers stopped, and with dirty tracking on, anything written during the snapshot is
//! in the next take and the next incremental snapshot.

use super::describe;
use super::format;
use super::format::Extent;
use super::format::ExtentKind;
use super::format::Hex;
use super::format::Index;
use super::format::Manifest;
use super::on_thread;
use super::publish;
use super::source::RamSource;
use super::Progress;
use super::SnapshotError;
use crate::dirty::PageSet;
use crate::memory_manager::region_actor::SnapshotBegun;
use crate::memory_manager::BuildOptions;
use crate::ram_visibility::RamRegionSpec;
use crate::ram_visibility::SpecIndex;
use crate::region_manager::RegionInspect;
use crate::region_manager::DEVICE_PRIORITY;
use crate::region_manager::RAM_PRIORITY;
use crate::GuestMemoryManager;
use crate::RamVisibility;
use std::fs::File;
use std::fs::OpenOptions;
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

const PAGE_SIZE: u64 = format::PAGE_SIZE;
const PAGE: usize = 4096;
/// The largest piece of work (and extent) a worker handles at once: 1 MiB.
pub(crate) const ITEM_PAGES: u64 = 256;
/// [`ITEM_PAGES`] in bytes.
pub(crate) const ITEM_BYTES: usize = 256 * PAGE;

/// Options of [`GuestMemoryManager::snapshot`].
#[derive(Clone, Default)]
pub struct SnapshotOptions {
    /// Write an incremental snapshot on this base (which must have been taken by this manager
    /// while dirty tracking was on, and be the latest one taken since).
    pub base: Option<PathBuf>,
    /// Told `(done, total)` bytes of RAM scanned, from a worker thread.
    pub progress: Option<Progress>,
}

impl std::fmt::Debug for SnapshotOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotOptions")
            .field("base", &self.base)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// What a snapshot wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The snapshot directory.
    pub dir: PathBuf,
    /// The snapshot's id.
    pub id: String,
    /// Bytes of page data written (`memory.bin`).
    pub bytes: u64,
    /// Bytes of all files written (the data, the index and the manifest).
    pub total_bytes: u64,
    /// Extent records (data and zero).
    pub extents: u64,
    /// Pages recorded as zeros (incremental snapshots).
    pub zero_pages: u64,
    /// Whether it is incremental.
    pub incremental: bool,
    /// Set when the snapshot was published but the fsync of its parent directory after the
    /// rename failed: what failed, and that the rename may not survive a crash of the machine.
    pub warning: Option<String>,
}

/// Everything a snapshot needs from the manager, owned (the future is `'static`).
pub(crate) struct ManagerView {
    pub source: Arc<RamSource>,
    pub specs: Vec<RamRegionSpec>,
    pub options: BuildOptions,
    pub private: bool,
    pub alias_offset: Option<u64>,
    pub pin_mappings: bool,
    pub ram_size: u64,
}

impl GuestMemoryManager {
    /// Writes a snapshot of guest RAM and of the machine's memory configuration to `dir`
    /// (created; an existing snapshot or empty directory there is replaced atomically; anything
    /// else there is refused before anything is written). See the `snapshot` module and
    /// `docs/snapshots.md`.
    ///
    /// Errors: [`SnapshotError::TargetNotSnapshot`] for a `dir` that is neither a snapshot nor
    /// an empty directory, [`SnapshotError::DirtyTrackingOff`] for a base that tracking does not cover,
    /// [`SnapshotError::Layout`] for a base of another machine, [`SnapshotError::Corrupt`] /
    /// [`SnapshotError::Version`] for a base (or a base of it) that a restore would refuse, [`SnapshotError::InvalidArgument`]
    /// for a base that is the target, [`SnapshotError::Io`] for file system failures (the
    /// target then keeps its previous contents). An fsync of the parent directory that fails
    /// once the snapshot is in place is [`SnapshotInfo::warning`], not an error: the snapshot
    /// is published.
    pub fn snapshot(
        &self,
        dir: impl AsRef<Path>,
        options: SnapshotOptions,
    ) -> impl Future<Output = Result<SnapshotInfo, SnapshotError>> + Send + 'static {
        let dir = dir.as_ref().to_owned();
        let regions = self.regions.clone();
        let view = self.snapshot_view();
        let lazy_restore = self.lazy_restore.lock().clone();
        async move {
            let target = publish::Target::new(&dir)?;
            // Before anything is written: the target must be replaceable, the base readable.
            let base_dir = options.base.clone();
            let (target, base) = on_thread("snapshot", move || {
                publish::check_replaceable(&target)?;
                let base = match base_dir {
                    Some(base_dir) => {
                        let (manifest, layers) =
                            super::restore::read_restorable_manifest(&base_dir)?;
                        check_not_target(&base_dir, &layers, &target.path)?;
                        Some((base_dir, manifest))
                    }
                    None => None,
                };
                Ok((target, base))
            })
            .await?;
            if let Some(lazy_restore) = lazy_restore {
                // RAM still being restored lazily is not all readable yet: finish first.
                lazy_restore.finished().await?;
            }
            let id = super::new_id();
            let base_tracking = match &base {
                Some((base_dir, manifest)) => {
                    let Some(session) = manifest.tracking_session else {
                        return Err(SnapshotError::DirtyTrackingOff {
                            base: base_dir.clone(),
                            reason: "the base was taken while dirty tracking was off, or while \
                                     another snapshot of this manager was being written (such a \
                                     snapshot stays outside the incremental chain)"
                                .into(),
                        });
                    };
                    Some((session.0, manifest.id.clone()))
                }
                None => None,
            };
            let begun = regions.snapshot_begin(base_tracking, id.clone()).await?;
            // From here on the chain head waits for this snapshot: tell the manager how it
            // ended, also when this future is dropped.
            let mut finish = FinishGuard {
                regions: regions.clone(),
                id: id.clone(),
                succeeded: false,
            };
            let SnapshotBegun {
                start,
                regions: inspect,
            } = begun;
            let start = match start {
                Ok(start) => start,
                Err(reason) => {
                    let base = base.map(|(dir, _)| dir).unwrap_or_default();
                    return Err(SnapshotError::DirtyTrackingOff {
                        base,
                        reason: reason.to_string(),
                    });
                }
            };
            let mut manifest = view.manifest_skeleton(&id, &inspect);
            manifest.tracking_session = start.session.map(Hex);
            if let Some((base_dir, base_manifest)) = &base {
                check_same_machine(base_dir, base_manifest, "this manager's", &manifest)?;
                manifest.base = Some(format::BaseRecord {
                    path: relative_base_path(base_dir, &dir),
                    id: base_manifest.id.clone(),
                });
            }
            let progress = options.progress.clone();
            let dirty = start.dirty;
            let info = on_thread("snapshot", move || {
                write_snapshot(&view, &target, manifest, dirty.as_ref(), progress.as_ref())
            })
            .await?;
            finish.succeeded = true;
            Ok(info)
        }
    }

    /// The parts of the manager a snapshot reads.
    pub(crate) fn snapshot_view(&self) -> ManagerView {
        let source = match &self.ram_object {
            Some(object) => RamSource::Object(object.clone()),
            None => RamSource::Private {
                mapper: self.mapper().clone(),
                specs: self.ram_specs.clone(),
            },
        };
        let ram_size = self
            .ram_specs
            .iter()
            .map(|spec| spec.file_offset + spec.range.len())
            .max()
            .unwrap_or(0);
        ManagerView {
            source: Arc::new(source),
            specs: self.ram_specs.clone(),
            options: self.options.clone(),
            private: self.private,
            alias_offset: self.alias_offset,
            pin_mappings: self.pin_mappings,
            ram_size,
        }
    }
}

/// Tells the manager how snapshot `id` ended (on drop).
struct FinishGuard {
    regions: crate::memory_manager::region_actor::RegionManagerClient,
    id: String,
    succeeded: bool,
}

impl Drop for FinishGuard {
    fn drop(&mut self) {
        self.regions
            .snapshot_finish(std::mem::take(&mut self.id), self.succeeded);
    }
}

/// Refuses a target that is `base` or one of the snapshots of its chain (`layers`, any order):
/// the new snapshot would replace a layer it is built on, and neither it nor any other snapshot
/// on that layer could be restored again.
fn check_not_target(base: &Path, layers: &[PathBuf], target: &Path) -> Result<(), SnapshotError> {
    let canonical_base = base
        .canonicalize()
        .map_err(|error| SnapshotError::io("resolve", base, error))?;
    let Ok(canonical_target) = target.canonicalize() else {
        return Ok(());
    };
    if canonical_target == canonical_base {
        return Err(SnapshotError::InvalidArgument {
            what: format!(
                "an incremental snapshot cannot replace its own base {}; write it to another directory",
                base.display()
            ),
        });
    }
    for layer in layers {
        if layer
            .canonicalize()
            .is_ok_and(|layer| layer == canonical_target)
        {
            return Err(SnapshotError::InvalidArgument {
                what: format!(
                    "an incremental snapshot cannot replace {}, a snapshot its base {} is built on (the new snapshot, its base and every snapshot on them could not be restored); write it to another directory",
                    target.display(),
                    base.display()
                ),
            });
        }
    }
    Ok(())
}

/// The base's path as seen from `target` (relative when both resolve, else absolute).
fn relative_base_path(base: &Path, target: &Path) -> String {
    let absolute = |path: &Path| -> Option<PathBuf> {
        if let Ok(path) = path.canonicalize() {
            return Some(path);
        }
        let parent = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        Some(parent.canonicalize().ok()?.join(path.file_name()?))
    };
    let (Some(base), Some(target)) = (absolute(base), absolute(target)) else {
        return base.display().to_string();
    };
    let base_parts: Vec<_> = base.components().collect();
    let target_parts: Vec<_> = target.components().collect();
    let common = base_parts
        .iter()
        .zip(&target_parts)
        .take_while(|(a, b)| a == b)
        .count();
    let mut relative = PathBuf::new();
    for _ in common..target_parts.len() {
        relative.push("..");
    }
    for part in &base_parts[common..] {
        relative.push(part);
    }
    relative.display().to_string()
}

/// Checks that `base` (the snapshot in `dir`) was taken of a machine like the one `manifest`
/// describes; `whose` names that machine in the message ("this manager's"), which names each
/// part that differs.
pub(crate) fn check_same_machine(
    dir: &Path,
    base: &Manifest,
    whose: &str,
    manifest: &Manifest,
) -> Result<(), SnapshotError> {
    let backing_size = |m: &Manifest| vec![("RAM backing size", format!("{:#x}", m.ram_size.0))];
    let regions =
        |m: &Manifest| vec![("RAM regions", describe::ram_region_records(&m.ram_regions))];
    let parts = |m: &Manifest| {
        let mut parts = describe::layout_record_parts(&m.layout);
        parts.extend(describe::options_parts(&m.options));
        parts.extend(backing_size(m));
        parts.extend(regions(m));
        parts
    };
    match describe::differences("its", &parts(base), whose, &parts(manifest)) {
        Some(what) => Err(SnapshotError::Layout {
            dir: dir.to_owned(),
            what,
        }),
        None => Ok(()),
    }
}

impl ManagerView {
    /// The manifest of this machine as `regions` shows it, with no files yet.
    pub(crate) fn manifest_skeleton(&self, id: &str, regions: &[RegionInspect]) -> Manifest {
        let layout = &self.options.layout;
        let visibility = |spec: &RamRegionSpec| {
            let region = regions
                .iter()
                .find(|region| region.priority == RAM_PRIORITY && region.range == spec.range);
            match region.and_then(|region| region.map_params) {
                None => RamVisibility::Unmapped,
                Some(params) if params.writable => RamVisibility::ReadWrite,
                Some(_) => RamVisibility::ReadOnly,
            }
        };
        let device_windows = regions
            .iter()
            .filter(|region| region.priority == DEVICE_PRIORITY)
            .map(|region| format::DeviceWindowRecord {
                name: region.name.clone(),
                gpa: Hex(region.range.start()),
                len: Hex(region.range.len()),
                writable: region.map_params.is_some_and(|params| params.writable),
                mappings: region
                    .mappings
                    .iter()
                    .map(|mapping| format::DeviceMappingRecord {
                        offset: Hex(mapping.range_in_region.start()),
                        len: Hex(mapping.range_in_region.len()),
                        file_offset: Hex(mapping.file_offset),
                        writable: mapping.writable,
                    })
                    .collect(),
            })
            .collect();
        let range = |range: memory_range::MemoryRange| format::RangeRecord {
            start: Hex(range.start()),
            end: Hex(range.end()),
        };
        Manifest {
            id: id.to_owned(),
            created_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| {
                    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
                }),
            page_size: PAGE_SIZE,
            base: None,
            tracking_session: None,
            layout: format::LayoutRecord {
                ram: layout
                    .ram()
                    .iter()
                    .map(|ram| format::RamRangeRecord {
                        start: Hex(ram.range.start()),
                        end: Hex(ram.range.end()),
                        vnode: ram.vnode,
                    })
                    .collect(),
                mmio: layout.mmio().iter().copied().map(range).collect(),
                vtl2: layout.vtl2_range().map(range),
            },
            options: format::OptionsRecord {
                x86_legacy_support: self.options.x86_legacy_support,
                private_memory: self.private,
                transparent_hugepages: self.options.transparent_hugepages,
                vtl0_alias_map: self.alias_offset.map(Hex),
                pin_mappings: self.pin_mappings,
                prefetch_ram: self.options.prefetch_ram,
            },
            ram_size: Hex(self.ram_size),
            ram_regions: self
                .specs
                .iter()
                .map(|spec| format::RamRegionRecord {
                    start: Hex(spec.range.start()),
                    end: Hex(spec.range.end()),
                    file_offset: Hex(spec.file_offset),
                    visibility: visibility(spec).as_str().to_owned(),
                })
                .collect(),
            device_windows,
            index: format::FileRecord {
                size: Hex(0),
                crc32c: None,
            },
            memory: format::FileRecord {
                size: Hex(0),
                crc32c: None,
            },
            data_pages: 0,
            zero_pages: 0,
            extents: 0,
        }
    }

    /// The backing-offset runs an incremental snapshot saves: the dirtied GPA pages, in RAM.
    pub(crate) fn dirty_runs(&self, dirty: &PageSet) -> Vec<(u64, u64)> {
        let mut runs = Vec::new();
        let index = SpecIndex::new(&self.specs);
        for (first, end) in dirty.runs() {
            let (start, stop) = (first * PAGE_SIZE, end * PAGE_SIZE);
            for spec in index.overlapping(start, stop) {
                let (from, to) = (start.max(spec.range.start()), stop.min(spec.range.end()));
                if from < to {
                    let offset = spec.file_offset + (from - spec.range.start());
                    runs.push((offset, offset + (to - from)));
                }
            }
        }
        runs.sort_unstable();
        runs
    }
}

/// One piece of work: backing offsets `[start, end)`, at most [`ITEM_PAGES`] pages, inside one
/// RAM region.
pub(crate) fn items(runs: &[(u64, u64)], specs: &[RamRegionSpec]) -> Vec<(u64, u64)> {
    let mut items = Vec::new();
    let index = SpecIndex::new(specs);
    for &(start, end) in runs {
        let mut cursor = start;
        while cursor < end {
            let region_end = index
                .backing_after(cursor)
                .map_or(end, |spec| spec.file_offset + spec.range.len());
            let stop = end.min(cursor + ITEM_PAGES * PAGE_SIZE).min(region_end);
            items.push((cursor, stop));
            cursor = stop;
        }
    }
    items
}

/// What one worker produced.
#[derive(Default)]
struct WorkerOutput {
    extents: Vec<(Extent, Vec<u32>)>,
}

fn create_file(path: &Path) -> Result<File, SnapshotError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|error| SnapshotError::io("create", path, error))
}

/// Writes the snapshot into a temporary directory and publishes it.
fn write_snapshot(
    view: &ManagerView,
    target: &publish::Target,
    mut manifest: Manifest,
    dirty: Option<&PageSet>,
    progress: Option<&Progress>,
) -> Result<SnapshotInfo, SnapshotError> {
    let temp = publish::create_temp(target).map_err(|error| error.while_writing(&target.path))?;
    // Held open so that a failure can find the temporary directory where it is now, also
    // when its parent directory was moved meanwhile.
    let temp_handle = std::fs::File::open(&temp);
    let result = write_files(view, &temp, &mut manifest, dirty, progress)
        .map_err(|error| error.while_writing(&target.path))
        .and_then(|total_bytes| {
            let warning = publish::publish(&temp, target, true)?;
            Ok((total_bytes, warning))
        });
    match result {
        Ok((total_bytes, warning)) => Ok(SnapshotInfo {
            dir: target.path.clone(),
            id: manifest.id.clone(),
            bytes: manifest.memory.size.0,
            total_bytes,
            extents: manifest.extents,
            zero_pages: manifest.zero_pages,
            incremental: manifest.base.is_some(),
            warning,
        }),
        Err(error) => {
            let current = temp_handle
                .ok()
                .and_then(|handle| publish::current_path(&handle, &temp))
                .unwrap_or(temp);
            publish::remove_snapshot_dir(&current);
            Err(error)
        }
    }
}

/// Writes `memory.bin`, `extents.bin` and `manifest.json` into `dir` (all fsynced); returns
/// the bytes written.
fn write_files(
    view: &ManagerView,
    dir: &Path,
    manifest: &mut Manifest,
    dirty: Option<&PageSet>,
    progress: Option<&Progress>,
) -> Result<u64, SnapshotError> {
    let incremental = dirty.is_some();
    let runs = match dirty {
        Some(dirty) => view.dirty_runs(dirty),
        None => view
            .source
            .data_runs(&view.specs)
            .map_err(|error| SnapshotError::io("find the data of", "guest RAM", error))?,
    };
    let items = items(&runs, &view.specs);

    let memory_path = dir.join(format::MEMORY_FILE);
    let memory = create_file(&memory_path)?;
    let cursor = AtomicU64::new(0);
    let outputs = super::parallel_items(
        &items,
        |(start, end)| end - start,
        progress,
        WorkerOutput::default,
        |output, buffer, &(start, end)| {
            let len = usize::try_from(end - start).unwrap_or(0);
            let data = &mut buffer[..len];
            view.source
                .read(start, data)
                .map_err(|error| SnapshotError::io("read guest RAM for", &memory_path, error))?;
            save_item(
                start,
                data,
                incremental,
                &memory,
                &memory_path,
                &cursor,
                output,
            )
        },
    )?;
    let mut extents = Vec::new();
    for output in outputs {
        extents.extend(output.extents);
    }
    memory
        .sync_all()
        .map_err(|error| SnapshotError::io("fsync", &memory_path, error))?;
    drop(memory);

    extents.sort_unstable_by_key(|(extent, _)| extent.ram_offset);
    let mut index = Index::default();
    for (mut extent, crcs) in extents {
        extent.first_crc = index.crcs.len();
        if extent.kind == ExtentKind::Data {
            index.data_pages += u64::from(extent.pages);
        } else {
            manifest.zero_pages += u64::from(extent.pages);
        }
        index.crcs.extend(crcs);
        index.extents.push(extent);
    }
    let index_bytes = format::encode_index(&index);
    write_synced(&dir.join(format::INDEX_FILE), &index_bytes)?;
    manifest.index = format::FileRecord {
        size: Hex(index_bytes.len() as u64),
        crc32c: Some(crc32c::crc32c(&index_bytes)),
    };
    manifest.memory = format::FileRecord {
        size: Hex(cursor.load(Ordering::Relaxed)),
        crc32c: None,
    };
    manifest.data_pages = index.data_pages;
    manifest.extents = index.extents.len() as u64;
    let manifest_bytes = format::encode_manifest(manifest);
    write_synced(&dir.join(format::MANIFEST_FILE), &manifest_bytes)?;
    Ok(manifest.memory.size.0 + index_bytes.len() as u64 + manifest_bytes.len() as u64)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    let mut file = create_file(path)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|error| SnapshotError::io("write", path, error))
}

/// Checksums the pages of one item read at backing offset `start`, writes its data pages to
/// `memory.bin` and records its extents.
fn save_item(
    start: u64,
    data: &[u8],
    incremental: bool,
    memory: &File,
    memory_path: &Path,
    cursor: &AtomicU64,
    output: &mut WorkerOutput,
) -> Result<(), SnapshotError> {
    let pages: Vec<&[u8]> = data.chunks_exact(PAGE).collect();
    let mut position = 0;
    while position < pages.len() {
        let zero = is_zero(pages[position]);
        let run = pages[position..]
            .iter()
            .take_while(|page| is_zero(page) == zero)
            .count();
        let ram_offset = start + position as u64 * PAGE_SIZE;
        let count = u32::try_from(run).unwrap_or(u32::MAX);
        if zero {
            if incremental {
                output.extents.push((
                    Extent {
                        ram_offset,
                        pages: count,
                        kind: ExtentKind::Zero,
                        data_offset: 0,
                        first_crc: 0,
                    },
                    Vec::new(),
                ));
            }
        } else {
            let bytes = &data[position * PAGE..(position + run) * PAGE];
            let data_offset = cursor.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            memory
                .write_all_at(bytes, data_offset)
                .map_err(|error| SnapshotError::io("write", memory_path, error))?;
            let crcs = pages[position..position + run]
                .iter()
                .map(|page| crc32c::crc32c(page))
                .collect();
            output.extents.push((
                Extent {
                    ram_offset,
                    pages: count,
                    kind: ExtentKind::Data,
                    data_offset,
                    first_crc: 0,
                },
                crcs,
            ));
        }
        position += run;
    }
    Ok(())
}

/// Whether a page is all zeros.
pub(crate) fn is_zero(page: &[u8]) -> bool {
    let words = page.chunks_exact(8);
    let tail = words.remainder();
    words
        .map(|word| u64::from_ne_bytes(word.try_into().unwrap_or([0xff; 8])))
        .all(|word| word == 0)
        && tail.iter().all(|&b| b == 0)
}
