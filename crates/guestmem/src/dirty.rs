//! Write logging: [`DirtyBitmap`], a bitmap of the 4 KiB pages written through guest memory.
//!
//! A backing opts in by returning a bitmap from
//! [`GuestMemoryAccess::dirty_bitmap`](crate::GuestMemoryAccess::dirty_bitmap); every write of
//! a [`GuestMemory`](crate::GuestMemory) over that backing (plain, range, scalar and
//! compare-exchange writes, fills, and the write fallbacks) then marks the pages it touched,
//! *after* the write has completed. Pages locked through `lock_gpns`/`lock_range` can be
//! written through plain references that guest memory never sees, so a locked page counts as
//! written in every [`take`](DirtyBitmap::take) while it is locked, and once more after its
//! last lock goes.
//!
//! The bitmap does nothing until [`start`](DirtyBitmap::start): while it is stopped a write
//! costs one relaxed load and a predictable branch. Storage (one bit per page plus one summary
//! bit per 64 pages) is allocated on the first start and kept until the bitmap is dropped.
//!
//! # Ordering
//!
//! A writer sets the page's bit with an atomic read-modify-write *after* its data store, then
//! the summary bit. [`take`](DirtyBitmap::take) swaps each summary word with zero and then each
//! word it names. So a page whose bit a take collects was written before that take looked at
//! it (the data is visible to whoever reads the page after the take), and a write racing a take
//! is collected by that take or by the next one — never by neither.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::sync::OnceLock;

const PAGE_SHIFT: u32 = 12;

/// The bit storage, allocated on the first start.
struct Storage {
    /// One bit per page.
    words: Box<[AtomicU64]>,
    /// One bit per word of `words` that may have a bit set.
    summary: Box<[AtomicU64]>,
}

/// A bitmap of written 4 KiB pages over an address space of a fixed size (see the module
/// documentation). `Send + Sync`; share it with `Arc`.
pub struct DirtyBitmap {
    active: AtomicBool,
    page_count: u64,
    storage: OnceLock<Storage>,
    /// Locked pages and their lock counts.
    locked: Mutex<BTreeMap<u64, usize>>,
}

impl std::fmt::Debug for DirtyBitmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirtyBitmap")
            .field("active", &self.is_active())
            .field("page_count", &self.page_count)
            .finish()
    }
}

impl DirtyBitmap {
    /// A stopped bitmap covering `[0, len)` (rounded up to whole pages); allocates nothing.
    pub fn new(len: u64) -> Self {
        Self {
            active: AtomicBool::new(false),
            page_count: len.div_ceil(1 << PAGE_SHIFT),
            storage: OnceLock::new(),
            locked: Mutex::new(BTreeMap::new()),
        }
    }

    /// The number of pages covered.
    pub fn page_count(&self) -> u64 {
        self.page_count
    }

    /// Whether writes are being recorded.
    #[inline]
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    fn storage(&self) -> &Storage {
        self.storage.get_or_init(|| {
            let words = self.page_count.div_ceil(64);
            let summary = words.div_ceil(64);
            let zeroed = |count: u64| -> Box<[AtomicU64]> {
                (0..count).map(|_| AtomicU64::new(0)).collect()
            };
            Storage {
                words: zeroed(words),
                summary: zeroed(summary),
            }
        })
    }

    /// Clears every bit and starts recording writes.
    pub fn start(&self) {
        let storage = self.storage();
        for word in storage.summary.iter().chain(storage.words.iter()) {
            word.store(0, Ordering::Relaxed);
        }
        self.active.store(true, Ordering::SeqCst);
    }

    /// Stops recording (the bits are kept until the next start, which clears them).
    pub fn stop(&self) {
        self.active.store(false, Ordering::SeqCst);
    }

    /// Records a write of `len` bytes at `offset` (no effect while stopped, for an empty write,
    /// or beyond the covered pages). Call it after the write's data stores.
    #[inline]
    pub fn mark(&self, offset: u64, len: u64) {
        if !self.is_active() || len == 0 {
            return;
        }
        let first = offset >> PAGE_SHIFT;
        let last = offset.saturating_add(len - 1) >> PAGE_SHIFT;
        self.mark_pages(first, last.saturating_sub(first).saturating_add(1));
    }

    /// Records `count` pages from page `first` as written (no effect while stopped).
    pub fn mark_pages(&self, first: u64, count: u64) {
        if !self.is_active() || count == 0 {
            return;
        }
        let Some(storage) = self.storage.get() else {
            return;
        };
        let end = first.saturating_add(count).min(self.page_count);
        let mut page = first;
        while page < end {
            let word = page / 64;
            let bit = page % 64;
            let bits = (end - page).min(64 - bit);
            let mask = if bits == 64 {
                u64::MAX
            } else {
                ((1u64 << bits) - 1) << bit
            };
            // Both conversions are in range: `word < page_count / 64 + 1` indexes the storage.
            let (Ok(index), Ok(summary_index)) =
                (usize::try_from(word), usize::try_from(word / 64))
            else {
                return;
            };
            // A read-modify-write (a full barrier on x86) orders the caller's data stores
            // before the bit; see the module documentation.
            storage.words[index].fetch_or(mask, Ordering::SeqCst);
            storage.summary[summary_index].fetch_or(1 << (word % 64), Ordering::SeqCst);
            page += bits;
        }
    }

