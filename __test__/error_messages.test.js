// Messages a user reads: each names the value, the rule it breaks and what to do — in `message`,
// or in `detail` where the contract fixes the message (the original's error or panic text).
// Layout refusals say which range breaks which rule; a build without an MMIO gap says why and how
// to fix it; a write to read-only RAM says read-only; the range algorithms name the element out
// of order; page tables outside RAM do not suggest attaching an attached partition; and no
// message or detail of a sweep over bad inputs carries Rust `Debug` text.
'use strict';
const test = require('ava');
const mb = require('../dist');
const { caught } = require('./helpers/bad_input');
const { kvmTest } = require('./helpers/kvm');

const { GiB, MiB, range, MemoryLayout, GuestMemoryBuilder, KvmPartition, RamVisibility, Vtl, VcpuMode } = mb;

test('layout refusals: overlapping, unsorted and VTL2-overlapping layouts each say what is wrong', async (t) => {
  const overlap = await caught(() => MemoryLayout.new(4n * GiB, [range(GiB, 3n * GiB), range(2n * GiB, 4n * GiB)]));
  t.is(overlap.code, 'ERR_BAD_MEMORY_RANGES');
  t.is(overlap.message, 'invalid memory or MMIO ranges');
  t.regex(overlap.detail, /gaps\[0\] 0x40000000-0xc0000000 overlaps gaps\[1\] 0x80000000-0x100000000: .*must not overlap/);

  const unsorted = await caught(() => MemoryLayout.new(4n * GiB, [range(3n * GiB, 4n * GiB), range(GiB, 2n * GiB)]));
  t.is(unsorted.code, 'ERR_BAD_MEMORY_RANGES');
  t.regex(unsorted.detail, /gaps\[1\] 0x40000000-0x80000000 comes after gaps\[0\] 0xc0000000-0x100000000 .*list them in ascending order/);

  const vtl2 = await caught(() => MemoryLayout.new(2n * GiB, [range(GiB, 2n * GiB)], range(2n * GiB, 3n * GiB)));
  t.is(vtl2.code, 'ERR_BAD_MEMORY_RANGES');
  t.regex(vtl2.detail, /RAM 0x80000000-0xc0000000 overlaps the VTL2 range 0x80000000-0xc0000000/);

  const numa = await caught(() => MemoryLayout.fromRanges([{ range: range(0, 2n * GiB), vnode: 0 }], [range(GiB, 3n * GiB)]));
  t.regex(numa.detail, /memory\[0\] 0x0-0x80000000 overlaps gaps\[0\] 0x40000000-0xc0000000/);

  const size = await caught(() => MemoryLayout.new(0x1001, []));
  t.is(size.code, 'ERR_BAD_SIZE');
  t.is(size.message, 'invalid memory size');
  t.regex(size.detail, /0x1001 is not a positive multiple of 4 KiB/);

  t.is(new Set([overlap.detail, unsorted.detail, vtl2.detail]).size, 3);
});

test('build() without an MMIO gap names the end of RAM, the rule and the gap to add', async (t) => {
  const error = await caught(() => new GuestMemoryBuilder().build(MemoryLayout.new(GiB, [])));
  t.is(error.code, 'ERR_INVALID_LAYOUT');
  t.regex(error.message, /RAM ends at 0x40000000 and there is no MMIO gap/);
  t.regex(error.message, /sizes the guest address space from the end of the last MMIO gap/);
  t.regex(error.message, /add a gap, e\.g\. 0x40000000-0x40001000/);
  // The suggested gap works.
  const manager = await new GuestMemoryBuilder().build(MemoryLayout.new(GiB, [range(GiB, GiB + 0x1000n)]));
  await manager.close();
});

test('a write to ReadOnly RAM fails NoMapping, whose detail says read-only; a read there works', async (t) => {
  const manager = await new GuestMemoryBuilder().x86LegacySupport(true).build(MemoryLayout.new(GiB, [range(3n * GiB, 4n * GiB)]));
  t.teardown(() => manager.close());
  await manager.ramVisibilityControl().setRamVisibility(range(0xa0000, 0xc0000), RamVisibility.ReadOnly);
  const memory = await manager.client().guestMemory();
  t.is(memory.readU8(0xa0000), 0);
  for (const write of [() => memory.writeU8(0xa0000, 1), () => memory.writeAt(0xa0000, Buffer.alloc(16))]) {
    const error = await caught(write);
    t.is(error.code, 'ERR_GUEST_MEMORY_OUT_OF_RANGE');
    t.is(error.cause?.code, 'ERR_NO_MAPPING');
    t.is(error.cause.message, 'no mapping for 0xa0000-0xa1000');
    t.regex(error.cause.detail, /^0xa0000-0xa1000 is mapped read-only, so it cannot be written: make it writable first/);
  }
  // The MMIO gap is NoMapping too, and its detail says nothing is mapped there.
  const gap = await caught(() => memory.writeU8(3n * GiB, 1));
  t.is(gap.cause?.code, 'ERR_NO_MAPPING');
  t.regex(gap.cause.detail, /^nothing is mapped there/);
});

