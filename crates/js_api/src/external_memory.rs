//! What native objects tell V8 they hold (`napi_adjust_external_memory`), so that unreachable
//! ones are collected before the process runs out of descriptors or threads.
//!
//! V8 sees a manager as a small wrapper object: without being told, it lets thousands of
//! unreachable managers (each with a memfd, two threads and a VA reservation) pile up before
//! its heap heuristics collect them, and a program that drops managers without `close()` hits
//! EMFILE under the common 1,024-descriptor limit. V8 starts a full collection each time the
//! external memory reported since the last one grows by [`V8_EXTERNAL_SOFT_LIMIT`]; charging a
//! manager [`charge`] bytes makes that happen every [`managers_per_collection`] managers. The
//! charge is returned when the object is closed or finalized. The figures are a budget, not a
//! measurement of memory: they were chosen so that 5,000 managers dropped in a loop stay well
//! inside 1,024 descriptors (the `leaks` ava test) while a program with a few managers sees no
//! extra collections to speak of.

use membacking::ResourceFootprint;

/// The growth of external memory after which V8 starts a full collection (64 MiB, V8's
/// `kExternalAllocationSoftLimit`).
pub const V8_EXTERNAL_SOFT_LIMIT: i64 = 64 << 20;

/// Bytes charged per open descriptor (the scarcest resource: 1,024 by default).
pub const PER_DESCRIPTOR: i64 = 4 << 20;
/// Bytes charged per thread.
pub const PER_THREAD: i64 = 1 << 20;
/// Bytes charged per address-space reservation (`vm.max_map_count` is 65,530).
pub const PER_RESERVATION: i64 = 256 << 10;

/// The charge of an object holding `footprint`.
pub fn charge(footprint: ResourceFootprint) -> i64 {
    i64::from(footprint.descriptors) * PER_DESCRIPTOR
        + i64::from(footprint.threads) * PER_THREAD
        + i64::from(footprint.reservations) * PER_RESERVATION
}

/// The charge of an object that holds one descriptor and nothing else (a `Mappable`).
pub fn descriptor_charge() -> i64 {
    charge(ResourceFootprint {
        descriptors: 1,
        ..ResourceFootprint::default()
    })
}

/// How many objects of `footprint` are created between two collections V8 starts on its own.
pub fn managers_per_collection(footprint: ResourceFootprint) -> i64 {
    let charge = charge(footprint);
    if charge == 0 {
        i64::MAX
    } else {
        (V8_EXTERNAL_SOFT_LIMIT + charge - 1) / charge
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHARED_MANAGER: ResourceFootprint = ResourceFootprint {
        descriptors: 1,
        threads: 2,
        reservations: 1,
    };
    const PRIVATE_MANAGER: ResourceFootprint = ResourceFootprint {
        descriptors: 0,
        threads: 2,
        reservations: 2,
    };

    #[test]
    fn a_collection_comes_every_few_managers() {
        // At most 16 unreachable managers (16 descriptors, 32 threads) between collections.
        assert!(managers_per_collection(SHARED_MANAGER) <= 16);
        assert!(managers_per_collection(PRIVATE_MANAGER) <= 32);
        assert_eq!(managers_per_collection(SHARED_MANAGER), 11);
    }

    #[test]
    fn a_descriptor_alone_is_charged_and_nothing_is_free() {
        assert_eq!(descriptor_charge(), PER_DESCRIPTOR);
        assert!(managers_per_collection(ResourceFootprint::default()) == i64::MAX);
        assert!(V8_EXTERNAL_SOFT_LIMIT / descriptor_charge() <= 16);
    }
}
