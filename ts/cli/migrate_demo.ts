/**
 * `membacking migrate-demo`: live migration between two processes. The parent starts a child
 * joined to it by a socket pair (its fd 3), builds guest RAM below and above the x86 MMIO gap,
 * and runs a KVM guest whose code keeps writing a counter into a 1 MiB area (pass after pass,
 * each pass writing the next counter value). While the guest runs, the memory migrates to the
 * child; `pause` stops the vCPU and sends its registers as the payload. The child builds a KVM
 * partition on the migrated memory, sets the registers, runs the guest on, and checks that the
 * area holds exactly what the guest had written when it was paused and that the counter goes
 * on from there; it also checks a checksum of data written below the gap. The parent prints the
 * rounds, bytes and downtime, the child what it checked; the exit code is the child's.
 *
 * Without /dev/kvm (or with `--no-kvm`) the writer is this program: it writes a pass between
 * the migration's frames and the child checks the area and the data, without a guest.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { formatSize } from './format';
import type { GuestMemory } from '../guest_memory';
import { MemoryLayout } from '../layout';
import { GuestMemoryBuilder, Vtl, type GuestMemoryManager } from '../manager';
import { KvmPartition, type Vcpu, type VcpuExit, type VcpuRegisters } from '../partition';
import { range } from '../range';
import { GiB, KiB, MiB, hex } from '../u64';

const LOW = range(0, 64n * MiB);
const HIGH = range(4n * GiB, 4n * GiB + 64n * MiB);
const GAP = range(3n * GiB, 4n * GiB);
const CODE = 0x1000n;
const PAGE_TABLES = range(2n * MiB, 4n * MiB + 8n * KiB);
/** The area the guest keeps writing, above the gap. */
const AREA = HIGH.start + 8n * MiB;
const AREA_QWORDS = (1n * MiB) / 8n;
/** Data written once below the gap, checked by checksum at the destination. */
const DATA = range(16n * MiB, 24n * MiB);

/**
 * The guest's code (64-bit, CPL3): with `rdi` = the area, `rcx` = its qwords and `rbx` = the
 * counter, forever: write `rbx` to every qword of the area, then increment `rbx`.
 *
 *   loop:  mov rsi, rdi ; mov rdx, rcx
 *   inner: mov [rsi], rbx ; add rsi, 8 ; dec rdx ; jnz inner
 *          inc rbx ; jmp loop
 */
const COUNTER_PROGRAM = Buffer.from([0x48, 0x89, 0xfe, 0x48, 0x89, 0xca, 0x48, 0x89, 0x1e, 0x48, 0x83, 0xc6, 0x08, 0x48, 0xff, 0xca, 0x75, 0xf4, 0x48, 0xff, 0xc3, 0xeb, 0xe9]);

const layout = (): MemoryLayout => MemoryLayout.fromRanges([{ range: LOW }, { range: HIGH }], [GAP]);

/** What the source sends with its final round. */
interface Payload {
  /** The paused vCPU's registers (hex), or null when this program was the writer. */
  registers: Record<string, string> | null;
  /** The counter of the pass being written, and how far that pass got (qwords), when there is no guest. */
  counter: string;
  written: string;
  dataSha256: string;
}

/** How to run the demo. */
export interface MigrateDemoOptions {
  /** Write from this program instead of a KVM guest. */
  noKvm?: boolean;
}

