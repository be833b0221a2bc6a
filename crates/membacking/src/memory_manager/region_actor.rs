//! The region manager as an actor: the planner of [`crate::region_manager`]
//! driven by a task on the "memory_manager" thread.
//!
//! Per message the task begins a transaction, applies the message's change(s), checks that
//! every attached partition has the slots the plan takes (refusing it otherwise, with nothing
//! changed), runs the plan with a [`PlanExecution`] — `AddMapping`/`Invalidate` are RPCs to
//! the mapping manager,
//! `PopulateVa` is the partition mapper's VA request (awaited, outcome ignored), partition
//! operations call the partition (held weakly; a gone partition is skipped, including its VA
//! population) — and then commits. A failed attach rolls back and forgets the new partition
//! mapper; a fatal failure poisons the manager: that message and every later one fail with
//! `ManagerPoisoned`.
//!
//! When the task stops (explicit shutdown, or every handle gone), each attached partition that
//! is still alive gets one whole-window unmap per partition mapper.

use super::attach_claim::AttachClaim;
use super::batch::BatchChangeError;
use super::batch::BatchError;
use super::batch::WindowCopies;
use super::preview::add_slots;
use super::preview::preview_steps;
use super::preview::PreviewStep;
use crate::device_memory::DeviceWindow;
use crate::dirty::DirtyOp;
use crate::dirty::DirtyState;
use crate::dirty::DirtyTrackingError;
use crate::dirty::LiveTarget as DirtyTarget;
use crate::dirty::MigrationOp;
use crate::dirty::MigrationTracking;
use crate::dirty::NotTracked;
use crate::dirty::SnapshotStart;
use crate::error::ManagerGone;
use crate::mapping_manager::va_mapper::VaMapper;
use crate::mapping_manager::MappingManagerClient;
use crate::mapping_manager::MappingSnapshot;
use crate::mapping_manager::SharedObject;
use crate::ram_visibility::RamRegionSpec;
use crate::ram_visibility::RamRegions;
use crate::region_manager::check_slot_capacity;
use crate::region_manager::ApplyError;
use crate::region_manager::Change;
use crate::region_manager::ChangeOutcome;
use crate::region_manager::FatalError;
use crate::region_manager::FlatEntry;
use crate::region_manager::PartitionMapperError;
use crate::region_manager::PartitionMapperInfo;
use crate::region_manager::Plan;
use crate::region_manager::PlanExecution;
use crate::region_manager::PlanOp;
use crate::region_manager::RegionInspect;
use crate::region_manager::RegionManagerError;
use crate::region_manager::RegionManagerState;
use crate::region_manager::Transaction;
use futures::channel::mpsc;
use futures::channel::oneshot;
use futures::StreamExt;
use guestmem::DirtyBitmap;
use memory_range::MemoryRange;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Weak;
use virt::PartitionMemoryMap;

/// The inspect snapshot of a manager. Serializes with snake_case names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManagerSnapshot {
    /// The VTL0 alias offset, if configured.
    pub alias_offset: Option<u64>,
    /// Whether partition mappings are pinned.
    pub pin_mappings: bool,
    /// The regions, in list order.
    pub regions: Vec<RegionInspect>,
    /// The active mappings, in insertion order, with the mappers that hold them.
    pub mappings: Vec<MappingSnapshot>,
    /// The number of registered VA mappers.
    pub mapper_count: usize,
    /// The partition mappers, in registration order (extension).
    pub partitions: Vec<PartitionMapperInfo>,
    /// Prefetches that failed (extension): each failed piece with its partition, range and
    /// errno. Prefetch failures are not fatal, so this is where they show.
    pub prefetch_failures: PrefetchFailures,
}

/// A device-window operation, run on the manager thread under the window's lock.
#[derive(Debug)]
pub(crate) enum DeviceOp {
    Map {
        offset: u64,
        object: SharedObject,
        file_offset: u64,
        len: u64,
        writable: bool,
    },
    Unmap {
        offset: u64,
        len: u64,
    },
    MapToGuest {
        gpa: u64,
        writable: bool,
    },
    UnmapFromGuest,
}

/// What a dry run shows: the operations a change would carry out, in order, and the flat view
/// it would leave. Nothing is applied; applying the same change next produces exactly these
/// partition calls.
#[derive(Debug, Clone)]
pub struct PlanPreview {
    /// The operations, in execution order, with their reasons. Besides the partition calls it
    /// holds the mapping-manager bookkeeping (`AddMapping`, `Invalidate`) and the VA
    /// population before each map (`PopulateVa`).
    pub plan: Plan<SharedObject>,
    /// The flat view after the change.
    pub flat_view: Vec<FlatEntry<SharedObject>>,
    /// The plan's user-visible steps, with the slot ids each partition predicts.
    pub steps: Vec<PreviewStep>,
}

/// A change to preview.
pub(crate) enum PreviewChange {
    Change(Change<SharedObject>, String),
    DeviceMapToGuest {
        window: SharedWindow,
        gpa: u64,
        writable: bool,
    },
    DeviceUnmapFromGuest {
        window: SharedWindow,
    },
    /// A mapping added to or removed from a device window (`DeviceOp::Map` / `Unmap`).
    DeviceMapping {
        window: SharedWindow,
        op: DeviceOp,
    },
    /// Partition mappers registered in this order (an attach: the alias mapper first), for
    /// `partition`.
    Attach(Vec<PartitionMapperInfo>, Weak<dyn PartitionMemoryMap>),
}

/// One change of a batch, as the region manager runs it.
pub(crate) enum BatchItem {
    /// A region-manager change and the cause its reasons name (a RAM visibility change).
    Change(Change<SharedObject>, String),
    /// A device-window operation.
    Device { window: SharedWindow, op: DeviceOp },
}

/// Why a dry run failed: a region-manager error, or a device window's `io::Error`.
pub(crate) enum PreviewError {
    Region(RegionManagerError),
    Io(io::Error),
}

impl From<RegionManagerError> for PreviewError {
    fn from(error: RegionManagerError) -> Self {
        PreviewError::Region(error)
    }
}

/// A shared device window.
pub(crate) type SharedWindow = Arc<Mutex<DeviceWindow<SharedObject>>>;

type Reply<T, E = RegionManagerError> = oneshot::Sender<Result<T, E>>;

