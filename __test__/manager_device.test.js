// Device memory windows through the JavaScript API with RecordingPartition: windows shadowed by
// RAM, surfacing, partial windows, overlaps, runtime DAX add/remove, the D2 record fix, input
// errors, read-only windows, moving windows, unplaced mappings, out-of-window placement,
// DMA-target mappings.
'use strict';
const test = require('ava');
const { mb, L1, L2, VGA, build, attached, map, unmap, assertNoMapping, assertReadOnly, thrown, pattern, objectWith } = require('./fixtures/manager/common');

const { RamVisibility, MemoryManagerError, range } = mb;
const P = pattern(0x50, 0x1_0000);
const Q = pattern(0x51, 0x1_0000);

/** Device regions of the snapshot (priority 0). */
async function deviceRegions(manager) {
  return (await manager.inspect()).regions.filter((r) => r.priority === 0);
}

/** The setup: x86 L1, attached, a 0x20000-byte window with P at offset 0, placed at the VGA range. */
async function vgaDevice(t) {
  const { manager, partition } = await attached(L1(), { x86: true });
  const memory = await manager.client().guestMemory();
  memory.writeAt(0xa_0000, Buffer.from('RAM!'));
  const { control, region } = manager.deviceMemoryMapper().newRegion(0x2_0000, 'vram');
  t.is(control.len, 0x2_0000n);
  t.is(region.len, 0x2_0000n);
  const objectP = objectWith(P, 0x1_0000);
  await region.map(0, objectP, 0, 0x1_0000, true);
  await control.mapToGuest(0xa_0000, true);
  return { manager, partition, memory, control, region, objectP };
}

// A device window shadowed by RAM, surfaced when the RAM is unmapped, hidden when it returns.
test('a device window under RAM is inactive; unmapping VGA surfaces it; ReadWrite hides it again', async (t) => {
  const { manager, partition, memory, control, objectP } = await vgaDevice(t);
  // Present, inactive, no partition calls.
  let [device] = await deviceRegions(manager);
  t.is(device.name, 'vram');
  t.is(device.range.toString(), '0xa0000-0xc0000');
  t.false(device.active);
  t.false(device.dmaTarget);
  t.deepEqual(device.mapParams, { writable: true, executable: true, prefetch: false });
  t.deepEqual(device.mappings.map((m) => [m.rangeInRegion.toString(), m.fileOffset, m.writable]), [['0x0-0x10000', 0n, true]]);
  t.deepEqual(partition.log(), []);
  t.is(memory.read(0xa_0000, 4).toString(), 'RAM!');

  // Unmapping the VGA RAM surfaces the device: unmap, then one map of the whole window.
  await manager.ramVisibilityControl().setRamVisibility(VGA, RamVisibility.Unmapped);
  t.deepEqual(partition.takeLog(), [unmap(0xa_0000, 0x2_0000), map(0xa_0000, 0x2_0000)]);
  t.deepEqual(memory.read(0xa_0000, 0x1_0000), P);
  [device] = await deviceRegions(manager);
  t.true(device.active);
  // The device mapping is active but not a DMA target: getRegions() omits it (and the hidden VGA RAM).
  const deviceMapping = (await manager.inspect()).mappings.find((m) => m.range.start === 0xa_0000n);
  t.false(deviceMapping.dmaTarget);
  t.is(deviceMapping.range.toString(), '0xa0000-0xb0000');
  const shared = await memory.sharing().getRegions();
  t.is(shared.length, 15);
  t.false(shared.some((r) => r.guestAddress === 0xa_0000n));

  // The unmapped half of the window is a hole.
  assertNoMapping(t, thrown(t, () => memory.read(0xb_0000, 1)), '0xb0000-0xb1000', 0xb_0000);

  // RAM returns: unmap the device window, map RAM; RAM content is back.
  await manager.ramVisibilityControl().setRamVisibility(VGA, RamVisibility.ReadWrite);
  t.deepEqual(partition.takeLog(), [unmap(0xa_0000, 0x2_0000), map(0xa_0000, 0x2_0000)]);
  t.is(memory.read(0xa_0000, 4).toString(), 'RAM!');
  [device] = await deviceRegions(manager);
  t.false(device.active);
  await control.unmapFromGuest();
  t.deepEqual(partition.log(), [], 'removing a shadowed window makes no partition calls');
  t.deepEqual(await deviceRegions(manager), []);
  objectP.close();
  await manager.close();
});

