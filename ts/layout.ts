/**
 * `MemoryLayout` and the x86 legacy RAM split.
 *
 * A layout is immutable: it is built by the Rust core (`vm_topology`), which validates it
 * with the original's rules and error variants, and its accessor values are read once.
 */
import { call, invalidArgType, invalidArgValue } from './errors';
import { AddressType } from './generated/enums';
import { native } from './native';
import { nativeJson, packRanges, toArray, toRange, toRanges, type MemoryRange, type RangeLike } from './range';
import { describeType, hex, toU32, toU64, type U64 } from './u64';

export { AddressType } from './generated/enums';

/** A RAM range and its virtual NUMA node. */
export interface MemoryRangeWithNode {
  readonly range: MemoryRange;
  readonly vnode: number;
}

type NativeLayout = InstanceType<typeof native.NativeLayout>;

/** Every accessor's value, as the binding describes a layout. */
interface Description {
  ram: MemoryRangeWithNode[];
  mmio: MemoryRange[];
  vtl2Range: MemoryRange | null;
  ramSize: bigint;
  endOfRam: bigint;
  ramBelow4gb: bigint;
  ramAbove4gb: bigint;
  ramAboveHighMmio: bigint | null;
  maxRamBelow4gb: bigint | null;
  endOfRamOrMmio: bigint | null;
}

const natives = new WeakMap<MemoryLayout, NativeLayout>();
const constructionToken = Symbol('MemoryLayout');

/** The binding object behind a layout (for other modules of this package). @internal */
export function nativeLayout(layout: unknown, name = 'layout'): NativeLayout {
  const found = typeof layout === 'object' && layout !== null ? natives.get(layout as MemoryLayout) : undefined;
  if (found === undefined) {
    throw invalidArgType(`${name} must be a MemoryLayout, got ${describeType(layout)}`);
  }
  return found;
}

/** `MemoryLayout#toJSON()`: every u64 as a `'0x…'` string; `MemoryLayout.fromJSON` reads it back. */
export interface MemoryLayoutJson {
  ram: Array<{ range: { start: string; end: string }; vnode: number }>;
  mmio: Array<{ start: string; end: string }>;
  vtl2Range: { start: string; end: string } | null;
  ramSize: string;
  endOfRam: string;
  ramBelow4gb: string;
  ramAbove4gb: string;
  ramAboveHighMmio: string | null;
  maxRamBelow4gb: string | null;
  /** null when the layout has no gaps. */
  endOfRamOrMmio: string | null;
}

/** Immutable guest physical memory layout: RAM around MMIO gaps, optional VTL2 range. */
export class MemoryLayout {
  readonly #ram: readonly MemoryRangeWithNode[];
  readonly #mmio: readonly MemoryRange[];
  readonly #vtl2Range: MemoryRange | null;
  readonly #description: Description;

  private constructor(token: typeof constructionToken, handle: NativeLayout) {
    if (token !== constructionToken) {
      throw invalidArgType('MemoryLayout cannot be constructed directly: use MemoryLayout.new or MemoryLayout.fromRanges');
    }
    natives.set(this, handle);
    const d = nativeJson<Description>(handle.describe());
    this.#description = d;
    this.#ram = Object.freeze(d.ram.map((ram) => Object.freeze(ram)));
    this.#mmio = Object.freeze(d.mmio);
    this.#vtl2Range = d.vtl2Range;
  }

  /** Lay out ramSize bytes from 0 around the sorted gaps; MemoryLayoutError. */
  static new(ramSize: U64, gaps: Iterable<RangeLike>, vtl2Range?: RangeLike | null): MemoryLayout {
    const size = toU64(ramSize, 'ramSize');
    const gapList = packRanges(toRanges(gaps, 'gaps'));
    const vtl2 = vtl2Range === undefined || vtl2Range === null ? null : toRange(vtl2Range, 'vtl2Range');
    const vtl2Flat = vtl2 ? packRanges([vtl2]) : null;
    return new MemoryLayout(constructionToken, call(() => native.NativeLayout.create(size, gapList, vtl2Flat)));
  }

  /** RAM verbatim (Rust new_from_ranges; vnode default 0). */
  static fromRanges(memory: Iterable<{ range: RangeLike; vnode?: number | undefined }>, gaps: Iterable<RangeLike>): MemoryLayout {
    const items = toArray(memory, 'memory');
    const ranges: MemoryRange[] = [];
    const vnodes = new Uint32Array(items.length);
    items.forEach((item, i) => {
      if (typeof item !== 'object' || item === null || !('range' in item)) {
        throw invalidArgType(`memory[${i}] must be a {range, vnode?} object, got ${describeType(item)}`);
      }
      const entry = item as { range: unknown; vnode?: unknown };
      ranges.push(toRange(entry.range, `memory[${i}].range`));
      vnodes[i] = entry.vnode === undefined ? 0 : toU32(entry.vnode, `memory[${i}].vnode`);
    });
    const gapList = packRanges(toRanges(gaps, 'gaps'));
    return new MemoryLayout(constructionToken, call(() => native.NativeLayout.fromRanges(packRanges(ranges), vnodes, gapList)));
  }

