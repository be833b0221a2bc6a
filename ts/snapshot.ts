/**
 * Dirty tracking, snapshots and restores of guest memory (`docs/snapshots.md`): the types the
 * API returns, `DirtyTracking`, `LazyRestore`, the snapshot readers (`readSnapshot`,
 * `verifySnapshot`), `snapshotSupport()`, and the checks of snapshot and restore options. The
 * manager's methods (`dirtyTracking`, `snapshot`, `restoredWindows`, `GuestMemoryBuilder.restore`)
 * are in `manager.ts` and call these.
 */
import { call, invalidArgType, invalidArgValue, settle } from './errors';
import { RestoreModeValues, type RamVisibility, type RestoreMode } from './generated/enums';
import { Mappable, nativeOf } from './guest_memory';
import { nativeLayout, type MemoryLayout } from './layout';
import { native } from './native';
import { nativeJson, type MemoryRange } from './range';
import { checkOptionKeys, describeType, describeValue, toU64, type U64 } from './u64';
import { inspectObject, type InspectOptionsStylized } from './json_view';
import { inspect } from 'node:util';

export type { RestoreMode } from './generated/enums';

type NativeDirtyTracking = InstanceType<typeof native.NativeDirtyTracking>;
type NativeLazy = InstanceType<typeof native.NativeLazyRestore>;
type NativeRestoreOptions = InstanceType<typeof native.NativeRestoreOptions>;
/**
 * `(done, total)` in bytes; fire-and-forget, on this thread. What it throws is an uncaught
 * exception of the process (the operation goes on).
 */
export type ProgressCallback = (done: bigint, total: bigint) => void;

/** What `manager.snapshot()` wrote. Sizes in bytes. */
export interface SnapshotInfo {
  /** The snapshot directory, as given. */
  dir: string;
  /** The snapshot's id (32 hex digits); an incremental snapshot records its base's. */
  id: string;
  /** Bytes of page data written (`memory.bin`). */
  bytes: bigint;
  /** Bytes of all three files. */
  totalBytes: bigint;
  /** Extent records (runs of data pages, and of zero pages in an incremental snapshot). */
  extents: number;
  /** Pages recorded as zeros (incremental snapshots: pages that now read as zeros). */
  zeroPages: number;
  /** Whether it was written on a base. */
  incremental: boolean;
  /**
   * Present when the snapshot was published (it is in place at `dir`) but the fsync of its
   * parent directory after the rename failed: what failed, and that the rename may not survive
   * a crash of the machine until the file system is synced.
   */
  warning?: string;
}

/** Options of `manager.snapshot()`. */
export interface SnapshotOptions {
  /** Write an incremental snapshot on this one: only pages dirtied since it was taken (dirty tracking must have stayed on since). */
  base?: string | undefined;
  /** `(done, total)` bytes of RAM scanned, fire-and-forget on this thread. */
  onProgress?: ProgressCallback | undefined;
}

/** A recorded mapping of a device window (bytes). */
export interface DeviceWindowMapping {
  /** Offset in the window. */
  offset: bigint;
  len: bigint;
  /** Offset in the object that backed it. */
  fileOffset: bigint;
  writable: boolean;
}

/** A device window as a snapshot records it: its placement and mappings, not its data. */
export interface DeviceWindowRecord {
  /** The debug name given to `newRegion` (how restore backings name it). */
  name: string;
  gpa: bigint;
  len: bigint;
  writable: boolean;
  mappings: DeviceWindowMapping[];
}

/** A snapshot's verified manifest (format version 1, `docs/snapshots.md`). */
export interface SnapshotManifest {
  id: string;
  createdUnixMs: number;
  pageSize: number;
  /** The base of an incremental snapshot: its path (relative to this snapshot when possible) and id. */
  base: { path: string; id: string } | null;
  /** Set when dirty tracking was on when it was taken. */
  trackingSession: bigint | null;
  layout: { ram: Array<{ range: MemoryRange; vnode: number }>; mmio: MemoryRange[]; vtl2Range: MemoryRange | null };
  options: { x86LegacySupport: boolean; privateMemory: boolean; transparentHugepages: boolean; vtl0AliasMap: bigint | null; pinMappings: boolean; prefetchRam: boolean };
  ramSize: bigint;
  /** Every RAM region with its offset in the RAM backing and its visibility when the snapshot was taken. */
  ramRegions: Array<{ range: MemoryRange; fileOffset: bigint; visibility: `${RamVisibility}` }>;
  deviceWindows: DeviceWindowRecord[];
  indexBytes: bigint;
  indexCrc32c: number | null;
  memoryBytes: bigint;
  dataPages: number;
  zeroPages: number;
  extents: number;
}

