/**
 * The dry-run planner (design.md "pure plan plus applier"): a manager's flat view — what the
 * guest sees, piece by piece — and, for a change, the flat view it would leave and the ordered
 * operations it would carry out (VA-mapper invalidations and partition map/unmap/prefetch/pin
 * calls), each with its reason. Nothing is applied; applying the same change next produces
 * exactly the planned partition calls, in the same order.
 */
import { call, fromNative, invalidArgType, invalidArgValue } from './errors';
import { native } from './native';
import { KvmPartition, nativePartition, type RecordingPartition } from './partition';
import { toRange, trusted, type MemoryRange, type RangeLike } from './range';
import { describeType, toU64, type U64 } from './u64';

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
  op: 'invalidate' | 'map' | 'unmap' | 'prefetch' | 'pin';
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

type NativeFlat = Awaited<ReturnType<typeof native.managerFlatView>>[number];
type NativePlan = Awaited<ReturnType<typeof native.managerPlanRamVisibility>>;

/** @internal */
export function toFlatEntry(e: NativeFlat): FlatEntry {
  return {
    range: trusted(e.range[0]!, e.range[1]!),
    region: e.region ? { id: e.region.id, name: e.region.name } : null,
    backing: e.backingObject !== undefined && e.backingObject !== null ? { object: e.backingObject, fileOffset: e.backingOffset ?? 0n } : null,
    writable: e.writable,
    executable: e.executable,
    hidden: e.hidden.map((h) => ({ id: h.id, name: h.name })),
  };
}

/** @internal */
export function toPlan(p: NativePlan): { flatView: FlatEntry[]; ops: PlannedOp[] } {
  return {
    flatView: p.flatView.map(toFlatEntry),
    ops: p.ops.map((o) => {
      const op: PlannedOp = { op: o.op as PlannedOp['op'], gpa: o.gpa, size: o.size, reason: o.reason };
      if (o.partition !== undefined && o.partition !== null) op.partition = o.partition;
      if (o.writable !== undefined && o.writable !== null) op.writable = o.writable;
      if (o.exec !== undefined && o.exec !== null) op.exec = o.exec;
      return op;
    }),
  };
}

/** A change the manager can plan and apply (one variant per manager operation). */
export type PlanChange =
  /** `ramVisibilityControl().setRamVisibility(range, visibility)`. */
  | { kind: 'ramVisibility'; range: RangeLike; visibility: 'Unmapped' | 'ReadOnly' | 'ReadWrite' }
  /** `window.mapToGuest(gpa, writable)` (`window` is a DeviceMemoryControl). */
  | { kind: 'deviceMapToGuest'; window: object; gpa: U64; writable: boolean }
  /** `window.unmapFromGuest()`. */
  | { kind: 'deviceUnmapFromGuest'; window: object }
  /** `region.map(offset, object, fileOffset, len, writable)` (`region` is a DeviceMemoryRegion, `object` a Mappable). */
  | { kind: 'deviceMap'; region: object; offset: U64; object: object; fileOffset: U64; len: U64; writable: boolean }
  /** `region.unmap(offset, len)`. */
  | { kind: 'deviceUnmap'; region: object; offset: U64; len: U64 }
  /** `attachPartition(vtl, partition)`: the calls into the new partition. */
  | { kind: 'attachPartition'; vtl: 0 | 1 | 2; partition: object };

/** How the manager resolves the objects a change names. @internal */
export interface PlanResolvers {
  window(value: unknown): InstanceType<typeof native.NativeDeviceWindowHalf>;
  region(value: unknown): InstanceType<typeof native.NativeDeviceWindowHalf>;
  mappable(value: unknown): InstanceType<typeof native.NativeMappable>;
}

