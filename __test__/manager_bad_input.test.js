// Bad input on every entry point of the memory-manager API: wrong JavaScript
// types and numbers that are not safe non-negative integers → TypeError ERR_INVALID_ARG_TYPE;
// bigints outside 0..2^64-1, unaligned or reversed ranges and unknown enum values → RangeError
// ERR_INVALID_ARG_VALUE; invalid windows → RangeError ERR_INVALID_INPUT; closed objects →
// ERR_CLOSED. None of them may change a manager.
'use strict';
const test = require('ava');
const { mb, L1, VGA, build, attached, thrown } = require('./fixtures/manager/common');

const {
  GuestMemoryBuilder, GuestMemoryManager, GuestMemoryClient, SharedMemoryBacking, RamVisibilityControl, DeviceMemoryMapper,
  DeviceMemoryRegion, DeviceMemoryControl, RecordingPartition, Mappable, Vtl, RamVisibility, range,
} = mb;

const U64_OVER = 1n << 64n;
/** Number-or-bigint inputs that are the wrong type (TypeError). */
const BAD_TYPES = [-1, 1.5, 2 ** 53, Number.NaN, Infinity, -0.5, '4096', null, undefined, {}, [4096], true];
/** Well-typed but out-of-range u64 values (RangeError). */
const BAD_VALUES = [-1n, U64_OVER, U64_OVER + 4096n];

function isTypeError(t, error, what) {
  t.true(error instanceof TypeError, `${what}: ${error?.constructor?.name} ${error?.message}`);
  t.is(error?.code, 'ERR_INVALID_ARG_TYPE', `${what}: ${error?.message}`);
}
function isRangeError(t, error, what, code = 'ERR_INVALID_ARG_VALUE') {
  t.true(error instanceof RangeError, `${what}: ${error?.constructor?.name} ${error?.message}`);
  t.is(error?.code, code, `${what}: ${error?.message}`);
}
function isClosed(t, error, what) {
  t.true(error instanceof mb.MembackingError, `${what}: ${error?.constructor?.name} ${error?.message}`);
  t.is(error?.code, 'ERR_CLOSED', `${what}: ${error?.message}`);
}
/** What `f` throws or rejects with. */
async function failure(t, f) {
  try {
    await f();
  } catch (error) {
    return error;
  }
  t.fail(`expected ${f} to fail`);
  return undefined;
}

test('GuestMemoryBuilder setters reject wrong types and out-of-range values', async (t) => {
  const b = new GuestMemoryBuilder();
  for (const value of ['backing', 1, {}, undefined, Mappable.allocSharedMemory(0x1000, 'not-a-backing')]) {
    isTypeError(t, thrown(t, () => b.existingBacking(value)), `existingBacking(${String(value)})`);
  }
  for (const value of BAD_TYPES.filter((v) => v !== null)) isTypeError(t, thrown(t, () => b.vtl0AliasMap(value)), `vtl0AliasMap(${String(value)})`);
  for (const value of BAD_VALUES) isRangeError(t, thrown(t, () => b.vtl0AliasMap(value)), `vtl0AliasMap(${value})`);
  for (const setter of ['prefetchRam', 'pinMappings', 'x86LegacySupport', 'privateMemory', 'transparentHugepages']) {
    for (const value of [1, 0, 'true', null, undefined, {}]) isTypeError(t, thrown(t, () => b[setter](value)), `${setter}(${String(value)})`);
  }
  // The failed setters changed nothing: the builder still builds with all options off.
  const manager = await b.build(L1());
  const snapshot = await manager.inspect();
  t.is(snapshot.aliasOffset, null);
  t.false(snapshot.pinMappings);
  t.is(snapshot.regions.length, 1);
  await manager.close();
});

test('GuestMemoryBuilder.build rejects a non-layout without consuming the builder', async (t) => {
  const b = new GuestMemoryBuilder();
  for (const value of [undefined, null, {}, 'L1', range(0, 0x1000), { ram: [] }]) {
    isTypeError(t, await failure(t, () => b.build(value)), `build(${String(value)})`);
  }
  const manager = await b.build(L1());
  await manager.close();
});

test('the largest u64 alias offset is accepted by the setter and refused by build as AliasMapWontFit', async (t) => {
  const error = await failure(t, () => new GuestMemoryBuilder().vtl0AliasMap(U64_OVER - 1n).build(L1()));
  t.true(error instanceof mb.MemoryBuildError);
  t.is(error.code, 'ERR_ALIAS_MAP_WONT_FIT');
});

test('classes are not constructible directly', (t) => {
  for (const Class of [GuestMemoryManager, GuestMemoryClient, SharedMemoryBacking, RamVisibilityControl, DeviceMemoryMapper, DeviceMemoryRegion, DeviceMemoryControl]) {
    isTypeError(t, thrown(t, () => new Class()), Class.name);
    isTypeError(t, thrown(t, () => new Class(Symbol('membacking-internal'), {})), `${Class.name} with a forged key`);
  }
});

