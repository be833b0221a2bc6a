// Guest memory of a manager through the JavaScript API: lazy population, holes, the per-process
// mapper and the lock extension (deviation D7: a locked
// page stays mapped in this process while partitions lose it at once, until release).
'use strict';
const test = require('ava');
const v8 = require('node:v8');
const vm = require('node:vm');
const { mb, L1, VGA, build, attached, unmap, assertNoMapping, thrown, pattern } = require('./fixtures/manager/common');

const { RamVisibility, GuestMemoryError, range } = mb;

/** The mapper ids of each mapping in the snapshot, keyed by its range. */
async function activeMappers(manager) {
  const { mappings } = await manager.inspect();
  return Object.fromEntries(mappings.map((m) => [m.range.toString(), m.activeMappers]));
}

test('lazy population: no mapper holds RAM until a read faults it in, then mapper 0 does', async (t) => {
  const manager = await build(L1());
  t.deepEqual(await activeMappers(manager), { '0x0-0x40000000': [] });
  t.is((await manager.inspect()).mapperCount, 1);
  const memory = await manager.client().guestMemory();
  t.deepEqual(await activeMappers(manager), { '0x0-0x40000000': [] }, 'obtaining an accessor maps nothing');
  t.is(memory.readU8(0x1000), 0);
  t.deepEqual(await activeMappers(manager), { '0x0-0x40000000': [0] });
  t.is(memory.name, 'ram');
  t.is(memory.maxAddress, 0x1_0000_0000n);
  await manager.close();
});

test('a read in the MMIO gap fails NoMapping; a read beyond the window fails OutOfRange without a request', async (t) => {
  const manager = await build(L1());
  const memory = await manager.client().guestMemory();
  const gap = thrown(t, () => memory.read(0xc000_0000, 1));
  assertNoMapping(t, gap, '0xc0000000-0xc0001000', 0xc000_0000);
  t.is(gap.op, 'read');
  t.deepEqual(gap.range, { start: 0xc000_0000n, end: 0xc000_0001n });
  const beyond = thrown(t, () => memory.read(0x1_0000_0000n, 1));
  t.true(beyond instanceof GuestMemoryError);
  t.is(beyond.code, 'ERR_GUEST_MEMORY_OUT_OF_RANGE');
  t.is(beyond.kind, 'OutOfRange');
  t.is(beyond.cause, undefined, 'no mapping request was made');
  t.is(beyond.detail, 'no memory at address');
  // No mapper has received anything (neither the gap request nor the out-of-window one maps).
  t.deepEqual(await activeMappers(manager), { '0x0-0x40000000': [] });
  await manager.close();
});

// "Fails NoMapping": the accessor's error carries a `cause` with code ERR_NO_MAPPING.
test('the NoMapping failure carries a MemoryManagerError ERR_NO_MAPPING cause', async (t) => {
  const manager = await build(L1());
  const memory = await manager.client().guestMemory();
  const gap = thrown(t, () => memory.read(0xc000_0000, 1));
  await manager.close();
  t.truthy(gap.cause);
  t.is(gap.cause?.code, 'ERR_NO_MAPPING');
  t.is(gap.cause?.message, 'no mapping for 0xc0000000-0xc0001000');
  t.regex(gap.cause?.detail, /^nothing is mapped there .*map a device window there/);
  // The top-level message is the template alone; the cause carries the rest.
  t.is(gap.message, "guest memory 'ram': read error: failed to access 0xc0000000-0xc0000001");
  t.is(gap.detail, undefined);
  t.true(gap.cause instanceof mb.MemoryManagerError);
});

test('memory whose manager was garbage collected fails ERR_NO_MAPPING, and the detail says to keep the manager', async (t) => {
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc');
  let manager = await build(L1());
  const memory = await manager.client().guestMemory();
  memory.writeU8(0x2000, 7);
  let registry; // kept: a collected registry calls nothing
  const collected = new Promise((resolve) => {
    registry = new FinalizationRegistry(resolve);
    registry.register(manager, 'manager');
  });
  manager = null;
  // Bounded: the manager is unreachable, so a few collections find it.
  for (let i = 0; i < 50 && !(await Promise.race([collected.then(() => true), new Promise((r) => setTimeout(r, 20, false))])); i++) gc();
  t.is(await Promise.race([collected, 'not collected']), 'manager', 'the manager was collected');
  const error = await failureOf(() => memory.readU8(0x2000));
  t.truthy(error, 'the read failed once the regions were removed');
  t.is(error.code, 'ERR_GUEST_MEMORY_OUT_OF_RANGE');
  t.is(error.cause?.code, 'ERR_NO_MAPPING');
  t.regex(error.cause?.detail, /manager was garbage collected.*keep the manager referenced/);
  t.truthy(registry);
});

