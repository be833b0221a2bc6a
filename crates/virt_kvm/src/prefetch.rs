//! Parallel prefetch of the host pages behind KVM memory slots.
//!
//! Populating host pages is bounded by the kernel's page-fault path (allocation, zeroing and,
//! on this kind of machine, the outer hypervisor handing memory back), which runs independently
//! on each CPU: so the slots in a prefetched range are cut into pieces and several threads
//! populate them with `madvise(MADV_POPULATE_WRITE)` (`MADV_POPULATE_READ` for read-only
//! slots), each taking the next piece as it finishes one, as QEMU's and Cloud Hypervisor's
//! parallel prefault do. Each piece is reported as soon as it is done, by the thread that did
//! it; a piece that fails does not stop the others.

// Unsafe code: `madvise` on the host ranges behind the slots.
#![allow(unsafe_code)]

use crate::slots::SlotInfo;
use crate::KvmError;
use std::sync::atomic::{AtomicUsize, Ordering};
use virt::{PrefetchChunk, PrefetchFailure};

/// The smallest piece (a multiple of 2 MiB, so pieces of a huge-page-backed slot stay aligned
/// where the slot is).
const MIN_PIECE: u64 = 2 << 20;
/// The largest piece: progress is reported at least this often.
const MAX_PIECE: u64 = 256 << 20;
/// Pieces per thread when the range is small enough that pieces stay below [`MAX_PIECE`]: a
/// few per thread balance the threads when some pieces are slower than others.
const PIECES_PER_THREAD: u64 = 4;

/// One piece: a GPA range, its host address, and whether the slot is read-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Piece {
    pub gpa: u64,
    pub host: u64,
    pub len: u64,
    pub readonly: bool,
}

