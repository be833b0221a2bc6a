//! The [`PartitionMemoryMap`] trait: how the memory manager changes a partition's GPA map.

/// The error a partition returns; any error type the implementation likes.
pub type Error = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A `map_range` or `unmap_range` call a dry run plans, for
/// [`PartitionMemoryMap::plan_slots`].
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub enum PlannedCall {
    /// `map_range` of `size` bytes at `gpa`.
    Map {
        /// The guest physical address.
        gpa: u64,
        /// The size in bytes.
        size: u64,
    },
    /// `unmap_range(gpa, size)`.
    Unmap {
        /// The guest physical address.
        gpa: u64,
        /// The size in bytes.
        size: u64,
    },
}

/// How many hypervisor slots (such as KVM memory slots) a partition offers and uses, for
/// [`PartitionMemoryMap::slot_capacity`].
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub struct SlotCapacity {
    /// Slots in use now.
    pub used: u32,
    /// Slots the partition offers in all.
    pub max: u32,
}

impl SlotCapacity {
    /// Slots still free (none when more are in use than offered).
    pub fn free(&self) -> u32 {
        self.max.saturating_sub(self.used)
    }
}

/// The outcome of one prefetched piece of a range, reported by
/// [`PartitionMemoryMap::prefetch_range_with_progress`] as soon as the piece is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefetchChunk {
    /// The guest physical address of the piece.
    pub gpa: u64,
    /// Its size in bytes.
    pub size: u64,
    /// `None` when the piece was populated, else why it was not.
    pub failure: Option<PrefetchFailure>,
}

/// Why a piece of a range could not be prefetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefetchFailure {
    /// The operating-system error number, when the failure carries one.
    pub errno: Option<i32>,
    /// The error's message.
    pub message: String,
}

impl PrefetchFailure {
    /// Describes `error`: its message, and the errno of the first `std::io::Error` in its
    /// source chain.
    pub fn from_error(error: &(dyn std::error::Error + 'static)) -> Self {
        let mut errno = None;
        let mut current = Some(error);
        while let Some(error) = current {
            if let Some(io) = error.downcast_ref::<std::io::Error>() {
                errno = io.raw_os_error();
                break;
            }
            current = error.source();
        }
        Self {
            errno,
            message: error.to_string(),
        }
    }
}

/// A hypervisor partition's guest-physical-address map, as the memory manager drives it.
///
/// The manager calls these methods from its own thread, one at a time per partition mapper, and
/// keeps only a weak reference to the partition: once the last strong reference is dropped the
/// partition is *gone* and the manager silently skips it.
///
/// The manager maps whole regions and unmaps exactly what it mapped (possibly several mappings
/// in one call), so implementations never have to split a mapping.
///
/// Unlike the original, `map_range` is a safe method (this crate forbids `unsafe`). The manager
/// only ever passes addresses inside its own reserved VA window, which stays reserved until the
/// partition has been told to unmap; an implementation hands the address to the hypervisor and
/// must not dereference it itself.
pub trait PartitionMemoryMap: Send + Sync {
    /// Removes every mapping in `[addr, addr + size)` from the partition.
    ///
    /// Must succeed whenever every mapping it touches lies fully inside the range; the range may
    /// cover no mapping, one, or many.
    fn unmap_range(&self, addr: u64, size: u64) -> Result<(), Error>;

    /// Maps `size` bytes of host virtual memory starting at `data` at guest physical address
    /// `addr`, writable and executable as given.
    ///
    /// May fail if the range overlaps an existing mapping.
    fn map_range(
        &self,
        data: *mut u8,
        size: usize,
        addr: u64,
        writable: bool,
        exec: bool,
    ) -> Result<(), Error>;

    /// Asks the partition to populate `[addr, addr + size)` ahead of use. The default does
    /// nothing and succeeds.
    fn prefetch_range(&self, _addr: u64, _size: u64) -> Result<(), Error> {
        Ok(())
    }

    /// [`prefetch_range`](Self::prefetch_range), telling `progress` about each piece of the
    /// range as it is done (pieces are disjoint and together cover what was prefetched; an
    /// implementation may work on several pieces at once and call `progress` from several
    /// threads). Every piece is tried; the result is the first failure, if any.
    ///
    /// The default makes one `prefetch_range` call and reports the whole range as one piece.
    fn prefetch_range_with_progress(
        &self,
        addr: u64,
        size: u64,
        progress: &(dyn Fn(&PrefetchChunk) + Sync),
    ) -> Result<(), Error> {
        let result = self.prefetch_range(addr, size);
        progress(&PrefetchChunk {
            gpa: addr,
            size,
            failure: result
                .as_ref()
                .err()
                .map(|error| PrefetchFailure::from_error(error.as_ref())),
        });
        result
    }

    /// Makes `[addr, addr + size)` resident for assigned devices. The default does nothing and
    /// succeeds.
    fn pin_range(&self, _addr: u64, _size: u64) -> Result<(), Error> {
        Ok(())
    }

    /// Starts logging which pages the guest writes, in every writable mapping present now and
    /// mapped later. The default does nothing and succeeds: right for a partition whose guest
    /// cannot write memory (such as [`RecordingPartition`](crate::RecordingPartition)); a
    /// partition whose guest can write must implement all three dirty-log methods, or the
    /// memory manager's dirty tracking misses its writes.
    fn start_dirty_log(&self) -> Result<(), Error> {
        Ok(())
    }

    /// Whether this partition's guest can write memory, so that its dirty log may hold
    /// writes not harvested yet. The default, true, is the safe answer: when such a partition
    /// goes away while dirty tracking is on, the memory manager counts every RAM page as
    /// written. A partition whose guest never writes memory (such as
    /// [`RecordingPartition`](crate::RecordingPartition)) returns false, and losing it then
    /// costs nothing.
    fn logs_guest_writes(&self) -> bool {
        true
    }

