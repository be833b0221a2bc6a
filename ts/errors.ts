/**
 * The error classes of membacking and the translation of native errors into them.
 *
 * Every error thrown is an `Error` subclass with a stable `code`: `ERR_` plus the Rust variant
 * name in SCREAMING_SNAKE_CASE, an errno name for OS errors, or `ERR_INVALID_ARG_TYPE` /
 * `ERR_INVALID_ARG_VALUE` on a `TypeError` / `RangeError` for bad arguments (every input the
 * Rust core would panic on included, with the panic text as message).
 */
import { getSystemErrorName } from 'node:util';
import { takeCause } from './causes';

/** Every error code (see api.md §10). */
export type ErrorCode =
  | 'ERR_INVALID_ARG_TYPE'
  | 'ERR_INVALID_ARG_VALUE'
  | 'ERR_INVALID_INPUT'
  | 'ERR_CLOSED'
  | 'ERR_PANIC'
  | 'ERR_INVALID_MEMORY_RANGE'
  | 'ERR_BAD_SIZE'
  | 'ERR_BAD_MMIO_GAPS'
  | 'ERR_BAD_MEMORY_RANGES'
  | 'ERR_VTL2_RANGE_BEFORE_END_OF_RAM'
  | 'ERR_INVALID_RAM_FOR_X86'
  | 'ERR_REGISTRATION_FAILED'
  | 'ERR_REGISTRAR_REENTRY'
  | 'ERR_OUT_OF_BOUNDS'
  | 'ERR_MEMORY'
  | 'ERR_GUEST_MEMORY_OTHER'
  | 'ERR_GUEST_MEMORY_OUT_OF_RANGE'
  | 'ERR_GUEST_MEMORY_VTL_PROTECTED'
  | 'ERR_GUEST_MEMORY_NOT_PRIVATE'
  | 'ERR_GUEST_MEMORY_NOT_SHARED'
  | 'ERR_GUEST_MEMORY_FAULT'
  | 'ERR_UNSUPPORTED'
  | `E${string}`;

/** Base of every domain error: `code`, the original's message, `cause` for a wrapped source. */
export class MembackingError extends Error {
  /** The stable error code. */
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }

  override get name(): string {
    return this.constructor.name;
  }
}

/** Fault details of a recovered SIGSEGV/SIGBUS. */
export interface FaultInfo {
  signal: 'SIGSEGV' | 'SIGBUS' | 'SIGILL';
  siCode: number;
  trapno: number;
}

/** Upstream error kinds of guest memory (values are the names). */
export enum GuestMemoryErrorKind {
  Other = 'Other',
  OutOfRange = 'OutOfRange',
  VtlProtected = 'VtlProtected',
  NotPrivate = 'NotPrivate',
  NotShared = 'NotShared',
}

/** `MemoryRange.tryNew` failure; `start`/`end` are the rejected raw values (bytes). */
export class InvalidMemoryRangeError extends MembackingError {
  /** The rejected start (bytes). */
  readonly start: bigint;
  /** The rejected end (bytes). */
  readonly end: bigint;

  constructor(code: ErrorCode, message: string, fields: { start: bigint; end: bigint }) {
    super(code, message);
    this.start = fields.start;
    this.end = fields.end;
  }
}

/** `MemoryLayout` construction errors and the x86 legacy split error. */
export class MemoryLayoutError extends MembackingError {}

/** A registration failed; `address` is the original's `Err` value (bytes). */
export class RegistrarError extends MembackingError {
  /** The failing address: the offset-adjusted piece start now, the raw chunk base later. */
  readonly address?: bigint;

  constructor(code: ErrorCode, message: string, fields: { address?: bigint }, options?: { cause?: unknown }) {
    super(code, message, options);
    if (fields.address !== undefined) this.address = fields.address;
  }
}

/** An operating-system error: `code` is the errno name (`EINVAL`, `ENOMEM`, …). */
export class OsError extends MembackingError {
  /** The errno value. */
  readonly errno: number;
  /** The failing system call, where known. */
  readonly syscall?: string;

  constructor(code: ErrorCode, message: string, fields: { errno?: number; syscall?: string }) {
    super(code, message);
    this.errno = fields.errno ?? 0;
    if (fields.syscall !== undefined) this.syscall = fields.syscall;
  }
}

