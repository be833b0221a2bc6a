/**
 * The README's main job (`membacking demo`, `npm run demo`): builds 4 GiB of guest RAM around the
 * x86 MMIO gap with x86 legacy support, attaches a `KvmPartition` when `/dev/kvm` opens (a
 * `RecordingPartition` otherwise, and it says why), places a device window (a memfd) in the MMIO
 * gap, runs a 64-bit guest that writes RAM and reads the device window, toggles the VGA window
 * and shows the partition calls it made, then prints the region table, a compact inspect tree and
 * a short registrar example; last, it snapshots the guest, restores it lazily (userfaultfd) into
 * a new manager and a new KVM partition, and the guest's code reads its data back. Everything it
 * creates is closed (and the snapshot removed) before it returns.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { formatSize, layoutRows, table } from './format';
import { Mappable, SparseMapping, type GuestMemory } from '../guest_memory';
import { MemoryLayout } from '../layout';
import { GuestMemoryBuilder, RamVisibility, Vtl, type DeviceMemoryControl, type DeviceMemoryRegion, type GuestMemoryManager, type ManagerSnapshot } from '../manager';
import { KvmPartition, RecordingPartition, guestPrograms, type Vcpu, type VcpuExit } from '../partition';
import { range } from '../range';
import { MemoryRegistrar } from '../registrar';
import { snapshotSupport } from '../snapshot';
import { GiB, KiB, MiB, hex } from '../u64';

/** How to run the demo. */
export interface DemoOptions {
  /** Use a RecordingPartition even where /dev/kvm opens (`--no-kvm`). */
  noKvm?: boolean;
}

const MMIO_GAP = range(3n * GiB, 4n * GiB);
const VGA = range(0xa0000, 0xc0000);
const DEVICE_GPA = 0xd000_0000n;
const DEVICE_LEN = 64n * KiB;
const DEVICE_TEXT = 'membacking device window. ';
const CODE = 0x1000n;
const PAGE_TABLES = range(2n * MiB, 4n * MiB + 8n * KiB);
const SCRATCH = 0x30_0000n;
const PATTERN_KEY = 0x5eed_0000_0000_0000n;
const MASK64 = (1n << 64n) - 1n;

/** Where the guest's part runs: a vCPU of a real VM, or (recording partition) the VMM itself. */
type Runner = { kind: 'kvm'; partition: KvmPartition; vcpu: Vcpu } | { kind: 'recording'; partition: RecordingPartition; reason: string };

/** Runs the demo, writing its report line by line. */
export async function runDemo(print: (line: string) => void, options: DemoOptions = {}): Promise<void> {
  const started = process.hrtime.bigint();
  const cleanup: Array<() => unknown> = [];
  try {
    await demo(print, options, cleanup);
  } finally {
    for (const release of cleanup.reverse()) await release();
  }
  print('');
  print(`Everything closed; the demo took ${Number((process.hrtime.bigint() - started) / 1_000_000n)} ms.`);
}