/**
 * What `access()` throws once it throws (the regions' removal reaches the mapper after the
 * collection, asynchronously); undefined if it never does within a minute. The
 * minute is a guard only: polling ends at the first failure (200 polls, about 2 s, before: a
 * loaded machine can take longer to get there).
 */
async function failureOf(access) {
  const giveUp = Date.now() + 60_000;
  while (Date.now() < giveUp) {
    try {
      access();
    } catch (error) {
      return error;
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  return undefined;
}

test('a read straddling the end of RAM fails at the hole once RAM is populated, at its start before', async (t) => {
  const populated = await build(L1());
  const memory = await populated.client().guestMemory();
  memory.readU8(0x1000); // populates the whole RAM mapping
  const late = thrown(t, () => memory.read(0x3fff_f000, 0x2000));
  t.is(late.code, 'ERR_GUEST_MEMORY_OUT_OF_RANGE');
  t.is(late.gpa, 0x4000_0000n);
  await populated.close();

  const fresh = await build(L1());
  const freshMemory = await fresh.client().guestMemory();
  const early = thrown(t, () => freshMemory.read(0x3fff_f000, 0x2000));
  t.is(early.code, 'ERR_GUEST_MEMORY_OUT_OF_RANGE');
  t.is(early.gpa, 0x3fff_f000n);
  t.is(early.cause?.message, 'no mapping for 0x3ffff000-0x40001000', early.message);
  await fresh.close();
});

test('guestMemory() twice, and concurrently, shares one mapper (mapperCount 1, one VA window)', async (t) => {
  const manager = await build(L1());
  const client = manager.client();
  const [a, b] = await Promise.all([client.guestMemory(), client.guestMemory()]);
  const c = await manager.client().guestMemory();
  t.is((await manager.inspect()).mapperCount, 1);
  a.writeU64(0x10_0000, 0xfeed_face_cafe_beefn);
  t.is(b.readU64(0x10_0000), 0xfeed_face_cafe_beefn);
  t.is(c.readU64(0x10_0000), 0xfeed_face_cafe_beefn);
  // One mapper served all three: the only active mapper id is 0.
  t.deepEqual(await activeMappers(manager), { '0x0-0x40000000': [0] });
  // Closing one accessor does not disturb the others.
  a.close();
  t.is(b.readU64(0x10_0000), 0xfeed_face_cafe_beefn);
  t.is((await manager.inspect()).mapperCount, 1);
  await manager.close();
});

test('private memory: a fault outside RAM fails with kind Other', async (t) => {
  const manager = await build(L1(), { private: true });
  const memory = await manager.client().guestMemory();
  const error = thrown(t, () => memory.read(0xc000_0000, 1));
  t.true(error instanceof GuestMemoryError);
  t.is(error.kind, 'Other');
  t.true(['ERR_GUEST_MEMORY_OTHER', 'ERR_GUEST_MEMORY_FAULT'].includes(error.code), error.code);
  t.regex(error.detail, /unexpected page fault in private RAM mode/);
  await manager.close();
});

test('async copies wait for the mapping round trip and see the same memory', async (t) => {
  const manager = await build(L1());
  const memory = await manager.client().guestMemory();
  const data = pattern(9, 3 * 4096);
  await memory.writeAtAsync(0x2000_0000, data);
  t.deepEqual(await memory.readAtAsync(0x2000_0000, data.length), data);
  t.deepEqual(memory.read(0x2000_0000, data.length), data);
  const error = await t.throwsAsync(memory.readAtAsync(0xc000_0000, 16));
  assertNoMapping(t, error, '0xc0000000-0xc0001000');
  await manager.close();
});

// ----- the lock extension -----

// Deviation D7.
test('a locked VGA page stays readable while the partition loses it at once; it faults only after release', async (t) => {
  const { manager, partition } = await attached(L1(), { x86: true });
  const memory = await manager.client().guestMemory();
  const data = pattern(0x5a, 4096);
  memory.writeAt(0xa_0000, data);
  const locked = memory.lockGpns([0xa0n]);
  t.is(locked.count, 1);
  t.deepEqual(locked.gpns, [0xa0n]);

  await manager.ramVisibilityControl().setRamVisibility(VGA, RamVisibility.Unmapped);
  // The partition was told at once, before the Promise resolved.
  t.deepEqual(partition.takeLog(), [unmap(0xa_0000, 0x2_0000)]);
  // The manager no longer has the mapping, but this process keeps the locked page.
  t.deepEqual((await manager.inspect()).mappings.filter((m) => m.range.start === 0xa_0000n), []);
  const seen = Buffer.alloc(4096);
  locked.readAt(0, 0, seen);
  t.deepEqual(seen, data);
  t.deepEqual(memory.read(0xa_0000, 4096), data, 'accessor reads of a locked page keep working');
  // A page of the same region that is not locked faults at once.
  assertNoMapping(t, thrown(t, () => memory.read(0xa_1000, 1)), '0xa1000-0xa2000', 0xa_1000);

  locked.release();
  assertNoMapping(t, thrown(t, () => memory.read(0xa_0000, 1)), '0xa0000-0xa1000', 0xa_0000);
  const afterRelease = thrown(t, () => locked.readAt(0, 0, seen));
  t.truthy(afterRelease.code, String(afterRelease));
  locked.release(); // idempotent

  // The content is preserved in the RAM object and comes back with the region.
  await manager.ramVisibilityControl().setRamVisibility(VGA, RamVisibility.ReadWrite);
  t.deepEqual(memory.read(0xa_0000, 4096), data);
  await manager.close();
});

// Deviation D7.
test('a page locked while the region is unmapped shows the new mapping only after release', async (t) => {
  const { manager } = await attached(L1(), { x86: true });
  const memory = await manager.client().guestMemory();
  const control = manager.ramVisibilityControl();
  memory.writeU32(0xa_0000, 0x1111_1111);
  const locked = memory.lockGpns([0xa0n]);
  await control.setRamVisibility(VGA, RamVisibility.Unmapped);
  // A device window surfacing at the VGA range with other content.
  const object = mb.Mappable.allocSharedMemory(0x2_0000, 'vram');
  require('node:fs').writeSync(object.fd, Buffer.from([0x22, 0x22, 0x22, 0x22]), 0, 4, 0);
  const { control: window, region } = manager.deviceMemoryMapper().newRegion(0x2_0000, 'vram');
  await region.map(0, object, 0, 0x2_0000, true);
  await window.mapToGuest(0xa_0000, true);
  // The locked page still shows what it showed when locked; an unlocked page shows the device.
  t.is(memory.readU32(0xa_0000), 0x1111_1111);
  t.is(memory.readU32(0xa_1000), 0);
  locked.release();
  t.is(memory.readU32(0xa_0000), 0x2222_2222);
  await window.unmapFromGuest();
  object.close();
  await manager.close();
});

// Deviation D7.
test('locking a hole fails with a coded error and locks nothing', async (t) => {
  const manager = await build(L1());
  const memory = await manager.client().guestMemory();
  const error = thrown(t, () => memory.lockGpns([0x100n, 0xc0000n]));
  t.true(error instanceof GuestMemoryError);
  t.is(error.kind, 'OutOfRange');
  t.is(error.op, 'lock');
  await manager.close();
});

// Deviation D7.
test('manager close keeps a locked page readable until it is released', async (t) => {
  const manager = await build(L1());
  const memory = await manager.client().guestMemory();
  memory.writeU32(0x5000, 0xabcd_0123);
  const locked = memory.lockGpns([5n]);
  await manager.close();
  const seen = Buffer.alloc(4);
  locked.readAt(0, 0, seen);
  t.is(seen.readUInt32LE(0), 0xabcd_0123);
  const unlocked = thrown(t, () => memory.readU32(0x6000));
  t.is(unlocked.code, 'ERR_GUEST_MEMORY_OUT_OF_RANGE');
  locked.release();
  t.is(thrown(t, () => memory.readU32(0x5000)).code, 'ERR_GUEST_MEMORY_OUT_OF_RANGE');
});
