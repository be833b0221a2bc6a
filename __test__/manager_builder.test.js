// GuestMemoryBuilder through the JavaScript API: the build order and its errors, the x86 split,
// dense file offsets, VTL2 RAM, backing reuse, private memory, and the extensions of the build
// (InvalidLayout, ExistingBackingTooSmall, alias alignment and overflow, RamTooLarge, VaMapper,
// AllocationFailed), with classes, codes and exact messages.
'use strict';
const test = require('ava');
const fs = require('node:fs');
const { spawnSync } = require('node:child_process');
const { mb, MMIO, L1, L2, L3, X86_BOUNDS, build, map, prefetch, thrown, pattern, fixture } = require('./fixtures/manager/common');

const { GuestMemoryBuilder, MemoryLayout, MemoryBuildError, Mappable, SharedMemoryBacking, RecordingPartition, Vtl, range, RamVisibility } = mb;

const MESSAGES = {
  ERR_PRIVATE_MEMORY_WITH_LEGACY: 'private memory is incompatible with x86 legacy support',
  ERR_PRIVATE_MEMORY_WITH_EXISTING_BACKING: 'private memory is incompatible with existing memory backing',
  ERR_THP_WITHOUT_PRIVATE_MEMORY: 'transparent huge pages requires private memory mode',
  ERR_ALIAS_MAP_WONT_FIT: 'not enough guest address space available for the vtl0 alias map',
  ERR_INVALID_RAM_FOR_X86: 'x86 support requires RAM to start at 0 and contain at least 1MB',
  ERR_VA_MAPPER: 'failed to create VA mapper',
  ERR_ALLOCATION_FAILED: 'failed to allocate memory',
};

/** Asserts a MemoryBuildError with `code` and, where the original has one, its exact message. */
async function buildFails(t, pending, code) {
  const error = await t.throwsAsync(pending, { instanceOf: MemoryBuildError });
  t.is(error.code, code);
  t.true(error instanceof mb.MembackingError);
  if (MESSAGES[code]) t.is(error.message, MESSAGES[code]);
  return error;
}

/** A backing of `size` bytes not owned by any manager. */
const looseBacking = (size) => SharedMemoryBacking.fromMappable(Mappable.allocSharedMemory(size, 'loose'));

// ----- the build order -----

test('private + x86 legacy + THP + an alias that cannot fit fails PrivateMemoryWithLegacy first', async (t) => {
  const b = new GuestMemoryBuilder().privateMemory(true).x86LegacySupport(true).transparentHugepages(true).vtl0AliasMap(0x1000);
  await buildFails(t, b.build(L1()), 'ERR_PRIVATE_MEMORY_WITH_LEGACY');
});

test('private + an existing backing fails PrivateMemoryWithExistingBacking', async (t) => {
  const b = new GuestMemoryBuilder().privateMemory(true).existingBacking(looseBacking(0x4000_0000)).transparentHugepages(false);
  await buildFails(t, b.build(L1()), 'ERR_PRIVATE_MEMORY_WITH_EXISTING_BACKING');
});

test('THP without private memory fails ThpWithoutPrivateMemory even when the alias would not fit', async (t) => {
  const b = new GuestMemoryBuilder().transparentHugepages(true).vtl0AliasMap(0x1000);
  await buildFails(t, b.build(L1()), 'ERR_THP_WITHOUT_PRIVATE_MEMORY');
  // THP is checked before the backing (a too-short backing, a too-large RAM).
  await buildFails(t, new GuestMemoryBuilder().transparentHugepages(true).existingBacking(looseBacking(4096)).build(L1()), 'ERR_THP_WITHOUT_PRIVATE_MEMORY');
  await buildFails(t, new GuestMemoryBuilder().transparentHugepages(true).build(MemoryLayout.new(1n << 63n, [MMIO])), 'ERR_THP_WITHOUT_PRIVATE_MEMORY');
});

test('private + THP builds on Linux, with working RAM', async (t) => {
  const manager = await new GuestMemoryBuilder().privateMemory(true).transparentHugepages(true).build(L1());
  const memory = await manager.client().guestMemory();
  memory.writeU64(0x20_0000, 0x0123_4567_89ab_cdefn);
  t.is(memory.readU64(0x20_0000), 0x0123_4567_89ab_cdefn);
  t.is(manager.sharedMemoryBacking(), null);
  await manager.close();
});