/// A message to the region manager.
pub(crate) enum RegionRequest {
    Change {
        change: Change<SharedObject>,
        cause: Option<String>,
        reply: Option<Reply<ChangeOutcome>>,
    },
    CreateRam {
        specs: Vec<RamRegionSpec>,
        object: Option<SharedObject>,
        prefetch: bool,
        local_mapper: Weak<VaMapper>,
        reply: Reply<RamRegions>,
    },
    AddPartition {
        info: PartitionMapperInfo,
        claim: Arc<AttachClaim>,
        mapper: Arc<VaMapper>,
        reply: Reply<usize>,
    },
    Device {
        window: SharedWindow,
        op: DeviceOp,
        reply: Option<oneshot::Sender<io::Result<()>>>,
    },
    Decommit {
        range: MemoryRange,
        reply: Reply<()>,
    },
    Inspect(Reply<ManagerSnapshot>),
    FlatView(Reply<Vec<FlatEntry<SharedObject>>>),
    Preview {
        change: PreviewChange,
        reply: oneshot::Sender<Result<PlanPreview, PreviewError>>,
    },
    Batch {
        items: Vec<BatchItem>,
        dry_run: bool,
        reply: oneshot::Sender<Result<PlanPreview, BatchError>>,
    },
    Dirty {
        op: DirtyOp,
        reply: oneshot::Sender<Result<Vec<MemoryRange>, DirtyTrackingError>>,
    },
    SnapshotBegin {
        base: Option<(u64, String)>,
        id: String,
        reply: oneshot::Sender<Result<SnapshotBegun, DirtyTrackingError>>,
    },
    SnapshotFinish {
        id: String,
        succeeded: bool,
    },
    AdoptSnapshot {
        id: String,
        reply: oneshot::Sender<Result<(), DirtyTrackingError>>,
    },
    Migration {
        op: MigrationOp,
        with_regions: bool,
        reply: oneshot::Sender<Result<MigrationStep, DirtyTrackingError>>,
    },
    Shutdown {
        stop_mapping_manager: bool,
    },
}

/// What a snapshot learns from the region manager when it starts: its place in the dirty
/// tracking chain (or why it cannot be incremental) and the regions, taken at the same instant.
#[derive(Debug)]
pub(crate) struct SnapshotBegun {
    pub start: Result<SnapshotStart, NotTracked>,
    pub regions: Vec<RegionInspect>,
}

/// What a live migration's tracking operation found, with the regions taken at the same
/// instant when they were asked for.
#[derive(Debug)]
pub(crate) struct MigrationStep {
    pub tracking: MigrationTracking,
    pub regions: Option<Vec<RegionInspect>>,
}

/// A handle to the region manager (cheap to clone).
#[derive(Clone)]
pub(crate) struct RegionManagerClient {
    sender: mpsc::UnboundedSender<RegionRequest>,
}

impl std::fmt::Debug for RegionManagerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionManagerClient")
            .finish_non_exhaustive()
    }
}

impl RegionManagerClient {
    fn send(&self, request: RegionRequest) -> bool {
        self.sender.unbounded_send(request).is_ok()
    }

    /// Whether the region manager has stopped (the manager was closed or dropped): every
    /// request fails with `ManagerGone` from now on.
    pub(crate) fn is_gone(&self) -> bool {
        self.sender.is_closed()
    }

    /// Whether `other` is a handle to the same region manager.
    pub(crate) fn same_manager(&self, other: &Self) -> bool {
        self.sender.same_receiver(&other.sender)
    }

    /// Sends the request `make` builds around a reply channel and waits for the reply; a
    /// manager that is gone (before or while answering) is `ManagerGone`.
    async fn call<T, E: From<RegionManagerError>>(
        &self,
        make: impl FnOnce(Reply<T, E>) -> RegionRequest,
    ) -> Result<T, E> {
        let (sender, receiver) = oneshot::channel();
        if !self.send(make(sender)) {
            return Err(RegionManagerError::ManagerGone.into());
        }
        receiver
            .await
            .unwrap_or_else(|_| Err(RegionManagerError::ManagerGone.into()))
    }

    /// Sends the request `make` builds at once and returns the wait for its reply: requests made
    /// this way are served in the order they were called, whenever their futures are first
    /// polled. A manager that is gone (before or while answering) is `ManagerGone`.
    fn call_now<T, E>(
        &self,
        make: impl FnOnce(Reply<T, E>) -> RegionRequest,
    ) -> impl Future<Output = Result<T, E>> + Send + 'static
    where
        T: Send + 'static,
        E: From<RegionManagerError> + Send + 'static,
    {
        let (sender, receiver) = oneshot::channel();
        let sent = self.send(make(sender));
        async move {
            if !sent {
                return Err(RegionManagerError::ManagerGone.into());
            }
            receiver
                .await
                .unwrap_or_else(|_| Err(RegionManagerError::ManagerGone.into()))
        }
    }