  /**
   * The layout a `toJSON()` result describes (its inverse; also after `JSON.parse`): `ram`,
   * `mmio` and `vtl2Range` are required (`vtl2Range` may be null), the derived figures
   * (`ramSize`, `endOfRam`, …) may be left out but must match when present. Strict: an unknown
   * key, a u64 that is not a `'0x…'` string, or a figure that does not match is a `RangeError`
   * or `TypeError` (`ERR_INVALID_ARG_VALUE` / `ERR_INVALID_ARG_TYPE`) naming the key and value; a
   * layout the core refuses is its `MemoryLayoutError`.
   */
  static fromJSON(json: unknown): MemoryLayout {
    if (typeof json !== 'object' || json === null || Array.isArray(json)) {
      throw invalidArgType(`MemoryLayout.fromJSON: json must be the object MemoryLayout#toJSON returns (JSON.parse text first), got ${describeType(json)}`);
    }
    let text: string;
    try {
      text = JSON.stringify(json, (_key, value: unknown) => (typeof value === 'bigint' ? { $bigint: hex(value) } : value));
    } catch (error) {
      throw invalidArgType(`MemoryLayout.fromJSON: json is not a JSON value (${error instanceof Error ? error.message : String(error)})`);
    }
    return new MemoryLayout(constructionToken, call(() => native.NativeLayout.fromJson(text)));
  }

  /** RAM ranges, ascending, VTL2 excluded. */
  get ram(): MemoryRangeWithNode[] {
    return [...this.#ram];
  }
  /** The gaps as given. */
  get mmio(): MemoryRange[] {
    return [...this.#mmio];
  }
  /** The VTL2 range or null. */
  get vtl2Range(): MemoryRange | null {
    return this.#vtl2Range;
  }
  /** Sum of RAM lengths (bytes). */
  get ramSize(): bigint {
    return this.#description.ramSize;
  }
  /** End of the last RAM range (bytes). */
  get endOfRam(): bigint {
    return this.#description.endOfRam;
  }
  /** RAM in ranges ending below 4 GiB (bytes). */
  get ramBelow4gb(): bigint {
    return this.#description.ramBelow4gb;
  }
  /** RAM in ranges ending at or above 4 GiB (bytes). */
  get ramAbove4gb(): bigint {
    return this.#description.ramAbove4gb;
  }
  /** RAM at/above the 2nd gap's end; null unless exactly 2 gaps (bytes). */
  get ramAboveHighMmio(): bigint | null {
    return this.#description.ramAboveHighMmio ?? null;
  }
  /** End of the last RAM range ending below 4 GiB, or null (bytes). */
  get maxRamBelow4gb(): bigint | null {
    return this.#description.maxRamBelow4gb ?? null;
  }
  /**
   * max(end of last gap, endOfRam) (bytes).
   * @throws RangeError `ERR_INVALID_ARG_VALUE`, message `mmio set` (the Rust accessor's panic
   *   text) and a `detail` naming the end of RAM, when the layout has no gaps.
   */
  get endOfRamOrMmio(): bigint {
    const value = this.#description.endOfRamOrMmio;
    if (value === null || value === undefined) {
      throw invalidArgValue(
        'mmio set',
        `endOfRamOrMmio is defined only for a layout with an MMIO gap, and this one has none (RAM ends at 0x${this.endOfRam.toString(16)}): read endOfRam, or add a gap`,
      );
    }
    return value;
  }

  /** Ram / Mmio / null for one byte address; the VTL2 range gives null. */
  probeAddress(address: U64): AddressType | null {
    const a = toU64(address, 'address');
    const handle = nativeLayout(this);
    const found = call(() => handle.probeAddress(a));
    return found === null || found === undefined ? null : (found as AddressType);
  }

  /** JSON-safe form: camelCase keys of the getters, u64 as '0x…', endOfRamOrMmio null with no gaps. */
  toJSON(): MemoryLayoutJson {
    const d = this.#description;
    const opt = (value: bigint | null | undefined): string | null => (value === null || value === undefined ? null : hex(value));
    return {
      ram: this.#ram.map(({ range, vnode }) => ({ range: range.toJSON(), vnode })),
      mmio: this.#mmio.map((r) => r.toJSON()),
      vtl2Range: this.#vtl2Range ? this.#vtl2Range.toJSON() : null,
      ramSize: hex(d.ramSize),
      endOfRam: hex(d.endOfRam),
      ramBelow4gb: hex(d.ramBelow4gb),
      ramAbove4gb: hex(d.ramAbove4gb),
      ramAboveHighMmio: opt(d.ramAboveHighMmio),
      maxRamBelow4gb: opt(d.maxRamBelow4gb),
      endOfRamOrMmio: opt(d.endOfRamOrMmio),
    };
  }

  /** `util.inspect` shows the RAM and MMIO ranges. */
  [Symbol.for('nodejs.util.inspect.custom')](): string {
    const ram = this.#ram.map(({ range, vnode }) => (vnode ? `${range}@${vnode}` : `${range}`)).join(', ');
    const mmio = this.#mmio.map(String).join(', ');
    const vtl2 = this.#vtl2Range ? ` vtl2 ${this.#vtl2Range}` : '';
    return `MemoryLayout { ram [${ram}] mmio [${mmio}]${vtl2} }`;
  }
}

/**
 * RAM region list the builder creates: layout RAM then VTL2, split at the x86 legacy
 * boundaries when x86LegacySupport (default true); fileOffset = running sum (bytes).
 * Throws MemoryLayoutError `ERR_INVALID_RAM_FOR_X86`. No empty piece (deviation D1).
 */
export function x86LegacyRamRanges(layout: MemoryLayout, x86LegacySupport = true): Array<{ range: MemoryRange; fileOffset: bigint }> {
  const handle = nativeLayout(layout);
  if (typeof x86LegacySupport !== 'boolean') {
    throw invalidArgType(`x86LegacySupport must be a boolean, got ${describeType(x86LegacySupport)}`);
  }
  return nativeJson(call(() => handle.x86LegacyRamRanges(x86LegacySupport)));
}
