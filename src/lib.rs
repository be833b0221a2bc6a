//! The napi-rs binding of membacking.
//!
//! Thin by design: each file adapts one area of the Rust core (`crates/`) to JavaScript —
//! argument conversion, result conversion, and errors — and holds no logic of its own. The
//! public JavaScript API is the TypeScript layer in `ts/`, which wraps these raw exports.

// napi-rs registers exports only outside `cfg(test)`; a test build of this cdylib (as
// `cargo clippy --all-targets` makes) would otherwise see every export as dead code.
#![cfg_attr(test, allow(dead_code))]

mod args;
mod bench;
mod errors;
mod guest_memory;
mod handles;
mod js_hooks;
mod js_thread;
mod layout;
mod manager;
mod partition;
mod planner;
mod promise;
mod range;
mod registrar;
mod sparse_mapping;
