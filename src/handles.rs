//! The transfer handles of this process (`toHandle()` / `fromHandle()`, see
//! `js_api::handles`): what can be reopened in a worker thread. A handle keeps its value alive
//! until it is opened or closed.

use crate::errors::throw;
use crate::errors::OrThrow;
use js_api::handles::HandleRegistry;
use js_api::JsError;
use napi_derive::napi;

/// A value that can be reopened by `fromHandle`.
pub enum Shared {
    SparseMapping(std::sync::Arc<sparse_mmap::SparseMapping>),
    /// A memory and what its operations may run.
    GuestMemory(guestmem::GuestMemory, crate::guest_memory::Hooks),
    Client(membacking::GuestMemoryClient),
}

impl Shared {
    /// The class name of the object the value reopens as.
    fn class(&self) -> &'static str {
        match self {
            Shared::SparseMapping(_) => "SparseMapping",
            Shared::GuestMemory(..) => "GuestMemory",
            Shared::Client(_) => "GuestMemoryClient",
        }
    }

    /// `Ok` when the value reopens as `class`, else the error for `fromHandle` of `class`.
    pub fn expect(&self, id: u64, class: &str) -> Result<(), JsError> {
        if self.class() == class {
            Ok(())
        } else {
            Err(JsError::wrong_handle(id, self.class(), class))
        }
    }
}

/// The registry of this process.
pub static HANDLES: HandleRegistry<Shared> = HandleRegistry::new();

/// Opens handle `id` as a `class` object: takes its value out of the registry (a handle opens
/// once) and extracts it with `pick`.
pub fn open<T>(id: u64, class: &str, pick: fn(Shared) -> Option<T>) -> napi::Result<T> {
    let shared = HANDLES
        .take(id, |shared| shared.expect(id, class))
        .or_throw()?;
    pick(shared).ok_or_else(|| throw(JsError::internal("a handle changed its kind")))
}

/// Releases a handle that will not be opened (`TransferHandle#close()`); `false` when it was
/// opened or closed already.
#[napi]
pub fn release_handle(id: crate::args::U64) -> bool {
    HANDLES.release(id.0)
}

/// Test hook (the internal entry only): how many handles are neither opened nor closed.
#[napi]
pub fn test_open_handle_count() -> u32 {
    u32::try_from(HANDLES.open_count()).unwrap_or(u32::MAX)
}
