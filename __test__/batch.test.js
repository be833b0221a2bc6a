// Batched manager changes: manager.apply(changes) applies every change kind in one request, all
// or nothing; its plan is netted (what a later change undoes is not carried out), equals the dry
// run plan(changes), and is exactly what the partitions are asked to do.
'use strict';
const test = require('ava');
const mb = require('../dist');
const { kvmTest } = require('./helpers/kvm');

const { GiB, KiB, range, Vtl, RamVisibility } = mb;
const PAM = Array.from({ length: 12 }, (_, i) => range(0xc0000 + i * 0x4000, 0xc4000 + i * 0x4000));
const VGA = range(0xa0000, 0xc0000);
const MMIO = 0xd000_0000n;

/** x86 legacy RAM, a RecordingPartition (or `partition`), and a 128 KiB window with one 64 KiB mapping, unplaced. */
async function setup(partition = new mb.RecordingPartition()) {
  const layout = mb.MemoryLayout.new(4n * GiB, [range(3n * GiB, 4n * GiB)]);
  const manager = await new mb.GuestMemoryBuilder().x86LegacySupport(true).build(layout);
  await manager.attachPartition(Vtl.Vtl0, partition);
  const { control, region } = manager.deviceMemoryMapper().newRegion(128n * KiB, 'vram');
  const object = mb.Mappable.allocSharedMemory(64n * KiB, 'vram');
  await region.map(0, object, 0, 64n * KiB, true);
  if (partition instanceof mb.RecordingPartition) partition.clearLog();
  return { manager, partition, control, region, object };
}

const partitionOps = (ops) => ops.filter((o) => o.op !== 'invalidate').map(({ op, gpa, size, writable, exec }) => (op === 'map' ? { op, gpa, size, writable, exec } : { op, gpa, size }));
const loggedOps = (log) => log.map(({ op, gpa, size, writable, exec }) => (op === 'map' ? { op, gpa, size, writable, exec } : { op, gpa, size }));
const comparable = (view) => view.map((e) => ({ ...e, range: String(e.range) }));

test('apply: every change kind in one batch, exactly the planned calls, and the flat view the dry run showed', async (t) => {
  const { manager, partition, control, region } = await setup();
  const second = mb.Mappable.allocSharedMemory(64n * KiB, 'second');
  const changes = [
    { kind: 'ramVisibility', range: PAM[0], visibility: RamVisibility.ReadOnly },
    { kind: 'ramVisibility', range: PAM[1], visibility: 'Unmapped' },
    { kind: 'deviceMapToGuest', window: control, gpa: MMIO, writable: true },
    { kind: 'deviceMap', region, offset: 64n * KiB, object: second, fileOffset: 0, len: 64n * KiB, writable: false },
    { kind: 'deviceUnmap', region, offset: 0, len: 64n * KiB },
    { kind: 'ramVisibility', range: VGA, visibility: RamVisibility.ReadOnly },
  ];
  const before = comparable(await manager.flatView());
  const planned = await manager.plan(changes);
  t.deepEqual(partition.log(), [], 'planning calls no partition');
  t.deepEqual(comparable(await manager.flatView()), before, 'planning changes nothing');
  const applied = await manager.apply(changes);
  t.deepEqual(applied.ops, planned.ops);
  t.deepEqual(loggedOps(partition.takeLog()), partitionOps(applied.ops));
  t.deepEqual(
    applied.ops.filter((o) => o.op !== 'invalidate').map((o) => `${o.op} ${o.gpa.toString(16)}`),
    // In phases: every unmap, then the maps; a region's own map after its unmap.
    ['unmap c0000', 'unmap c4000', 'unmap a0000', 'map d0000000', 'map c0000', 'map a0000'],
  );
  t.deepEqual(comparable(await manager.flatView()), comparable(planned.flatView));
  const window = (await manager.flatView()).find((e) => e.range.start === MMIO + 64n * KiB);
  t.is(window.region.name, 'vram');
  t.is(window.backing.object, 'memfd:second', 'the batch mapped the second object there');
  t.is((await manager.flatView()).find((e) => e.range.start === MMIO).backing, null, 'and removed the first');
  await manager.close();
});

