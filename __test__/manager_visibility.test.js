// RamVisibilityControl through the JavaScript API with RecordingPartition: exact-region matching,
// VGA unmap/restore, read-only RAM, no-op and prefetch-quirk remaps, private RAM, poisoning,
// invalidation before the Promise settles, plus decommitRam.
'use strict';
const test = require('ava');
const fs = require('node:fs');
const { mb, L1, VGA, build, attached, map, unmap, assertNoMapping, assertReadOnly, thrown, pattern } = require('./fixtures/manager/common');

const { RamVisibility, MemoryManagerError, range } = mb;
const RAM = range(0, 0x4000_0000);

async function assertInvalidRegion(t, pending, text) {
  const error = await t.throwsAsync(pending, { instanceOf: MemoryManagerError });
  t.is(error.code, 'ERR_INVALID_RAM_REGION');
  t.is(error.message, `${text} is not a controllable RAM range`);
}

test('only an exact RAM region is controllable', async (t) => {
  const { manager, partition } = await attached(L1(), { x86: true });
  const control = manager.ramVisibilityControl();
  await assertInvalidRegion(t, control.setRamVisibility(range(0xa_0000, 0xb_0000), RamVisibility.Unmapped), '0xa0000-0xb0000');
  await assertInvalidRegion(t, control.setRamVisibility(range(0, 0x10_0000), RamVisibility.Unmapped), '0x0-0x100000');
  await assertInvalidRegion(t, control.setRamVisibility({ start: 0xc_0000, end: 0xc_8000 }, RamVisibility.ReadOnly), '0xc0000-0xc8000');
  await assertInvalidRegion(t, control.setRamVisibility(range(0xc000_0000, 0xc000_1000), RamVisibility.ReadWrite), '0xc0000000-0xc0001000');
  t.deepEqual(partition.log(), []);
  await manager.close();

  const plain = await build(L1());
  await assertInvalidRegion(t, plain.ramVisibilityControl().setRamVisibility(VGA, RamVisibility.Unmapped), '0xa0000-0xc0000');
  await plain.close();
});

// Unmapping the VGA RAM and restoring it.
test('VGA unmapped: partition unmap, reads fail NoMapping, mapping gone; restored: map, content back', async (t) => {
  const { manager, partition } = await attached(L1(), { x86: true });
  const memory = await manager.client().guestMemory();
  const data = pattern(0xa0, 0x2_0000);
  memory.writeAt(0xa_0000, data);
  const control = manager.ramVisibilityControl();

  await control.setRamVisibility(VGA, RamVisibility.Unmapped);
  t.deepEqual(partition.takeLog(), [unmap(0xa_0000, 0x2_0000)]);
  assertNoMapping(t, thrown(t, () => memory.read(0xa_0000, 1)), '0xa0000-0xa1000', 0xa_0000);
  const snapshot = await manager.inspect();
  t.false(snapshot.mappings.some((m) => m.range.overlaps(VGA)));
  const vga = snapshot.regions.find((r) => r.range.equals(VGA));
  t.false(vga.active);
  t.is(vga.mapParams, null);
  t.is(snapshot.mappings.length, 15);

  await control.setRamVisibility(VGA, RamVisibility.ReadWrite);
  t.deepEqual(partition.takeLog(), [map(0xa_0000, 0x2_0000)]);
  t.deepEqual(memory.read(0xa_0000, 0x2_0000), data);
  // The mapping comes back, at the end of the set, with its file offset.
  const back = (await manager.inspect()).mappings;
  t.is(back.length, 16);
  t.true(back[15].range.equals(VGA));
  t.is(back[15].fileOffset, 0xa_0000n);
  await manager.close();
});

test('ReadOnly: unmap then map(writable=false); accessor reads succeed, writes fail read-only', async (t) => {
  const { manager, partition } = await attached(L1(), { x86: true });
  const memory = await manager.client().guestMemory();
  memory.writeU32(0xc_0000, 0x0bad_cafe);
  const pam = range(0xc_0000, 0xc_4000);
  await manager.ramVisibilityControl().setRamVisibility(pam, RamVisibility.ReadOnly);
  t.deepEqual(partition.takeLog(), [unmap(0xc_0000, 0x4000), map(0xc_0000, 0x4000, { writable: false })]);
  t.is(memory.readU32(0xc_0000), 0x0bad_cafe);
  const error = thrown(t, () => memory.writeU32(0xc_0000, 1));
  assertReadOnly(t, error, '0xc0000-0xc1000', 0xc_0000);
  t.is(error.op, 'write');
  t.is(memory.readU32(0xc_0000), 0x0bad_cafe);
  const region = (await manager.inspect()).regions.find((r) => r.range.equals(pam));
  t.deepEqual(region.mapParams, { writable: false, executable: true, prefetch: false });
  // Back to ReadWrite: writable again.
  await manager.ramVisibilityControl().setRamVisibility(pam, RamVisibility.ReadWrite);
  t.deepEqual(partition.takeLog(), [unmap(0xc_0000, 0x4000), map(0xc_0000, 0x4000)]);
  memory.writeU32(0xc_0000, 2);
  t.is(memory.readU32(0xc_0000), 2);
  await manager.close();
});

