// MemoryRange, its helpers and the range algorithms through the public API.
'use strict';
const test = require('ava');
const fc = require('fast-check');
const mb = require('../dist');

const { MemoryRange, range, KiB, MiB, GiB, TiB } = mb;
const M = MiB;

const codeOf = (code) => ({ code });

test('unit constants are bigints of powers of 1024', (t) => {
  t.is(KiB, 1024n);
  t.is(MiB, 1024n * 1024n);
  t.is(GiB, 1n << 30n);
  t.is(TiB, 1n << 40n);
});

test('accessors, Display and number inputs', (t) => {
  const r = MemoryRange.new(0x1000, 0x3000);
  t.is(r.toString(), '0x1000-0x3000');
  t.is(`${r}`, '0x1000-0x3000');
  t.is(r.start, 0x1000n);
  t.is(r.end, 0x3000n);
  t.is(r.len, 0x2000n);
  t.is(r.pageCount4k, 2n);
  t.is(r.pageCount2m, 1n);
  t.is(r.start4kGpn, 1n);
  t.is(r.end4kGpn, 3n);
  t.false(r.isEmpty);
  t.true(Object.isFrozen(r));
  t.deepEqual(r.toJSON(), { start: '0x1000', end: '0x3000' });
  t.deepEqual(JSON.parse(JSON.stringify(r)), { start: '0x1000', end: '0x3000' });
});

test('EMPTY and page_count_2m rounding', (t) => {
  t.is(MemoryRange.EMPTY.toString(), '0x0-0x0');
  t.is(MemoryRange.EMPTY.pageCount2m, 0n);
  t.is(range(0, 0x201000).pageCount2m, 2n);
  t.is(range(0x1000, 0x201000).pageCount2m, 1n);
  t.is(MemoryRange.MAX_ADDRESS, 0xffff_ffff_ffff_f000n);
});

// Construction errors: unaligned or reversed bounds.
test('tryNew errors and new panics', (t) => {
  const e1 = t.throws(() => MemoryRange.tryNew(0x1001, 0x2000), { instanceOf: mb.InvalidMemoryRangeError });
  t.is(e1.code, 'ERR_INVALID_MEMORY_RANGE');
  t.is(e1.message, 'unaligned or invalid memory range: 0x1001-0x2000');
  t.is(e1.start, 0x1001n);
  t.is(e1.end, 0x2000n);
  t.true(e1 instanceof mb.MembackingError);
  const e2 = t.throws(() => MemoryRange.tryNew(0x3000n, 0x2000n));
  t.is(e2.message, 'unaligned or invalid memory range: 0x3000-0x2000');
  t.throws(() => MemoryRange.new(0x1000, 0x1800), { instanceOf: RangeError, ...codeOf('ERR_INVALID_ARG_VALUE') });
  t.throws(() => new MemoryRange(0x2000, 0x1000), { instanceOf: RangeError, ...codeOf('ERR_INVALID_ARG_VALUE') });
  t.is(MemoryRange.tryNew(0, 4096).toString(), '0x0-0x1000');
});

// Page-aligned bounds of arbitrary addresses, and ranges from page numbers.
test('bounding and from4kGpnRange', (t) => {
  t.is(MemoryRange.bounding(0x1800, 0x1800).toString(), '0x1000-0x2000');
  t.is(MemoryRange.bounding(0x1234, 0x5678).toString(), '0x1000-0x6000');
  t.is(MemoryRange.bounding(0x1000, 0x1000).toString(), '0x1000-0x1000');
  t.is(MemoryRange.bounding(0, 0).toString(), '0x0-0x0');
  t.is(MemoryRange.bounding(0n, 0xffff_ffff_ffff_effen).toString(), '0x0-0xfffffffffffff000');
  t.throws(() => MemoryRange.bounding(0n, 0xffff_ffff_ffff_efffn), { instanceOf: RangeError });
  t.throws(() => MemoryRange.bounding(5, 4), { instanceOf: RangeError });
  t.is(MemoryRange.from4kGpnRange(5, 11).toString(), '0x5000-0xb000');
  t.is(MemoryRange.from4kGpnRange(0n, 0xf_ffff_ffff_ffffn).toString(), '0x0-0xfffffffffffff000');
  t.throws(() => MemoryRange.from4kGpnRange(0n, 0x10_0000_0000_0000n), { instanceOf: RangeError });
  t.throws(() => MemoryRange.from4kGpnRange(3, 2), { instanceOf: RangeError });
});

