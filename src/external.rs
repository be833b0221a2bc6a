//! External memory reported to V8 for native objects that hold descriptors, threads and address
//! space (how much: `js_api::external_memory`), returned once when the object is closed or
//! finalized.

use napi::Env;
use std::cell::Cell;

/// The bytes an object reported with `napi_adjust_external_memory`, until returned.
#[derive(Default)]
pub struct ExternalCharge(Cell<i64>);

impl ExternalCharge {
    /// Reports `bytes` for a new object.
    pub fn new(env: &Env, bytes: i64) -> Self {
        // A failure only means V8 was not told; the object works the same.
        let _ = env.adjust_external_memory(bytes);
        ExternalCharge(Cell::new(bytes))
    }

    /// Returns the charge (at most once; later calls do nothing).
    pub fn release(&self, env: &Env) {
        let bytes = self.0.replace(0);
        if bytes != 0 {
            let _ = env.adjust_external_memory(-bytes);
        }
    }
}