    /// Stops logging guest writes and forgets what was logged. The default succeeds.
    fn stop_dirty_log(&self) -> Result<(), Error> {
        Ok(())
    }

    /// Reports, as `(host address, length)` ranges of the host memory given to
    /// [`map_range`](Self::map_range), the pages the guest wrote since logging started or the
    /// previous call, and clears them. Pages of mappings unmapped in the meantime are included
    /// (a partition must collect a mapping's log before it removes the mapping). A write racing
    /// this call is reported by this call or the next. The default reports nothing.
    fn take_dirty_log(&self, _report: &mut dyn FnMut(u64, u64)) -> Result<(), Error> {
        Ok(())
    }

    /// For a dry run: the ids of the hypervisor objects (such as KVM memory slots) each of
    /// `calls` would create or delete, applied in order to the partition's current state; one
    /// list per call. `None`, the default, for a partition without such objects.
    fn plan_slots(&self, _calls: &[PlannedCall]) -> Option<Vec<Vec<u32>>> {
        None
    }

    /// How many slots the partition offers and uses now, for a partition whose every
    /// `map_range` of a non-empty range takes one slot of a limited supply (KVM memory slots).
    /// The memory manager checks a change against it before making any call, and refuses the
    /// change instead of running out part way. `None`, the default, for a partition without
    /// such a limit (such as [`RecordingPartition`](crate::RecordingPartition)).
    ///
    /// A partition that reports a capacity should also implement
    /// [`plan_slots`](Self::plan_slots): the slots it lists for an `unmap_range` are the ones
    /// that call frees; without it the manager counts an unmap as freeing nothing.
    fn slot_capacity(&self) -> Option<SlotCapacity> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct MinimalPartition;

    impl PartitionMemoryMap for MinimalPartition {
        fn unmap_range(&self, _addr: u64, _size: u64) -> Result<(), Error> {
            Err("unmap not supported".into())
        }

        fn map_range(
            &self,
            _data: *mut u8,
            _size: usize,
            _addr: u64,
            _writable: bool,
            _exec: bool,
        ) -> Result<(), Error> {
            Err("map not supported".into())
        }
    }

    /// Fails every prefetch with an OS error wrapped in another error.
    struct FailingPrefetch;

    #[derive(Debug, thiserror::Error)]
    #[error("populating failed")]
    struct Wrapped(#[source] std::io::Error);

    impl PartitionMemoryMap for FailingPrefetch {
        fn unmap_range(&self, _addr: u64, _size: u64) -> Result<(), Error> {
            Ok(())
        }

        fn map_range(&self, _: *mut u8, _: usize, _: u64, _: bool, _: bool) -> Result<(), Error> {
            Ok(())
        }

        fn prefetch_range(&self, _addr: u64, _size: u64) -> Result<(), Error> {
            Err(Box::new(Wrapped(std::io::Error::from_raw_os_error(
                libc_enomem(),
            ))))
        }
    }

    /// ENOMEM on Linux (the crate has no libc dependency).
    fn libc_enomem() -> i32 {
        12
    }

    #[test]
    fn default_progress_reports_the_whole_range_once_with_its_outcome() {
        let seen = parking_lot::Mutex::new(Vec::new());
        let record = |chunk: &PrefetchChunk| seen.lock().push(chunk.clone());
        MinimalPartition
            .prefetch_range_with_progress(0x1000, 0x3000, &record)
            .unwrap();
        let error = FailingPrefetch
            .prefetch_range_with_progress(0x8000, 0x1000, &record)
            .unwrap_err();
        assert_eq!(error.to_string(), "populating failed");
        assert_eq!(
            seen.into_inner(),
            [
                PrefetchChunk {
                    gpa: 0x1000,
                    size: 0x3000,
                    failure: None
                },
                PrefetchChunk {
                    gpa: 0x8000,
                    size: 0x1000,
                    failure: Some(PrefetchFailure {
                        errno: Some(libc_enomem()),
                        message: "populating failed".into()
                    })
                }
            ]
        );
    }

    #[test]
    fn free_slots_never_underflow() {
        assert_eq!(SlotCapacity { used: 3, max: 8 }.free(), 5);
        assert_eq!(SlotCapacity { used: 9, max: 8 }.free(), 0);
    }

    #[test]
    fn a_failure_without_an_os_error_has_no_errno() {
        let error: Error = "not an OS error".into();
        assert_eq!(
            PrefetchFailure::from_error(error.as_ref()),
            PrefetchFailure {
                errno: None,
                message: "not an OS error".into()
            }
        );
    }

    #[test]
    fn optional_methods_default_to_success() {
        let partition: Arc<dyn PartitionMemoryMap> = Arc::new(MinimalPartition);
        assert!(partition.prefetch_range(0, 0x1000).is_ok());
        assert!(partition.pin_range(0, 0x1000).is_ok());
        assert!(partition.start_dirty_log().is_ok());
        let mut reported = 0;
        partition.take_dirty_log(&mut |_, _| reported += 1).unwrap();
        assert_eq!(reported, 0);
        assert!(partition.stop_dirty_log().is_ok());
        let calls = [PlannedCall::Map {
            gpa: 0,
            size: 0x1000,
        }];
        assert_eq!(partition.plan_slots(&calls), None);
        assert_eq!(partition.slot_capacity(), None, "no slot limit by default");
        assert_eq!(
            partition.unmap_range(0, 0x1000).unwrap_err().to_string(),
            "unmap not supported"
        );
    }
}
