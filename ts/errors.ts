/**
 * The error classes of membacking and the construction of errors the native binding throws.
 *
 * Every error is an `Error` subclass with a stable `code`. The Rust side decides class, code,
 * message, fields and cause for every error (the table of `crates/js_api/src/errors.rs`) and
 * throws it as JSON after a `\u001f` in the message; {@link fromNative} builds the public error
 * from that and nothing else. An error without the marker comes from napi-rs's own argument
 * conversion: a wrong JavaScript type. The codes are generated from the Rust table
 * (`ts/generated/errors.ts`); an OS error's code is its errno name, as Node spells it.
 */
import { constants } from 'node:os';
import { join, sep } from 'node:path';
import { getSystemErrorName } from 'node:util';
import { takeCause } from './causes';
import { ErrorCodeValues, type ErrorClassName, type ErrorCode as NativeErrorCode } from './generated/errors';
import { GuestMemoryErrorKind, type FaultSignal } from './generated/enums';
import { jsonSafe } from './json_view';
import { parseNativeJson } from './native_json';

export { GuestMemoryErrorKind } from './generated/enums';

/**
 * Linux's errno names by value (`asm-generic/errno-base.h` and `asm-generic/errno.h`, which x86-64
 * and arm64 share; 41 and 58 are unused). Node's `getSystemErrorName` names only the errnos libuv
 * knows ("Unknown system error -133" for EHWPOISON, which a KVM or a poisoned page can return),
 * and `os.constants.errno` lacks some it does name (EUNATCH, EREMOTEIO, …): this table names the rest.
 */
const LINUX_ERRNO_NAMES = [
  null, 'EPERM', 'ENOENT', 'ESRCH', 'EINTR', 'EIO', 'ENXIO', 'E2BIG', 'ENOEXEC', 'EBADF', 'ECHILD',
  'EAGAIN', 'ENOMEM', 'EACCES', 'EFAULT', 'ENOTBLK', 'EBUSY', 'EEXIST', 'EXDEV', 'ENODEV',
  'ENOTDIR', 'EISDIR', 'EINVAL', 'ENFILE', 'EMFILE', 'ENOTTY', 'ETXTBSY', 'EFBIG', 'ENOSPC',
  'ESPIPE', 'EROFS', 'EMLINK', 'EPIPE', 'EDOM', 'ERANGE', 'EDEADLK', 'ENAMETOOLONG', 'ENOLCK',
  'ENOSYS', 'ENOTEMPTY', 'ELOOP', null, 'ENOMSG', 'EIDRM', 'ECHRNG', 'EL2NSYNC', 'EL3HLT',
  'EL3RST', 'ELNRNG', 'EUNATCH', 'ENOCSI', 'EL2HLT', 'EBADE', 'EBADR', 'EXFULL', 'ENOANO',
  'EBADRQC', 'EBADSLT', null, 'EBFONT', 'ENOSTR', 'ENODATA', 'ETIME', 'ENOSR', 'ENONET', 'ENOPKG',
  'EREMOTE', 'ENOLINK', 'EADV', 'ESRMNT', 'ECOMM', 'EPROTO', 'EMULTIHOP', 'EDOTDOT', 'EBADMSG',
  'EOVERFLOW', 'ENOTUNIQ', 'EBADFD', 'EREMCHG', 'ELIBACC', 'ELIBBAD', 'ELIBSCN', 'ELIBMAX',
  'ELIBEXEC', 'EILSEQ', 'ERESTART', 'ESTRPIPE', 'EUSERS', 'ENOTSOCK', 'EDESTADDRREQ', 'EMSGSIZE',
  'EPROTOTYPE', 'ENOPROTOOPT', 'EPROTONOSUPPORT', 'ESOCKTNOSUPPORT', 'EOPNOTSUPP', 'EPFNOSUPPORT',
  'EAFNOSUPPORT', 'EADDRINUSE', 'EADDRNOTAVAIL', 'ENETDOWN', 'ENETUNREACH', 'ENETRESET',
  'ECONNABORTED', 'ECONNRESET', 'ENOBUFS', 'EISCONN', 'ENOTCONN', 'ESHUTDOWN', 'ETOOMANYREFS',
  'ETIMEDOUT', 'ECONNREFUSED', 'EHOSTDOWN', 'EHOSTUNREACH', 'EALREADY', 'EINPROGRESS', 'ESTALE',
  'EUCLEAN', 'ENOTNAM', 'ENAVAIL', 'EISNAM', 'EREMOTEIO', 'EDQUOT', 'ENOMEDIUM', 'EMEDIUMTYPE',
  'ECANCELED', 'ENOKEY', 'EKEYEXPIRED', 'EKEYREVOKED', 'EKEYREJECTED', 'EOWNERDEAD',
  'ENOTRECOVERABLE', 'ERFKILL', 'EHWPOISON',
] as const;

