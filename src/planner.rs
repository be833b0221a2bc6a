//! Binding of the dry-run planner: the manager's flat view and the ordered operations a change
//! would carry out, as data, without applying anything.
//!
//! A plan lists the VA-mapper invalidations and the partition calls (map, unmap, prefetch, pin)
//! in execution order, each with its reason. The mapping manager's own bookkeeping
//! (`AddMapping`) and the VA population a map waits for (`PopulateVa`) are internal steps and
//! not shown. Applying the same change next produces exactly the partition calls listed.

use crate::errors::{invalid_arg, JsError};
use crate::manager::{
    chain_error, visibility_of, vtl_of, NativeDeviceWindowHalf, NativeGuestMemoryManager,
};
use crate::promise::promise;
use membacking::region_manager::{FlatEntry, Plan, PlanOp};
use membacking::SharedObject;
use memory_range::MemoryRange;
use napi::bindgen_prelude::{BigUint64Array, Object};
use napi::Env;
use napi_derive::napi;
use std::os::fd::AsRawFd;

/// A region as the flat view names it.
#[napi(object, object_from_js = false)]
pub struct RegionName {
    pub id: f64,
    pub name: String,
}

/// One piece of the flat view.
#[napi(object, object_from_js = false)]
pub struct FlatEntryItem {
    pub range: BigUint64Array,
    pub region: Option<RegionName>,
    /// The backing object (`memfd:guest-ram`, …) and the offset of the piece's first byte.
    pub backing_object: Option<String>,
    pub backing_offset: Option<u64>,
    pub writable: bool,
    pub executable: bool,
    pub hidden: Vec<RegionName>,
}

/// One planned operation.
#[napi(object, object_from_js = false)]
pub struct PlannedOpItem {
    pub op: String,
    pub partition: Option<u32>,
    pub gpa: u64,
    pub size: u64,
    pub writable: Option<bool>,
    pub exec: Option<bool>,
    pub reason: String,
}

/// A dry run's result.
#[napi(object, object_from_js = false)]
pub struct PlanItem {
    pub flat_view: Vec<FlatEntryItem>,
    pub ops: Vec<PlannedOpItem>,
}

/// How a backing object is named: the target of its descriptor (`memfd:guest-ram`), or `fd N`.
fn object_name(object: &SharedObject) -> String {
    let fd = object.as_raw_fd();
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .ok()
        .map(|target| {
            let target = target.to_string_lossy().into_owned();
            target
                .trim_start_matches('/')
                .trim_end_matches(" (deleted)")
                .to_owned()
        })
        .unwrap_or_else(|| format!("fd {fd}"))
}

fn flat_items(entries: Vec<FlatEntry<SharedObject>>) -> Vec<FlatEntryItem> {
    entries
        .into_iter()
        .map(|entry| FlatEntryItem {
            range: BigUint64Array::new(vec![entry.range.start(), entry.range.end()]),
            region: entry.region.map(|region| RegionName {
                id: region.id.get() as f64,
                name: region.name.to_string(),
            }),
            backing_object: entry
                .backing
                .as_ref()
                .map(|backing| object_name(&backing.object)),
            backing_offset: entry.backing.as_ref().map(|backing| backing.file_offset),
            writable: entry.writable,
            executable: entry.executable,
            hidden: entry
                .hidden
                .into_iter()
                .map(|region| RegionName {
                    id: region.id.get() as f64,
                    name: region.name.to_string(),
                })
                .collect(),
        })
        .collect()
}

fn op_items(plan: Plan<SharedObject>) -> Vec<PlannedOpItem> {
    plan.ops
        .into_iter()
        .filter_map(|planned| {
            let item = |op: &str, partition: Option<usize>, gpa: u64, size: u64| PlannedOpItem {
                op: op.to_owned(),
                partition: partition.map(|p| p as u32),
                gpa,
                size,
                writable: None,
                exec: None,
                reason: planned.reason.clone(),
            };
            match planned.op {
                PlanOp::AddMapping(_) | PlanOp::PopulateVa { .. } => None,
                PlanOp::Invalidate { range } => {
                    Some(item("invalidate", None, range.start(), range.len()))
                }
                PlanOp::Map {
                    partition,
                    gpa,
                    size,
                    writable,
                    exec,
                    ..
                } => Some(PlannedOpItem {
                    writable: Some(writable),
                    exec: Some(exec),
                    ..item("map", Some(partition), gpa, size)
                }),
                PlanOp::Prefetch {
                    partition,
                    gpa,
                    size,
                } => Some(item("prefetch", Some(partition), gpa, size)),
                PlanOp::Pin {
                    partition,
                    gpa,
                    size,
                } => Some(item("pin", Some(partition), gpa, size)),
                PlanOp::Unmap {
                    partition,
                    gpa,
                    size,
                } => Some(item("unmap", Some(partition), gpa, size)),
            }
        })
        .collect()
}

fn plan_item(plan: Plan<SharedObject>, flat_view: Vec<FlatEntry<SharedObject>>) -> PlanItem {
    PlanItem {
        flat_view: flat_items(flat_view),
        ops: op_items(plan),
    }
}

/// The manager's current flat view.
#[napi(ts_return_type = "Promise<FlatEntryItem[]>")]
pub fn manager_flat_view<'env>(
    env: &'env Env,
    manager: &NativeGuestMemoryManager,
) -> Result<Object<'env>, JsError> {
    let view = manager.manager()?.flat_view();
    promise(
        env,
        async move { view.await.map_err(|err| chain_error(&err)) },
        |_env, entries| Ok(flat_items(entries)),
    )
}

