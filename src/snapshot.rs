//! Binding of dirty tracking, snapshots and restores: `manager.dirtyTracking()`,
//! `manager.snapshot()`, `GuestMemoryBuilder.restore()` (with its options collected by
//! `NativeRestoreOptions`, which a migration's destination uses too), the lazy-restore handle,
//! and the snapshot readers the CLI uses.
//!
//! Every operation is a core future turned into a Promise; the results cross as the JSON views
//! of `js_api::snapshots`, errors through the table of `js_api::errors`. Progress callbacks are
//! fire-and-forget calls of weak thread-safe functions (`progress`).

use crate::args::U64;
use crate::errors::throw;
use crate::errors::OrThrow;
use crate::layout::NativeLayout;
use crate::manager::settle;
use crate::manager::NativeDeviceWindowHalf;
use crate::manager::NativeGuestMemoryManager;
use crate::progress::progress_callback;
use crate::promise::json_promise;
use crate::promise::promise;
use crate::sparse_mapping::NativeMappable;
use js_api::args::string_member;
use js_api::executor::Polling;
use js_api::json::list_json;
use js_api::json::to_json;
use js_api::migrations::MigratedInfoView;
use js_api::snapshots::ChainView;
use js_api::snapshots::LazyStatsView;
use js_api::snapshots::RangesView;
use js_api::snapshots::RestoreInfoView;
use js_api::snapshots::RestoredWindowView;
use js_api::snapshots::SnapshotInfoView;
use js_api::snapshots::SnapshotSupportView;
use js_api::JsError;
use js_api::ToJsError;
use membacking::migration::MigratedManager;
use membacking::snapshot::LazyRestore;
use membacking::snapshot::RestoreMode;
use membacking::snapshot::RestoreOptions;
use membacking::snapshot::RestoredManager;
use membacking::snapshot::RestoredWindow;
use membacking::snapshot::SnapshotOptions;
use membacking::snapshot::WindowBacking;
use membacking::DirtyTracking;
use membacking::GuestMemoryBuilder;
use membacking::GuestMemoryManager;
use napi::bindgen_prelude::Buffer;
use napi::bindgen_prelude::FnArgs;
use napi::bindgen_prelude::Function;
use napi::bindgen_prelude::Object;
use napi::Env;
use napi_derive::napi;
use std::path::PathBuf;

/// Starts, takes and stops dirty tracking of one manager.
#[napi]
pub struct NativeDirtyTracking {
    inner: DirtyTracking,
}

#[napi]
impl NativeDirtyTracking {
    /// Starts tracking (a no-op when on).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn start<'env>(&self, env: &'env Env) -> napi::Result<Object<'env>> {
        settle(env, Polling::Inline, self.inner.start())
    }

    /// The ranges written since `start()` or the last `take()` (JSON list of ranges).
    #[napi(ts_return_type = "Promise<string>")]
    pub fn take<'env>(&self, env: &'env Env) -> napi::Result<Object<'env>> {
        json_promise(env, Polling::Pool, self.inner.take(), |ranges| {
            to_json(&RangesView::new(ranges))
        })
    }

    /// Stops tracking (a no-op when off).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn stop<'env>(&self, env: &'env Env) -> napi::Result<Object<'env>> {
        settle(env, Polling::Inline, self.inner.stop())
    }

    /// Whether tracking is on.
    #[napi(getter)]
    pub fn active(&self) -> bool {
        self.inner.is_active()
    }
}

#[napi]
impl NativeGuestMemoryManager {
    /// The manager's dirty tracking (off until started).
    #[napi]
    pub fn dirty_tracking(&self) -> napi::Result<NativeDirtyTracking> {
        Ok(NativeDirtyTracking {
            inner: self.manager()?.dirty_tracking(),
        })
    }

    /// Writes a snapshot to `dir` (incremental on `base`); resolves with the JSON of
    /// `SnapshotInfo`.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn snapshot<'env>(
        &self,
        env: &'env Env,
        dir: String,
        base: Option<String>,
        on_progress: Option<Function<'env, FnArgs<(u64, u64)>, ()>>,
    ) -> napi::Result<Object<'env>> {
        let options = SnapshotOptions {
            base: base.map(PathBuf::from),
            progress: on_progress.map(progress_callback).transpose()?,
        };
        let snapshot = self.manager()?.snapshot(dir, options);
        json_promise(env, Polling::Pool, snapshot, |info| {
            to_json(&SnapshotInfoView::from(info))
        })
    }
}

/// The options of a restore, collected before the call (`GuestMemoryBuilder.restore`).
#[napi]
pub struct NativeRestoreOptions {
    inner: Option<RestoreOptions>,
}

impl NativeRestoreOptions {
    /// The options collected, taken (a second use is `ERR_CLOSED`).
    pub(crate) fn take(&mut self) -> napi::Result<RestoreOptions> {
        self.inner
            .take()
            .ok_or_else(|| throw(JsError::closed("the restore options")))
    }