test('ReadWrite on a region already ReadWrite (no prefetch) makes no calls', async (t) => {
  const { manager, partition } = await attached(L1());
  await manager.ramVisibilityControl().setRamVisibility(RAM, RamVisibility.ReadWrite);
  t.deepEqual(partition.log(), []);
  await manager.close();
});

test('with prefetch, ReadWrite is a parameter change: unmap, map, no prefetch; params prefetch false', async (t) => {
  const { manager, partition } = await attached(L1(), { prefetch: true });
  await manager.ramVisibilityControl().setRamVisibility(RAM, RamVisibility.ReadWrite);
  t.deepEqual(partition.takeLog(), [unmap(0, 0x4000_0000), map(0, 0x4000_0000)]);
  t.deepEqual((await manager.inspect()).regions[0].mapParams, { writable: true, executable: true, prefetch: false });
  // Now it is a no-op.
  await manager.ramVisibilityControl().setRamVisibility(RAM, RamVisibility.ReadWrite);
  t.deepEqual(partition.log(), []);
  await manager.close();
});

test('Unmapped twice: the second call succeeds without calls', async (t) => {
  const { manager, partition } = await attached(L1(), { x86: true });
  const control = manager.ramVisibilityControl();
  await control.setRamVisibility(VGA, RamVisibility.Unmapped);
  t.deepEqual(partition.takeLog(), [unmap(0xa_0000, 0x2_0000)]);
  await control.setRamVisibility(VGA, RamVisibility.Unmapped);
  t.deepEqual(partition.log(), []);
  await manager.close();
});

test('private RAM unmapped from the partition keeps its content in the VA', async (t) => {
  const { manager, partition } = await attached(L1(), { private: true });
  const memory = await manager.client().guestMemory();
  memory.writeU64(0, 0x0102_0304_0506_0708n);
  await manager.ramVisibilityControl().setRamVisibility(RAM, RamVisibility.Unmapped);
  t.deepEqual(partition.takeLog(), [unmap(0, 0x4000_0000)]);
  t.is(memory.readU64(0), 0x0102_0304_0506_0708n);
  await manager.close();
});

// Deviation D5 (docs/deviations.md).
test('a partition failure during a runtime change poisons the manager; the process survives', async (t) => {
  const { manager, partition } = await attached(L1(), { x86: true });
  const control = manager.ramVisibilityControl();
  partition.failOn('map', 0xa_0000);
  await control.setRamVisibility(VGA, RamVisibility.Unmapped);
  const poisoned = await t.throwsAsync(control.setRamVisibility(VGA, RamVisibility.ReadWrite), { instanceOf: MemoryManagerError });
  t.is(poisoned.code, 'ERR_MANAGER_POISONED');
  t.deepEqual(partition.takeLog(), [unmap(0xa_0000, 0x2_0000), map(0xa_0000, 0x2_0000, { failed: true })]);
  // Every later operation of any object of this manager fails the same way.
  const later = [
    control.setRamVisibility(range(0xc_0000, 0xc_4000), RamVisibility.Unmapped),
    manager.inspect(),
    manager.attachPartition(mb.Vtl.Vtl0, new mb.RecordingPartition()),
    manager.decommitRam(range(0x10_0000, 0x20_0000)),
    manager.deviceMemoryMapper().newRegion(0x1000, 'late').control.mapToGuest(0xd000_0000, true),
  ];
  for (const pending of later) {
    const error = await t.throwsAsync(pending);
    const codes = [error.code, error.cause?.code, error.cause?.cause?.code];
    t.true(codes.includes('ERR_MANAGER_POISONED'), `${error.code}: ${error.message}`);
  }
  t.deepEqual(partition.log(), []);
  // Poisoning stops the region manager; guest memory has no error channel for it and, as in the
  // Rust core, keeps working where RAM stayed mapped.
  const memory = await manager.client().guestMemory();
  memory.writeAt(0x10_0000, Buffer.from('alive'));
  t.is(memory.read(0x10_0000, 5).toString(), 'alive');
  await manager.close();
});