/** A Linux errno name. */
type LinuxErrnoName = Exclude<(typeof LINUX_ERRNO_NAMES)[number], null>;

/**
 * The errno names an `OsError` may have: Node's (`os.constants.errno`, without the Windows-only
 * `WSA…` names) and Linux's. A closed union: a misspelt name does not compile.
 */
export type ErrnoName = Extract<keyof typeof constants.errno, `E${string}`> | LinuxErrnoName;

/** Every code membacking throws: the package's own (from the Rust table) and errno names. */
export type ErrorCode = NativeErrorCode | ErrnoName;

/** The package's own codes, in the table's order. */
export const ERROR_CODES: readonly NativeErrorCode[] = ErrorCodeValues;

/**
 * The directories of this package's code, whose frames are left out of stacks: the compiled
 * JavaScript, and the TypeScript sources its source maps name (where `--enable-source-maps`
 * puts the frames).
 */
const PACKAGE_CODE = [`${__dirname}${sep}`, `${join(__dirname, '..', 'ts')}${sep}`];

/** `MEMBACKING_FULL_STACKS` is set: stacks keep membacking's frames. */
const FULL_STACKS = Boolean(process.env.MEMBACKING_FULL_STACKS);

/**
 * V8's getter of an error's own `stack` accessor (shared by all errors; it formats the stack on
 * first read), or undefined where `stack` is a data property.
 */
const FORMAT_STACK = Object.getOwnPropertyDescriptor(new Error(), 'stack')?.get;

/** `stack` without the frames of this package's code (unchanged when no other frame remains). */
function trimmedStack(stack: unknown): unknown {
  if (typeof stack !== 'string') return stack;
  const lines = stack.split('\n');
  const firstFrame = lines.findIndex((line) => /^\s+at /.test(line));
  if (firstFrame < 0) return stack;
  const frames = lines.slice(firstFrame);
  const theirs = frames.filter((line) => !PACKAGE_CODE.some((directory) => line.includes(directory)));
  if (theirs.length === 0 || theirs.length === frames.length) return stack;
  return [...lines.slice(0, firstFrame), ...theirs].join('\n');
}

/**
 * Drops the frames of this package's own JavaScript from `error.stack`, so that the stack
 * starts at the user's call (the call into membacking, or the `await` of its promise). The
 * stack is kept whole when no frame would remain, or when `MEMBACKING_FULL_STACKS` is set (to
 * debug membacking itself). Where V8 formats stacks on first read, trimming waits for that
 * read too, so an error nobody prints costs one property definition more; returns `error`.
 */
export function startAtUsersCall<E extends Error>(error: E): E {
  if (FULL_STACKS) return error;
  if (FORMAT_STACK === undefined) {
    // `stack` is a data property (older V8): trim it now.
    error.stack = trimmedStack(error.stack) as string;
    return error;
  }
  const format = FORMAT_STACK;
  let stack: { value: unknown } | null = null;
  Object.defineProperty(error, 'stack', {
    get(this: E) {
      stack ??= { value: trimmedStack(format.call(this)) };
      return stack.value;
    },
    set(value: unknown) {
      stack = { value };
    },
    enumerable: false,
    configurable: true,
  });
  return error;
}

/** Base of every domain error: `code`, the original's message, `cause` for a wrapped source. */
export class MembackingError extends Error {
  /** The stable error code. */
  readonly code: ErrorCode;

  /**
   * Our explanation, where `message` is a text the contract fixes (the original's error message
   * or panic text) and so cannot carry it: the values involved, the rule they break, what to
   * do. Absent when the message says it all. Errors of other classes the package throws
   * (`RangeError` for a panic's text, `TypeError`) may carry it too.
   */
  declare readonly detail?: string;

  /** Set on the error of one change of `manager.apply(changes)`: the change's index. */
  declare readonly changeIndex?: number;
  /** Set on the error of one entry of `readv`/`writev`: the entry's index. */
  declare readonly entryIndex?: number;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    startAtUsersCall(this);
  }

  override get name(): string {
    return this.constructor.name;
  }

  /** JSON-safe form: `name`, `code`, `message`, the fields (u64 values as `'0x…'`), `cause`. */
  toJSON(): Record<string, unknown> {
    return errorJson(this);
  }
}

