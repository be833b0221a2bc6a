//! The transfer handles of this process (`toHandle()` / `fromHandle()`, see
//! `js_api::handles`): what can be reopened in a worker thread.

use js_api::handles::HandleRegistry;

/// A value that can be reopened by `fromHandle`.
#[derive(Clone)]
pub enum Shared {
    SparseMapping(std::sync::Arc<sparse_mmap::SparseMapping>),
    GuestMemory(guestmem::GuestMemory),
    Client(membacking::GuestMemoryClient),
}

/// The registry of this process.
pub static HANDLES: HandleRegistry<Shared> = HandleRegistry::new();
