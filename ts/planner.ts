/**
 * The dry-run planner (docs/design.md, "The planner and the applier"): a manager's flat view —
 * what the guest sees, piece by piece — and, for a change, the flat view it would leave and the
 * ordered operations it would carry out (VA-mapper invalidations and partition
 * map/unmap/prefetch/pin calls), each with the partition it calls, the KVM slots it creates or
 * deletes, and its reason. Nothing is applied; applying the same change next produces exactly
 * the planned partition calls, in the same order. The core computes all of it; this module
 * checks the change's arguments and converts.
 */
import { call, invalidArgType, invalidArgValue, settle } from './errors';
import type { PlannedOpKind } from './generated/enums';
import type { Mappable } from './guest_memory';
import type { DeviceMemoryControl, DeviceMemoryRegion, RamVisibility, Vtl } from './manager';
import { toVisibility, toVtl } from './manager';
import { native } from './native';
import { nativePartition, type KvmPartition, type RecordingPartition } from './partition';
import { nativeJson, toRange, type MemoryRange, type RangeLike } from './range';
import { checkOptionKeys, describeType, toU64, type U64 } from './u64';

/** One piece of the flat view: what the guest sees at [range). */
export interface FlatEntry {
  range: MemoryRange;
  /** The winning region's name and id, or null where nothing is mapped. */
  region: { id: number; name: string } | null;
  /** Backing at this range: the object (`memfd:guest-ram`, …) and the offset of the piece's first byte (bytes). */
  backing: { object: string; fileOffset: bigint } | null;
  writable: boolean;
  executable: boolean;
  /** Regions present here but hidden by the winner (lower priority or inactive). */
  hidden: Array<{ id: number; name: string }>;
}

/** One planned operation, in the order it will be carried out. */
export interface PlannedOp {
  op: PlannedOpKind;
  /** Which attached partition (index in attach order; a VTL2 partition with an alias map counts twice, alias first), absent for mapper invalidations. */
  partition?: number;
  gpa: bigint;
  size: bigint;
  writable?: boolean;
  exec?: boolean;
  /** KVM partitions: slot ids this op creates (map) or deletes (unmap). */
  slots?: number[];
  /** Why, in words (e.g. "VGA 0xa0000-0xc0000 hidden: RAM visibility Unmapped"). */
  reason: string;
}

/** What `manager.apply(changes)` carried out: the operations, in order (netted: see `apply`). */
export interface Plan {
  ops: PlannedOp[];
}

/** A dry run's result: the operations and the flat view they would leave. */
export interface PlanPreview extends Plan {
  flatView: FlatEntry[];
}

/** A change the manager can plan and apply (one variant per manager operation). */
export type PlanChange =
  /** `ramVisibilityControl().setRamVisibility(range, visibility)`. */
  | { kind: 'ramVisibility'; range: RangeLike; visibility: RamVisibility | `${RamVisibility}` }
  /** `window.mapToGuest(gpa, writable)`. */
  | { kind: 'deviceMapToGuest'; window: DeviceMemoryControl; gpa: U64; writable: boolean }
  /** `window.unmapFromGuest()`. */
  | { kind: 'deviceUnmapFromGuest'; window: DeviceMemoryControl }
  /** `region.map(offset, object, fileOffset, len, writable)`. */
  | { kind: 'deviceMap'; region: DeviceMemoryRegion; offset: U64; object: Mappable; fileOffset: U64; len: U64; writable: boolean }
  /** `region.unmap(offset, len)`. */
  | { kind: 'deviceUnmap'; region: DeviceMemoryRegion; offset: U64; len: U64 }
  /** `attachPartition(vtl, partition)`: the calls into the new partition. */
  | { kind: 'attachPartition'; vtl: Vtl; partition: RecordingPartition | KvmPartition };

/** How the manager resolves the objects a change names (`name` words the argument in errors). @internal */
export interface PlanResolvers {
  window(value: unknown, name: string): InstanceType<typeof native.NativeDeviceWindowHalf>;
  region(value: unknown, name: string): InstanceType<typeof native.NativeDeviceWindowHalf>;
  mappable(value: unknown, name: string): InstanceType<typeof native.NativeMappable>;
}

const KNOWN_KINDS = 'ramVisibility, deviceMapToGuest, deviceUnmapFromGuest, deviceMap, deviceUnmap, attachPartition';

/** The error of a change whose `kind` is not one of the known ones. */
function unknownKind(change: unknown, name: string): Error {
  const kind = (change as { kind?: unknown }).kind;
  if (typeof kind !== 'string') return invalidArgType(`${name}.kind must be a string (${KNOWN_KINDS}), got ${describeType(kind)}`);
  return invalidArgValue(`unknown ${name}.kind '${kind}' (${KNOWN_KINDS})`);
}