// Alignment of a range and its aligned subrange.
test('alignment and alignedSubrange', (t) => {
  t.is(range(0x200000, 0x400000).alignment(0), 0x200000n);
  t.is(range(4n * M + 8n * KiB, 6n * M + 8n * KiB).alignment(2n * M - 8n * KiB), 0x200000n);
  t.is(range(0, 4n * GiB).alignment(0), 0x1_0000_0000n);
  t.is(range(0x1000, 0x1000).alignment(0), 0x1000n);
  t.throws(() => MemoryRange.EMPTY.alignment(0), { instanceOf: RangeError, ...codeOf('ERR_INVALID_ARG_VALUE') });
  t.is(range(0x1000, 0x101000).alignedSubrange(M).toString(), '0x100000-0x100000');
  t.is(range(0x1000, 0x2000).alignedSubrange(M).toString(), '0x0-0x0');
  t.is(range(0x3000, 0x9000).alignedSubrange(1).toString(), '0x3000-0x9000');
  t.is(range(M, 5n * M).alignedSubrange(2n * M).toString(), '0x200000-0x400000');
  t.throws(() => range(0, 0x1000).alignedSubrange(3), { instanceOf: RangeError });
  t.throws(() => range(0, 0x1000).alignedSubrange(0), { instanceOf: RangeError });
});

// Overlap and containment, intersection, splitting, offsets and ordering.
test('predicates, intersection, split, offsetOf, ordering', (t) => {
  t.true(range(0x2000, 0x2000).overlaps(range(0x1000, 0x3000)));
  t.false(range(0x1000, 0x2000).overlaps({ start: 0x2000, end: 0x3000 }));
  t.false(range(0x1000, 0x1000).overlaps(range(0x1000, 0x3000)));
  t.false(range(0x2000, 0x2000).overlaps(range(0x2000, 0x2000)));
  const a = range(0x1000, 0x3000);
  t.true(a.contains(range(0x3000, 0x3000)));
  t.false(a.contains(MemoryRange.EMPTY));
  t.true(a.contains(a));
  t.false(a.containsAddr(0xfff));
  t.true(a.containsAddr(0x1000n));
  t.is(range(0, 0x1000).intersection(range(0x1000, 0x2000)).toString(), '0x1000-0x1000');
  t.is(range(0, 0x1000).intersection(range(0x5000, 0x6000)).toString(), '0x0-0x0');
  t.is(range(0x1000, 0x5000).intersection({ start: 0x3000n, end: 0x8000n }).toString(), '0x3000-0x5000');
  t.deepEqual(range(0x1000, 0x4000).splitAtOffset(0x1000).map(String), ['0x1000-0x2000', '0x2000-0x4000']);
  t.deepEqual(range(0x1000, 0x4000).splitAtOffset(0x3000).map(String), ['0x1000-0x4000', '0x4000-0x4000']);
  t.throws(() => range(0x1000, 0x4000).splitAtOffset(0x800), { instanceOf: RangeError });
  t.throws(() => range(0x1000, 0x4000).splitAtOffset(0x4000), { instanceOf: RangeError });
  t.is(a.offsetOf(0x2800), 0x1800n);
  t.is(a.offsetOf(0x1000), 0n);
  t.is(a.offsetOf(0x3000), null);
  t.is(MemoryRange.compare(range(0x1000, 0x2000), range(0x1000, 0x3000)), -1);
  t.is(MemoryRange.compare(range(0x1000, 0x3000), range(0x2000, 0x2000)), -1);
  t.is(MemoryRange.compare(range(0, 0x5000), range(0x1000, 0x2000)), -1);
  t.is(MemoryRange.compare(range(0x1000, 0x2000), { start: 0x1000, end: 0x2000 }), 0);
  t.is(MemoryRange.compare(range(0x2000, 0x2000), range(0x1000, 0x3000)), 1);
  t.true(a.equals({ start: 0x1000n, end: 0x3000 }));
});

const str = (it) => [...it].map(String);

