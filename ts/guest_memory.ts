/**
 * Fault-safe guest memory: the process-wide fault
 * handler, `SparseMapping` (a VA reservation with pages placed at runtime), `Mappable`
 * (shareable memory objects), `GuestMemory` and `LockedPages`.
 *
 * Guest memory is only ever copied: no JavaScript buffer is a view of guest pages, so a fault
 * can only happen inside the Rust core's guarded routines, which turn it into an error.
 */
import { storeCause } from './causes';
import { call, fromNative, GuestMemoryErrorKind, internalOnly, invalidArgType, invalidArgValue, settle } from './errors';
import type { HandlerStatus } from './generated/enums';
import { constants as bufferConstants } from 'node:buffer';
import { isMainThread } from 'node:worker_threads';
import { withViews, inspectObject, type InspectOptionsStylized } from './json_view';
import { native } from './native';
import { checkOptionKeys, describeType, toU64, type U64 } from './u64';
import { inspect } from 'node:util';

type NativeSparseMapping = InstanceType<typeof native.NativeSparseMapping>;
type NativeMappable = InstanceType<typeof native.NativeMappable>;
type NativeGuestMemory = InstanceType<typeof native.NativeGuestMemory>;
type NativeLockedPages = InstanceType<typeof native.NativeLockedPages>;

/**
 * A structured-cloneable token for a worker_threads worker of the same process: post it to the
 * worker (`workerData`, `postMessage`) and open it there with the class's `fromHandle`.
 * Single-use: it opens once. Until it is opened or closed it keeps the object it names alive,
 * even after the object that made it is closed or collected.
 */
export interface TransferHandle {
  readonly kind: string;
  readonly id: bigint;
}

/** A handle as `toHandle()` returns it: the token, and `close()` for a handle never opened. */
export interface IssuedTransferHandle extends TransferHandle {
  /**
   * Releases what the handle keeps alive, when it will not be opened (idempotent; a no-op once
   * opened). Not part of the posted copy: a worker that does not want it opens and closes it.
   */
  close(): void;
}

/** A transfer handle of `kind` for the registry entry `id`. @internal */
export function issueHandle(kind: string, id: bigint): IssuedTransferHandle {
  const handle = withViews({ kind, id });
  Object.defineProperty(handle, 'close', {
    value: () => {
      native.releaseHandle(id);
    },
    enumerable: false,
  });
  return handle as IssuedTransferHandle;
}

/** Install (or re-arm, when displaced) the process-wide SIGSEGV/SIGBUS handler; idempotent. */
export function initialize(): void {
  rearming(() => native.initialize());
}

/** The signals our handler recovers faults of. */
const FAULT_SIGNALS: ReadonlySet<string | symbol> = new Set(['SIGSEGV', 'SIGBUS']);

/** Tells the handler which of SIGSEGV/SIGBUS have listeners (`adding`: one is being added). */
function signalListenersChanged(adding?: string | symbol): void {
  const listens = (signal: string): boolean => signal === adding || process.listenerCount(signal) > 0;
  native.setSignalListeners(listens('SIGSEGV'), listens('SIGBUS'));
}

/**
 * `process.on('SIGSEGV')` (or SIGBUS) makes Node install libuv's signal handler over ours, and
 * removing the last listener resets the default action: either way a guest memory fault would
 * no longer be recovered (libuv's handler returns, and the faulting access runs again forever).
 * Node installs or removes its handler in its own `newListener`/`removeListener` listeners,
 * registered at startup, so these run right after it: the handler is re-armed before the next
 * access can fault, and faults never reach the listener (signals sent with `kill` still do).
 * Only the main thread has signal listeners.
 */
if (isMainThread) {
  signalListenersChanged();
  process.on('newListener', function membackingSignalListenerAdded(event: string | symbol) {
    if (FAULT_SIGNALS.has(event)) signalListenersChanged(event);
  });
  process.on('removeListener', function membackingSignalListenerRemoved(event: string | symbol) {
    if (FAULT_SIGNALS.has(event)) signalListenersChanged();
  });
  // `process.exit()` (or an uncaught exception) ends the process without tearing down this
  // thread's environment, yet libuv waits for its pool threads first: one waiting for a hook of
  // this thread (a `readAtAsync` on hooked memory) must give up, or the process never exits.
  process.on('exit', function membackingProcessExiting() {
    native.markProcessExiting();
  });
}

let rearmWarned = false;

/**
 * Runs `create` (which installs the handler, or makes a mapping-backed memory) and re-installs
 * a handler that was displaced or reset before it ran (by a handler installed with
 * `sigaction` elsewhere, e.g. another native addon). Emits a process warning the first time
 * this thread re-arms.
 */
function rearming<T>(create: () => T): T {
  const before = native.handlerStatus();
  const result = create();
  if (before === 'displaced' || before === 'default') {
    native.initialize();
    if (!rearmWarned) {
      rearmWarned = true;
      const how = before === 'default' ? 'reset to the default action' : 'replaced by another handler';
      process.emitWarning(
        `the membacking SIGSEGV/SIGBUS handler was ${how} (for example by another native addon); it has been re-installed on top, forwarding the faults it does not own to that handler. Until now guest memory faults went to that handler, which may not recover them.`,
        { type: 'MembackingWarning', code: 'MEMBACKING_HANDLER_REARMED' },
      );
    }
  }
  return result;
}

/** State of our handler among the signal dispositions. */
export function handlerStatus(): HandlerStatus {
  return native.handlerStatus() as HandlerStatus;
}

const internals = new WeakMap<object, unknown>();

/** The binding object behind one of this module's wrappers. @internal */
export function nativeOf<T>(value: unknown, Class: { name: string; prototype: object }, name: string): T {
  const found = typeof value === 'object' && value !== null && Class.prototype.isPrototypeOf(value) ? internals.get(value) : undefined;
  if (found === undefined) throw invalidArgType(`${name} must be a ${Class.name}, got ${describeType(value)}`);
  return found as T;
}

/** The classes whose `toHandle()` makes a handle, by the handle's kind. */
const HANDLE_KINDS: ReadonlySet<string> = new Set(['SparseMapping', 'GuestMemory', 'GuestMemoryClient']);

