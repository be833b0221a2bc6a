//! The mapping manager: the active mapping set, the registry of VA mappers, and the
//! requests that keep the mappers' windows consistent with the set.
//!
//! It runs as a task on the "memory_manager" thread and handles its messages one at a time, to
//! completion, in arrival order. It never pushes mappings to mappers on its own: a mapper asks
//! for a range (`SendMappings`) and receives `Map`/`NoMapping` answers; the manager remembers
//! which mappers received each mapping and, when mappings are removed, sends `Unmap` only to
//! those and replies only after all of them acknowledged (invariant I6).
//!
//! Submodules: [`va_mapper`] (the per-process window, its thread and waiters), `va_state`
//! (the window's bookkeeping and page locks), `mapper_cache` (one mapper per process and
//! manager) and `backing` (the `GuestMemoryAccess` implementation over a mapper).

pub(crate) mod backing;
pub(crate) mod mapper_cache;
pub mod va_mapper;
pub(crate) mod va_state;

use crate::error::ManagerGone;
use crate::region_manager::ActiveMapping;
use futures::channel::mpsc;
use futures::channel::oneshot;
use futures::StreamExt;
use memory_range::MemoryRange;
use serde::Serialize;
use sparse_mmap::Mappable;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use va_mapper::merge_adjacent_maps;
use va_mapper::MapperMessage;
use va_mapper::MapperShared;
use va_mapper::MappingParams;

/// A shareable memory object as the managers hold it: an OS handle shared (not duplicated)
/// between regions, mappings and DMA consumers.
pub type SharedObject = Arc<Mappable>;

/// A VA mapper's id in its mapping manager: a small integer, the lowest free slot (0-based).
#[derive(Debug, Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct MapperId(pub u32);

impl fmt::Display for MapperId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One mapping of the active mapping set as the inspect snapshot shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MappingSnapshot {
    /// The GPA range.
    #[serde(serialize_with = "crate::region_manager::serialize_range")]
    pub range: MemoryRange,
    /// The offset into the mapped object.
    pub file_offset: u64,
    /// Effective writability (mapping AND region).
    pub writable: bool,
    /// Whether DMA-sharing consumers see it.
    pub dma_target: bool,
    /// The mappers that received it (and have not been invalidated since), in the order they
    /// asked.
    pub active_mappers: Vec<MapperId>,
}

/// The mapping manager's part of the inspect snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MappingManagerInspect {
    /// The active mappings, in insertion order.
    pub mappings: Vec<MappingSnapshot>,
    /// The number of registered VA mappers.
    pub mapper_count: usize,
}

/// A message to the mapping manager.
pub(crate) enum MappingRequest {
    AddMapper(Arc<MapperShared>, oneshot::Sender<MapperId>),
    RemoveMapper(MapperId),
    SendMappings(MapperId, MemoryRange),
    AddMapping(
        ActiveMapping<SharedObject>,
        oneshot::Sender<Result<(), String>>,
    ),
    /// Removes the mappings inside each range, in order (see `MappingManager::remove_mappings`).
    RemoveMappings(Vec<MemoryRange>, oneshot::Sender<Result<(), String>>),
    GetDmaTargetMappings(oneshot::Sender<Vec<ActiveMapping<SharedObject>>>),
    Inspect(oneshot::Sender<MappingManagerInspect>),
    Shutdown,
}

/// A handle to the mapping manager (cheap to clone).
#[derive(Clone)]
pub(crate) struct MappingManagerClient {
    sender: mpsc::UnboundedSender<MappingRequest>,
    /// The manager's random id, the key of the per-process mapper cache.
    id: u128,
}

impl fmt::Debug for MappingManagerClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappingManagerClient")
            .field("id", &format_args!("{:032x}", self.id))
            .finish()
    }
}

impl MappingManagerClient {
    /// The manager's id.
    pub(crate) fn id(&self) -> u128 {
        self.id
    }

    fn send(&self, request: MappingRequest) -> bool {
        self.sender.unbounded_send(request).is_ok()
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> MappingRequest,
    ) -> Result<T, ManagerGone> {
        let (sender, receiver) = oneshot::channel();
        if !self.send(make(sender)) {
            return Err(ManagerGone);
        }
        receiver.await.map_err(|_| ManagerGone)
    }

    pub(crate) async fn add_mapper(
        &self,
        mapper: Arc<MapperShared>,
    ) -> Result<MapperId, ManagerGone> {
        self.call(|reply| MappingRequest::AddMapper(mapper, reply))
            .await
    }

    pub(crate) fn remove_mapper(&self, id: MapperId) {
        self.send(MappingRequest::RemoveMapper(id));
    }

