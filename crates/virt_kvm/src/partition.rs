//! [`KvmPartition`]: a KVM VM whose guest-physical map is a set of KVM memory slots, driven
//! through [`PartitionMemoryMap`].
//!
//! Each `map_range` creates exactly one slot (read-only slots use `KVM_MEM_READONLY`, so guest
//! writes become MMIO-write exits); `unmap_range` deletes every slot lying wholly inside its
//! range and refuses to cut one. Slot ids are reused lowest-first. Every map and unmap call is
//! logged with the slot ids it created and deleted, stamped with the process-wide sequence of
//! [`virt::next_sequence_number`], so the planner can tie slot churn to operations.
//!
//! On creation the partition turns off `KVM_X86_QUIRK_SLOT_ZAP_ALL` where the kernel offers it:
//! with the quirk, deleting any slot throws away every guest mapping of the VM (measured on this
//! project's machines: 4.3 ms plus a refault of every page, against ~90 µs without).

// Unsafe code: memory slots name host memory by address (KVM_SET_USER_MEMORY_REGION), and
// madvise/mlock act on it.
#![allow(unsafe_code)]

use crate::dirty_log;
use crate::dirty_log::DirtyLogState;
use crate::prefetch;
use crate::slots::SlotInfo;
use crate::slots::SlotTable;
use crate::vcpu::VcpuShared;
use crate::KvmError;
use kvm_bindings::kvm_enable_cap;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_bindings::KVM_CAP_DISABLE_QUIRKS2;
use kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES;
use kvm_bindings::KVM_MEM_READONLY;
use kvm_bindings::KVM_X86_QUIRK_SLOT_ZAP_ALL;
use kvm_ioctls::Cap;
use kvm_ioctls::Kvm;
use kvm_ioctls::VmFd;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::VecDeque;
use std::ffi::CStr;
use std::io;
use std::sync::Weak;
use virt::PartitionMemoryMap;

/// How many map/unmap calls [`KvmPartition::slot_log`] keeps (oldest dropped first).
pub const SLOT_LOG_CAPACITY: usize = 4096;

const PAGE_SIZE: u64 = 4096;

/// How to create a [`KvmPartition`].
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
pub struct KvmPartitionOptions {
    /// Turn off `KVM_X86_QUIRK_SLOT_ZAP_ALL` (through `KVM_CAP_DISABLE_QUIRKS2`) when the kernel
    /// offers it, so deleting one slot does not zap every guest mapping. Default `true`.
    pub disable_slot_zap_all_quirk: bool,
    /// How many threads populate host pages in [`PartitionMemoryMap::prefetch_range`]; 0 (the
    /// default) uses one per CPU the process may run on.
    pub prefetch_threads: usize,
}

impl Default for KvmPartitionOptions {
    fn default() -> Self {
        Self {
            disable_slot_zap_all_quirk: true,
            prefetch_threads: 0,
        }
    }
}

/// The slot ids one map or unmap call created and deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SlotChanges {
    /// Ids of the slots created, in order.
    pub created: Vec<u32>,
    /// Ids of the slots deleted, in GPA order.
    pub deleted: Vec<u32>,
}

/// A partition call whose slot changes [`KvmPartition::predict_slot_changes`] predicts (the
/// dry-run call of `virt`).
pub type PlannedSlotCall = virt::PlannedCall;

/// Which call a [`SlotLogEntry`] records.
#[derive(Debug, Copy, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotOp {
    /// `map_range`.
    Map,
    /// `unmap_range`.
    Unmap,
}

/// One map or unmap call and its slot changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotLogEntry {
    /// Process-wide sequence number ([`virt::next_sequence_number`]), shared with the
    /// recording partition's and the mappers' logs.
    pub sequence: u64,
    /// The call.
    pub op: SlotOp,
    /// Its GPA.
    pub gpa: u64,
    /// Its size.
    pub size: u64,
    /// What it changed (also when it failed part way).
    pub changes: SlotChanges,
    /// Whether the call returned an error.
    pub failed: bool,
}

/// A snapshot of the partition for `inspect()`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KvmPartitionInspect {
    /// Every slot, in GPA order.
    pub slots: Vec<SlotInfo>,
    /// Slots the VM offers (`KVM_CAP_NR_MEMSLOTS`).
    pub max_slots: u32,
    /// Whether `KVM_X86_QUIRK_SLOT_ZAP_ALL` is off for this VM.
    pub slot_zap_all_quirk_disabled: bool,
    /// Whether the kernel supports read-only slots.
    pub readonly_supported: bool,
    /// vCPUs created so far.
    pub vcpu_count: u32,
}

#[derive(Debug)]
struct PartitionState {
    table: SlotTable,
    last_changes: SlotChanges,
    log: VecDeque<SlotLogEntry>,
    /// Dirty-page logging, while it is on.
    dirty_log: Option<DirtyLogState>,
}

impl PartitionState {
    fn record(&mut self, op: SlotOp, gpa: u64, size: u64, changes: SlotChanges, failed: bool) {
        if self.log.len() == SLOT_LOG_CAPACITY {
            self.log.pop_front();
        }
        self.log.push_back(SlotLogEntry {
            sequence: virt::next_sequence_number(),
            op,
            gpa,
            size,
            changes: changes.clone(),
            failed,
        });
        self.last_changes = changes;
    }
}

