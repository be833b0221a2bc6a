/**
 * `MemoryRange` and the range algorithms.
 *
 * `MemoryRange` is an immutable value holding `start`/`end` as bigints; every operation runs
 * the Rust core's `memory_range` through the binding, so JavaScript and Rust agree exactly
 * (including where the core panics: that is a `RangeError` here). The algorithms are lazy
 * iterators: inputs are read when called, and a core panic (`left not sorted`, …) is thrown
 * from the `next()` that reaches it.
 */
import { call, invalidArgType } from './errors';
import { RangeWalkKind } from './generated/enums';
import { native } from './native';
import { attachViews } from './json_view';
import { parseNativeJson } from './native_json';

export { RangeWalkKind } from './generated/enums';
import { describeType, toU64, type U64 } from './u64';

/** Any range input: a MemoryRange or a plain {start, end} (bytes, half-open, page-aligned). */
export type RangeLike = MemoryRange | { start: U64; end: U64 };

interface Accessors {
  len: bigint;
  start4kGpn: bigint;
  end4kGpn: bigint;
  pageCount4k: bigint;
  pageCount2m: bigint;
  isEmpty: boolean;
  display: string;
}

const trustedToken = Symbol('trusted');

/** Immutable page-aligned byte range [start, end). Accessors are getters, not methods. */
export class MemoryRange {
  /** First byte (bytes). */
  readonly start: bigint;
  /** One past the last byte (bytes). */
  readonly end: bigint;
  #accessors: Accessors | undefined;

  /** Same as `MemoryRange.new`. */
  constructor(start: U64, end: U64);
  /** @internal */
  constructor(start: U64, end: U64, trusted: typeof trustedToken);
  constructor(start: U64, end: U64, trusted?: typeof trustedToken) {
    if (trusted === trustedToken) {
      this.start = start as bigint;
      this.end = end as bigint;
    } else {
      const s = toU64(start, 'start');
      const e = toU64(end, 'end');
      call(() => native.rangeNew(s, e));
      this.start = s;
      this.end = e;
    }
    Object.freeze(this);
  }

  /** Range from byte bounds; RangeError where Rust `new` panics (unaligned, start > end). */
  static new(start: U64, end: U64): MemoryRange {
    return new MemoryRange(start, end);
  }

  /** Like `new`, but throws InvalidMemoryRangeError (`ERR_INVALID_MEMORY_RANGE`) instead. */
  static tryNew(start: U64, end: U64): MemoryRange {
    const s = toU64(start, 'start');
    const e = toU64(end, 'end');
    call(() => native.rangeTryNew(s, e));
    return new MemoryRange(s, e, trustedToken);
  }

  /** Byte span [start, end) rounded outward to 4 KiB pages (RangeError where Rust panics). */
  static bounding(start: U64, end: U64): MemoryRange {
    const s = toU64(start, 'start');
    const e = toU64(end, 'end');
    return fromPair(call(() => native.rangeBounding(s, e)));
  }

  /** Pages [firstPage, endPage) (4 KiB page numbers) as a byte range. */
  static from4kGpnRange(firstPage: U64, endPage: U64): MemoryRange {
    const first = toU64(firstPage, 'firstPage');
    const end = toU64(endPage, 'endPage');
    return fromPair(call(() => native.rangeFrom4kGpnRange(first, end)));
  }

  /** The range 0..0. */
  static readonly EMPTY: MemoryRange = new MemoryRange(0n, 0n, trustedToken);

  /** 0xffff_ffff_ffff_f000n: the largest page-aligned u64 (bytes). */
  static readonly MAX_ADDRESS: bigint = 0xffff_ffff_ffff_f000n;

  /** Rust `Ord`: compare start, then end; -1 | 0 | 1. */
  static compare(a: RangeLike, b: RangeLike): -1 | 0 | 1 {
    const x = toRange(a, 'a');
    const y = toRange(b, 'b');
    return call(() => native.rangeCompare(x.start, x.end, y.start, y.end)) as -1 | 0 | 1;
  }

