// Every error text the contract fixes (the original's error and panic texts: ranges, layouts, the
// x86 legacy split, guest memory, the memory manager; docs/design.md, "Message and detail"),
// provoked through the public API: `message` is that text byte for byte, and our explanation,
// where we have one, is `detail` (the values involved, the rule, what to do).
'use strict';
const test = require('ava');
const mb = require('../dist');
const { caught } = require('./helpers/bad_input');

const { GiB, MiB, TiB, range, MemoryRange, MemoryLayout, GuestMemoryBuilder, GuestMemory, SparseMapping, Mappable, RamVisibility } = mb;
const P = 4096n;
const GAP = range(3n * GiB, 4n * GiB);

/** Ranges of 4 KiB page numbers. */
const pages = (list) => list.map(([first, end]) => range(BigInt(first) * P, BigInt(end) * P));
/** Ranges tagged 0, for walkRanges and mergeAdjacentRanges. */
const tagged = (ranges) => ranges.map((r) => ({ range: r, tag: 0 }));

/** Runs `body(manager)` on a manager over 1 GiB of RAM and the gap (x86 legacy when `x86`), then closes it. */
async function withManager(body, { x86 = false } = {}) {
  const manager = await new GuestMemoryBuilder().x86LegacySupport(x86).build(MemoryLayout.new(GiB, [GAP]));
  try {
    return await body(manager);
  } finally {
    await manager.close();
  }
}

/**
 * Each case: how to provoke it, and what the error must be. `message` is exact; `detail` is a
 * regex (or undefined: no detail); `cause`, when given, is checked the same way.
 */