/// Dry run of `setRamVisibility(range, visibility)`.
#[napi(ts_return_type = "Promise<PlanItem>")]
pub fn manager_plan_ram_visibility<'env>(
    env: &'env Env,
    manager: &NativeGuestMemoryManager,
    range: BigUint64Array,
    visibility: String,
) -> Result<Object<'env>, JsError> {
    if range.len() != 2 {
        return Err(invalid_arg("range must be one range"));
    }
    let range = MemoryRange::try_new(range[0]..range[1])
        .map_err(|err| invalid_arg(format!("range: {err}")))?;
    let preview = manager
        .manager()?
        .plan_ram_visibility(range, visibility_of(&visibility)?);
    promise(
        env,
        async move { preview.await.map_err(|err| chain_error(&err)) },
        |_env, preview| Ok(plan_item(preview.plan, preview.flat_view)),
    )
}

/// Dry run of a device window's `mapToGuest(gpa, writable)` (`gpa` absent) or
/// `unmapFromGuest()`.
#[napi(ts_return_type = "Promise<PlanItem>")]
pub fn manager_plan_device<'env>(
    env: &'env Env,
    control: &NativeDeviceWindowHalf,
    place: Option<BigUint64Array>,
    writable: bool,
) -> Result<Object<'env>, JsError> {
    let control = control.placement()?;
    match place {
        Some(gpa) if gpa.len() == 1 => {
            let preview = control.plan_map_to_guest(gpa[0], writable);
            promise(
                env,
                async move { preview.await.map_err(|err| chain_error(&err)) },
                |_env, preview| Ok(plan_item(preview.plan, preview.flat_view)),
            )
        }
        Some(_) => Err(invalid_arg("gpa must be one address")),
        None => {
            let preview = control.plan_unmap_from_guest();
            promise(
                env,
                async move { preview.await.map_err(|err| chain_error(&err)) },
                |_env, preview| Ok(plan_item(preview.plan, preview.flat_view)),
            )
        }
    }
}

/// The slot ids each planned call would create or delete on a KVM partition: `calls` holds
/// `[kind, gpa, size]` triples (kind 0 = map, 1 = unmap), applied in order from the partition's
/// current slot table.
#[cfg(target_arch = "x86_64")]
#[napi]
pub fn kvm_predict_slots(
    partition: &crate::partition::kvm::NativeKvmPartition,
    calls: BigUint64Array,
) -> Result<Vec<Vec<u32>>, JsError> {
    use virt_kvm::PlannedSlotCall;
    if !calls.len().is_multiple_of(3) {
        return Err(invalid_arg("calls must hold [kind, gpa, size] triples"));
    }
    let calls: Vec<PlannedSlotCall> = calls
        .chunks_exact(3)
        .map(|call| match call[0] {
            0 => Ok(PlannedSlotCall::Map {
                gpa: call[1],
                size: call[2],
            }),
            1 => Ok(PlannedSlotCall::Unmap {
                gpa: call[1],
                size: call[2],
            }),
            other => Err(invalid_arg(format!("unknown call kind {other}"))),
        })
        .collect::<Result<_, _>>()?;
    Ok(partition
        .kvm_partition()?
        .predict_slot_changes(&calls)
        .into_iter()
        .map(|changes| changes.created.into_iter().chain(changes.deleted).collect())
        .collect())
}

/// Dry run of a window's `map(offset, object, fileOffset, len, writable)` (with `object`) or
/// `unmap(offset, len)` (without).
#[allow(clippy::too_many_arguments)]
#[napi(ts_return_type = "Promise<PlanItem>")]
pub fn manager_plan_device_mapping<'env>(
    env: &'env Env,
    region: &NativeDeviceWindowHalf,
    offset: crate::args::U64,
    len: crate::args::U64,
    object: Option<&crate::sparse_mapping::NativeMappable>,
    file_offset: crate::args::U64,
    writable: bool,
) -> Result<Object<'env>, JsError> {
    let region = region.mapping_half()?;
    let offset = crate::args::usize_arg(offset, "offset")?;
    let len = crate::args::usize_arg(len, "len")?;
    match object {
        Some(object) => {
            let preview = region.plan_map(offset, object.fd()?, file_offset.0, len, writable);
            promise(
                env,
                async move { preview.await.map_err(|err| chain_error(&err)) },
                |_env, preview| Ok(plan_item(preview.plan, preview.flat_view)),
            )
        }
        None => {
            let preview = region.plan_unmap(offset, len);
            promise(
                env,
                async move { preview.await.map_err(|err| chain_error(&err)) },
                |_env, preview| Ok(plan_item(preview.plan, preview.flat_view)),
            )
        }
    }
}

/// Dry run of `attachPartition(vtl, …)`: the calls into the partition to be attached.
#[napi(ts_return_type = "Promise<PlanItem>")]
pub fn manager_plan_attach<'env>(
    env: &'env Env,
    manager: &NativeGuestMemoryManager,
    vtl: u32,
) -> Result<Object<'env>, JsError> {
    let vtl = vtl_of(vtl)?;
    let preview = manager.manager()?.plan_attach_partition(vtl);
    promise(
        env,
        async move { preview.await.map_err(|err| chain_error(&err)) },
        |_env, preview| Ok(plan_item(preview.plan, preview.flat_view)),
    )
}