    fn options(&mut self) -> napi::Result<&mut RestoreOptions> {
        self.inner
            .as_mut()
            .ok_or_else(|| throw(JsError::closed("the restore options")))
    }
}

#[napi]
impl NativeRestoreOptions {
    /// Copy mode, no layout check, no window backings.
    #[napi(constructor)]
    #[allow(clippy::new_without_default, reason = "a napi constructor")]
    pub fn new() -> Self {
        NativeRestoreOptions {
            inner: Some(RestoreOptions::default()),
        }
    }

    /// `mode`: a `RestoreMode` value (`'copy'` or `'lazy'`).
    #[napi]
    pub fn set_mode(&mut self, mode: String) -> napi::Result<()> {
        self.options()?.mode = string_member::<RestoreMode>(&mode, "options.mode").or_throw()?;
        Ok(())
    }

    /// The layout the snapshot must have been taken of.
    #[napi]
    pub fn set_layout(&mut self, layout: &NativeLayout) -> napi::Result<()> {
        self.options()?.layout = Some(layout.layout().clone());
        Ok(())
    }

    /// Backs the recorded mapping at `offset` of window `window` (every recorded mapping of
    /// the window without an offset) with `object` (duplicated now).
    #[napi]
    pub fn add_window_backing(
        &mut self,
        window: String,
        offset: Option<U64>,
        object: &NativeMappable,
    ) -> napi::Result<()> {
        let object = sparse_mmap::mappable_from_fd(object.fd()?)
            .map_err(|error| throw(JsError::os(&error, "fcntl")))?;
        self.options()?.window_backings.push(WindowBacking {
            window,
            offset: offset.map(|offset| offset.0),
            object,
        });
        Ok(())
    }

    /// Start dirty tracking with the restored snapshot as the chain head.
    #[napi]
    pub fn set_start_dirty_tracking(&mut self, enable: bool) -> napi::Result<()> {
        self.options()?.start_dirty_tracking = enable;
        Ok(())
    }

    /// Lazy mode: fill pages only on first touch until `startBackground()`.
    #[napi]
    pub fn set_defer_background_fill(&mut self, enable: bool) -> napi::Result<()> {
        self.options()?.defer_background_fill = enable;
        Ok(())
    }

    /// Told `(done, total)` bytes restored.
    #[napi]
    pub fn set_on_progress(
        &mut self,
        on_progress: Function<'_, FnArgs<(u64, u64)>, ()>,
    ) -> napi::Result<()> {
        self.options()?.progress = Some(progress_callback(on_progress)?);
        Ok(())
    }
}

/// What a restore or a migration's destination built: the manager, the recreated device
/// windows, the lazy restore, the migration's payload.
#[napi]
pub struct NativeRestoredManager {
    manager: Option<NativeGuestMemoryManager>,
    windows: Vec<NativeDeviceWindowHalf>,
    windows_json: String,
    info_json: String,
    lazy: Option<LazyRestore>,
    payload: Option<Vec<u8>>,
}

#[napi]
impl NativeRestoredManager {
    /// The manager (once).
    #[napi]
    pub fn take_manager(&mut self) -> napi::Result<NativeGuestMemoryManager> {
        self.manager
            .take()
            .ok_or_else(|| throw(JsError::closed("the restored manager")))
    }

    /// The device windows' halves, `[control0, region0, control1, region1, …]` (once).
    #[napi]
    pub fn take_window_halves(&mut self) -> Vec<NativeDeviceWindowHalf> {
        std::mem::take(&mut self.windows)
    }

    /// The device windows as recorded, with their missing backings (JSON).
    #[napi(getter)]
    pub fn windows_json(&self) -> String {
        self.windows_json.clone()
    }

    /// What the restore rebuilt from (JSON of `RestoreInfo`; of `MigratedFrom` after a
    /// migration).
    #[napi(getter)]
    pub fn info_json(&self) -> String {
        self.info_json.clone()
    }

    /// The payload a migration's source sent with its final round (once; `null` without one).
    #[napi]
    pub fn take_payload(&mut self) -> Option<Buffer> {
        self.payload.take().map(Buffer::from)
    }

    /// The lazy restore (once; `null` for a copy restore).
    #[napi]
    pub fn take_lazy(&mut self) -> Option<NativeLazyRestore> {
        self.lazy
            .take()
            .map(|inner| NativeLazyRestore { inner: Some(inner) })
    }
}

impl NativeRestoredManager {
    fn new(env: &Env, dir: &std::path::Path, mode: RestoreMode, restored: RestoredManager) -> Self {
        let RestoredManager {
            manager,
            windows,
            lazy,
            manifest,
            layers,
            bytes,
        } = restored;
        let info_json = to_json(&RestoreInfoView::new(
            dir,
            &manifest.id,
            layers,
            bytes,
            mode,
        ));
        Self::assemble(env, manager, windows, info_json, lazy, None)
    }