/// The number of prefetch threads for the option value `requested` (0 = one per CPU the
/// process may run on).
pub(crate) fn thread_count(requested: usize) -> usize {
    match requested {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Cuts the host ranges of the slots (`(slot, host address, length)` for the part of each slot
/// in the prefetched range, as `host_ranges` returns them) into pieces for `threads` threads:
/// `total / (threads × PIECES_PER_THREAD)` rounded up to 2 MiB, within
/// [`MIN_PIECE`]..=[`MAX_PIECE`]. Pieces never cross a slot; the last piece of a slot may be
/// shorter.
pub(crate) fn pieces(ranges: &[(SlotInfo, u64, u64)], threads: usize) -> Vec<Piece> {
    let total: u64 = ranges.iter().map(|&(_, _, len)| len).sum();
    let target = total / (threads.max(1) as u64 * PIECES_PER_THREAD);
    let piece = target
        .next_multiple_of(MIN_PIECE)
        .clamp(MIN_PIECE, MAX_PIECE);
    let mut pieces = Vec::new();
    for &(slot, host, len) in ranges {
        let gpa = slot.gpa + (host - slot.host_address);
        let mut offset = 0;
        while offset < len {
            let this = piece.min(len - offset);
            pieces.push(Piece {
                gpa: gpa + offset,
                host: host + offset,
                len: this,
                readonly: slot.readonly,
            });
            offset += this;
        }
    }
    pieces
}

/// Populates one piece.
fn populate(piece: &Piece) -> Result<(), KvmError> {
    let advice = if piece.readonly {
        libc::MADV_POPULATE_READ
    } else {
        libc::MADV_POPULATE_WRITE
    };
    let length = usize::try_from(piece.len)
        .map_err(|_| host_call_error(piece, std::io::Error::from_raw_os_error(libc::EOVERFLOW)))?;
    // SAFETY: MADV_POPULATE_* only faults pages of the existing mappings in the range in (as a
    // touch would); it fails cleanly where nothing is mapped.
    let rc = unsafe { libc::madvise(piece.host as *mut libc::c_void, length, advice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(host_call_error(piece, std::io::Error::last_os_error()))
    }
}

/// The error of a failed `madvise` on `piece`.
fn host_call_error(piece: &Piece, source: std::io::Error) -> KvmError {
    KvmError::HostCall {
        call: "madvise(MADV_POPULATE)",
        what: format!(
            "GPA {:#x}+{:#x} (host range {:#x})",
            piece.gpa, piece.len, piece.host
        ),
        source,
    }
}

/// Populates every piece with up to `threads` threads (the calling thread is one of them),
/// reporting each piece to `progress` when it is done. Returns the failure of the first failed
/// piece in the order given.
pub(crate) fn run(
    pieces: &[Piece],
    threads: usize,
    progress: &(dyn Fn(&PrefetchChunk) + Sync),
) -> Result<(), KvmError> {
    let next = AtomicUsize::new(0);
    let worker = || {
        let mut first_failure: Option<(usize, KvmError)> = None;
        loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            let Some(piece) = pieces.get(index) else {
                return first_failure;
            };
            let result = populate(piece);
            progress(&PrefetchChunk {
                gpa: piece.gpa,
                size: piece.len,
                failure: result
                    .as_ref()
                    .err()
                    .map(|error| PrefetchFailure::from_error(error)),
            });
            if let Err(error) = result {
                // Each worker takes increasing indexes: its first failure is its lowest.
                first_failure.get_or_insert((index, error));
            }
        }
    };
    let helpers = threads.clamp(1, pieces.len().max(1)) - 1;
    let failures: Vec<(usize, KvmError)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..helpers)
            .filter_map(|_| {
                // A helper that cannot be started leaves its share to the others.
                std::thread::Builder::new()
                    .name("kvm-prefetch".into())
                    .spawn_scoped(scope, worker)
                    .ok()
            })
            .collect();
        let mut failures: Vec<_> = worker().into_iter().collect();
        for handle in handles {
            // A panicking progress observer is the caller's bug: re-raise it here.
            match handle.join() {
                Ok(failure) => failures.extend(failure),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        failures
    });
    match failures.into_iter().min_by_key(|(index, _)| *index) {
        Some((_, error)) => Err(error),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn slot(gpa: u64, host_address: u64, size: u64, readonly: bool) -> SlotInfo {
        SlotInfo {
            slot: 0,
            gpa,
            size,
            host_address,
            readonly,
            pinned: false,
        }
    }

    #[test]
    fn pieces_cover_each_slot_part_exactly_without_crossing_slots() {
        let ranges = [
            (
                slot(0, 0x7000_0000_0000, 64 * MIB, false),
                0x7000_0010_0000,
                63 * MIB,
            ),
            (
                slot(1 << 32, 0x7100_0000_0000, 3 * MIB, true),
                0x7100_0000_0000,
                3 * MIB,
            ),
        ];
        for threads in [1usize, 2, 3, 16] {
            let pieces = pieces(&ranges, threads);
            let covered: u64 = pieces.iter().map(|p| p.len).sum();
            assert_eq!(covered, 66 * MIB);
            // GPA = slot GPA + host offset in the slot; contiguous within a slot.
            assert_eq!((pieces[0].gpa, pieces[0].host), (MIB, 0x7000_0010_0000));
            for pair in pieces.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                if a.readonly == b.readonly {
                    assert_eq!((a.gpa + a.len, a.host + a.len), (b.gpa, b.host));
                }
            }
            let second_slot: Vec<_> = pieces.iter().filter(|p| p.readonly).collect();
            assert_eq!(second_slot[0].gpa, 1 << 32);
            assert_eq!(second_slot.iter().map(|p| p.len).sum::<u64>(), 3 * MIB);
            assert!(pieces.iter().all(|p| p.len <= MAX_PIECE && p.len > 0));
        }
        // More threads, smaller pieces (down to 2 MiB).
        assert!(pieces(&ranges, 1).len() < pieces(&ranges, 8).len());
        assert!(pieces(&ranges, 64).iter().all(|p| p.len <= MIN_PIECE));
    }

    #[test]
    fn large_ranges_are_cut_at_the_largest_piece() {
        let ranges = [(
            slot(0, 0x7000_0000_0000, 4096 * MIB, false),
            0x7000_0000_0000,
            4096 * MIB,
        )];
        let pieces = pieces(&ranges, 1);
        assert_eq!(pieces.len(), 16);
        assert!(pieces.iter().all(|p| p.len == MAX_PIECE));
    }

    #[test]
    fn thread_count_zero_means_every_cpu() {
        assert!(thread_count(0) >= 1);
        assert_eq!(thread_count(3), 3);
    }
}
