// attachPartition through the JavaScript API with RecordingPartition: VTL0 and VTL2 (alias)
// attaches, prefetch, pinning, map and pin failures, closed partitions and managers, remote
// processes and concurrent attaches, with the partition call logs compared exactly (op, gpa, size,
// writable, exec, vaOffset, failed, order) and the error chain PartitionAttachError →
// PartitionMapperError (ERR_MAP / ERR_PIN) → the partition's own error.
'use strict';
const test = require('ava');
const { mb, L1, L2, L1_WINDOW, VGA, X86_BOUNDS, build, attached, map, unmap, prefetch, pin } = require('./fixtures/manager/common');

const { RecordingPartition, Vtl, RamVisibility, PartitionAttachError, PartitionMapperError, range } = mb;

/** Asserts the attach error chain: PartitionAttachError ERR_PARTITION_MAPPER → PartitionMapperError `inner`. */
function assertMapperError(t, error, inner) {
  t.true(error instanceof PartitionAttachError, String(error));
  t.is(error.code, 'ERR_PARTITION_MAPPER');
  t.is(error.message, 'failed to attach partition to memory manager');
  t.true(error.cause instanceof PartitionMapperError, String(error.cause));
  t.is(error.cause.code, inner);
  t.is(error.cause.message, inner === 'ERR_MAP' ? 'failed to map range to partition' : 'failed to pin range to partition');
  // The partition's own (injected) error is the last link.
  t.true(error.cause.cause instanceof Error, 'the partition error is the cause of the mapper error');
  t.is(typeof error.cause.cause.message, 'string');
  t.true(error.cause.cause.message.length > 0);
}

test('attach VTL0 to L2: two maps with VA offsets equal to the GPAs', async (t) => {
  const manager = await build(L2());
  const partition = new RecordingPartition();
  await manager.attachPartition(Vtl.Vtl0, partition);
  t.deepEqual(partition.log(), [map(0, 0xc000_0000, { vaOffset: 0 }), map(0x1_0000_0000n, 0x4000_0000, { vaOffset: 0x1_0000_0000n })]);
  const { partitions } = await manager.inspect();
  t.deepEqual(partitions, [{ offset: 0n, pinMappings: false }]);
  await manager.close();
});

test('attach VTL2 with an alias: alias map first, then the primary; a VTL0 recorder sees only the primary', async (t) => {
  const manager = await build(L1(), { alias: 0x1_0000_0000n });
  const vtl2 = new RecordingPartition();
  await manager.attachPartition(Vtl.Vtl2, vtl2);
  t.deepEqual(vtl2.log(), [map(0x1_0000_0000n, 0x4000_0000, { vaOffset: 0 }), map(0, 0x4000_0000, { vaOffset: 0 })]);
  const vtl0 = new RecordingPartition();
  await manager.attachPartition(Vtl.Vtl0, vtl0);
  t.deepEqual(vtl0.log(), [map(0, 0x4000_0000)]);
  // Vtl1 gets no alias either (only Vtl2 does).
  const vtl1 = new RecordingPartition();
  await manager.attachPartition(Vtl.Vtl1, vtl1);
  t.deepEqual(vtl1.log(), [map(0, 0x4000_0000)]);
  t.deepEqual((await manager.inspect()).partitions.map((p) => p.offset), [0x1_0000_0000n, 0n, 0n, 0n]);
  await manager.close();
});

test('prefetch follows each map; a failing prefetch still lets attach succeed', async (t) => {
  const manager = await build(L1(), { prefetch: true });
  const partition = new RecordingPartition();
  await manager.attachPartition(Vtl.Vtl0, partition);
  t.deepEqual(partition.log(), [map(0, 0x4000_0000), prefetch(0, 0x4000_0000)]);
  const failing = new RecordingPartition();
  failing.failOn('prefetch', 0);
  await manager.attachPartition(Vtl.Vtl0, failing);
  t.deepEqual(failing.log(), [map(0, 0x4000_0000), prefetch(0, 0x4000_0000, true)]);
  // The failing partition stays attached: it receives later changes.
  failing.clearLog();
  await manager.ramVisibilityControl().setRamVisibility(range(0, 0x4000_0000), RamVisibility.Unmapped);
  t.deepEqual(failing.log(), [unmap(0, 0x4000_0000)]);
  await manager.close();
});

test('pinning: each map is followed by a pin; with prefetch the order is map, prefetch, pin', async (t) => {
  const pinned = await build(L1(), { pin: true, x86: true });
  const partition = new RecordingPartition();
  await pinned.attachPartition(Vtl.Vtl0, partition);
  const bounds = [...X86_BOUNDS, 0x4000_0000n];
  const expected = [];
  for (let i = 0; i + 1 < bounds.length; i++) expected.push(map(bounds[i], bounds[i + 1] - bounds[i]), pin(bounds[i], bounds[i + 1] - bounds[i]));
  t.deepEqual(partition.log(), expected);
  t.true((await pinned.inspect()).pinMappings);
  await pinned.close();

  const both = await build(L1(), { pin: true, prefetch: true });
  const other = new RecordingPartition();
  await both.attachPartition(Vtl.Vtl0, other);
  t.deepEqual(other.log(), [map(0, 0x4000_0000), prefetch(0, 0x4000_0000), pin(0, 0x4000_0000)]);
  await both.close();
});

