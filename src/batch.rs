//! Binding of batched manager changes (`manager.apply(changes)`, `manager.plan(changes)`): a
//! `NativeBatch` collects the changes, each converted like the single operation's arguments
//! (and named `changes[i].…` in argument errors), and the manager applies or plans the whole
//! batch in one request (`membacking::GuestMemoryManager::apply`).

use crate::args::host_size;
use crate::args::U64;
use crate::errors::OrThrow;
use crate::manager::NativeDeviceWindowHalf;
use crate::manager::NativeGuestMemoryManager;
use crate::promise::promise;
use crate::sparse_mapping::NativeMappable;
use js_api::args::one_range;
use js_api::args::string_member;
use js_api::executor::Polling;
use js_api::json::to_json;
use js_api::views::AppliedPlanView;
use js_api::views::PlanView;
use js_api::ToJsError;
use membacking::ManagerChange;
use napi::bindgen_prelude::BigUint64Array;
use napi::bindgen_prelude::Object;
use napi::Env;
use napi_derive::napi;

/// The changes of one `apply`/`plan` call, in order.
#[napi]
pub struct NativeBatch {
    changes: Vec<ManagerChange>,
}

#[napi]
impl NativeBatch {
    /// An empty batch.
    #[napi(constructor)]
    #[allow(clippy::new_without_default, reason = "a napi constructor")]
    pub fn new() -> Self {
        NativeBatch {
            changes: Vec::new(),
        }
    }

    /// `setRamVisibility(range, visibility)` as change `index`.
    #[napi]
    pub fn ram_visibility(
        &mut self,
        index: u32,
        range: BigUint64Array,
        visibility: String,
    ) -> napi::Result<()> {
        let range = one_range(&range, &format!("changes[{index}].range")).or_throw()?;
        let visibility =
            string_member(&visibility, &format!("changes[{index}].visibility")).or_throw()?;
        self.changes
            .push(ManagerChange::RamVisibility { range, visibility });
        Ok(())
    }

    /// `window.mapToGuest(gpa, writable)`.
    #[napi]
    pub fn device_map_to_guest(
        &mut self,
        window: &NativeDeviceWindowHalf,
        gpa: U64,
        writable: bool,
    ) -> napi::Result<()> {
        let change = window.control()?.map_to_guest_change(gpa.0, writable);
        self.changes.push(change);
        Ok(())
    }

    /// `window.unmapFromGuest()`.
    #[napi]
    pub fn device_unmap_from_guest(&mut self, window: &NativeDeviceWindowHalf) -> napi::Result<()> {
        let change = window.control()?.unmap_from_guest_change();
        self.changes.push(change);
        Ok(())
    }

    /// `region.map(offset, object, fileOffset, len, writable)` as change `index`.
    #[napi]
    #[allow(
        clippy::too_many_arguments,
        reason = "the operation's arguments and the index"
    )]
    pub fn device_map(
        &mut self,
        index: u32,
        region: &NativeDeviceWindowHalf,
        offset: U64,
        object: &NativeMappable,
        file_offset: U64,
        len: U64,
        writable: bool,
    ) -> napi::Result<()> {
        let offset = host_size(offset, &format!("changes[{index}].offset"))?;
        let len = host_size(len, &format!("changes[{index}].len"))?;
        let change = region.region()?.map_object_change(
            offset,
            object.shared()?,
            file_offset.0,
            len,
            writable,
        );
        self.changes.push(change);
        Ok(())
    }

    /// `region.unmap(offset, len)` as change `index`.
    #[napi]
    pub fn device_unmap(
        &mut self,
        index: u32,
        region: &NativeDeviceWindowHalf,
        offset: U64,
        len: U64,
    ) -> napi::Result<()> {
        let offset = host_size(offset, &format!("changes[{index}].offset"))?;
        let len = host_size(len, &format!("changes[{index}].len"))?;
        let change = region.region()?.unmap_change(offset, len);
        self.changes.push(change);
        Ok(())
    }
}

#[napi]
impl NativeGuestMemoryManager {
    /// Applies the batch's changes, all or nothing (JSON `{ops}`); the batch is emptied.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn apply_batch<'env>(
        &self,
        env: &'env Env,
        batch: &mut NativeBatch,
    ) -> napi::Result<Object<'env>> {
        let apply = self.manager()?.apply(std::mem::take(&mut batch.changes));
        let json = async move {
            let applied = apply.await.map_err(|error| error.to_js_error())?;
            Ok::<_, js_api::JsError>(to_json(&AppliedPlanView::from(&applied)))
        };
        promise(env, Polling::Inline, json, |_env, json| Ok(json))
    }

    /// Dry run of the batch's changes (JSON `{flatView, ops}`); the batch is emptied.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn plan_batch<'env>(
        &self,
        env: &'env Env,
        batch: &mut NativeBatch,
    ) -> napi::Result<Object<'env>> {
        let plan = self
            .manager()?
            .plan_batch(std::mem::take(&mut batch.changes));
        let json = async move {
            let preview = plan.await.map_err(|error| error.to_js_error())?;
            Ok::<_, js_api::JsError>(to_json(&PlanView::from(&preview)))
        };
        promise(env, Polling::Pool, json, |_env, json| Ok(json))
    }
}