/** Guarded access to a SparseMapping failed (offset in bytes, relative to the access). */
export class SparseMappingError extends MembackingError {
  /** Where the access failed (bytes from the start of the access; 0 for ERR_OUT_OF_BOUNDS). */
  readonly offset: bigint;
  /** Whether the failing access was a write. */
  readonly isWrite: boolean;
  /** The recovered fault (`ERR_MEMORY` only). */
  readonly fault?: FaultInfo;

  constructor(code: ErrorCode, message: string, fields: { offset?: bigint; isWrite?: boolean; fault?: FaultInfo }) {
    super(code, message);
    this.offset = fields.offset ?? 0n;
    this.isWrite = fields.isWrite ?? false;
    if (fields.fault !== undefined) this.fault = fields.fault;
  }
}

/** A GuestMemory operation failed. */
export class GuestMemoryError extends MembackingError {
  /** The upstream kind (ERR_GUEST_MEMORY_FAULT errors are kind Other). */
  readonly kind: GuestMemoryErrorKind;
  /** 'read' | 'write' | 'fill' | 'compare exchange' | 'lock' | 'subrange' | 'probe'. */
  readonly op: string;
  /** Precise failing address (bytes). */
  readonly gpa?: bigint;
  /** Requested range (bytes; absent for lock/probe). */
  readonly range?: { start: bigint; end: bigint };
  /** Present when a hardware fault ended the access (always with ERR_GUEST_MEMORY_FAULT). */
  readonly fault?: FaultInfo;

  constructor(
    code: ErrorCode,
    message: string,
    fields: { kind?: string; op?: string; gpa?: bigint; range?: { start: string; end: string }; fault?: FaultInfo },
    options?: { cause?: unknown },
  ) {
    super(code, message, options);
    this.kind = (fields.kind ?? 'Other') as GuestMemoryErrorKind;
    this.op = fields.op ?? '';
    if (fields.gpa !== undefined) this.gpa = fields.gpa;
    if (fields.range !== undefined) this.range = { start: BigInt(fields.range.start), end: BigInt(fields.range.end) };
    if (fields.fault !== undefined) this.fault = fields.fault;
  }
}

/** A `TypeError` with `code` `ERR_INVALID_ARG_TYPE`. */
export function invalidArgType(message: string): TypeError & { code: 'ERR_INVALID_ARG_TYPE' } {
  return Object.assign(new TypeError(message), { code: 'ERR_INVALID_ARG_TYPE' as const });
}

/** A `RangeError` with `code` `ERR_INVALID_ARG_VALUE` (bad value, or a Rust panic's text). */
export function invalidArgValue(message: string): RangeError & { code: 'ERR_INVALID_ARG_VALUE' } {
  return Object.assign(new RangeError(message), { code: 'ERR_INVALID_ARG_VALUE' as const });
}

/** A `MembackingError` with `code` `ERR_CLOSED`. */
export function closedError(what: string): MembackingError {
  return new MembackingError('ERR_CLOSED', `${what} is closed`);
}

type Fields = Record<string, unknown>;
type ErrorFactory = (code: ErrorCode, message: string, fields: Fields) => Error;

const plain =
  (Class: new (code: ErrorCode, message: string) => MembackingError): ErrorFactory =>
  (code, message) =>
    new Class(code, message);

/** Which class each native code becomes. */
const factories: Record<string, ErrorFactory> = {
  ERR_INVALID_MEMORY_RANGE: (code, message, fields) =>
    new InvalidMemoryRangeError(code, message, fields as { start: bigint; end: bigint }),
  ERR_BAD_SIZE: plain(MemoryLayoutError),
  ERR_BAD_MMIO_GAPS: plain(MemoryLayoutError),
  ERR_BAD_MEMORY_RANGES: plain(MemoryLayoutError),
  ERR_VTL2_RANGE_BEFORE_END_OF_RAM: plain(MemoryLayoutError),
  ERR_INVALID_RAM_FOR_X86: plain(MemoryLayoutError),
  ERR_REGISTRATION_FAILED: (code, message, fields) => new RegistrarError(code, message, fields),
  ERR_REGISTRAR_REENTRY: (code, message, fields) => new RegistrarError(code, message, fields),
  ERR_OUT_OF_BOUNDS: (code, message, fields) => new SparseMappingError(code, message, fields),
  ERR_MEMORY: (code, message, fields) => new SparseMappingError(code, message, fields),
};
for (const kind of ['OTHER', 'OUT_OF_RANGE', 'VTL_PROTECTED', 'NOT_PRIVATE', 'NOT_SHARED', 'FAULT']) {
  factories[`ERR_GUEST_MEMORY_${kind}`] = (code, message, fields) => new GuestMemoryError(code, message, fields);
}

