//! Transfer handles: how an object reaches a `worker_threads` worker of the same process.
//!
//! `toHandle()` registers a clone of the object's Rust value under a fresh id and returns the
//! id; the id is posted to the worker as a plain value, and `fromHandle(id)` there takes the
//! value out of the registry. A handle is single-use: it opens once, and until it is opened (or
//! released with the handle's `close()`) the registry's clone keeps what it names alive, whatever
//! happens to the object that issued it. So a handle made from a temporary object
//! (`manager.client().toHandle()`) stays good after that object is collected, and a handle that
//! is never opened keeps its object until it is closed: nothing can see when a posted copy of
//! the handle is garbage collected.

use crate::errors::JsError;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

/// Values registered under ids until they are taken or released.
pub struct HandleRegistry<T> {
    next_id: AtomicU64,
    values: Mutex<Option<HashMap<u64, T>>>,
}

impl<T> HandleRegistry<T> {
    /// An empty registry (usable as a `static`).
    pub const fn new() -> Self {
        HandleRegistry {
            next_id: AtomicU64::new(1),
            values: Mutex::new(None),
        }
    }

    /// Registers `value` and returns its id.
    pub fn register(&self, value: T) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.values
            .lock()
            .get_or_insert_with(HashMap::new)
            .insert(id, value);
        id
    }

    /// Why `id` names no value.
    fn missing(&self, id: u64) -> JsError {
        if id == 0 || id >= self.next_id.load(Ordering::Relaxed) {
            JsError::unknown_handle(id)
        } else {
            JsError::spent_handle(id)
        }
    }

    /// Takes the value registered under `id` out of the registry, if `kind` accepts it (`kind`
    /// returns the error for a value of another kind, which stays registered).
    pub fn take(
        &self,
        id: u64,
        kind: impl FnOnce(&T) -> Result<(), JsError>,
    ) -> Result<T, JsError> {
        let mut values = self.values.lock();
        let entry = values.as_mut().and_then(|values| {
            let found = values.get(&id)?;
            Some(kind(found).map(|()| values.remove(&id)))
        });
        match entry {
            Some(Ok(Some(value))) => Ok(value),
            Some(Err(error)) => Err(error),
            Some(Ok(None)) | None => Err(self.missing(id)),
        }
    }

    /// Drops the value registered under `id` (a handle closed without being opened); `false`
    /// when there was none (already opened or closed).
    pub fn release(&self, id: u64) -> bool {
        self.values
            .lock()
            .as_mut()
            .and_then(|values| values.remove(&id))
            .is_some()
    }

    /// How many handles are neither opened nor closed.
    pub fn open_count(&self) -> usize {
        self.values.lock().as_ref().map_or(0, HashMap::len)
    }
}

impl<T> Default for HandleRegistry<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::ErrorClass;

    fn any(_: &&str) -> Result<(), JsError> {
        Ok(())
    }

    #[test]
    fn a_handle_opens_once() {
        let registry = HandleRegistry::new();
        let first = registry.register("mapping");
        let second = registry.register("memory");
        assert_ne!(first, second);
        assert_eq!(registry.open_count(), 2);
        assert_eq!(registry.take(first, any).unwrap(), "mapping");
        let error = registry.take(first, any).unwrap_err();
        assert_eq!(error.kind().0, ErrorClass::RangeError);
        assert!(
            error
                .message
                .contains(&format!("handle {first} was already opened or closed")),
            "{}",
            error.message
        );
        assert_eq!(registry.open_count(), 1);
        assert_eq!(registry.take(second, any).unwrap(), "memory");
        assert_eq!(registry.open_count(), 0);
    }

    #[test]
    fn a_released_handle_no_longer_opens_and_an_unknown_id_says_so() {
        let registry = HandleRegistry::new();
        let id = registry.register("client");
        assert!(registry.release(id));
        assert!(!registry.release(id), "released once");
        assert!(registry
            .take(id, any)
            .unwrap_err()
            .message
            .contains("already opened or closed"));
        let unknown = registry.take(id + 100, any).unwrap_err();
        assert!(
            unknown
                .message
                .contains(&format!("no object for handle {}", id + 100)),
            "{}",
            unknown.message
        );
        assert!(HandleRegistry::<u8>::new()
            .take(0, |_| Ok(()))
            .unwrap_err()
            .message
            .contains("no object for handle 0"));
    }

    #[test]
    fn a_handle_of_another_kind_stays_registered() {
        let registry = HandleRegistry::new();
        let id = registry.register("mapping");
        let error = registry
            .take(id, |_| Err(JsError::arg_value("not a memory handle")))
            .unwrap_err();
        assert_eq!(error.message, "not a memory handle");
        assert_eq!(registry.take(id, any).unwrap(), "mapping");
    }
}
