/**
 * Hypervisor partitions: `RecordingPartition`, a partition that records every
 * map/unmap/prefetch/pin call for scripting and tests, and `KvmPartition`, a real KVM virtual
 * machine with a minimal vCPU runner (`Vcpu`) that executes guest code off the JavaScript thread.
 */
import { call, internalOnly, invalidArgType, invalidArgValue, settle } from './errors';
import { VcpuMode, type CancelReason, type RecordedOp, type SlotOp, type VcpuExitKind } from './generated/enums';
import { native } from './native';
import { withViews, inspectObject, type InspectOptionsStylized } from './json_view';
import { parseNativeJson } from './native_json';
import { nativeJson, toRange, type RangeLike } from './range';
import { checkOptionKeys, describeType, describeValue, toU64, type U64 } from './u64';
import { inspect } from 'node:util';

export { KvmError } from './errors';
export { VcpuMode } from './generated/enums';

/** One PartitionMemoryMap call as recorded; gpa/size/vaOffset in bytes. */
export interface RecordedCall {
  op: RecordedOp;
  gpa: bigint;
  size: bigint;
  /** map only */ writable?: boolean;
  /** map only */ exec?: boolean;
  /** map only: VA − window base */ vaOffset?: bigint;
  /** The call returned an injected error. */
  failed: boolean;
}

type NativeRecording = InstanceType<typeof native.NativeRecordingPartition>;

const partitions = new WeakMap<object, unknown>();
/** Lets only this module construct KvmPartition and Vcpu objects. */
const token = Symbol('membacking-partition');

/** The binding object behind a partition (for attachPartition). @internal */
export function nativePartition(value: unknown): NativeRecording | InstanceType<typeof native.NativeKvmPartition> {
  const found = typeof value === 'object' && value !== null ? partitions.get(value) : undefined;
  if (found === undefined) throw invalidArgType(`partition must be a RecordingPartition or a KvmPartition, got ${describeType(value)}`);
  return found as NativeRecording;
}

/** A Rust-side partition that records every call. */
export class RecordingPartition {
  #closed = false;
  readonly #native: NativeRecording;