    /// Asks for the mappings of `range` to be sent to mapper `id`; false if the manager is
    /// gone.
    pub(crate) fn send_mappings(&self, id: MapperId, range: MemoryRange) -> bool {
        self.send(MappingRequest::SendMappings(id, range))
    }

    pub(crate) async fn add_mapping(
        &self,
        mapping: ActiveMapping<SharedObject>,
    ) -> Result<(), virt::Error> {
        self.call(|reply| MappingRequest::AddMapping(mapping, reply))
            .await?
            .map_err(Into::into)
    }

    pub(crate) async fn remove_mappings(&self, range: MemoryRange) -> Result<(), virt::Error> {
        self.remove_mappings_many(vec![range]).await
    }

    /// [`MappingManagerClient::remove_mappings`] for several ranges, in order, with one round
    /// trip to the mappers for all of them.
    pub(crate) async fn remove_mappings_many(
        &self,
        ranges: Vec<MemoryRange>,
    ) -> Result<(), virt::Error> {
        self.call(|reply| MappingRequest::RemoveMappings(ranges, reply))
            .await?
            .map_err(Into::into)
    }

    pub(crate) async fn dma_target_mappings(
        &self,
    ) -> Result<Vec<ActiveMapping<SharedObject>>, ManagerGone> {
        self.call(MappingRequest::GetDmaTargetMappings).await
    }

    pub(crate) async fn inspect(&self) -> Result<MappingManagerInspect, ManagerGone> {
        self.call(MappingRequest::Inspect).await
    }

    pub(crate) fn shutdown(&self) {
        self.send(MappingRequest::Shutdown);
    }
}

/// A registered mapper; dropping the link (mapper removed, or the manager stopped) tells the
/// mapper that the manager is gone.
struct MapperLink(Arc<MapperShared>, bool);

impl MapperLink {
    /// Tells the mapper that the manager is gone; the receiver resolves once its window is
    /// released.
    fn close(mut self) -> oneshot::Receiver<()> {
        let (sender, receiver) = oneshot::channel();
        self.0.push(MapperMessage::Close(Some(sender)));
        self.1 = true;
        receiver
    }
}

impl Drop for MapperLink {
    fn drop(&mut self) {
        if !self.1 {
            self.0.push(MapperMessage::Close(None));
        }
    }
}

struct Entry {
    mapping: ActiveMapping<SharedObject>,
    active_mappers: Vec<MapperId>,
}

/// The mapping manager's state.
struct MappingManager {
    /// Insertion sequence → mapping.
    by_seq: BTreeMap<u64, Entry>,
    /// Start → insertion sequence; mappings are disjoint.
    by_start: BTreeMap<u64, u64>,
    next_seq: u64,
    mappers: Vec<Option<MapperLink>>,
}

/// Creates a mapping manager: its client, and the inputs of its task (run it on the manager
/// thread with [`MappingManagerTask::run`]).
pub(crate) fn new_mapping_manager() -> (MappingManagerClient, MappingManagerTask) {
    let (sender, receiver) = mpsc::unbounded();
    let client = MappingManagerClient {
        sender,
        id: random_id(),
    };
    (client, MappingManagerTask { receiver })
}

/// The inputs of the mapping manager task (`Send`, so they can move to the manager thread).
pub(crate) struct MappingManagerTask {
    receiver: mpsc::UnboundedReceiver<MappingRequest>,
}

impl MappingManagerTask {
    /// Runs the mapping manager until it is shut down or every handle is gone.
    pub(crate) async fn run(self) {
        let manager = MappingManager {
            by_seq: BTreeMap::new(),
            by_start: BTreeMap::new(),
            next_seq: 0,
            mappers: Vec::new(),
        };
        manager.run(self.receiver).await;
    }
}

/// A random 128-bit id (the standard library's per-process random hash keys, mixed with the
/// time and a counter).
fn random_id() -> u128 {
    use std::hash::BuildHasher;
    use std::hash::Hasher;
    use std::sync::atomic::AtomicU64;
    use std::sync::atomic::Ordering;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    let half = |salt: u64| {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(salt);
        hasher.write_u64(count);
        hasher.write_u128(nanos);
        hasher.write_u32(std::process::id());
        hasher.finish()
    };
    (u128::from(half(1)) << 64) | u128::from(half(2))
}

/// Appends `items` to mapper `id`'s list in `groups` (one list per mapper, in the order the
/// mappers first appear).
fn add_to_group<T>(
    groups: &mut Vec<(MapperId, Vec<T>)>,
    id: MapperId,
    items: impl IntoIterator<Item = T>,
) {
    match groups.iter_mut().find(|(known, _)| *known == id) {
        Some((_, list)) => list.extend(items),
        None => groups.push((id, items.into_iter().collect())),
    }
}

