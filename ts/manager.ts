/**
 * The memory manager: `GuestMemoryBuilder` builds a
 * `GuestMemoryManager` for a layout; the manager hands out `GuestMemoryClient`s (lazily mapped
 * guest memory), `RamVisibilityControl`, device windows (`DeviceMemoryMapper`), its
 * `SharedMemoryBacking`, and attaches partitions.
 *
 * Everything that waits on the manager's threads returns a Promise; the JavaScript thread never
 * blocks on them. `close()` tears a manager down; it is also released when garbage collected.
 */
import { call, closedError, invalidArgType, invalidArgValue, MemoryManagerError, settle } from './errors';
import { RamVisibility, Vtl } from './generated/enums';
import { GuestMemory, handleId, issueHandle, Mappable, nativeOf, type IssuedTransferHandle, type TransferHandle } from './guest_memory';
import { nativeLayout, type MemoryLayout } from './layout';
import { native } from './native';
import { nativePartition, type KvmPartition, type RecordingPartition } from './partition';
import { applyChanges, flatView as plannerFlatView, planChange, planChanges, type FlatEntry, type Plan, type PlanChange, type PlanPreview, type PlanResolvers } from './planner';
import { nativeJson, toRange, type MemoryRange, type RangeLike } from './range';
import { checkOptionKeys, describeType, describeValue, toU64, type U64 } from './u64';
import { migrateArgs, migrateFromArgs, overStream, pauseThrough, type MigratedFrom, type MigrateFromOptions, type MigrateOptions, type MigrationInfo, type MigrationStream } from './migration';
import {
  DirtyTracking,
  LazyRestore,
  machineOptions,
  restoreOptions,
  snapshotArgs,
  toDir,
  type DeviceWindowMapping,
  type DeviceWindowRecord,
  type RestoreInfo,
  type RestoreOptions,
  type SnapshotInfo,
  type SnapshotOptions,
} from './snapshot';
import { inspectObject, withViews, type InspectOptionsStylized } from './json_view';
import { inspect } from 'node:util';

export { MemoryBuildError, PartitionAttachError, PartitionMapperError, VaMapperError, MemoryManagerError } from './errors';
export { RamVisibility, Vtl } from './generated/enums';

type NativeManager = InstanceType<typeof native.NativeGuestMemoryManager>;
type NativeBacking = InstanceType<typeof native.NativeSharedMemoryBacking>;
type NativeClient = InstanceType<typeof native.NativeGuestMemoryClient>;
type NativeHalf = InstanceType<typeof native.NativeDeviceWindowHalf>;

const internals = new WeakMap<object, unknown>();
const token = Symbol('membacking-internal');

function rangeArray(value: unknown, name: string): BigUint64Array {
  const r = toRange(value, name);
  return BigUint64Array.from([r.start, r.end]);
}

/** A `Vtl` argument (a number in the enum). @internal */
export function toVtl(value: unknown, name: string): Vtl {
  if (typeof value !== 'number') throw invalidArgType(`${name} must be a Vtl (Vtl.Vtl0 = 0, Vtl.Vtl1 = 1, Vtl.Vtl2 = 2), got ${describeType(value)}`);
  if (!Object.values(Vtl).includes(value)) throw invalidArgValue(`${name} must be Vtl.Vtl0, Vtl.Vtl1 or Vtl.Vtl2, got ${describeValue(value)}`);
  return value as Vtl;
}

/** A `RamVisibility` argument (an enum member or its string value). @internal */
export function toVisibility(value: unknown, name: string): RamVisibility {
  const accepted = Object.values(RamVisibility).map((v) => `'${v}'`).join(', ');
  if (typeof value !== 'string') throw invalidArgType(`${name} must be a RamVisibility (${accepted}), got ${describeType(value)}`);
  if (!Object.values(RamVisibility).includes(value as RamVisibility)) throw invalidArgValue(`${name} must be a RamVisibility (${accepted}), got ${describeValue(value)}`);
  return value as RamVisibility;
}

function toBool(value: unknown, name: string): boolean {
  if (typeof value !== 'boolean') throw invalidArgType(`${name} must be a boolean, got ${describeType(value)}`);
  return value;
}

/** The guest-RAM object, to rebuild the same memory in another manager or process. */
export class SharedMemoryBacking {
  #closed = false;
  readonly #native: NativeBacking;

  /** @internal */
  constructor(key: typeof token, handle: NativeBacking) {
    if (key !== token) throw invalidArgType('SharedMemoryBacking cannot be constructed directly: use SharedMemoryBacking.fromMappable or manager.sharedMemoryBacking()');
    this.#native = handle;
    internals.set(this, handle);
  }