/// A KVM virtual machine whose memory slots follow the memory manager's regions.
///
/// `Send + Sync`: slot changes are serialised by an internal mutex held across the ioctl, so
/// the slot table always matches the kernel's. Dropping the last reference closes the VM fd;
/// the kernel destroys the VM (and its memory slots) when every [`Vcpu`](crate::Vcpu) of it is
/// closed or dropped too: [`KvmPartition::close_vcpus`] does that for all of them.
#[derive(Debug)]
pub struct KvmPartition {
    pub(crate) kvm: Kvm,
    pub(crate) vm: VmFd,
    state: Mutex<PartitionState>,
    readonly_supported: bool,
    slot_zap_all_quirk_disabled: bool,
    /// `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2` is on (see the `dirty_log` module).
    manual_dirty_log_protect: bool,
    /// Threads for prefetching (resolved: at least 1).
    prefetch_threads: usize,
    /// Every vCPU created (ids are indexes), for cancelling and closing them.
    pub(crate) vcpus: Mutex<Vec<Weak<VcpuShared>>>,
    /// How many vCPUs the VM may create over its life ([`vcpu_limit`]).
    max_vcpus: u32,
}

/// How many vCPUs `vm` may create: ids count up from 0 and are never free again (KVM keeps a
/// vCPU until the VM is destroyed), so the smaller of the count and id limits.
fn vcpu_limit(vm: &VmFd) -> u32 {
    let cap = |cap| {
        u32::try_from(vm.check_extension_int(cap))
            .ok()
            .filter(|&n| n > 0)
    };
    // Without KVM_CAP_MAX_VCPUS, KVM_CAP_NR_VCPUS (the recommended count) is the limit, and
    // without that 4, as KVM's API documentation says.
    let count = cap(Cap::MaxVcpus)
        .or_else(|| cap(Cap::NrVcpus))
        .unwrap_or(4);
    cap(Cap::MaxVcpuId).map_or(count, |ids| count.min(ids))
}

impl KvmPartition {
    /// Opens `/dev/kvm` and creates a VM with no memory and no vCPU.
    ///
    /// Fails with [`KvmError::KvmUnavailable`] when `/dev/kvm` cannot be opened or the VM
    /// cannot be created.
    pub fn create(options: KvmPartitionOptions) -> Result<Self, KvmError> {
        Self::create_with_path(c"/dev/kvm", options)
    }

    /// Like [`KvmPartition::create`], with the KVM device at `path`.
    pub fn create_with_path(path: &CStr, options: KvmPartitionOptions) -> Result<Self, KvmError> {
        let kvm = Kvm::new_with_path(path).map_err(|e| KvmError::KvmUnavailable {
            what: format!("open {}", path.to_string_lossy()),
            source: e.into(),
        })?;
        let vm = kvm.create_vm().map_err(|e| KvmError::KvmUnavailable {
            what: "KVM_CREATE_VM".to_owned(),
            source: e.into(),
        })?;
        let max_slots = match u32::try_from(vm.check_extension_int(Cap::NrMemslots)) {
            Ok(n) if n > 0 => n,
            // KVM_CAP_NR_MEMSLOTS missing means the historical minimum.
            _ => 32,
        };
        let readonly_supported = vm.check_extension(Cap::ReadonlyMem);
        let slot_zap_all_quirk_disabled =
            options.disable_slot_zap_all_quirk && disable_slot_zap_all_quirk(&vm);
        let manual_dirty_log_protect = dirty_log::enable_manual_protect(&vm);
        let max_vcpus = vcpu_limit(&vm);
        Ok(Self {
            kvm,
            vm,
            state: Mutex::new(PartitionState {
                table: SlotTable::new(max_slots),
                last_changes: SlotChanges::default(),
                log: VecDeque::new(),
                dirty_log: None,
            }),
            readonly_supported,
            slot_zap_all_quirk_disabled,
            manual_dirty_log_protect,
            prefetch_threads: prefetch::thread_count(options.prefetch_threads),
            vcpus: Mutex::new(Vec::new()),
            max_vcpus,
        })
    }

    /// Whether `KVM_X86_QUIRK_SLOT_ZAP_ALL` was turned off for this VM.
    pub fn slot_zap_all_quirk_disabled(&self) -> bool {
        self.slot_zap_all_quirk_disabled
    }

    /// Whether `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2` is on for this VM (dirty logs are harvested
    /// with `KVM_GET_DIRTY_LOG` plus `KVM_CLEAR_DIRTY_LOG`).
    pub fn manual_dirty_log_protect(&self) -> bool {
        self.manual_dirty_log_protect
    }

    /// Whether dirty-page logging is on.
    pub fn dirty_logging(&self) -> bool {
        self.state.lock().dirty_log.is_some()
    }

    /// How many vCPUs this VM may create over its life, closed ones included: the smaller of
    /// `KVM_CAP_MAX_VCPUS` and `KVM_CAP_MAX_VCPU_ID` (ids count up and are never reused).
    pub fn max_vcpus(&self) -> u32 {
        self.max_vcpus
    }

    /// Whether the kernel supports read-only slots (`KVM_CAP_READONLY_MEM`).
    pub fn readonly_supported(&self) -> bool {
        self.readonly_supported
    }

    /// Every slot, in GPA order.
    pub fn slots(&self) -> Vec<SlotInfo> {
        self.state.lock().table.slots().copied().collect()
    }

    /// The slot table and the partition's settings.
    pub fn inspect(&self) -> KvmPartitionInspect {
        let state = self.state.lock();
        KvmPartitionInspect {
            slots: state.table.slots().copied().collect(),
            max_slots: state.table.max_slots(),
            slot_zap_all_quirk_disabled: self.slot_zap_all_quirk_disabled,
            readonly_supported: self.readonly_supported,
            vcpu_count: u32::try_from(self.vcpus.lock().len()).unwrap_or(u32::MAX),
        }
    }

    /// The slot ids created and deleted by the most recent map or unmap call.
    pub fn last_slot_changes(&self) -> SlotChanges {
        self.state.lock().last_changes.clone()
    }

    /// The last [`SLOT_LOG_CAPACITY`] map/unmap calls with their slot changes, oldest first.
    pub fn slot_log(&self) -> Vec<SlotLogEntry> {
        self.state.lock().log.iter().cloned().collect()
    }

    /// Returns the slot log and empties it.
    pub fn take_slot_log(&self) -> Vec<SlotLogEntry> {
        self.state.lock().log.drain(..).collect()
    }

