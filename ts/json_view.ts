/**
 * JSON and `util.inspect` forms of the plain objects and arrays the API returns (inspect
 * snapshots, plans, flat views, partition logs, region lists, registers, …).
 *
 * Their u64 values are `bigint`s, which `JSON.stringify` refuses and `util.inspect` prints in
 * decimal next to hex ranges. {@link withViews} gives every plain object and array of a result a
 * non-enumerable `toJSON` (u64 values as `'0x…'` strings, like `MemoryLayout#toJSON`) and a
 * non-enumerable `util.inspect` form (u64 values in hex, as `0xa0000n`). Being non-enumerable,
 * neither changes what `deepEqual`, `Object.keys` or a spread see: the data stays bigints.
 */
import { inspect, type InspectOptions } from 'node:util';

/**
 * The options `util.inspect` passes to a `[util.inspect.custom]` method. Declared here, not taken
 * from `@types/node`: its name there (`InspectOptionsStylized`) is gone from `@types/node` 26, and
 * the published declarations must compile with whichever `@types/node` a user has.
 */
export interface InspectOptionsStylized extends InspectOptions {
  stylize(text: string, styleType: string): string;
}

const inspectCustom = Symbol.for('nodejs.util.inspect.custom');

const hexOf = (value: bigint): string => `0x${value.toString(16)}`;

function isPlain(value: object): boolean {
  const prototype = Object.getPrototypeOf(value) as unknown;
  return Array.isArray(value) || prototype === Object.prototype || prototype === null;
}

/**
 * A JSON-safe copy of `value`: a bigint becomes `'0x…'`, an object with its own `toJSON` (a
 * `MemoryRange`, a `Buffer`, an error) is asked for it, plain objects and arrays are copied
 * member by member. Never throws for the values the API returns.
 */
export function jsonSafe(value: unknown): unknown {
  if (typeof value === 'bigint') return hexOf(value);
  if (typeof value !== 'object' || value === null) return value;
  if (Array.isArray(value)) return value.map(jsonSafe);
  if (!isPlain(value)) {
    const toJSON = (value as { toJSON?: unknown }).toJSON;
    return typeof toJSON === 'function' ? (toJSON as () => unknown).call(value) : value;
  }
  const out: Record<string, unknown> = {};
  for (const [key, member] of Object.entries(value)) out[key] = jsonSafe(member);
  return out;
}

/** A u64 shown in hex by `util.inspect` (`0xa0000n`). */
class HexBigInt {
  constructor(readonly value: bigint) {}
  [inspectCustom](_depth: number, options: InspectOptionsStylized): string {
    return options.stylize(`${hexOf(this.value)}n`, 'bigint');
  }
}

/** A copy of `value` for `util.inspect`: bigints in hex, everything else as it is. */
function hexCopy(value: unknown): unknown {
  if (typeof value === 'bigint') return new HexBigInt(value);
  if (typeof value !== 'object' || value === null || !isPlain(value)) return value;
  if (Array.isArray(value)) return value.map(hexCopy);
  const out: Record<string, unknown> = {};
  for (const [key, member] of Object.entries(value)) out[key] = hexCopy(member);
  return out;
}

/** The inspect form of a plain object or array: its members with u64 values in hex. */
export function inspectInHex(value: unknown, depth: number, options: InspectOptionsStylized): string {
  return inspect(hexCopy(value), { ...options, depth: options.depth === null ? null : depth });
}

/** The `toJSON` of a plain object or array of a result. */
function plainToJSON(this: unknown): unknown {
  return Array.isArray(this) ? this.map(jsonSafe) : jsonSafe({ ...(this as object) });
}

/** The `util.inspect` form of a plain object or array of a result. */
function plainInspect(this: unknown, depth: number, options: InspectOptionsStylized): string {
  return inspectInHex(this, depth, options);
}

// Shared by every object, so that giving an object its views allocates nothing.
const TO_JSON = { value: plainToJSON, enumerable: false, writable: true, configurable: true };
const INSPECT = { value: plainInspect, enumerable: false, writable: true, configurable: true };

/**
 * Gives the plain object or array `value` (not what is inside it) its non-enumerable `toJSON`
 * and `util.inspect` form. @internal
 */
export function attachViews(value: object): void {
  Object.defineProperty(value, 'toJSON', TO_JSON);
  Object.defineProperty(value, inspectCustom, INSPECT);
}

/**
 * Gives `value` and every plain object and array inside it a non-enumerable `toJSON` and
 * `util.inspect` form (see the module comment); returns `value`. Class instances inside (a
 * `MemoryRange`, a `Buffer`) keep their own forms.
 */
export function withViews<T>(value: T): T {
  if (typeof value !== 'object' || value === null || !isPlain(value)) return value;
  const members = Array.isArray(value) ? (value as unknown[]) : Object.values(value);
  for (const member of members) withViews(member);
  attachViews(value);
  return value;
}

/**
 * The `util.inspect` form of an API object (a manager, a guest memory, a partition, …):
 * `Name { state: 'open', … }` with what `fields` reads, u64 values in hex. `fields` throwing
 * (the object's native half is closed) shows `{ state: 'closed' }`; `closed` says so up front
 * for objects that can tell without asking.
 */
export function inspectObject(
  name: string,
  depth: unknown,
  options: unknown,
  fields: () => Record<string, unknown>,
  closed = false,
): string {
  // Called directly (not by util.inspect), the arguments may be anything: plain defaults then.
  const stylized =
    typeof options === 'object' && options !== null && typeof (options as InspectOptionsStylized).stylize === 'function'
      ? (options as InspectOptionsStylized)
      : ({ stylize: (text: string) => text } as unknown as InspectOptionsStylized);
  const levels = typeof depth === 'number' && !Number.isNaN(depth) ? depth : 2;
  if (levels < 0) return stylized.stylize(`[${name}]`, 'special');
  let shown: Record<string, unknown>;
  try {
    shown = closed ? { state: 'closed' } : { state: 'open', ...fields() };
  } catch {
    shown = { state: 'closed' };
  }
  return `${name} ${inspectInHex(shown, levels, stylized)}`;
}