  #info(): Accessors {
    if (this.#accessors === undefined) {
      const raw = call(() => native.rangeAccessors(this.start, this.end));
      const [len, start4kGpn, end4kGpn, pageCount4k, pageCount2m] = raw.values;
      this.#accessors = {
        len: len!,
        start4kGpn: start4kGpn!,
        end4kGpn: end4kGpn!,
        pageCount4k: pageCount4k!,
        pageCount2m: pageCount2m!,
        isEmpty: raw.isEmpty,
        display: raw.display,
      };
    }
    return this.#accessors;
  }

  /** end − start (bytes). */
  get len(): bigint {
    return this.#info().len;
  }
  /** start === end. */
  get isEmpty(): boolean {
    return this.#info().isEmpty;
  }
  /** start / 4096 (page number). */
  get start4kGpn(): bigint {
    return this.#info().start4kGpn;
  }
  /** end / 4096 (page number). */
  get end4kGpn(): bigint {
    return this.#info().end4kGpn;
  }
  /** len / 4096 (pages). */
  get pageCount4k(): bigint {
    return this.#info().pageCount4k;
  }
  /** len / 2 MiB rounded up (2 MiB pages). */
  get pageCount2m(): bigint {
    return this.#info().pageCount2m;
  }

  /** end > o.start && start < o.end (exactly this formula). */
  overlaps(o: RangeLike): boolean {
    const other = toRange(o, 'other');
    return call(() => native.rangeOverlaps(this.start, this.end, other.start, other.end));
  }

  /** start <= o.start && end >= o.end. */
  contains(o: RangeLike): boolean {
    const other = toRange(o, 'other');
    return call(() => native.rangeContains(this.start, this.end, other.start, other.end));
  }

  /** start <= addr < end (bytes). */
  containsAddr(addr: U64): boolean {
    const a = toU64(addr, 'addr');
    return call(() => native.rangeContainsAddr(this.start, this.end, a));
  }

  /** addr − start when containsAddr(addr), else null (bytes). */
  offsetOf(addr: U64): bigint | null {
    const a = toU64(addr, 'addr');
    return call(() => native.rangeOffsetOf(this.start, this.end, a)) ?? null;
  }

  /** Overlap, the empty range at a touching point, or EMPTY when disjoint. */
  intersection(o: RangeLike): MemoryRange {
    const other = toRange(o, 'other');
    return fromPair(call(() => native.rangeIntersection(this.start, this.end, other.start, other.end)));
  }

  /** [start, start+offset) and [start+offset, end); RangeError where Rust panics (bytes). */
  splitAtOffset(offset: U64): [MemoryRange, MemoryRange] {
    const o = toU64(offset, 'offset');
    const bounds = call(() => native.rangeSplitAtOffset(this.start, this.end, o));
    return [trusted(bounds[0]!, bounds[1]!), trusted(bounds[2]!, bounds[3]!)];
  }

  /** Largest power of two dividing base+start and base+end (bytes); RangeError where Rust panics. */
  alignment(base: U64): bigint {
    const b = toU64(base, 'base');
    return call(() => native.rangeAlignment(this.start, this.end, b));
  }

  /** Largest sub-range aligned to `alignment` (bytes, a power of two), or EMPTY. */
  alignedSubrange(alignment: U64): MemoryRange {
    const a = toU64(alignment, 'alignment');
    return fromPair(call(() => native.rangeAlignedSubrange(this.start, this.end, a)));
  }

  /** Same start and end. */
  equals(o: RangeLike): boolean {
    const other = toRange(o, 'other');
    return this.start === other.start && this.end === other.end;
  }

  /** Display form `0x1000-0x3000` (lower-case hex, no padding). */
  toString(): string {
    return this.#info().display;
  }

  /** JSON-safe `{start: '0x…', end: '0x…'}`. */
  toJSON(): { start: string; end: string } {
    return { start: `0x${this.start.toString(16)}`, end: `0x${this.end.toString(16)}` };
  }

  /** `util.inspect` shows the Display form. */
  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return `MemoryRange ${this.toString()}`;
  }
}

/** A range the core produced (valid by construction). @internal */
export function trusted(start: bigint, end: bigint): MemoryRange {
  return new MemoryRange(start, end, trustedToken);
}

/**
 * Parses a structured result of the binding: bigints, and ranges as MemoryRange; its plain
 * objects and arrays get their JSON and inspect forms (`json_view.ts`). @internal
 */
export function nativeJson<T>(text: string): T {
  return parseNativeJson<T>(text, trusted, attachViews);
}

function fromPair(bounds: BigUint64Array): MemoryRange {
  return trusted(bounds[0]!, bounds[1]!);
}