impl MappingManager {
    async fn run(mut self, mut receiver: mpsc::UnboundedReceiver<MappingRequest>) {
        // A request taken from the channel while gathering a run of `SendMappings`.
        let mut held = None;
        loop {
            let request = match held.take() {
                Some(request) => request,
                None => match receiver.next().await {
                    Some(request) => request,
                    None => break,
                },
            };
            match request {
                MappingRequest::AddMapper(mapper, reply) => {
                    let id = self.add_mapper(mapper);
                    if reply.send(id).is_err() {
                        // The requester gave up; forget the mapper again.
                        self.remove_mapper(id);
                    }
                }
                MappingRequest::RemoveMapper(id) => self.remove_mapper(id),
                MappingRequest::SendMappings(id, range) => {
                    // The requests already queued behind it are answered with it: each mapper
                    // then gets its answers in one delivery, adjacent views merged.
                    let mut requests = vec![(id, range)];
                    while let Ok(next) = receiver.try_recv() {
                        match next {
                            MappingRequest::SendMappings(id, range) => requests.push((id, range)),
                            other => {
                                held = Some(other);
                                break;
                            }
                        }
                    }
                    self.send_mappings(&requests);
                }
                MappingRequest::AddMapping(mapping, reply) => {
                    let _ = reply.send(self.add_mapping(mapping));
                }
                MappingRequest::RemoveMappings(ranges, reply) => {
                    let result = self.remove_mappings(&ranges).await;
                    let _ = reply.send(result);
                }
                MappingRequest::GetDmaTargetMappings(reply) => {
                    let mappings = self
                        .by_seq
                        .values()
                        .filter(|entry| entry.mapping.dma_target)
                        .map(|entry| entry.mapping.clone())
                        .collect();
                    let _ = reply.send(mappings);
                }
                MappingRequest::Inspect(reply) => {
                    let _ = reply.send(self.inspect());
                }
                MappingRequest::Shutdown => {
                    // An explicit shutdown waits until every mapper released its window.
                    let closing: Vec<_> = self
                        .mappers
                        .drain(..)
                        .flatten()
                        .map(MapperLink::close)
                        .collect();
                    futures::future::join_all(closing).await;
                    break;
                }
            }
        }
        // Dropping the links tells every mapper that the manager is gone.
    }

    fn add_mapper(&mut self, mapper: Arc<MapperShared>) -> MapperId {
        let link = Some(MapperLink(mapper, false));
        let slot = match self.mappers.iter().position(Option::is_none) {
            Some(slot) => {
                self.mappers[slot] = link;
                slot
            }
            None => {
                self.mappers.push(link);
                self.mappers.len() - 1
            }
        };
        // Each mapper holds a VA reservation of its own: a process runs out of address space
        // long before it could hold 2^32 of them.
        MapperId(u32::try_from(slot).expect("fewer than 2^32 VA mappers"))
    }

    fn remove_mapper(&mut self, id: MapperId) {
        if let Some(slot) = self.mappers.get_mut(id.0 as usize) {
            *slot = None;
        }
        for entry in self.by_seq.values_mut() {
            entry.active_mappers.retain(|&mapper| mapper != id);
        }
    }

    fn mapper(&self, id: MapperId) -> Option<&MapperShared> {
        self.mappers
            .get(id.0 as usize)
            .and_then(Option::as_ref)
            .map(|link| link.0.as_ref())
    }

    /// The mapping containing `address`, or else the first one starting in `address..limit`.
    fn mapping_at_or_after(&self, address: u64, limit: u64) -> Option<u64> {
        if let Some((_, &seq)) = self.by_start.range(..=address).next_back() {
            if self.by_seq[&seq].mapping.range.end() > address {
                return Some(seq);
            }
        }
        self.by_start
            .range(address..limit)
            .next()
            .map(|(_, &seq)| seq)
    }

    /// `SendMappings(id, range)` for each request: answers covering all of each range,
    /// ascending, delivered to each mapper at once.
    fn send_mappings(&mut self, requests: &[(MapperId, MemoryRange)]) {
        let mut per_mapper: Vec<(MapperId, Vec<MapperMessage>)> = Vec::new();
        for &(id, range) in requests {
            if self.mapper(id).is_none() {
                continue;
            }
            let messages = self.answers(id, range);
            add_to_group(&mut per_mapper, id, messages);
        }
        for (id, messages) in per_mapper {
            if let Some(mapper) = self.mapper(id) {
                mapper.deliver(merge_adjacent_maps(messages));
            }
        }
    }