test('attachPartition rejects bad VTLs, partitions and options, and attaches nothing', async (t) => {
  const manager = await build(L1());
  const partition = new RecordingPartition();
  for (const vtl of ['Vtl0', '0', null, undefined, {}, 0n]) isTypeError(t, await failure(t, () => manager.attachPartition(vtl, partition)), `vtl ${String(vtl)}`);
  for (const vtl of [3, -1, 1.5, Number.NaN]) isRangeError(t, await failure(t, () => manager.attachPartition(vtl, partition)), `vtl ${vtl}`);
  for (const p of [null, undefined, {}, 'partition', manager, Object.create(RecordingPartition.prototype)]) {
    isTypeError(t, await failure(t, () => manager.attachPartition(Vtl.Vtl0, p)), `partition ${String(p)}`);
  }
  isTypeError(t, await failure(t, () => manager.attachPartition(Vtl.Vtl0, partition, null)), 'options null');
  for (const remote of [-1, 1.5, '1', 2 ** 32, 1n]) {
    isTypeError(t, await failure(t, () => manager.attachPartition(Vtl.Vtl0, partition, { remoteProcess: remote })), `remoteProcess ${String(remote)}`);
  }
  t.deepEqual(partition.log(), []);
  t.deepEqual((await manager.inspect()).partitions, []);
  await manager.close();
});

/** Range inputs that are the wrong type, and well-typed invalid ones. */
const BAD_RANGE_TYPES = [null, undefined, 'a-b', 4096, [0, 4096], { start: 0 }, { start: -4096, end: 4096 }, { start: 0, end: 1.5 }, { start: 0, end: '4096' }];
const BAD_RANGE_VALUES = [{ start: 1, end: 4096 }, { start: 0, end: 4095 }, { start: 0x2000, end: 0x1000 }, { start: 0n, end: U64_OVER }, { start: -1n, end: 0n }];

test('setRamVisibility rejects bad ranges and visibilities, and changes nothing', async (t) => {
  const { manager, partition } = await attached(L1(), { x86: true });
  const control = manager.ramVisibilityControl();
  for (const r of BAD_RANGE_TYPES) isTypeError(t, await failure(t, () => control.setRamVisibility(r, RamVisibility.Unmapped)), `range ${JSON.stringify(r)}`);
  for (const r of BAD_RANGE_VALUES) isRangeError(t, await failure(t, () => control.setRamVisibility(r, RamVisibility.Unmapped)), `range ${String(r.start)}-${String(r.end)}`);
  for (const v of [0, null, undefined, {}, true]) isTypeError(t, await failure(t, () => control.setRamVisibility(VGA, v)), `visibility ${String(v)}`);
  for (const v of ['unmapped', 'Hidden', '', 'readWrite']) isRangeError(t, await failure(t, () => control.setRamVisibility(VGA, v)), `visibility ${v}`);
  // The messages list what is accepted and name the value given (a name for the numeric Vtl, a number for the string enum).
  t.is((await failure(t, () => control.setRamVisibility(VGA, 1))).message, "visibility must be a RamVisibility ('Unmapped', 'ReadOnly', 'ReadWrite'), got type number (1)");
  t.is((await failure(t, () => control.setRamVisibility(VGA, 'readonly'))).message, "visibility must be a RamVisibility ('Unmapped', 'ReadOnly', 'ReadWrite'), got 'readonly'");
  t.is((await failure(t, () => manager.attachPartition('Vtl0', partition))).message, "vtl must be a Vtl (Vtl.Vtl0 = 0, Vtl.Vtl1 = 1, Vtl.Vtl2 = 2), got type string ('Vtl0')");
  t.deepEqual(partition.log(), []);
  t.true((await manager.inspect()).regions.every((r) => r.active));
  await manager.close();
});

test('decommitRam rejects bad ranges; ranges outside RAM are manager errors', async (t) => {
  const manager = await build(L1());
  for (const r of BAD_RANGE_TYPES) isTypeError(t, await failure(t, () => manager.decommitRam(r)), `range ${JSON.stringify(r)}`);
  for (const r of BAD_RANGE_VALUES) isRangeError(t, await failure(t, () => manager.decommitRam(r)), `range ${String(r.start)}-${String(r.end)}`);
  for (const r of [range(0xc000_0000, 0xc000_1000), range(0x3fff_f000, 0x4000_1000)]) {
    const error = await failure(t, () => manager.decommitRam(r));
    t.true(error instanceof mb.MembackingError, `${r}: ${error.constructor.name}`);
    t.regex(error.code, /^ERR_/);
  }
  await manager.close();
});