  /** Empty log, no failure rules. */
  constructor() {
    this.#native = new native.NativeRecordingPartition();
    partitions.set(this, this.#native);
  }
  /** The whole log, oldest first (does not clear). */
  log(): RecordedCall[] {
    return nativeJson(this.#native.log());
  }
  /** Empty the log. */
  clearLog(): void {
    this.#native.clearLog();
  }
  /** Return the log and empty it. */
  takeLog(): RecordedCall[] {
    return nativeJson(this.#native.takeLog());
  }
  /** Make every later `op` at this gpa (bytes) fail until cleared. */
  failOn(op: 'map' | 'pin' | 'prefetch', gpa: U64): void {
    if (op !== 'map' && op !== 'pin' && op !== 'prefetch') {
      throw typeof op === 'string' ? invalidArgValue(`op must be 'map', 'pin' or 'prefetch', got '${op}'`) : invalidArgType(`op must be 'map', 'pin' or 'prefetch', got ${describeType(op)}`);
    }
    const g = toU64(gpa, 'gpa');
    call(() => this.#native.failOn(op, g));
  }
  /** Drop all failure rules. */
  clearFailures(): void {
    this.#native.clearFailures();
  }
  /** The partition becomes gone for managers; log() stays readable. */
  close(): void {
    this.#closed = true;
    this.#native.close();
  }
  /** `util.inspect` form: open or closed, and how many calls its log holds. */
  [inspect.custom](depth: number, options: InspectOptionsStylized): string {
    return inspectObject('RecordingPartition', depth, options, () => ({ state: this.#closed ? 'closed' : 'open', logLength: this.log().length }), false);
  }
  [Symbol.dispose](): void {
    this.close();
  }
}

/** vCPU setup. */
export interface VcpuOptions {
  /** Default Long. */
  mode?: VcpuMode | `${VcpuMode}` | undefined;
  /** GPA range (bytes, page-aligned, ≥ 2 MiB + 8 KiB) in guest RAM mapped read-write in this partition (all of it; it may span adjacent RAM regions) where the runner writes identity-mapped 2 MiB page tables covering 512 GiB; required in Long mode, refused in Real mode (no paging). */
  pageTables?: RangeLike | undefined;
  /** Privilege level in Long mode (default 3, IOPL 3: ports 0–0x7fb7 on every KVM; PVM traps higher ones at CPL 3); Real mode runs at 0 and refuses 3. */
  cpl?: 0 | 3 | undefined;
}

/** General registers (64-bit values as bigint). */
export interface VcpuRegisters {
  rax: bigint; rbx: bigint; rcx: bigint; rdx: bigint; rsi: bigint; rdi: bigint; rsp: bigint; rbp: bigint;
  r8: bigint; r9: bigint; r10: bigint; r11: bigint; r12: bigint; r13: bigint; r14: bigint; r15: bigint;
  rip: bigint; rflags: bigint;
}

/** Registers to set: any of them, each a bigint or a safe non-negative integer number. */
export type VcpuRegistersInput = { [Name in keyof VcpuRegisters]?: U64 | undefined };

/** Why run() settled (address and size in bytes; `data.length === size`, little-endian). */
export type VcpuExit =
  | { kind: 'MmioRead'; address: bigint; size: number }
  | { kind: 'MmioWrite'; address: bigint; size: number; data: Buffer }
  | { kind: 'IoIn'; port: number; size: number }
  | { kind: 'IoOut'; port: number; size: number; data: Buffer }
  | { kind: 'Hlt' }
  | { kind: 'Shutdown' }
  | { kind: 'Cancelled'; reason: CancelReason }
  | { kind: 'Failure'; reason: string };

/** Every exit kind is a variant of VcpuExit (checked against the generated list). */
type ExitKindsCovered = VcpuExitKind extends VcpuExit['kind'] ? (VcpuExit['kind'] extends VcpuExitKind ? true : never) : never;
const exitKindsCovered: ExitKindsCovered = true;
void exitKindsCovered;

/** `options` must be undefined or an object (a TypeError otherwise). */
function optionsObject<T extends object>(options: T | undefined, name: string, accepted: readonly (keyof T & string)[], where: string): Partial<T> {
  if (options === undefined) return {};
  if (typeof options !== 'object' || options === null || Array.isArray(options)) throw invalidArgType(`${name} must be an object, got ${describeType(options)}`);
  checkOptionKeys(options, accepted, where);
  return options;
}

type NativeVcpu = InstanceType<typeof native.NativeVcpu>;

/** An exit as the binding describes it (`data` as an array of bytes). */
function toExit(text: string): VcpuExit {
  const exit = parseNativeJson<VcpuExit & { data?: number[] }>(text);
  return withViews((exit.data === undefined ? exit : { ...exit, data: Buffer.from(exit.data) }) as VcpuExit);
}

/** One vCPU; runs off the JS thread. */
export class Vcpu {
  #closed = false;
  readonly #native: NativeVcpu;

  private constructor(key: typeof token, handle: NativeVcpu) {
    if (key !== token) throw invalidArgType('Vcpu cannot be constructed directly: use KvmPartition#createVcpu');
    this.#native = handle;
  }

  /** @internal */
  static wrap(handle: NativeVcpu): Vcpu {
    if (!(handle instanceof native.NativeVcpu)) throw internalOnly('Vcpu.wrap', 'KvmPartition#createVcpu');
    return new Vcpu(token, handle);
  }

  /** vCPU index. */
  get id(): number {
    return this.#native.id;
  }
  /** Read registers (sync ioctl). `rip` at an exit is as the hypervisor reports it. */
  getRegisters(): VcpuRegisters {
    return withViews(parseNativeJson<VcpuRegisters>(call(() => this.#native.getRegisters())));
  }
  /**
   * Write the given registers; every register and mode bit not named (or given as undefined)
   * keeps its value.
   * KvmError ERR_VCPU_READ_PENDING from an MmioRead/IoIn exit until the run that delivers its
   * value (KVM finishes the read on that run and would lose the value); nothing is changed then.
   */
  setRegisters(regs: VcpuRegistersInput): void {
    if (typeof regs !== 'object' || regs === null) throw invalidArgType(`regs must be an object, got ${describeType(regs)}`);
    // A register given as undefined is not named (as an option given as undefined is absent):
    // the type allows it, and a spread of optional values produces it.
    const entries = Object.entries(regs).filter(([, value]) => value !== undefined);
    const names = entries.map(([name]) => name);
    const values = BigUint64Array.from(entries, ([name, value]) => toU64(value, name));
    call(() => this.#native.setRegisters(names, values));
  }
  /**
   * Run until the next exit; timeoutMs (milliseconds) stops a looping guest with
   * {kind: 'Cancelled', reason: 'timeout'}. 0 or absent means no timeout (so clamp a computed
   * remainder to at least 1).
   */
  async run(options?: { timeoutMs?: number | undefined }): Promise<VcpuExit> {
    const timeout = optionsObject(options, 'options', ['timeoutMs'], 'Vcpu#run()').timeoutMs ?? 0;
    if (typeof timeout !== 'number') throw invalidArgType(`timeoutMs must be a number, got ${describeType(timeout)}`);
    if (!Number.isFinite(timeout) || timeout < 0) throw invalidArgValue(`timeoutMs must be a non-negative finite number, got ${describeValue(timeout)}`);
    return toExit(await settle(call(() => this.#native.run(timeout))));
  }
  /** Value for the pending MmioRead/IoIn (size bytes, little-endian). */
  completeRead(value: number | bigint | Uint8Array): void {
    if (value instanceof Uint8Array) {
      call(() => this.#native.completeReadBytes(value));
      return;
    }
    const v = toU64(value, 'value');
    call(() => this.#native.completeReadValue(v));
  }
  /**
   * Stop a running guest: run() settles with {kind: 'Cancelled', reason: 'cancel'}. A cancel is
   * never lost: one that finds no run in progress cancels the next run(), which then settles
   * at once.
   */
  cancel(): void {
    this.#native.cancel();
  }
  /** Release the vCPU. */
  close(): void {
    this.#closed = true;
    this.#native.close();
  }
  /** `util.inspect` form: open or closed, its id. */
  [inspect.custom](depth: number, options: InspectOptionsStylized): string {
    return inspectObject('Vcpu', depth, options, () => ({ id: this.id }), this.#closed || this.#native.closed);
  }
  [Symbol.dispose](): void {
    this.close();
  }
}

type NativeKvm = InstanceType<typeof native.NativeKvmPartition>;

/** A real KVM VM whose memory slots follow the manager's regions. */
export class KvmPartition {
  #closed = false;
  readonly #native: NativeKvm;

  private constructor(key: typeof token, handle: NativeKvm) {
    if (key !== token) throw invalidArgType('KvmPartition cannot be constructed directly: use KvmPartition.create');
    this.#native = handle;
    partitions.set(this, handle);
  }

  /** Open /dev/kvm, create a VM (KvmError ERR_KVM_UNAVAILABLE on failure). */
  static async create(options?: { disableSlotZapAllQuirk?: boolean | undefined }): Promise<KvmPartition> {
    const disable = optionsObject(options, 'options', ['disableSlotZapAllQuirk'], 'KvmPartition.create()').disableSlotZapAllQuirk ?? true;
    if (typeof disable !== 'boolean') throw invalidArgType('disableSlotZapAllQuirk must be a boolean');
    return new KvmPartition(token, await settle(call(() => native.kvmPartitionCreate(disable))));
  }

  /**
   * Create a vCPU (after attachPartition when it must write page tables into guest RAM). A VM
   * creates at most KVM's limit of vCPUs over its life (KVM_CAP_MAX_VCPUS, e.g. 1,024), closed ones
   * included: KVM keeps a vCPU until the VM is destroyed. Past it: KvmError ERR_TOO_MANY_VCPUS.
   */
  async createVcpu(options?: VcpuOptions): Promise<Vcpu> {
    const o = optionsObject(options, 'options', ['mode', 'pageTables', 'cpl'], 'KvmPartition#createVcpu()');
    const mode = o.mode ?? VcpuMode.Long;
    if (typeof mode !== 'string') throw invalidArgType(`mode must be a VcpuMode, got ${describeType(mode)}`);
    if (mode !== VcpuMode.Long && mode !== VcpuMode.Real) throw invalidArgValue(`mode must be 'Real' or 'Long', got ${describeValue(mode)}`);
    const cpl = o.cpl ?? undefined;
    if (cpl !== undefined && typeof cpl !== 'number') throw invalidArgType(`cpl must be 0 or 3, got ${describeType(cpl)}`);
    if (cpl !== undefined && cpl !== 0 && cpl !== 3) throw invalidArgValue(`cpl must be 0 or 3, got ${describeValue(cpl)}`);
    let tables: BigUint64Array | null = null;
    if (o.pageTables !== undefined) {
      const r = toRange(o.pageTables, 'pageTables');
      tables = BigUint64Array.from([r.start, r.end]);
    }
    return Vcpu.wrap(call(() => this.#native.createVcpu(mode, tables, cpl)));
  }

  /** Slot table: {slots: [{slot, gpa, size, readonly, pinned}], maxSlots, …}. */
  inspect(): { slots: Array<{ slot: number; gpa: bigint; size: bigint; readonly: boolean; pinned: boolean }>; maxSlots: number; slotZapAllQuirkDisabled: boolean; readonlySupported: boolean; vcpuCount: number } {
    return nativeJson(call(() => this.#native.inspect()));
  }

  /** The last map/unmap calls (up to 4096) with the slot ids each created and deleted, oldest first. */
  slotLog(): KvmSlotLogEntry[] {
    return nativeJson(call(() => this.#native.slotLog()));
  }

  /** Return the slot log and empty it. */
  takeSlotLog(): KvmSlotLogEntry[] {
    return nativeJson(call(() => this.#native.takeSlotLog()));
  }

  /** Destroy the VM (cancels running vCPUs); gone for managers. */
  close(): void {
    this.#closed = true;
    this.#native.close();
  }
  /** `util.inspect` form: open or closed, its memory slots and vCPUs. */
  [inspect.custom](depth: number, options: InspectOptionsStylized): string {
    return inspectObject('KvmPartition', depth, options, () => {
      const { slots, maxSlots, vcpuCount } = this.inspect();
      return { slots: slots.length, maxSlots, vcpuCount, mappedBytes: slots.reduce((sum, slot) => sum + slot.size, 0n) };
    }, this.#closed);
  }
  [Symbol.dispose](): void {
    this.close();
  }
}

/** One map or unmap call a KvmPartition received, and the memory slots it changed. */
export interface KvmSlotLogEntry {
  /** Process-wide call sequence number (shared with RecordingPartition logs and manager plans). */
  sequence: number;
  op: SlotOp;
  /** Guest physical address and size of the call (bytes). */
  gpa: bigint;
  size: bigint;
  /** Slot ids the call created, in order. */
  created: number[];
  /** Slot ids the call deleted, in GPA order. */
  deleted: number[];
  /** The call returned an error. */
  failed: boolean;
}

/** Tiny x86 guest programs for tests and demos; copy one into guest RAM and point `rip` at it. */
export interface GuestPrograms {
  /** 64-bit CPL3: fills `rcx` qwords from `rdi` with `address ^ rdx`, then `out donePort, al`. */
  fillPattern: Buffer;
  /** 64-bit CPL3: sums `rcx` qwords from `rdi`; reports low then high half on resultPort. */
  sumQwords: Buffer;
  /** 64-bit CPL3: `[rsi] = [rdi] + rdx`, then `out donePort, al`. */
  loadAddStore: Buffer;
  /** 64-bit CPL3: writes 1 to each of `rcx` 4 KiB pages from `rsi`, then `out donePort, al`. */
  touchPages: Buffer;
  /** 64-bit CPL3: `in eax, inputPort`; `out resultPort, eax`; `out donePort, al`. */
  echoInput: Buffer;
  /** Any mode: loops forever (for cancel and timeouts). */
  spin: Buffer;
  /** Real mode or CPL 0: `hlt`. */
  halt: Buffer;
  /** Real mode: `out donePort, 0x42`, then `hlt`. */
  realModeOutThenHalt: Buffer;
  donePort: number;
  resultPort: number;
  inputPort: number;
}

/** The guest programs the vCPU runner's tests use (machine code, little-endian x86). */
export function guestPrograms(): GuestPrograms {
  return native.guestPrograms() as GuestPrograms;
}