test('alias boundary: 0xFFFF_F000 does not fit an L1 guest, 0x1_0000_0000 does', async (t) => {
  await buildFails(t, build(L1(), { alias: 0xffff_f000 }), 'ERR_ALIAS_MAP_WONT_FIT');
  const manager = await build(L1(), { alias: 0x1_0000_0000n });
  t.is((await manager.inspect()).aliasOffset, 0x1_0000_0000n);
  await manager.close();
});

test('the alias check precedes the x86 check', async (t) => {
  const fromMiB = () => MemoryLayout.fromRanges([{ range: range(0x10_0000, 0x4000_0000) }], [MMIO]);
  await buildFails(t, build(fromMiB(), { x86: true, alias: 0x1000 }), 'ERR_ALIAS_MAP_WONT_FIT');
  await buildFails(t, build(fromMiB(), { x86: true }), 'ERR_INVALID_RAM_FOR_X86');
});

test('x86 support needs at least 1 MiB of RAM from 0', async (t) => {
  await buildFails(t, build(MemoryLayout.new(0x8_0000, [MMIO]), { x86: true }), 'ERR_INVALID_RAM_FOR_X86');
  // The same layout without x86 support builds.
  const manager = await build(MemoryLayout.new(0x8_0000, [MMIO]));
  t.deepEqual((await manager.inspect()).regions.map((r) => r.range.toString()), ['0x0-0x80000']);
  await manager.close();
});

test('extensions: no MMIO gap is InvalidLayout; a short existing backing is ExistingBackingTooSmall', async (t) => {
  const noGap = await buildFails(t, build(MemoryLayout.new(0x4000_0000, [])), 'ERR_INVALID_LAYOUT');
  t.regex(noGap.message, /MMIO/);
  const short = await buildFails(t, build(L1(), { backing: looseBacking(0x3fff_f000) }), 'ERR_EXISTING_BACKING_TOO_SMALL');
  t.regex(short.message, /0x3ffff000/);
  t.regex(short.message, /0x40000000/);
  // VTL2 RAM counts: an L1-sized backing is too short for L3.
  await buildFails(t, build(L3(), { backing: looseBacking(0x4000_0000) }), 'ERR_EXISTING_BACKING_TOO_SMALL');
  // A longer backing is fine.
  const manager = await build(L1(), { backing: looseBacking(0x8000_0000) });
  await manager.close();
});

test('extensions: an existing backing whose descriptor is not open read-write is ExistingBackingNotWritable', async (t) => {
  const memfd = Mappable.allocSharedMemory(0x4000_0000, 'access-mode');
  t.teardown(() => memfd.close());
  /** A Mappable of the memfd through a new descriptor opened with `flags` (fromFd duplicates it; no O_TRUNC). */
  const reopened = (flags) => {
    const fd = fs.openSync(`/proc/self/fd/${memfd.fd}`, flags);
    try {
      return Mappable.fromFd(fd);
    } finally {
      fs.closeSync(fd);
    }
  };
  for (const flags of [fs.constants.O_RDONLY, fs.constants.O_WRONLY]) {
    const view = reopened(flags);
    const error = await buildFails(t, build(L1(), { backing: SharedMemoryBacking.fromMappable(view) }), 'ERR_EXISTING_BACKING_NOT_WRITABLE');
    t.regex(error.message, /O_RDWR/);
    view.close();
  }
  // The same object through a read-write descriptor builds (it was accepted before too, but every
  // access of a manager built on a read-only one failed as an unmapped hole).
  const manager = await build(L1(), { backing: SharedMemoryBacking.fromMappable(reopened(fs.constants.O_RDWR)) });
  const memory = await manager.client().guestMemory();
  memory.writeU32(0x1000, 7);
  t.is(memory.readU32(0x1000), 7);
  await manager.close();
});