// Splitting a range into aligned subranges.
test('AlignedSubranges splits at the largest alignment, honours max length and offset, and stops after a panic', (t) => {
  t.deepEqual(str(new mb.AlignedSubranges(range(5n * M + 400n * KiB, 12n * M + 400n * KiB))), [
    '0x564000-0x600000',
    '0x600000-0xc00000',
    '0xc00000-0xc64000',
  ]);
  t.deepEqual(str(new mb.AlignedSubranges(range(0x1ff000, 0x80201000))), [
    '0x1ff000-0x200000',
    '0x200000-0x40000000',
    '0x40000000-0x80000000',
    '0x80000000-0x80200000',
    '0x80200000-0x80201000',
  ]);
  t.deepEqual(str(new mb.AlignedSubranges(range(0, 4n * M)).withMaxRangeLen(M)), [
    '0x0-0x100000',
    '0x100000-0x200000',
    '0x200000-0x300000',
    '0x300000-0x400000',
  ]);
  t.deepEqual(str(new mb.AlignedSubranges(range(4n * M + 8n * KiB, 6n * M + 8n * KiB)).withOffset(2n * M - 8n * KiB)), ['0x402000-0x602000']);
  t.deepEqual(str(new mb.AlignedSubranges(MemoryRange.EMPTY)), []);
  const bad = new mb.AlignedSubranges(range(0, 4n * M)).withOffset(0x800);
  t.throws(() => bad.next(), { instanceOf: RangeError });
  t.true(bad.next().done, 'an iterator that panicked is finished');
  const endless = new mb.AlignedSubranges(range(0, 4n * M)).withMaxRangeLen(0);
  for (let i = 0; i < 1000; i++) t.is(endless.next().value.toString(), '0x0-0x0');
});

// Walking two range lists over the whole address space.
test('walkRanges covers the address space with Neither/Left/Right/Both pieces and passes tags through', (t) => {
  const items = [
    ...mb.walkRanges(
      [
        { range: range(M, 4n * M), tag: 'first' },
        { range: range(8n * M, 12n * M), tag: 'second' },
      ],
      [
        { range: range(2n * M, 9n * M), tag: 1000 },
        { range: range(9n * M, 10n * M), tag: 2000 },
      ],
    ),
  ].map((x) => [String(x.range), x.kind, x.left, x.right]);
  t.deepEqual(items, [
    ['0x0-0x100000', 'Neither', undefined, undefined],
    ['0x100000-0x200000', 'Left', 'first', undefined],
    ['0x200000-0x400000', 'Both', 'first', 1000],
    ['0x400000-0x800000', 'Right', undefined, 1000],
    ['0x800000-0x900000', 'Both', 'second', 1000],
    ['0x900000-0xa00000', 'Both', 'second', 2000],
    ['0xa00000-0xc00000', 'Left', 'second', undefined],
    ['0xc00000-0xfffffffffffff000', 'Neither', undefined, undefined],
  ]);
  t.is(mb.RangeWalkKind.Both, 'Both');
  const empty = [...mb.walkRanges([], [])];
  t.deepEqual(empty.map((x) => [String(x.range), x.kind]), [['0x0-0xfffffffffffff000', 'Neither']]);
  const tagObject = { name: 'a' };
  const whole = [...mb.walkRanges([{ range: range(0n, MemoryRange.MAX_ADDRESS), tag: tagObject }], [])];
  t.is(whole.length, 1);
  t.is(whole[0].left, tagObject, 'tags are passed through by identity');
});

const pages = (list) => list.map(([s, e]) => range(BigInt(s) * 4096n, BigInt(e) * 4096n));
const L = [
  [0n, 4n * M], [8n * M, 12n * M], [12n * M, 12n * M], [16n * M, 20n * M], [24n * M, 32n * M], [40n * M, 48n * M],
].map(([s, e]) => range(s, e));
const R = [
  [2n * M, 6n * M], [10n * M, 11n * M], [11n * M, 11n * M], [11n * M, 13n * M], [15n * M, 22n * M], [26n * M, 30n * M],
].map(([s, e]) => range(s, e));