async function demo(print: (line: string) => void, options: DemoOptions, cleanup: Array<() => unknown>): Promise<void> {
  // ─── 1. Layout ──────────────────────────────────────────────────────────────────────────────
  const layout = MemoryLayout.new(4n * GiB, [MMIO_GAP]);
  print(`== 1. Layout: 4 GiB of RAM around the x86 MMIO gap ${MMIO_GAP} ==`);
  print(indent(table(['kind', 'range', 'size'], layoutRows(layout).map((r) => [r.kind, r.range.toString(), formatSize(r.range.len)]))));

  // ─── 2. Guest memory ────────────────────────────────────────────────────────────────────────
  const manager = await new GuestMemoryBuilder().x86LegacySupport(true).build(layout);
  cleanup.push(() => manager.close());
  const memory = await manager.client().guestMemory();
  cleanup.push(() => memory.close());
  const regions = manager.ramRegions();
  print('');
  print(`== 2. Guest memory: a 4 GiB memfd, lazily mapped, split into ${regions.length} RAM regions (x86 legacy support) ==`);
  print(`  low RAM ${regions[0]!.range}, VGA window ${VGA}, 12 PAM ranges of 16 KiB from 0xc0000, BIOS 0xf0000-0x100000,`);
  print(`  then ${regions.slice(-2).map((r) => `${r.range} (file offset ${hex(r.fileOffset)})`).join(' and ')}`);

  // ─── 3. Partition ───────────────────────────────────────────────────────────────────────────
  const runner = await attachPartition(manager, options, cleanup);
  print('');
  if (runner.kind === 'kvm') {
    const state = runner.partition.inspect();
    print(`== 3. Partition: KvmPartition, a real KVM VM (/dev/kvm): ${state.slots.length} memory slots, one per RAM region; ` + `SLOT_ZAP_ALL quirk ${state.slotZapAllQuirkDisabled ? 'off' : 'on'} ==`);
    print(`  vCPU ${runner.vcpu.id}: 64-bit long mode at CPL 3, identity-mapped page tables at ${PAGE_TABLES}, code at ${hex(CODE)}`);
  } else {
    print(`== 3. Partition: RecordingPartition (${runner.reason}) ==`);
    print('  No vCPU can run without KVM: the VMM does the guest\'s part through GuestMemory, and the');
    print(`  partition calls are shown as recorded (${runner.partition.log().length} map calls at attach, one per RAM region).`);
  }

  // ─── 4. Device window ───────────────────────────────────────────────────────────────────────
  const device = Mappable.allocSharedMemory(DEVICE_LEN, 'demo-device');
  cleanup.push(() => device.close());
  const contents = Buffer.alloc(Number(DEVICE_LEN));
  contents.fill(DEVICE_TEXT);
  writeMappable(device, contents);
  const window = manager.deviceMemoryMapper().newRegion(DEVICE_LEN, 'demo-device');
  cleanup.push(() => closeWindow(window));
  await window.region.map(0, device, 0, DEVICE_LEN, false);
  await window.control.mapToGuest(DEVICE_GPA, false);
  print('');
  print(`== 4. Device window: a 64 KiB memfd filled with "${DEVICE_TEXT.trim()}", placed read-only at ${hex(DEVICE_GPA)} in the MMIO gap ==`);
  print(`  partition call: ${describeCalls(runner, 1)}`);

  // ─── 5. Guest code ──────────────────────────────────────────────────────────────────────────
  print('');
  print(`== 5. ${runner.kind === 'kvm' ? 'Guest code (a few bytes of x86 machine code on the vCPU)' : 'The guest\'s part, done by the VMM through GuestMemory'} ==`);
  for (const base of [MMIO_GAP.start - 4n * KiB, MMIO_GAP.end]) {
    const how = await fillPattern(runner, memory, base, 4n * KiB);
    const matches = countPattern(memory, base, 4n * KiB);
    print(`  ${how} 4 KiB at ${hex(base)} (${base < MMIO_GAP.start ? 'below' : 'above'} the gap) with gpa ^ ${hex(PATTERN_KEY)}; GuestMemory reads back ${matches}/512 matching qwords`);
  }
  const expected = qwordSum(contents);
  const sum = await sumWindow(runner, memory);
  print(`  ${runner.kind === 'kvm' ? 'the guest sums' : 'GuestMemory sums'} the device window's 8192 qwords: ${hex(sum)} (${sum === expected ? 'matches the memfd' : `MISMATCH, expected ${hex(expected)}`})`);
  const copied = await copyQword(runner, memory, DEVICE_GPA, SCRATCH);
  print(`  ${runner.kind === 'kvm' ? 'the guest copies' : 'the VMM copies'} a qword of the window into RAM at ${hex(SCRATCH)}: GuestMemory reads "${copied}"`);

  // ─── 6. VGA toggle ──────────────────────────────────────────────────────────────────────────
  const visibility = manager.ramVisibilityControl();
  cleanup.push(() => visibility.close());
  memory.writeAt(VGA.start, Buffer.from('VGA RAM!'));
  print('');
  print(`== 6. VGA window ${VGA} toggled (a framebuffer device would take it over) ==`);
  clearCalls(runner);
  await visibility.setRamVisibility(VGA, RamVisibility.Unmapped);
  print(`  Unmapped:  ${describeCalls(runner)}`);
  print(`    then ${await probeVga(runner, memory)}`);
  await visibility.setRamVisibility(VGA, RamVisibility.ReadWrite);
  print(`  ReadWrite: ${describeCalls(runner)}`);
  print(`    then ${await probeVga(runner, memory)}`);

  // ─── 7. Region table ────────────────────────────────────────────────────────────────────────
  const snapshot = await manager.inspect();
  print('');
  print('== 7. Regions (manager.inspect()): priority 255 = RAM, 0 = device window ==');
  print(indent(regionTable(snapshot)));

  // ─── 8. Inspect tree ────────────────────────────────────────────────────────────────────────
  print('');
  print('== 8. Inspect tree (compact) ==');
  const tree = {
    manager: { aliasOffset: snapshot.aliasOffset, pinMappings: snapshot.pinMappings, mapperCount: snapshot.mapperCount, partitions: snapshot.partitions, mappings: snapshot.mappings.map(compactMapping) },
    partition: runner.kind === 'kvm' ? compactKvm(runner.partition) : { kind: 'RecordingPartition', calls: runner.partition.log().length },
  };
  for (const line of treeLines(tree, 0)) print(line);

  // ─── 9. Registrar ───────────────────────────────────────────────────────────────────────────
  print('');
  print('== 9. MemoryRegistrar: RAM registered in 2 GiB chunks on first use (registration offset 1 TiB) ==');
  const pieces: string[] = [];
  const registrar = new MemoryRegistrar(layout, 1n << 40n, async (piece) => {
    pieces.push(`${piece} (${formatSize(piece.len)})`);
  });
  for (const [address, len] of [
    [0x1000n, 0x1000n],
    [0x2000n, 0x100000n],
    [4n * GiB, 1n * GiB],
  ] as const) {
    pieces.length = 0;
    const pending = registrar.register(address, len);
    if (pending !== undefined) await pending;
    print(`  register(${hex(address)}, ${hex(len)}): ${pieces.length === 0 ? 'already registered (lock-free fast path)' : `callback for ${pieces.join(', ')}`}`);
  }
  const registered = registrar.inspect();
  print(`  ${registered.chunksRegistered} of ${registered.chunkCount} chunks registered`);

  // ─── 10. Snapshot and lazy restore ──────────────────────────────────────────────────────────
  await snapshotAndRestore(print, runner, manager, memory, device, cleanup);
}