// Adding and removing mappings of a surfaced window at runtime (DAX).
test('runtime DAX: adding a mapping to a surfaced window makes no partition call; removing invalidates', async (t) => {
  const { manager, partition, memory, region, objectP } = await vgaDevice(t);
  await manager.ramVisibilityControl().setRamVisibility(VGA, RamVisibility.Unmapped);
  partition.clearLog();
  // A mapping added while the window's RAM is unmapped goes straight to the partition path.
  const objectQ = objectWith(Q, 0x1_0000);
  await region.map(0x1_0000, objectQ, 0, 0x1_0000, true);
  t.deepEqual(partition.log(), []);
  const added = (await manager.inspect()).mappings.find((m) => m.range.start === 0xb_0000n);
  t.deepEqual(added.activeMappers, [0], 'pre-populated through the partition path');
  t.deepEqual(memory.read(0xb_0000, 0x1_0000), Q);
  // Removing it leaves the other mapping.
  await region.unmap(0x1_0000, 0x1_0000);
  t.deepEqual(partition.log(), []);
  assertNoMapping(t, thrown(t, () => memory.read(0xb_0000, 1)), '0xb0000-0xb1000', 0xb_0000);
  t.deepEqual(memory.read(0xa_0000, 16), P.subarray(0, 16), 'the other mapping stays');
  t.false((await manager.inspect()).mappings.some((m) => m.range.start === 0xb_0000n));
  objectP.close();
  objectQ.close();
  await manager.close();
});

test('a window straddling RAM fails OverlapError naming the device and ram; the window stays unplaced', async (t) => {
  const { manager, partition } = await attached(L1(), { x86: true });
  const { control } = manager.deviceMemoryMapper().newRegion(0x2000, 'straddler');
  const error = await t.throwsAsync(control.mapToGuest(0x9_f000, true), { instanceOf: MemoryManagerError });
  t.is(error.code, 'ERR_OVERLAP_ERROR');
  t.is(error.message, 'memory region straddler overlaps with existing region ram');
  t.deepEqual(await deviceRegions(manager), []);
  t.deepEqual(partition.log(), []);
  await manager.close();
});

test('a refused placement removes the earlier one, as in the original, and its detail says the window is unplaced', async (t) => {
  const { manager, partition } = await attached(L1(), { x86: true });
  const { control } = manager.deviceMemoryMapper().newRegion(0x2000, 'moved');
  for (const [gpa, code] of [
    [0xd000_0001, 'ERR_INVALID_INPUT'],
    [0xffff_ffff_ffff_f000n, 'ERR_INVALID_INPUT'],
    [0x9_f000, 'ERR_OVERLAP_ERROR'],
  ]) {
    await control.mapToGuest(0xd000_0000, true);
    partition.clearLog();
    const error = await t.throwsAsync(control.mapToGuest(gpa, true), { code });
    t.regex(error.detail, /the window is not placed now: its earlier placement \(if any\) is removed .*place it again/);
    t.deepEqual(partition.log(), [unmap(0xd000_0000, 0x2000)], 'the earlier placement went');
    t.deepEqual(await deviceRegions(manager), []);
  }
  // An argument error is thrown before anything is done: the placement stays, no such detail.
  await control.mapToGuest(0xd000_0000, true);
  const refused = await t.throwsAsync(control.mapToGuest(-1, true), { code: 'ERR_INVALID_ARG_TYPE' });
  t.is(refused.detail, undefined);
  t.is((await deviceRegions(manager)).length, 1);
  await manager.close();
});