test('DeviceMemoryMapper.newRegion rejects bad lengths and names', async (t) => {
  const manager = await build(L1());
  const mapper = manager.deviceMemoryMapper();
  for (const len of BAD_TYPES) isTypeError(t, thrown(t, () => mapper.newRegion(len, 'dev')), `len ${String(len)}`);
  for (const len of BAD_VALUES) isRangeError(t, thrown(t, () => mapper.newRegion(len, 'dev')), `len ${len}`);
  for (const name of [undefined, null, 5, {}, Symbol('s')]) isTypeError(t, thrown(t, () => mapper.newRegion(0x1000, name)), `name ${String(name)}`);
  // An unaligned or zero length cannot be placed: mapToGuest reports ERR_INVALID_INPUT.
  for (const len of [0x800, 0]) {
    let halves;
    try {
      halves = mapper.newRegion(len, 'odd');
    } catch (error) {
      isRangeError(t, error, `newRegion(${len})`, error.code);
      continue;
    }
    const error = await failure(t, () => halves.control.mapToGuest(0xd000_0000, true));
    t.true(error instanceof RangeError || error instanceof mb.MemoryManagerError, `${len}: ${error.constructor.name} ${error.code}`);
  }
  t.deepEqual((await manager.inspect()).regions.filter((r) => r.priority === 0), []);
  await manager.close();
});

test('DeviceMemoryRegion.map/unmap and DeviceMemoryControl.mapToGuest reject bad arguments', async (t) => {
  const { manager, partition } = await attached(L1());
  const { control, region } = manager.deviceMemoryMapper().newRegion(0x4000, 'dev');
  const object = Mappable.allocSharedMemory(0x4000, 'obj');
  const u64Args = [
    ['offset', (v) => region.map(v, object, 0, 0x1000, true)],
    ['fileOffset', (v) => region.map(0, object, v, 0x1000, true)],
    ['len', (v) => region.map(0, object, 0, v, true)],
    ['unmap offset', (v) => region.unmap(v, 0x1000)],
    ['unmap len', (v) => region.unmap(0, v)],
    ['gpa', (v) => control.mapToGuest(v, true)],
  ];
  for (const [name, f] of u64Args) {
    for (const v of BAD_TYPES) isTypeError(t, await failure(t, () => f(v)), `${name} ${String(v)}`);
    for (const v of BAD_VALUES) isRangeError(t, await failure(t, () => f(v)), `${name} ${v}`);
  }
  for (const o of [null, undefined, {}, 3, region]) isTypeError(t, await failure(t, () => region.map(0, o, 0, 0x1000, true)), `object ${String(o)}`);
  for (const w of [1, 'true', null, undefined]) {
    isTypeError(t, await failure(t, () => region.map(0, object, 0, 0x1000, w)), `writable ${String(w)}`);
    isTypeError(t, await failure(t, () => control.mapToGuest(0xd000_0000, w)), `mapToGuest writable ${String(w)}`);
  }
  // Well-typed but invalid windows: ERR_INVALID_INPUT (RangeError).
  for (const [name, f] of [
    ['offset + len wraps', () => region.map(U64_OVER - 0x1000n, object, 0, 0x2000, true)],
    ['unaligned offset', () => region.map(0x10, object, 0, 0x1000, true)],
    ['beyond the window', () => region.map(0x4000, object, 0, 0x1000, true)],
    ['gpa + len wraps', () => control.mapToGuest(U64_OVER - 0x1000n, true)],
    ['unaligned gpa', () => control.mapToGuest(0xd000_0010, true)],
  ]) {
    isRangeError(t, await failure(t, f), name, 'ERR_INVALID_INPUT');
  }
  // A mapping past the end of its object is refused (an extension of the original).
  const small = Mappable.allocSharedMemory(0x1000, 'small');
  const beyond = await failure(t, () => region.map(0, small, 0x1000, 0x1000, true));
  t.true(beyond instanceof mb.MembackingError || beyond instanceof RangeError, beyond.constructor.name);
  t.regex(beyond.code, /^ERR_/);
  // A closed object.
  const closedObject = Mappable.allocSharedMemory(0x1000, 'closed');
  closedObject.close();
  isClosed(t, await failure(t, () => region.map(0, closedObject, 0, 0x1000, true)), 'closed object');
  // Nothing was recorded or placed.
  t.deepEqual(partition.log(), []);
  await control.mapToGuest(0xd000_0000, true);
  const [device] = (await manager.inspect()).regions.filter((r) => r.priority === 0);
  t.deepEqual(device.mappings, []);
  object.close();
  small.close();
  await manager.close();
});