test('extensions: an unaligned or overflowing alias offset is AliasMapWontFit; the short backing is checked first', async (t) => {
  await buildFails(t, build(L1(), { alias: 0x1_0000_0800n }), 'ERR_ALIAS_MAP_WONT_FIT');
  await buildFails(t, build(L1(), { alias: 0xffff_ffff_ffff_f000n }), 'ERR_ALIAS_MAP_WONT_FIT');
  // The backing is checked before the alias, and the alias before x86 support.
  await buildFails(t, build(L1(), { alias: 0x1000, backing: looseBacking(4096) }), 'ERR_EXISTING_BACKING_TOO_SMALL');
  await buildFails(t, build(MemoryLayout.new(0x8_0000, [MMIO]), { x86: true, alias: 0x1000 }), 'ERR_ALIAS_MAP_WONT_FIT');
  // InvalidLayout comes before the alias check; both are checks of the guest address space.
  await buildFails(t, build(MemoryLayout.new(0x4000_0000, []), { alias: 0x1000 }), 'ERR_INVALID_LAYOUT');
});

test('RamTooLarge names the decimal size and precedes the alias check', async (t) => {
  const huge = MemoryLayout.new(1n << 63n, [MMIO]);
  const error = await buildFails(t, build(huge), 'ERR_RAM_TOO_LARGE');
  t.is(error.message, `ram size ${1n << 63n} is too large`);
  await buildFails(t, build(MemoryLayout.new(1n << 63n, [MMIO]), { alias: 0x1000 }), 'ERR_RAM_TOO_LARGE');
});

test('a guest address space larger than the host VA space fails VaMapper(Reserve(ENOMEM))', async (t) => {
  const error = await buildFails(t, build(MemoryLayout.new(1n << 50n, [MMIO])), 'ERR_VA_MAPPER');
  t.true(error.cause instanceof mb.VaMapperError);
  t.is(error.cause.code, 'ERR_RESERVE');
  t.is(error.cause.message, 'failed to reserve address space');
  t.true(error.cause.cause instanceof mb.OsError);
  t.is(error.cause.cause.code, 'ENOMEM');
  t.is(error.cause.cause.errno, 12);
});

test('a RAM object the OS refuses fails AllocationFailed with the OS error as cause (child with ulimit -f)', (t) => {
  const child = spawnSync('sh', ['-c', `ulimit -f 1024; exec "${process.execPath}" "${fixture('build_child.js')}" allocation`], { encoding: 'utf8', timeout: 60_000 });
  t.is(child.status, 0, child.stderr);
  const result = JSON.parse(child.stdout.trim().split('\n').pop());
  t.deepEqual(result, {
    name: 'MemoryBuildError',
    code: 'ERR_ALLOCATION_FAILED',
    message: MESSAGES.ERR_ALLOCATION_FAILED,
    cause: { name: 'OsError', code: 'EFBIG', errno: 27 },
  });
});

test('the builder is consumed by build: a second build or a setter throws ERR_CLOSED, even after a failure', async (t) => {
  const b = new GuestMemoryBuilder();
  const manager = await b.build(L1());
  const again = await t.throwsAsync(b.build(L1()));
  t.is(again.code, 'ERR_CLOSED');
  t.true(again instanceof mb.MembackingError);
  for (const setter of [() => b.x86LegacySupport(true), () => b.privateMemory(false), () => b.prefetchRam(true), () => b.pinMappings(true), () => b.transparentHugepages(false), () => b.vtl0AliasMap(null), () => b.existingBacking(null)]) {
    t.throws(setter, { instanceOf: mb.MembackingError, code: 'ERR_CLOSED', message: /GuestMemoryBuilder/ });
  }
  await manager.close();
  const failing = new GuestMemoryBuilder().transparentHugepages(true);
  await buildFails(t, failing.build(L1()), 'ERR_THP_WITHOUT_PRIVATE_MEMORY');
  const spent = await t.throwsAsync(failing.build(L1()));
  t.is(spent.code, 'ERR_CLOSED');
  // The user never called close(): the detail says what consumed the builder and what to do.
  t.regex(spent.detail, /^build\(\) consumed this builder, also when the build failed .*make a new GuestMemoryBuilder/);
  t.is(t.throws(() => failing.transparentHugepages(false)).detail, spent.detail);
});