/** @internal The native planner calls for one change. */
export async function planChange(
  manager: InstanceType<typeof native.NativeGuestMemoryManager>,
  change: PlanChange,
  partitions: ReadonlyArray<RecordingPartition | KvmPartition>,
  resolve: PlanResolvers,
): Promise<{ flatView: FlatEntry[]; ops: PlannedOp[] }> {
  if (typeof change !== 'object' || change === null) throw invalidArgType(`change must be a PlanChange object, got ${describeType(change)}`);
  let pending: Promise<NativePlan>;
  switch (change.kind) {
    case 'ramVisibility': {
      const r = toRange(change.range, 'change.range');
      const v = change.visibility;
      if (v !== 'Unmapped' && v !== 'ReadOnly' && v !== 'ReadWrite') {
        throw typeof v === 'string' ? invalidArgValue(`change.visibility must be a RamVisibility, got '${v}'`) : invalidArgType(`change.visibility must be a RamVisibility, got ${describeType(v)}`);
      }
      pending = call(() => native.managerPlanRamVisibility(manager, BigUint64Array.from([r.start, r.end]), v));
      break;
    }
    case 'deviceMapToGuest': {
      const w = resolve.window(change.window);
      const gpa = toU64(change.gpa, 'change.gpa');
      if (typeof change.writable !== 'boolean') throw invalidArgType('change.writable must be a boolean');
      pending = call(() => native.managerPlanDevice(w, BigUint64Array.from([gpa]), change.writable));
      break;
    }
    case 'deviceUnmapFromGuest': {
      const w = resolve.window(change.window);
      pending = call(() => native.managerPlanDevice(w, null, false));
      break;
    }
    case 'deviceMap': {
      const r = resolve.region(change.region);
      const offset = toU64(change.offset, 'change.offset');
      const object = resolve.mappable(change.object);
      const fileOffset = toU64(change.fileOffset, 'change.fileOffset');
      const len = toU64(change.len, 'change.len');
      if (typeof change.writable !== 'boolean') throw invalidArgType('change.writable must be a boolean');
      pending = call(() => native.managerPlanDeviceMapping(r, offset, len, object, fileOffset, change.writable));
      break;
    }
    case 'deviceUnmap': {
      const r = resolve.region(change.region);
      const offset = toU64(change.offset, 'change.offset');
      const len = toU64(change.len, 'change.len');
      pending = call(() => native.managerPlanDeviceMapping(r, offset, len, null, 0, false));
      break;
    }
    case 'attachPartition': {
      if (change.vtl !== 0 && change.vtl !== 1 && change.vtl !== 2) {
        throw typeof change.vtl === 'number' ? invalidArgValue(`change.vtl must be 0, 1 or 2, got ${change.vtl}`) : invalidArgType(`change.vtl must be 0, 1 or 2, got ${describeType(change.vtl)}`);
      }
      nativePartition(change.partition);
      pending = call(() => native.managerPlanAttach(manager, change.vtl));
      break;
    }
    default: {
      const kind = (change as { kind?: unknown }).kind;
      const known = 'ramVisibility, deviceMapToGuest, deviceUnmapFromGuest, deviceMap, deviceUnmap, attachPartition';
      if (typeof kind !== 'string') throw invalidArgType(`change.kind must be a string (${known}), got ${describeType(kind)}`);
      throw invalidArgValue(`unknown change kind '${kind}' (${known})`);
    }
  }
  let plan: { flatView: FlatEntry[]; ops: PlannedOp[] };
  try {
    plan = toPlan(await pending);
  } catch (error) {
    throw fromNative(error);
  }
  // An attach plans calls into the partition about to be attached (the next indexes).
  const targets =
    change.kind === 'attachPartition'
      ? [...partitions, change.partition as RecordingPartition | KvmPartition, change.partition as RecordingPartition | KvmPartition]
      : partitions;
  addSlots(plan.ops, targets);
  return plan;
}

/** Adds the KVM slot ids each map/unmap would create or delete, per KVM partition. */
function addSlots(ops: PlannedOp[], partitions: ReadonlyArray<RecordingPartition | KvmPartition>): void {
  const byPartition = new Map<KvmPartition, PlannedOp[]>();
  for (const op of ops) {
    if (op.partition === undefined || (op.op !== 'map' && op.op !== 'unmap')) continue;
    const partition = partitions[op.partition];
    if (!(partition instanceof KvmPartition)) continue;
    const list = byPartition.get(partition) ?? [];
    list.push(op);
    byPartition.set(partition, list);
  }
  for (const [partition, list] of byPartition) {
    const calls = BigUint64Array.from(list.flatMap((op) => [op.op === 'map' ? 0n : 1n, op.gpa, op.size]));
    const slots = call(() => native.kvmPredictSlots(nativePartition(partition) as InstanceType<typeof native.NativeKvmPartition>, calls));
    list.forEach((op, i) => {
      op.slots = slots[i]!;
    });
  }
}

/** @internal */
export async function flatView(manager: InstanceType<typeof native.NativeGuestMemoryManager>): Promise<FlatEntry[]> {
  const pending = call(() => native.managerFlatView(manager));
  try {
    return (await pending).map(toFlatEntry);
  } catch (error) {
    throw fromNative(error);
  }
}
