//! Transfer handles: how an object reaches a `worker_threads` worker of the same process.
//!
//! `toHandle()` registers a clone of the object's Rust value under a fresh id and returns the id;
//! the id is posted to the worker as a plain value, and `fromHandle(id)` there clones the value
//! again. Every JS object that issued handles drops its registry entries when it is closed or
//! garbage collected, so the issuer must stay alive until the worker has called `fromHandle`.

use crate::errors::{coded, JsError};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// A value that can be registered: cloned out by `fromHandle`.
#[derive(Clone)]
pub enum Shared {
    SparseMapping(std::sync::Arc<sparse_mmap::SparseMapping>),
    GuestMemory(guestmem::GuestMemory),
    Client(membacking::GuestMemoryClient),
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static REGISTRY: Mutex<Option<HashMap<u64, Shared>>> = Mutex::new(None);

/// Registers `value` and returns its id.
pub fn register(value: Shared) -> u64 {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    REGISTRY
        .lock()
        .get_or_insert_with(HashMap::new)
        .insert(id, value);
    id
}

/// The value registered under `id`.
pub fn lookup(id: u64) -> Result<Shared, JsError> {
    REGISTRY
        .lock()
        .as_ref()
        .and_then(|map| map.get(&id).cloned())
        .ok_or_else(|| {
            coded(
                "ERR_INVALID_ARG_VALUE",
                format!(
                    "no object for handle {id}: the object that made it was closed or garbage \
                     collected, or the handle comes from another process"
                ),
            )
        })
}

/// Drops the entries `ids` (when their issuer goes away).
pub fn release(ids: &[u64]) {
    if ids.is_empty() {
        return;
    }
    if let Some(map) = REGISTRY.lock().as_mut() {
        for id in ids {
            map.remove(id);
        }
    }
}
