// MemoryLayout, probeAddress and the x86 legacy split through the public API.
'use strict';
const test = require('ava');
const mb = require('../dist');

const { MemoryLayout, range, KiB, MiB, GiB, TiB, AddressType } = mb;
const G = GiB;
const M = MiB;
const layoutError = (code) => ({ instanceOf: mb.MemoryLayoutError, code });

test('new: 1 TiB of RAM around two gaps is three RAM ranges, with every derived size', (t) => {
  const l = MemoryLayout.new(TiB, [range(G, 2n * G), range(3n * G, 4n * G)]);
  t.deepEqual(l.ram.map((r) => [String(r.range), r.vnode]), [
    ['0x0-0x40000000', 0],
    ['0x80000000-0xc0000000', 0],
    ['0x100000000-0x10080000000', 0],
  ]);
  t.deepEqual(l.mmio.map(String), ['0x40000000-0x80000000', '0xc0000000-0x100000000']);
  t.is(l.ramSize, TiB);
  t.is(l.endOfRam, 0x10080000000n);
  t.is(l.ramBelow4gb, 2n * G);
  t.is(l.ramAbove4gb, 0xff80000000n);
  t.is(l.ramAboveHighMmio, 0xff80000000n);
  t.is(l.maxRamBelow4gb, 3n * G);
  t.is(l.endOfRamOrMmio, 0x10080000000n);
  t.is(l.vtl2Range, null);
  t.deepEqual(l.toJSON().ram[0], { range: { start: '0x0', end: '0x40000000' }, vnode: 0 });
  t.is(l.toJSON().endOfRamOrMmio, '0x10080000000');
});

// RAM that ends before the MMIO gaps.
test('new: RAM that ends below the gaps is one range; ramAboveHighMmio and endOfRamOrMmio follow', (t) => {
  const a = MemoryLayout.new(512n * M, [{ start: G, end: 2n * G }, { start: 3n * G, end: 4n * G }]);
  t.deepEqual(a.ram.map((r) => String(r.range)), ['0x0-0x20000000']);
  t.is(a.endOfRam, 512n * M);
  t.is(a.endOfRamOrMmio, 4n * G);
  t.is(a.ramAboveHighMmio, 0n);
  t.is(a.maxRamBelow4gb, 512n * M);
  const b = MemoryLayout.new(G, [range(G, 2n * G)], null);
  t.is(b.ramAboveHighMmio, null);
  t.is(b.endOfRamOrMmio, 2n * G);
});

test('new: a zero or unaligned RAM size is BadSize', (t) => {
  for (const size of [0, TiB + 1n, 0x800]) {
    const e = t.throws(() => MemoryLayout.new(size, [range(G, 2n * G)]), layoutError('ERR_BAD_SIZE'));
    // The original's text; the value and the rule are the detail.
    t.is(e.message, 'invalid memory size');
    t.is(e.detail, `the RAM size 0x${BigInt(size).toString(16)} is not a positive multiple of 4 KiB (0x1000)`);
    t.true(e instanceof mb.MembackingError);
  }
});