test('apply: a refused change leaves nothing of the batch applied, and its error names it', async (t) => {
  const { manager, partition, control, region } = await setup();
  const second = mb.Mappable.allocSharedMemory(64n * KiB, 'second');
  const before = await manager.inspect();
  const error = await t.throwsAsync(
    manager.apply([
      { kind: 'ramVisibility', range: PAM[0], visibility: RamVisibility.ReadOnly },
      { kind: 'deviceMapToGuest', window: control, gpa: MMIO, writable: true },
      { kind: 'deviceMap', region, offset: 64n * KiB, object: second, fileOffset: 0, len: 64n * KiB, writable: true },
      // Overlaps the window's first mapping.
      { kind: 'deviceMap', region, offset: 32n * KiB, object: second, fileOffset: 0, len: 64n * KiB, writable: true },
    ]),
    { instanceOf: mb.MemoryManagerError, code: 'ERR_UNSUPPORTED' },
  );
  t.is(error.changeIndex, 3);
  t.regex(error.message, /overlaps/);
  t.true(error.detail.startsWith('changes[3] (nothing in the batch was applied)'), error.detail);
  t.deepEqual(partition.log(), []);
  t.deepEqual(await manager.inspect(), before);
  // The window kept its record: unplaced, and the batch's mapping was not recorded.
  await region.map(64n * KiB, second, 0, 64n * KiB, true);
  t.deepEqual((await manager.flatView()).filter((e) => e.region?.name === 'vram'), []);
  // The error of a change is the one it makes alone.
  const alone = await t.throwsAsync(manager.ramVisibilityControl().setRamVisibility(range(0xc0000, 0xc8000), 'ReadOnly'));
  const batched = await t.throwsAsync(manager.apply([{ kind: 'ramVisibility', range: range(0xc0000, 0xc8000), visibility: 'ReadOnly' }]));
  t.is(batched.code, alone.code);
  t.is(batched.constructor, alone.constructor);
  t.is(batched.changeIndex, 0);
  await manager.close();
});

test('apply: a batch costs its net change', async (t) => {
  const { manager, partition, control } = await setup();
  // Read-only and back, hidden and shown again, placed and removed again: nothing to do.
  const nothing = await manager.apply([
    { kind: 'ramVisibility', range: PAM[0], visibility: 'ReadOnly' },
    { kind: 'ramVisibility', range: VGA, visibility: 'Unmapped' },
    { kind: 'deviceMapToGuest', window: control, gpa: MMIO, writable: true },
    { kind: 'ramVisibility', range: PAM[0], visibility: 'ReadWrite' },
    { kind: 'deviceUnmapFromGuest', window: control },
    { kind: 'ramVisibility', range: VGA, visibility: 'ReadWrite' },
  ]);
  t.deepEqual(nothing.ops, []);
  t.deepEqual(partition.log(), []);
  // Read-only, read-write, read-only: what read-only alone does.
  const alone = await manager.plan({ kind: 'ramVisibility', range: PAM[0], visibility: 'ReadOnly' });
  const thrice = await manager.apply(['ReadOnly', 'ReadWrite', 'ReadOnly'].map((visibility) => ({ kind: 'ramVisibility', range: PAM[0], visibility })));
  t.deepEqual(thrice.ops, alone.ops);
  t.deepEqual(loggedOps(partition.takeLog()), partitionOps(alone.ops));
  // The twelve PAM ranges read-only: twelve unmaps and twelve maps, in the order given.
  const toggled = await manager.apply(PAM.map((r) => ({ kind: 'ramVisibility', range: r, visibility: 'ReadOnly' })));
  t.is(toggled.ops.filter((o) => o.op === 'map').length, 11, 'PAM 0 already is read-only');
  t.is(toggled.ops.filter((o) => o.op === 'unmap').length, 11);
  await manager.close();
});