test('setters are chainable and the last call wins', async (t) => {
  const b = new GuestMemoryBuilder();
  t.is(b.privateMemory(true), b);
  t.is(b.existingBacking(null), b);
  t.is(b.vtl0AliasMap(null), b);
  t.is(b.pinMappings(false), b);
  t.is(b.prefetchRam(false), b);
  t.is(b.transparentHugepages(false), b);
  // private then not private: builds file-backed; alias set then cleared; x86 on then off.
  b.privateMemory(false).vtl0AliasMap(0x1000).vtl0AliasMap(null).x86LegacySupport(true).x86LegacySupport(false).pinMappings(true);
  const manager = await b.build(L1());
  const snapshot = await manager.inspect();
  t.is(snapshot.aliasOffset, null);
  t.true(snapshot.pinMappings);
  t.is(snapshot.regions.length, 1);
  t.not(manager.sharedMemoryBacking(), null);
  await manager.close();
});

// ----- RAM regions, backing, content -----

test('the x86 split of L1 gives 16 RAM regions whose file offsets equal their GPAs', async (t) => {
  const manager = await build(L1(), { x86: true });
  const { regions, mappings } = await manager.inspect();
  const bounds = [...X86_BOUNDS, 0x4000_0000n];
  t.is(regions.length, 16);
  regions.forEach((region, i) => {
    t.is(region.id, i + 1);
    t.is(region.name, 'ram');
    t.is(region.range.start, bounds[i]);
    t.is(region.range.end, bounds[i + 1]);
    t.is(region.priority, 255);
    t.true(region.dmaTarget);
    t.true(region.active);
    t.deepEqual(region.mapParams, { writable: true, executable: true, prefetch: false });
    t.is(region.mappings.length, 1);
    t.is(region.mappings[0].rangeInRegion.start, 0n);
    t.is(region.mappings[0].rangeInRegion.end, region.range.len);
    t.is(region.mappings[0].fileOffset, region.range.start);
    t.true(region.mappings[0].writable);
  });
  t.deepEqual(
    regions.map((r) => r.range.toString()),
    ['0x0-0xa0000', '0xa0000-0xc0000', '0xc0000-0xc4000', '0xc4000-0xc8000', '0xc8000-0xcc000', '0xcc000-0xd0000', '0xd0000-0xd4000', '0xd4000-0xd8000', '0xd8000-0xdc000', '0xdc000-0xe0000', '0xe0000-0xe4000', '0xe4000-0xe8000', '0xe8000-0xec000', '0xec000-0xf0000', '0xf0000-0x100000', '0x100000-0x40000000'],
  );
  // The mapping manager holds the same 16 mappings, none yet touched by a mapper.
  t.is(mappings.length, 16);
  t.true(mappings.every((m) => m.fileOffset === m.range.start && m.dmaTarget && m.writable));
  await manager.close();
});

// Deviation D1 (docs/deviations.md).
test('a first RAM range ending exactly at 1 MiB gives 15 regions and attaching completes', async (t) => {
  const manager = await build(MemoryLayout.new(0x10_0000, [MMIO]), { x86: true });
  const { regions } = await manager.inspect();
  t.is(regions.length, 15);
  t.is(regions[14].range.toString(), '0xf0000-0x100000');
  t.false(regions.some((r) => r.range.isEmpty));
  const partition = new RecordingPartition();
  await manager.attachPartition(Vtl.Vtl0, partition);
  t.deepEqual(partition.log(), regions.map((r) => map(r.range.start, r.range.len)));
  await manager.close();
});

test('dense file offsets: L2 RAM above the gap follows the RAM below it in the backing object', async (t) => {
  const manager = await build(L2());
  const { mappings } = await manager.inspect();
  t.deepEqual(
    mappings.map((m) => [m.range.start, m.range.end, m.fileOffset]),
    [
      [0n, 0xc000_0000n, 0n],
      [0x1_0000_0000n, 0x1_4000_0000n, 0xc000_0000n],
    ],
  );
  const memory = await manager.client().guestMemory();
  memory.writeAt(0x1_0000_0000n, Buffer.from('DEADBEEF', 'hex'));
  const backing = manager.sharedMemoryBacking().mappable();
  const seen = Buffer.alloc(4);
  fs.readSync(backing.fd, seen, 0, 4, 0xc000_0000);
  t.is(seen.toString('hex'), 'deadbeef');
  // And the other way: a write to the object shows at the GPA.
  fs.writeSync(backing.fd, Buffer.from('cafef00d', 'hex'), 0, 4, 0xc000_0004);
  t.is(memory.read(0x1_0000_0004n, 4).toString('hex'), 'cafef00d');
  backing.close();
  await manager.close();
});