test('identical windows in MMIO space: the first created is active; removing it activates the second', async (t) => {
  const { manager, partition } = await attached(L1());
  const memory = await manager.client().guestMemory();
  const first = manager.deviceMemoryMapper().newRegion(0x1_0000, 'first');
  const second = manager.deviceMemoryMapper().newRegion(0x1_0000, 'second');
  const objectA = objectWith(Buffer.from('AAAA'), 0x1_0000);
  const objectB = objectWith(Buffer.from('BBBB'), 0x1_0000);
  await first.region.map(0, objectA, 0, 0x1_0000, true);
  await second.region.map(0, objectB, 0, 0x1_0000, true);
  await first.control.mapToGuest(0xd000_0000, true);
  await second.control.mapToGuest(0xd000_0000, true);
  t.deepEqual(partition.takeLog(), [map(0xd000_0000, 0x1_0000)]);
  t.deepEqual((await deviceRegions(manager)).map((r) => [r.name, r.active]), [['first', true], ['second', false]]);
  t.is(memory.read(0xd000_0000, 4).toString(), 'AAAA');
  await first.control.unmapFromGuest();
  t.deepEqual(partition.takeLog(), [unmap(0xd000_0000, 0x1_0000), map(0xd000_0000, 0x1_0000)]);
  t.deepEqual((await deviceRegions(manager)).map((r) => [r.name, r.active]), [['second', true]]);
  t.is(memory.read(0xd000_0000, 4).toString(), 'BBBB');
  objectA.close();
  objectB.close();
  await manager.close();
});

test('equal-priority windows that partially overlap are refused with OverlapError', async (t) => {
  const { manager, partition } = await attached(L1());
  const a = manager.deviceMemoryMapper().newRegion(0x2000, 'a');
  const b = manager.deviceMemoryMapper().newRegion(0x2000, 'b');
  await a.control.mapToGuest(0xd000_0000, true);
  const error = await t.throwsAsync(b.control.mapToGuest(0xd000_1000, true), { instanceOf: MemoryManagerError });
  t.is(error.code, 'ERR_OVERLAP_ERROR');
  t.is(error.message, 'memory region b overlaps with existing region a');
  t.deepEqual(partition.log(), [map(0xd000_0000, 0x2000)]);
  t.deepEqual((await deviceRegions(manager)).map((r) => r.name), ['a']);
  await manager.close();
});

// Deviation D2 (docs/deviations.md).
test('a device unmap keeps the other mappings for a later placement', async (t) => {
  const manager = await build(L1());
  const memory = await manager.client().guestMemory();
  const { control, region } = manager.deviceMemoryMapper().newRegion(0x4000, 'dev');
  const objectA = objectWith(Buffer.from('AAAA'), 0x1000);
  const objectB = objectWith(Buffer.from('BBBB'), 0x1000);
  await region.map(0, objectA, 0, 0x1000, true);
  await region.map(0x2000, objectB, 0, 0x1000, true);
  await control.mapToGuest(0xd000_0000, true);
  await region.unmap(0, 0x1000);
  await control.unmapFromGuest();
  await control.mapToGuest(0xd000_0000, true);
  const [device] = await deviceRegions(manager);
  t.deepEqual(device.mappings.map((m) => m.rangeInRegion.toString()), ['0x2000-0x3000']);
  t.is(memory.read(0xd000_2000, 4).toString(), 'BBBB');
  assertNoMapping(t, thrown(t, () => memory.read(0xd000_0000, 1)), '0xd0000000-0xd0001000');
  const objectC = objectWith(Buffer.from('CCCC'), 0x1000);
  await region.map(0, objectC, 0, 0x1000, true);
  t.is(memory.read(0xd000_0000, 4).toString(), 'CCCC');
  for (const o of [objectA, objectB, objectC]) o.close();
  await manager.close();
});