test('a pin failure unmaps the range and the whole window; PartitionMapper(Pin); later changes skip it', async (t) => {
  const manager = await build(L1(), { pin: true });
  const partition = new RecordingPartition();
  partition.failOn('pin', 0);
  const error = await t.throwsAsync(manager.attachPartition(Vtl.Vtl0, partition));
  assertMapperError(t, error, 'ERR_PIN');
  t.deepEqual(partition.log(), [map(0, 0x4000_0000), pin(0, 0x4000_0000, true), unmap(0, 0x4000_0000), unmap(0, L1_WINDOW)]);
  t.deepEqual((await manager.inspect()).partitions, []);
  partition.clearLog();
  await manager.ramVisibilityControl().setRamVisibility(range(0, 0x4000_0000), RamVisibility.Unmapped);
  await manager.ramVisibilityControl().setRamVisibility(range(0, 0x4000_0000), RamVisibility.ReadWrite);
  t.deepEqual(partition.log(), []);
  // The manager is unharmed: a good partition attaches and gets the current state.
  const good = new RecordingPartition();
  await manager.attachPartition(Vtl.Vtl0, good);
  t.deepEqual(good.log(), [map(0, 0x4000_0000), pin(0, 0x4000_0000)]);
  await manager.close();
});

test('a map failure mid-attach stops there and unmaps the whole window; PartitionMapper(Map)', async (t) => {
  const manager = await build(L1(), { x86: true });
  const partition = new RecordingPartition();
  partition.failOn('map', 0xa_0000);
  const error = await t.throwsAsync(manager.attachPartition(Vtl.Vtl0, partition));
  assertMapperError(t, error, 'ERR_MAP');
  t.deepEqual(partition.log(), [map(0, 0xa_0000), map(0xa_0000, 0x2_0000, { failed: true }), unmap(0, L1_WINDOW)]);
  // Retrying after the rule is cleared works and maps everything.
  partition.clearFailures();
  partition.clearLog();
  await manager.attachPartition(Vtl.Vtl0, partition);
  t.is(partition.log().length, 16);
  await manager.close();
});

test('a partition closed after attaching gets no calls and causes no errors', async (t) => {
  const { manager, partition } = await attached(L1(), { x86: true });
  partition.close();
  const control = manager.ramVisibilityControl();
  await control.setRamVisibility(VGA, RamVisibility.Unmapped);
  await control.setRamVisibility(VGA, RamVisibility.ReadOnly);
  await control.setRamVisibility(VGA, RamVisibility.ReadWrite);
  t.deepEqual(partition.log(), []);
  // A closed partition cannot be attached again (ERR_CLOSED), and its log stays readable.
  const error = await t.throwsAsync(manager.attachPartition(Vtl.Vtl0, partition));
  t.is(error.code, 'ERR_CLOSED');
  t.deepEqual(partition.takeLog(), []);
  await manager.close();
});

test('attaching with a remote process is Unsupported on Linux (RemoteWithPrivateMemory is Windows-only)', async (t) => {
  for (const options of [{}, { private: true }]) {
    const manager = await build(L1(), options);
    const partition = new RecordingPartition();
    const error = await t.throwsAsync(manager.attachPartition(Vtl.Vtl0, partition, { remoteProcess: process.pid }));
    t.true(error instanceof PartitionAttachError, String(error));
    t.is(error.code, 'ERR_UNSUPPORTED');
    t.deepEqual(partition.log(), []);
    t.deepEqual((await manager.inspect()).partitions, []);
    await manager.close();
  }
});

test('a failed VTL2 attach is not rolled back: the alias mapper stays and gets later changes', async (t) => {
  const manager = await build(L1(), { alias: 0x1_0000_0000n });
  const partition = new RecordingPartition();
  partition.failOn('map', 0);
  const error = await t.throwsAsync(manager.attachPartition(Vtl.Vtl2, partition));
  assertMapperError(t, error, 'ERR_MAP');
  t.deepEqual(partition.takeLog(), [map(0x1_0000_0000n, 0x4000_0000, { vaOffset: 0 }), map(0, 0x4000_0000, { failed: true }), unmap(0, L1_WINDOW)]);
  t.deepEqual((await manager.inspect()).partitions, [{ offset: 0x1_0000_0000n, pinMappings: false }]);
  await manager.ramVisibilityControl().setRamVisibility(range(0, 0x4000_0000), RamVisibility.Unmapped);
  t.deepEqual(partition.log(), [unmap(0x1_0000_0000n, 0x4000_0000)]);
  await manager.close();
});