test('range algorithms name the element that breaks the order and what to do', (t) => {
  const left = t.throws(() => [...mb.overlappingRanges([range(MiB, 2n * MiB), range(0, MiB)], [range(3n * MiB, 4n * MiB)])], { instanceOf: RangeError, message: 'left not sorted' });
  t.is(left.detail, 'left[1] 0x0-0x100000 starts before 0x200000, the end of left[0] 0x100000-0x200000: each list must be sorted by address without overlaps (flattenRanges merges overlapping ranges of a sorted list)');
  const right = t.throws(() => [...mb.subtractRanges([range(MiB, 2n * MiB)], [range(0, MiB), range(0, MiB)])], { message: 'right not sorted' });
  t.regex(right.detail, /^right\[1\] 0x0-0x100000 starts before 0x100000, the end of right\[0\]/);
  const flat = t.throws(() => [...mb.flattenRanges([range(0, 0x4000), range(0x5000, 0x7000), range(0x3000, 0x8000)])], { message: 'ranges are not sorted' });
  t.is(flat.detail, 'ranges[2] 0x3000-0x8000 starts below ranges[1] 0x5000-0x7000: sort the list by start address');
  const overlap = t.throws(() => [...mb.mergeAdjacentRanges([range(0, 0x6000), range(0x5000, 0x7000)].map((r) => ({ range: r, tag: 0 })))], { message: 'ranges overlap' });
  t.regex(overlap.detail, /^ranges\[1\] 0x5000-0x7000 starts inside ranges\[0\] 0x0-0x6000/);
});