test('device input errors: InvalidInput / Unsupported, and none changes state', async (t) => {
  const { manager, partition } = await attached(L1());
  const { control, region } = manager.deviceMemoryMapper().newRegion(0x4000, 'dev');
  const object = objectWith(Buffer.from('data'), 0x4000);
  await region.map(0, object, 0, 0x2000, true);
  await control.mapToGuest(0xd000_0000, true);
  partition.clearLog();
  const before = await manager.inspect();
  const cases = [
    [() => region.map(0x800, object, 0, 0x1000, true), 'ERR_INVALID_INPUT', RangeError],
    [() => region.map(0x1000, object, 0, 0x1000, true), 'ERR_UNSUPPORTED', MemoryManagerError],
    [() => region.map(0x3000, object, 0, 0x2000, true), 'ERR_INVALID_INPUT', RangeError],
    [() => region.map(0, object, 0, 0x800, true), 'ERR_INVALID_INPUT', RangeError],
    [() => region.map(0x2000, object, 0x800, 0x1000, true), 'ERR_INVALID_INPUT', RangeError],
    [() => region.unmap(0x1000, 0x2000), 'ERR_UNSUPPORTED', MemoryManagerError],
    [() => region.unmap(0x800, 0x1000), 'ERR_INVALID_INPUT', RangeError],
    [() => region.unmap(0, 0x5000), 'ERR_INVALID_INPUT', RangeError],
  ];
  for (const [f, code, Class] of cases) {
    const error = await t.throwsAsync(f());
    t.is(error.code, code, error.message);
    t.true(error instanceof Class, `${code}: ${error.constructor.name}`);
  }
  const unaligned = await t.throwsAsync(control.mapToGuest(0xd000_0800, true));
  t.is(unaligned.code, 'ERR_INVALID_INPUT');
  t.true(unaligned instanceof RangeError);
  // Nothing changed: a failed mapToGuest leaves the window unplaced, so re-place it
  // before comparing; the mapping record is unchanged.
  await control.mapToGuest(0xd000_0000, true);
  const withoutIds = (regions) => regions.map(({ id, ...rest }) => rest);
  t.deepEqual(withoutIds((await manager.inspect()).regions), withoutIds(before.regions));
  t.deepEqual(partition.takeLog(), [unmap(0xd000_0000, 0x4000), map(0xd000_0000, 0x4000)]);
  object.close();
  await manager.close();
});

// Deviation D3 (docs/deviations.md).
test('a window placed read-only makes a writable object read-only to the accessor', async (t) => {
  const { manager, partition } = await attached(L1());
  const memory = await manager.client().guestMemory();
  const { control, region } = manager.deviceMemoryMapper().newRegion(0x1000, 'rom');
  await control.mapToGuest(0xd000_0000, false);
  t.deepEqual(partition.takeLog(), [map(0xd000_0000, 0x1000, { writable: false })]);
  const object = objectWith(Buffer.from('ROM!'), 0x1000);
  await region.map(0, object, 0, 0x1000, true);
  t.is(memory.read(0xd000_0000, 4).toString(), 'ROM!');
  const error = thrown(t, () => memory.writeAt(0xd000_0000, Buffer.from('nope')));
  assertReadOnly(t, error, '0xd0000000-0xd0001000');
  t.is(memory.read(0xd000_0000, 4).toString(), 'ROM!');
  t.false((await manager.inspect()).mappings.find((m) => m.range.start === 0xd000_0000n).writable);
  object.close();
  await manager.close();
});

test('moving a window: unmap at G1, map at G2, the mappings are seen at G2', async (t) => {
  const { manager, partition } = await attached(L1());
  const memory = await manager.client().guestMemory();
  const { control, region } = manager.deviceMemoryMapper().newRegion(0x1000, 'mover');
  const object = objectWith(Buffer.from('MOVE'), 0x1000);
  await region.map(0, object, 0, 0x1000, true);
  await control.mapToGuest(0xd000_0000, true);
  t.is(memory.read(0xd000_0000, 4).toString(), 'MOVE');
  partition.clearLog();
  await control.mapToGuest(0xe000_0000, true);
  t.deepEqual(partition.log(), [unmap(0xd000_0000, 0x1000), map(0xe000_0000, 0x1000)]);
  t.is(memory.read(0xe000_0000, 4).toString(), 'MOVE');
  assertNoMapping(t, thrown(t, () => memory.read(0xd000_0000, 1)), '0xd0000000-0xd0001000');
  object.close();
  await manager.close();
});

test('a mapping made while unplaced is visible once placed', async (t) => {
  const manager = await build(L1());
  const memory = await manager.client().guestMemory();
  const { control, region } = manager.deviceMemoryMapper().newRegion(0x1000, 'late');
  const object = objectWith(Buffer.from('LATE'), 0x1000);
  await region.map(0, object, 0, 0x1000, true);
  t.deepEqual(await deviceRegions(manager), []);
  await control.mapToGuest(0xd000_0000, true);
  t.is(memory.read(0xd000_0000, 4).toString(), 'LATE');
  object.close();
  await manager.close();
});