/**
 * The JSON form of an error: its name, message, code and other own fields (u64 values as
 * `'0x…'` strings), and its cause's JSON form (the stack is left out).
 */
export function errorJson(error: Error, depth = 0): Record<string, unknown> {
  const out: Record<string, unknown> = { name: error.name, message: error.message };
  for (const [key, value] of Object.entries(error)) {
    if (key !== 'cause' && key !== 'stack') out[key] = jsonSafe(value);
  }
  const cause = error.cause;
  if (cause !== undefined) {
    out.cause = cause instanceof Error ? (depth < 8 ? errorJson(cause, depth + 1) : String(cause)) : jsonSafe(cause);
  }
  return out;
}

/** Gives a built-in error (TypeError, RangeError, Error) the JSON form of ours. */
function withErrorJson<E extends Error>(error: E): E {
  startAtUsersCall(error);
  Object.defineProperty(error, 'toJSON', {
    value(this: Error) {
      return errorJson(this);
    },
    enumerable: false,
    writable: true,
    configurable: true,
  });
  return error;
}

/** Fault details of a recovered SIGSEGV/SIGBUS. */
export interface FaultInfo {
  signal: FaultSignal;
  siCode: number;
  trapno: number;
}

/** `MemoryRange.tryNew` failure; `start`/`end` are the rejected raw values (bytes). */
export class InvalidMemoryRangeError extends MembackingError {
  /** The rejected start (bytes). */
  declare readonly start: bigint;
  /** The rejected end (bytes). */
  declare readonly end: bigint;
}

/** `MemoryLayout` construction errors and the x86 legacy split error. */
export class MemoryLayoutError extends MembackingError {}

/** A registration failed; `address` is the original's `Err` value (bytes). */
export class RegistrarError extends MembackingError {
  /** The failing address: the offset-adjusted piece start now, the raw chunk base later. */
  declare readonly address?: bigint;
}

/** An operating-system error: `code` is the errno name (`EINVAL`, `ENOMEM`, …). */
export class OsError extends MembackingError {
  /** The errno value. */
  declare readonly errno: number;
  /** The failing system call, where known. */
  declare readonly syscall?: string;
  /** A snapshot's file operation (`open`, `write`, `rename`, …), and the path it concerns. */
  declare readonly op?: string;
  declare readonly path?: string;
}

/** Guarded access to a SparseMapping failed (offset in bytes, relative to the access). */
export class SparseMappingError extends MembackingError {
  /** Where the access failed (bytes from the start of the access; 0 for ERR_OUT_OF_BOUNDS). */
  declare readonly offset: bigint;
  /** Whether the failing access was a write. */
  declare readonly isWrite: boolean;
  /** The recovered fault (`ERR_MEMORY` only). */
  declare readonly fault?: FaultInfo;
}

/** A GuestMemory operation failed. */
export class GuestMemoryError extends MembackingError {
  /** The upstream kind (ERR_GUEST_MEMORY_FAULT errors are kind Other). */
  declare readonly kind: GuestMemoryErrorKind;
  /** 'read' | 'write' | 'fill' | 'compare exchange' | 'lock' | 'subrange' | 'probe'. */
  declare readonly op: string;
  /** Precise failing address (bytes). */
  declare readonly gpa?: bigint;
  /** Requested range (bytes; absent for lock/probe). */
  declare readonly range?: { start: bigint; end: bigint };
  /** Present when a hardware fault ended the access (always with ERR_GUEST_MEMORY_FAULT). */
  declare readonly fault?: FaultInfo;
}

/** GuestMemoryBuilder.build failed. */
export class MemoryBuildError extends MembackingError {}
/** attachPartition failed (cause: PartitionMapperError or VaMapperError). */
export class PartitionAttachError extends MembackingError {}
/** Mapping into a partition failed (cause: the partition's error). */
export class PartitionMapperError extends MembackingError {}
/** Creating a VA mapper failed. */
export class VaMapperError extends MembackingError {}
/** Region manager, visibility, device window and lifecycle errors of a manager. */
export class MemoryManagerError extends MembackingError {}
/** KVM partition and vCPU errors. */
export class KvmError extends MembackingError {}
/**
 * Dirty tracking, snapshot and restore errors: ERR_SNAPSHOT_CORRUPT (`file`, `offset`,
 * `what`), ERR_SNAPSHOT_VERSION (`file`, `found`, `supported`), ERR_SNAPSHOT_LAYOUT (`dir`,
 * `what` differs), ERR_DIRTY_TRACKING_OFF (`base`, `reason`), ERR_UNSUPPORTED for a lazy restore
 * without userfaultfd (`reason`). File system failures are `OsError`s with `op` and `path`.
 */