  /** Wrap a memfd received from another process (e.g. Mappable.fromFd(3)). */
  static fromMappable(mappable: Mappable): SharedMemoryBacking {
    const m = nativeOf<InstanceType<typeof native.NativeMappable>>(mappable, Mappable, 'mappable');
    return new SharedMemoryBacking(token, call(() => native.NativeSharedMemoryBacking.fromMappable(m)));
  }

  /** The underlying object (the same memfd; its fd can be passed to a child process). */
  mappable(): Mappable {
    return Mappable.wrap(call(() => this.#native.mappable()));
  }

  /** Drop this reference. */
  close(): void {
    this.#closed = true;
    this.#native.close();
  }
  /** `util.inspect` form: open or closed. */
  [inspect.custom](depth: number, options: InspectOptionsStylized): string {
    return inspectObject('SharedMemoryBacking', depth, options, () => ({}), this.#closed);
  }
  [Symbol.dispose](): void {
    this.close();
  }
}

/** Options collector for GuestMemoryManager; setters are chainable, last call wins. */
export class GuestMemoryBuilder {
  #existingBacking: SharedMemoryBacking | null = null;
  #vtl0AliasMap: bigint | null = null;
  #prefetchRam = false;
  #onProgress: PrefetchProgressCallback | null = null;
  #pinMappings = false;
  #x86LegacySupport = false;
  #privateMemory = false;
  #transparentHugepages = false;
  #consumed = false;

  /** All options off. */
  constructor() {}

  /** Throws ERR_CLOSED once build() has consumed this builder (its options are spent). */
  #checkOpen(): void {
    if (this.#consumed) {
      throw Object.assign(closedError('GuestMemoryBuilder'), {
        detail: 'build() consumed this builder, also when the build failed (its options are spent): make a new GuestMemoryBuilder for another manager or another attempt',
      });
    }
  }

  /** Reuse another manager's RAM object instead of allocating. */
  existingBacking(backing: SharedMemoryBacking | null): this {
    this.#checkOpen();
    if (backing !== null && !(backing instanceof SharedMemoryBacking)) throw invalidArgType(`backing must be a SharedMemoryBacking or null, got ${describeType(backing)}`);
    this.#existingBacking = backing;
    return this;
  }
  /** GPA offset (bytes) of the VTL0 alias in a VTL2 partition, or null. */
  vtl0AliasMap(offset: U64 | null): this {
    this.#checkOpen();
    this.#vtl0AliasMap = offset === null ? null : toU64(offset, 'offset');
    return this;
  }
  /**
   * Prefetch RAM when mapping it into partitions. `onProgress(done, total, failure)` (bytes) is
   * called after each prefetched piece of an attach (pieces are populated by several threads;
   * fire-and-forget, on this thread, never keeping the event loop alive); `failure` is null, or
   * the piece that could not be prefetched (not fatal: the guest faults it in on first touch;
   * `inspect().prefetchFailures` keeps the recent ones). Its exceptions are reported as uncaught
   * exceptions of the process.
   */
  prefetchRam(enable: boolean, options: { onProgress?: PrefetchProgressCallback | undefined } = {}): this {
    this.#checkOpen();
    this.#prefetchRam = toBool(enable, 'enable');
    if (typeof options !== 'object' || options === null || Array.isArray(options)) throw invalidArgType(`options must be an object, got ${describeType(options)}`);
    checkOptionKeys(options, ['onProgress'], 'prefetchRam()');
    // Read once: a getter may answer differently each time, and what is kept is what was checked.
    const onProgress: unknown = options.onProgress;
    if (onProgress !== undefined && typeof onProgress !== 'function') {
      throw invalidArgType(`options.onProgress must be a function, got ${describeType(onProgress)}`);
    }
    this.#onProgress = (onProgress as PrefetchProgressCallback | undefined) ?? null;
    return this;
  }
  /** Pin every range mapped into a partition. */
  pinMappings(enable: boolean): this {
    this.#checkOpen();
    this.#pinMappings = toBool(enable, 'enable');
    return this;
  }
  /** Split low RAM into VGA/PAM regions. */
  x86LegacySupport(enable: boolean): this {
    this.#checkOpen();
    this.#x86LegacySupport = toBool(enable, 'enable');
    return this;
  }
  /** Back RAM with private anonymous memory (no shared object). */
  privateMemory(enable: boolean): this {
    this.#checkOpen();
    this.#privateMemory = toBool(enable, 'enable');
    return this;
  }
  /** madvise(HUGEPAGE) private RAM (Linux). */
  transparentHugepages(enable: boolean): this {
    this.#checkOpen();
    this.#transparentHugepages = toBool(enable, 'enable');
    return this;
  }

  /** Build in the original's order; MemoryBuildError. Consumes the builder (reuse → ERR_CLOSED). */
  async build(layout: MemoryLayout): Promise<GuestMemoryManager> {
    const l = nativeLayout(layout);
    this.#checkOpen();
    this.#consumed = true;
    const backing = this.#existingBacking === null ? null : (internals.get(this.#existingBacking) as NativeBacking);
    const pending = call(() =>
      native.buildGuestMemory(l, backing, this.#vtl0AliasMap, this.#prefetchRam, this.#pinMappings, this.#x86LegacySupport, this.#privateMemory, this.#transparentHugepages, nativeProgress(this.#onProgress)),
    );
    return new GuestMemoryManager(token, await settle(pending));
  }

  /** `util.inspect` form: the options set so far, or `closed` once `build()` consumed it. */
  [inspect.custom](depth: number, options: InspectOptionsStylized): string {
    const fields = () => ({
      existingBacking: this.#existingBacking !== null,
      vtl0AliasMap: this.#vtl0AliasMap,
      prefetchRam: this.#prefetchRam,
      pinMappings: this.#pinMappings,
      x86LegacySupport: this.#x86LegacySupport,
      privateMemory: this.#privateMemory,
      transparentHugepages: this.#transparentHugepages,
    });
    return inspectObject('GuestMemoryBuilder', depth, options, fields, this.#consumed);
  }

  /**
   * A manager rebuilt from the snapshot in `dir` and its chain of bases: the same layout,
   * build options, RAM contents, visibility and (placed) device windows, with the backings
   * `options.windowBackings` gives; get the windows with `manager.restoredWindows()`. Checks
   * every manifest and index first; ERR_SNAPSHOT_CORRUPT (file, offset), ERR_SNAPSHOT_VERSION,
   * ERR_SNAPSHOT_LAYOUT (what differs, also for `options.layout`), ERR_UNSUPPORTED for a lazy
   * restore without userfaultfd (`reason`; see `snapshotSupport()`), OsError (ENOENT, …).
   * Nothing is left half-built. A lazy restore's progress is `manager.lazyRestore`.
   */
  static async restore(dir: string, options: RestoreOptions = {}): Promise<GuestMemoryManager> {
    const d = toDir(dir, 'dir');
    const nativeOptions = restoreOptions(options);
    const restored = await settle(call(() => native.restoreGuestMemory(d, nativeOptions)));
    const lazy = restored.takeLazy();
    const info = nativeJson<RestoreInfo>(restored.infoJson);
    return new GuestMemoryManager(token, restored.takeManager(), { info, migrated: null, windows: rebuiltWindows(restored), lazy: lazy === null ? null : new LazyRestore(lazy) });
  }

  /**
   * The destination of `manager.migrate()`: a manager of the machine arriving over `stream`
   * (same layout, build options, RAM contents, visibility and placed device windows, backed by
   * `options.windowBackings`; get them with `manager.restoredWindows()`), ready to attach a
   * partition; `manager.migratedFrom` has the figures and the source's payload. Nothing is
   * left built on failure: ERR_MIGRATION_ABORTED (the stream failed or closed, the source
   * failed — `cause` — or `options.signal` aborted), ERR_MIGRATION_PROTOCOL (a bad frame or
   * version: `what`, `offset`, `detectedBy`), ERR_SNAPSHOT_LAYOUT (not `options.layout`, or a
   * backing for a window mapping the source does not have), ERR_MIGRATION_IN_PROGRESS (a
   * migration is running over `stream`: one per stream at a time). The stream is the caller's: it is
   * left open and paused, with anything sent after the migration put back.
   */
  static async migrateFrom(stream: MigrationStream, options: MigrateFromOptions = {}): Promise<GuestMemoryManager> {
    const args = migrateFromArgs(stream, options);
    const nativeOptions = machineOptions(args.options);
    const built = await overStream(args.stream, args.signal, (channel) => settle(call(() => native.migrateGuestMemory(channel, nativeOptions, args.onProgress))));
    const payload = built.takePayload();
    const migrated: MigratedFrom = { ...nativeJson<Omit<MigratedFrom, 'payload'>>(built.infoJson), payload: payload === null ? null : new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength) };
    return new GuestMemoryManager(token, built.takeManager(), { info: null, migrated, windows: rebuiltWindows(built), lazy: null });
  }
}

/** The device windows a restore or a migration recreated, with their halves. */
function rebuiltWindows(built: InstanceType<typeof native.NativeRestoredManager>): RestoredWindow[] {
  const halves = built.takeWindowHalves();
  const records = nativeJson<Array<DeviceWindowRecord & { missing: DeviceWindowMapping[] }>>(built.windowsJson);
  return records.map((record, i) => ({
    ...record,
    control: new DeviceMemoryControl(token, halves[2 * i]!),
    region: new DeviceMemoryRegion(token, halves[2 * i + 1]!),
  }));
}

/** A device window a restore recreated, placed where it was: as recorded, its halves, and the recorded mappings no backing was given for (map them with `region`). */
export interface RestoredWindow extends DeviceWindowRecord {
  /** Recorded mappings without a backing: map them with `region.map(offset, object, fileOffset, len, writable)`. */
  missing: DeviceWindowMapping[];
  /** The placement half (the window stays while the manager holds it; closing both halves removes it). */
  control: DeviceMemoryControl;
  /** The mapping half. */
  region: DeviceMemoryRegion;
}

/** A piece of RAM that could not be prefetched into a partition. */
export interface PrefetchFailure {
  /** The partition mapper's index (registration order). */
  partition: number;
  range: MemoryRange;
  /** The OS error number, or null when the partition's error carries none. */
  errno: number | null;
  message: string;
}

/** `prefetchRam`'s progress callback: bytes done and in all, and the failed piece, if any. */
export type PrefetchProgressCallback = (done: bigint, total: bigint, failure: PrefetchFailure | null) => void;

/** What `inspect()` reports: the manager's regions, its active mappings and its VA mappers. */
export interface ManagerSnapshot {
  aliasOffset: bigint | null;
  pinMappings: boolean;
  mapperCount: number;
  regions: Array<{
    id: number;
    name: string;
    range: MemoryRange;
    priority: number;
    dmaTarget: boolean;
    mapParams: { writable: boolean; executable: boolean; prefetch: boolean } | null;
    active: boolean;
    mappings: Array<{ rangeInRegion: MemoryRange; fileOffset: bigint; writable: boolean }>;
  }>;
  mappings: Array<{ range: MemoryRange; fileOffset: bigint; writable: boolean; dmaTarget: boolean; activeMappers: number[] }>;
  /** Partition mappers in registration order (offset bytes). */
  partitions: Array<{ offset: bigint; pinMappings: boolean }>;
  /** Prefetch failures: the most recent (oldest first) and how many there were in all. */
  prefetchFailures: { recent: PrefetchFailure[]; count: number };
}

/** Wraps `onProgress` for the binding, which passes each report as JSON `{done, total, failure}`. */
function nativeProgress(onProgress: PrefetchProgressCallback | null): ((report: string) => void) | null {
  if (onProgress === null) return null;
  return (report: string) => {
    const r = nativeJson<{ done: bigint; total: bigint; failure: PrefetchFailure | null }>(report);
    onProgress(r.done, r.total, r.failure);
  };
}

/** What a restore or a migration built besides the manager. */
interface Restored {
  info: RestoreInfo | null;
  migrated: MigratedFrom | null;
  windows: RestoredWindow[];
  lazy: LazyRestore | null;
}
/** How planned and batched changes name their windows, regions and objects. */
const resolvers: PlanResolvers = {
  window: (window, name) => {
    const handle = window instanceof DeviceMemoryControl ? (internals.get(window) as NativeHalf | undefined) : undefined;
    if (handle === undefined) throw invalidArgType(`${name} must be a DeviceMemoryControl, got ${describeType(window)}`);
    return handle;
  },
  region: (region, name) => {
    const handle = region instanceof DeviceMemoryRegion ? (internals.get(region) as NativeHalf | undefined) : undefined;
    if (handle === undefined) throw invalidArgType(`${name} must be a DeviceMemoryRegion, got ${describeType(region)}`);
    return handle;
  },
  mappable: (object, name) => nativeOf<InstanceType<typeof native.NativeMappable>>(object, Mappable, name),
};

/** Owns guest RAM, the region/mapping managers and their thread. */
export class GuestMemoryManager {
  #native: NativeManager | null;
  readonly #restored: Restored | null;

  /** @internal */
  constructor(key: typeof token, handle: NativeManager, restored: Restored | null = null) {
    if (key !== token) throw invalidArgType('GuestMemoryManager cannot be constructed directly: use GuestMemoryBuilder#build');
    this.#native = handle;
    this.#restored = restored;
    internals.set(this, handle);
  }

  /** Calls the binding with the open manager; the closed error is thrown as is (not re-translated). */
  #call<T>(f: (n: NativeManager) => T): T {
    const n = this.#n();
    return call(() => f(n));
  }

  #n(): NativeManager {
    if (this.#native === null) throw new MemoryManagerError('ERR_MANAGER_GONE', 'the memory manager is closed');
    return this.#native;
  }

  /** Handle to obtain guest memory (any number, sync). */
  client(): GuestMemoryClient {
    return new GuestMemoryClient(token, this.#call((n) => n.client()));
  }
  /** Creates device windows (sync). */
  deviceMemoryMapper(): DeviceMemoryMapper {
    return new DeviceMemoryMapper(token, this.#call((n) => n.deviceMemoryMapper()));
  }
  /** Controls visibility of the RAM regions (sync). */
  ramVisibilityControl(): RamVisibilityControl {
    return new RamVisibilityControl(token, this.#call((n) => n.ramVisibilityControl()));
  }
  /** The same RAM memfd (not a copy); null in private mode. */
  sharedMemoryBacking(): SharedMemoryBacking | null {
    const handle = this.#call((n) => n.sharedMemoryBacking());
    return handle ? new SharedMemoryBacking(token, handle) : null;
  }
  /**
   * Map all active regions into `partition` (alias mapper first for Vtl2); PartitionAttachError.
   * A partition is attached once: attaching one that is attached (to this manager at any VTL, or to
   * another open manager) throws ERR_ALREADY_ATTACHED before any partition call.
   * `remoteProcess` exists for parity with the original and always throws ERR_UNSUPPORTED on Linux.
   */
  async attachPartition(vtl: Vtl, partition: RecordingPartition | KvmPartition, options: { remoteProcess?: number | undefined } = {}): Promise<void> {
    const v = toVtl(vtl, 'vtl');
    const handle = nativePartition(partition);
    if (typeof options !== 'object' || options === null || Array.isArray(options)) throw invalidArgType(`options must be an object, got ${describeType(options)}`);
    checkOptionKeys(options, ['remoteProcess'], 'attachPartition()');
    const remote = options.remoteProcess;
    if (remote !== undefined && (typeof remote !== 'number' || !Number.isInteger(remote) || remote < 0 || remote > 0xffff_ffff)) {
      throw invalidArgType(`remoteProcess must be a process id, got ${describeType(remote)}`);
    }
    const manager = this.#n();
    await settle(call(() => manager.attachPartition(v, handle, remote)));
  }
  /** Release RAM pages in range (bytes, page-aligned, inside RAM): private → zeros; memfd → hole. */
  async decommitRam(range: RangeLike): Promise<void> {
    const r = rangeArray(range, 'range');
    await settle(this.#call((n) => n.decommitRam(r)));
  }
  /** Snapshot of regions, mappings and mappers. */
  async inspect(): Promise<ManagerSnapshot> {
    return nativeJson(await settle(this.#call((n) => n.inspect())));
  }
  /** The RAM regions as built, with their offsets in the RAM object (bytes). */
  ramRegions(): Array<{ range: MemoryRange; fileOffset: bigint }> {
    return nativeJson(this.#call((n) => n.ramRegions()));
  }
  /** The current flat view: what the guest sees, piece by piece, in address order. */
  async flatView(): Promise<FlatEntry[]> {
    return plannerFlatView(this.#n());
  }
  /**
   * The flat view and ordered operations `change` would produce; nothing is applied. Given an
   * array, the dry run of `apply(changes)`: the netted operations of the batch and the flat view
   * it would leave.
   */
  async plan(change: PlanChange | PlanChange[]): Promise<PlanPreview> {
    if (Array.isArray(change)) return planChanges(this.#n(), change, resolvers);
    return planChange(this.#n(), change, resolvers);
  }
  /**
   * Applies several changes in one request to the manager thread, all or nothing: they are
   * planned together in order, each in the state the ones before it leave; if one is refused,
   * nothing is applied and the error (the one that change makes on its own) carries its index
   * in `changeIndex`. The combined plan is netted — what a later change of the batch undoes is
   * not carried out (a region hidden and shown again, a window placed and removed again) — and
   * resolves with the operations carried out. A partition that refuses a call poisons the
   * manager, as for a single change. `attachPartition` cannot be batched.
   */
  async apply(changes: PlanChange[]): Promise<Plan> {
    return applyChanges(this.#n(), changes, resolvers);
  }
  /** Opt-in dirty tracking of guest RAM (never on by default; see docs/snapshots.md for what it sees). */
  dirtyTracking(): DirtyTracking {
    return new DirtyTracking(this.#call((n) => n.dirtyTracking()));
  }
  /**
   * Writes a snapshot to `dir` (created; an existing snapshot or empty directory there is
   * replaced atomically, so a crash leaves the old one or the new one). Anything else at `dir`
   * is refused before anything is written, with an OsError (`ENOTEMPTY` for a directory that
   * holds other files than a snapshot's, `EEXIST` for a file or symbolic link; `op` 'replace',
   * `path`, `what`): choose an empty or new directory, or remove it first. With
   * `options.base`, only the pages dirtied since that snapshot (dirty tracking must have stayed on since it was taken:
   * ERR_DIRTY_TRACKING_OFF otherwise). Stop the vCPUs for a consistent image. Waits for a lazy
   * restore of this manager to finish first. When the snapshot is in place but the directory
   * holding it could not be fsynced afterwards, it resolves with `warning` set.
   */
  async snapshot(dir: string, options: SnapshotOptions = {}): Promise<SnapshotInfo> {
    const { dir: d, base, onProgress } = snapshotArgs(dir, options);
    return nativeJson(await settle(this.#call((n) => n.snapshot(d, base, onProgress))));
  }
  /** What this manager received when `GuestMemoryBuilder.migrateFrom()` built it; null otherwise. */
  get migratedFrom(): MigratedFrom | null {
    const migrated = this.#restored?.migrated ?? null;
    return migrated === null ? null : withViews({ ...migrated, bytesPerRound: [...migrated.bytesPerRound] });
  }
  /**
   * Live-migrates this manager's guest memory over `stream` to a `GuestMemoryBuilder.migrateFrom()`
   * at the other end, while the guest keeps running (pre-copy; `docs/migration.md`): every page
   * holding data, then round after round the pages dirtied meanwhile, until the rest fits the
   * downtime budget at the measured bandwidth or `maxRounds` ran out; then `options.pause()`
   * (which must stop every writer of guest memory), the rest, the payload `pause` returned and
   * the final configuration. Resolves when the destination has acknowledged; the guest stays
   * paused (it now runs at the destination). Dirty tracking is started for the migration and
   * stopped after it, unless it was on. On failure this manager is unchanged (resume the guest
   * if `pause` ran — unless the error's phase is 'completing': the destination may own the
   * guest): ERR_MIGRATION_ABORTED (`phase`, `cause`), ERR_MIGRATION_PROTOCOL,
   * ERR_MIGRATION_DOWNTIME (before pausing), ERR_MIGRATION_IN_PROGRESS (one migration per
   * manager, and one per stream), ERR_DIRTY_TRACKING_OFF (tracking stopped meanwhile). The stream is not
   * encrypted or authenticated: use an SSH or TLS stream across machines. It is left open and
   * paused.
   */
  async migrate(stream: MigrationStream, options: MigrateOptions): Promise<MigrationInfo> {
    const args = migrateArgs(stream, options);
    const n = this.#n();
    return overStream(args.stream, args.signal, async (channel) =>
      nativeJson<MigrationInfo>(await settle(call(() => n.migrate(channel, pauseThrough(channel, args.pause), args.maxRounds, args.maxDowntimeMs, args.onProgress)))),
    );
  }
  /** The device windows a restore recreated (the same objects each call); empty for a built manager. */
  restoredWindows(): RestoredWindow[] {
    return this.#restored === null ? [] : withViews([...this.#restored.windows]);
  }
  /** What this manager was restored from; null for a built manager. */
  get restoredFrom(): RestoreInfo | null {
    const info = this.#restored?.info ?? null;
    return info === null ? null : withViews({ ...info });
  }
  /** The lazy restore still filling (or having filled) this manager's RAM; null unless restored with mode 'lazy'. */
  get lazyRestore(): LazyRestore | null {
    return this.#restored?.lazy ?? null;
  }
  /**
   * Full teardown; derived objects then throw ERR_MANAGER_GONE. Guest RAM is released; the
   * guest's VA window (address space only) stays reserved until every `GuestMemory` of the
   * manager (and subrange of one) is closed or collected. A lazy restore still running is
   * stopped once guest memory accessors have been cut off (an access racing the close gets the
   * snapshot's data or fails, never zeros); its threads, userfaultfd and snapshot files are
   * released before this resolves, and `lazyRestore.done` rejects with ERR_MANAGER_GONE.
   */
  async close(): Promise<void> {
    const handle = this.#native;
    if (handle === null) return;
    this.#native = null;
    await settle(handle.close());
    if (this.#restored !== null) {
      for (const window of this.#restored.windows) {
        await window.region.close();
        await window.control.close();
      }
    }
  }
  /** `util.inspect` form: open or closed, and the RAM it was built with. */
  [inspect.custom](depth: number, options: InspectOptionsStylized): string {
    return inspectObject('GuestMemoryManager', depth, options, () => {
      const ram = this.ramRegions();
      return { ramRegions: ram.length, ramSize: ram.reduce((sum, region) => sum + region.range.len, 0n) };
    }, this.#native === null);
  }
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** Transferable handle to the manager's mapping manager. */
export class GuestMemoryClient {
  #closed = false;
  readonly #native: NativeClient;

  /** @internal */
  constructor(key: typeof token, handle: NativeClient) {
    if (key !== token) throw invalidArgType('GuestMemoryClient cannot be constructed directly: use manager.client() or GuestMemoryClient.fromHandle');
    this.#native = handle;
  }

  /** This process's accessor 'ram' over the one lazy VA mapper (created on first use). */
  async guestMemory(): Promise<GuestMemory> {
    return GuestMemory.wrap(await settle(call(() => this.#native.guestMemory())));
  }
  /** Token for a worker thread (same VA mapper there); single-use, see TransferHandle. */
  toHandle(): IssuedTransferHandle {
    return issueHandle('GuestMemoryClient', call(() => this.#native.toHandle()));
  }
  /** Reopen in a worker. */
  static fromHandle(handle: TransferHandle): GuestMemoryClient {
    const id = handleId(handle, 'GuestMemoryClient');
    return new GuestMemoryClient(token, call(() => native.NativeGuestMemoryClient.fromHandle(id)));
  }
  /** Drop this reference. */
  close(): void {
    this.#closed = true;
    this.#native.close();
  }
  /** `util.inspect` form: open or closed. */
  [inspect.custom](depth: number, options: InspectOptionsStylized): string {
    return inspectObject('GuestMemoryClient', depth, options, () => ({}), this.#closed);
  }
  [Symbol.dispose](): void {
    this.close();
  }
}

/** Changes RAM region visibility; whole regions only. */
export class RamVisibilityControl {
  #closed = false;
  readonly #native: InstanceType<typeof native.NativeRamVisibilityControl>;

  /** @internal */
  constructor(key: typeof token, handle: InstanceType<typeof native.NativeRamVisibilityControl>) {
    if (key !== token) throw invalidArgType('RamVisibilityControl cannot be constructed directly: use manager.ramVisibilityControl()');
    this.#native = handle;
  }

  /** range must equal one RAM region (else ERR_INVALID_RAM_REGION). */
  async setRamVisibility(range: RangeLike, visibility: RamVisibility | `${RamVisibility}`): Promise<void> {
    const r = rangeArray(range, 'range');
    const v = toVisibility(visibility, 'visibility');
    await settle(call(() => this.#native.setRamVisibility(r, v)));
  }
  /** Drop this reference. */
  close(): void {
    this.#closed = true;
    this.#native.close();
  }
  /** `util.inspect` form: open or closed. */
  [inspect.custom](depth: number, options: InspectOptionsStylized): string {
    return inspectObject('RamVisibilityControl', depth, options, () => ({}), this.#closed);
  }
  [Symbol.dispose](): void {
    this.close();
  }
}

/** Creates fixed-length device windows (priority 0 regions). */
export class DeviceMemoryMapper {
  #closed = false;
  readonly #native: InstanceType<typeof native.NativeDeviceMemoryMapper>;

  /** @internal */
  constructor(key: typeof token, handle: InstanceType<typeof native.NativeDeviceMemoryMapper>) {
    if (key !== token) throw invalidArgType('DeviceMemoryMapper cannot be constructed directly: use manager.deviceMemoryMapper()');
    this.#native = handle;
  }

  /** A window of len bytes: `control` places it at a GPA, `region` maps objects into it (sync). */
  newRegion(len: U64, debugName: string): { control: DeviceMemoryControl; region: DeviceMemoryRegion } {
    const l = toU64(len, 'len');
    if (typeof debugName !== 'string') throw invalidArgType(`debugName must be a string, got ${describeType(debugName)}`);
    const [control, region] = call(() => this.#native.newRegion(l, debugName));
    return { control: new DeviceMemoryControl(token, control!), region: new DeviceMemoryRegion(token, region!) };
  }
  /** Drop this reference. */
  close(): void {
    this.#closed = true;
    this.#native.close();
  }
  /** `util.inspect` form: open or closed. */
  [inspect.custom](depth: number, options: InspectOptionsStylized): string {
    return inspectObject('DeviceMemoryMapper', depth, options, () => ({}), this.#closed);
  }
  [Symbol.dispose](): void {
    this.close();
  }
}

/** The mapping half of a device window (Rust `MappedMemoryRegion`); offsets inside the window. */
export class DeviceMemoryRegion {
  #closed = false;
  readonly #native: NativeHalf;

  /** @internal */
  constructor(key: typeof token, handle: NativeHalf) {
    if (key !== token) throw invalidArgType('DeviceMemoryRegion cannot be constructed directly: use DeviceMemoryMapper#newRegion');
    this.#native = handle;
    internals.set(this, handle);
  }

  /** Window length (bytes). */
  get len(): bigint {
    return call(() => this.#native.len);
  }
  /** Map len bytes of `object` at fileOffset to window offset (bytes). */
  async map(offset: U64, object: Mappable, fileOffset: U64, len: U64, writable: boolean): Promise<void> {
    const o = toU64(offset, 'offset');
    const m = nativeOf<InstanceType<typeof native.NativeMappable>>(object, Mappable, 'object');
    const f = toU64(fileOffset, 'fileOffset');
    const l = toU64(len, 'len');
    const w = toBool(writable, 'writable');
    await settle(call(() => this.#native.map(o, m, f, l, w)));
  }
  /** Remove mappings contained in [offset, offset+len); partial overlap → ERR_UNSUPPORTED. */
  async unmap(offset: U64, len: U64): Promise<void> {
    const o = toU64(offset, 'offset');
    const l = toU64(len, 'len');
    await settle(call(() => this.#native.unmap(o, l)));
  }
  /** Release this half; the window is removed when both halves are closed (resolves once it is). */
  async close(): Promise<void> {
    this.#closed = true;
    await settle(call(() => this.#native.close()));
  }
  /** `util.inspect` form: open or closed, its window length. */
  [inspect.custom](depth: number, options: InspectOptionsStylized): string {
    return inspectObject('DeviceMemoryRegion', depth, options, () => ({ len: this.len }), this.#closed);
  }
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** The placement half of a device window (Rust `MappableGuestMemory`). */
export class DeviceMemoryControl {
  #closed = false;
  readonly #native: NativeHalf;

  /** @internal */
  constructor(key: typeof token, handle: NativeHalf) {
    if (key !== token) throw invalidArgType('DeviceMemoryControl cannot be constructed directly: use DeviceMemoryMapper#newRegion');
    this.#native = handle;
    internals.set(this, handle);
  }

  /** Window length (bytes). */
  get len(): bigint {
    return call(() => this.#native.len);
  }
  /**
   * Place the window at [gpa, gpa+len) (bytes), replacing any earlier placement. As in the
   * original, the earlier placement is removed first: a placement the manager refuses (an invalid
   * range, an overlap) leaves the window unplaced, and its error's `detail` says so. A placement
   * refused because an attached partition has no free memory slot (`ERR_NO_FREE_SLOT`, checked
   * before anything changes) keeps the earlier placement. A `deviceMapToGuest` change of
   * `manager.apply` changes nothing when refused.
   */
  async mapToGuest(gpa: U64, writable: boolean): Promise<void> {
    const g = toU64(gpa, 'gpa');
    const w = toBool(writable, 'writable');
    await settle(call(() => this.#native.mapToGuest(g, w)));
  }
  /** Remove the placement; recorded mappings are kept. */
  async unmapFromGuest(): Promise<void> {
    await settle(call(() => this.#native.unmapFromGuest()));
  }
  /** Release this half (does not unmap by itself); the window is removed when both halves are closed (resolves once it is). */
  async close(): Promise<void> {
    this.#closed = true;
    await settle(call(() => this.#native.close()));
  }
  /** `util.inspect` form: open or closed, its window length. */
  [inspect.custom](depth: number, options: InspectOptionsStylized): string {
    return inspectObject('DeviceMemoryControl', depth, options, () => ({ len: this.len }), this.#closed);
  }
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