/** The parent: the source of the migration. Resolves with the exit code (the child's). */
export async function migrateDemo(print: (line: string) => void, mainScript: string, options: MigrateDemoOptions = {}): Promise<number> {
  const child = spawn(process.execPath, [mainScript, 'migrate-demo', '--child'], { stdio: ['ignore', 'inherit', 'inherit', 'pipe'] });
  const exited = new Promise<number>((resolve) => child.once('exit', (code, signal) => resolve(code ?? (signal === null ? 1 : 128))));
  const socket = child.stdio[3] as Duplex;
  const manager = await new GuestMemoryBuilder().build(layout());
  const memory = await manager.client().guestMemory();
  let guest: Guest | null = null;
  try {
    const data = Buffer.alloc(Number(DATA.len));
    for (let i = 0; i < data.length; i += 4) data.writeUInt32LE((i * 2654435761) >>> 0, i);
    memory.writeAt(DATA.start, data);
    const dataSha256 = createHash('sha256').update(data).digest('hex');
    guest = options.noKvm === true ? null : await startGuest(print, manager, memory);
    print(`source (pid ${process.pid}): ${guest === null ? 'this program writes' : 'a KVM guest keeps writing'} a counter into 1 MiB at ${hex(AREA)}; migrating ${formatSize(LOW.len + HIGH.len)} of RAM to the child (pid ${child.pid}) over a socket pair`);
    // Without a guest, this program writes a pass of the counter at each progress report.
    let counter = 1n;
    let written = 0n;
    const writePass = (): void => {
      if (guest !== null) return;
      counter++;
      for (written = 0n; written < AREA_QWORDS; written += 512n) {
        const chunk = Buffer.alloc(4096);
        for (let i = 0; i < 512; i++) chunk.writeBigUInt64LE(counter, i * 8);
        memory.writeAt(AREA + written * 8n, chunk);
      }
    };
    writePass();
    const activeGuest = guest;
    const info = await manager.migrate(socket, {
      onProgress: writePass,
      pause: async () => {
        const payload: Payload = { registers: null, counter: counter.toString(), written: written.toString(), dataSha256 };
        if (activeGuest !== null) {
          const registers = await activeGuest.stop();
          payload.registers = Object.fromEntries(Object.entries(registers).map(([name, value]) => [name, hex(value as bigint)]));
          print(`source: paused the guest at rip ${hex(registers.rip)} with the counter at ${registers.rbx}`);
        }
        return Buffer.from(JSON.stringify(payload));
      },
    });
    print(`source: ${info.rounds} rounds (${info.converged ? 'converged' : 'the rounds ran out'}), ${formatSize(info.bytes)} of pages (${info.bytesPerRound.map((b) => formatSize(b)).join(', ')}), ${formatSize(info.streamBytes)} on the stream, downtime ${info.downtimeMs.toFixed(1)} ms`);
  } finally {
    await guest?.close();
    memory.close();
    await manager.close();
  }
  const code = await exited;
  print(code === 0 ? 'the guest runs on in the child: migration checked' : `the child failed (exit code ${code})`);
  return code;
}

/** A running KVM guest of the demo. */
interface Guest {
  /** Stops the vCPU and returns its registers. */
  stop(): Promise<VcpuRegisters>;
  close(): Promise<void>;
}

async function startGuest(print: (line: string) => void, manager: GuestMemoryManager, memory: GuestMemory): Promise<Guest | null> {
  let partition: KvmPartition;
  try {
    partition = await KvmPartition.create();
  } catch (error) {
    print(`no KVM guest (${(error as Error).message}): this program writes the counter instead`);
    return null;
  }
  await manager.attachPartition(Vtl.Vtl0, partition);
  const vcpu = await partition.createVcpu({ pageTables: PAGE_TABLES });
  memory.writeAt(CODE, COUNTER_PROGRAM);
  vcpu.setRegisters({ rip: CODE, rdi: AREA, rcx: AREA_QWORDS, rbx: 1n });
  const running = vcpu.run();
  let registers: VcpuRegisters | null = null;
  return {
    stop: async () => {
      vcpu.cancel();
      expectCancelled(await running);
      registers = vcpu.getRegisters();
      return registers;
    },
    close: async () => {
      if (registers === null) {
        vcpu.cancel();
        await running;
      }
      vcpu.close();
      partition.close();
    },
  };
}

function expectCancelled(exit: VcpuExit): void {
  if (exit.kind !== 'Cancelled') throw new Error(`the guest stopped on its own: ${exit.kind}`);
}

