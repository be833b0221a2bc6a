// Type-level tests of the public API, compiled (never run) by `npm run lint`: the types accept
// what the runtime accepts, name what it returns, and reject what it rejects. A `@ts-expect-error`
// line fails the compile when its line stops being an error.
import {
  type ErrorCode,
  type FlatEntry,
  type Plan,
  type PlanChange,
  type PlanPreview,
  type PlannedOp,
  DeviceMemoryControl,
  DeviceMemoryRegion,
  ERROR_CODES,
  GuestMemory,
  GuestMemoryBuilder,
  GuestMemoryErrorKind,
  GuestMemoryManager,
  KvmPartition,
  MemoryLayout,
  type MemoryLayoutJson,
  MembackingError,
  Mappable,
  RamVisibility,
  RecordingPartition,
  SnapshotError,
  MigrationError,
  type MigrationInfo,
  type MigratedFrom,
  type LazyRestoreStats,
  type MemoryRange,
  type RestoredWindow,
  type SnapshotChain,
  type SnapshotInfo,
  readSnapshot,
  snapshotSupport,
  SparseMapping,
  Vtl,
  VcpuMode,
  range,
  type PageFaultHandler,
} from '../../ts/index';

declare const manager: GuestMemoryManager;
declare const window: DeviceMemoryControl;
declare const region: DeviceMemoryRegion;
declare const object: Mappable;
declare const kvm: KvmPartition;

export function pageFaultAnswers(mapping: SparseMapping): void {
  // A failure kind as the enum member or as its string, as the runtime accepts both.
  const byEnum: PageFaultHandler = () => ({ fail: GuestMemoryErrorKind.VtlProtected });
  const byString: PageFaultHandler = () => ({ fail: 'OutOfRange', message: 'not here' });
  GuestMemory.fromSparseMapping(mapping, { pageFault: () => ({ fail: 'NotPrivate' }) });
  // @ts-expect-error: not a GuestMemoryErrorKind.
  GuestMemory.fromSparseMapping(mapping, { pageFault: () => ({ fail: 'Gone' }) });
  void [byEnum, byString];
}

export async function visibility(): Promise<void> {
  const control = manager.ramVisibilityControl();
  // An enum member and its string value are both accepted, as at runtime.
  await control.setRamVisibility(range(0xa0000, 0xc0000), RamVisibility.ReadOnly);
  await control.setRamVisibility(range(0xa0000, 0xc0000), 'ReadOnly');
  await control.setRamVisibility({ start: 0xa0000n, end: 0xc0000 }, 'Unmapped');
  // @ts-expect-error: not a visibility.
  await control.setRamVisibility(range(0xa0000, 0xc0000), 'Hidden');
}

export async function partitions(): Promise<void> {
  await manager.attachPartition(Vtl.Vtl0, new RecordingPartition());
  await manager.attachPartition(2, kvm);
  // @ts-expect-error: there is no VTL 3.
  await manager.attachPartition(3, kvm);
  await kvm.createVcpu({ mode: 'Long', cpl: 3 });
  await kvm.createVcpu({ mode: VcpuMode.Real });
  // Registers as bigints or numbers (as every u64 input); one given as undefined is not named.
  const vcpu = await kvm.createVcpu({ pageTables: range(0x200000, 0x600000) });
  vcpu.setRegisters({ rax: 1, rbx: 2n, rip: undefined });
  vcpu.setRegisters(vcpu.getRegisters());
  // @ts-expect-error: not a register.
  vcpu.setRegisters({ rzz: 1n });
  // @ts-expect-error: a register value is a number or a bigint.
  vcpu.setRegisters({ rax: '1' });
}

export async function plans(): Promise<void> {
  const changes: PlanChange[] = [
    { kind: 'ramVisibility', range: range(0xa0000, 0xc0000), visibility: 'ReadWrite' },
    { kind: 'deviceMapToGuest', window, gpa: 3n << 30n, writable: true },
    { kind: 'deviceUnmapFromGuest', window },
    { kind: 'deviceMap', region, offset: 0, object, fileOffset: 0, len: 0x1000, writable: false },
    { kind: 'deviceUnmap', region, offset: 0, len: 0x1000 },
    { kind: 'attachPartition', vtl: Vtl.Vtl2, partition: kvm },
  ];
  for (const change of changes) {
    const plan: { flatView: FlatEntry[]; ops: PlannedOp[] } = await manager.plan(change);
    void plan;
  }
  // A batch: applied, or planned as a whole.
  const applied: Plan = await manager.apply(changes.slice(0, 5));
  const preview: PlanPreview = await manager.plan(changes.slice(0, 5));
  const ops: PlannedOp[] = applied.ops.concat(preview.ops);
  void ops;
  // @ts-expect-error: apply takes a list of changes.
  await manager.apply(changes[0]);
  // @ts-expect-error: a device window's region is not its control half.
  const wrongHalf: PlanChange = { kind: 'deviceMap', region: window, offset: 0, object, fileOffset: 0, len: 1, writable: true };
  // @ts-expect-error: a partition is a RecordingPartition or a KvmPartition, not any object.
  const notAPartition: PlanChange = { kind: 'attachPartition', vtl: Vtl.Vtl0, partition: {} };
  void [wrongHalf, notAPartition];
}