test('a window beyond the VA window fails RegionOutOfRange', async (t) => {
  const { manager, partition } = await attached(L1());
  const { control } = manager.deviceMemoryMapper().newRegion(0x1000, 'far');
  const error = await t.throwsAsync(control.mapToGuest(0x1_0000_0000n, true), { instanceOf: MemoryManagerError });
  t.is(error.code, 'ERR_REGION_OUT_OF_RANGE');
  t.deepEqual(await deviceRegions(manager), []);
  t.deepEqual(partition.log(), []);
  // The last page inside the window is fine.
  await control.mapToGuest(0xffff_f000n, true);
  t.deepEqual(partition.log(), [map(0xffff_f000n, 0x1000)]);
  await manager.close();
});

test('L2 DMA-target mappings are the two RAM mappings with their file offsets', async (t) => {
  const manager = await build(L2());
  const { control } = manager.deviceMemoryMapper().newRegion(0x1000, 'not-dma');
  await control.mapToGuest(0xd000_0000, true);
  const dma = (await manager.inspect()).mappings.filter((m) => m.dmaTarget);
  const asSet = new Set(dma.map((m) => `${m.range.start}/${m.range.len}/${m.fileOffset}`));
  t.deepEqual(asSet, new Set([`0/${0xc000_0000}/0`, `${0x1_0000_0000}/${0x4000_0000}/${0xc000_0000}`]));
  await manager.close();
});

test('getRegions() of a file-backed accessor lists the RAM mappings, not device ones', async (t) => {
  const manager = await build(L2());
  const { control } = manager.deviceMemoryMapper().newRegion(0x1000, 'not-dma');
  await control.mapToGuest(0xd000_0000, true);
  const memory = await manager.client().guestMemory();
  const sharing = memory.sharing();
  t.not(sharing, null);
  const regions = await sharing.getRegions();
  t.deepEqual(new Set(regions.map((r) => `${r.guestAddress}/${r.size}/${r.fileOffset}`)), new Set([`0/${0xc000_0000}/0`, `${0x1_0000_0000}/${0x4000_0000}/${0xc000_0000}`]));
  // The object is the RAM memfd: a write through the accessor shows in it.
  memory.writeU32(0x1_0000_0000n, 0xfeed_beef);
  const high = regions.find((r) => r.guestAddress === 0x1_0000_0000n);
  const seen = Buffer.alloc(4);
  require('node:fs').readSync(high.object.fd, seen, 0, 4, Number(high.fileOffset));
  t.is(seen.readUInt32LE(0), 0xfeed_beef);
  await manager.close();
});

test('device windows live while either half is open; closing both removes the window', async (t) => {
  const { manager, partition } = await attached(L1());
  const { control, region } = manager.deviceMemoryMapper().newRegion(0x1000, 'halves');
  await control.mapToGuest(0xd000_0000, true);
  partition.clearLog();
  await control.close();
  t.deepEqual((await deviceRegions(manager)).map((r) => r.name), ['halves'], 'closing the control alone does not unmap');
  t.is((await t.throwsAsync(control.mapToGuest(0xd000_0000, true))).code, 'ERR_CLOSED');
  t.throws(() => control.len, { code: 'ERR_CLOSED', message: 'DeviceMemoryControl is closed' });
  t.is(region.len, 0x1000n);
  await region.close();
  t.throws(() => region.len, { code: 'ERR_CLOSED', message: 'DeviceMemoryRegion is closed' });
  // Removal is requested without waiting; the next manager round trip sees it done.
  await manager.inspect();
  let regions = await deviceRegions(manager);
  for (let i = 0; i < 50 && regions.length > 0; i++) {
    await new Promise((resolve) => setTimeout(resolve, 10));
    regions = await deviceRegions(manager);
  }
  t.deepEqual(regions, []);
  t.deepEqual(partition.log(), [unmap(0xd000_0000, 0x1000)]);
  t.is((await t.throwsAsync(region.map(0, mb.Mappable.allocSharedMemory(0x1000, 'x'), 0, 0x1000, true))).code, 'ERR_CLOSED');
  await manager.close();
});

test('closing both halves while a placement is pending removes the window once the placement is served', async (t) => {
  const { manager, partition } = await attached(L1());
  for (let round = 0; round < 10; round++) {
    const gpa = 0xd000_0000 + round * 0x1000;
    const { control, region } = manager.deviceMemoryMapper().newRegion(0x1000, `pending ${round}`);
    await region.map(0, objectWith(P, 0x1000), 0, 0x1000, true);
    partition.clearLog();
    // Nothing awaited in between: the placement is still queued when both halves close.
    await Promise.all([control.mapToGuest(gpa, true), control.close(), region.close()]);
    t.deepEqual(await deviceRegions(manager), [], `round ${round}: no window is left`);
    t.deepEqual(
      partition.log().map((c) => [c.op, c.gpa]),
      [['map', BigInt(gpa)], ['unmap', BigInt(gpa)]],
      `round ${round}: placed, then removed`,
    );
  }
  await manager.close();
});