/** Snapshots the guest, restores it lazily into a new manager (and KVM partition), and has the guest read its data back. */
async function snapshotAndRestore(print: (line: string) => void, runner: Runner, manager: GuestMemoryManager, memory: GuestMemory, device: Mappable, cleanup: Array<() => unknown>): Promise<void> {
  const root = mkdtempSync(join(tmpdir(), 'membacking-demo-'));
  cleanup.push(() => rmSync(root, { recursive: true, force: true }));
  const dir = join(root, 'snapshot');
  const support = snapshotSupport();
  const mode = support.lazyRestore ? 'lazy' : 'copy';
  print('');
  print(`== 10. Snapshot, then a ${mode} restore into a new manager${runner.kind === 'kvm' ? ' and a new KVM partition' : ''} ==`);
  const info = await manager.snapshot(dir);
  print(`  manager.snapshot(): ${formatSize(info.bytes)} of page data (only pages that hold data) in ${info.extents} extents, ${formatSize(info.totalBytes)} in ${dir}`);
  if (!support.lazyRestore) print(`  lazy restore unavailable (${support.reason}): restoring by copying`);
  const started = process.hrtime.bigint();
  // The device window's object is the device's: the snapshot records where it was placed, the caller gives it back.
  const restored = await GuestMemoryBuilder.restore(dir, { mode, windowBackings: { 'demo-device': device }, deferBackgroundFill: true });
  cleanup.push(() => restored.close());
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  const [window] = restored.restoredWindows();
  print(`  GuestMemoryBuilder.restore(dir, { mode: '${mode}' }) returned in ${ms.toFixed(1)} ms: ${restored.ramRegions().length} RAM regions, device window "${window?.name}" placed at ${hex(window?.gpa ?? 0n)}`);
  const restoredMemory = await restored.client().guestMemory();
  cleanup.push(() => restoredMemory.close());
  const areas = [MMIO_GAP.start - 4n * KiB, MMIO_GAP.end];
  // Read before a new vCPU writes its page tables, which cover this address.
  print(`  GuestMemory reads the qword steps 5 and 6 left at ${hex(SCRATCH)}: "${restoredMemory.read(SCRATCH, 8n).toString('latin1')}"`);
  if (runner.kind === 'kvm') {
    const partition = await KvmPartition.create();
    cleanup.push(() => partition.close());
    await restored.attachPartition(Vtl.Vtl0, partition);
    const vcpu = await partition.createVcpu({ pageTables: PAGE_TABLES });
    cleanup.push(() => vcpu.close());
    for (const base of areas) {
      const exits = await runGuest(vcpu, restoredMemory, guestPrograms().sumQwords, { rdi: base, rcx: 512n });
      const halves = exits.filter((e): e is Extract<VcpuExit, { kind: 'IoOut' }> => e.kind === 'IoOut').map((e) => BigInt(e.data.readUInt32LE(0)));
      const sum = halves[0]! | (halves[1]! << 32n);
      const expected = qwordSum(memory.read(base, 4n * KiB));
      print(`  the guest's code in the new VM sums its 4 KiB at ${hex(base)}: ${hex(sum)} (${sum === expected ? 'what it wrote before the snapshot' : `MISMATCH, expected ${hex(expected)}`})`);
    }
  } else {
    print('  No vCPU without KVM: GuestMemory reads the data back through the same first-touch path');
    for (const base of areas) print(`  GuestMemory reads 4 KiB at ${hex(base)}: ${countPattern(restoredMemory, base, 4n * KiB)}/512 qwords as written before the snapshot`);
  }
  const lazy = restored.lazyRestore;
  if (lazy !== null) {
    const touched = lazy.stats().faults;
    lazy.startBackground();
    const stats = await lazy.done;
    print(`  first touches served by userfaultfd before the background fill: ${touched} pages${runner.kind === 'kvm' ? ' (the new vCPU\'s page tables and code, the guest\'s reads)' : ''}; the fill then restored the rest (${stats.pagesFilled} pages in all) and unregistered: plain memory from here on`);
  }
}