test('new without gaps: one RAM range; endOfRamOrMmio throws where Rust panics', (t) => {
  const l = MemoryLayout.new(4n * G, []);
  t.deepEqual(l.ram.map((r) => String(r.range)), ['0x0-0x100000000']);
  t.is(l.ramBelow4gb, 0n);
  t.is(l.ramAbove4gb, 4n * G);
  t.is(l.maxRamBelow4gb, null);
  t.is(l.ramAboveHighMmio, null);
  const noGap = t.throws(() => l.endOfRamOrMmio, { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE', message: 'mmio set' });
  t.is(noGap.detail, 'endOfRamOrMmio is defined only for a layout with an MMIO gap, and this one has none (RAM ends at 0x100000000): read endOfRam, or add a gap');
  t.is(l.toJSON().endOfRamOrMmio, null);
});

// Invalid gap lists and VTL2 ranges.
test('overlapping, unsorted or empty ranges are BadMemoryRanges, never Vtl2RangeBeforeEndOfRam', (t) => {
  const bad = layoutError('ERR_BAD_MEMORY_RANGES');
  const gapAtZero = t.throws(() => MemoryLayout.new(G, [range(0, G)]), bad);
  t.is(gapAtZero.message, 'invalid memory or MMIO ranges');
  t.regex(gapAtZero.detail, /^gaps\[0\] 0x0-0x40000000 starts where the RAM laid out from address 0 would continue \(0x0\), which would leave an empty RAM piece: start the first gap above 0/);
  t.throws(() => MemoryLayout.new(2n * G, [range(G, 2n * G), range(2n * G, 3n * G)]), bad);
  t.is(MemoryLayout.new(G, [range(G, 2n * G), range(2n * G, 3n * G)]).endOfRamOrMmio, 3n * G);
  t.throws(() => MemoryLayout.new(TiB, [range(3n * G, 4n * G), range(G, 2n * G)]), bad);
  t.throws(() => MemoryLayout.new(TiB, [range(G, G)]), bad);
  const gaps = [range(G, 2n * G), range(3n * G, 4n * G)];
  for (const vtl2 of [range(3n * G - 64n * M, 3n * G), range(3n * G, 3n * G + 64n * M), range(G - 64n * M, G), range(5n * G, 5n * G)]) {
    t.throws(() => MemoryLayout.new(2n * G, gaps, vtl2), bad);
  }
  t.throws(() => MemoryLayout.new(3n * G, [range(G, 2n * G)], range(2n * G, 3n * G)), bad);
});

// A VTL2 range above RAM, and address probes.
test('a VTL2 range above RAM is kept apart from RAM; probeAddress names RAM, MMIO or nothing', (t) => {
  const gaps = [range(G, 2n * G), range(3n * G, 4n * G)];
  const l = MemoryLayout.new(2n * G, gaps, range(4n * G, 4n * G + 64n * M));
  t.deepEqual(l.ram.map((r) => String(r.range)), ['0x0-0x40000000', '0x80000000-0xc0000000']);
  t.is(l.ramSize, 2n * G);
  t.is(l.endOfRam, 3n * G);
  t.is(String(l.vtl2Range), '0x100000000-0x104000000');
  t.is(l.endOfRamOrMmio, 4n * G);
  const probes = [
    [0n, AddressType.Ram], [G - 1n, 'Ram'], [G, 'Mmio'], [2n * G, 'Ram'], [3n * G - 1n, 'Ram'], [3n * G, 'Mmio'],
    [4n * G - 1n, 'Mmio'], [4n * G, null], [4n * G + M, null], [5n * G, null],
  ];
  for (const [address, expected] of probes) t.is(l.probeAddress(address), expected, `probe ${address}`);
  t.is(MemoryLayout.new(G, gaps, range(2n * G, 2n * G + 64n * M)).vtl2Range.toString(), '0x80000000-0x84000000');
});

// Layouts from explicit RAM ranges, with vnodes.
test('fromRanges: explicit RAM ranges with vnodes, and the orderings it refuses', (t) => {
  const l = MemoryLayout.fromRanges(
    [{ range: range(0, G) }, { range: range(2n * G, 3n * G) }, { range: range(4n * G, TiB + 2n * G) }],
    [range(G, 2n * G), range(3n * G, 4n * G)],
  );
  t.is(l.ramSize, TiB);
  t.is(l.ramAboveHighMmio, 0xff80000000n);
  t.is(l.probeAddress(TiB + 1n), 'Ram');
  t.is(l.probeAddress(TiB + 2n * G), null);
  t.is(l.probeAddress(G + 123n), 'Mmio');
  const bad = layoutError('ERR_BAD_MEMORY_RANGES');
  t.throws(() => MemoryLayout.fromRanges([], [range(G, 2n * G)]), bad);
  t.throws(() => MemoryLayout.fromRanges([{ range: range(0, G + M) }], [range(G, 2n * G), range(3n * G, 4n * G)]), bad);
  t.throws(() => MemoryLayout.fromRanges([{ range: range(0, G) }], [range(3n * G, 4n * G), range(G, 2n * G)]), bad);
  const numa = MemoryLayout.fromRanges([{ range: range(0, 2n * G), vnode: 0 }, { range: range(2n * G, 6n * G), vnode: 1 }], []);
  t.deepEqual(numa.ram.map((r) => r.vnode), [0, 1]);
  t.is(numa.ramBelow4gb, 2n * G);
  t.is(numa.ramAbove4gb, 4n * G);
  t.is(numa.maxRamBelow4gb, 2n * G);
  t.throws(() => numa.endOfRamOrMmio, { instanceOf: RangeError });
  const node3 = MemoryLayout.fromRanges([{ range: range(M, G), vnode: 3 }], [range(4n * G, 5n * G)]);
  t.is(node3.ramSize, G - M);
  t.is(node3.endOfRamOrMmio, 5n * G);
  t.is(node3.ram[0].vnode, 3);
  t.throws(() => MemoryLayout.fromRanges([{ range: range(2n * G, 3n * G) }, { range: range(0, G) }], []), bad);
  t.throws(() => MemoryLayout.fromRanges([{ range: range(0, G) }, { range: range(G, G) }], []), bad);
  t.is(MemoryLayout.fromRanges([{ range: range(0, G), vnode: 0xffff_ffff }], []).ram[0].vnode, 0xffff_ffff);
});

test('RAM that would extend past 2^64 is BadMemoryRanges (the original panics), not a crash', (t) => {
  t.throws(() => MemoryLayout.new(2n * G, [range(G, 0xffff_ffff_ffff_f000n)]), layoutError('ERR_BAD_MEMORY_RANGES'));
});

test('layouts are immutable: accessors return copies', (t) => {
  const l = MemoryLayout.new(2n * G, [range(3n * G, 4n * G)]);
  l.ram.pop();
  l.mmio.pop();
  t.is(l.ram.length, 1);
  t.is(l.mmio.length, 1);
  t.true(Object.isFrozen(l.ram[0]));
});

const legacyPieces = [
  '0x0-0xa0000', '0xa0000-0xc0000', '0xc0000-0xc4000', '0xc4000-0xc8000', '0xc8000-0xcc000', '0xcc000-0xd0000',
  '0xd0000-0xd4000', '0xd4000-0xd8000', '0xd8000-0xdc000', '0xdc000-0xe0000', '0xe0000-0xe4000', '0xe4000-0xe8000',
  '0xe8000-0xec000', '0xec000-0xf0000', '0xf0000-0x100000',
];

// The x86 legacy RAM split.
test('the x86 legacy split: PAM pieces below 1 MiB, dense file offsets, VTL2 last, no split when off', (t) => {
  const a = mb.x86LegacyRamRanges(MemoryLayout.new(2n * G, [range(2n * G, 4n * G)]));
  t.deepEqual(a.map((x) => String(x.range)), [...legacyPieces, '0x100000-0x80000000']);
  let offset = 0n;
  for (const region of a) {
    t.is(region.fileOffset, offset);
    offset += region.range.len;
  }
  const b = mb.x86LegacyRamRanges(MemoryLayout.new(8n * G, [range(3n * G, 4n * G)], range(16n * G, 16n * G + 64n * M)), true);
  t.deepEqual(b.map((x) => String(x.range)).slice(14), ['0xf0000-0x100000', '0x100000-0xc0000000', '0x100000000-0x240000000', '0x400000000-0x404000000']);
  t.is(b[17].fileOffset, 8n * G);
  const noSplit = mb.x86LegacyRamRanges(MemoryLayout.new(8n * G, [range(3n * G, 4n * G)]), false);
  t.deepEqual(noSplit.map((x) => String(x.range)), ['0x0-0xc0000000', '0x100000000-0x240000000']);
  const x86 = layoutError('ERR_INVALID_RAM_FOR_X86');
  for (const l of [
    MemoryLayout.fromRanges([{ range: range(M, 2n * G) }], []),
    MemoryLayout.new(512n * KiB, []),
    MemoryLayout.new(4n * G, [range(0xa0000, 0xc0000)]),
  ]) {
    const e = t.throws(() => mb.x86LegacyRamRanges(l), x86);
    t.is(e.message, 'x86 support requires RAM to start at 0 and contain at least 1MB');
  }
  const oneMeg = mb.x86LegacyRamRanges(MemoryLayout.new(M, []));
  t.deepEqual(oneMeg.map((x) => String(x.range)), legacyPieces, 'no empty 0x100000-0x100000 region (deviation D1)');
});

test('bad input to every layout entry point', (t) => {
  const typeError = { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' };
  const rangeError = { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE' };
  t.throws(() => MemoryLayout.new('1G', []), typeError);
  t.throws(() => MemoryLayout.new(-1, []), typeError);
  t.throws(() => MemoryLayout.new(1.5, []), typeError);
  t.throws(() => MemoryLayout.new(1n << 64n, []), rangeError);
  t.throws(() => MemoryLayout.new(G, 5), typeError);
  t.throws(() => MemoryLayout.new(G, [5]), typeError);
  t.throws(() => MemoryLayout.new(G, [{ start: 0x1001, end: 0x2000 }]), rangeError);
  t.throws(() => MemoryLayout.new(G, [{ start: 0x3000, end: 0x2000 }]), rangeError);
  t.throws(() => MemoryLayout.new(G, [], 'vtl2'), typeError);
  t.throws(() => MemoryLayout.fromRanges([range(0, G)], []), typeError);
  t.throws(() => MemoryLayout.fromRanges([{ range: range(0, G), vnode: -1 }], []), rangeError);
  t.throws(() => MemoryLayout.fromRanges([{ range: range(0, G), vnode: 2 ** 32 }], []), rangeError);
  t.throws(() => MemoryLayout.fromRanges([{ range: range(0, G), vnode: 'a' }], []), typeError);
  t.throws(() => MemoryLayout.fromRanges(null, []), typeError);
  const l = MemoryLayout.new(G, []);
  t.throws(() => l.probeAddress(-5), typeError);
  t.throws(() => l.probeAddress(1n << 65n), rangeError);
  t.throws(() => mb.x86LegacyRamRanges({}), typeError);
  t.throws(() => mb.x86LegacyRamRanges(l, 'yes'), typeError);
  t.throws(() => new MemoryLayout(), typeError);
});