    /// The ids the next `count` slot creations will use, in order (ids are reused
    /// lowest-first), so a dry-run plan can name them.
    pub fn next_free_slots(&self, count: usize) -> Vec<u32> {
        self.state.lock().table.next_free_ids(count)
    }

    /// The slot changes that `calls`, applied in order from the current slot table, would
    /// make (a dry run on a copy of the table; nothing changes). A call the partition would
    /// refuse (an overlap, a partial unmap, no free slot) predicts no change.
    pub fn predict_slot_changes(&self, calls: &[PlannedSlotCall]) -> Vec<SlotChanges> {
        let mut table = self.state.lock().table.clone();
        calls
            .iter()
            .map(|call| match *call {
                PlannedSlotCall::Map { gpa, size } => {
                    if size == 0 || table.check_map(gpa, size).is_err() {
                        return SlotChanges::default();
                    }
                    match table.allocate_id() {
                        Ok(slot) => {
                            table.insert(SlotInfo {
                                slot,
                                gpa,
                                size,
                                readonly: false,
                                host_address: 0,
                                pinned: false,
                            });
                            SlotChanges {
                                created: vec![slot],
                                deleted: Vec::new(),
                            }
                        }
                        Err(_) => SlotChanges::default(),
                    }
                }
                PlannedSlotCall::Unmap { gpa, size } => match table.check_unmap(gpa, size) {
                    Ok(covered) => SlotChanges {
                        created: Vec::new(),
                        deleted: covered
                            .iter()
                            .filter_map(|slot| table.remove(slot.gpa).map(|slot| slot.slot))
                            .collect(),
                    },
                    Err(_) => SlotChanges::default(),
                },
            })
            .collect()
    }

    /// Cancels every vCPU of this partition that is running (see
    /// [`Vcpu::cancel`](crate::Vcpu::cancel)); for closing the partition.
    pub fn cancel_all_vcpus(&self) {
        for vcpu in self.live_vcpus() {
            vcpu.cancel();
        }
    }

    /// Closes every vCPU of this partition (see [`Vcpu::close`](crate::Vcpu::close)): running
    /// ones are cancelled and release their fd as their run returns, idle ones at once. For
    /// closing the partition: with the vCPU fds gone, dropping the partition destroys the VM.
    pub fn close_vcpus(&self) {
        for vcpu in self.live_vcpus() {
            vcpu.close();
        }
    }

    /// The vCPUs not dropped yet (collected first: closing one runs its close hooks, which must
    /// not find the vCPU list locked).
    fn live_vcpus(&self) -> Vec<std::sync::Arc<VcpuShared>> {
        self.vcpus.lock().iter().filter_map(Weak::upgrade).collect()
    }

    fn set_region(&self, region: kvm_userspace_memory_region) -> Result<(), KvmError> {
        // SAFETY: KVM keeps `userspace_addr` and lets the guest read and write the memory
        // there. The `PartitionMemoryMap` contract makes the caller pass a range of its own
        // reserved VA window that stays reserved until it unmaps it from this partition; KVM
        // reaches that memory only through the kernel's user-copy and page-pinning paths, so a
        // bad address shows up as an EFAULT from KVM_RUN, never as a fault in this process, and
        // no Rust object of this crate lives in that memory. Deletions (size 0) hand over no
        // memory at all.
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(|e| KvmError::ioctl("KVM_SET_USER_MEMORY_REGION", e))
    }

    fn map(
        &self,
        state: &mut PartitionState,
        data: *mut u8,
        size: u64,
        gpa: u64,
        writable: bool,
    ) -> Result<Option<u32>, KvmError> {
        let host_address = data as u64;
        let misaligned = (gpa | size | host_address) & (PAGE_SIZE - 1) != 0;
        if misaligned || gpa.checked_add(size).is_none() || host_address.checked_add(size).is_none()
        {
            return Err(KvmError::InvalidSlotRange {
                gpa,
                size,
                host_address,
            });
        }
        if size == 0 {
            // Nothing to map; KVM would read a zero size as a deletion.
            return Ok(None);
        }
        if !writable && !self.readonly_supported {
            return Err(KvmError::ReadOnlyUnsupported);
        }
        state.table.check_map(gpa, size)?;
        let slot = state.table.allocate_id()?;
        let logged = writable && state.dirty_log.is_some();
        let region = kvm_userspace_memory_region {
            slot,
            flags: if !writable {
                KVM_MEM_READONLY
            } else if logged {
                KVM_MEM_LOG_DIRTY_PAGES
            } else {
                0
            },
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host_address,
        };
        if let Err(err) = self.set_region(region) {
            state.table.release_id(slot);
            return Err(err);
        }
        state.table.insert(SlotInfo {
            slot,
            gpa,
            size,
            readonly: !writable,
            host_address,
            pinned: false,
        });
        Ok(Some(slot))
    }

    fn unmap(
        &self,
        state: &mut PartitionState,
        gpa: u64,
        size: u64,
        deleted: &mut Vec<u32>,
    ) -> Result<(), KvmError> {
        for slot in state.table.check_unmap(gpa, size)? {
            if let Some(dirty_log) = &mut state.dirty_log {
                if !slot.readonly {
                    // Harvest before the delete: the slot's bits die with it.
                    let pending = &mut dirty_log.pending;
                    dirty_log::harvest_slot(
                        &self.vm,
                        self.manual_dirty_log_protect,
                        &slot,
                        &mut |address, len| pending.push((address, len)),
                    )?;
                }
            }
            self.set_region(kvm_userspace_memory_region {
                slot: slot.slot,
                flags: 0,
                guest_phys_addr: slot.gpa,
                memory_size: 0,
                userspace_addr: slot.host_address,
            })?;
            state.table.remove(slot.gpa);
            deleted.push(slot.slot);
            if slot.pinned {
                // Best effort: the memory stays valid either way; this only drops the lock
                // `pin_range` took.
                let _ = host_call(
                    "munlock",
                    slot.host_address,
                    slot.size,
                    |address, length| {
                        // SAFETY: munlock only changes the residency of pages in this range and
                        // fails cleanly on addresses that are not mapped.
                        unsafe { libc::munlock(address, length) }
                    },
                );
            }
        }
        Ok(())
    }