/** Attaches a KvmPartition (and creates its vCPU) or, without KVM, a RecordingPartition. */
async function attachPartition(manager: GuestMemoryManager, options: DemoOptions, cleanup: Array<() => unknown>): Promise<Runner> {
  let reason = '--no-kvm: KVM not tried';
  if (!options.noKvm) {
    let partition: KvmPartition | null = null;
    try {
      partition = await KvmPartition.create();
    } catch (error) {
      if ((error as { code?: unknown }).code !== 'ERR_KVM_UNAVAILABLE') throw error;
      const cause = (error as { cause?: unknown }).cause;
      reason = `/dev/kvm unavailable: ERR_KVM_UNAVAILABLE: ${(error as Error).message}${cause instanceof Error ? ` (${cause.message})` : ''}`;
    }
    if (partition !== null) {
      const kvm = partition;
      cleanup.push(() => kvm.close());
      await manager.attachPartition(Vtl.Vtl0, kvm);
      const vcpu = await kvm.createVcpu({ pageTables: PAGE_TABLES });
      cleanup.push(() => vcpu.close());
      kvm.takeSlotLog();
      return { kind: 'kvm', partition: kvm, vcpu };
    }
  }
  const recording = new RecordingPartition();
  cleanup.push(() => recording.close());
  await manager.attachPartition(Vtl.Vtl0, recording);
  return { kind: 'recording', partition: recording, reason };
}

/** Writes `data` at the start of a memfd through a temporary mapping. */
function writeMappable(object: Mappable, data: Uint8Array): void {
  const mapping = new SparseMapping(BigInt(data.length));
  try {
    mapping.mapFile(0, data.length, object, 0, true);
    mapping.writeAt(0, data);
  } finally {
    mapping.close();
  }
}

async function closeWindow(window: { control: DeviceMemoryControl; region: DeviceMemoryRegion }): Promise<void> {
  await window.control.unmapFromGuest();
  await window.region.close();
  await window.control.close();
}