// Overlap and subtraction of two sorted range lists.
test('overlappingRanges and subtractRanges, which check sorting lazily as they go', (t) => {
  t.deepEqual(str(mb.overlappingRanges(L, R)), ['0x200000-0x400000', '0xa00000-0xb00000', '0xb00000-0xc00000', '0x1000000-0x1400000', '0x1a00000-0x1e00000']);
  t.deepEqual(str(mb.subtractRanges(L, R)), ['0x0-0x200000', '0x800000-0xa00000', '0x1800000-0x1a00000', '0x1e00000-0x2000000', '0x2800000-0x3000000']);
  const lazy = mb.overlappingRanges([range(M, 2n * M), range(0, M)], [range(3n * M, 4n * M)]);
  const error = t.throws(() => lazy.next(), { instanceOf: RangeError });
  // The panic text is the message; which element breaks the order is the detail.
  t.is(error.message, 'left not sorted');
  t.regex(error.detail, /^left\[1\] /);
  t.regex(t.throws(() => [...mb.overlappingRanges([range(M, 2n * M), range(3n * M, 4n * M)], [range(0, M), range(0, M)])], { message: 'right not sorted' }).detail, /^right\[1\] /);
  t.deepEqual(str(mb.walkRanges([{ range: range(4n * M, 4n * M), tag: null }, { range: range(M, 2n * M), tag: null }], [])).length, 3);
  t.throws(() => [...mb.walkRanges([{ range: range(0, 4n * M), tag: 1 }, { range: range(2n * M, 2n * M), tag: 2 }], [])], { message: 'left not sorted' });
  t.deepEqual(str(mb.subtractRanges([range(0, 10n * M)], [range(2n * M, 3n * M), range(5n * M, 6n * M)])), ['0x0-0x200000', '0x300000-0x500000', '0x600000-0xa00000']);
  t.deepEqual(str(mb.subtractRanges([range(0, 2n * M), range(2n * M, 4n * M)], [])), ['0x0-0x200000', '0x200000-0x400000']);
});

// Flattening overlapping ranges and merging adjacent ones.
test('flattenRanges merges overlaps of sorted input; mergeAdjacentRanges joins touching ranges with equal tags', (t) => {
  t.deepEqual(str(mb.flattenRanges(pages([[0, 4], [5, 7], [6, 11], [13, 20], [20, 25], [22, 24], [35, 36]]))), ['0x0-0x4000', '0x5000-0xb000', '0xd000-0x19000', '0x23000-0x24000']);
  t.deepEqual(str(mb.flattenRanges([range(0x1000, 0x8000), range(0x2000, 0x3000), range(0x2000, 0x9000)])), ['0x1000-0x9000']);
  t.deepEqual(str(mb.flattenRanges([range(0x1000, 0x2000), range(0x3000, 0x3000), range(0x5000, 0x6000)])), ['0x1000-0x2000', '0x3000-0x3000', '0x5000-0x6000']);
  t.throws(() => [...mb.flattenRanges(pages([[0, 4], [5, 7], [3, 8]]))], { message: 'ranges are not sorted' });
  t.throws(() => [...mb.flattenRanges(pages([[0, 10], [5, 7], [3, 8]]))], { message: 'ranges are not sorted' });
  const tagged = pages([[0, 4], [5, 7], [7, 11], [11, 12], [13, 20], [20, 25], [35, 36]]).map((r, i) => ({ range: r, tag: 'RRRBRRB'[i] }));
  t.deepEqual([...mb.mergeAdjacentRanges(tagged)].map((x) => `${x.range} ${x.tag}`), ['0x0-0x4000 R', '0x5000-0xb000 R', '0xb000-0xc000 B', '0xd000-0x19000 R', '0x23000-0x24000 B']);
  t.throws(() => [...mb.mergeAdjacentRanges(pages([[0, 6], [5, 7], [9, 12]]).map((r) => ({ range: r, tag: 0 })))], { message: 'ranges overlap' });
  t.throws(() => [...mb.mergeAdjacentRanges(pages([[0, 4], [5, 7], [3, 8]]).map((r) => ({ range: r, tag: 0 })))], { message: 'ranges are not sorted' });
  t.throws(() => [...mb.mergeAdjacentRanges(pages([[0, 4], [5, 7], [4, 5]]).map((r) => ({ range: r, tag: 0 })))], { message: 'ranges are not sorted' });
});

test('merge compares tags with === (NaN never merges, the first tag of a run is kept)', (t) => {
  const run = [range(0, 0x1000), range(0x1000, 0x2000), range(0x2000, 0x3000)];
  t.is([...mb.mergeAdjacentRanges(run.map((r) => ({ range: r, tag: NaN })))].length, 3);
  const merged = [...mb.mergeAdjacentRanges(run.map((r, i) => ({ range: r, tag: i === 0 ? 0 : -0 })))];
  t.is(merged.length, 1);
  t.true(Object.is(merged[0].tag, 0));
  const objA = {};
  t.is([...mb.mergeAdjacentRanges([{ range: run[0], tag: objA }, { range: run[1], tag: {} }])].length, 2);
  t.is([...mb.mergeAdjacentRanges([{ range: run[0], tag: objA }, { range: run[1], tag: objA }])].length, 1);
});