test('closing both halves of a placed window resolves only after the partition has dropped it', async (t) => {
  const { manager, partition } = await attached(L1(), { x86: false });
  const { control, region } = manager.deviceMemoryMapper().newRegion(0x1_0000, 'closing');
  await region.map(0, objectWith(P, 0x1_0000), 0, 0x1_0000, false);
  for (let round = 0; round < 50; round++) {
    const gpa = 0xc000_0000 + round * 0x1_0000;
    const halves = round === 0 ? { control, region } : manager.deviceMemoryMapper().newRegion(0x1_0000, `closing ${round}`);
    if (round > 0) await halves.region.map(0, objectWith(Q, 0x1_0000), 0, 0x1_0000, false);
    await halves.control.mapToGuest(gpa, false);
    t.deepEqual(partition.takeLog().map((c) => [c.op, c.gpa, c.size, c.writable]), [['map', BigInt(gpa), 0x1_0000n, false]]);
    // The closes alternate order; the second one's Promise settles after the removal.
    const [first, second] = round % 2 === 0 ? [halves.control, halves.region] : [halves.region, halves.control];
    await first.close();
    await second.close();
    t.deepEqual(partition.takeLog(), [unmap(gpa, 0x1_0000)], `round ${round}: the partition log right after the closes`);
  }
  t.deepEqual(await deviceRegions(manager), []);
  await manager.close();
});

// Many mappings of one object hold one descriptor: a window mapped page by page from one memfd
// (one call at a time and in a batch) under a 256-descriptor limit. Each mapping used to keep a
// duplicated descriptor, so the 1,000 mappings failed with EMFILE long before the end.
test('1,000 mappings of one Mappable fit under a 256-descriptor limit', async (t) => {
  const { execFile } = require('node:child_process');
  const path = require('node:path');
  const dist = path.join(__dirname, '..', 'dist');
  const child = `
    const mb = require(${JSON.stringify(dist)});
    (async () => {
      const manager = await new mb.GuestMemoryBuilder().build(mb.MemoryLayout.new(0x4000_0000, [mb.range(0xc000_0000, 0x1_0000_0000)]));
      const pages = 1000;
      const object = mb.Mappable.allocSharedMemory(pages * 4096, 'pages');
      const { control, region } = manager.deviceMemoryMapper().newRegion(pages * 4096, 'paged');
      for (let i = 0; i < pages / 2; i++) await region.map(i * 4096, object, i * 4096, 4096, true);
      const changes = [];
      for (let i = pages / 2; i < pages; i++) changes.push({ kind: 'deviceMap', region, offset: i * 4096, object, fileOffset: i * 4096, len: 4096, writable: true });
      await manager.apply(changes);
      await control.mapToGuest(0xc000_0000, true);
      const memory = await manager.client().guestMemory();
      memory.writeU32(0xc000_0000 + (pages - 1) * 4096, 0x5a5a5a5a);
      const check = Buffer.alloc(4);
      require('node:fs').readSync(object.fd, check, 0, 4, (pages - 1) * 4096);
      process.stdout.write(JSON.stringify({ fds: require('node:fs').readdirSync('/proc/self/fd').length, word: check.readUInt32LE(0) }));
      memory.close();
      await manager.close();
    })().catch((error) => { process.stdout.write(JSON.stringify({ error: error.code, message: error.message })); });
  `;
  const quoted = [process.execPath, '-e', child].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  const stdout = await new Promise((resolve, reject) => {
    execFile('/bin/sh', ['-c', `ulimit -n 256 && exec ${quoted}`], { encoding: 'utf8' }, (error, out) => (error ? reject(error) : resolve(out)));
  });
  const result = JSON.parse(stdout);
  t.is(result.error, undefined, result.message);
  t.is(result.word, 0x5a5a5a5a);
  t.true(result.fds < 256, `${result.fds} descriptors open`);
});