/** `MemoryRange.new(start, end)` (bytes). */
export function range(start: U64, end: U64): MemoryRange {
  return new MemoryRange(start, end);
}

/**
 * Converts a range argument: a MemoryRange as is, a `{start, end}` object validated like
 * `MemoryRange.new` (RangeError with the core's text when unaligned or reversed).
 */
export function toRange(value: unknown, name: string): MemoryRange {
  // A real MemoryRange has its bounds as own bigint properties (an object made with
  // Object.create(MemoryRange.prototype) has none and is validated like any other object).
  if (value instanceof MemoryRange && typeof value.start === 'bigint' && typeof value.end === 'bigint') return value;
  if (typeof value === 'object' && value !== null && 'start' in value && 'end' in value) {
    const { start, end } = value as { start: unknown; end: unknown };
    const s = toU64(start, `${name}.start`);
    const e = toU64(end, `${name}.end`);
    call(() => native.rangeNew(s, e, name));
    return new MemoryRange(s, e, trustedToken);
  }
  throw invalidArgType(`${name} must be a MemoryRange or a {start, end} object, got ${describeType(value)}`);
}

/** Reads an iterable argument into an array (TypeError when it is not iterable). */
export function toArray(value: unknown, name: string): unknown[] {
  if (typeof value === 'string' || value === null || value === undefined) {
    throw invalidArgType(`${name} must be an iterable, got ${describeType(value)}`);
  }
  if (typeof (value as { [Symbol.iterator]?: unknown })[Symbol.iterator] !== 'function') {
    throw invalidArgType(`${name} must be an iterable, got ${describeType(value)}`);
  }
  return Array.from(value as Iterable<unknown>);
}

/** Ranges as the flat `[start, end, …]` array the binding takes. */
export function packRanges(ranges: readonly MemoryRange[]): BigUint64Array {
  const flat = new BigUint64Array(ranges.length * 2);
  ranges.forEach((r, i) => {
    flat[2 * i] = r.start;
    flat[2 * i + 1] = r.end;
  });
  return flat;
}

/** Reads an iterable of range inputs. */
export function toRanges(value: unknown, name: string): MemoryRange[] {
  return toArray(value, name).map((item, i) => toRange(item, `${name}[${i}]`));
}

/** A tagged range for the walk/merge algorithms; tags are any JS values compared with ===. */
export interface Tagged<T> {
  range: RangeLike;
  tag: T;
}

function toTagged<T>(value: unknown, name: string): { ranges: MemoryRange[]; tags: T[] } {
  const items = toArray(value, name);
  const ranges: MemoryRange[] = [];
  const tags: T[] = [];
  items.forEach((item, i) => {
    if (typeof item !== 'object' || item === null || !('range' in item)) {
      throw invalidArgType(`${name}[${i}] must be a {range, tag} object, got ${describeType(item)}`);
    }
    const tagged = item as { range: unknown; tag: T };
    ranges.push(toRange(tagged.range, `${name}[${i}].range`));
    tags.push(tagged.tag);
  });
  return { ranges, tags };
}

/** One piece of walkRanges (same shape as the conformance vectors). */
export type RangeWalkItem<T, U> =
  | { range: MemoryRange; kind: RangeWalkKind.Neither }
  | { range: MemoryRange; kind: RangeWalkKind.Left; left: T }
  | { range: MemoryRange; kind: RangeWalkKind.Right; right: U }
  | { range: MemoryRange; kind: RangeWalkKind.Both; left: T; right: U };

type NativeItem = NonNullable<ReturnType<InstanceType<typeof native.RangeIterator>['next']>>;

function* drive<T>(iterator: InstanceType<typeof native.RangeIterator>, map: (item: NativeItem) => T): Generator<T, undefined, undefined> {
  for (;;) {
    const item = call(() => iterator.next());
    if (item === null || item === undefined) return undefined;
    yield map(item);
  }
}

function itemRange(item: NativeItem): MemoryRange {
  return trusted(item.range[0]!, item.range[1]!);
}