test('MemoryRange panics keep the original text as the message and name the value in detail', (t) => {
  const start = t.throws(() => range(0x1001, 0x4000), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE', message: 'start must be page aligned' });
  t.regex(start.detail, /^start 0x1001 is not a multiple of the 4 KiB page size \(0x1000\): give a page-aligned start such as 0x1000/);
  // A plain {start, end} goes the same way, and its detail names the argument.
  const end = t.throws(() => range(0, 0x4000).overlaps({ start: 0, end: 0x1001 }), { message: 'end must be page aligned' });
  t.regex(end.detail, /^other\.end 0x1001 is not a multiple of the 4 KiB page size/);
  const reversed = t.throws(() => range(0x2000, 0x1000), { message: 'start must be <= end' });
  t.regex(reversed.detail, /^start 0x2000 is above end 0x1000: .*swap them/);
  const top = t.throws(() => mb.MemoryRange.bounding(0, 2n ** 64n - 1n), { message: 'end is too close to the top of the address space' });
  t.regex(top.detail, /^end 0xffffffffffffffff is above 0xffffffffffffeffe/);
  const pages = t.throws(() => mb.MemoryRange.from4kGpnRange(3, 2), { message: 'start must be <= end' });
  t.regex(pages.detail, /^first page 0x3 is above end page 0x2/);
  const split = t.throws(() => range(0, 0x1000).splitAtOffset(0x2000), { message: 'offset must be within the range' });
  t.regex(split.detail, /^offset 0x2000 is beyond the length 0x1000 of 0x0-0x1000/);
  const unaligned = t.throws(() => range(0, 0x2000).splitAtOffset(1), { message: 'offset must be page aligned' });
  t.regex(unaligned.detail, /^offset 0x1 is not a multiple/);
  const zero = t.throws(() => mb.MemoryRange.EMPTY.alignment(0), { message: 'attempt to shift left with overflow' });
  t.regex(zero.detail, /^base 0x0 plus both bounds of 0x0-0x0 is 0/);
  const power = t.throws(() => range(0x1000, 0x3000).alignedSubrange(3), { message: 'alignment must be a power of two' });
  t.regex(power.detail, /^alignment 0x3 is not a power of two/);
});

test('x86 legacy support refused for RAM that does not start at 0 or is under 1 MiB names the first RAM range', async (t) => {
  const late = MemoryLayout.fromRanges([{ range: range(MiB, GiB), vnode: 0 }], [range(3n * GiB, 4n * GiB)]);
  const listed = t.throws(() => mb.x86LegacyRamRanges(late), { code: 'ERR_INVALID_RAM_FOR_X86', message: 'x86 support requires RAM to start at 0 and contain at least 1MB' });
  t.regex(listed.detail, /^the first RAM range 0x100000-0x40000000 starts at 0x100000, not 0: .*or build without x86LegacySupport$/);
  const built = await t.throwsAsync(new GuestMemoryBuilder().x86LegacySupport(true).build(MemoryLayout.new(512n * 1024n, [range(3n * GiB, 4n * GiB)])), {
    code: 'ERR_INVALID_RAM_FOR_X86',
    message: 'x86 support requires RAM to start at 0 and contain at least 1MB',
  });
  t.regex(built.detail, /^the first RAM range 0x0-0x80000 holds 0x80000 bytes, less than 1 MiB: /);
});

kvmTest('page tables in the MMIO gap of an attached partition name the writable slots, not attaching', async (t) => {
  const manager = await new GuestMemoryBuilder().build(MemoryLayout.new(GiB, [range(3n * GiB, 4n * GiB)]));
  const kvm = await KvmPartition.create();
  t.teardown(async () => {
    kvm.close();
    await manager.close();
  });
  const unattached = await caught(() => kvm.createVcpu({ mode: VcpuMode.Long, pageTables: range(0x200000, 0x600000) }));
  t.regex(unattached.message, /the partition has none: attach the partition to a memory manager first/);
  await manager.attachPartition(Vtl.Vtl0, kvm);
  const inGap = await caught(() => kvm.createVcpu({ mode: VcpuMode.Long, pageTables: range(3n * GiB, 3n * GiB + 0x400000n) }));
  t.regex(inGap.message, /0xc0000000-0xc\w+ is not inside writable memory slots: nothing writable is mapped at 0xc0000000 \(the writable slots are 0x0-/);
  t.regex(inGap.message, /place it inside guest RAM that is mapped read-write/);
  t.notRegex(inGap.message, /attach/);
});

/** Rust `Debug` text: `Some(…)`, `None`, a struct literal such as `MemoryRange { start: … }`. */
const DEBUG_TEXT = /\bSome\(|\bNone\b|\b[A-Z]\w+ \{ \w+: |\bOk\(|\bErr\(/;

test('no message or detail of a sweep over bad inputs carries Rust Debug text, and every one is coded', async (t) => {
  const manager = await new GuestMemoryBuilder().x86LegacySupport(true).build(MemoryLayout.new(GiB, [range(3n * GiB, 4n * GiB)]));
  t.teardown(() => manager.close());
  await manager.ramVisibilityControl().setRamVisibility(range(0xa0000, 0xc0000), RamVisibility.ReadOnly);
  const memory = await manager.client().guestMemory();
  const { control, region } = manager.deviceMemoryMapper().newRegion(0x10000, 'sweep');
  const bad = {
    'overlapping gaps': () => MemoryLayout.new(4n * GiB, [range(GiB, 3n * GiB), range(2n * GiB, 4n * GiB)]),
    'unsorted gaps': () => MemoryLayout.new(4n * GiB, [range(3n * GiB, 4n * GiB), range(GiB, 2n * GiB)]),
    'empty gap': () => MemoryLayout.new(4n * GiB, [range(GiB, GiB)]),
    'gap at 0': () => MemoryLayout.new(4n * GiB, [range(0, GiB)]),
    'VTL2 over RAM': () => MemoryLayout.new(2n * GiB, [], range(GiB, 3n * GiB)),
    'RAM past the top': () => MemoryLayout.new(0xffff_ffff_ffff_f000n, [range(GiB, 2n * GiB)]),
    'no RAM': () => MemoryLayout.fromRanges([], []),
    'odd size': () => MemoryLayout.new(0x1001, []),
    'fromJSON garbage': () => MemoryLayout.fromJSON({ ram: [{ range: { start: '0x1000', end: '0x0' } }] }),
    'no MMIO gap': () => new GuestMemoryBuilder().build(MemoryLayout.new(GiB, [])),
    'read-only write': () => memory.writeU8(0xa0000, 1),
    'gap read': () => memory.readU8(3n * GiB),
    'past the end': () => memory.fillAt(5n * GiB, 0, 10),
    'visibility outside RAM': () => manager.ramVisibilityControl().setRamVisibility(range(3n * GiB, 3n * GiB + 0x1000n), 'Unmapped'),
    'device mapping beyond the object': () => region.map(0, mb.Mappable.allocSharedMemory(0x10000, 'x'), 0, 0x20000, true),
    'device window unaligned': () => control.mapToGuest(3n * GiB + 1n, true),
    'unsorted walk': () => [...mb.walkRanges([{ range: range(MiB, 2n * MiB), tag: 0 }, { range: range(0, MiB), tag: 1 }], [])],
    'range reversed': () => range(0x2000, 0x1000),
  };
  for (const [name, fn] of Object.entries(bad)) {
    const error = await caught(fn);
    for (let e = error; e; e = e.cause) {
      t.notRegex(e.message, DEBUG_TEXT, `${name}: ${e.message}`);
      if (e.detail !== undefined) t.notRegex(e.detail, DEBUG_TEXT, `${name}: ${e.detail}`);
    }
    t.true(typeof error.code === 'string' && error.code.startsWith('ERR_'), `${name}: ${error.code} ${error.message}`);
  }
});

test('sparse mappings: a range that is not page-aligned inside the reservation, and an access past its end, name offset, length and size', (t) => {
  const mapping = new mb.SparseMapping(0x4000);
  t.teardown(() => mapping.close());
  const unaligned = t.throws(() => mapping.alloc(0x800, 0x1000));
  t.is(unaligned.code, 'ERR_INVALID_INPUT');
  t.is(unaligned.message, 'offset 0x800 and length 0x1000 do not name a non-empty page-aligned range inside the 0x4000-byte reservation: use multiples of 4 KiB that end at or before 0x4000');
  const past = t.throws(() => mapping.writeAt(0x3ffe, Buffer.alloc(4)));
  t.is(past.code, 'ERR_OUT_OF_BOUNDS');
  t.is(past.message, 'out of bounds: a write of 0x4 bytes at offset 0x3ffe passes the end of the 0x4000-byte reservation: keep offset + length at or below 0x4000');
  // A fault inside the reservation keeps the core's message; detail says where and what to place.
  mapping.alloc(0, 0x1000);
  const unplaced = t.throws(() => mapping.readAt(0xffe, Buffer.alloc(4)), { code: 'ERR_MEMORY', message: 'failed to read memory' });
  t.regex(unplaced.detail, /^a read of 0x4 bytes at offset 0xffe of the reservation faulted at offset 0x1000: nothing readable is placed there/);
  mapping.mapZero(0x2000, 0x1000);
  const zeroPages = t.throws(() => mapping.fillAt(0x2000, 1, 0x10), { code: 'ERR_MEMORY', message: 'failed to write memory' });
  t.regex(zeroPages.detail, /^a write of 0x10 bytes at offset 0x2000 of the reservation faulted at offset 0x2000: nothing writable is placed there \(.*mapZero's read-only zero pages/);
});

test('the internal wrap() factories refuse a forged object with a coded error (they made objects that failed later with uncoded TypeErrors)', (t) => {
  for (const [Class, source] of [
    [mb.Mappable, /Mappable\.allocSharedMemory/],
    [mb.GuestMemory, /GuestMemory\.allocate/],
    [mb.LockedPages, /lockGpns/],
    [mb.Vcpu, /createVcpu/],
  ]) {
    for (const forged of [{}, null, mb.Mappable.allocSharedMemory(4096, 'x')]) {
      const error = t.throws(() => Class.wrap(forged), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
      t.regex(error.message, source);
    }
  }
});

test('endOfRamOrMmio of a layout without gaps says why and what to read instead', (t) => {
  const error = t.throws(() => MemoryLayout.new(GiB, []).endOfRamOrMmio, { code: 'ERR_INVALID_ARG_VALUE', message: 'mmio set' });
  t.regex(error.detail, /RAM ends at 0x40000000\): read endOfRam, or add a gap$/);
});

kvmTest('page tables that are missing or too small are named in hex, never as Rust Debug text', async (t) => {
  const kvm = await KvmPartition.create();
  t.teardown(() => kvm.close());
  const small = await caught(() => kvm.createVcpu({ mode: VcpuMode.Long, pageTables: range(0x200000, 0x201000) }));
  t.regex(small.message, /at least 0x202000 bytes in guest RAM, got 0x200000-0x201000 \(0x1000 bytes\): pass pageTables/);
  t.notRegex(small.message, DEBUG_TEXT);
});

test('client.guestMemory() after the manager closed says the manager stopped and what to do', async (t) => {
  const manager = await new GuestMemoryBuilder().build(MemoryLayout.new(GiB, [range(3n * GiB, 4n * GiB)]));
  const client = manager.client();
  await manager.close();
  const error = await t.throwsAsync(client.guestMemory(), { instanceOf: mb.VaMapperError, code: 'ERR_MEMORY_MANAGER_GONE' });
  t.is(error.message, 'failed to communicate with the memory manager');
  t.regex(error.detail, /manager this client belongs to has stopped .*call client\.guestMemory\(\) while the manager is open/);
  t.is(error.cause.code, 'ERR_MANAGER_GONE');
  client.close();
});

test('Mappable.fromFd of a descriptor that is not open names it and says what to pass', (t) => {
  const error = t.throws(() => mb.Mappable.fromFd(0x7ffffff0), { instanceOf: mb.OsError, code: 'EBADF' });
  t.is(error.syscall, 'fcntl');
  t.regex(error.message, /^fcntl\(F_DUPFD_CLOEXEC\) of fd 2147483632: /);
  t.regex(error.detail, /fd 2147483632 is not an open descriptor of this process.*stdio\[3\] arrives as fd 3/);
});

test('decommitRam outside guest RAM names the first byte that is not RAM, the rule and the RAM', async (t) => {
  const manager = await new GuestMemoryBuilder().x86LegacySupport(true).build(MemoryLayout.new(4n * GiB, [range(3n * GiB, 4n * GiB)]));
  const error = await t.throwsAsync(manager.decommitRam(range(3n * GiB - 0x1000n, 3n * GiB + 0x1000n)), { instanceOf: mb.MemoryManagerError, code: 'ERR_INVALID_RAM_REGION' });
  t.is(error.message, '0xbffff000-0xc0001000 is not a controllable RAM range');
  t.regex(error.detail, /^0xc0000000 in 0xbffff000-0xc0001000 is not guest RAM .*decommitRam releases pages of guest RAM only.*\(0x0-0xc0000000, 0x100000000-0x140000000\)$/);
  const empty = await t.throwsAsync(manager.decommitRam(range(0x1000, 0x1000)), { code: 'ERR_INVALID_RAM_REGION' });
  t.regex(empty.detail, /^0x1000-0x1000 is empty/);
  await manager.close();
});

test('an unaligned or reversed range names the argument, the bound, its value and the rule', async (t) => {
  const unaligned = t.throws(() => range(1, 0x2000), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE' });
  t.is(unaligned.message, 'start must be page aligned');
  t.regex(unaligned.detail, /^start 0x1 is not a multiple of the 4 KiB page size \(0x1000\): .*MemoryRange\.bounding/);
  const reversed = t.throws(() => new mb.MemoryRange(0x2000, 0x1000), { code: 'ERR_INVALID_ARG_VALUE' });
  t.is(reversed.message, 'start must be <= end');
  t.regex(reversed.detail, /^start 0x2000 is above end 0x1000: /);
  const gap = t.throws(() => MemoryLayout.new(GiB, [range(2n * GiB, 3n * GiB), { start: 3n * GiB, end: 3n * GiB + 0x800n }]), { code: 'ERR_INVALID_ARG_VALUE' });
  t.is(gap.message, 'end must be page aligned');
  t.regex(gap.detail, /^gaps\[1\]\.end 0xc0000800 is not a multiple of the 4 KiB page size/);
  const manager = await new GuestMemoryBuilder().build(MemoryLayout.new(GiB, [range(3n * GiB, 4n * GiB)]));
  const visibility = await t.throwsAsync(async () => manager.ramVisibilityControl().setRamVisibility({ start: 0xa0001, end: 0xc0000 }, RamVisibility.Unmapped), { code: 'ERR_INVALID_ARG_VALUE' });
  t.regex(visibility.detail, /^range\.start 0xa0001 is not a multiple of the 4 KiB page size/);
  await manager.close();
});

test('a VTL0 alias map that does not fit names the offset, where the address space ends and an offset that fits', async (t) => {
  const layout = MemoryLayout.new(GiB, [range(3n * GiB, 4n * GiB)]);
  const error = await t.throwsAsync(new GuestMemoryBuilder().vtl0AliasMap(0x1000).build(layout), { instanceOf: mb.MemoryBuildError, code: 'ERR_ALIAS_MAP_WONT_FIT' });
  t.is(error.message, 'not enough guest address space available for the vtl0 alias map');
  t.regex(error.detail, /^the VTL0 alias offset 0x1000 lies inside the guest address space, which ends at 0x100000000 .*such as 0x100000000$/);
  const manager = await new GuestMemoryBuilder().vtl0AliasMap(0x100000000n).build(layout);
  t.is((await manager.inspect()).aliasOffset, 0x100000000n);
  await manager.close();
});
