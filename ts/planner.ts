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
  resolve: PlanResolvers,
): Promise<{ flatView: FlatEntry[]; ops: PlannedOp[] }> {
  if (typeof change !== 'object' || change === null) throw invalidArgType(`change must be a PlanChange object, got ${describeType(change)}`);
  let pending: Promise<string>;
  switch (change.kind) {
    case 'ramVisibility': {
      const r = toRange(change.range, 'change.range');
      const v = toVisibility(change.visibility, 'change.visibility');
      pending = call(() => manager.planRamVisibility(BigUint64Array.from([r.start, r.end]), v));
      break;
    }
    case 'deviceMapToGuest': {
      const w = resolve.window(change.window);
      const gpa = toU64(change.gpa, 'change.gpa');
      if (typeof change.writable !== 'boolean') throw invalidArgType('change.writable must be a boolean');
      pending = call(() => w.planMapToGuest(gpa, change.writable));
      break;
    }
    case 'deviceUnmapFromGuest': {
      const w = resolve.window(change.window);
      pending = call(() => w.planUnmapFromGuest());
      break;
    }
    case 'deviceMap': {
      const r = resolve.region(change.region);
      const offset = toU64(change.offset, 'change.offset');
      const object = resolve.mappable(change.object);
      const fileOffset = toU64(change.fileOffset, 'change.fileOffset');
      const len = toU64(change.len, 'change.len');
      if (typeof change.writable !== 'boolean') throw invalidArgType('change.writable must be a boolean');
      pending = call(() => r.planMap(offset, object, fileOffset, len, change.writable));
      break;
    }
    case 'deviceUnmap': {
      const r = resolve.region(change.region);
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
    default: {
      const kind = (change as { kind?: unknown }).kind;
      const known = 'ramVisibility, deviceMapToGuest, deviceUnmapFromGuest, deviceMap, deviceUnmap, attachPartition';
      if (typeof kind !== 'string') throw invalidArgType(`change.kind must be a string (${known}), got ${describeType(kind)}`);
      throw invalidArgValue(`unknown change kind '${kind}' (${known})`);
    }
  }
  return nativeJson(await settle(pending));
}

/** @internal */
export async function flatView(manager: InstanceType<typeof native.NativeGuestMemoryManager>): Promise<FlatEntry[]> {
  return nativeJson(await settle(call(() => manager.flatView())));
}