/** A snapshot and its bases, newest first; `pages` is the number of pages a verification checked (null without one). */
export interface SnapshotChain {
  chain: Array<{ dir: string; manifest: SnapshotManifest }>;
  pages: number | null;
}

/** A backing for recorded mappings of a device window. */
export interface WindowBacking {
  /** The window's name (its `newRegion` debug name). */
  window: string;
  /** The offset in the window of the one recorded mapping this backs; omitted: every recorded mapping of the window. */
  offset?: U64 | undefined;
  /** Mapped with each mapping's recorded length, object offset and writability. */
  object: Mappable;
}

/** Options of `GuestMemoryBuilder.restore()`. */
export interface RestoreOptions {
  /** 'copy' (default): every page before the Promise resolves. 'lazy': pages filled on first touch (userfaultfd) and by a background thread. */
  mode?: RestoreMode | undefined;
  /** `(done, total)` bytes of page data restored, fire-and-forget on this thread (lazy: by the background fill). */
  onProgress?: ProgressCallback | undefined;
  /** The layout the snapshot must have been taken of (ERR_SNAPSHOT_LAYOUT otherwise). */
  layout?: MemoryLayout | undefined;
  /** Objects behind the device windows' mappings (a snapshot holds none): by window name, or a list naming mapping offsets. */
  windowBackings?: Record<string, Mappable> | WindowBacking[] | undefined;
  /** Start dirty tracking on the restored manager with this snapshot as the base of the next incremental one. */
  startDirtyTracking?: boolean | undefined;
  /** Lazy mode: fill pages only on first touch until `lazyRestore.startBackground()` (default false). */
  deferBackgroundFill?: boolean | undefined;
}

/** What a restored manager was rebuilt from. */
export interface RestoreInfo {
  /** The snapshot directory, as given. */
  dir: string;
  /** The snapshot's id. */
  id: string;
  /** Snapshots in the chain (1 for a full snapshot). */
  layers: number;
  /** Bytes of page data restored. */
  bytes: bigint;
  mode: RestoreMode;
}

/** Statistics of a lazy restore. */
export interface LazyRestoreStats {
  /** First touches served by the fault handler. */
  faults: number;
  /** Pages filled with snapshot data (by the handler and the background fill). */
  pagesFilled: number;
}

/** Whether lazy restores can run in this process. */
export interface SnapshotSupport {
  /** userfaultfd with kernel-mode faults (for KVM guests) can be created. */
  lazyRestore: boolean;
  /** Why not (the sysctl, the capability, /dev/userfaultfd); null when it can. */
  reason: string | null;
}

/** Opt-in dirty tracking of one manager's guest RAM (off until `start()`; see docs/snapshots.md for what "dirty" means). */
export class DirtyTracking {
  readonly #native: NativeDirtyTracking;

  /** @internal */
  constructor(handle: NativeDirtyTracking) {
    this.#native = handle;
  }