    /// What a migration's destination built (`GuestMemoryBuilder.migrateFrom`).
    pub(crate) fn migrated(env: &Env, migrated: MigratedManager) -> Self {
        let info_json = to_json(&MigratedInfoView::from(&migrated));
        let MigratedManager {
            manager,
            windows,
            payload,
            ..
        } = migrated;
        Self::assemble(env, manager, windows, info_json, None, payload)
    }

    fn assemble(
        env: &Env,
        manager: GuestMemoryManager,
        windows: Vec<RestoredWindow>,
        info_json: String,
        lazy: Option<LazyRestore>,
        payload: Option<Vec<u8>>,
    ) -> Self {
        let windows_json = list_json::<_, RestoredWindowView>(&windows);
        let windows = windows
            .into_iter()
            .flat_map(|window| {
                [
                    NativeDeviceWindowHalf::control_half(window.control),
                    NativeDeviceWindowHalf::region_half(window.region),
                ]
            })
            .collect();
        NativeRestoredManager {
            manager: Some(NativeGuestMemoryManager::wrap(env, manager)),
            windows,
            windows_json,
            info_json,
            lazy,
            payload,
        }
    }
}

/// Rebuilds a manager from the snapshot in `dir` with `options` (consumed).
#[napi(ts_return_type = "Promise<NativeRestoredManager>")]
pub fn restore_guest_memory<'env>(
    env: &'env Env,
    dir: String,
    options: &mut NativeRestoreOptions,
) -> napi::Result<Object<'env>> {
    let options = options.take()?;
    let mode = options.mode;
    let dir = PathBuf::from(dir);
    let restore = GuestMemoryBuilder::restore(&dir, options);
    promise(
        env,
        Polling::Pool,
        async move { restore.await.map_err(|error| error.to_js_error()) },
        move |env, restored| Ok(NativeRestoredManager::new(&env, &dir, mode, restored)),
    )
}

/// A lazy restore still filling RAM, or finished.
#[napi]
pub struct NativeLazyRestore {
    inner: Option<LazyRestore>,
}

impl NativeLazyRestore {
    fn restore(&self) -> napi::Result<&LazyRestore> {
        self.inner
            .as_ref()
            .ok_or_else(|| throw(JsError::closed("LazyRestore")))
    }
}

#[napi]
impl NativeLazyRestore {
    /// Resolves when every page is restored and userfaultfd is no longer involved (JSON of the
    /// statistics).
    #[napi(ts_return_type = "Promise<string>")]
    pub fn wait<'env>(&self, env: &'env Env) -> napi::Result<Object<'env>> {
        json_promise(env, Polling::Inline, self.restore()?.wait(), |stats| {
            to_json(&LazyStatsView::from(*stats))
        })
    }

    /// Whether the restore has ended.
    #[napi(getter)]
    pub fn finished(&self) -> napi::Result<bool> {
        Ok(self.restore()?.is_finished())
    }

    /// Faults served and pages filled so far (JSON).
    #[napi]
    pub fn stats(&self) -> napi::Result<String> {
        Ok(to_json(&LazyStatsView::from(self.restore()?.stats())))
    }

    /// Starts a deferred background fill.
    #[napi]
    pub fn start_background(&self) -> napi::Result<()> {
        self.restore()?.start_background();
        Ok(())
    }

    /// Drops this handle (a deferred fill then starts: the memory depends on it).
    #[napi]
    pub fn close(&mut self) {
        self.inner = None;
    }
}

/// The chain of the snapshot in `dir`, newest first (JSON); with `verify`, every page of every
/// layer is checked against its checksum first.
#[napi(ts_return_type = "Promise<string>")]
pub fn read_snapshot_chain<'env>(
    env: &'env Env,
    dir: String,
    verify: bool,
    on_progress: Option<Function<'env, FnArgs<(u64, u64)>, ()>>,
) -> napi::Result<Object<'env>> {
    if verify {
        let progress = on_progress.map(progress_callback).transpose()?;
        let verify = membacking::snapshot::verify_snapshot(dir, progress);
        return json_promise(env, Polling::Inline, verify, |verified| {
            to_json(&ChainView::new(&verified.chain, Some(verified.pages)))
        });
    }
    let read = membacking::snapshot::read_snapshot_chain(dir);
    json_promise(env, Polling::Inline, read, |chain| {
        to_json(&ChainView::new(chain, None))
    })
}

/// Whether lazy restores can run in this process, and why not (JSON).
#[napi]
pub fn snapshot_support() -> String {
    to_json(&SnapshotSupportView::new(
        membacking::snapshot::userfaultfd_available(),
    ))
}