function toWritable(value: unknown, name: string): boolean {
  if (typeof value !== 'boolean') throw invalidArgType(`${name}.writable must be a boolean, got ${describeType(value)}`);
  return value;
}

/** A window half of `manager`, or the error of a change naming another manager's window. */
function ownWindow<H extends { madeBy(manager: InstanceType<typeof native.NativeGuestMemoryManager>): boolean }>(
  manager: InstanceType<typeof native.NativeGuestMemoryManager>,
  half: H,
  name: string,
): H {
  if (!call(() => half.madeBy(manager))) {
    throw invalidArgValue(`${name} belongs to another memory manager: plan a window's changes with the manager whose deviceMemoryMapper() made it`);
  }
  return half;
}

/** The keys of each kind of change (a misspelt key would be ignored: `visibilty`). */
const CHANGE_KEYS: Record<PlanChange['kind'], readonly string[]> = {
  ramVisibility: ['kind', 'range', 'visibility'],
  deviceMapToGuest: ['kind', 'window', 'gpa', 'writable'],
  deviceUnmapFromGuest: ['kind', 'window'],
  deviceMap: ['kind', 'region', 'offset', 'object', 'fileOffset', 'len', 'writable'],
  deviceUnmap: ['kind', 'region', 'offset', 'len'],
  attachPartition: ['kind', 'vtl', 'partition'],
};

/** Refuses a key the change's kind does not have (an unknown kind is refused by the caller). */
function checkChangeKeys(change: object, name: string): void {
  const kind = (change as { kind?: unknown }).kind;
  if (typeof kind === 'string' && Object.hasOwn(CHANGE_KEYS, kind)) checkOptionKeys(change, CHANGE_KEYS[kind as PlanChange['kind']], `${name} (${kind})`, 'key');
}

/** @internal The native planner calls for one change. */
export async function planChange(
  manager: InstanceType<typeof native.NativeGuestMemoryManager>,
  change: PlanChange,
  resolve: PlanResolvers,
): Promise<PlanPreview> {
  if (typeof change !== 'object' || change === null) throw invalidArgType(`change must be a PlanChange object, got ${describeType(change)}`);
  checkChangeKeys(change, 'change');
  let pending: Promise<string>;
  switch (change.kind) {
    case 'ramVisibility': {
      const r = toRange(change.range, 'change.range');
      const v = toVisibility(change.visibility, 'change.visibility');
      pending = call(() => manager.planRamVisibility(BigUint64Array.from([r.start, r.end]), v));
      break;
    }
    case 'deviceMapToGuest': {
      const w = ownWindow(manager, resolve.window(change.window, 'change.window'), 'change.window');
      const gpa = toU64(change.gpa, 'change.gpa');
      const writable = toWritable(change.writable, 'change');
      pending = call(() => w.planMapToGuest(gpa, writable));
      break;
    }
    case 'deviceUnmapFromGuest': {
      const w = ownWindow(manager, resolve.window(change.window, 'change.window'), 'change.window');
      pending = call(() => w.planUnmapFromGuest());
      break;
    }
    case 'deviceMap': {
      const r = ownWindow(manager, resolve.region(change.region, 'change.region'), 'change.region');
      const offset = toU64(change.offset, 'change.offset');
      const object = resolve.mappable(change.object, 'change.object');
      const fileOffset = toU64(change.fileOffset, 'change.fileOffset');
      const len = toU64(change.len, 'change.len');
      const writable = toWritable(change.writable, 'change');
      pending = call(() => r.planMap(offset, object, fileOffset, len, writable));
      break;
    }
    case 'deviceUnmap': {
      const r = ownWindow(manager, resolve.region(change.region, 'change.region'), 'change.region');
      const offset = toU64(change.offset, 'change.offset');
      const len = toU64(change.len, 'change.len');
      pending = call(() => r.planUnmap(offset, len));
      break;
    }
    case 'attachPartition': {
      const vtl = toVtl(change.vtl, 'change.vtl');
      const partition = nativePartition(change.partition);
      pending = call(() => manager.planAttach(vtl, partition));
      break;
    }
    default:
      throw unknownKind(change, 'change');
  }
  return nativeJson(await settle(pending));
}

type NativeBatch = InstanceType<typeof native.NativeBatch>;

