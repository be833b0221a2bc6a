//! Where a snapshot reads guest RAM from, and which pages hold data.
//!
//! - File-backed RAM (a memfd): the pages that hold data are found with
//!   `lseek(SEEK_DATA/SEEK_HOLE)` on the RAM object — on shmem a swapped-out page counts as data,
//!   a never-written or decommitted (hole-punched) one as a hole — and read with `pread`, which
//!   never faults this process.
//! - Private RAM (anonymous memory in this process's VA window): the pages are found with
//!   `/proc/self/pagemap`, whose entries say "present" *or* "swapped" (`mincore` would report a
//!   swapped-out page as absent and lose its data), and read through the window with the
//!   fault-safe copy.
//!
//! Both may report pages that only read as zeros (shmem pages allocated by a read, the shared
//! zero page mapped by a read of private memory); the writer checks each page and stores
//! all-zero pages as holes.

use crate::mapping_manager::va_mapper::VaMapper;
use crate::mapping_manager::SharedObject;
use crate::ram_visibility::RamRegionSpec;
use sparse_mmap::Seek;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::PAGE_SIZE;

/// The RAM backing of a manager, as a snapshot reads it (offsets are backing offsets).
pub(crate) enum RamSource {
    /// The RAM object.
    Object(SharedObject),
    /// Private RAM in the window of `mapper` (GPA = window offset).
    Private {
        mapper: Arc<VaMapper>,
        specs: Vec<RamRegionSpec>,
    },
}

impl RamSource {
    /// The page-aligned runs `[start, end)` of backing offsets inside `specs` that hold data.
    pub fn data_runs(&self, specs: &[RamRegionSpec]) -> io::Result<Vec<(u64, u64)>> {
        let mut runs = Vec::new();
        for spec in specs {
            let start = spec.file_offset;
            let end = spec.file_offset + spec.range.len();
            match self {
                RamSource::Object(object) => seek_data_runs(object.as_fd(), start, end, &mut runs)?,
                RamSource::Private { mapper, .. } => {
                    let va = mapper.base() as u64 + spec.range.start();
                    pagemap_runs(va, spec.range.len(), start, &mut runs)?
                }
            }
        }
        Ok(runs)
    }

    /// Reads `buffer.len()` bytes at backing offset `offset` (inside one RAM region).
    pub fn read(&self, offset: u64, buffer: &mut [u8]) -> io::Result<()> {
        match self {
            RamSource::Object(object) => sparse_mmap::read_exact_at(object.as_fd(), buffer, offset),
            RamSource::Private { mapper, specs } => {
                let len = buffer.len() as u64;
                let spec = specs
                    .iter()
                    .find(|spec| {
                        offset >= spec.file_offset
                            && offset + len <= spec.file_offset + spec.range.len()
                    })
                    .ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!(
                                "backing range {offset:#x}+{len:#x} is not inside one RAM region"
                            ),
                        )
                    })?;
                let gpa = spec.range.start() + (offset - spec.file_offset);
                mapper.read_at(gpa, buffer).map_err(|error| {
                    io::Error::other(format!("reading private RAM at {gpa:#x}: {error}"))
                })
            }
        }
    }
}

/// Appends the data runs of `[start, end)` of the file `fd` (`SEEK_DATA`/`SEEK_HOLE`).
fn seek_data_runs(
    fd: BorrowedFd<'_>,
    start: u64,
    end: u64,
    runs: &mut Vec<(u64, u64)>,
) -> io::Result<()> {
    let seek = |offset, what| sparse_mmap::seek(fd, offset, what);
    let mut cursor = start;
    while cursor < end {
        let Some(data) = seek(cursor, Seek::Data)? else {
            break;
        };
        if data >= end {
            break;
        }
        let hole = seek(data, Seek::Hole)?.unwrap_or(end).min(end);
        let run_start = data / PAGE_SIZE * PAGE_SIZE;
        let run_end = hole.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        match runs.last_mut() {
            Some(last) if last.1 >= run_start => last.1 = last.1.max(run_end),
            _ => runs.push((run_start, run_end)),
        }
        cursor = hole.max(data + 1);
    }
    Ok(())
}

const PAGEMAP_PRESENT: u64 = 1 << 63;
const PAGEMAP_SWAPPED: u64 = 1 << 62;

/// Appends the runs of pages of `[va, va + len)` that are present or swapped out, as backing
/// offsets from `offset`.
fn pagemap_runs(va: u64, len: u64, offset: u64, runs: &mut Vec<(u64, u64)>) -> io::Result<()> {
    let pagemap = File::open("/proc/self/pagemap")?;
    const BATCH: u64 = 32 * 1024;
    let pages = len / PAGE_SIZE;
    let mut entries = vec![0u8; usize::try_from(BATCH * 8).unwrap_or(256 * 1024)];
    let mut page = 0;
    while page < pages {
        let count = (pages - page).min(BATCH);
        let bytes = &mut entries[..usize::try_from(count * 8).unwrap_or(0)];
        pagemap.read_exact_at(bytes, (va / PAGE_SIZE + page) * 8)?;
        for (index, entry) in bytes.chunks_exact(8).enumerate() {
            let mut raw = [0; 8];
            raw.copy_from_slice(entry);
            let entry = u64::from_le_bytes(raw);
            if entry & (PAGEMAP_PRESENT | PAGEMAP_SWAPPED) == 0 {
                continue;
            }
            let start = offset + (page + index as u64) * PAGE_SIZE;
            match runs.last_mut() {
                Some(last) if last.1 == start => last.1 += PAGE_SIZE,
                _ => runs.push((start, start + PAGE_SIZE)),
            }
        }
        page += count;
    }
    Ok(())
}
