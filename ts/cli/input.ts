/**
 * What the CLI reads: the layout named by `--ram`/`--gap`/`--vtl2` or by an `--input` JSON file,
 * sizes and ranges as the help describes them, and the input errors (exit code 2).
 *
 * An input file holds either the JSON that `membacking layout --format json` prints (the
 * `MemoryLayout#toJSON` form, read back with `MemoryLayout.fromJSON`, so a layout survives the
 * round trip), or the short form `{"ramSize", "gaps", "vtl2Range"}` / `{"ram", "gaps"}` with
 * sizes such as `4G`. Unknown keys are errors in both.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { MemoryLayout } from '../layout';
import type { MemoryRange } from '../range';
import { parseRange, parseSize } from './format';

/** An input error: reported as one line with exit code 2. */
export class UsageError extends Error {}

/**
 * An error's text for one line of the CLI: its message and, when the library put the values
 * and the rule in `detail` (a message the contract fixes, such as `invalid memory size`), that too.
 */
export function errorText(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const detail = (error as { detail?: unknown }).detail;
  return typeof detail === 'string' && detail !== '' && !error.message.includes(detail) ? `${error.message}: ${detail}` : error.message;
}

/** `error` with `context` before its text (and `after` after it), keeping its `code` (which decides the exit code) and it as the cause. */
export function withContext(error: unknown, context: string, after = ''): Error {
  const wrapped = new Error(`${context}: ${errorText(error)}${after}`, { cause: error });
  const code = (error as { code?: unknown } | null)?.code;
  return code === undefined ? wrapped : Object.assign(wrapped, { code });
}

/** The keys of the short form of an input file. */
const SHORT_FORM_KEYS = ['ramSize', 'ram', 'gaps', 'vtl2Range'];

/**
 * Keys the CLI's own JSON output adds that are derived from the layout (`layout --x86-legacy
 * --format json` lists the x86 RAM regions): every command that reads a layout ignores them.
 */
const DERIVED_KEYS = ['x86LegacyRam'];

/** The layout flags as `parseArgs` returns them. */
export interface LayoutFlags {
  ram?: string | undefined;
  gap?: string[] | undefined;
  vtl2?: string | undefined;
  input?: string | undefined;
}

/** `text` parsed with `parse`; an error becomes a UsageError that names `what`. */
function named<T>(what: string, parse: () => T): T {
  try {
    return parse();
  } catch (error) {
    throw new UsageError(`${what}: ${errorText(error)}`);
  }
}

/** Builds the layout named by `--ram/--gap/--vtl2` or `--input`. */
export function layoutFromFlags(values: LayoutFlags, extraKeys: readonly string[] = []): MemoryLayout {
  if (values.input !== undefined) {
    if (values.ram !== undefined || values.gap !== undefined || values.vtl2 !== undefined) {
      throw new UsageError('--input cannot be combined with --ram, --gap or --vtl2');
    }
    return layoutFromFile(values.input, extraKeys);
  }
  if (values.ram === undefined) throw new UsageError('needs --ram SIZE (or --input FILE.json)');
  const ramSize = named(`--ram ${values.ram}`, () => parseSize(values.ram!));
  const gaps = (values.gap ?? []).map((gap) => named(`--gap ${gap}`, () => parseRange(gap)));
  const vtl2 = values.vtl2 === undefined ? null : named(`--vtl2 ${values.vtl2}`, () => parseRange(values.vtl2!));
  return named(`layout of --ram ${values.ram}${gaps.map((g) => ` --gap ${g}`).join('')}${vtl2 ? ` --vtl2 ${vtl2}` : ''}`, () =>
    MemoryLayout.new(ramSize, gaps, vtl2),
  );
}

/** The largest input file read (a layout with thousands of gaps is a few hundred KiB). */
export const MAX_INPUT_BYTES = 16 * 1024 * 1024;

/**
 * The text of `file`, read in pieces (it may be a pipe: `--input <(…)`); more than
 * MAX_INPUT_BYTES is refused instead of read to the end (`--input /dev/zero` would never end).
 */
function readBounded(file: string): string {
  const fd = openSync(file, 'r');
  try {
    const chunks: Buffer[] = [];
    const piece = Buffer.alloc(64 * 1024);
    let total = 0;
    for (;;) {
      const n = readSync(fd, piece, 0, piece.length, null);
      if (n === 0) break;
      total += n;
      if (total > MAX_INPUT_BYTES) throw new UsageError(`cannot read ${file}: it holds more than ${MAX_INPUT_BYTES / (1024 * 1024)} MiB, which no layout file does`);
      chunks.push(Buffer.from(piece.subarray(0, n)));
    }
    return Buffer.concat(chunks).toString('utf8');
  } finally {
    closeSync(fd);
  }
}