/** Runs the guest from CODE with `registers` until it reports on the done port; returns the exits before that. */
async function runGuest(vcpu: Vcpu, memory: GuestMemory, program: Buffer, registers: Parameters<Vcpu['setRegisters']>[0], onRead?: (exit: VcpuExit) => bigint): Promise<VcpuExit[]> {
  const programs = guestPrograms();
  memory.writeAt(CODE, program);
  vcpu.setRegisters({ rip: CODE, ...registers });
  const exits: VcpuExit[] = [];
  for (;;) {
    const exit = await vcpu.run({ timeoutMs: 10_000 });
    if (exit.kind === 'IoOut' && exit.port === programs.donePort) return exits;
    exits.push(exit);
    if (exit.kind === 'MmioRead' && onRead) vcpu.completeRead(onRead(exit));
    else if (exit.kind !== 'IoOut' && exit.kind !== 'MmioWrite') throw new Error(`the guest stopped unexpectedly: ${exit.kind}${'reason' in exit ? ` (${exit.reason})` : ''}`);
  }
}

async function fillPattern(runner: Runner, memory: GuestMemory, base: bigint, len: bigint): Promise<string> {
  if (runner.kind === 'kvm') {
    await runGuest(runner.vcpu, memory, guestPrograms().fillPattern, { rdi: base, rcx: len / 8n, rdx: PATTERN_KEY });
    return 'the guest fills';
  }
  const data = Buffer.alloc(Number(len));
  for (let i = 0; i < data.length; i += 8) data.writeBigUInt64LE((base + BigInt(i)) ^ PATTERN_KEY, i);
  memory.writeAt(base, data);
  return 'GuestMemory fills';
}

function countPattern(memory: GuestMemory, base: bigint, len: bigint): number {
  const data = memory.read(base, len);
  let matches = 0;
  for (let i = 0; i < data.length; i += 8) if (data.readBigUInt64LE(i) === ((base + BigInt(i)) ^ PATTERN_KEY)) matches++;
  return matches;
}

function qwordSum(data: Buffer): bigint {
  let sum = 0n;
  for (let i = 0; i < data.length; i += 8) sum = (sum + data.readBigUInt64LE(i)) & MASK64;
  return sum;
}

async function sumWindow(runner: Runner, memory: GuestMemory): Promise<bigint> {
  if (runner.kind === 'recording') return qwordSum(memory.read(DEVICE_GPA, DEVICE_LEN));
  const exits = await runGuest(runner.vcpu, memory, guestPrograms().sumQwords, { rdi: DEVICE_GPA, rcx: DEVICE_LEN / 8n });
  const halves = exits.filter((e): e is Extract<VcpuExit, { kind: 'IoOut' }> => e.kind === 'IoOut').map((e) => BigInt(e.data.readUInt32LE(0)));
  return halves[0]! | (halves[1]! << 32n);
}

async function copyQword(runner: Runner, memory: GuestMemory, from: bigint, to: bigint): Promise<string> {
  if (runner.kind === 'kvm') await runGuest(runner.vcpu, memory, guestPrograms().loadAddStore, { rdi: from, rsi: to, rdx: 0n });
  else memory.writeAt(to, memory.read(from, 8n));
  return memory.read(to, 8n).toString('latin1');
}

/** What an access to the VGA window does now. */
async function probeVga(runner: Runner, memory: GuestMemory): Promise<string> {
  if (runner.kind === 'kvm') {
    const exits = await runGuest(runner.vcpu, memory, guestPrograms().loadAddStore, { rdi: VGA.start, rsi: SCRATCH, rdx: 0n }, () => 0x4f49_4d4dn);
    const copied = memory.read(SCRATCH, 8n).toString('latin1').replace(/\0/g, '.');
    const read = exits.find((e) => e.kind === 'MmioRead');
    return read && read.kind === 'MmioRead'
      ? `the guest's load at ${hex(VGA.start)} is an MmioRead exit (address ${hex(read.address)}, ${read.size} bytes), completed with "MMIO": RAM at ${hex(SCRATCH)} gets "${copied}"`
      : `the guest's load at ${hex(VGA.start)} reads RAM again: "${copied}"`;
  }
  try {
    return `GuestMemory reads "${memory.read(VGA.start, 8n).toString('latin1')}" at ${hex(VGA.start)} (RAM again)`;
  } catch (error) {
    return `GuestMemory at ${hex(VGA.start)}: ${(error as { code?: string }).code} (the VMM's view follows visibility too)`;
  }
}