/** The id of a `kind` handle; a handle of another kind is refused, naming the class that opens it. @internal */
export function handleId(handle: unknown, kind: string): bigint {
  const other = typeof handle === 'object' && handle !== null ? (handle as TransferHandle).kind : undefined;
  if (typeof other === 'string' && other !== kind && HANDLE_KINDS.has(other)) {
    throw invalidArgType(`handle must be a ${kind} TransferHandle (from toHandle()), got a ${other} handle: open it with ${other}.fromHandle() (it is still unopened)`);
  }
  if (typeof handle !== 'object' || handle === null || (handle as TransferHandle).kind !== kind) {
    throw invalidArgType(`handle must be a ${kind} TransferHandle (from toHandle()), got ${describeType(handle)}`);
  }
  return toU64((handle as TransferHandle).id, 'handle.id');
}

function toByteArray(value: unknown, name: string): Uint8Array {
  if (value instanceof Uint8Array) return value;
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  throw invalidArgType(`${name} must be a Uint8Array or Buffer, got ${describeType(value)}`);
}

function toByte(value: unknown, name: string): number {
  if (typeof value !== 'number' || !Number.isInteger(value)) throw invalidArgType(`${name} must be an integer number, got ${describeType(value)}`);
  if (value < 0 || value > 255) throw invalidArgValue(`${name} must be between 0 and 255, got ${value}`);
  return value;
}

function toBoolean(value: unknown, name: string): boolean {
  if (typeof value !== 'boolean') throw invalidArgType(`${name} must be a boolean, got ${describeType(value)}`);
  return value;
}

/** The largest Buffer of the running Node (`buffer.constants.MAX_LENGTH` differs between versions). */
const MAX_BUFFER = BigInt(bufferConstants.MAX_LENGTH);

/**
 * From this length on, `read()` reads through the native side, which checks the range before it
 * checks the length against the largest Buffer and allocates (so a read that cannot succeed
 * fails at once, and an allocation that fails is a coded error on every Node version); shorter
 * reads use Node's buffer pool.
 */
const CHECKED_READ_BYTES = 64n * 1024n;

const mappableToken = Symbol('Mappable');

/** An owned fd of a shareable memory object (memfd or file). */
export class Mappable {
  #closed = false;
  readonly #native: NativeMappable;

  private constructor(key: typeof mappableToken, handle: NativeMappable) {
    if (key !== mappableToken) throw invalidArgType('Mappable cannot be constructed directly: use Mappable.allocSharedMemory or Mappable.fromFd');
    this.#native = handle;
    internals.set(this, handle);
  }

  /** @internal */
  static wrap(handle: NativeMappable): Mappable {
    if (!(handle instanceof native.NativeMappable)) throw internalOnly('Mappable.wrap', 'Mappable.allocSharedMemory or Mappable.fromFd');
    return new Mappable(mappableToken, handle);
  }

  /** memfd_create(name, CLOEXEC) + ftruncate(size bytes); no seals. */
  static allocSharedMemory(size: U64, name: string): Mappable {
    const s = toU64(size, 'size');
    if (typeof name !== 'string') throw invalidArgType(`name must be a string, got ${describeType(name)}`);
    return new Mappable(mappableToken, call(() => native.NativeMappable.allocSharedMemory(s, name)));
  }

  /** Duplicate an existing fd (close-on-exec). */
  static fromFd(fd: number): Mappable {
    if (typeof fd !== 'number' || !Number.isInteger(fd) || fd < 0) throw invalidArgType(`fd must be a non-negative integer (an open descriptor), got ${typeof fd === 'number' ? fd : describeType(fd)}`);
    if (fd > 0x7fff_ffff) throw invalidArgValue(`fd must be an open descriptor (at most 0x7fffffff), got ${fd}`);
    return new Mappable(mappableToken, call(() => native.NativeMappable.fromFd(fd)));
  }