/** The child: the destination. Resolves with its exit code. */
export async function migrateDemoChild(print: (line: string) => void): Promise<number> {
  const socket = new Socket({ fd: 3, readable: true, writable: true });
  const manager = await GuestMemoryBuilder.migrateFrom(socket, { layout: layout() });
  socket.destroy();
  const memory = await manager.client().guestMemory();
  const failures: string[] = [];
  try {
    const from = manager.migratedFrom!;
    const payload = JSON.parse(Buffer.from(from.payload!).toString()) as Payload;
    print(`destination (pid ${process.pid}): ${from.rounds} rounds received, ${formatSize(from.bytes)} of pages`);
    const data = Buffer.alloc(Number(DATA.len));
    memory.readAt(DATA.start, data);
    const sha = createHash('sha256').update(data).digest('hex');
    if (sha !== payload.dataSha256) failures.push(`the data below the gap differs (sha256 ${sha}, sent ${payload.dataSha256})`);
    else print(`destination: the ${formatSize(DATA.len)} below the gap match the source's checksum`);
    if (payload.registers === null) {
      const counter = BigInt(payload.counter);
      checkArea(memory, counter, BigInt(payload.written), failures, print);
    } else {
      const registers = Object.fromEntries(Object.entries(payload.registers).map(([name, value]) => [name, BigInt(value)])) as unknown as VcpuRegisters;
      checkArea(memory, registers.rbx, passWritten(registers), failures, print);
      await runOn(print, manager, registers, failures, memory);
    }
  } finally {
    memory.close();
    await manager.close();
  }
  for (const failure of failures) print(`destination: FAILED: ${failure}`);
  return failures.length === 0 ? 0 : 1;
}

/**
 * The qwords of its current pass (counter `rbx`) the guest had written when stopped: up to
 * `rsi` — one more when stopped between the store and `add rsi, 8` — except that with `rsi` at
 * the end of the area after `inc rbx` (at the `jmp`, or back at the loop's start) the pass of
 * the new counter has not begun.
 */
function passWritten(registers: VcpuRegisters): bigint {
  const offset = registers.rip - CODE;
  const done = (registers.rsi < AREA ? 0n : (registers.rsi - AREA) / 8n) + (offset === 9n ? 1n : 0n);
  const newPass = offset === 21n || offset === 0n;
  return done >= AREA_QWORDS && newPass ? 0n : done;
}

/** The area holds `counter` in its first `done` qwords and `counter - 1` after (the pass being written when paused). */
function checkArea(memory: GuestMemory, counter: bigint, done: bigint, failures: string[], print: (line: string) => void): void {
  const area = Buffer.alloc(Number(AREA_QWORDS * 8n));
  memory.readAt(AREA, area);
  let bad = 0;
  for (let i = 0n; i < AREA_QWORDS; i++) {
    const expected = i < done ? counter : counter - 1n;
    if (area.readBigUInt64LE(Number(i * 8n)) !== expected) bad++;
  }
  if (bad > 0) failures.push(`${bad} qwords of the area are not what the writer left (counter ${counter}, ${done} qwords of its pass written)`);
  else print(`destination: the area holds counter ${counter} in its first ${done} qwords and ${counter - 1n} after: exactly what the writer left`);
}

/** Runs the migrated guest on in a new KVM partition until it has written two more passes. */
async function runOn(print: (line: string) => void, manager: GuestMemoryManager, registers: VcpuRegisters, failures: string[], memory: GuestMemory): Promise<void> {
  const partition = await KvmPartition.create();
  let vcpu: Vcpu | null = null;
  try {
    await manager.attachPartition(Vtl.Vtl0, partition);
    vcpu = await partition.createVcpu({ pageTables: PAGE_TABLES });
    vcpu.setRegisters(registers);
    // The guest loops forever: let it run, and stop it once its counter moved on twice.
    let now = registers;
    for (let slice = 0; slice < 200 && now.rbx < registers.rbx + 2n; slice++) {
      expectCancelled(await vcpu.run({ timeoutMs: 50 }));
      now = vcpu.getRegisters();
    }
    if (now.rbx < registers.rbx + 2n) failures.push(`the guest did not go on: counter ${now.rbx} after 200 slices`);
    else {
      print(`destination: the guest ran on in a new KVM partition: counter ${registers.rbx} → ${now.rbx}`);
      checkArea(memory, now.rbx, passWritten(now), failures, print);
    }
  } finally {
    vcpu?.close();
    partition.close();
  }
}