    /// Sets or clears `KVM_MEM_LOG_DIRTY_PAGES` on every writable slot; on failure the slots
    /// already changed are changed back.
    fn set_slot_logging(&self, state: &PartitionState, enable: bool) -> Result<(), KvmError> {
        let writable: Vec<SlotInfo> = state
            .table
            .slots()
            .filter(|s| !s.readonly)
            .copied()
            .collect();
        let region = |slot: &SlotInfo, logged: bool| kvm_userspace_memory_region {
            slot: slot.slot,
            flags: if logged { KVM_MEM_LOG_DIRTY_PAGES } else { 0 },
            guest_phys_addr: slot.gpa,
            memory_size: slot.size,
            userspace_addr: slot.host_address,
        };
        for (done, slot) in writable.iter().enumerate() {
            if let Err(error) = self.set_region(region(slot, enable)) {
                for slot in &writable[..done] {
                    let _ = self.set_region(region(slot, !enable));
                }
                return Err(error);
            }
        }
        Ok(())
    }

    /// The host ranges backing `[gpa, gpa + size)`, with each slot's `readonly` flag.
    fn host_ranges(&self, gpa: u64, size: u64) -> Vec<(SlotInfo, u64, u64)> {
        let end = gpa as u128 + size as u128;
        self.state
            .lock()
            .table
            .intersecting(gpa, size)
            .into_iter()
            .map(|slot| {
                let start = gpa.max(slot.gpa);
                let stop = end.min(slot.end());
                let host = slot.host_address + (start - slot.gpa);
                // `stop - start` is at most the slot's size, a u64.
                let len = u64::try_from(stop - u128::from(start)).unwrap_or(slot.size);
                (slot, host, len)
            })
            .collect()
    }
}

/// Turns `KVM_X86_QUIRK_SLOT_ZAP_ALL` off for `vm` where the kernel offers it; whether it did.
/// (The kernel may still refuse, e.g. for some VM types: the quirk stays then.)
pub(crate) fn disable_slot_zap_all_quirk(vm: &VmFd) -> bool {
    let quirks = vm.check_extension_raw(KVM_CAP_DISABLE_QUIRKS2.into());
    let offered = u32::try_from(quirks).unwrap_or(0);
    if offered & KVM_X86_QUIRK_SLOT_ZAP_ALL == 0 {
        return false;
    }
    let cap = kvm_enable_cap {
        cap: KVM_CAP_DISABLE_QUIRKS2,
        args: [KVM_X86_QUIRK_SLOT_ZAP_ALL.into(), 0, 0, 0],
        ..Default::default()
    };
    vm.enable_cap(&cap).is_ok()
}

/// Runs a host memory call on `[address, address + length)` and turns its failure into a
/// [`KvmError::HostCall`].
fn host_call(
    call: &'static str,
    address: u64,
    length: u64,
    f: impl FnOnce(*mut libc::c_void, usize) -> libc::c_int,
) -> Result<(), KvmError> {
    let length = usize::try_from(length).map_err(|_| KvmError::HostCall {
        call,
        what: format!("host range {address:#x}+{length:#x}"),
        source: io::Error::from_raw_os_error(libc::EOVERFLOW),
    })?;
    if f(address as *mut libc::c_void, length) == 0 {
        Ok(())
    } else {
        Err(KvmError::HostCall {
            call,
            what: format!("host range {address:#x}+{length:#x}"),
            source: io::Error::last_os_error(),
        })
    }
}

impl PartitionMemoryMap for KvmPartition {
    fn plan_slots(&self, calls: &[virt::PlannedCall]) -> Option<Vec<Vec<u32>>> {
        let changes = self.predict_slot_changes(calls);
        Some(
            changes
                .into_iter()
                .map(|change| change.created.into_iter().chain(change.deleted).collect())
                .collect(),
        )
    }

    fn slot_capacity(&self) -> Option<virt::SlotCapacity> {
        let state = self.state.lock();
        Some(virt::SlotCapacity {
            used: u32::try_from(state.table.len()).unwrap_or(u32::MAX),
            max: state.table.max_slots(),
        })
    }

    fn unmap_range(&self, addr: u64, size: u64) -> Result<(), virt::Error> {
        let mut state = self.state.lock();
        let mut deleted = Vec::new();
        let result = self.unmap(&mut state, addr, size, &mut deleted);
        let changes = SlotChanges {
            created: Vec::new(),
            deleted,
        };
        state.record(SlotOp::Unmap, addr, size, changes, result.is_err());
        Ok(result?)
    }

    fn map_range(
        &self,
        data: *mut u8,
        size: usize,
        addr: u64,
        writable: bool,
        _exec: bool,
    ) -> Result<(), virt::Error> {
        // KVM memory slots carry no execute permission; `exec` is accepted and ignored.
        let mut state = self.state.lock();
        let result = self.map(&mut state, data, size as u64, addr, writable);
        let changes = SlotChanges {
            created: result.as_ref().ok().and_then(|s| *s).into_iter().collect(),
            deleted: Vec::new(),
        };
        state.record(SlotOp::Map, addr, size as u64, changes, result.is_err());
        Ok(result.map(drop)?)
    }

    /// Populates the host pages behind every slot in the range (`MADV_POPULATE_WRITE`, or
    /// `MADV_POPULATE_READ` for read-only slots), so the guest's first touch does not also pay
    /// for the host page fault. GPAs with no slot are skipped. Runs in parallel as
    /// [`prefetch_range_with_progress`](PartitionMemoryMap::prefetch_range_with_progress) does.
    fn prefetch_range(&self, addr: u64, size: u64) -> Result<(), virt::Error> {
        self.prefetch_range_with_progress(addr, size, &|_| {})
    }