export function errorCodes(error: MembackingError): void {
  const code: ErrorCode = error.code;
  const known: readonly ErrorCode[] = ERROR_CODES;
  const errno: ErrorCode = 'ENOMEM';
  // @ts-expect-error: the list of codes is closed.
  const unknown: ErrorCode = 'ERR_SOMETHING_ELSE';
  // @ts-expect-error: not an errno name.
  const notErrno: ErrorCode = 'EWHATEVER';
  // Linux errno names the runtime produces that Node's os.constants.errno lacks.
  const linuxOnly: ErrorCode[] = ['EHWPOISON', 'EUNATCH', 'EREMOTEIO', 'ESHUTDOWN', 'ENOTRECOVERABLE'];
  // @ts-expect-error: a Windows-only name; an errno code is an `E…` name.
  const windowsOnly: ErrorCode = 'WSAEINTR';
  void [code, known, errno, unknown, notErrno, linuxOnly, windowsOnly];
}

export async function builder(): Promise<GuestMemoryManager> {
  return new GuestMemoryBuilder().x86LegacySupport(true).build(MemoryLayout.new(1n << 30n, [range(3n << 30n, 4n << 30n)]));
}

export async function snapshots(layout: MemoryLayout): Promise<void> {
  const tracking = manager.dirtyTracking();
  await tracking.start();
  const ranges: MemoryRange[] = await tracking.take();
  const info: SnapshotInfo = await manager.snapshot('/tmp/s', { base: '/tmp/b', onProgress: (done: bigint, total: bigint) => void [done, total] });
  const bytes: bigint = info.bytes;
  const extents: number = info.extents;
  const restored = await GuestMemoryBuilder.restore('/tmp/s', { mode: 'lazy', layout, windowBackings: { fb: object }, startDirtyTracking: true });
  await GuestMemoryBuilder.restore('/tmp/s', { windowBackings: [{ window: 'fb', offset: 0x1000n, object }, { window: 'fb', object }] });
  // @ts-expect-error: the modes are 'copy' and 'lazy'.
  await GuestMemoryBuilder.restore('/tmp/s', { mode: 'eager' });
  const windows: RestoredWindow[] = restored.restoredWindows();
  const control: DeviceMemoryControl = windows[0]!.control;
  const stats: LazyRestoreStats | undefined = await restored.lazyRestore?.done;
  const chain: SnapshotChain = await readSnapshot('/tmp/s');
  const visibility: `${RamVisibility}` = chain.chain[0]!.manifest.ramRegions[0]!.visibility;
  const lazy: boolean = snapshotSupport().lazyRestore;
  const corrupt: ErrorCode = 'ERR_SNAPSHOT_CORRUPT';
  const offset: bigint | undefined = new SnapshotError('ERR_SNAPSHOT_CORRUPT', 'x').offset;
  void [ranges, bytes, extents, control, stats, visibility, lazy, corrupt, offset];
}

export async function migration(layout: MemoryLayout, socket: import('node:net').Socket): Promise<void> {
  const info: MigrationInfo = await manager.migrate(socket, {
    pause: async () => Buffer.from('registers'),
    maxRounds: 8,
    maxDowntimeMs: 50n,
    onProgress: (round: number, bytes: bigint) => void [round, bytes],
    signal: AbortSignal.timeout(1000),
  });
  await manager.migrate(socket, { pause: () => undefined });
  const perRound: bigint[] = info.bytesPerRound;
  const downtime: number = info.downtimeMs;
  const converged: boolean = info.converged;
  // @ts-expect-error: pause is required (it stops the vCPUs).
  await manager.migrate(socket, {});
  // @ts-expect-error: the payload is bytes.
  await manager.migrate(socket, { pause: () => 'registers' });
  // @ts-expect-error: a stream, not a path.
  await manager.migrate('/tmp/socket', { pause: () => undefined });
  const arrived = await GuestMemoryBuilder.migrateFrom(socket, { layout, windowBackings: { fb: object }, onProgress: (round, bytes) => void [round + 1, bytes + 1n] });
  const from: MigratedFrom | null = arrived.migratedFrom;
  const payload: Uint8Array | null | undefined = from?.payload;
  const windows: RestoredWindow[] = arrived.restoredWindows();
  // @ts-expect-error: a migration's destination has no restore mode.
  await GuestMemoryBuilder.migrateFrom(socket, { mode: 'lazy' });
  const error = new MigrationError('ERR_MIGRATION_PROTOCOL', 'x');
  const side: 'source' | 'destination' | undefined = error.detectedBy;
  const phase: 'handshake' | 'rounds' | 'final' | 'completing' | undefined = error.phase;
  const remainder: bigint | undefined = error.remainderBytes;
  const codes: ErrorCode[] = ['ERR_MIGRATION_ABORTED', 'ERR_MIGRATION_PROTOCOL', 'ERR_MIGRATION_DOWNTIME', 'ERR_MIGRATION_IN_PROGRESS'];
  void [perRound, downtime, converged, payload, windows, side, phase, remainder, codes];
}

/** `MemoryLayout#toJSON()` names its fields (u64 as strings, nullable figures) and reads back. */
export function layoutJson(layout: MemoryLayout): MemoryLayout {
  const json: MemoryLayoutJson = layout.toJSON();
  const size: string = json.ramSize;
  const vnode: number | undefined = json.ram[0]?.vnode;
  // @ts-expect-error a figure that may be absent is null, not a string
  const end: string = json.endOfRamOrMmio;
  // @ts-expect-error u64 figures are '0x…' strings, not bigints
  const bytes: bigint = json.endOfRam;
  void [size, vnode, end, bytes];
  return MemoryLayout.fromJSON(json);
}