test('VTL2 RAM: backing of 0x4400_0000 bytes, VTL2 region last at file offset 0x4000_0000, controllable', async (t) => {
  const manager = await build(L3());
  const backing = manager.sharedMemoryBacking().mappable();
  t.is(fs.fstatSync(backing.fd).size, 0x4400_0000);
  backing.close();
  const { regions } = await manager.inspect();
  const last = regions[regions.length - 1];
  t.is(last.range.toString(), '0x200000000-0x204000000');
  t.is(last.mappings[0].fileOffset, 0x4000_0000n);
  const partition = new RecordingPartition();
  await manager.attachPartition(Vtl.Vtl0, partition);
  partition.clearLog();
  await manager.ramVisibilityControl().setRamVisibility(range(0x2_0000_0000n, 0x2_0400_0000n), RamVisibility.Unmapped);
  t.deepEqual(partition.log(), [{ op: 'unmap', gpa: 0x2_0000_0000n, size: 0x400_0000n, failed: false }]);
  await manager.close();
});

test('backing reuse: a second manager over the first one\'s backing sees its writes, both ways', async (t) => {
  const a = await build(L1());
  const memoryA = await a.client().guestMemory();
  const data = pattern(0x31, 64);
  memoryA.writeAt(0x2000, data);
  const b = await build(L1(), { backing: a.sharedMemoryBacking() });
  const memoryB = await b.client().guestMemory();
  t.deepEqual(memoryB.read(0x2000, 64), data);
  memoryB.writeU32(0x3000, 0x5eed_1234);
  t.is(memoryA.readU32(0x3000), 0x5eed_1234);
  // Separate managers have separate mappers and VA windows.
  t.is((await a.inspect()).mapperCount, 1);
  t.is((await b.inspect()).mapperCount, 1);
  await b.close();
  // A's memory is intact after B is gone.
  t.deepEqual(memoryA.read(0x2000, 64), data);
  await a.close();
});

test('private backing: no shared backing, no sharing, zeroed RAM, round trips, empty mapping set', async (t) => {
  const manager = await build(L1(), { private: true });
  t.is(manager.sharedMemoryBacking(), null);
  const memory = await manager.client().guestMemory();
  t.is(memory.sharing(), null);
  t.deepEqual(memory.read(0x1234_5000, 32), Buffer.alloc(32));
  memory.writeAt(0x1234_5000, Buffer.from('private ram'));
  t.is(memory.read(0x1234_5000, 11).toString(), 'private ram');
  const snapshot = await manager.inspect();
  t.deepEqual(snapshot.mappings, []);
  t.is(snapshot.regions.length, 1);
  t.deepEqual(snapshot.regions[0].mappings, []);
  t.true(snapshot.regions[0].active);
  await manager.close();
});

test('private memory ignores prefetch: no prefetch calls, RAM params prefetch false', async (t) => {
  const manager = await build(L1(), { private: true, prefetch: true });
  const partition = new RecordingPartition();
  await manager.attachPartition(Vtl.Vtl0, partition);
  t.deepEqual(partition.log(), [map(0, 0x4000_0000)]);
  t.deepEqual((await manager.inspect()).regions[0].mapParams, { writable: true, executable: true, prefetch: false });
  // File-backed, the same options do prefetch (the contrast that makes this check meaningful).
  const fileBacked = await build(L1(), { prefetch: true });
  const other = new RecordingPartition();
  await fileBacked.attachPartition(Vtl.Vtl0, other);
  t.deepEqual(other.log(), [map(0, 0x4000_0000), prefetch(0, 0x4000_0000)]);
  await fileBacked.close();
  await manager.close();
});