function clearCalls(runner: Runner): void {
  if (runner.kind === 'kvm') runner.partition.takeSlotLog();
  else runner.partition.clearLog();
}

/** The partition calls since the last look (the last `last` of them if given), in words. */
function describeCalls(runner: Runner, last?: number): string {
  const words =
    runner.kind === 'kvm'
      ? runner.partition.takeSlotLog().map((e) => {
          const slots = [...e.deleted.map((s) => `deleted slot ${s}`), ...e.created.map((s) => `created slot ${s}`)].join(', ');
          return `${e.op} ${range(e.gpa, e.gpa + e.size)} (${slots || 'no slot change'})`;
        })
      : runner.partition.takeLog().map((c) => `${c.op} ${range(c.gpa, c.gpa + c.size)}${c.op === 'map' ? ` ${c.writable ? 'rw' : 'ro'}` : ''}`);
  const shown = last === undefined ? words : words.slice(-last);
  return shown.length === 0 ? 'no partition call' : shown.join('; ');
}

function regionTable(snapshot: ManagerSnapshot): string {
  const rows = snapshot.regions.map((r) => [String(r.id), r.name, r.range.toString(), formatSize(r.range.len), String(r.priority), r.active ? (r.mapParams?.writable ? 'rw' : 'ro') : '-', r.mappings.map((m) => `+${hex(m.fileOffset)}`).join(' ')]);
  return table(['id', 'name', 'range', 'size', 'prio', 'mapped', 'backing (file offset)'], rows);
}

function compactMapping(m: ManagerSnapshot['mappings'][number]): Record<string, unknown> {
  return { range: m.range.toString(), fileOffset: m.fileOffset, writable: m.writable, dmaTarget: m.dmaTarget, activeMappers: m.activeMappers };
}

function compactKvm(partition: KvmPartition): Record<string, unknown> {
  const state = partition.inspect();
  return {
    kind: 'KvmPartition',
    maxSlots: state.maxSlots,
    slotZapAllQuirkDisabled: state.slotZapAllQuirkDisabled,
    vcpuCount: state.vcpuCount,
    slots: state.slots.map((s) => `${s.slot}: ${range(s.gpa, s.gpa + s.size)}${s.readonly ? ' ro' : ''}`),
  };
}

/** An indented tree, one line per field; long lists show their first and last items. */
function treeLines(value: unknown, depth: number, name?: string): string[] {
  const pad = '  '.repeat(depth);
  const label = name === undefined ? '' : `${name}: `;
  if (Array.isArray(value)) {
    if (value.length === 0) return [`${pad}${label}[]`];
    if (value.every((v) => typeof v !== 'object' || v === null)) {
      const items = value.length > 6 ? [...value.slice(0, 3).map(scalar), `… ${value.length - 5} more …`, ...value.slice(-2).map(scalar)] : value.map(scalar);
      return [`${pad}${label}[${items.join(', ')}]`];
    }
    const shown = value.length > 4 ? [...value.slice(0, 2), null, ...value.slice(-1)] : value;
    return [`${pad}${label}(${value.length})`, ...shown.map((v) => (v === null ? `${pad}  … ${value.length - 3} more` : `${pad}  - ${inline(v)}`))];
  }
  if (typeof value === 'object' && value !== null) {
    return [`${pad}${label.trimEnd()}`.trimEnd(), ...Object.entries(value).flatMap(([k, v]) => treeLines(v, depth + 1, k))].filter((l) => l.trim() !== '');
  }
  return [`${pad}${label}${scalar(value)}`];
}

function inline(value: unknown): string {
  if (typeof value !== 'object' || value === null) return scalar(value);
  if (Array.isArray(value)) return `[${value.map(inline).join(', ')}]`;
  return Object.entries(value)
    .map(([k, v]) => `${k}=${inline(v)}`)
    .join(' ');
}

function scalar(value: unknown): string {
  return typeof value === 'bigint' ? hex(value) : String(value);
}

function indent(text: string): string {
  return text
    .split('\n')
    .map((line) => `  ${line}`)
    .join('\n');
}