    /// Sends one change at once and returns the wait for it (served in call order, see
    /// [`Self::call_now`]).
    pub(crate) fn change(
        &self,
        change: Change<SharedObject>,
        cause: Option<String>,
    ) -> impl Future<Output = Result<ChangeOutcome, RegionManagerError>> + Send + 'static {
        self.call_now(move |reply| RegionRequest::Change {
            change,
            cause,
            reply: Some(reply),
        })
    }

    /// Requests a change without waiting (for drops).
    pub(crate) fn change_no_wait(&self, change: Change<SharedObject>) {
        self.send(RegionRequest::Change {
            change,
            cause: None,
            reply: None,
        });
    }

    pub(crate) async fn create_ram(
        &self,
        specs: Vec<RamRegionSpec>,
        object: Option<SharedObject>,
        prefetch: bool,
        local_mapper: Weak<VaMapper>,
    ) -> Result<RamRegions, RegionManagerError> {
        self.call(|reply| RegionRequest::CreateRam {
            specs,
            object,
            prefetch,
            local_mapper,
            reply,
        })
        .await
    }

    /// Registers a partition mapper for the partition `claim` holds; the mapper keeps the claim.
    pub(crate) async fn add_partition(
        &self,
        info: PartitionMapperInfo,
        claim: Arc<AttachClaim>,
        mapper: Arc<VaMapper>,
    ) -> Result<usize, RegionManagerError> {
        self.call(|reply| RegionRequest::AddPartition {
            info,
            claim,
            mapper,
            reply,
        })
        .await
    }

    /// Sends a device-window operation at once and returns the wait for its answer: operations
    /// are served in the order they were called, whenever their futures are first polled (a
    /// window's removal sent when its last half is dropped comes after them).
    pub(crate) fn device(
        &self,
        window: SharedWindow,
        op: DeviceOp,
    ) -> impl Future<Output = io::Result<()>> + Send + 'static {
        let (sender, receiver) = oneshot::channel();
        let sent = self.send(RegionRequest::Device {
            window,
            op,
            reply: Some(sender),
        });
        async move {
            if !sent {
                return Err(io::Error::other(RegionManagerError::ManagerGone));
            }
            receiver
                .await
                .unwrap_or_else(|_| Err(io::Error::other(RegionManagerError::ManagerGone)))
        }
    }

    /// Runs a device-window operation without waiting (for drops).
    pub(crate) fn device_no_wait(&self, window: SharedWindow, op: DeviceOp) {
        self.send(RegionRequest::Device {
            window,
            op,
            reply: None,
        });
    }

    /// Sends a decommit at once (served in call order, see [`Self::call_now`]).
    pub(crate) fn decommit(
        &self,
        range: MemoryRange,
    ) -> impl Future<Output = Result<(), RegionManagerError>> + Send + 'static {
        self.call_now(move |reply| RegionRequest::Decommit { range, reply })
    }

    /// Sends an inspect request at once (served in call order, see [`Self::call_now`]).
    pub(crate) fn inspect(
        &self,
    ) -> impl Future<Output = Result<ManagerSnapshot, RegionManagerError>> + Send + 'static {
        self.call_now(RegionRequest::Inspect)
    }

    /// Sends a flat-view request at once (served in call order, see [`Self::call_now`]).
    pub(crate) fn flat_view(
        &self,
    ) -> impl Future<Output = Result<Vec<FlatEntry<SharedObject>>, RegionManagerError>> + Send + 'static
    {
        self.call_now(RegionRequest::FlatView)
    }

    /// Plans `change` without applying it (sent at once, see [`Self::call_now`]).
    pub(crate) fn preview(
        &self,
        change: PreviewChange,
    ) -> impl Future<Output = Result<PlanPreview, PreviewError>> + Send + 'static {
        self.call_now(move |reply| RegionRequest::Preview { change, reply })
    }

    /// Applies (or, with `dry_run`, plans) a batch of changes (sent at once, see
    /// [`Self::call_now`]).
    pub(crate) fn batch(
        &self,
        items: Vec<BatchItem>,
        dry_run: bool,
    ) -> impl Future<Output = Result<PlanPreview, BatchError>> + Send + 'static {
        self.call_now(move |reply| RegionRequest::Batch {
            items,
            dry_run,
            reply,
        })
    }

    /// Sends a dirty-tracking operation at once (served in call order, see [`Self::call_now`]).
    pub(crate) fn dirty(
        &self,
        op: DirtyOp,
    ) -> impl Future<Output = Result<Vec<MemoryRange>, DirtyTrackingError>> + Send + 'static {
        self.call_now(move |reply| RegionRequest::Dirty { op, reply })
    }

    /// Starts snapshot `id` (see [`DirtyState::begin_snapshot`]).
    pub(crate) async fn snapshot_begin(
        &self,
        base: Option<(u64, String)>,
        id: String,
    ) -> Result<SnapshotBegun, DirtyTrackingError> {
        self.call(|reply| RegionRequest::SnapshotBegin { base, id, reply })
            .await
    }

    /// Ends snapshot `id` (without waiting).
    pub(crate) fn snapshot_finish(&self, id: String, succeeded: bool) {
        self.send(RegionRequest::SnapshotFinish { id, succeeded });
    }

    /// Starts tracking with restored snapshot `id` as the chain head.
    pub(crate) async fn adopt_snapshot(&self, id: String) -> Result<(), DirtyTrackingError> {
        self.call(|reply| RegionRequest::AdoptSnapshot { id, reply })
            .await
    }

    /// Runs a live migration's dirty-tracking operation (see [`MigrationOp`]); with
    /// `with_regions`, the regions are read in the same step.
    pub(crate) async fn migration(
        &self,
        op: MigrationOp,
        with_regions: bool,
    ) -> Result<MigrationStep, DirtyTrackingError> {
        self.call(|reply| RegionRequest::Migration {
            op,
            with_regions,
            reply,
        })
        .await
    }

    /// Ends a live migration's use of tracking without waiting (for drops).
    pub(crate) fn migration_end_no_wait(&self) {
        let (reply, _) = oneshot::channel();
        self.send(RegionRequest::Migration {
            op: MigrationOp::End,
            with_regions: false,
            reply,
        });
    }

    /// Stops the region manager after the messages queued before this one (and, if asked, the
    /// mapping manager after it).
    pub(crate) fn shutdown(&self, stop_mapping_manager: bool) {
        self.send(RegionRequest::Shutdown {
            stop_mapping_manager,
        });
    }
}

/// Told about each prefetched piece of a plan that prefetches (e.g. attaching a partition with
/// `prefetch_ram`), as soon as the piece is done: possibly from several threads at once (the
/// partition's prefetch threads), so keep it short.
pub type PrefetchProgress = Arc<dyn Fn(&PrefetchReport) + Send + Sync>;

/// One prefetch progress report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefetchReport {
    /// Bytes of the plan's prefetch ranges done so far (populated or failed).
    pub done: u64,
    /// Bytes the plan prefetches in all.
    pub total: u64,
    /// Set when the piece this report is about could not be prefetched (which is not fatal: the
    /// guest faults those pages in on first touch instead).
    pub failure: Option<PrefetchFailureRecord>,
}

/// A piece of guest RAM that could not be prefetched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PrefetchFailureRecord {
    /// The partition mapper's index (registration order).
    pub partition: usize,
    /// The guest physical range of the piece.
    #[serde(serialize_with = "crate::region_manager::serialize_range")]
    pub range: MemoryRange,
    /// The operating-system error number, when the partition's error carries one.
    pub errno: Option<i32>,
    /// The partition's error message.
    pub message: String,
}

/// How many prefetch failures the inspect snapshot keeps (the most recent ones).
pub(crate) const PREFETCH_FAILURES_KEPT: usize = 64;

/// The prefetch failures a manager has seen: the most recent ones and a total count.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PrefetchFailures {
    /// The most recent failures (at most 64), oldest first.
    pub recent: Vec<PrefetchFailureRecord>,
    /// Every failure seen since the manager was built.
    pub count: u64,
}