/** Checks `changes` and collects them into a native batch, in order. */
function nativeBatch(changes: unknown, resolve: PlanResolvers): NativeBatch {
  if (!Array.isArray(changes)) throw invalidArgType(`changes must be an array of PlanChange objects, got ${describeType(changes)}`);
  // Every change is read and checked first (this runs the caller's getters, which may close a
  // window or object of an earlier change), then added: a change added earlier would keep a
  // window a later getter closed, and the batch would place a window no half can remove.
  const adds = changes.map((change: unknown, index: number) => {
    try {
      return checkedChange(change, index, resolve);
    } catch (error) {
      throw changeError(error, index);
    }
  });
  const batch = new native.NativeBatch();
  adds.forEach((add, index) => {
    try {
      add(batch);
    } catch (error) {
      throw changeError(error, index);
    }
  });
  return batch;
}

/**
 * The error of change `index` of a batch refused before the manager saw it (a bad argument, a
 * closed window or object) marked as the manager marks the changes it refuses: the index in
 * `changeIndex`, and the change named in `detail` where the message does not name it.
 */
function changeError(error: unknown, index: number): unknown {
  if (!(error instanceof Error) || (error as { changeIndex?: unknown }).changeIndex !== undefined) return error;
  const fields: { changeIndex: number; detail?: string } = { changeIndex: index };
  if (!error.message.includes(`changes[${index}]`)) {
    const context = `changes[${index}] (nothing in the batch was applied)`;
    const detail = (error as { detail?: unknown }).detail;
    fields.detail = typeof detail === 'string' ? `${context}; ${detail}` : context;
  }
  return Object.assign(error, fields);
}

/** Checks change `index` of a batch; what adds it to a batch (it runs no code of the caller's). */
function checkedChange(change: unknown, index: number, resolve: PlanResolvers): (batch: NativeBatch) => void {
  const name = `changes[${index}]`;
  if (typeof change !== 'object' || change === null) throw invalidArgType(`${name} must be a PlanChange object, got ${describeType(change)}`);
  checkChangeKeys(change, name);
  const c = change as PlanChange;
  switch (c.kind) {
    case 'ramVisibility': {
      const r = toRange(c.range, `${name}.range`);
      const v = toVisibility(c.visibility, `${name}.visibility`);
      return (batch) => call(() => batch.ramVisibility(index, BigUint64Array.from([r.start, r.end]), v));
    }
    case 'deviceMapToGuest': {
      const w = resolve.window(c.window, `${name}.window`);
      const gpa = toU64(c.gpa, `${name}.gpa`);
      const writable = toWritable(c.writable, name);
      return (batch) => call(() => batch.deviceMapToGuest(w, gpa, writable));
    }
    case 'deviceUnmapFromGuest': {
      const w = resolve.window(c.window, `${name}.window`);
      return (batch) => call(() => batch.deviceUnmapFromGuest(w));
    }
    case 'deviceMap': {
      const r = resolve.region(c.region, `${name}.region`);
      const offset = toU64(c.offset, `${name}.offset`);
      const object = resolve.mappable(c.object, `${name}.object`);
      const fileOffset = toU64(c.fileOffset, `${name}.fileOffset`);
      const len = toU64(c.len, `${name}.len`);
      const writable = toWritable(c.writable, name);
      return (batch) => call(() => batch.deviceMap(index, r, offset, object, fileOffset, len, writable));
    }
    case 'deviceUnmap': {
      const r = resolve.region(c.region, `${name}.region`);
      const offset = toU64(c.offset, `${name}.offset`);
      const len = toU64(c.len, `${name}.len`);
      return (batch) => call(() => batch.deviceUnmap(index, r, offset, len));
    }
    case 'attachPartition':
      throw invalidArgValue(
        `${name} attaches a partition, which a batch cannot do: a refused attach discards only the new partition, so the batch could not stay all or nothing; call manager.attachPartition() on its own`,
      );
    default:
      throw unknownKind(change, name);
  }
}

/** @internal `manager.apply(changes)`: one native request for the whole batch. */
export async function applyChanges(manager: InstanceType<typeof native.NativeGuestMemoryManager>, changes: unknown, resolve: PlanResolvers): Promise<Plan> {
  const batch = nativeBatch(changes, resolve);
  return nativeJson(await settle(call(() => manager.applyBatch(batch))));
}

/** @internal `manager.plan(changes)`: the dry run of a batch. */
export async function planChanges(manager: InstanceType<typeof native.NativeGuestMemoryManager>, changes: unknown, resolve: PlanResolvers): Promise<PlanPreview> {
  const batch = nativeBatch(changes, resolve);
  return nativeJson(await settle(call(() => manager.planBatch(batch))));
}

/** @internal */
export async function flatView(manager: InstanceType<typeof native.NativeGuestMemoryManager>): Promise<FlatEntry[]> {
  return nativeJson(await settle(call(() => manager.flatView())));
}