test('an attached partition is refused by a second attach (this manager, any VTL, or another) before any call', async (t) => {
  const manager = await build(L1(), { alias: 0x1_0000_0000n });
  const other = await build(L1());
  const partition = new RecordingPartition();
  await manager.attachPartition(Vtl.Vtl0, partition);
  partition.clearLog();
  for (const [target, vtl, where] of [[manager, Vtl.Vtl0, 'this'], [manager, Vtl.Vtl2, 'this'], [other, Vtl.Vtl0, 'another']]) {
    const error = await t.throwsAsync(target.attachPartition(vtl, partition), { instanceOf: PartitionAttachError });
    t.is(error.code, 'ERR_ALREADY_ATTACHED');
    t.true(error.message.startsWith(`partition is already attached to ${where} memory manager`), error.message);
    t.deepEqual(partition.log(), [], 'no map and no whole-window unmap');
    // The dry run predicts the refusal.
    const planned = await t.throwsAsync(target.plan({ kind: 'attachPartition', vtl, partition }), { instanceOf: PartitionAttachError });
    t.is(planned.code, 'ERR_ALREADY_ATTACHED');
    t.is(planned.message, error.message);
  }
  t.deepEqual((await manager.inspect()).partitions, [{ offset: 0n, pinMappings: false }]);
  t.deepEqual((await other.inspect()).partitions, []);
  // The first attach is whole: a change reaches it once, with VA offsets still from its window.
  await manager.ramVisibilityControl().setRamVisibility(range(0, 0x4000_0000), RamVisibility.Unmapped);
  await manager.ramVisibilityControl().setRamVisibility(range(0, 0x4000_0000), RamVisibility.ReadWrite);
  t.deepEqual(partition.takeLog(), [unmap(0, 0x4000_0000), map(0, 0x4000_0000)]);
  // A failed VTL2 attach that kept its alias mapper keeps the partition attached too.
  const vtl2 = new RecordingPartition();
  vtl2.failOn('map', 0);
  assertMapperError(t, await t.throwsAsync(manager.attachPartition(Vtl.Vtl2, vtl2)), 'ERR_MAP');
  vtl2.clearFailures();
  vtl2.clearLog();
  t.is((await t.throwsAsync(manager.attachPartition(Vtl.Vtl2, vtl2))).code, 'ERR_ALREADY_ATTACHED');
  t.deepEqual(vtl2.log(), []);
  // Closing the manager releases its partitions.
  await manager.close();
  partition.clearLog();
  await other.attachPartition(Vtl.Vtl0, partition);
  t.deepEqual(partition.log(), [map(0, 0x4000_0000)]);
  await other.close();
});

test('a visibility change reaches the alias mapping, then the primary one', async (t) => {
  const { manager, partition } = await attached(L1(), { x86: true, alias: 0x1_0000_0000n }, Vtl.Vtl2);
  await manager.ramVisibilityControl().setRamVisibility(VGA, RamVisibility.Unmapped);
  t.deepEqual(partition.takeLog(), [unmap(0x1_000a_0000n, 0x2_0000), unmap(0xa_0000, 0x2_0000)]);
  await manager.ramVisibilityControl().setRamVisibility(VGA, RamVisibility.ReadWrite);
  t.deepEqual(partition.log(), [map(0x1_000a_0000n, 0x2_0000, { vaOffset: 0xa_0000 }), map(0xa_0000, 0x2_0000)]);
  await manager.close();
});

test('a partition attached to a closed manager fails with a coded error; the partition is untouched', async (t) => {
  const manager = await build(L1());
  await manager.close();
  const partition = new RecordingPartition();
  const error = await t.throwsAsync(manager.attachPartition(Vtl.Vtl0, partition), { instanceOf: mb.MemoryManagerError });
  t.is(error.code, 'ERR_MANAGER_GONE');
  t.deepEqual(partition.log(), []);
});

test('concurrent attaches are serialized: each partition gets the whole set in order', async (t) => {
  const manager = await build(L1(), { x86: true, alias: 0x1_0000_0000n });
  const partitions = Array.from({ length: 4 }, () => new RecordingPartition());
  await Promise.all(partitions.map((p, i) => manager.attachPartition(i % 2 ? Vtl.Vtl2 : Vtl.Vtl0, p)));
  for (const [i, p] of partitions.entries()) {
    const log = p.log();
    t.is(log.length, i % 2 ? 32 : 16);
    if (i % 2) t.true(log.slice(0, 16).every((c) => c.gpa >= 0x1_0000_0000n) && log.slice(16).every((c) => c.gpa < 0x1_0000_0000n));
  }
  await manager.close();
});
