//! Binding of the dry-run planner: the manager's flat view and the steps a change would carry
//! out (`membacking::PreviewStep`: VA-mapper invalidations and partition calls, with their
//! partition indexes, slot ids and reasons), as JSON views, without applying anything.

use crate::args::host_size;
use crate::args::U64;
use crate::errors::OrThrow;
use crate::manager::NativeDeviceWindowHalf;
use crate::manager::NativeGuestMemoryManager;
use crate::partition::attachable;
use crate::partition::AnyPartition;
use crate::promise::json_promise;
use crate::sparse_mapping::NativeMappable;
use futures::TryFutureExt;
use js_api::args::number_member;
use js_api::args::one_range;
use js_api::args::string_member;
use js_api::executor::Polling;
use js_api::json::to_json;
use js_api::views::FlatEntryView;
use js_api::views::PlanView;
use js_api::JsError;
use js_api::ToJsError;
use membacking::PlanPreview;
use napi::bindgen_prelude::BigUint64Array;
use napi::bindgen_prelude::Object;
use napi::Env;
use napi_derive::napi;
use std::future::Future;

/// A Promise for a dry run, resolving to its JSON view.
fn plan<'env, E: ToJsError + 'static>(
    env: &'env Env,
    preview: impl Future<Output = Result<PlanPreview, E>> + Send + 'static,
) -> napi::Result<Object<'env>> {
    json_promise(env, Polling::Pool, preview, |preview| {
        to_json(&PlanView::from(preview))
    })
}

/// A device window's dry run (its `io::Error`s are the window's, `JsError::device_window`).
fn device_plan<'env>(
    env: &'env Env,
    preview: impl Future<Output = std::io::Result<PlanPreview>> + Send + 'static,
) -> napi::Result<Object<'env>> {
    plan(env, preview.map_err(|error| JsError::device_window(&error)))
}

#[napi]
impl NativeGuestMemoryManager {
    /// The current flat view (JSON).
    #[napi(ts_return_type = "Promise<string>")]
    pub fn flat_view<'env>(&self, env: &'env Env) -> napi::Result<Object<'env>> {
        json_promise(env, Polling::Pool, self.manager()?.flat_view(), |entries| {
            to_json(&FlatEntryView::list(entries))
        })
    }

    /// Dry run of `setRamVisibility(range, visibility)`.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn plan_ram_visibility<'env>(
        &self,
        env: &'env Env,
        range: BigUint64Array,
        visibility: String,
    ) -> napi::Result<Object<'env>> {
        let range = one_range(&range, "range").or_throw()?;
        let visibility = string_member(&visibility, "visibility").or_throw()?;
        plan(env, self.manager()?.plan_ram_visibility(range, visibility))
    }

    /// Dry run of `attachPartition(vtl, partition)`: the calls into the partition to attach.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn plan_attach<'env>(
        &self,
        env: &'env Env,
        vtl: u32,
        partition: AnyPartition,
    ) -> napi::Result<Object<'env>> {
        let manager = self.manager()?;
        let vtl = number_member(vtl, "vtl").or_throw()?;
        let partition = attachable(&partition)?;
        plan(env, manager.plan_attach_partition(vtl, &partition))
    }
}

#[napi]
impl NativeDeviceWindowHalf {
    /// Whether `manager` made this window (a dry run of it is only meaningful there).
    #[napi]
    pub fn made_by(&self, manager: &NativeGuestMemoryManager) -> napi::Result<bool> {
        let manager = manager.manager()?;
        // A closed half has neither: name the half the caller passed, not the other one.
        match (self.control(), self.region()) {
            (Ok(control), _) => Ok(control.made_by(manager)),
            (Err(_), Ok(region)) => Ok(region.made_by(manager)),
            (Err(_), Err(_)) => Err(self.closed_error()),
        }
    }

    /// Dry run of `mapToGuest(gpa, writable)`.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn plan_map_to_guest<'env>(
        &self,
        env: &'env Env,
        gpa: U64,
        writable: bool,
    ) -> napi::Result<Object<'env>> {
        device_plan(env, self.control()?.plan_map_to_guest(gpa.0, writable))
    }

    /// Dry run of `unmapFromGuest()`.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn plan_unmap_from_guest<'env>(&self, env: &'env Env) -> napi::Result<Object<'env>> {
        device_plan(env, self.control()?.plan_unmap_from_guest())
    }

    /// Dry run of `map(offset, object, fileOffset, len, writable)`.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn plan_map<'env>(
        &self,
        env: &'env Env,
        offset: U64,
        object: &NativeMappable,
        file_offset: U64,
        len: U64,
        writable: bool,
    ) -> napi::Result<Object<'env>> {
        let (offset, len) = (host_size(offset, "offset")?, host_size(len, "len")?);
        let preview = self
            .region()?
            .plan_map(offset, object.fd()?, file_offset.0, len, writable);
        device_plan(env, preview)
    }

    /// Dry run of `unmap(offset, len)`.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn plan_unmap<'env>(
        &self,
        env: &'env Env,
        offset: U64,
        len: U64,
    ) -> napi::Result<Object<'env>> {
        let (offset, len) = (host_size(offset, "offset")?, host_size(len, "len")?);
        device_plan(env, self.region()?.plan_unmap(offset, len))
    }
}