test('the partition unmap is logged and the VA invalidated before the Promise resolves', async (t) => {
  // The mapper's own event log is internal (the Rust tests check the order unmap → invalidate →
  // ack); from JavaScript: once the Promise resolves, the partition has its unmap and this
  // process's mapper no longer maps the range.
  const { manager, partition } = await attached(L1(), { x86: true });
  const memory = await manager.client().guestMemory();
  memory.writeU8(0xa_0000, 7); // the mapper now holds the VGA mapping
  t.deepEqual((await manager.inspect()).mappings.find((m) => m.range.equals(VGA)).activeMappers, [0]);
  let settledWithLog;
  const pending = manager
    .ramVisibilityControl()
    .setRamVisibility(VGA, RamVisibility.Unmapped)
    .then(() => {
      settledWithLog = partition.log();
      try {
        memory.readU8(0xa_0000);
        return 'still mapped';
      } catch (error) {
        return error.code;
      }
    });
  t.is(await pending, 'ERR_GUEST_MEMORY_OUT_OF_RANGE');
  t.deepEqual(settledWithLog, [unmap(0xa_0000, 0x2_0000)]);
  await manager.close();
});

test('decommitRam: file-backed RAM reads zeros in every view afterwards; bad ranges are refused', async (t) => {
  const manager = await build(L1());
  const memory = await manager.client().guestMemory();
  memory.fillAt(0x20_0000, 0x77, 0x2000);
  const backing = manager.sharedMemoryBacking().mappable();
  await manager.decommitRam(range(0x20_0000, 0x20_1000));
  t.deepEqual(memory.read(0x20_0000, 0x1000), Buffer.alloc(0x1000));
  t.deepEqual(memory.read(0x20_1000, 4), Buffer.alloc(4, 0x77));
  const seen = Buffer.alloc(4);
  fs.readSync(backing.fd, seen, 0, 4, 0x20_0000);
  t.deepEqual(seen, Buffer.alloc(4));
  backing.close();
  const outside = await t.throwsAsync(manager.decommitRam(range(0xc000_0000, 0xc000_1000)));
  t.true(outside instanceof MemoryManagerError || outside instanceof RangeError, String(outside));
  t.is(typeof outside.code, 'string');
  await manager.close();
});

test('decommitRam: private RAM reads back as zeros', async (t) => {
  const manager = await build(L1(), { private: true });
  const memory = await manager.client().guestMemory();
  memory.fillAt(0x30_0000, 0x55, 0x1000);
  await manager.decommitRam({ start: 0x30_0000, end: 0x30_1000 });
  t.deepEqual(memory.read(0x30_0000, 0x1000), Buffer.alloc(0x1000));
  await manager.close();
});

test('many concurrent setRamVisibility and inspect Promises all settle, in order, with the right final state', async (t) => {
  const { manager, partition } = await attached(L1(), { x86: true });
  const control = manager.ramVisibilityControl();
  const pams = Array.from({ length: 12 }, (_, i) => range(0xc_0000 + i * 0x4000, 0xc_4000 + i * 0x4000));
  const settled = [];
  const pending = [];
  for (let round = 0; round < 20; round++) {
    for (const [i, pam] of pams.entries()) {
      const visibility = [RamVisibility.Unmapped, RamVisibility.ReadOnly, RamVisibility.ReadWrite][(round + i) % 3];
      const index = pending.length;
      pending.push(control.setRamVisibility(pam, visibility).then(() => settled.push(index)));
    }
    pending.push(manager.inspect().then(() => settled.push(-1)));
    // An invalid request in between rejects without disturbing the others.
    pending.push(control.setRamVisibility(range(0xc_0000, 0xc_8000), RamVisibility.Unmapped).then(
      () => t.fail('an invalid range was accepted'),
      (error) => t.is(error.code, 'ERR_INVALID_RAM_REGION'),
    ));
  }
  await Promise.all(pending);
  const requests = settled.filter((i) => i >= 0);
  t.is(requests.length, 240);
  t.deepEqual(requests, [...requests].sort((a, b) => a - b), 'requests settle in the order they were made');
  // Round 19 decides each region's final visibility.
  const { regions } = await manager.inspect();
  for (const [i, pam] of pams.entries()) {
    const expected = [RamVisibility.Unmapped, RamVisibility.ReadOnly, RamVisibility.ReadWrite][(19 + i) % 3];
    const region = regions.find((r) => r.range.equals(pam));
    if (expected === RamVisibility.Unmapped) t.is(region.mapParams, null);
    else t.is(region.mapParams.writable, expected === RamVisibility.ReadWrite);
  }
  t.true(partition.log().length > 0);
  await manager.close();
});
