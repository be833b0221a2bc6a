//! Lazy registration of guest RAM with a host facility.
//!
//! A host component (for example a DMA or IOMMU facility) has to learn about guest RAM before it
//! can be used, but registering all of a large guest up front is expensive. This crate provides
//! [`MemoryRegistrar`], which registers RAM in fixed 2 GiB chunks ([`GRANULARITY`]) the first
//! time an address in a chunk is used, and remembers which chunks are done and which failed.
//!
//! Two ways to drive it exist side by side:
//!
//! - the synchronous path ([`MemoryRegistrar::new`] + [`MemoryRegistrar::register`]) calls a
//!   [`RegisterMemory`] callback under a lock, exactly as the original does;
//! - the asynchronous path ([`MemoryRegistrar::new_async`] +
//!   [`MemoryRegistrar::register_async`]) calls a [`RegisterMemoryAsync`] callback that may
//!   answer later (a JavaScript Promise in the Node binding). Concurrent callers that need the
//!   same chunk share one registration instead of starting a second one.
#![forbid(unsafe_code)]

pub mod registrar;

pub use registrar::{
    AsyncFromSync, MemoryRegistrar, MemoryRegistrarInspect, RegisterMemory, RegisterMemoryAsync,
    Registration, SyncRegistrationError, GRANULARITY,
};