    /// The answers covering all of `range` for mapper `id`, ascending; marks the mapper active
    /// in every mapping it receives.
    fn answers(&mut self, id: MapperId, range: MemoryRange) -> Vec<MapperMessage> {
        let mut messages = Vec::new();
        let mut cursor = range.start();
        while cursor < range.end() {
            match self.mapping_at_or_after(cursor, range.end()) {
                Some(seq) => {
                    let entry = self.by_seq.get_mut(&seq).expect("indexed mapping exists");
                    let mapping_range = entry.mapping.range;
                    if mapping_range.start() <= cursor {
                        if !entry.active_mappers.contains(&id) {
                            entry.active_mappers.push(id);
                        }
                        messages.push(MapperMessage::Map(MappingParams {
                            range: mapping_range,
                            object: entry.mapping.object.clone(),
                            file_offset: entry.mapping.file_offset,
                            writable: entry.mapping.writable,
                        }));
                        cursor = mapping_range.end().min(range.end());
                    } else {
                        messages.push(MapperMessage::NoMapping(MemoryRange::new(
                            cursor..mapping_range.start(),
                        )));
                        cursor = mapping_range.start();
                    }
                }
                None => {
                    messages.push(MapperMessage::NoMapping(MemoryRange::new(
                        cursor..range.end(),
                    )));
                    cursor = range.end();
                }
            }
        }
        messages
    }

    /// `AddMapping`. Mappings are disjoint by construction; an overlap is an
    /// internal error (the region manager poisons itself).
    fn add_mapping(&mut self, mapping: ActiveMapping<SharedObject>) -> Result<(), String> {
        let range = mapping.range;
        if range.is_empty() {
            return Err(format!("empty mapping {range}"));
        }
        if let Some(seq) = self.mapping_at_or_after(range.start(), range.end()) {
            return Err(format!(
                "mapping {range} overlaps the active mapping {}",
                self.by_seq[&seq].mapping.range
            ));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_start.insert(range.start(), seq);
        self.by_seq.insert(
            seq,
            Entry {
                mapping,
                active_mappers: Vec::new(),
            },
        );
        Ok(())
    }

    /// `RemoveMappings(ranges)`: for each range in order, drops the mappings inside it and
    /// invalidates the whole range in every mapper that received one of them; returns once all
    /// of them acknowledged every invalidation (a mapper that went away is skipped). Each mapper
    /// gets one message with all of its ranges, so a run of invalidations costs one wake-up and
    /// one acknowledgement per mapper, not per range. A range that would split a mapping fails
    /// the request; the ranges before it are removed all the same.
    async fn remove_mappings(&mut self, ranges: &[MemoryRange]) -> Result<(), String> {
        let mut per_mapper: Vec<(MapperId, Vec<MemoryRange>)> = Vec::new();
        let mut failure = None;
        for &range in ranges {
            match self.take_mappings(range) {
                Ok(mappers) => {
                    for id in mappers {
                        add_to_group(&mut per_mapper, id, [range]);
                    }
                }
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        let acks: Vec<_> = per_mapper
            .into_iter()
            .filter_map(|(id, list)| {
                let mapper = self.mapper(id)?;
                let (sender, receiver) = oneshot::channel();
                mapper.deliver([MapperMessage::Unmap(list, sender)]);
                Some(async move { (id, receiver.await) })
            })
            .collect();
        for (id, result) in futures::future::join_all(acks).await {
            match result {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(format!("mapper {id} failed to unmap {error}")),
                Err(_) => tracing::debug!(%id, "mapper went away before acknowledging"),
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Drops the mappings inside `range`; the mappers that received one of them.
    fn take_mappings(&mut self, range: MemoryRange) -> Result<Vec<MapperId>, String> {
        let mut inside = Vec::new();
        let mut cursor = range.start();
        while let Some(seq) = self.mapping_at_or_after(cursor, range.end()) {
            let mapping_range = self.by_seq[&seq].mapping.range;
            if !range.contains(&mapping_range) {
                return Err(format!(
                    "removing {range} would split the active mapping {mapping_range}"
                ));
            }
            inside.push(seq);
            cursor = mapping_range.end();
            if cursor >= range.end() {
                break;
            }
        }
        let mut mappers: Vec<MapperId> = Vec::new();
        for seq in inside {
            if let Some(entry) = self.by_seq.remove(&seq) {
                self.by_start.remove(&entry.mapping.range.start());
                for id in entry.active_mappers {
                    if !mappers.contains(&id) {
                        mappers.push(id);
                    }
                }
            }
        }
        Ok(mappers)
    }

    fn inspect(&self) -> MappingManagerInspect {
        MappingManagerInspect {
            mappings: self
                .by_seq
                .values()
                .map(|entry| MappingSnapshot {
                    range: entry.mapping.range,
                    file_offset: entry.mapping.file_offset,
                    writable: entry.mapping.writable,
                    dma_target: entry.mapping.dma_target,
                    active_mappers: entry.active_mappers.clone(),
                })
                .collect(),
            mapper_count: self.mappers.iter().flatten().count(),
        }
    }
}