test('apply: argument errors name the change; attachPartition cannot be batched', async (t) => {
  const { manager, partition, control } = await setup();
  await t.throwsAsync(manager.apply('ramVisibility'), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE', message: /changes must be an array/ });
  await t.throwsAsync(manager.apply([null]), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE', message: /changes\[0\] must be a PlanChange/ });
  await t.throwsAsync(manager.apply([{ kind: 'ramVisibility', range: PAM[0], visibility: 'ReadOnly' }, { kind: 'ramVisibility', range: PAM[1], visibility: 'Hidden' }]), {
    instanceOf: RangeError,
    code: 'ERR_INVALID_ARG_VALUE',
    message: /changes\[1\]\.visibility/,
  });
  await t.throwsAsync(manager.apply([{ kind: 'deviceMapToGuest', window: {}, gpa: 0, writable: true }]), { code: 'ERR_INVALID_ARG_TYPE', message: /changes\[0\]\.window must be a DeviceMemoryControl/ });
  await t.throwsAsync(manager.apply([{ kind: 'deviceMapToGuest', window: control, gpa: -1, writable: true }]), { message: /changes\[0\]\.gpa/ });
  await t.throwsAsync(manager.apply([{ kind: 'teleport' }]), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE', message: /unknown changes\[0\]\.kind 'teleport'/ });
  const second = new mb.RecordingPartition();
  await t.throwsAsync(manager.apply([{ kind: 'attachPartition', vtl: Vtl.Vtl0, partition: second }]), {
    instanceOf: RangeError,
    code: 'ERR_INVALID_ARG_VALUE',
    message: /changes\[0\] attaches a partition, which a batch cannot do.*attachPartition\(\)/,
  });
  t.deepEqual(partition.log(), []);
  t.deepEqual((await manager.apply([])).ops, [], 'an empty batch does nothing');
  // A window of another manager.
  const other = await setup();
  const foreign = await t.throwsAsync(manager.apply([{ kind: 'deviceMapToGuest', window: other.control, gpa: MMIO, writable: true }]), {
    instanceOf: RangeError,
    code: 'ERR_INVALID_ARG_VALUE',
  });
  t.is(foreign.changeIndex, 0);
  t.regex(foreign.message, /"vram" belongs to another memory manager/);
  await other.manager.close();
  await manager.close();
  await t.throwsAsync(manager.apply([]), { code: 'ERR_MANAGER_GONE' });
});

test('apply and plan: a change refused before the manager sees it (argument, closed window or object) carries its changeIndex too', async (t) => {
  const { manager, partition, control, region } = await setup();
  const first = { kind: 'ramVisibility', range: PAM[0], visibility: 'ReadOnly' };
  const closed = manager.deviceMemoryMapper().newRegion(64n * KiB, 'closed');
  await closed.control.close();
  const gone = mb.Mappable.allocSharedMemory(64n * KiB, 'gone');
  gone.close();
  const cases = [
    [[first, null], 1, TypeError, /changes\[1\] must be a PlanChange/],
    [[first, first, { kind: 'deviceMapToGuest', window: control, gpa: 'x', writable: true }], 2, TypeError, /changes\[2\]\.gpa/],
    [[first, { kind: 'teleport' }], 1, RangeError, /changes\[1\]\.kind/],
    [[first, { kind: 'ramVisibility', range: PAM[1], visibilty: 'Unmapped' }], 1, RangeError, /visibilty/],
    [[first, { kind: 'attachPartition', vtl: Vtl.Vtl0, partition: new mb.RecordingPartition() }], 1, RangeError, /changes\[1\] attaches a partition/],
    [[first, { kind: 'deviceMapToGuest', window: closed.control, gpa: MMIO, writable: true }], 1, mb.MembackingError, /^DeviceMemoryControl is closed$/],
    [[first, { kind: 'deviceMap', region, offset: 64n * KiB, object: gone, fileOffset: 0, len: 64n * KiB, writable: true }], 1, mb.MembackingError, /^Mappable is closed$/],
  ];
  const before = await manager.inspect();
  for (const [changes, index, type, message] of cases) {
    for (const run of [(c) => manager.apply(c), (c) => manager.plan(c)]) {
      const error = await t.throwsAsync(run(changes), { instanceOf: type, message });
      t.is(error.changeIndex, index, error.message);
      // A message that does not name the change has it in `detail`, as the manager's refusals do.
      if (!error.message.includes(`changes[${index}]`)) t.is(error.detail, `changes[${index}] (nothing in the batch was applied)`);
    }
  }
  t.deepEqual(partition.log(), []);
  t.deepEqual(await manager.inspect(), before, 'nothing of any batch was applied');
  await closed.region.close();
  await manager.close();
});

kvmTest('KVM: a batch names the slots it deletes and creates, and the slot table follows them', async (t) => {
  const kvm = await mb.KvmPartition.create();
  const { manager, control } = await setup(kvm);
  const slotsOf = () => new Map(kvm.inspect().slots.map((s) => [s.slot, `${s.gpa}+${s.size}:${s.readonly}`]));
  const before = slotsOf();
  const changes = [...PAM.map((r) => ({ kind: 'ramVisibility', range: r, visibility: 'ReadOnly' })), { kind: 'deviceMapToGuest', window: control, gpa: MMIO, writable: true }];
  const applied = await manager.apply(changes);
  const after = slotsOf();
  const deleted = [...before.keys()].filter((id) => after.get(id) !== before.get(id));
  const created = [...after.keys()].filter((id) => after.get(id) !== before.get(id));
  t.deepEqual(applied.ops.filter((o) => o.op === 'unmap').flatMap((o) => o.slots).sort(), deleted.sort());
  t.deepEqual(applied.ops.filter((o) => o.op === 'map').flatMap((o) => o.slots).sort(), created.sort());
  t.is(deleted.length, 12);
  t.is(created.length, 13);
  // Back to read-write and read-only again in one batch: only the net change, no slot touched.
  kvm.takeSlotLog();
  const net = await manager.apply([...PAM.map((r) => ({ kind: 'ramVisibility', range: r, visibility: 'ReadWrite' })), ...PAM.map((r) => ({ kind: 'ramVisibility', range: r, visibility: 'ReadOnly' }))]);
  t.deepEqual(net.ops, []);
  t.deepEqual(kvm.takeSlotLog(), []);
  await manager.close();
  kvm.close();
});