impl PrefetchFailures {
    fn push(&mut self, failures: impl IntoIterator<Item = PrefetchFailureRecord>) {
        for failure in failures {
            if self.recent.len() == PREFETCH_FAILURES_KEPT {
                self.recent.remove(0);
            }
            self.recent.push(failure);
            self.count += 1;
        }
    }
}

/// The fixed configuration of a region manager.
pub(crate) struct RegionActorConfig {
    pub va_window_len: u64,
    pub alias_offset: Option<u64>,
    pub pin_mappings: bool,
    pub private: bool,
    pub ram_object: Option<SharedObject>,
    pub prefetch_progress: Option<PrefetchProgress>,
    pub dirty_bitmap: Arc<DirtyBitmap>,
}

/// An attached partition mapper's runtime half.
struct PartitionEntry {
    partition: Weak<dyn PartitionMemoryMap>,
    mapper: Arc<VaMapper>,
    /// The partition's attach claim, released when its last mapper is dropped.
    _claim: Arc<AttachClaim>,
}

/// Creates a region manager: its client and the task to run on the manager thread.
pub(crate) fn new_region_manager(
    config: RegionActorConfig,
    mapping: MappingManagerClient,
) -> (RegionManagerClient, RegionActorTask) {
    let (sender, receiver) = mpsc::unbounded();
    (
        RegionManagerClient { sender },
        RegionActorTask {
            config,
            mapping,
            receiver,
        },
    )
}

/// The inputs of the region manager task (`Send`, so they can move to the manager thread).
pub(crate) struct RegionActorTask {
    config: RegionActorConfig,
    mapping: MappingManagerClient,
    receiver: mpsc::UnboundedReceiver<RegionRequest>,
}

impl RegionActorTask {
    /// Runs the region manager until it is shut down or every handle is gone.
    pub(crate) async fn run(self) {
        let RegionActorTask {
            config,
            mapping,
            mut receiver,
        } = self;
        let mut actor = RegionActor {
            state: RegionManagerState::new(config.va_window_len),
            partitions: Vec::new(),
            mapping,
            poisoned: None,
            ram: RamRegions::new(),
            ram_specs: Vec::new(),
            local_mapper: Weak::new(),
            dirty: DirtyState::new(config.dirty_bitmap.clone()),
            config,
            prefetch_failures: PrefetchFailures::default(),
        };
        let mut stop_mapping_manager = false;
        while let Some(request) = receiver.next().await {
            if let RegionRequest::Shutdown {
                stop_mapping_manager: stop,
            } = request
            {
                stop_mapping_manager = stop;
                break;
            }
            actor.handle(request).await;
        }
        // Later requests fail with ManagerGone.
        drop(receiver);
        actor.discard_partitions();
        if stop_mapping_manager {
            actor.mapping.shutdown();
        }
    }
}

struct RegionActor {
    state: RegionManagerState<SharedObject>,
    partitions: Vec<PartitionEntry>,
    mapping: MappingManagerClient,
    poisoned: Option<Arc<FatalError>>,
    ram: RamRegions,
    ram_specs: Vec<RamRegionSpec>,
    /// The manager's own mapper (for decommitting private RAM).
    local_mapper: Weak<VaMapper>,
    dirty: DirtyState,
    config: RegionActorConfig,
    /// Prefetch failures, for the inspect snapshot.
    prefetch_failures: PrefetchFailures,
}

impl RegionActor {
    fn poisoned_error(&self) -> Option<RegionManagerError> {
        self.poisoned
            .as_ref()
            .map(|cause| RegionManagerError::ManagerPoisoned {
                cause: cause.clone(),
            })
    }