  /** Starts tracking (a no-op when on): writes through GuestMemory and by guests of attached partitions are recorded from now on. */
  async start(): Promise<void> {
    await settle(call(() => this.#native.start()));
  }
  /** Coalesced, ascending page-aligned GPA ranges written since start() or the last take(); resets atomically (a racing write is in this take or the next). ERR_DIRTY_TRACKING_OFF when off. */
  async take(): Promise<MemoryRange[]> {
    return nativeJson(await settle(call(() => this.#native.take())));
  }
  /** Stops tracking (a no-op when off); what was not taken is dropped. */
  async stop(): Promise<void> {
    await settle(call(() => this.#native.stop()));
  }
  /** Whether tracking is on. */
  get active(): boolean {
    return this.#native.active;
  }  /** `util.inspect` form: whether tracking is on. */
  [inspect.custom](depth: number, options: InspectOptionsStylized): string {
    return inspectObject('DirtyTracking', depth, options, () => ({ active: this.active }));
  }
}

/** The background side of a lazy restore (`manager.lazyRestore`). */
export class LazyRestore {
  readonly #native: NativeLazy;
  #done: Promise<LazyRestoreStats> | null = null;

  /** @internal */
  constructor(handle: NativeLazy) {
    this.#native = handle;
  }

  /**
   * Resolves when every page is restored and userfaultfd is no longer involved, with the
   * statistics; rejects with ERR_SNAPSHOT_CORRUPT (the page was filled with zeros) or, when
   * the manager was closed first, ERR_MANAGER_GONE. The same Promise on every access.
   */
  get done(): Promise<LazyRestoreStats> {
    this.#done ??= settle(call(() => this.#native.wait())).then((json) => JSON.parse(json) as LazyRestoreStats);
    return this.#done;
  }
  /** Whether the restore has ended (finished, failed, or stopped by close()). */
  get finished(): boolean {
    return call(() => this.#native.finished);
  }
  /** Faults served and pages filled so far. */
  stats(): LazyRestoreStats {
    return JSON.parse(call(() => this.#native.stats())) as LazyRestoreStats;
  }
  /** Starts the background fill of a restore made with `deferBackgroundFill`. */
  startBackground(): void {
    call(() => this.#native.startBackground());
  }  /** `util.inspect` form: whether it has finished, and its statistics so far. */
  [inspect.custom](depth: number, options: InspectOptionsStylized): string {
    return inspectObject('LazyRestore', depth, options, () => ({ finished: this.finished, ...this.stats() }));
  }
}

/** A directory argument. */
export function toDir(value: unknown, name: string): string {
  if (typeof value !== 'string') throw invalidArgType(`${name} must be a directory path string, got ${describeType(value)}`);
  if (value.length === 0) throw invalidArgValue(`${name} must not be empty`);
  return value;
}

/** An options bag (undefined is empty) whose keys are among `accepted` (`where` names the call). @internal */
export function toOptions(value: unknown, accepted: readonly string[], where: string): Record<string, unknown> {
  if (value === undefined) return {};
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw invalidArgType(`options must be an object, got ${describeType(value)}`);
  checkOptionKeys(value, accepted, where);
  return value as Record<string, unknown>;
}

/** The options of `GuestMemoryBuilder.restore()`. @internal */
export const RESTORE_OPTION_KEYS = ['mode', 'onProgress', 'layout', 'windowBackings', 'startDirtyTracking', 'deferBackgroundFill'] as const satisfies readonly (keyof RestoreOptions)[];

/** An optional `onProgress` function. @internal */
export function toProgress(value: unknown): ProgressCallback | undefined {
  if (value !== undefined && typeof value !== 'function') throw invalidArgType(`options.onProgress must be a function, got ${describeType(value)}`);
  return value as ProgressCallback | undefined;
}

function toFlag(value: unknown, name: string): boolean {
  if (value === undefined) return false;
  if (typeof value !== 'boolean') throw invalidArgType(`${name} must be a boolean, got ${describeType(value)}`);
  return value;
}

/** The checked options of `manager.snapshot()`. @internal */
export function snapshotArgs(dir: unknown, options: unknown): { dir: string; base: string | null; onProgress: ProgressCallback | null } {
  const d = toDir(dir, 'dir');
  const o = toOptions(options, ['base', 'onProgress'], 'snapshot()');
  const base = o.base === undefined ? null : toDir(o.base, 'options.base');
  return { dir: d, base, onProgress: toProgress(o.onProgress) ?? null };
}

/** The native options of a restore, every field checked. @internal */
export function restoreOptions(options: unknown): NativeRestoreOptions {
  const o = toOptions(options, RESTORE_OPTION_KEYS, 'GuestMemoryBuilder.restore()');
  const result = machineOptions(o);
  const mode = o.mode ?? 'copy';
  if (typeof mode !== 'string') throw invalidArgType(`options.mode must be 'copy' or 'lazy', got ${describeType(mode)}`);
  if (!(RestoreModeValues as readonly string[]).includes(mode)) throw invalidArgValue(`options.mode must be 'copy' or 'lazy', got ${describeValue(mode)}`);
  call(() => result.setMode(mode));
  const progress = toProgress(o.onProgress);
  if (progress !== undefined) call(() => result.setOnProgress(progress));
  call(() => result.setStartDirtyTracking(toFlag(o.startDirtyTracking, 'options.startDirtyTracking')));
  call(() => result.setDeferBackgroundFill(toFlag(o.deferBackgroundFill, 'options.deferBackgroundFill')));
  return result;
}

/**
 * Native options with what a rebuilt machine is checked against and backed with (`layout`,
 * `windowBackings`), shared by restores and a migration's destination. @internal
 */
export function machineOptions(o: Record<string, unknown>): NativeRestoreOptions {
  const result = new native.NativeRestoreOptions();
  if (o.layout !== undefined) {
    const layout = nativeLayout(o.layout, 'options.layout');
    call(() => result.setLayout(layout));
  }
  for (const backing of windowBackings(o.windowBackings)) {
    call(() => result.addWindowBacking(backing.window, backing.offset, backing.object));
  }
  return result;
}

type NativeMappable = InstanceType<typeof native.NativeMappable>;

function windowBackings(value: unknown): Array<{ window: string; offset: bigint | null; object: NativeMappable }> {
  if (value === undefined) return [];
  if (Array.isArray(value)) {
    return value.map((entry: unknown, i) => {
      const name = `options.windowBackings[${i}]`;
      if (typeof entry !== 'object' || entry === null) throw invalidArgType(`${name} must be {window, offset?, object}, got ${describeType(entry)}`);
      const e = entry as { window?: unknown; offset?: unknown; object?: unknown };
      const window = e.window;
      if (typeof window !== 'string') throw invalidArgType(`${name}.window must be a string, got ${describeType(window)}`);
      return {
        window,
        offset: e.offset === undefined ? null : toU64(e.offset, `${name}.offset`),
        object: nativeOf<NativeMappable>(e.object, Mappable, `${name}.object`),
      };
    });
  }
  if (typeof value !== 'object' || value === null) throw invalidArgType(`options.windowBackings must be an object of window name → Mappable, or a list, got ${describeType(value)}`);
  return Object.entries(value).map(([window, object]) => ({ window, offset: null, object: nativeOf<NativeMappable>(object, Mappable, `options.windowBackings[${JSON.stringify(window)}]`) }));
}

/**
 * The snapshot in `dir` and its chain of bases, newest first, with every manifest and index
 * verified (what a restore checks before it builds anything). ERR_SNAPSHOT_CORRUPT,
 * ERR_SNAPSHOT_VERSION, ERR_SNAPSHOT_LAYOUT, or an OsError (ENOENT, …).
 */
export async function readSnapshot(dir: string): Promise<SnapshotChain> {
  const d = toDir(dir, 'dir');
  return nativeJson(await settle(call(() => native.readSnapshotChain(d, false, null))));
}

/**
 * As {@link readSnapshot}, and every page of every snapshot of the chain checked against its
 * CRC-32C (a restore checks only the pages it uses). The first mismatch is
 * ERR_SNAPSHOT_CORRUPT naming the file and the offset.
 */
export async function verifySnapshot(dir: string, options: { onProgress?: ProgressCallback | undefined } = {}): Promise<SnapshotChain> {
  const d = toDir(dir, 'dir');
  const progress = toProgress(toOptions(options, ['onProgress'], 'verifySnapshot()').onProgress) ?? null;
  return nativeJson(await settle(call(() => native.readSnapshotChain(d, true, progress))));
}

/** Whether lazy restores can run in this process, and why not. */
export function snapshotSupport(): SnapshotSupport {
  return JSON.parse(native.snapshotSupport()) as SnapshotSupport;
}