/** Classes named by the native side (`errorClass`) where one code belongs to several. */
const classFactories: Record<string, ErrorFactory> = {};

/** Registers the class that native errors naming `errorClass` become. */
export function registerErrorClass(name: string, factory: ErrorFactory): void {
  classFactories[name] = factory;
}

/** Registers the class of further native codes (used by the modules of later areas). */
export function registerErrorFactory(code: string, factory: ErrorFactory): void {
  factories[code] = factory;
}

/** The errno name (`EINVAL`, …) of an errno value, as Node's system errors spell it. */
function errnoName(errno: number): ErrorCode {
  try {
    return getSystemErrorName(-errno) as ErrorCode;
  } catch {
    return 'EUNKNOWN';
  }
}

function parseFields(json: string): Fields {
  const fields = JSON.parse(json) as Fields;
  for (const [key, value] of Object.entries(fields)) {
    if (typeof value === 'string' && /^0x[0-9a-f]+$/.test(value)) fields[key] = BigInt(value);
  }
  return fields;
}

/**
 * Turns an error thrown by the native binding into the public error it stands for. Errors
 * that do not come from the binding (a callback's own exception) pass through unchanged.
 */
export function fromNative(error: unknown): unknown {
  if (!(error instanceof Error)) return error;
  let raw = (error as { code?: unknown }).code;
  if (typeof raw !== 'string') return error;
  let message = error.message;
  // Errors that travelled through napi-rs's own error type carry `CODE{fields}\u001fmessage`.
  const separator = message.indexOf('\u001f');
  if (separator >= 0) {
    raw = message.slice(0, separator);
    message = message.slice(separator + 1);
  }
  return translate(raw as string, message);
}

function translate(raw: string, message: string): unknown {
  const space = raw.indexOf(' ');
  const code = (space < 0 ? raw : raw.slice(0, space)) as ErrorCode;
  const fields = space < 0 ? {} : parseFields(raw.slice(space + 1));
  if (code === 'ERR_INVALID_ARG_TYPE') return invalidArgType(message);
  if (code === 'ERR_INVALID_ARG_VALUE') return invalidArgValue(message);
  if (code === 'ERR_INVALID_INPUT') {
    return Object.assign(new RangeError(message), { code }, fields);
  }
  if (code === ('ERR_OS_ERROR' as ErrorCode)) {
    const errno = typeof fields.errno === 'number' ? fields.errno : 0;
    const name = errnoName(errno);
    return new OsError(name, message, fields as { errno?: number; syscall?: string });
  }
  if (!code.startsWith('ERR_')) {
    // A napi-rs argument conversion failure (status names such as `InvalidArg`,
    // `BigintExpected`): the argument had the wrong JavaScript type.
    return invalidArgType(message);
  }
  // A nested cause (`{code, message, …fields}`) from a Rust error's source chain.
  let nestedCause: unknown;
  if (typeof fields.cause === 'object' && fields.cause !== null) {
    const { code: causeCode, message: causeMessage, ...causeFields } = fields.cause as Record<string, unknown>;
    nestedCause = translate(`${String(causeCode)} ${JSON.stringify(causeFields)}`, String(causeMessage));
    delete fields.cause;
  }
  const classFactory = typeof fields.errorClass === 'string' ? classFactories[fields.errorClass] : undefined;
  delete fields.errorClass;
  const factory = classFactory ?? factories[code];
  const translated = factory ? factory(code, message, fields) : new MembackingError(code, message);
  if (nestedCause !== undefined) {
    Object.defineProperty(translated, 'cause', { value: nestedCause, writable: true, configurable: true });
  }
  if (typeof fields.causeToken === 'number') {
    const cause = takeCause(fields.causeToken);
    delete fields.causeToken;
    if (cause !== undefined) Object.defineProperty(translated, 'cause', { value: cause, writable: true, configurable: true });
  }
  for (const [key, value] of Object.entries(fields)) {
    if (!(key in translated)) Object.defineProperty(translated, key, { value, enumerable: true });
  }
  return translated;
}

/** Calls into the binding, translating what it throws. */
export function call<T>(f: () => T): T {
  try {
    return f();
  } catch (error) {
    throw fromNative(error);
  }
}