const CASES = {
  // MemoryRange construction.
  'tryNew: unaligned': {
    provoke: () => MemoryRange.tryNew(0x1001, 0x2000),
    code: 'ERR_INVALID_MEMORY_RANGE',
    message: 'unaligned or invalid memory range: 0x1001-0x2000',
  },
  // The range algorithms' panic texts.
  'overlappingRanges: left unsorted': {
    provoke: () => [...mb.overlappingRanges([range(MiB, 2n * MiB), range(0, MiB)], [range(3n * MiB, 4n * MiB)])],
    code: 'ERR_INVALID_ARG_VALUE',
    message: 'left not sorted',
    detail: /^left\[1\] 0x0-0x100000 starts before 0x200000, the end of left\[0\] 0x100000-0x200000: each list must be sorted/,
  },
  'overlappingRanges: right unsorted': {
    provoke: () => [...mb.overlappingRanges([range(MiB, 2n * MiB), range(3n * MiB, 4n * MiB)], [range(0, MiB), range(0, MiB)])],
    code: 'ERR_INVALID_ARG_VALUE',
    message: 'right not sorted',
    detail: /^right\[1\] 0x0-0x100000 starts before 0x100000, the end of right\[0\]/,
  },
  'walkRanges: an empty element inside the one before': {
    provoke: () => [...mb.walkRanges(tagged([range(0, 4n * MiB), range(2n * MiB, 2n * MiB)]), [])],
    code: 'ERR_INVALID_ARG_VALUE',
    message: 'left not sorted',
    detail: /^left\[1\] 0x200000-0x200000 starts before 0x400000/,
  },
  'flattenRanges: unsorted': {
    provoke: () => [...mb.flattenRanges(pages([[0, 4], [5, 7], [3, 8]]))],
    code: 'ERR_INVALID_ARG_VALUE',
    message: 'ranges are not sorted',
    detail: /^ranges\[2\] 0x3000-0x8000 starts below ranges\[1\] 0x5000-0x7000: sort the list by start address$/,
  },
  'mergeAdjacentRanges: overlapping': {
    provoke: () => [...mb.mergeAdjacentRanges(tagged(pages([[0, 6], [5, 7], [9, 12]])))],
    code: 'ERR_INVALID_ARG_VALUE',
    message: 'ranges overlap',
    detail: /^ranges\[1\] 0x5000-0x7000 starts inside ranges\[0\] 0x0-0x6000: the ranges must not overlap/,
  },
  'mergeAdjacentRanges: unsorted': {
    provoke: () => [...mb.mergeAdjacentRanges(tagged(pages([[0, 4], [5, 7], [4, 5]])))],
    code: 'ERR_INVALID_ARG_VALUE',
    message: 'ranges are not sorted',
    detail: /^ranges\[2\] 0x4000-0x5000 starts below ranges\[1\] 0x5000-0x7000/,
  },
  // The layout errors.
  'MemoryLayout.new: RAM size 0': {
    provoke: () => MemoryLayout.new(0, []),
    code: 'ERR_BAD_SIZE',
    message: 'invalid memory size',
    detail: /^the RAM size 0x0 is not a positive multiple of 4 KiB \(0x1000\)$/,
  },
  'MemoryLayout.new: RAM size 1 TiB + 1': {
    provoke: () => MemoryLayout.new(TiB + 1n, []),
    code: 'ERR_BAD_SIZE',
    message: 'invalid memory size',
    detail: /^the RAM size 0x10000000001 is not/,
  },
  'MemoryLayout.new: a gap at 0': {
    provoke: () => MemoryLayout.new(GiB, [range(0, GiB)]),
    code: 'ERR_BAD_MEMORY_RANGES',
    message: 'invalid memory or MMIO ranges',
    detail: /^gaps\[0\] 0x0-0x40000000 starts where the RAM laid out from address 0 would continue/,
  },
  'MemoryLayout.new: unsorted gaps': {
    provoke: () => MemoryLayout.new(TiB, [range(3n * GiB, 4n * GiB), range(GiB, 2n * GiB)]),
    code: 'ERR_BAD_MEMORY_RANGES',
    message: 'invalid memory or MMIO ranges',
    detail: /^gaps\[1\] 0x40000000-0x80000000 comes after gaps\[0\] 0xc0000000-0x100000000 but starts before it/,
  },
  'MemoryLayout.new: an empty VTL2 range': {
    provoke: () => MemoryLayout.new(2n * GiB, [range(GiB, 2n * GiB), GAP], range(5n * GiB, 5n * GiB)),
    code: 'ERR_BAD_MEMORY_RANGES',
    message: 'invalid memory or MMIO ranges',
    detail: /^the VTL2 range 0x140000000-0x140000000 is empty: remove it$/,
  },
  'MemoryLayout.fromRanges: no RAM': {
    provoke: () => MemoryLayout.fromRanges([], [range(GiB, 2n * GiB)]),
    code: 'ERR_BAD_MEMORY_RANGES',
    message: 'invalid memory or MMIO ranges',
    detail: /^there is no RAM range/,
  },
  'MemoryLayout.fromJSON: overlapping RAM': {
    provoke: () => MemoryLayout.fromJSON({ ram: [{ range: { start: '0x0', end: '0x40000000' }, vnode: 0 }, { range: { start: '0x0', end: '0x1000' }, vnode: 0 }], mmio: [] }),
    code: 'ERR_BAD_MEMORY_RANGES',
    message: 'invalid memory or MMIO ranges',
    detail: /^memory\[0\] 0x0-0x40000000 overlaps memory\[1\] 0x0-0x1000/,
  },
  // The accessor's `expect` text.
  'endOfRamOrMmio without a gap': {
    provoke: () => MemoryLayout.new(4n * GiB, []).endOfRamOrMmio,
    code: 'ERR_INVALID_ARG_VALUE',
    message: 'mmio set',
    detail: /^endOfRamOrMmio is defined only for a layout with an MMIO gap, and this one has none \(RAM ends at 0x100000000\): read endOfRam, or add a gap$/,
  },
  // The x86 legacy split.
  'x86LegacyRamRanges: RAM not from 0': {
    provoke: () => mb.x86LegacyRamRanges(MemoryLayout.fromRanges([{ range: range(MiB, 2n * GiB), vnode: 0 }], [])),
    code: 'ERR_INVALID_RAM_FOR_X86',
    message: 'x86 support requires RAM to start at 0 and contain at least 1MB',
    detail: /^the first RAM range 0x100000-0x80000000 starts at 0x100000, not 0: .*give such RAM, or build without x86LegacySupport$/,
  },
  'build: private memory with x86 legacy support': {
    provoke: () => new GuestMemoryBuilder().x86LegacySupport(true).privateMemory(true).build(MemoryLayout.new(GiB, [GAP])),
    code: 'ERR_PRIVATE_MEMORY_WITH_LEGACY',
    message: 'private memory is incompatible with x86 legacy support',
  },
  // Guest-memory errors: the template, with the source as detail when it is not a coded cause.
  'GuestMemory.allocate: a read past maxAddress': {
    provoke: () => GuestMemory.allocate(0x1000).read(0x1000, 1),
    code: 'ERR_GUEST_MEMORY_OUT_OF_RANGE',
    message: "guest memory 'heap': read error: failed to access 0x1000-0x1001",
    detail: /^no memory at address$/,
  },
  'a read across a hole names the precise gpa': {
    provoke: () => {
      const mapping = new SparseMapping(4n * MiB);
      mapping.alloc(0, 3n * MiB);
      return GuestMemory.fromSparseMapping(mapping).readAt(3n * MiB - 4n, Buffer.alloc(8));
    },
    code: 'ERR_GUEST_MEMORY_FAULT',
    message: "guest memory 'sparse': read error: failed to access 0x2ffffc-0x300004 at 0x300000",
    detail: /./,
  },
  'lockGpns of a hole has no range': {
    provoke: () => {
      const mapping = new SparseMapping(4n * P);
      mapping.alloc(0, P);
      return GuestMemory.fromSparseMapping(mapping).lockGpns([1]);
    },
    code: 'ERR_GUEST_MEMORY_FAULT',
    message: "guest memory 'sparse': lock error: failed to access memory at 0x1000",
    detail: /./,
  },
  // Accesses the manager's mappings refuse: a hole in the MMIO gap, a write to read-only RAM (NoMapping).
  'a read in the MMIO gap': {
    provoke: () => withManager(async (manager) => (await manager.client().guestMemory()).read(GAP.start, 1)),
    code: 'ERR_GUEST_MEMORY_OUT_OF_RANGE',
    message: "guest memory 'ram': read error: failed to access 0xc0000000-0xc0000001",
    cause: { code: 'ERR_NO_MAPPING', message: 'no mapping for 0xc0000000-0xc0001000', detail: /^nothing is mapped there .*: map a device window there/ },
  },
  'a write to ReadOnly RAM (scenario 30)': {
    provoke: () =>
      withManager(async (manager) => {
        await manager.ramVisibilityControl().setRamVisibility(range(0xc0000, 0xc4000), RamVisibility.ReadOnly);
        (await manager.client().guestMemory()).writeU32(0xc1000, 1);
      }, { x86: true }),
    code: 'ERR_GUEST_MEMORY_OUT_OF_RANGE',
    message: "guest memory 'ram': write error: failed to access 0xc1000-0xc1004",
    cause: { code: 'ERR_NO_MAPPING', message: 'no mapping for 0xc1000-0xc2000', detail: /^0xc1000-0xc2000 is mapped read-only, so it cannot be written: make it writable first/ },
  },
  'a write to a read-only device window (scenario 48)': {
    provoke: () =>
      withManager(async (manager) => {
        const { control, region } = manager.deviceMemoryMapper().newRegion(0x10000, 'rom');
        await region.map(0, Mappable.allocSharedMemory(0x10000, 'rom'), 0, 0x10000, true);
        await control.mapToGuest(GAP.start, false);
        const memory = await manager.client().guestMemory();
        memory.readU8(GAP.start);
        memory.writeU8(GAP.start + 0x2000n, 1);
      }),
    code: 'ERR_GUEST_MEMORY_OUT_OF_RANGE',
    message: "guest memory 'ram': write error: failed to access 0xc0002000-0xc0002001",
    cause: { code: 'ERR_NO_MAPPING', message: 'no mapping for 0xc0002000-0xc0003000', detail: /^0xc0002000-0xc0003000 is mapped read-only/ },
  },
  // The manager's errors whose messages were already exact.
  'setRamVisibility outside RAM': {
    provoke: () => withManager((manager) => manager.ramVisibilityControl().setRamVisibility(range(GAP.start, GAP.start + P), RamVisibility.ReadOnly)),
    code: 'ERR_INVALID_RAM_REGION',
    message: '0xc0000000-0xc0001000 is not a controllable RAM range',
    detail: /^setRamVisibility \(and a ramVisibility change of plan\/apply\) takes exactly one of the manager's RAM regions, as manager\.ramRegions\(\) lists them .*decommitRam takes a non-empty range that lies wholly in guest RAM: give such a range$/,
  },
  'overlapping device windows': {
    provoke: () =>
      withManager(async (manager) => {
        const mapper = manager.deviceMemoryMapper();
        await mapper.newRegion(0x2000, 'a').control.mapToGuest(GAP.start, true);
        await mapper.newRegion(0x2000, 'b').control.mapToGuest(GAP.start + P, true);
      }),
    code: 'ERR_OVERLAP_ERROR',
    message: 'memory region b overlaps with existing region a',
    detail: /^the window is not placed now: .*place it again/,
  },
};

/** Asserts `error` has `code`, exactly `message`, and a `detail` matching `detail` (none when undefined). */
function expectError(t, name, error, { code, message, detail }) {
  t.is(error.code, code, `${name}: ${error.message}`);
  t.is(error.message, message, name);
  if (detail === undefined) {
    t.is(error.detail, undefined, `${name}: ${error.detail}`);
  } else {
    t.regex(error.detail ?? '', detail, name);
    // `detail` is a field like the others: JSON and util.inspect show it.
    t.is(JSON.parse(JSON.stringify(error)).detail, error.detail, name);
    t.true(require('node:util').inspect(error).includes('detail:'), name);
  }
}

for (const [name, expected] of Object.entries(CASES)) {
  test(`${name}: ${expected.message}`, async (t) => {
    const error = await caught(expected.provoke);
    expectError(t, name, error, expected);
    if (expected.cause !== undefined) {
      t.truthy(error.cause, name);
      expectError(t, `${name} (cause)`, error.cause, expected.cause);
    } else if (error.code !== undefined && error.code.startsWith('ERR_GUEST_MEMORY')) {
      t.is(error.cause, undefined, `${name}: a source that is not the cause is the detail`);
    }
  });
}