export class SnapshotError extends MembackingError {
  /** The snapshot file concerned (ERR_SNAPSHOT_CORRUPT, ERR_SNAPSHOT_VERSION). */
  declare readonly file?: string;
  /** Byte offset in `file` where the problem was found (ERR_SNAPSHOT_CORRUPT). */
  declare readonly offset?: bigint;
  /** What is wrong, or what differs. */
  declare readonly what?: string;
  /** The format version found, and the one this build reads (ERR_SNAPSHOT_VERSION). */
  declare readonly found?: number;
  declare readonly supported?: number;
  /** The snapshot directory (ERR_SNAPSHOT_LAYOUT). */
  declare readonly dir?: string;
  /** The base of an incremental snapshot (ERR_DIRTY_TRACKING_OFF). */
  declare readonly base?: string;
  /** Why (ERR_DIRTY_TRACKING_OFF, ERR_UNSUPPORTED). */
  declare readonly reason?: string;
}

/**
 * Live migration errors: ERR_MIGRATION_ABORTED (`phase` where it stopped — 'handshake',
 * 'rounds', 'final', or 'completing' when the destination may have completed; `cause`: the
 * value the stream failed with, the signal's reason, what `pause` threw, or the peer's
 * report), ERR_MIGRATION_PROTOCOL (`what`, `offset` of the frame in the stream the detecting
 * side received, `detectedBy`), ERR_MIGRATION_DOWNTIME (`rounds`, `remainderBytes`,
 * `bandwidthBytesPerSec`, `predictedMs`, `maxDowntimeMs`), ERR_MIGRATION_IN_PROGRESS,
 * ERR_DIRTY_TRACKING_OFF (tracking was stopped during the migration).
 */
export class MigrationError extends MembackingError {
  /** Where the migration stopped (ERR_MIGRATION_ABORTED; not set when `pause` failed). */
  declare readonly phase?: 'handshake' | 'rounds' | 'final' | 'completing';
  /** What is wrong with the frame (ERR_MIGRATION_PROTOCOL). */
  declare readonly what?: string;
  /** The frame's offset in the stream the detecting side received (ERR_MIGRATION_PROTOCOL). */
  declare readonly offset?: bigint;
  /** The side that found the bad frame (ERR_MIGRATION_PROTOCOL). */
  declare readonly detectedBy?: 'source' | 'destination';
  /** Pre-copy rounds sent (ERR_MIGRATION_DOWNTIME). */
  declare readonly rounds?: number;
  /** Bytes still dirty at the last decision (ERR_MIGRATION_DOWNTIME). */
  declare readonly remainderBytes?: bigint;
  /** The bandwidth measured (ERR_MIGRATION_DOWNTIME). */
  declare readonly bandwidthBytesPerSec?: number;
  /** The downtime the remainder would take (ERR_MIGRATION_DOWNTIME). */
  declare readonly predictedMs?: number;
  /** The budget asked for (ERR_MIGRATION_DOWNTIME). */
  declare readonly maxDowntimeMs?: number;
  /** Why (ERR_DIRTY_TRACKING_OFF). */
  declare readonly reason?: string;
}

/** A `TypeError` with `code` `ERR_INVALID_ARG_TYPE`. */
export function invalidArgType(message: string): TypeError & { code: 'ERR_INVALID_ARG_TYPE' } {
  return withErrorJson(Object.assign(new TypeError(message), { code: 'ERR_INVALID_ARG_TYPE' as const }));
}

/**
 * The error of an internal factory (`Mappable.wrap`, …) called with something other than the
 * binding object it wraps: such objects come from `source`.
 */
export function internalOnly(what: string, source: string): TypeError & { code: 'ERR_INVALID_ARG_TYPE' } {
  return invalidArgType(`${what}() is internal to membacking and takes only its own binding objects: get one from ${source}`);
}

/**
 * A `RangeError` with `code` `ERR_INVALID_ARG_VALUE` (bad value, or a Rust panic's text), with
 * `detail` when given (the explanation beside a panic text the contract fixes).
 */
export function invalidArgValue(message: string, detail?: string): RangeError & { code: 'ERR_INVALID_ARG_VALUE'; detail?: string } {
  const error = Object.assign(new RangeError(message), { code: 'ERR_INVALID_ARG_VALUE' as const });
  return withErrorJson(detail === undefined ? error : Object.assign(error, { detail }));
}