    /// Splits the slots in the range into pieces (`prefetch::pieces`) and populates them from
    /// several threads (`prefetch_threads`), each taking the next piece when it finishes one;
    /// `progress` hears about every piece from the thread that did it. Every piece is tried; the
    /// first failure in GPA order is returned.
    fn prefetch_range_with_progress(
        &self,
        addr: u64,
        size: u64,
        progress: &(dyn Fn(&virt::PrefetchChunk) + Sync),
    ) -> Result<(), virt::Error> {
        let ranges = self.host_ranges(addr, size);
        let pieces = prefetch::pieces(&ranges, self.prefetch_threads);
        let result = prefetch::run(&pieces, self.prefetch_threads, progress);
        Ok(result?)
    }

    /// Sets `KVM_MEM_LOG_DIRTY_PAGES` on every writable slot, and on every writable slot
    /// created from now on. Starting again is a no-op.
    fn start_dirty_log(&self) -> Result<(), virt::Error> {
        let mut state = self.state.lock();
        if state.dirty_log.is_none() {
            self.set_slot_logging(&state, true)?;
            state.dirty_log = Some(DirtyLogState::default());
        }
        Ok(())
    }

    /// Clears `KVM_MEM_LOG_DIRTY_PAGES` everywhere and forgets pending pages.
    fn stop_dirty_log(&self) -> Result<(), virt::Error> {
        let mut state = self.state.lock();
        if state.dirty_log.is_some() {
            self.set_slot_logging(&state, false)?;
            state.dirty_log = None;
        }
        Ok(())
    }

    /// Reports the pages written in deleted slots since the last take, then harvests every
    /// writable slot (see the `dirty_log` module). Fails when logging is off.
    fn take_dirty_log(&self, report: &mut dyn FnMut(u64, u64)) -> Result<(), virt::Error> {
        let mut state = self.state.lock();
        let Some(dirty_log) = &mut state.dirty_log else {
            return Err(KvmError::DirtyLogOff.into());
        };
        for (address, len) in std::mem::take(&mut dirty_log.pending) {
            report(address, len);
        }
        for slot in state.table.slots().filter(|slot| !slot.readonly) {
            dirty_log::harvest_slot(&self.vm, self.manual_dirty_log_protect, slot, report)?;
        }
        Ok(())
    }