  /** The owned descriptor (pass it to a child process's stdio). */
  get fd(): number {
    return call(() => this.#native.fdNumber);
  }

  /** Close the fd (this reference; objects built on it keep their own). */
  close(): void {
    this.#closed = true;
    this.#native.close();
  }
  /** `util.inspect` form: open or closed, its descriptor. */
  [inspect.custom](depth: number, options: InspectOptionsStylized): string {
    return inspectObject('Mappable', depth, options, () => ({ fd: this.fd }), this.#closed);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

const adopt = Symbol('adopt');

/** A VA reservation whose pages are placed and removed at 4 KiB granularity (offsets in bytes). */
export class SparseMapping {
  #closed = false;
  readonly #native: NativeSparseMapping;

  /** Reserve len bytes, rounded up to 4 KiB / 2 MiB / 1 GiB by size; installs the handler. */
  constructor(len: U64);
  /** @internal */
  constructor(len: typeof adopt, handle: NativeSparseMapping);
  constructor(len: U64 | typeof adopt, handle?: NativeSparseMapping) {
    if (len === adopt && handle !== undefined) {
      this.#native = handle;
    } else {
      const l = toU64(len, 'len');
      this.#native = rearming(() => call(() => new native.NativeSparseMapping(l)));
    }
    internals.set(this, this.#native);
  }

  /** The OS page size (bytes). */
  static get pageSize(): bigint {
    return native.NativeSparseMapping.pageSize();
  }

  /** Reopen a mapping from toHandle() (any thread of this process). */
  static fromHandle(handle: TransferHandle): SparseMapping {
    const id = handleId(handle, 'SparseMapping');
    return new SparseMapping(adopt, call(() => native.NativeSparseMapping.fromHandle(id)));
  }

  #n(): NativeSparseMapping {
    return this.#native;
  }

  /** Reserved length after rounding (bytes). */
  get length(): bigint {
    return call(() => this.#n().length);
  }
  /** Place private zeroed read-write memory. */
  alloc(offset: U64, len: U64): void {
    const [o, l] = [toU64(offset, 'offset'), toU64(len, 'len')];
    call(() => this.#n().alloc(o, l));
  }
  /** Place read-only zero pages. */
  mapZero(offset: U64, len: U64): void {
    const [o, l] = [toU64(offset, 'offset'), toU64(len, 'len')];
    call(() => this.#n().mapZero(o, l));
  }
  /** Place a shared view of `mappable` at fileOffset (bytes). */
  mapFile(offset: U64, len: U64, mappable: Mappable, fileOffset: U64, writable: boolean): void {
    const [o, l, f] = [toU64(offset, 'offset'), toU64(len, 'len'), toU64(fileOffset, 'fileOffset')];
    const m = nativeOf<NativeMappable>(mappable, Mappable, 'mappable');
    const w = toBoolean(writable, 'writable');
    call(() => this.#n().mapFile(o, l, m, f, w));
  }
  /** Return the range to the inaccessible reserved state (a valid but unplaced range is fine). */
  unmap(offset: U64, len: U64): void {
    const [o, l] = [toU64(offset, 'offset'), toU64(len, 'len')];
    call(() => this.#n().unmap(o, l));
  }
  /** Validate only (no-op on Linux). */
  commit(offset: U64, len: U64): void {
    const [o, l] = [toU64(offset, 'offset'), toU64(len, 'len')];
    call(() => this.#n().commit(o, l));
  }
  /** Free the pages: private → zeros; memfd view → hole punched (zeros in every view). */
  decommit(offset: U64, len: U64): void {
    const [o, l] = [toU64(offset, 'offset'), toU64(len, 'len')];
    call(() => this.#n().decommit(o, l));
  }
  /** mprotect the range read-write (true) or read-only (false). */
  setWritable(offset: U64, len: U64, allow: boolean): void {
    const [o, l] = [toU64(offset, 'offset'), toU64(len, 'len')];
    const a = toBoolean(allow, 'allow');
    call(() => this.#n().setWritable(o, l, a));
  }
  /** madvise(HUGEPAGE) (EINVAL where the kernel lacks THP). */
  madviseHugepage(offset: U64, len: U64): void {
    const [o, l] = [toU64(offset, 'offset'), toU64(len, 'len')];
    call(() => this.#n().madviseHugepage(o, l));
  }
  /** Name the VMAs `[anon:name]`; never throws for the name. */
  setName(offset: U64, len: U64, name: string): void {
    const [o, l] = [toU64(offset, 'offset'), toU64(len, 'len')];
    if (typeof name !== 'string') throw invalidArgType(`name must be a string, got ${describeType(name)}`);
    call(() => this.#n().setName(o, l, name));
  }
  /** Fault-safe copy out into dest; SparseMappingError. */
  readAt(offset: U64, dest: Uint8Array): void {
    const o = toU64(offset, 'offset');
    const d = toByteArray(dest, 'dest');
    call(() => this.#n().readAt(o, d));
  }
  /** Fault-safe copy in from src; SparseMappingError. */
  writeAt(offset: U64, src: Uint8Array): void {
    const o = toU64(offset, 'offset');
    const s = toByteArray(src, 'src');
    call(() => this.#n().writeAt(o, s));
  }
  /** Fault-safe fill of len bytes with byte (0–255). */
  fillAt(offset: U64, byte: number, len: U64): void {
    const [o, l] = [toU64(offset, 'offset'), toU64(len, 'len')];
    const b = toByte(byte, 'byte');
    call(() => this.#n().fillAt(o, b, l));
  }
  /** Token to reopen this mapping in a worker thread (single-use; see TransferHandle). */
  toHandle(): IssuedTransferHandle {
    return issueHandle('SparseMapping', call(() => this.#n().toHandle()));
  }
  /** Drop this reference (the VA goes when the last user goes). */
  close(): void {
    this.#closed = true;
    this.#n().close();
  }
  /** `util.inspect` form: open or closed, its length. */
  [inspect.custom](depth: number, options: InspectOptionsStylized): string {
    return inspectObject('SparseMapping', depth, options, () => ({ length: this.length }), this.#closed);
  }
  [Symbol.dispose](): void {
    this.close();
  }
}

/** Page-fault decision of a JS backing: gpa and remaining len in bytes. */
export type PageFaultHandler = (gpa: bigint, len: bigint, write: boolean) => 'retry' | 'fallback' | { fail: GuestMemoryErrorKind | `${GuestMemoryErrorKind}`; message?: string | undefined };

/** Options of fromSparseMapping (the JS backing's hooks). */
export interface GuestMemoryOptions {
  /** Debug name in error messages (default 'sparse'). */
  name?: string | undefined;
  /**
   * Called when a guarded access faults, on the JavaScript thread that created the memory: at
   * once in its synchronous operations; for `readAtAsync`/`writeAtAsync` (of any thread) through
   * a thread-safe function while the pool thread waits. Synchronous operations of another
   * worker thread (a memory reopened with `fromHandle`) cannot call it and fail instead.
   * After `'retry'` the access runs again from its start, so make all of `[gpa, gpa + len)`
   * accessible at once: a hook that places one page per call makes a large access cost a call
   * per page and a copy that grows with each one.
   */
  pageFault?: PageFaultHandler | undefined;
  /** Max consecutive Retry answers for one gpa before kind Other (default 1000). */
  retryLimit?: number | undefined;
  /** Slow-path read of len bytes at gpa. */
  readFallback?: ((gpa: bigint, len: bigint) => Uint8Array) | undefined;
  /** Slow-path write. */
  writeFallback?: ((gpa: bigint, data: Buffer) => void) | undefined;
  /** Slow-path fill. */
  fillFallback?: ((gpa: bigint, byte: number, len: bigint) => void) | undefined;
  /** Slow-path CAS; on mismatch write the observed bytes into current, return false. */
  compareExchangeFallback?: ((gpa: bigint, current: Buffer, replacement: Buffer) => boolean) | undefined;
  /** Pin pages; true = unlockGpns is called once on release. */
  lockGpns?: ((gpns: bigint[]) => boolean) | undefined;
  /** Unpin. */
  unlockGpns?: ((gpns: bigint[]) => void) | undefined;
}

/** A scatter list: byte window starting at in-page `offset` over the listed 4 KiB pages. */
export interface PagedRange {
  offset: number;
  len: U64;
  gpns: Iterable<U64>;
}

/** A DMA-shareable file-backed region (manager accessor only). */
export interface ShareableRegion {
  guestAddress: bigint;
  size: bigint;
  object: Mappable;
  fileOffset: bigint;
}

const kinds = new Set<string>(Object.values(GuestMemoryErrorKind));

/** The keys of {@link GuestMemoryOptions}. */
const GUEST_MEMORY_OPTION_KEYS = [
  'name',
  'pageFault',
  'retryLimit',
  'readFallback',
  'writeFallback',
  'fillFallback',
  'compareExchangeFallback',
  'lockGpns',
  'unlockGpns',
] as const satisfies readonly (keyof GuestMemoryOptions)[];

function optionalFunction<F>(options: Record<string, unknown>, name: string): F | undefined {
  const value = options[name];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'function') throw invalidArgType(`options.${name} must be a function, got ${describeType(value)}`);
  return value as F;
}

/**
 * Calls a user hook that must answer synchronously: a Promise (or any thenable) answer is
 * refused with a TypeError, and its outcome is observed so that a rejection is never left
 * unhandled.
 */
function syncOnly<A extends unknown[], R>(name: string, hook: (...args: A) => R): (...args: A) => R {
  return (...args: A) => {
    const result = hook(...args);
    if ((typeof result === 'object' || typeof result === 'function') && result !== null && typeof (result as { then?: unknown }).then === 'function') {
      Promise.resolve(result).catch(() => undefined);
      throw invalidArgType(`${name} must answer synchronously, not with a Promise`);
    }
    return result;
  };
}

/**
 * A hook's answer to the native side (`crates/js_api/src/hooks.rs`): JSON (`HookAnswer` for the
 * fallbacks and locking, `PageFaultAnswer` for `pageFault`), or the bytes a read fallback read
 * or a compare-exchange fallback observed when it did not swap.
 */
type HookAnswer = { answer: 'done' | 'swapped' | 'locked' | 'notLocked' } | { answer: 'failed'; causeToken: number };
type PageFaultAnswer = { answer: 'retry' | 'fallback' } | { answer: 'fail'; kind: string; message: string; causeToken: number | null };

type Answered = Exclude<HookAnswer['answer'], 'failed'>;

/** Wraps a hook so that it never throws into native code: a throw is kept under a token. */
function guarded<A extends unknown[]>(hook: (...args: A) => Answered): (...args: A) => string {
  return guardedBytes(hook) as (...args: A) => string;
}

/** Like {@link guarded}, for a hook that may answer with bytes. */
function guardedBytes<A extends unknown[]>(hook: (...args: A) => Answered | Uint8Array): (...args: A) => string | Uint8Array {
  return (...args: A) => {
    try {
      const result = hook(...args);
      return result instanceof Uint8Array ? result : JSON.stringify({ answer: result });
    } catch (error) {
      return JSON.stringify({ answer: 'failed', causeToken: storeCause(error) } satisfies HookAnswer);
    }
  };
}

/** The message of a thrown value, without running more of its code than `String()` does. */
function messageOf(error: unknown): string {
  try {
    return error instanceof Error ? error.message : String(error);
  } catch {
    return 'a value that cannot be converted to a string';
  }
}

function pageFaultAdapter(handler: PageFaultHandler): (gpa: bigint, len: bigint, write: boolean) => string {
  const fail = (kind: string, message: string, cause?: unknown): PageFaultAnswer => ({
    answer: 'fail',
    kind,
    message,
    causeToken: cause === undefined ? null : storeCause(cause),
  });
  const decide = (gpa: bigint, len: bigint, write: boolean): PageFaultAnswer => {
    let answer: unknown;
    try {
      answer = handler(gpa, len, write);
    } catch (error) {
      return fail('Other', `pageFault threw: ${messageOf(error)}`, error);
    }
    try {
      return readAnswer(gpa, answer);
    } catch (error) {
      // Reading the answer ran user code (a getter, a Proxy trap) that threw.
      return fail('Other', `pageFault's answer could not be read: ${messageOf(error)}`, error);
    }
  };
  const readAnswer = (gpa: bigint, answer: unknown): PageFaultAnswer => {
    if (typeof answer === 'object' && answer !== null && typeof (answer as { then?: unknown }).then === 'function') {
      // Page faults are answered synchronously; a Promise is refused, and its outcome is
      // observed so that a rejection is not left unhandled.
      Promise.resolve(answer).catch(() => undefined);
      const error = invalidArgType('pageFault must answer synchronously, not with a Promise');
      return fail('Other', error.message, error);
    }
    if (answer === 'retry' || answer === 'fallback') return { answer };
    if (typeof answer === 'object' && answer !== null && 'fail' in answer) {
      const { fail: kind, message } = answer as { fail: unknown; message?: unknown };
      if (typeof kind === 'string' && kinds.has(kind)) {
        return fail(kind, typeof message === 'string' ? message : `page fault at 0x${gpa.toString(16)} failed`);
      }
    }
    const error = invalidArgType(`pageFault must return 'retry', 'fallback' or {fail: GuestMemoryErrorKind, message?}, got ${describeType(answer)}`);
    return fail('Other', error.message, error);
  };
  return (gpa, len, write) => JSON.stringify(decide(gpa, len, write));
}

function toGpnArray(gpns: unknown, name: string): BigUint64Array {
  if (typeof gpns !== 'object' || gpns === null || typeof (gpns as Iterable<unknown>)[Symbol.iterator] !== 'function') {
    throw invalidArgType(`${name} must be an iterable of page numbers, got ${describeType(gpns)}`);
  }
  const list = Array.from(gpns as Iterable<unknown>, (gpn, i) => toU64(gpn, `${name}[${i}]`));
  return BigUint64Array.from(list);
}

function toPagedRange(range: unknown): { offset: number; len: bigint; gpns: BigUint64Array } {
  if (typeof range !== 'object' || range === null) throw invalidArgType(`range must be a {offset, len, gpns} object, got ${describeType(range)}`);
  const r = range as { offset?: unknown; len?: unknown; gpns?: unknown };
  // Each field read once: a getter may answer differently each time.
  const offset = r.offset;
  if (typeof offset !== 'number' || !Number.isInteger(offset)) throw invalidArgType(`range.offset must be an integer number, got ${describeType(offset)}`);
  if (offset < 0 || offset >= 4096) throw invalidArgValue(`range.offset must be between 0 and 4095, got ${offset}`);
  return { offset, len: toU64(r.len, 'range.len'), gpns: toGpnArray(r.gpns, 'range.gpns') };
}

/** Locked guest pages; never exposes addresses. */
export class LockedPages {
  readonly #native: NativeLockedPages;
  #released = false;

  private constructor(handle: NativeLockedPages) {
    this.#native = handle;
  }

  /** @internal */
  static wrap(handle: NativeLockedPages): LockedPages {
    if (!(handle instanceof native.NativeLockedPages)) throw internalOnly('LockedPages.wrap', 'GuestMemory#lockGpns');
    return new LockedPages(handle);
  }

  /** Number of pages. */
  get count(): number {
    return this.#native.count;
  }
  /** The locked page numbers (4 KiB pages). */
  get gpns(): bigint[] {
    return withViews(Array.from(this.#native.gpns));
  }
  /** Copy from page pageIndex at byte offset into dest (fault-free while locked). */
  readAt(pageIndex: number, offset: number, dest: Uint8Array): void {
    if (typeof pageIndex !== 'number' || !Number.isInteger(pageIndex) || pageIndex < 0) throw invalidArgType(`pageIndex must be a non-negative integer, got ${describeType(pageIndex)}`);
    if (typeof offset !== 'number' || !Number.isInteger(offset) || offset < 0) throw invalidArgType(`offset must be a non-negative integer, got ${describeType(offset)}`);
    const d = toByteArray(dest, 'dest');
    if (pageIndex > 0xffff_ffff || offset > 0xffff_ffff) throw invalidArgValue('pageIndex and offset must fit in 32 bits');
    call(() => this.#native.readAt(pageIndex, offset, d));
  }
  /** Unlock once (idempotent; also on GC). */
  release(): void {
    this.#released = true;
    this.#native.release();
  }
  /** `util.inspect` form: locked (`open`, with the page count and numbers) or released (`closed`). */
  [inspect.custom](depth: number, options: InspectOptionsStylized): string {
    return inspectObject('LockedPages', depth, options, () => ({ count: this.count, gpns: this.gpns }), this.#released);
  }
  [Symbol.dispose](): void {
    this.release();
  }
}

const guestAdopt = Symbol('adopt');


/**
 * The error a fast path threw; an argument error is replaced by the one `check` throws, which
 * names the argument (the fast paths read their arguments without knowing their names).
 */
function fastPathError(error: unknown, check: () => void): unknown {
  const translated = fromNative(error);
  const code = (translated as { code?: unknown }).code;
  if (code === 'ERR_INVALID_ARG_TYPE' || code === 'ERR_INVALID_ARG_VALUE') check();
  return translated;
}

/**
 * Calls the binding with arguments it checks itself; an argument error it throws (which names
 * neither the argument nor the value: `expected a number or a bigint`) is replaced by the one
 * `check` throws.
 */
function callNamed<T>(f: () => T, check: () => void): T {
  try {
    return f();
  } catch (error) {
    throw fastPathError(error, check);
  }
}

/** The type check of a scalar store's or compare-exchange's number (its range is the binding's). */
function integerNumber(value: unknown, name: string): void {
  if (typeof value !== 'number' || !Number.isInteger(value)) throw invalidArgType(`${name} must be an integer number, got ${describeType(value)}`);
}

/**
 * A vectored copy's argument error for entry `list[i]`, named by its checks here (the binding's
 * says `list[i].gpa: a number argument must be …` without the value), `entryIndex` kept.
 */
function vectoredError(error: unknown, list: unknown): unknown {
  const translated = fromNative(error);
  const index = (translated as { entryIndex?: unknown }).entryIndex;
  const code = (translated as { code?: unknown }).code;
  if ((code === 'ERR_INVALID_ARG_TYPE' || code === 'ERR_INVALID_ARG_VALUE') && typeof index === 'number' && Array.isArray(list)) {
    try {
      toU64((list[index] as { gpa?: unknown } | undefined)?.gpa, `list[${index}].gpa`);
    } catch (named) {
      return Object.assign(named as Error, { entryIndex: index });
    }
  }
  return translated;
}

/** One entry of `readv`/`writev`: `buffer.byteLength` bytes at `gpa`. */
export interface VectoredEntry {
  gpa: U64;
  buffer: ArrayBufferView;
}

/**
 * The arguments of a vectored copy for the native fast path: the GPAs, then one buffer per
 * entry. GPAs that are numbers (or bigints below 2^53) go in a reused Float64Array (the native
 * side checks each); any larger bigint sends them as a plain array instead. Buffers are checked
 * to be ArrayBufferViews here; everything else about the entries is checked natively.
 */
const vectorGpas = { numbers: new Float64Array(64), filling: false };
/** An `ERR_INVALID_ARG_TYPE` about entry `index` of a vectored copy (named, and in `entryIndex`). */
function entryTypeError(index: number, message: string): TypeError {
  return Object.assign(invalidArgType(`list[${index}]${message}`), { entryIndex: index });
}
/**
 * Above this many entries the buffers go to the native side as one array rather than as call
 * arguments: the engine limits how many arguments a spread call may pass (a list of some
 * 120,000 entries would otherwise fail with "Maximum call stack size exceeded").
 */
const SPREAD_ENTRIES = 16384;
function vectoredArgs(list: unknown, what: string): [Float64Array | U64[], ...ArrayBufferView[]] {
  if (!Array.isArray(list)) throw invalidArgType(`${what} takes an array of {gpa, buffer} entries, got ${describeType(list)}`);
  const n = list.length;
  // The entries' getters run user code, which may make a vectored copy of its own: that one
  // must not overwrite the GPAs this one has put in the shared array, so it gets its own.
  const shared = !vectorGpas.filling;
  if (shared && vectorGpas.numbers.length < n) vectorGpas.numbers = new Float64Array(Math.max(n, 2 * vectorGpas.numbers.length));
  const numbers = shared ? vectorGpas.numbers : new Float64Array(n);
  const args: [Float64Array | U64[], ...ArrayBufferView[]] = [numbers];
  let large = false;
  if (shared) vectorGpas.filling = true;
  try {
    fillVectoredArgs(list, n, numbers, args, () => (large = true));
  } finally {
    if (shared) vectorGpas.filling = false;
  }
  if (large) args[0] = (list as Array<{ gpa: U64 }>).map((entry) => entry.gpa);
  return args;
}

/** `vectoredArgs`' pass over the entries: each GPA into `numbers` (or `onLarge()`), each buffer into `args`. */
function fillVectoredArgs(list: unknown[], n: number, numbers: Float64Array, args: [Float64Array | U64[], ...ArrayBufferView[]], onLarge: () => void): void {
  for (let i = 0; i < n; i++) {
    const entry: unknown = list[i];
    if (typeof entry !== 'object' || entry === null) throw entryTypeError(i, ` must be an object {gpa, buffer}, got ${describeType(entry)}`);
    const { gpa, buffer } = entry as { gpa?: unknown; buffer?: unknown };
    if (typeof gpa === 'number') numbers[i] = gpa;
    else if (typeof gpa === 'bigint') {
      if (gpa >= 0n && gpa <= BigInt(Number.MAX_SAFE_INTEGER)) numbers[i] = Number(gpa);
      else onLarge();
    } else throw entryTypeError(i, `.gpa must be a number or a bigint, got ${describeType(gpa)}`);
    if (!ArrayBuffer.isView(buffer)) throw entryTypeError(i, `.buffer must be an ArrayBufferView (a typed array or DataView), got ${describeType(buffer)}`);
    args.push(buffer);
  }
}

type FastPaths = ReturnType<typeof native.guestMemoryFastPaths>;
/** Calls the fast path `copy` (`readv` or `writev`) with the arguments of `vectoredArgs`. */
function vectoredCall(copy: FastPaths['readv'], id: number, args: [Float64Array | U64[], ...ArrayBufferView[]]): void {
  if (args.length > SPREAD_ENTRIES) copy(id, args[0], args.slice(1) as ArrayBufferView[]);
  else copy(id, ...args);
}
let sharedFastPaths: FastPaths | undefined;

/** The fast-path functions of this thread's memories, made on first use. */
function fastPaths(): FastPaths {
  sharedFastPaths ??= native.guestMemoryFastPaths();
  return sharedFastPaths;
}

/**
 * A hook's answer that must be a boolean (`compareExchangeFallback`, `lockGpns`): anything else
 * is a TypeError, which fails the access with it as the cause (a forgotten `return` must not
 * read as "not swapped" or "swapped").
 */
function booleanAnswer(hook: string, answer: unknown, meaning: string): boolean {
  if (typeof answer !== 'boolean') throw invalidArgType(`${hook} must return a boolean (${meaning}), got ${describeType(answer)}`);
  return answer;
}

/** Fault-safe access to guest physical memory; all copies, never zero-copy views. */
export class GuestMemory {
  #closed = false;
  readonly #n: NativeGuestMemory;
  /**
   * The hottest operations as plain N-API functions (no per-call borrow tracking of napi-rs
   * class methods), shared by every memory of this thread; each call names the memory by #id.
   */
  readonly #f: FastPaths;
  /** #n's id for #f: names nothing once #n is closed. */
  readonly #id: number;

  /** @internal */
  constructor(token: typeof guestAdopt, handle: NativeGuestMemory) {
    if (token !== guestAdopt) {
      throw invalidArgType('GuestMemory cannot be constructed directly: use GuestMemory.allocate, GuestMemory.fromSparseMapping or a GuestMemoryClient');
    }
    this.#n = handle;
    this.#f = fastPaths();
    this.#id = handle.fastPathId();
    internals.set(this, handle);
  }

  /** @internal */
  static wrap(handle: NativeGuestMemory): GuestMemory {
    if (!(handle instanceof native.NativeGuestMemory)) throw internalOnly('GuestMemory.wrap', 'GuestMemory.allocate, GuestMemory.fromSparseMapping or a client\'s guestMemory()');
    return new GuestMemory(guestAdopt, handle);
  }

  /** Heap-backed memory of size bytes (rounded up to 4 KiB); installs no handler. */
  static allocate(size: U64): GuestMemory {
    const s = toU64(size, 'size');
    return GuestMemory.wrap(call(() => native.NativeGuestMemory.allocate(s)));
  }

  /** Memory of max address 0: every non-empty access is OutOfRange. */
  static empty(): GuestMemory {
    return GuestMemory.wrap(native.NativeGuestMemory.empty());
  }

  /**
   * Guest memory whose GPA = offset in `mapping`. A hook may access this memory again (no lock
   * is held); at most 32 hook calls nest on one thread: the next fails its access with a
   * GuestMemoryError whose innermost cause's `detail` says so.
   */
  static fromSparseMapping(mapping: SparseMapping, options: GuestMemoryOptions = {}): GuestMemory {
    const m = nativeOf<NativeSparseMapping>(mapping, SparseMapping, 'mapping');
    if (typeof options !== 'object' || options === null || Array.isArray(options)) throw invalidArgType(`options must be an object, got ${describeType(options)}`);
    checkOptionKeys(options, GUEST_MEMORY_OPTION_KEYS, 'GuestMemory.fromSparseMapping()');
    const o = options as Record<string, unknown>;
    const name = o.name === undefined ? 'sparse' : o.name;
    if (typeof name !== 'string') throw invalidArgType(`options.name must be a string, got ${describeType(name)}`);
    const retryLimit = o.retryLimit === undefined ? 1000 : o.retryLimit;
    if (typeof retryLimit !== 'number' || !Number.isInteger(retryLimit)) {
      throw invalidArgType(`options.retryLimit must be an integer, got ${typeof retryLimit === 'number' ? retryLimit : describeType(retryLimit)}`);
    }
    if (retryLimit < 0 || retryLimit > 0xffff_ffff) throw invalidArgValue(`options.retryLimit must be between 0 and 2^32-1, got ${retryLimit}`);
    const pageFault = optionalFunction<PageFaultHandler>(o, 'pageFault');
    const sync = <F extends (...args: never[]) => unknown>(name: string): F | undefined => {
      const hook = optionalFunction<F>(o, name);
      return hook === undefined ? undefined : (syncOnly(name, hook as unknown as (...args: unknown[]) => unknown) as unknown as F);
    };
    const readFallback = sync<NonNullable<GuestMemoryOptions['readFallback']>>('readFallback');
    const writeFallback = sync<NonNullable<GuestMemoryOptions['writeFallback']>>('writeFallback');
    const fillFallback = sync<NonNullable<GuestMemoryOptions['fillFallback']>>('fillFallback');
    const casFallback = sync<NonNullable<GuestMemoryOptions['compareExchangeFallback']>>('compareExchangeFallback');
    const lockGpns = sync<NonNullable<GuestMemoryOptions['lockGpns']>>('lockGpns');
    const unlockGpns = sync<NonNullable<GuestMemoryOptions['unlockGpns']>>('unlockGpns');
    const handle = rearming(() => call(() =>
      native.NativeGuestMemory.fromSparseMapping(
        m,
        name,
        retryLimit,
        pageFault ? pageFaultAdapter(pageFault) : null,
        readFallback
          ? guardedBytes((gpa: bigint, len: bigint) => {
              const data = readFallback(gpa, len);
              if (!(data instanceof Uint8Array) || BigInt(data.length) !== len) {
                throw invalidArgValue(`readFallback must return a Uint8Array of ${len} bytes`);
              }
              return data;
            })
          : null,
        writeFallback ? guarded((gpa: bigint, src: Buffer) => (writeFallback(gpa, src), 'done')) : null,
        fillFallback ? guarded((gpa: bigint, byte: number, len: bigint) => (fillFallback(gpa, byte, len), 'done')) : null,
        casFallback
          ? guardedBytes((gpa: bigint, current: Buffer, replacement: Buffer) =>
              booleanAnswer('compareExchangeFallback', casFallback(gpa, current, replacement), 'true when it swapped; false when it did not, with the bytes it found written into current')
                ? 'swapped'
                : current,
            )
          : null,
        lockGpns
          ? guarded((gpns: BigUint64Array) =>
              booleanAnswer('lockGpns', lockGpns(Array.from(gpns)), 'true when it locked the pages (unlockGpns is then called once on release), false when nothing needs unlocking') ? 'locked' : 'notLocked',
            )
          : null,
        unlockGpns
          ? (gpns: BigUint64Array) => {
              try {
                unlockGpns(Array.from(gpns));
              } catch (error) {
                process.emitWarning(`GuestMemory unlockGpns hook threw: ${error instanceof Error ? error.message : String(error)}`);
              }
            }
          : null,
      ),
    ));
    return GuestMemory.wrap(handle);
  }

  /** Reopen from toHandle() in a worker thread (same process). */
  static fromHandle(handle: TransferHandle): GuestMemory {
    const id = handleId(handle, 'GuestMemory');
    return GuestMemory.wrap(call(() => native.NativeGuestMemory.fromHandle(id)));
  }

  /** Debug name ('ram' for the manager's accessor). */
  get name(): string {
    return call(() => this.#n.name);
  }
  /** Address space size (bytes). */
  get maxAddress(): bigint {
    return call(() => this.#n.maxAddress);
  }

  /** Copy guest bytes at gpa into dest. */
  readAt(gpa: U64, dest: Uint8Array): void {
    try {
      this.#f.readAt(this.#id, gpa, dest);
    } catch (error) {
      throw fastPathError(error, () => {
        toU64(gpa, 'gpa');
        toByteArray(dest, 'dest');
      });
    }
  }
  /**
   * Copies many guest ranges in one call: `list[i].buffer.byteLength` bytes at `list[i].gpa`
   * into each buffer, in order (a typed array or DataView; entries may overlap). On a failure
   * the error is the one `readAt` of that entry would throw (its GPA and range), with
   * `entryIndex` (and the entry named in `detail`): every buffer before it has been filled,
   * the failing entry's buffer may have been written in part, the later ones are untouched.
   */
  readv(list: VectoredEntry[]): void {
    const args = vectoredArgs(list, 'readv');
    try {
      vectoredCall(this.#f.readv, this.#id, args);
    } catch (error) {
      throw vectoredError(error, list);
    }
  }
  /**
   * Writes many guest ranges in one call: each `list[i].buffer` to `list[i].gpa`, in order
   * (later entries win where they overlap). On a failure the error is the one `writeAt` of that
   * entry would throw, with `entryIndex`: every entry before it has been written completely,
   * the failing entry's range may have been written in part (as by a failing `writeAt`), the
   * later ones are not written.
   */
  writev(list: VectoredEntry[]): void {
    const args = vectoredArgs(list, 'writev');
    try {
      vectoredCall(this.#f.writev, this.#id, args);
    } catch (error) {
      throw vectoredError(error, list);
    }
  }
  /** Copy len guest bytes at gpa into a new Buffer. */
  read(gpa: U64, len: U64): Buffer {
    const length = toU64(len, 'len');
    if (length >= CHECKED_READ_BYTES) return call(() => this.#n.readToBuffer(gpa, length, MAX_BUFFER));
    const buffer = Buffer.allocUnsafe(Number(length));
    this.readAt(gpa, buffer);
    return buffer;
  }
  /** Copy src to guest gpa. */
  writeAt(gpa: U64, src: Uint8Array): void {
    try {
      this.#f.writeAt(this.#id, gpa, src);
    } catch (error) {
      throw fastPathError(error, () => {
        toU64(gpa, 'gpa');
        toByteArray(src, 'src');
      });
    }
  }
  /** Fill len bytes at gpa with byte (0–255). */
  fillAt(gpa: U64, byte: number, len: U64): void {
    try {
      this.#n.fillAt(gpa, byte, len);
    } catch (error) {
      throw fastPathError(error, () => {
        toU64(gpa, 'gpa');
        toByte(byte, 'byte');
        toU64(len, 'len');
      });
    }
  }

  /** Little-endian 8-bit load. */
  readU8(gpa: U64): number {
    try {
      return this.#f.readU8(this.#id, gpa);
    } catch (error) {
      throw fastPathError(error, () => {
        toU64(gpa, 'gpa');
      });
    }
  }
  /** Little-endian 16-bit load (single-copy atomic when aligned). */
  readU16(gpa: U64): number {
    try {
      return this.#f.readU16(this.#id, gpa);
    } catch (error) {
      throw fastPathError(error, () => {
        toU64(gpa, 'gpa');
      });
    }
  }
  /** Little-endian 32-bit load (single-copy atomic when aligned). */
  readU32(gpa: U64): number {
    try {
      return this.#f.readU32(this.#id, gpa);
    } catch (error) {
      throw fastPathError(error, () => {
        toU64(gpa, 'gpa');
      });
    }
  }
  /** Little-endian 64-bit load (single-copy atomic when aligned). */
  readU64(gpa: U64): bigint {
    try {
      return this.#f.readU64(this.#id, gpa);
    } catch (error) {
      throw fastPathError(error, () => {
        toU64(gpa, 'gpa');
      });
    }
  }
  /** 8-bit store; value range-checked (RangeError). */
  writeU8(gpa: U64, value: number): void {
    try {
      this.#f.writeU8(this.#id, gpa, value);
    } catch (error) {
      throw fastPathError(error, () => {
        toU64(gpa, 'gpa');
        integerNumber(value, 'value');
      });
    }
  }
  /** 16-bit little-endian store. */
  writeU16(gpa: U64, value: number): void {
    try {
      this.#f.writeU16(this.#id, gpa, value);
    } catch (error) {
      throw fastPathError(error, () => {
        toU64(gpa, 'gpa');
        integerNumber(value, 'value');
      });
    }
  }
  /** 32-bit little-endian store. */
  writeU32(gpa: U64, value: number): void {
    try {
      this.#f.writeU32(this.#id, gpa, value);
    } catch (error) {
      throw fastPathError(error, () => {
        toU64(gpa, 'gpa');
        integerNumber(value, 'value');
      });
    }
  }
  /** 64-bit little-endian store. */
  writeU64(gpa: U64, value: U64): void {
    try {
      this.#f.writeU64(this.#id, gpa, value);
    } catch (error) {
      throw fastPathError(error, () => {
        toU64(gpa, 'gpa');
        toU64(value, 'value');
      });
    }
  }

  /** Atomic CAS; returns the previous value (=== expected ⇔ swapped). */
  compareExchangeU8(gpa: U64, expected: number, replacement: number): number {
    return this.#compareExchangeNumber(gpa, 1, expected, replacement);
  }
  /** Atomic CAS; misaligned gpa → RangeError. */
  compareExchangeU16(gpa: U64, expected: number, replacement: number): number {
    return this.#compareExchangeNumber(gpa, 2, expected, replacement);
  }
  /** Atomic CAS; misaligned gpa → RangeError. */
  compareExchangeU32(gpa: U64, expected: number, replacement: number): number {
    return this.#compareExchangeNumber(gpa, 4, expected, replacement);
  }
  /** Atomic CAS; misaligned gpa → RangeError. */
  compareExchangeU64(gpa: U64, expected: U64, replacement: U64): bigint {
    return callNamed(
      () => this.#n.compareExchangeU64(gpa, expected, replacement),
      () => {
        toU64(gpa, 'gpa');
        toU64(expected, 'expected');
        toU64(replacement, 'replacement');
      },
    );
  }
  #compareExchangeNumber(gpa: U64, size: number, expected: number, replacement: number): number {
    return callNamed(
      () => this.#n.compareExchangeNumber(gpa, size, expected, replacement),
      () => {
        toU64(gpa, 'gpa');
        integerNumber(expected, 'expected');
        integerNumber(replacement, 'replacement');
      },
    );
  }

  /** View of [offset, offset+len) (bytes) with its own GPA 0. */
  subrange(offset: U64, len: U64): GuestMemory {
    return GuestMemory.wrap(
      rearming(() =>
        callNamed(
          () => this.#n.subrange(offset, len),
          () => {
            toU64(offset, 'offset');
            toU64(len, 'len');
          },
        ),
      ),
    );
  }
  /** 1-byte read at gpa succeeds. */
  probeReadable(gpa: U64): boolean {
    return callNamed(() => this.#n.probeReadable(gpa), () => toU64(gpa, 'gpa'));
  }
  /** CAS(v, v) at gpa succeeds. */
  probeWritable(gpa: U64): boolean {
    return callNamed(() => this.#n.probeWritable(gpa), () => toU64(gpa, 'gpa'));
  }

  /** Scatter-list read; dest.length must equal range.len (RangeError). */
  readRange(range: PagedRange, dest: Uint8Array): void {
    const r = toPagedRange(range);
    const d = toByteArray(dest, 'dest');
    call(() => this.#n.readRange(r.offset, r.len, r.gpns, d));
  }
  /** Scatter-list write; src.length must equal range.len. */
  writeRange(range: PagedRange, src: Uint8Array): void {
    const r = toPagedRange(range);
    const s = toByteArray(src, 'src');
    call(() => this.#n.writeRange(r.offset, r.len, r.gpns, s));
  }
  /** Zero a scatter list. */
  zeroRange(range: PagedRange): void {
    const r = toPagedRange(range);
    call(() => this.#n.zeroRange(r.offset, r.len, r.gpns));
  }
  /** Lock 4 KiB pages by number; they stay valid in this process until released. */
  lockGpns(gpns: Iterable<U64>): LockedPages {
    const list = toGpnArray(gpns, 'gpns');
    return LockedPages.wrap(call(() => this.#n.lockGpns(list)));
  }

  /** read() on the libuv pool, via a Rust-owned buffer. */
  async readAtAsync(gpa: U64, len: U64): Promise<Buffer> {
    const l = toU64(len, 'len');
    return (await settle(callNamed(() => this.#n.readAtAsync(gpa, l, MAX_BUFFER), () => toU64(gpa, 'gpa')))) as Buffer;
  }
  /** writeAt() on the libuv pool; src is copied first. */
  async writeAtAsync(gpa: U64, src: Uint8Array): Promise<void> {
    const s = toByteArray(src, 'src');
    await settle(callNamed(() => this.#n.writeAtAsync(gpa, s), () => toU64(gpa, 'gpa')));
  }

  /** DMA sharing of the manager's file-backed accessor; null otherwise or in private mode. */
  sharing(): { getRegions(): Promise<ShareableRegion[]> } | null {
    const handle = this.#n;
    if (!call(() => handle.hasSharing())) return null;
    return {
      async getRegions(): Promise<ShareableRegion[]> {
        const regions = await settle(call(() => handle.sharingRegions()));
        return withViews((regions ?? []).map((r) => ({ guestAddress: r.guestAddress, size: r.size, object: Mappable.wrap(r.object), fileOffset: r.fileOffset })));
      },
    };
  }
  /** Token for a worker thread (single-use; see TransferHandle). */
  toHandle(): IssuedTransferHandle {
    return issueHandle('GuestMemory', call(() => this.#n.toHandle()));
  }
  /** Drop this reference only. */
  close(): void {
    this.#closed = true;
    this.#n.close();
  }
  /** `util.inspect` form: open or closed, its name and maxAddress. */
  [inspect.custom](depth: number, options: InspectOptionsStylized): string {
    return inspectObject('GuestMemory', depth, options, () => ({ name: this.name, maxAddress: this.maxAddress }), this.#closed);
  }
  [Symbol.dispose](): void {
    this.close();
  }
}