/** A `MembackingError` with `code` `ERR_CLOSED`. */
export function closedError(what: string): MembackingError {
  return new MembackingError('ERR_CLOSED', `${what} is closed`);
}

/** The constructor of each class the native side names (every member of `ErrorClassName`). */
const CLASSES: Record<ErrorClassName, (code: ErrorCode, message: string) => Error> = {
  TypeError: (code, message) => withErrorJson(Object.assign(new TypeError(message), { code })),
  RangeError: (code, message) => withErrorJson(Object.assign(new RangeError(message), { code })),
  Error: (_code, message) => withErrorJson(new Error(message)),
  MembackingError: (code, message) => new MembackingError(code, message),
  InvalidMemoryRangeError: (code, message) => new InvalidMemoryRangeError(code, message),
  MemoryLayoutError: (code, message) => new MemoryLayoutError(code, message),
  RegistrarError: (code, message) => new RegistrarError(code, message),
  OsError: (code, message) => new OsError(code, message),
  SparseMappingError: (code, message) => new SparseMappingError(code, message),
  GuestMemoryError: (code, message) => new GuestMemoryError(code, message),
  MemoryBuildError: (code, message) => new MemoryBuildError(code, message),
  PartitionAttachError: (code, message) => new PartitionAttachError(code, message),
  PartitionMapperError: (code, message) => new PartitionMapperError(code, message),
  VaMapperError: (code, message) => new VaMapperError(code, message),
  MemoryManagerError: (code, message) => new MemoryManagerError(code, message),
  KvmError: (code, message) => new KvmError(code, message),
  SnapshotError: (code, message) => new SnapshotError(code, message),
  MigrationError: (code, message) => new MigrationError(code, message),
};

/** An error as the native side describes it. */
interface NativeError {
  class: ErrorClassName;
  code?: NativeErrorCode;
  message: string;
  fields?: Record<string, unknown>;
  cause?: NativeError;
  causeToken?: number;
}

/**
 * The errno name (`EINVAL`, …) of an errno value, as Node's system errors spell it, else as Linux
 * does (`LINUX_ERRNO_NAMES`). A value with no name at all (none reaches user space) is `EINVAL`.
 */
function errnoName(errno: number): ErrnoName {
  let name: string | undefined;
  try {
    name = getSystemErrorName(-errno);
  } catch {
    // not a negative integer for Node: no name
  }
  if (name !== undefined && /^E[A-Z0-9]+$/.test(name)) return name as ErrnoName;
  return (Number.isInteger(errno) ? LINUX_ERRNO_NAMES[errno] : undefined) ?? 'EINVAL';
}

function setCause(error: Error, cause: unknown): void {
  Object.defineProperty(error, 'cause', { value: cause, writable: true, configurable: true });
}

/** The public error of a native description. */
function build(described: NativeError): Error {
  const fields = described.fields ?? {};
  const code = described.code ?? errnoName(typeof fields.errno === 'number' ? fields.errno : 0);
  const error = CLASSES[described.class](code, described.message);
  Object.assign(error, fields);
  if (described.cause !== undefined) setCause(error, build(described.cause));
  if (described.causeToken !== undefined) {
    const cause = takeCause(described.causeToken);
    if (cause !== undefined) setCause(error, cause);
  }
  return error;
}

/** The public error of an error text the native side made (`\u001f` and JSON). */
export function errorFromNative(text: string): Error {
  return build(parseNativeJson<NativeError>(text.slice(1)));
}

/**
 * Turns an error thrown by the native binding into the public error it stands for. Errors
 * that do not come from the binding (a callback's own exception) pass through unchanged.
 */
export function fromNative(error: unknown): unknown {
  if (!(error instanceof Error) || typeof (error as { code?: unknown }).code !== 'string') return error;
  if (error.message.startsWith('\u001f')) return errorFromNative(error.message);
  // napi-rs's own argument conversion (status codes such as `InvalidArg`, `BooleanExpected`).
  return invalidArgType(error.message);
}

/** Calls into the binding, translating what it throws. */
export function call<T>(f: () => T): T {
  try {
    return f();
  } catch (error) {
    throw fromNative(error);
  }
}

/** Awaits a Promise of the binding, translating its rejection. */
export async function settle<T>(pending: Promise<T>): Promise<T> {
  try {
    return await pending;
  } catch (error) {
    throw fromNative(error);
  }
}