    /// Locks the host pages behind every slot in the range in memory (`mlock`); the lock is
    /// dropped when the slot is unmapped. GPAs with no slot are skipped.
    fn pin_range(&self, addr: u64, size: u64) -> Result<(), virt::Error> {
        for (slot, host, length) in self.host_ranges(addr, size) {
            host_call("mlock", host, length, |address, length| {
                // SAFETY: mlock only faults in and locks the pages of existing mappings in the
                // range; it fails cleanly where nothing is mapped.
                unsafe { libc::mlock(address, length) }
            })?;
            self.state.lock().table.mark_pinned(slot.gpa);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::partition_or_skip;
    use crate::test_support::AnonMemory;

    const MIB: usize = 1 << 20;
    const MIB_U64: u64 = 1 << 20;

    fn partition(test: &str) -> Option<KvmPartition> {
        partition_or_skip(test, KvmPartitionOptions::default())
    }

    fn slot_ids(partition: &KvmPartition) -> Vec<(u32, u64)> {
        partition.slots().iter().map(|s| (s.slot, s.gpa)).collect()
    }

    fn kvm_err(err: virt::Error) -> KvmError {
        *err.downcast::<KvmError>().expect("a KvmError")
    }

    /// Whether the kernel still has a slot covering `gpa`: creating a raw overlapping slot
    /// under a spare id fails with EEXIST if so.
    fn kernel_has_slot_at(partition: &KvmPartition, gpa: u64, memory: &AnonMemory) -> bool {
        let spare = partition.state.lock().table.max_slots() - 1;
        let region = kvm_userspace_memory_region {
            slot: spare,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: 4096,
            userspace_addr: memory.ptr() as u64,
        };
        match partition.set_region(region) {
            Ok(()) => {
                partition
                    .set_region(kvm_userspace_memory_region {
                        memory_size: 0,
                        ..region
                    })
                    .unwrap();
                false
            }
            Err(KvmError::KvmIoctl { source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(libc::EEXIST));
                true
            }
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn create_reports_an_unopenable_device_as_kvm_unavailable() {
        let err =
            KvmPartition::create_with_path(c"/nonexistent/kvm", KvmPartitionOptions::default())
                .unwrap_err();
        match &err {
            KvmError::KvmUnavailable { what, source } => {
                assert_eq!(what, "open /nonexistent/kvm");
                assert_eq!(source.raw_os_error(), Some(libc::ENOENT));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "KVM is not available: open /nonexistent/kvm"
        );
    }

    #[test]
    fn predicted_slot_changes_match_the_applied_ones() {
        let Some(partition) = partition("predicted_slot_changes_match_the_applied_ones") else {
            return;
        };
        let memory = AnonMemory::mapped(4 * MIB);
        let at = |offset: usize| memory.ptr().wrapping_add(offset);
        partition
            .map_range(at(0), 0x1000, 0x10_0000, true, false)
            .unwrap();
        partition
            .map_range(at(MIB), MIB, 0x20_0000, true, false)
            .unwrap();
        partition
            .map_range(at(2 * MIB), 0x4000, 0x40_0000, false, false)
            .unwrap();
        let calls = [
            PlannedSlotCall::Unmap {
                gpa: 0x10_0000,
                size: 0x1000,
            },
            PlannedSlotCall::Map {
                gpa: 0x80_0000,
                size: 0x2000,
            },
            PlannedSlotCall::Unmap {
                gpa: 0x20_0000,
                size: 0x24_0000,
            },
            PlannedSlotCall::Map {
                gpa: 0x20_0000,
                size: 0x1000,
            },
            PlannedSlotCall::Map {
                gpa: 0x20_0000,
                size: 0x1000,
            },
        ];
        let predicted = partition.predict_slot_changes(&calls);
        // The dry-run view of `PartitionMemoryMap` lists each call's created then deleted ids.
        let planned: Vec<Vec<u32>> = predicted
            .iter()
            .map(|change| {
                change
                    .created
                    .iter()
                    .chain(&change.deleted)
                    .copied()
                    .collect()
            })
            .collect();
        assert_eq!(partition.plan_slots(&calls), Some(planned));
        let before = slot_ids(&partition);
        // Predicting changes nothing.
        assert_eq!(slot_ids(&partition), before);
        partition.take_slot_log();
        partition.unmap_range(0x10_0000, 0x1000).unwrap();
        partition
            .map_range(at(3 * MIB), 0x2000, 0x80_0000, true, false)
            .unwrap();
        partition.unmap_range(0x20_0000, 0x24_0000).unwrap();
        partition
            .map_range(at(MIB), 0x1000, 0x20_0000, true, false)
            .unwrap();
        // The last call overlaps the slot just made: refused, so no change predicted.
        assert!(partition
            .map_range(at(MIB), 0x1000, 0x20_0000, true, false)
            .is_err());
        let applied: Vec<SlotChanges> = partition
            .take_slot_log()
            .into_iter()
            .map(|entry| entry.changes)
            .collect();
        assert_eq!(predicted, applied);
        assert_eq!(predicted[0].deleted, vec![0]);
        assert_eq!(
            predicted[1].created,
            vec![0],
            "the lowest free id is reused"
        );
        assert_eq!(predicted[2].deleted, vec![1, 2]);
        assert_eq!(predicted[4], SlotChanges::default());
    }

    #[test]
    fn slots_are_added_removed_and_reused() {
        let Some(partition) = partition("slots_are_added_removed_and_reused") else {
            return;
        };
        let memory = AnonMemory::mapped(4 * MIB);
        let at = |offset: usize| memory.ptr().wrapping_add(offset);
        partition
            .map_range(at(0), 0x1000, 0x10_0000, true, false)
            .unwrap();
        assert_eq!(partition.last_slot_changes().created, vec![0]);
        partition
            .map_range(at(0x1000), 0x2000, 0x20_0000, true, false)
            .unwrap();
        partition
            .map_range(at(MIB), MIB, 0x1_0000_0000, true, true)
            .unwrap();
        assert_eq!(
            slot_ids(&partition),
            vec![(0, 0x10_0000), (1, 0x20_0000), (2, 0x1_0000_0000)]
        );
        let inspect = partition.inspect();
        assert_eq!(inspect.slots[1].size, 0x2000);
        assert_eq!(inspect.slots[1].host_address, at(0x1000) as u64);
        assert!(!inspect.slots[1].readonly);
        // Remove the middle slot: id 1 is free again and reused first.
        partition.unmap_range(0x20_0000, 0x2000).unwrap();
        assert_eq!(
            partition.last_slot_changes(),
            SlotChanges {
                created: vec![],
                deleted: vec![1]
            }
        );
        assert!(!kernel_has_slot_at(&partition, 0x20_0000, &memory));
        assert_eq!(partition.next_free_slots(2), vec![1, 3]);
        partition
            .map_range(at(0x3000), 0x1000, 0x30_0000, false, false)
            .unwrap();
        assert_eq!(partition.last_slot_changes().created, vec![1]);
        assert!(partition.slots()[1].readonly);
        // One unmap may cover several slots (and gaps); it deletes them in GPA order.
        partition.unmap_range(0, 0x1_0000_0000).unwrap();
        assert_eq!(partition.last_slot_changes().deleted, vec![0, 1]);
        assert!(!kernel_has_slot_at(&partition, 0x10_0000, &memory));
        assert!(kernel_has_slot_at(&partition, 0x1_0000_0000, &memory));
        // An unmap that covers nothing succeeds and changes nothing.
        partition.unmap_range(0x8000_0000, 0x1000).unwrap();
        assert_eq!(partition.last_slot_changes(), SlotChanges::default());
        let log = partition.take_slot_log();
        let summary: Vec<(SlotOp, u64, Vec<u32>, Vec<u32>)> = log
            .iter()
            .map(|e| {
                (
                    e.op,
                    e.gpa,
                    e.changes.created.clone(),
                    e.changes.deleted.clone(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (SlotOp::Map, 0x10_0000, vec![0], vec![]),
                (SlotOp::Map, 0x20_0000, vec![1], vec![]),
                (SlotOp::Map, 0x1_0000_0000, vec![2], vec![]),
                (SlotOp::Unmap, 0x20_0000, vec![], vec![1]),
                (SlotOp::Map, 0x30_0000, vec![1], vec![]),
                (SlotOp::Unmap, 0, vec![], vec![0, 1]),
                (SlotOp::Unmap, 0x8000_0000, vec![], vec![]),
            ]
        );
        assert!(log.windows(2).all(|w| w[0].sequence < w[1].sequence));
        assert!(log.iter().all(|e| !e.failed));
        assert!(partition.slot_log().is_empty());
    }

    #[test]
    fn an_overlapping_map_is_refused() {
        let Some(partition) = partition("an_overlapping_map_is_refused") else {
            return;
        };
        let memory = AnonMemory::mapped(MIB);
        partition
            .map_range(memory.ptr(), 0x4000, 0x10_0000, true, false)
            .unwrap();
        let err = kvm_err(
            partition
                .map_range(memory.ptr(), 0x2000, 0x10_3000, true, false)
                .unwrap_err(),
        );
        assert!(matches!(
            err,
            KvmError::SlotOverlap {
                gpa: 0x10_3000,
                size: 0x2000,
                slot: 0,
                slot_gpa: 0x10_0000,
                slot_size: 0x4000
            }
        ));
        assert_eq!(
            err.to_string(),
            "range 0x103000-0x105000 overlaps memory slot 0 at 0x100000-0x104000"
        );
        assert_eq!(slot_ids(&partition), vec![(0, 0x10_0000)]);
        let last = partition.slot_log().pop().unwrap();
        assert!(last.failed);
        assert_eq!(last.changes, SlotChanges::default());
        // The id was not consumed.
        assert_eq!(partition.next_free_slots(1), vec![1]);
    }

    #[test]
    fn a_partial_unmap_is_refused_and_deletes_nothing() {
        let Some(partition) = partition("a_partial_unmap_is_refused_and_deletes_nothing") else {
            return;
        };
        let memory = AnonMemory::mapped(MIB);
        partition
            .map_range(memory.ptr(), 0x4000, 0x10_0000, true, false)
            .unwrap();
        partition
            .map_range(memory.ptr(), 0x4000, 0x10_4000, true, false)
            .unwrap();
        let err = kvm_err(partition.unmap_range(0x10_0000, 0x6000).unwrap_err());
        assert!(matches!(
            err,
            KvmError::PartialSlotUnmap {
                slot: 1,
                slot_gpa: 0x10_4000,
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "unmap of 0x100000-0x106000 covers only part of memory slot 1 at 0x104000-0x108000"
        );
        let err = kvm_err(partition.unmap_range(0x10_2000, 0x2000).unwrap_err());
        assert!(matches!(err, KvmError::PartialSlotUnmap { slot: 0, .. }));
        assert_eq!(slot_ids(&partition), vec![(0, 0x10_0000), (1, 0x10_4000)]);
        assert!(kernel_has_slot_at(&partition, 0x10_0000, &memory));
        assert!(kernel_has_slot_at(&partition, 0x10_4000, &memory));
        assert!(partition.slot_log().last().unwrap().failed);
    }

    #[test]
    fn misaligned_maps_are_refused_and_empty_maps_do_nothing() {
        let Some(partition) = partition("misaligned_maps_are_refused_and_empty_maps_do_nothing")
        else {
            return;
        };
        let memory = AnonMemory::mapped(MIB);
        for (offset, size, gpa) in [
            (0, 0x1000, 0x10_0800),
            (0, 0x800, 0x10_0000),
            (8, 0x1000, 0),
        ] {
            let err = kvm_err(
                partition
                    .map_range(memory.ptr().wrapping_add(offset), size, gpa, true, false)
                    .unwrap_err(),
            );
            assert!(matches!(err, KvmError::InvalidSlotRange { .. }), "{err}");
        }
        let err = kvm_err(
            partition
                .map_range(memory.ptr(), 0x2000, u64::MAX - 0xfff, true, false)
                .unwrap_err(),
        );
        assert!(matches!(err, KvmError::InvalidSlotRange { .. }));
        partition
            .map_range(memory.ptr(), 0, 0x10_0000, true, false)
            .unwrap();
        assert!(partition.slots().is_empty());
        assert_eq!(partition.last_slot_changes(), SlotChanges::default());
    }

    #[test]
    fn running_out_of_slots_is_no_free_slot() {
        let Some(partition) = partition("running_out_of_slots_is_no_free_slot") else {
            return;
        };
        // Shrink the table so the test does not need the kernel's ~32k slots.
        partition.state.lock().table = SlotTable::new(2);
        let memory = AnonMemory::mapped(MIB);
        partition
            .map_range(memory.ptr(), 0x1000, 0, true, false)
            .unwrap();
        partition
            .map_range(memory.ptr(), 0x1000, 0x1000, true, false)
            .unwrap();
        let err = kvm_err(
            partition
                .map_range(memory.ptr(), 0x1000, 0x2000, true, false)
                .unwrap_err(),
        );
        assert!(matches!(err, KvmError::NoFreeSlot { max_slots: 2 }));
        assert_eq!(err.to_string(), "no free memory slot (the VM offers 2)");
        // The capacity the memory manager checks changes before any call says so too, and
        // the refused call took no slot.
        assert_eq!(
            partition.slot_capacity(),
            Some(virt::SlotCapacity { used: 2, max: 2 })
        );
        partition.unmap_range(0, 0x1000).unwrap();
        partition
            .map_range(memory.ptr(), 0x1000, 0x2000, true, false)
            .unwrap();
        assert_eq!(partition.last_slot_changes().created, vec![0]);
        partition.unmap_range(0x1000, 0x2000).unwrap();
        assert_eq!(
            partition.slot_capacity(),
            Some(virt::SlotCapacity { used: 0, max: 2 })
        );
    }

    #[test]
    fn the_slot_zap_all_quirk_is_disabled_where_offered() {
        let Some(default) = partition("the_slot_zap_all_quirk_is_disabled_where_offered") else {
            return;
        };
        let offered = default
            .vm
            .check_extension_raw(KVM_CAP_DISABLE_QUIRKS2.into());
        let offered = u32::try_from(offered).unwrap_or(0) & KVM_X86_QUIRK_SLOT_ZAP_ALL != 0;
        assert_eq!(default.slot_zap_all_quirk_disabled(), offered);
        assert_eq!(default.inspect().slot_zap_all_quirk_disabled, offered);
        let kept = KvmPartition::create(KvmPartitionOptions {
            disable_slot_zap_all_quirk: false,
            ..Default::default()
        })
        .unwrap();
        assert!(!kept.slot_zap_all_quirk_disabled());
        assert!(default.inspect().max_slots >= 32);
    }

    /// Resident pages of `[ptr, ptr + len)` per mincore.
    fn resident_pages(ptr: *mut u8, len: usize) -> usize {
        let mut vec = vec![0u8; len / 4096];
        // SAFETY: `vec` has one byte per page of the (mapped) range.
        let rc = unsafe { libc::mincore(ptr.cast(), len, vec.as_mut_ptr()) };
        assert_eq!(rc, 0);
        vec.iter().filter(|&&b| b & 1 != 0).count()
    }

    /// The `Locked:` kB of every mapping overlapping `[ptr, ptr + len)`, from /proc/self/smaps.
    ///
    /// Summed over overlapping VMAs rather than looked up by start address: an anonymous mapping
    /// can merge with a neighbour (the VMA then starts below `ptr`), and `mlock` of part of it
    /// splits it. Only locked VMAs contribute, and nothing else in the test process locks memory.
    fn locked_kib(ptr: *mut u8, len: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let (start, end) = (ptr as usize, ptr as usize + len);
        let mut overlaps = false;
        let mut total = 0;
        for line in smaps.lines() {
            let header = line
                .split_whitespace()
                .next()
                .and_then(|range| range.split_once('-'))
                .and_then(|(lo, hi)| {
                    Some((
                        usize::from_str_radix(lo, 16).ok()?,
                        usize::from_str_radix(hi, 16).ok()?,
                    ))
                });
            if let Some((vma_start, vma_end)) = header {
                overlaps = vma_start < end && start < vma_end;
            } else if overlaps {
                if let Some(rest) = line.strip_prefix("Locked:") {
                    total += rest
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .unwrap();
                }
            }
        }
        total
    }

    #[test]
    fn prefetch_populates_the_host_pages_of_the_slots_in_range() {
        let Some(partition) = partition("prefetch_populates_the_host_pages_of_the_slots_in_range")
        else {
            return;
        };
        let memory = AnonMemory::mapped(4 * MIB);
        partition
            .map_range(memory.ptr(), 2 * MIB, 0x4000_0000, true, false)
            .unwrap();
        assert_eq!(resident_pages(memory.ptr(), memory.len()), 0);
        // The range may extend past the slot (holes are skipped).
        partition
            .prefetch_range(0x4000_0000 - MIB_U64, 2 * MIB_U64)
            .unwrap();
        assert_eq!(resident_pages(memory.ptr(), memory.len()), 256);
        partition.prefetch_range(0x4000_0000, 2 * MIB_U64).unwrap();
        assert_eq!(resident_pages(memory.ptr(), memory.len()), 512);
        // Nothing mapped at all: nothing to do.
        partition.prefetch_range(0, MIB_U64).unwrap();
    }

    #[test]
    fn parallel_prefetch_reports_every_piece_and_keeps_going_past_a_failing_one() {
        let Some(partition) = partition_or_skip(
            "parallel_prefetch_reports_every_piece_and_keeps_going_past_a_failing_one",
            KvmPartitionOptions {
                prefetch_threads: 3,
                ..Default::default()
            },
        ) else {
            return;
        };
        let memory = AnonMemory::mapped(32 * MIB);
        partition
            .map_range(memory.ptr(), 32 * MIB, 0x4000_0000, true, false)
            .unwrap();
        // A hole in the host memory behind the slot (2 MiB at 10 MiB): populating it fails.
        // SAFETY: unmapping part of our own test mapping, which nothing else uses.
        let rc = unsafe { libc::munmap(memory.ptr().add(10 * MIB).cast(), 2 * MIB) };
        assert_eq!(rc, 0);
        let seen = Mutex::new(Vec::new());
        let error = partition
            .prefetch_range_with_progress(0x4000_0000, 32 * MIB_U64, &|chunk| {
                seen.lock().push(chunk.clone());
            })
            .unwrap_err();
        let error = kvm_err(error);
        assert!(
            matches!(&error, KvmError::HostCall { source, .. } if source.raw_os_error() == Some(libc::ENOMEM)),
            "{error:?}"
        );
        let mut seen = seen.into_inner();
        seen.sort_by_key(|chunk| chunk.gpa);
        // 3 threads x 4 pieces per thread over 32 MiB: 4 MiB pieces, covering the slot once.
        assert_eq!(seen.len(), 8);
        let mut next = 0x4000_0000;
        for chunk in &seen {
            assert_eq!(chunk.gpa, next);
            next += chunk.size;
            let in_hole = chunk.gpa <= 0x4000_0000 + 10 * MIB_U64
                && 0x4000_0000 + 10 * MIB_U64 < chunk.gpa + chunk.size;
            assert_eq!(chunk.failure.is_some(), in_hole, "{chunk:?}");
            if let Some(failure) = &chunk.failure {
                assert_eq!(failure.errno, Some(libc::ENOMEM));
            }
        }
        assert_eq!(next, 0x4000_0000 + 32 * MIB_U64);
        // Every page outside the failing piece is resident.
        let resident = resident_pages(memory.ptr(), 8 * MIB)
            + resident_pages(memory.ptr().wrapping_add(12 * MIB), 20 * MIB);
        assert_eq!(resident, 28 * MIB / 4096);
    }

    #[test]
    fn pin_locks_the_host_pages_until_the_slot_is_unmapped() {
        let Some(partition) = partition("pin_locks_the_host_pages_until_the_slot_is_unmapped")
        else {
            return;
        };
        let memory = AnonMemory::mapped(2 * MIB);
        partition
            .map_range(memory.ptr(), 2 * MIB, 0x4000_0000, true, false)
            .unwrap();
        let locked = || locked_kib(memory.ptr(), memory.len());
        assert_eq!(locked(), 0);
        partition.pin_range(0x4000_0000, MIB_U64).unwrap();
        assert_eq!(locked(), 1024);
        assert!(partition.slots()[0].pinned);
        partition.unmap_range(0x4000_0000, 2 * MIB_U64).unwrap();
        assert_eq!(locked(), 0);
    }

    #[test]
    fn partitions_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<KvmPartition>();
        assert_send_sync::<std::sync::Arc<dyn PartitionMemoryMap>>();
    }
}