    async fn handle(&mut self, request: RegionRequest) {
        if let Some(error) = self.poisoned_error() {
            reply_error(request, error);
            return;
        }
        match request {
            RegionRequest::Change {
                change,
                cause,
                reply,
            } => {
                let result = self
                    .transact(None, |txn| txn.apply_with_cause(change, cause.as_deref()))
                    .await;
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            RegionRequest::CreateRam {
                specs,
                object,
                prefetch,
                local_mapper,
                reply,
            } => {
                self.local_mapper = local_mapper;
                let result = self
                    .transact(None, |txn| {
                        RamRegions::create(txn, &specs, object.as_ref(), prefetch)
                    })
                    .await;
                if let Ok(ram) = &result {
                    self.ram = ram.clone();
                    self.dirty.set_ram(specs.iter().map(|spec| spec.range));
                    self.ram_specs = specs;
                }
                let _ = reply.send(result);
            }
            RegionRequest::AddPartition {
                info,
                claim,
                mapper,
                reply,
            } => {
                let partition = claim.partition().clone();
                if let Some(live) = partition.upgrade() {
                    let index = self.partitions.len();
                    if let Err(error) = self.dirty.start_partition(&live, index) {
                        let error = PartitionMapperError::Map(Box::new(error));
                        let _ = reply.send(Err(RegionManagerError::PartitionMapper(error)));
                        return;
                    }
                }
                let entry = PartitionEntry {
                    partition,
                    mapper,
                    _claim: claim,
                };
                let result = self
                    .transact(Some(entry), |txn| {
                        match txn.apply(Change::AddPartition(info))? {
                            ChangeOutcome::PartitionAdded(index) => Ok(index),
                            _ => Ok(txn.state().partitions().len() - 1),
                        }
                    })
                    .await;
                let _ = reply.send(result);
            }
            RegionRequest::Device { window, op, reply } => {
                let result = self.device(&window, op).await;
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            RegionRequest::Decommit { range, reply } => {
                let result = self.decommit(range);
                // Pages that now read as zeros changed: incremental snapshots must see it. A
                // decommit that failed after it started may have released some of its pieces:
                // its whole range counts.
                let started = matches!(
                    result,
                    Ok(()) | Err(RegionManagerError::DecommitFailed { .. })
                );
                if started && self.dirty.is_active() {
                    self.dirty.mark(range);
                }
                let _ = reply.send(result);
            }
            RegionRequest::Dirty { op, reply } => {
                let targets = self.live_targets();
                let _ = reply.send(self.dirty.run(op, &targets));
            }
            RegionRequest::SnapshotBegin { base, id, reply } => {
                let targets = self.live_targets();
                let base_ref = base.as_ref().map(|(session, id)| (*session, id.as_str()));
                let result = self
                    .dirty
                    .begin_snapshot(&targets, base_ref, &id)
                    .map(|start| SnapshotBegun {
                        start,
                        regions: self.state.inspect().regions,
                    });
                let _ = reply.send(result);
            }
            RegionRequest::SnapshotFinish { id, succeeded } => {
                self.dirty.finish_snapshot(&id, succeeded);
            }
            RegionRequest::AdoptSnapshot { id, reply } => {
                let targets = self.live_targets();
                let _ = reply.send(self.dirty.adopt_snapshot(&targets, &id));
            }
            RegionRequest::Migration {
                op,
                with_regions,
                reply,
            } => {
                let targets = self.live_targets();
                let result = self
                    .dirty
                    .migration(op, &targets)
                    .map(|tracking| MigrationStep {
                        tracking,
                        regions: with_regions.then(|| self.state.inspect().regions),
                    });
                let _ = reply.send(result);
            }
            RegionRequest::Inspect(reply) => {
                let result = self.inspect().await;
                let _ = reply.send(result);
            }
            RegionRequest::FlatView(reply) => {
                let _ = reply.send(Ok(self.state.flat_view()));
            }
            RegionRequest::Preview { change, reply } => {
                let _ = reply.send(self.preview(change));
            }
            RegionRequest::Batch {
                items,
                dry_run,
                reply,
            } => {
                let _ = reply.send(self.batch(items, dry_run).await);
            }
            RegionRequest::Shutdown { .. } => {}
        }
    }

    /// The attached partitions that are still alive, for dirty tracking.
    fn live_targets(&self) -> Vec<DirtyTarget> {
        self.partitions
            .iter()
            .enumerate()
            .filter_map(|(index, entry)| {
                Some(DirtyTarget {
                    partition: entry.partition.upgrade()?,
                    index,
                    va_base: entry.mapper.base() as u64,
                    va_len: entry.mapper.len(),
                })
            })
            .collect()
    }

    /// A dry run: applies `change` to a transaction (device changes to a copy of the window),
    /// takes the plan and the flat view, and rolls everything back.
    fn preview(&mut self, change: PreviewChange) -> Result<PlanPreview, PreviewError> {
        let private_ram = self.config.private.then_some(&self.ram);
        let mut txn = self.state.begin();
        let mut attaching = None;
        let result = match change {
            PreviewChange::Change(change, cause) => txn
                .apply_with_cause(change, Some(&cause))
                .map(drop)
                .map_err(PreviewError::Region),
            PreviewChange::DeviceMapToGuest {
                window,
                gpa,
                writable,
            } => {
                let mut copy = window.lock().clone();
                map_to_guest_checked(&mut copy, &mut txn, gpa, writable, private_ram)
                    .map_err(PreviewError::Io)
            }
            PreviewChange::DeviceUnmapFromGuest { window } => {
                let mut copy = window.lock().clone();
                copy.unmap_from_guest(&mut txn);
                Ok(())
            }
            PreviewChange::DeviceMapping { window, op } => {
                let mut copy = window.lock().clone();
                apply_device_op(&mut copy, &mut txn, op, private_ram).map_err(PreviewError::Io)
            }
            PreviewChange::Attach(infos, partition) => {
                attaching = Some(partition);
                infos.into_iter().try_for_each(|info| {
                    txn.apply(Change::AddPartition(info))
                        .map(drop)
                        .map_err(PreviewError::Region)
                })
            }
        };
        let flat_view = txn.state().flat_view();
        let plan = txn.take_plan();
        txn.rollback();
        result?;
        // A dry run is refused as applying the change would be.
        check_slots(&self.partitions, &plan)?;
        let mut steps = preview_steps(&plan);
        // Indexes past the registered mappers are the partition being attached.
        add_slots(&mut steps, |index| match self.partitions.get(index) {
            Some(entry) => entry.partition.upgrade(),
            None => attaching.as_ref().and_then(Weak::upgrade),
        });
        Ok(PlanPreview {
            plan,
            flat_view,
            steps,
        })
    }

    /// Begins a transaction, lets `plan` apply changes to it, carries out the plan, and
    /// commits, rolls back (failed attach) or poisons (fatal failure). `new_partition` is the
    /// runtime half of a partition mapper the plan registers.
    async fn transact<R>(
        &mut self,
        new_partition: Option<PartitionEntry>,
        plan: impl FnOnce(&mut Transaction<'_, SharedObject>) -> Result<R, RegionManagerError>,
    ) -> Result<R, RegionManagerError> {
        let va_window_len = self.state.va_window_len();
        let mut txn = self.state.begin();
        let result = plan(&mut txn);
        let planned = txn.take_plan();
        // Before any call, and before a partition being attached is registered: an attach
        // calls only the new partition, whose own shortage its failed map reports.
        if let Err(error) = check_slots(&self.partitions, &planned) {
            txn.rollback();
            return Err(error);
        }
        let pushed = new_partition.is_some() && result.is_ok();
        if pushed {
            self.partitions.extend(new_partition);
        }
        let outcome = execute(
            &planned,
            va_window_len,
            &self.partitions,
            &self.mapping,
            self.config.prefetch_progress.as_ref(),
            &mut self.prefetch_failures,
        )
        .await;
        match outcome {
            Ok(()) => {
                txn.commit();
                result
            }
            Err(ApplyError::Attach(error)) => {
                txn.rollback();
                if pushed {
                    self.partitions.pop();
                }
                Err(RegionManagerError::PartitionMapper(error))
            }
            Err(ApplyError::Fatal(error)) => {
                txn.commit();
                Err(self.poison(error))
            }
        }
    }

    /// A batch: every change applied in order to one transaction (device windows to copies of
    /// their records), rolled back at the first one that fails; then the netted plan, predicted
    /// slots and flat view, and (unless `dry_run`) the plan carried out, the transaction
    /// committed and the windows given their new records.
    async fn batch(
        &mut self,
        items: Vec<BatchItem>,
        dry_run: bool,
    ) -> Result<PlanPreview, BatchError> {
        let private_ram = self.config.private.then(|| self.ram.clone());
        let va_window_len = self.state.va_window_len();
        let mut txn = self.state.begin();
        let mut windows: WindowCopies<_, DeviceWindow<SharedObject>> = WindowCopies::new();
        for (index, item) in items.into_iter().enumerate() {
            let result = match item {
                BatchItem::Change(change, cause) => txn
                    .apply_with_cause(change, Some(&cause))
                    .map(drop)
                    .map_err(BatchChangeError::from),
                BatchItem::Device { window, op } => {
                    let copy = windows.copy_of(window, |window| window.lock().clone());
                    apply_device_op(copy, &mut txn, op, private_ram.as_ref())
                        .map_err(BatchChangeError::from)
                }
            };
            if let Err(source) = result {
                // Dropping the transaction rolls every change back; the copies go with it.
                return Err(BatchError::Change { index, source });
            }
        }
        let plan = txn.take_net_plan();
        // Nothing is called yet; dropping the transaction rolls the batch back.
        check_slots(&self.partitions, &plan)?;
        let flat_view = if dry_run {
            txn.state().flat_view()
        } else {
            Vec::new()
        };
        let mut steps = preview_steps(&plan);
        add_slots(&mut steps, |index| {
            self.partitions
                .get(index)
                .and_then(|entry| entry.partition.upgrade())
        });
        if dry_run {
            txn.rollback();
            return Ok(PlanPreview {
                plan,
                flat_view,
                steps,
            });
        }
        let outcome = execute(
            &plan,
            va_window_len,
            &self.partitions,
            &self.mapping,
            self.config.prefetch_progress.as_ref(),
            &mut self.prefetch_failures,
        )
        .await;
        // Committed also when the plan failed: the state describes what was intended (the
        // manager is poisoned then), as for a single change.
        txn.commit();
        for (window, record) in windows.into_copies() {
            *window.lock() = record;
        }
        match outcome {
            Ok(()) => Ok(PlanPreview {
                plan,
                flat_view,
                steps,
            }),
            // A batch attaches no partition, so only fatal failures are possible.
            Err(ApplyError::Attach(error)) => {
                Err(RegionManagerError::PartitionMapper(error).into())
            }
            Err(ApplyError::Fatal(error)) => Err(self.poison(error).into()),
        }
    }

    /// Poisons the manager with `error`; the error every request gets from now on.
    fn poison(&mut self, error: FatalError) -> RegionManagerError {
        tracing::error!(
            error = &error as &dyn std::error::Error,
            "memory manager poisoned"
        );
        let cause = Arc::new(error);
        self.poisoned = Some(cause.clone());
        RegionManagerError::ManagerPoisoned { cause }
    }

    /// A device-window operation on the window's record. A change refused before any call
    /// because a partition lacks slots (`NoFreeSlot`) is rolled back and leaves the window as
    /// it was: only a placement change (`MapToGuest`, `UnmapFromGuest`) can need slots (a
    /// mapping change reaches the partitions through the VA, with no partition call), and it
    /// changes only the placement of the record, which is put back.
    async fn device(&mut self, window: &SharedWindow, op: DeviceOp) -> io::Result<()> {
        let private_ram = self.config.private.then(|| self.ram.clone());
        let mut result = Ok(());
        let placement = window.lock().placement();
        let outcome = self
            .transact(None, |txn| {
                let mut window = window.lock();
                result = apply_device_op(&mut window, txn, op, private_ram.as_ref());
                Ok(())
            })
            .await;
        match outcome {
            Ok(()) => result,
            Err(error) => {
                if matches!(error, RegionManagerError::NoFreeSlot { .. }) {
                    window.lock().restore_placement(placement);
                }
                Err(io::Error::other(error))
            }
        }
    }

    /// `decommit_ram(range)`: the range must lie in RAM; private RAM is released in the VA
    /// window (reads back zeros), file-backed RAM gets a hole punched in the RAM object.
    fn decommit(&self, range: MemoryRange) -> Result<(), RegionManagerError> {
        let invalid =
            || RegionManagerError::InvalidRamRegion(crate::region_manager::InvalidRamRegion(range));
        if range.is_empty() {
            return Err(invalid());
        }
        // The pieces of RAM the range covers, with their object offsets; they must cover it all.
        let mut pieces = Vec::new();
        let mut cursor = range.start();
        let mut specs: Vec<&RamRegionSpec> = self.ram_specs.iter().collect();
        specs.sort_by_key(|spec| spec.range.start());
        for spec in specs {
            if spec.range.end() <= cursor || spec.range.start() >= range.end() {
                continue;
            }
            if spec.range.start() > cursor {
                return Err(invalid());
            }
            let end = spec.range.end().min(range.end());
            pieces.push((
                MemoryRange::new(cursor..end),
                spec.file_offset + (cursor - spec.range.start()),
            ));
            cursor = end;
            if cursor == range.end() {
                break;
            }
        }
        if cursor != range.end() {
            return Err(invalid());
        }
        let failed = |source| RegionManagerError::DecommitFailed { range, source };
        if self.config.private {
            let mapper = self
                .local_mapper
                .upgrade()
                .ok_or(RegionManagerError::ManagerGone)?;
            for (piece, _) in pieces {
                mapper.decommit(piece).map_err(failed)?;
            }
        } else if let Some(object) = &self.config.ram_object {
            for (piece, file_offset) in pieces {
                sparse_mmap::punch_hole(object.as_fd(), file_offset, piece.len())
                    .map_err(failed)?;
            }
        }
        Ok(())
    }

    async fn inspect(&mut self) -> Result<ManagerSnapshot, RegionManagerError> {
        let mappings = self
            .mapping
            .inspect()
            .await
            .map_err(|ManagerGone| RegionManagerError::ManagerGone)?;
        let regions = self.state.inspect();
        Ok(ManagerSnapshot {
            alias_offset: self.config.alias_offset,
            pin_mappings: self.config.pin_mappings,
            regions: regions.regions,
            mappings: mappings.mappings,
            mapper_count: mappings.mapper_count,
            partitions: regions.partitions,
            prefetch_failures: self.prefetch_failures.clone(),
        })
    }

    /// Stopping: each live partition gets one whole-window unmap per partition mapper.
    fn discard_partitions(&mut self) {
        let window_len = self.state.va_window_len();
        for (info, entry) in self.state.partitions().iter().zip(&self.partitions) {
            if let Some(partition) = entry.partition.upgrade() {
                if let Err(error) = contained(|| partition.unmap_range(info.offset, window_len)) {
                    tracing::warn!(
                        error = error.as_ref() as &dyn std::error::Error,
                        "unmapping a partition at shutdown failed"
                    );
                }
            }
        }
        self.partitions.clear();
    }
}

/// `map_to_guest`, refusing (after removing the current placement, like any failure of region
/// creation) a window that would overlap private RAM.
/// Carries out one device-window operation on `window` within `txn` (also for dry runs, on a
/// copy of the window).
fn apply_device_op(
    window: &mut DeviceWindow<SharedObject>,
    txn: &mut Transaction<'_, SharedObject>,
    op: DeviceOp,
    private_ram: Option<&RamRegions>,
) -> io::Result<()> {
    match op {
        DeviceOp::Map {
            offset,
            object,
            file_offset,
            len,
            writable,
        } => window.map(txn, offset, object, file_offset, len, writable),
        DeviceOp::Unmap { offset, len } => window.unmap(txn, offset, len),
        DeviceOp::MapToGuest { gpa, writable } => {
            map_to_guest_checked(window, txn, gpa, writable, private_ram)
        }
        DeviceOp::UnmapFromGuest => {
            window.unmap_from_guest(txn);
            Ok(())
        }
    }
}

fn map_to_guest_checked(
    window: &mut DeviceWindow<SharedObject>,
    txn: &mut Transaction<'_, SharedObject>,
    gpa: u64,
    writable: bool,
    private_ram: Option<&RamRegions>,
) -> io::Result<()> {
    let range = gpa
        .checked_add(window.len())
        .and_then(|end| MemoryRange::try_new(gpa..end).ok());
    match (range, private_ram) {
        (Some(range), Some(ram)) if ram.overlaps(range) => {
            window.unmap_from_guest(txn);
            Err(io::Error::other(
                RegionManagerError::RegionOverlapsPrivateRam {
                    name: window.name().to_owned(),
                    range,
                },
            ))
        }
        _ => window.map_to_guest(txn, gpa, writable),
    }
}

/// Refuses `plan` with `NoFreeSlot` when one of `partitions` (the attached ones) lacks the
/// slots it takes (see [`check_slot_capacity`]).
fn check_slots(
    partitions: &[PartitionEntry],
    plan: &Plan<SharedObject>,
) -> Result<(), RegionManagerError> {
    check_slot_capacity(plan, |index| {
        partitions
            .get(index)
            .and_then(|entry| entry.partition.upgrade())
    })
}

/// Replies `error` to whatever `request` expects.
fn reply_error(request: RegionRequest, error: RegionManagerError) {
    match request {
        RegionRequest::Change { reply, .. } => {
            if let Some(reply) = reply {
                let _ = reply.send(Err(error));
            }
        }
        RegionRequest::CreateRam { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        RegionRequest::AddPartition { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        RegionRequest::Device { reply, .. } => {
            if let Some(reply) = reply {
                let _ = reply.send(Err(io::Error::other(error)));
            }
        }
        RegionRequest::Decommit { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        RegionRequest::Inspect(reply) => {
            let _ = reply.send(Err(error));
        }
        RegionRequest::FlatView(reply) => {
            let _ = reply.send(Err(error));
        }
        RegionRequest::Preview { reply, .. } => {
            let _ = reply.send(Err(PreviewError::Region(error)));
        }
        RegionRequest::Batch { reply, .. } => {
            let _ = reply.send(Err(error.into()));
        }
        RegionRequest::Dirty { reply, .. } => {
            let _ = reply.send(Err(DirtyTrackingError::Manager(error)));
        }
        RegionRequest::SnapshotBegin { reply, .. } => {
            let _ = reply.send(Err(DirtyTrackingError::Manager(error)));
        }
        RegionRequest::AdoptSnapshot { reply, .. } => {
            let _ = reply.send(Err(DirtyTrackingError::Manager(error)));
        }
        RegionRequest::Migration { reply, .. } => {
            let _ = reply.send(Err(DirtyTrackingError::Manager(error)));
        }
        RegionRequest::SnapshotFinish { .. } => {}
        RegionRequest::Shutdown { .. } => {}
    }
}

/// Carries out `plan` with the failure rules of [`PlanExecution`]; every prefetched piece that
/// failed is recorded in `prefetch_failures`.
async fn execute(
    plan: &Plan<SharedObject>,
    va_window_len: u64,
    partitions: &[PartitionEntry],
    mapping: &MappingManagerClient,
    progress: Option<&PrefetchProgress>,
    prefetch_failures: &mut PrefetchFailures,
) -> Result<(), ApplyError> {
    let prefetch_total: u64 = plan
        .op_list()
        .map(|op| match *op {
            PlanOp::Prefetch { size, .. } => size,
            _ => 0,
        })
        .sum();
    let tracker = PrefetchTracker {
        done: Mutex::new(0),
        total: prefetch_total,
        progress,
        failures: Mutex::new(Vec::new()),
    };
    let mut execution = PlanExecution::new(plan, va_window_len);
    // Operations started before their turn (by plan index): a run of invalidations is one
    // request to the mapping manager, and a run of VA populations is requested at once, so each
    // run costs one round trip to the mappers instead of one per operation. Each still takes
    // its turn in the execution, which decides what its outcome means.
    let mut ahead: HashMap<usize, Ahead<'_>> = HashMap::new();
    while let Some(planned) = execution.next_op() {
        let op = planned.op.clone();
        let early = execution
            .current_index()
            .and_then(|index| ahead.remove(&index));
        let result = match (early, &op) {
            (Some(Ahead::Done(result)), _) => result.map_err(Into::into),
            (Some(Ahead::Started(future)), _) => future.await,
            (None, PlanOp::Invalidate { range }) => {
                let mut ranges = vec![*range];
                let run: Vec<usize> = execution
                    .upcoming()
                    .map_while(|(index, next)| match next.op {
                        PlanOp::Invalidate { range } => {
                            ranges.push(range);
                            Some(index)
                        }
                        _ => None,
                    })
                    .collect();
                let result = mapping
                    .remove_mappings_many(ranges)
                    .await
                    .map_err(|error| error.to_string());
                for index in run {
                    ahead.insert(index, Ahead::Done(result.clone()));
                }
                result.map_err(Into::into)
            }
            (None, PlanOp::PopulateVa { .. }) => {
                for (index, next) in execution.upcoming() {
                    let PlanOp::PopulateVa { partition, range } = next.op else {
                        break;
                    };
                    ahead.insert(
                        index,
                        Ahead::Started(Box::pin(populate(partitions, partition, range))),
                    );
                }
                perform(&op, partitions, mapping, &tracker).await
            }
            (None, _) => perform(&op, partitions, mapping, &tracker).await,
        };
        execution.report(result);
    }
    prefetch_failures.push(tracker.failures.into_inner());
    execution.finish()
}

/// An operation of a plan started before its turn (see [`execute`]).
enum Ahead<'a> {
    /// Carried out with an earlier one: its outcome.
    Done(Result<(), String>),
    /// Requested; awaiting it gives its outcome.
    Started(Pin<Box<dyn Future<Output = Result<(), virt::Error>> + Send + 'a>>),
}

/// `PopulateVa`: requests `range` from the partition's VA mapper (a gone partition has nothing
/// to populate). The request is made at once; the future waits for it.
fn populate(
    partitions: &[PartitionEntry],
    index: usize,
    range: MemoryRange,
) -> impl Future<Output = Result<(), virt::Error>> + Send + 'static {
    let request = match partitions.get(index) {
        None => Err(format!(
            "plan names partition {index}, which is not attached"
        )),
        Some(entry) if entry.partition.strong_count() == 0 => Ok(None),
        Some(entry) => Ok(Some(entry.mapper.request(range, false))),
    };
    async move {
        match request? {
            Some(request) => request
                .await
                .map_err(|error| format!("populating {range} failed: {error:?}").into()),
            None => Ok(()),
        }
    }
}

/// Counts a plan's prefetched bytes across the partition's prefetch threads and tells the
/// observer about each piece (one report at a time, so `done` grows from report to report).
struct PrefetchTracker<'a> {
    done: Mutex<u64>,
    total: u64,
    progress: Option<&'a PrefetchProgress>,
    failures: Mutex<Vec<PrefetchFailureRecord>>,
}

impl PrefetchTracker<'_> {
    /// Records one piece of a prefetch into partition mapper `partition`.
    fn piece(&self, partition: usize, chunk: &virt::PrefetchChunk) {
        let failure = chunk.failure.as_ref().map(|failure| PrefetchFailureRecord {
            partition,
            range: MemoryRange::new(chunk.gpa..chunk.gpa.saturating_add(chunk.size)),
            errno: failure.errno,
            message: failure.message.clone(),
        });
        if let Some(failure) = &failure {
            tracing::warn!(
                partition,
                range = %failure.range,
                errno = failure.errno,
                "prefetch failed; the guest faults these pages in on first touch"
            );
            self.failures.lock().push(failure.clone());
        }
        let mut done = self.done.lock();
        *done = done.saturating_add(chunk.size).min(self.total);
        if let Some(progress) = self.progress {
            let report = PrefetchReport {
                done: *done,
                total: self.total,
                failure,
            };
            // A panicking observer must not take the manager (or a prefetch thread) down.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| progress(&report)));
        }
    }
}

/// A partition that is still alive, with its partition mapper's runtime half.
type LiveTarget<'a> = Option<(Arc<dyn PartitionMemoryMap>, &'a PartitionEntry)>;

/// Performs one operation of a plan.
async fn perform(
    op: &PlanOp<SharedObject>,
    partitions: &[PartitionEntry],
    mapping: &MappingManagerClient,
    tracker: &PrefetchTracker<'_>,
) -> Result<(), virt::Error> {
    let partition = |index: usize| -> Result<LiveTarget<'_>, virt::Error> {
        let entry = partitions
            .get(index)
            .ok_or_else(|| format!("plan names partition {index}, which is not attached"))?;
        Ok(entry
            .partition
            .upgrade()
            .map(|partition| (partition, entry)))
    };
    match *op {
        PlanOp::AddMapping(ref active) => mapping.add_mapping(active.clone()).await,
        PlanOp::Invalidate { range } => mapping.remove_mappings(range).await,
        PlanOp::PopulateVa {
            partition: index,
            range,
        } => populate(partitions, index, range).await,
        PlanOp::Map {
            partition: index,
            va_offset,
            gpa,
            size,
            writable,
            exec,
        } => {
            let Some((target, entry)) = partition(index)? else {
                return Ok(());
            };
            let in_window = va_offset
                .checked_add(size)
                .is_some_and(|end| end <= entry.mapper.len());
            if !in_window {
                return Err(format!("{va_offset:#x}+{size:#x} is outside the VA window").into());
            }
            // Inside the window (checked above), which is address space of this process.
            let (Ok(host_offset), Ok(host_size)) =
                (usize::try_from(va_offset), usize::try_from(size))
            else {
                return Err(format!("{va_offset:#x}+{size:#x} is outside the VA window").into());
            };
            let va = entry.mapper.base().wrapping_add(host_offset);
            contained(|| target.map_range(va, host_size, gpa, writable, exec))
        }
        PlanOp::Prefetch {
            partition: index,
            gpa,
            size,
        } => match partition(index)? {
            Some((target, _)) => {
                let reported = AtomicU64::new(0);
                let result = contained(|| {
                    target.prefetch_range_with_progress(gpa, size, &|chunk| {
                        reported.fetch_add(chunk.size, Ordering::Relaxed);
                        tracker.piece(index, chunk);
                    })
                });
                // What the partition did not report (it panicked, or reported less than asked)
                // is reported here, with the call's failure.
                let reported = reported.into_inner().min(size);
                if reported < size {
                    tracker.piece(
                        index,
                        &virt::PrefetchChunk {
                            gpa: gpa + reported,
                            size: size - reported,
                            failure: result
                                .as_ref()
                                .err()
                                .map(|error| virt::PrefetchFailure::from_error(error.as_ref())),
                        },
                    );
                }
                result
            }
            None => {
                // The partition is gone: nothing to prefetch, the bytes still count as done.
                tracker.piece(
                    index,
                    &virt::PrefetchChunk {
                        gpa,
                        size,
                        failure: None,
                    },
                );
                Ok(())
            }
        },
        PlanOp::Pin {
            partition: index,
            gpa,
            size,
        } => match partition(index)? {
            Some((target, _)) => contained(|| target.pin_range(gpa, size)),
            None => Ok(()),
        },
        PlanOp::Unmap {
            partition: index,
            gpa,
            size,
        } => match partition(index)? {
            Some((target, _)) => contained(|| target.unmap_range(gpa, size)),
            None => Ok(()),
        },
    }
}

/// Runs a partition call, turning a panic into an error (so a faulty partition fails the
/// operation, or poisons the manager, instead of killing the manager thread).
fn contained(call: impl FnOnce() -> Result<(), virt::Error>) -> Result<(), virt::Error> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(call))
        .unwrap_or_else(|_| Err("the partition panicked".into()))
}
