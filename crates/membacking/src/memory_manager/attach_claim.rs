//! The one-attach rule: a partition is attached to at most one memory manager, once, until that
//! manager stops.
//!
//! Attaching a partition a second time would map the active regions over the first attach's
//! mappings (a KVM partition refuses the overlap), and the failed attach's whole-window unmap
//! (the cleanup of a failed attach) would then remove the first attach's mappings. So the second attach is
//! refused before any partition call: each attach takes a process-wide claim on the partition,
//! kept by the partition mappers it registers and released when the last of them is dropped
//! (the manager stopped) or, if it registered none, when the attach ends.
//!
//! A partition is identified by its `Arc` allocation. A claim holds the partition weakly, which
//! keeps the allocation (not the partition) alive, so the address cannot be reused while the
//! claim exists.

use crate::error::AttachedTo;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Weak;
use virt::PartitionMemoryMap;

/// Identifies a memory manager among the process's managers.
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub(crate) struct ManagerId(u64);

impl ManagerId {
    /// A new id, never handed out before.
    pub(crate) fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ManagerId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// Claimed partitions (by allocation address) and the manager holding each.
static CLAIMED: Mutex<BTreeMap<usize, ManagerId>> = Mutex::new(BTreeMap::new());

/// The address identifying `partition`'s allocation.
fn partition_key(partition: &Weak<dyn PartitionMemoryMap>) -> usize {
    partition.as_ptr().cast::<()>() as usize
}

/// One attach's claim on a partition; released when dropped.
#[derive(Debug)]
pub(crate) struct AttachClaim {
    key: usize,
    manager: ManagerId,
    /// Keeps the allocation, hence the key, from being reused while claimed.
    partition: Weak<dyn PartitionMemoryMap>,
}

impl AttachClaim {
    /// Claims `partition` for `manager`, or says which manager holds it.
    pub(crate) fn take(
        partition: &Arc<dyn PartitionMemoryMap>,
        manager: ManagerId,
    ) -> Result<Arc<Self>, AttachedTo> {
        let partition = Arc::downgrade(partition);
        let key = partition_key(&partition);
        let mut claimed = CLAIMED.lock();
        match claimed.get(&key) {
            Some(&holder) => Err(refusal(holder, manager)),
            None => {
                claimed.insert(key, manager);
                Ok(Arc::new(AttachClaim {
                    key,
                    manager,
                    partition,
                }))
            }
        }
    }

    /// What [`take`](Self::take) would say now, without claiming (an attach's dry run).
    pub(crate) fn check(
        partition: &Arc<dyn PartitionMemoryMap>,
        manager: ManagerId,
    ) -> Result<(), AttachedTo> {
        let key = partition_key(&Arc::downgrade(partition));
        match CLAIMED.lock().get(&key) {
            Some(&holder) => Err(refusal(holder, manager)),
            None => Ok(()),
        }
    }

    /// The claimed partition, held weakly (as the manager holds partitions).
    pub(crate) fn partition(&self) -> &Weak<dyn PartitionMemoryMap> {
        &self.partition
    }

    /// The manager holding the claim.
    pub(crate) fn holder(&self) -> ManagerId {
        self.manager
    }
}

/// Why `manager` cannot claim a partition `holder` holds.
fn refusal(holder: ManagerId, manager: ManagerId) -> AttachedTo {
    if holder == manager {
        AttachedTo::ThisManager
    } else {
        AttachedTo::AnotherManager
    }
}

impl Drop for AttachClaim {
    fn drop(&mut self) {
        // Runs before `partition` is dropped, so the key is free only once no claim pins it.
        CLAIMED.lock().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virt::RecordingPartition;

    fn new_partition() -> Arc<dyn PartitionMemoryMap> {
        Arc::new(RecordingPartition::new())
    }

    #[test]
    fn a_partition_is_claimed_once_until_the_claim_is_dropped() {
        let (first, second) = (ManagerId::next(), ManagerId::next());
        let partition = new_partition();
        let claim = AttachClaim::take(&partition, first).unwrap();
        assert_eq!(claim.holder(), first);
        assert_eq!(
            AttachClaim::take(&partition, first).unwrap_err(),
            AttachedTo::ThisManager
        );
        assert_eq!(
            AttachClaim::take(&partition, second).unwrap_err(),
            AttachedTo::AnotherManager
        );
        // The check says the same without claiming.
        assert_eq!(
            AttachClaim::check(&partition, second),
            Err(AttachedTo::AnotherManager)
        );
        // Another partition is unaffected.
        let other = new_partition();
        drop(AttachClaim::take(&other, first).unwrap());
        // A clone keeps the claim; dropping the last one releases it.
        let kept = claim.clone();
        drop(claim);
        assert!(AttachClaim::take(&partition, second).is_err());
        drop(kept);
        let again = AttachClaim::take(&partition, second).unwrap();
        assert_eq!(again.holder(), second);
    }

    #[test]
    fn a_claim_outlives_its_partition_and_its_address() {
        let manager = ManagerId::next();
        let partition = new_partition();
        let claim = AttachClaim::take(&partition, manager).unwrap();
        let address = Arc::as_ptr(&partition).cast::<()>() as usize;
        drop(partition);
        assert!(claim.partition().upgrade().is_none());
        // The weak reference keeps the allocation: no new partition can get its address.
        let others: Vec<_> = (0..64).map(|_| new_partition()).collect();
        assert!(others
            .iter()
            .all(|other| Arc::as_ptr(other).cast::<()>() as usize != address));
        assert_eq!(CLAIMED.lock().get(&address), Some(&manager));
        drop(claim);
        assert_eq!(CLAIMED.lock().get(&address), None);
    }
}
