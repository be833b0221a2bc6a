/**
 * Unsigned 64-bit inputs and the unit constants.
 *
 * Every address, size, length and offset the API takes is a `U64`: a `bigint`, or a `number`
 * that is a safe non-negative integer. Outputs are always `bigint`, so values up to 2^64-1
 * round-trip losslessly.
 */
import { invalidArgType, invalidArgValue } from './errors';

/** A u64 input in bytes (or pages where named): bigint, or a safe non-negative integer number. */
export type U64 = number | bigint;

/** 2^64 − 1, the largest u64. */
export const U64_MAX = (1n << 64n) - 1n;

/** 1024 bytes. */
export const KiB = 1024n;
/** 1024² bytes. */
export const MiB = 1024n ** 2n;
/** 1024³ bytes. */
export const GiB = 1024n ** 3n;
/** 1024⁴ bytes. */
export const TiB = 1024n ** 4n;

/**
 * Converts a `U64` argument to a bigint.
 * @throws TypeError `ERR_INVALID_ARG_TYPE` for a non-number/bigint or a number that is not a
 *   safe non-negative integer; RangeError `ERR_INVALID_ARG_VALUE` for a bigint outside 0..2^64-1.
 */
export function toU64(value: unknown, name: string): bigint {
  if (typeof value === 'bigint') {
    if (value < 0n || value > U64_MAX) {
      throw invalidArgValue(`${name} must be between 0 and 2^64-1, got ${value}`);
    }
    return value;
  }
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value) || value < 0) {
      throw invalidArgType(`${name} must be a safe non-negative integer or a bigint, got ${value}`);
    }
    return BigInt(value);
  }
  throw invalidArgType(`${name} must be a number or a bigint, got ${describeType(value)}`);
}

/** Checks a small unsigned integer argument (counts, ids, vnodes) and returns it. */
export function toU32(value: unknown, name: string): number {
  if (typeof value !== 'number' || !Number.isInteger(value)) {
    throw invalidArgType(`${name} must be an integer number, got ${describeType(value)}`);
  }
  if (value < 0 || value > 0xffff_ffff) {
    throw invalidArgValue(`${name} must be between 0 and 2^32-1, got ${value}`);
  }
  return value;
}

/**
 * A short description of a value's type for error messages, with the value itself when it is a
 * primitive (`type string ('4096')`, `type number (NaN)`). Never throws: a Proxy or a getter
 * that throws is described without it.
 */
export function describeType(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'type undefined';
  if (typeof value === 'object') {
    if (Array.isArray(value)) return 'an array';
    let constructorName: unknown;
    try {
      constructorName = (value as { constructor?: { name?: unknown } }).constructor?.name;
    } catch {
      return 'an object';
    }
    return `an object (${typeof constructorName === 'string' && constructorName !== '' ? constructorName : 'no prototype'})`;
  }
  if (typeof value === 'function') return 'type function';
  if (typeof value === 'symbol') return `type symbol (${value.toString()})`;
  if (typeof value === 'string') return `type string (${quoted(value)})`;
  if (typeof value === 'bigint') return `type bigint (${value}n)`;
  return `type ${typeof value} (${String(value)})`;
}

/** A string quoted for a message, shortened past 40 characters. */
function quoted(value: string): string {
  return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value).replace(/^"|"$/g, "'");
}

/** A value for an error message; never throws (unlike String() on a null-prototype object). */
export function describeValue(value: unknown): string {
  if (typeof value === 'string') return `'${value}'`;
  if (typeof value === 'number' || typeof value === 'bigint' || typeof value === 'boolean' || value === undefined) return String(value);
  return describeType(value);
}

/** Formats a u64 the way the Rust `Display` of ranges does: `0x` and lower-case hex. */
export function hex(value: bigint): string {
  return `0x${value.toString(16)}`;
}

/**
 * Refuses an option key that `accepted` does not list: a misspelt option (`{ bse: dir }`,
 * `{ timeoutMS: 100 }`) would otherwise be ignored silently and the call would run with the
 * default instead. RangeError `ERR_INVALID_ARG_VALUE` naming the key, the accepted ones and
 * the nearest of them. Only own enumerable string keys count (a class instance's prototype
 * methods do not).
 */
export function checkOptionKeys(options: object, accepted: readonly string[], where: string, noun = 'option'): void {
  for (const key of Object.keys(options)) {
    if (accepted.includes(key)) continue;
    const near = nearest(key, accepted);
    throw invalidArgValue(
      `${where}: unknown ${noun} '${key}'${near === undefined ? '' : ` (did you mean '${near}'?)`}; the ${noun}s are ${accepted.map((k) => `'${k}'`).join(', ')}`,
    );
  }
}

/** The accepted key closest to `key` (case-insensitive edit distance at most 2), if any. */
function nearest(key: string, accepted: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = 3;
  for (const candidate of accepted) {
    const d = editDistance(key.toLowerCase(), candidate.toLowerCase());
    if (d < bestDistance) {
      best = candidate;
      bestDistance = d;
    }
  }
  return best;
}

/** Levenshtein distance (short strings only: option names). */
function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(previous[j]! + 1, current[j - 1]! + 1, previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    previous = current;
  }
  return previous[b.length]!;
}