/** Reads an input file: JSON, an object (see the module comment). */
export function readInputFile(file: string): Record<string, unknown> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readBounded(file));
  } catch (error) {
    if (error instanceof UsageError) throw error;
    throw new UsageError(`cannot read ${file}: ${(error as Error).message}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new UsageError(`${file}: expected a JSON object`);
  return parsed as Record<string, unknown>;
}

/** The layout of an input file; `extraKeys` are keys another part of the command reads. */
export function layoutFromFile(file: string, extraKeys: readonly string[] = []): MemoryLayout {
  return layoutFromInput(readInputFile(file), file, extraKeys);
}

/** The layout an input object describes (`where` names it in errors). */
export function layoutFromInput(input: Record<string, unknown>, where: string, extraKeys: readonly string[] = []): MemoryLayout {
  const ignored = [...extraKeys, ...DERIVED_KEYS];
  const own = Object.fromEntries(Object.entries(input).filter(([key]) => !ignored.includes(key)));
  if ('mmio' in own) {
    // The form `layout --format json` prints.
    return named(where, () => MemoryLayout.fromJSON(own));
  }
  const accepted = [...SHORT_FORM_KEYS, ...ignored];
  const unknown = Object.keys(own).find((key) => !SHORT_FORM_KEYS.includes(key));
  if (unknown !== undefined) {
    throw new UsageError(
      `${where}: unknown key '${unknown}' (accepted: ${accepted.join(', ')}; or the form 'layout --format json' prints: ram, mmio, vtl2Range, …)`,
    );
  }
  const gaps = own.gaps === undefined ? [] : listOf(own.gaps, `${where}: gaps`).map((gap, i) => rangeFromJson(gap, `${where}: gaps[${i}]`));
  if (own.ram !== undefined) {
    if (own.ramSize !== undefined) throw new UsageError(`${where}: give "ramSize" (RAM laid out from 0 around the gaps) or "ram" (explicit ranges), not both`);
    if (own.vtl2Range !== undefined && own.vtl2Range !== null) {
      throw new UsageError(`${where}: "vtl2Range" needs "ramSize": a layout with explicit "ram" ranges has no VTL2 range`);
    }
    const memory = listOf(own.ram, `${where}: ram`).map((entry, i) => ramEntry(entry, `${where}: ram[${i}]`));
    return named(where, () => MemoryLayout.fromRanges(memory, gaps));
  }
  if (own.ramSize === undefined) throw new UsageError(`${where}: needs "ramSize" or "ram"`);
  const ramSize = sizeFromJson(own.ramSize, `${where}: ramSize`);
  const vtl2 = own.vtl2Range === undefined || own.vtl2Range === null ? null : rangeFromJson(own.vtl2Range, `${where}: vtl2Range`);
  return named(where, () => MemoryLayout.new(ramSize, gaps, vtl2));
}

function listOf(value: unknown, where: string): unknown[] {
  if (!Array.isArray(value)) throw new UsageError(`${where}: expected an array`);
  return value;
}

function sizeFromJson(value: unknown, where: string): bigint {
  if (typeof value === 'number' && Number.isSafeInteger(value) && value >= 0) return BigInt(value);
  if (typeof value !== 'string') throw new UsageError(`${where}: expected a size such as "4G", "0x1000" or 4096, got ${JSON.stringify(value)}`);
  return named(where, () => parseSize(value));
}

function rangeFromJson(value: unknown, where: string): MemoryRange {
  if (typeof value === 'string') return named(where, () => parseRange(value));
  if (typeof value === 'object' && value !== null && !Array.isArray(value)) {
    const unknown = Object.keys(value).find((key) => key !== 'start' && key !== 'end');
    if (unknown !== undefined) throw new UsageError(`${where}: unknown key '${unknown}' (accepted: start, end)`);
    const { start, end } = value as { start?: unknown; end?: unknown };
    if (start === undefined || end === undefined) throw new UsageError(`${where}: needs "start" and "end"`);
    const [s, e] = [sizeFromJson(start, `${where}.start`), sizeFromJson(end, `${where}.end`)];
    return named(where, () => parseRange(`0x${s.toString(16)}-0x${e.toString(16)}`));
  }
  throw new UsageError(`${where}: expected "START-END" or {"start", "end"}, got ${JSON.stringify(value)}`);
}

function ramEntry(value: unknown, where: string): { range: MemoryRange; vnode: number } {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new UsageError(`${where}: expected {"range", "vnode"}`);
  const unknown = Object.keys(value).find((key) => key !== 'range' && key !== 'vnode');
  if (unknown !== undefined) throw new UsageError(`${where}: unknown key '${unknown}' (accepted: range, vnode)`);
  const entry = value as { range?: unknown; vnode?: unknown };
  const vnode = entry.vnode ?? 0;
  if (typeof vnode !== 'number' || !Number.isInteger(vnode) || vnode < 0 || vnode > 0xffff_ffff) {
    throw new UsageError(`${where}.vnode: expected an integer 0..2^32-1, got ${JSON.stringify(entry.vnode)}`);
  }
  return { range: rangeFromJson(entry.range, `${where}.range`), vnode };
}