/** Partition of [0, MAX_ADDRESS) labelled by covering input elements. */
export function walkRanges<T, U>(left: Iterable<Tagged<T>>, right: Iterable<Tagged<U>>): IterableIterator<RangeWalkItem<T, U>> {
  const l = toTagged<T>(left, 'left');
  const r = toTagged<U>(right, 'right');
  const iterator = call(() => native.walkRangesIter(packRanges(l.ranges), packRanges(r.ranges)));
  return drive(iterator, (item): RangeWalkItem<T, U> => {
    const piece = itemRange(item);
    switch (item.kind as RangeWalkKind) {
      case RangeWalkKind.Left:
        return { range: piece, kind: RangeWalkKind.Left, left: l.tags[item.left]! };
      case RangeWalkKind.Right:
        return { range: piece, kind: RangeWalkKind.Right, right: r.tags[item.right]! };
      case RangeWalkKind.Both:
        return { range: piece, kind: RangeWalkKind.Both, left: l.tags[item.left]!, right: r.tags[item.right]! };
      default:
        return { range: piece, kind: RangeWalkKind.Neither };
    }
  });
}

/** Pieces covered by both inputs. */
export function overlappingRanges(left: Iterable<RangeLike>, right: Iterable<RangeLike>): IterableIterator<MemoryRange> {
  const l = packRanges(toRanges(left, 'left'));
  const r = packRanges(toRanges(right, 'right'));
  return drive(call(() => native.overlappingRangesIter(l, r)), itemRange);
}

/** Pieces of `left` not covered by `right`. */
export function subtractRanges(left: Iterable<RangeLike>, right: Iterable<RangeLike>): IterableIterator<MemoryRange> {
  const l = packRanges(toRanges(left, 'left'));
  const r = packRanges(toRanges(right, 'right'));
  return drive(call(() => native.subtractRangesIter(l, r)), itemRange);
}

/** Merge a start-sorted list into maximal runs (overlapping or touching). */
export function flattenRanges(ranges: Iterable<RangeLike>): IterableIterator<MemoryRange> {
  const flat = packRanges(toRanges(ranges, 'ranges'));
  return drive(call(() => native.flattenRangesIter(flat)), itemRange);
}

/** Merge touching elements with equal (===) tags. */
export function mergeAdjacentRanges<T>(ranges: Iterable<Tagged<T>>): IterableIterator<{ range: MemoryRange; tag: T }> {
  const input = toTagged<T>(ranges, 'ranges');
  // Equal ids for ===-equal tags. A Map uses SameValueZero, which differs from === only for
  // NaN (NaN !== NaN), so every NaN gets an id of its own.
  const ids = new Map<unknown, number>();
  let nextId = 0;
  const tagIds = new Uint32Array(input.tags.length);
  input.tags.forEach((tag, i) => {
    if (typeof tag === 'number' && Number.isNaN(tag)) {
      tagIds[i] = nextId++;
      return;
    }
    let id = ids.get(tag);
    if (id === undefined) {
      id = nextId++;
      ids.set(tag, id);
    }
    tagIds[i] = id;
  });
  const iterator = call(() => native.mergeAdjacentRangesIter(packRanges(input.ranges), tagIds));
  return drive(iterator, (item) => ({ range: itemRange(item), tag: input.tags[item.left]! }));
}

/** Lazy iterator over 1 GiB / 2 MiB / 4 KiB-aligned pieces of a range (bytes). */
export class AlignedSubranges implements IterableIterator<MemoryRange> {
  #native: InstanceType<typeof native.NativeAlignedSubranges>;

  /** Starts with offset 0 and no length cap. */
  constructor(range: RangeLike) {
    const r = toRange(range, 'range');
    this.#native = call(() => new native.NativeAlignedSubranges(r.start, r.end));
  }

  /** Judge alignment on address + offset (bytes); returns this iterator. */
  withOffset(offset: U64): this {
    const o = toU64(offset, 'offset');
    call(() => this.#native.withOffset(o));
    return this;
  }

  /** No piece longer than maxLen (bytes; 0 yields empty pieces forever, as upstream). */
  withMaxRangeLen(maxLen: U64): this {
    const m = toU64(maxLen, 'maxLen');
    call(() => this.#native.withMaxRangeLen(m));
    return this;
  }

  /** Next piece; throws RangeError at the item where Rust would panic. */
  next(): IteratorResult<MemoryRange> {
    const bounds = call(() => this.#native.next());
    if (bounds === null || bounds === undefined) return { done: true, value: undefined };
    return { done: false, value: fromPair(bounds) };
  }

  [Symbol.iterator](): this {
    return this;
  }
}