    /// Collects and clears the recorded pages, visiting each maximal run as `(first page,
    /// page count)` in ascending order. Locked pages count as written. Returns the number of
    /// pages visited. While stopped nothing is visited.
    pub fn take(&self, mut visit: impl FnMut(u64, u64)) -> u64 {
        if !self.is_active() {
            return 0;
        }
        let Some(storage) = self.storage.get() else {
            return 0;
        };
        {
            let locked = self.locked.lock().unwrap_or_else(|e| e.into_inner());
            for &page in locked.keys() {
                self.mark_pages(page, 1);
            }
        }
        let mut run: Option<(u64, u64)> = None;
        let mut total = 0;
        let flush = |run: &mut Option<(u64, u64)>, visit: &mut dyn FnMut(u64, u64)| {
            if let Some((first, count)) = run.take() {
                visit(first, count);
            }
        };
        for (summary_index, summary) in storage.summary.iter().enumerate() {
            let mut words = summary.swap(0, Ordering::SeqCst);
            while words != 0 {
                let word_index = summary_index * 64 + words.trailing_zeros() as usize;
                words &= words - 1;
                let mut bits = storage.words[word_index].swap(0, Ordering::SeqCst);
                while bits != 0 {
                    let page = word_index as u64 * 64 + u64::from(bits.trailing_zeros());
                    bits &= bits - 1;
                    total += 1;
                    match &mut run {
                        Some((first, count)) if *first + *count == page => *count += 1,
                        _ => {
                            flush(&mut run, &mut visit);
                            run = Some((page, 1));
                        }
                    }
                }
            }
        }
        flush(&mut run, &mut visit);
        total
    }

    /// Counts a lock on `page` (it is reported by every take until unlocked).
    pub(crate) fn lock_page(&self, page: u64) {
        let mut locked = self.locked.lock().unwrap_or_else(|e| e.into_inner());
        *locked.entry(page).or_insert(0) += 1;
    }

    /// Releases a lock on `page` and records the page as written.
    pub(crate) fn unlock_page(&self, page: u64) {
        {
            let mut locked = self.locked.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = locked.get_mut(&page) {
                *count -= 1;
                if *count == 0 {
                    locked.remove(&page);
                }
            }
        }
        self.mark_pages(page, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(bitmap: &DirtyBitmap) -> Vec<(u64, u64)> {
        let mut runs = Vec::new();
        bitmap.take(|first, count| runs.push((first, count)));
        runs
    }

    #[test]
    fn stopped_bitmap_records_nothing() {
        let bitmap = DirtyBitmap::new(1 << 20);
        bitmap.mark(0, 10);
        assert!(bitmap.storage.get().is_none(), "nothing allocated");
        bitmap.start();
        assert_eq!(taken(&bitmap), vec![]);
        bitmap.stop();
        bitmap.mark(0x1000, 1);
        bitmap.start();
        assert_eq!(
            taken(&bitmap),
            vec![],
            "start clears and the stopped write is lost"
        );
    }

    #[test]
    fn marks_coalesce_into_ascending_runs_and_take_clears() {
        let bitmap = DirtyBitmap::new(1 << 30);
        bitmap.start();
        bitmap.mark(0x5000, 1);
        bitmap.mark(0x3fff, 2); // pages 3 and 4
        bitmap.mark(63 * 4096, 4096 * 3); // pages 63..66 cross a word
        bitmap.mark(4096 * 64 * 64 * 3 + 5, 1); // a later summary word
        bitmap.mark(0x1000, 0); // empty
        let total_pages = (1u64 << 30) / 4096;
        bitmap.mark((total_pages - 1) * 4096, 1 << 20); // clipped at the end
        assert_eq!(
            taken(&bitmap),
            vec![(3, 3), (63, 3), (64 * 64 * 3, 1), (total_pages - 1, 1)]
        );
        assert_eq!(taken(&bitmap), vec![]);
    }

    #[test]
    fn locked_pages_are_reported_until_unlocked_and_once_after() {
        let bitmap = DirtyBitmap::new(1 << 20);
        bitmap.start();
        bitmap.lock_page(7);
        bitmap.lock_page(7);
        assert_eq!(taken(&bitmap), vec![(7, 1)]);
        assert_eq!(taken(&bitmap), vec![(7, 1)]);
        bitmap.unlock_page(7);
        assert_eq!(taken(&bitmap), vec![(7, 1)], "still locked once");
        bitmap.unlock_page(7);
        assert_eq!(
            taken(&bitmap),
            vec![(7, 1)],
            "the write after the last take"
        );
        assert_eq!(taken(&bitmap), vec![]);
    }

    #[test]
    fn concurrent_marks_are_never_lost() {
        use std::sync::Arc;
        let bitmap = Arc::new(DirtyBitmap::new(1 << 24));
        bitmap.start();
        let pages = bitmap.page_count();
        let writers: Vec<_> = (0..2u64)
            .map(|thread| {
                let bitmap = bitmap.clone();
                std::thread::spawn(move || {
                    let mut marked = Vec::new();
                    let mut page = thread;
                    for _ in 0..20_000 {
                        page = (page * 2_654_435_761 + 12_345) % pages;
                        bitmap.mark_pages(page, 1);
                        marked.push(page);
                    }
                    marked
                })
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        while !writers.iter().all(|writer| writer.is_finished()) {
            bitmap.take(|first, count| seen.extend(first..first + count));
        }
        let marked: Vec<u64> = writers
            .into_iter()
            .flat_map(|writer| writer.join().unwrap())
            .collect();
        bitmap.take(|first, count| seen.extend(first..first + count));
        for page in marked {
            assert!(seen.contains(&page), "page {page} lost");
        }
    }
}