test('SharedMemoryBacking.fromMappable and GuestMemoryClient.fromHandle reject bad input', async (t) => {
  for (const m of [null, undefined, {}, 3, 'fd']) isTypeError(t, thrown(t, () => SharedMemoryBacking.fromMappable(m)), `fromMappable(${String(m)})`);
  const closedObject = Mappable.allocSharedMemory(0x1000, 'closed');
  closedObject.close();
  isClosed(t, thrown(t, () => SharedMemoryBacking.fromMappable(closedObject)), 'fromMappable(closed)');
  for (const h of [null, undefined, 5, 'handle', { kind: 'GuestMemory', id: 1n }, { kind: 'GuestMemoryClient' }, { kind: 'GuestMemoryClient', id: -1 }, { kind: 'GuestMemoryClient', id: 1.5 }]) {
    isTypeError(t, thrown(t, () => GuestMemoryClient.fromHandle(h)), `fromHandle(${JSON.stringify(h, (k, v) => (typeof v === 'bigint' ? String(v) : v))})`);
  }
  isRangeError(t, thrown(t, () => GuestMemoryClient.fromHandle({ kind: 'GuestMemoryClient', id: U64_OVER })), 'fromHandle(2^64)');
  isRangeError(t, thrown(t, () => GuestMemoryClient.fromHandle({ kind: 'GuestMemoryClient', id: 0xffff_ffffn })), 'fromHandle(unknown id)');
  // A handle of another kind of object is refused too.
  const manager = await build(L1());
  const memory = await manager.client().guestMemory();
  const memoryHandle = memory.toHandle();
  isRangeError(t, thrown(t, () => GuestMemoryClient.fromHandle({ kind: 'GuestMemoryClient', id: memoryHandle.id })), 'fromHandle(a GuestMemory id)');
  memory.close();
  await manager.close();
});

test('closed objects throw ERR_CLOSED; closing twice is harmless', async (t) => {
  const manager = await build(L1(), { x86: true });
  const control = manager.ramVisibilityControl();
  control.close();
  control.close();
  isClosed(t, await failure(t, () => control.setRamVisibility(VGA, RamVisibility.Unmapped)), 'RamVisibilityControl');
  control[Symbol.dispose]();

  const mapper = manager.deviceMemoryMapper();
  mapper.close();
  isClosed(t, thrown(t, () => mapper.newRegion(0x1000, 'x')), 'DeviceMemoryMapper');
  mapper[Symbol.dispose]();

  const client = manager.client();
  client.close();
  isClosed(t, await failure(t, () => client.guestMemory()), 'GuestMemoryClient.guestMemory');
  isClosed(t, thrown(t, () => client.toHandle()), 'GuestMemoryClient.toHandle');
  client[Symbol.dispose]();

  const backing = manager.sharedMemoryBacking();
  backing.close();
  isClosed(t, thrown(t, () => backing.mappable()), 'SharedMemoryBacking.mappable');
  isClosed(t, await failure(t, () => new GuestMemoryBuilder().existingBacking(backing).build(L1())), 'existingBacking(closed)');
  backing[Symbol.dispose]();

  const { control: window, region } = manager.deviceMemoryMapper().newRegion(0x1000, 'dev');
  await window.close();
  await window.close();
  isClosed(t, await failure(t, () => window.mapToGuest(0xd000_0000, true)), 'DeviceMemoryControl.mapToGuest');
  isClosed(t, await failure(t, () => window.unmapFromGuest()), 'DeviceMemoryControl.unmapFromGuest');
  isClosed(t, thrown(t, () => window.len), 'DeviceMemoryControl.len');
  t.is(region.len, 0x1000n, 'the other half is still open');
  await region[Symbol.asyncDispose]();
  isClosed(t, await failure(t, () => region.map(0, Mappable.allocSharedMemory(0x1000, 'x'), 0, 0x1000, true)), 'DeviceMemoryRegion.map');
  isClosed(t, await failure(t, () => region.unmap(0, 0x1000)), 'DeviceMemoryRegion.unmap');

  // None of it affected the manager: a fresh control still works.
  await manager.ramVisibilityControl().setRamVisibility(VGA, RamVisibility.Unmapped);
  t.false((await manager.inspect()).regions.find((r) => r.range.equals(VGA)).active);
  await manager.close();
});

test('RecordingPartition.failOn rejects unknown ops and bad GPAs', (t) => {
  const partition = new RecordingPartition();
  for (const op of ['unmap', 'MAP', '']) isRangeError(t, thrown(t, () => partition.failOn(op, 0)), `op ${String(op)}`);
  for (const op of [null, 5, Symbol('map')]) isTypeError(t, thrown(t, () => partition.failOn(op, 0)), `op ${String(op)}`);
  for (const gpa of BAD_TYPES) isTypeError(t, thrown(t, () => partition.failOn('map', gpa)), `gpa ${String(gpa)}`);
  for (const gpa of BAD_VALUES) isRangeError(t, thrown(t, () => partition.failOn('map', gpa)), `gpa ${gpa}`);
});