test('bad input: types, negatives, fractions, unsafe integers, > 2^64-1', (t) => {
  const typeError = { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' };
  const rangeError = { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE' };
  t.throws(() => range('0x1000', 0x2000), typeError);
  t.throws(() => range(-4096, 0), typeError);
  t.throws(() => range(0.5, 4096), typeError);
  t.throws(() => range(2 ** 53, 2 ** 53 + 4096), typeError);
  t.throws(() => range(NaN, 0), typeError);
  t.throws(() => range(0, Infinity), typeError);
  t.throws(() => range(0n, 1n << 64n), rangeError);
  t.throws(() => range(-1n, 0n), rangeError);
  t.throws(() => range(0x1001n, 0x2000n), rangeError);
  t.throws(() => range(0, 0x1000).overlaps(null), typeError);
  t.throws(() => range(0, 0x1000).overlaps({ start: 1, end: 2 }), rangeError);
  t.throws(() => range(0, 0x1000).containsAddr(), typeError);
  t.throws(() => mb.flattenRanges(42), typeError);
  t.throws(() => mb.flattenRanges('abc'), typeError);
  t.throws(() => mb.flattenRanges([{ start: 0, end: 1 }]), rangeError);
  t.throws(() => mb.walkRanges([range(0, 0x1000)], []), typeError);
  t.throws(() => new mb.AlignedSubranges(undefined), typeError);
  t.throws(() => new mb.AlignedSubranges(range(0, 0x1000)).withOffset(-1), typeError);
  t.throws(() => MemoryRange.new(0, 4096n * 2n + 1n), rangeError);
});

test('u64 values round-trip losslessly up to the top of the address space', (t) => {
  const top = MemoryRange.MAX_ADDRESS;
  const r = range(top - 0x1000n, top);
  t.is(r.start, 0xffff_ffff_ffff_e000n);
  t.is(r.len, 0x1000n);
  t.is(r.offsetOf(top - 1n), 0xfffn);
  t.is(r.toString(), '0xffffffffffffe000-0xfffffffffffff000');
});

test('property: ranges built from random page numbers match their definitions', (t) => {
  const page = fc.bigInt({ min: 0n, max: 0xf_ffff_ffff_ffffn });
  t.notThrows(() =>
    fc.assert(
      fc.property(page, page, page, page, (a, b, c, d) => {
        const [s1, e1] = a <= b ? [a, b] : [b, a];
        const [s2, e2] = c <= d ? [c, d] : [d, c];
        const x = MemoryRange.from4kGpnRange(s1, e1);
        const y = MemoryRange.from4kGpnRange(s2, e2);
        if (x.len !== (e1 - s1) * 4096n) return false;
        if (x.overlaps(y) !== (x.end > y.start && x.start < y.end)) return false;
        const i = x.intersection(y);
        const lo = x.start > y.start ? x.start : y.start;
        const hi = x.end < y.end ? x.end : y.end;
        if (lo <= hi ? !(i.start === lo && i.end === hi) : !i.equals(MemoryRange.EMPTY)) return false;
        return MemoryRange.compare(x, y) === (x.start !== y.start ? (x.start < y.start ? -1 : 1) : x.end === y.end ? 0 : x.end < y.end ? -1 : 1);
      }),
      { numRuns: 300 },
    ),
  );
});

test('property: arbitrary JavaScript values never crash the range entry points', (t) => {
  const entry = [
    (a, b) => range(a, b),
    (a, b) => MemoryRange.tryNew(a, b),
    (a, b) => MemoryRange.bounding(a, b),
    (a, b) => MemoryRange.from4kGpnRange(a, b),
    (a) => range(0, 0x1000).alignment(a),
    (a) => range(0, 0x1000).alignedSubrange(a),
    (a) => range(0, 0x1000).splitAtOffset(a),
    (a) => [...mb.flattenRanges([a])],
    (a, b) => [...mb.subtractRanges([a], [b])],
  ];
  t.notThrows(() =>
    fc.assert(
      fc.property(fc.integer({ min: 0, max: entry.length - 1 }), fc.anything(), fc.anything(), (i, a, b) => {
        try {
          entry[i](a, b);
        } catch (error) {
          return error instanceof Error && typeof error.code === 'string';
        }
        return true;
      }),
      { numRuns: 500 },
    ),
  );
});
