//! Transfer handles: how an object reaches a `worker_threads` worker of the same process.
//!
//! `toHandle()` registers a clone of the object's Rust value under a fresh id and returns the
//! id; the id is posted to the worker as a plain value, and `fromHandle(id)` there clones the
//! value again. The object that issued handles releases them when it is closed or collected,
//! so it must stay alive until the worker has called `fromHandle`.

use crate::errors::JsError;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

/// Values registered under ids.
pub struct HandleRegistry<T> {
    next_id: AtomicU64,
    values: Mutex<Option<HashMap<u64, T>>>,
}

impl<T: Clone> HandleRegistry<T> {
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

    /// A clone of the value registered under `id`.
    pub fn lookup(&self, id: u64) -> Result<T, JsError> {
        self.values
            .lock()
            .as_ref()
            .and_then(|values| values.get(&id).cloned())
            .ok_or_else(|| JsError::unknown_handle(id))
    }

    /// Drops the entries `ids` (when their issuer goes away).
    pub fn release(&self, ids: &[u64]) {
        if let Some(values) = self.values.lock().as_mut() {
            for id in ids {
                values.remove(id);
            }
        }
    }
}

impl<T: Clone> Default for HandleRegistry<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::ErrorClass;

    #[test]
    fn a_handle_finds_its_value_until_released() {
        let registry = HandleRegistry::new();
        let first = registry.register("mapping");
        let second = registry.register("memory");
        assert_ne!(first, second);
        assert_eq!(registry.lookup(first).unwrap(), "mapping");
        registry.release(&[first]);
        let error = registry.lookup(first).unwrap_err();
        assert_eq!(error.kind().0, ErrorClass::RangeError);
        assert!(error
            .message
            .contains(&format!("no object for handle {first}")));
        assert_eq!(registry.lookup(second).unwrap(), "memory");
        assert!(
            HandleRegistry::<u8>::new().lookup(1).is_err(),
            "an empty registry has nothing"
        );
    }
}
