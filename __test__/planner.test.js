// The dry-run planner: flatView() and plan(change); applying a planned change produces exactly
// the planned partition calls, in order, and leaves the planned flat view.
'use strict';
const test = require('ava');
const fc = require('fast-check');
const mb = require('../dist');
const { kvmTest } = require('./helpers/kvm');

const { GiB, MiB, KiB, range, Vtl } = mb;
const PAM = Array.from({ length: 12 }, (_, i) => range(0xc0000 + i * 0x4000, 0xc4000 + i * 0x4000));
const VGA = range(0xa0000, 0xc0000);

async function setup(options = {}) {
  const layout = mb.MemoryLayout.new(4n * GiB, [range(3n * GiB, 4n * GiB)]);
  let builder = new mb.GuestMemoryBuilder().x86LegacySupport(true);
  if (options.alias !== undefined) builder = builder.vtl0AliasMap(options.alias);
  const manager = await builder.build(layout);
  const partition = new mb.RecordingPartition();
  await manager.attachPartition(options.vtl ?? Vtl.Vtl0, partition);
  partition.clearLog();
  return { manager, partition };
}

const comparable = (view) => view.map((e) => ({ ...e, range: String(e.range) }));
const partitionOps = (ops) => ops.filter((o) => o.op !== 'invalidate').map(({ op, gpa, size, writable, exec }) => (op === 'map' ? { op, gpa, size, writable, exec } : { op, gpa, size }));
const loggedOps = (log) => log.map(({ op, gpa, size, writable, exec }) => (op === 'map' ? { op, gpa, size, writable, exec } : { op, gpa, size }));

test('the initial flat view follows the RAM regions and their backing offsets', async (t) => {
  const { manager } = await setup();
  const view = await manager.flatView();
  t.is(view.length, 17);
  t.deepEqual(
    view.slice(0, 3).map((e) => [String(e.range), e.region.name, e.backing.object, e.backing.fileOffset, e.writable, e.executable]),
    [
      ['0x0-0xa0000', 'ram', 'memfd:guest-ram', 0n, true, true],
      ['0xa0000-0xc0000', 'ram', 'memfd:guest-ram', 0xa0000n, true, true],
      ['0xc0000-0xc4000', 'ram', 'memfd:guest-ram', 0xc0000n, true, true],
    ],
  );
  t.is(String(view[16].range), '0x100000000-0x140000000');
  t.is(view[16].backing.fileOffset, 3n * GiB);
  await manager.close();
});

test('VGA hidden: the exact plan, nothing applied by planning, then applied exactly', async (t) => {
  const { manager, partition } = await setup();
  const before = await manager.flatView();
  const plan = await manager.plan({ kind: 'ramVisibility', range: VGA, visibility: mb.RamVisibility.Unmapped });
  t.deepEqual(plan.ops, [
    { op: 'unmap', partition: 0, gpa: 0xa0000n, size: 0x20000n, reason: 'VGA window 0xa0000-0xc0000 hidden: RAM visibility Unmapped' },
    { op: 'invalidate', gpa: 0xa0000n, size: 0x20000n, reason: 'VGA window 0xa0000-0xc0000 hidden: RAM visibility Unmapped' },
  ]);
  t.deepEqual(partition.log(), [], 'planning calls no partition');
  t.deepEqual(comparable(await manager.flatView()), comparable(before), 'planning changes nothing');
  const vga = plan.flatView.find((e) => e.range.start === 0xa0000n);
  t.is(vga.region, null);
  t.deepEqual(vga.hidden.map((h) => h.name), ['ram']);
  await manager.ramVisibilityControl().setRamVisibility(VGA, mb.RamVisibility.Unmapped);
  t.deepEqual(loggedOps(partition.takeLog()), partitionOps(plan.ops));
  t.deepEqual(comparable(await manager.flatView()), comparable(plan.flatView));
  await manager.close();
});

test('a PAM toggle plans calls only inside the toggled region', async (t) => {
  const { manager } = await setup();
  for (const [i, visibility] of [[3, 'ReadOnly'], [7, 'Unmapped'], [0, 'ReadWrite']]) {
    const plan = await manager.plan({ kind: 'ramVisibility', range: PAM[i], visibility });
    for (const op of plan.ops) {
      t.true(op.gpa >= PAM[i].start && op.gpa + op.size <= PAM[i].end, `${op.op} ${op.gpa} stays in ${PAM[i]}`);
    }
    await manager.ramVisibilityControl().setRamVisibility(PAM[i], visibility);
  }
  await manager.close();
});

test('with a VTL0 alias map, a VTL2 partition appears twice in plans (alias first)', async (t) => {
  const alias = 1n << 40n;
  const { manager, partition } = await setup({ alias, vtl: Vtl.Vtl2 });
  const plan = await manager.plan({ kind: 'ramVisibility', range: VGA, visibility: 'ReadOnly' });
  const unmaps = plan.ops.filter((o) => o.op === 'unmap');
  t.deepEqual(unmaps.map((o) => [o.partition, o.gpa]), [[0, alias + 0xa0000n], [1, 0xa0000n]]);
  await manager.ramVisibilityControl().setRamVisibility(VGA, 'ReadOnly');
  t.deepEqual(loggedOps(partition.takeLog()), partitionOps(plan.ops));
  await manager.close();
});

test('device windows: plan placement over hidden VGA and in the MMIO gap, then removal', async (t) => {
  const { manager, partition } = await setup();
  await manager.ramVisibilityControl().setRamVisibility(VGA, 'Unmapped');
  partition.clearLog();
  const { control, region } = manager.deviceMemoryMapper().newRegion(128n * KiB, 'vga-device');
  const object = mb.Mappable.allocSharedMemory(128n * KiB, 'vga-device');
  await region.map(0, object, 0, 128n * KiB, true);
  const placed = await manager.plan({ kind: 'deviceMapToGuest', window: control, gpa: 0xa0000, writable: true });
  t.deepEqual(partitionOps(placed.ops), [{ op: 'map', gpa: 0xa0000n, size: 0x20000n, writable: true, exec: true }]);
  const entry = placed.flatView.find((e) => e.range.start === 0xa0000n);
  t.is(entry.region.name, 'vga-device');
  t.is(entry.backing.object, 'memfd:vga-device');
  await control.mapToGuest(0xa0000, true);
  t.deepEqual(loggedOps(partition.takeLog()), partitionOps(placed.ops));
  const removed = await manager.plan({ kind: 'deviceUnmapFromGuest', window: control });
  t.deepEqual(partitionOps(removed.ops), [{ op: 'unmap', gpa: 0xa0000n, size: 0x20000n }]);
  await control.unmapFromGuest();
  t.deepEqual(loggedOps(partition.takeLog()), partitionOps(removed.ops));
  t.deepEqual(comparable(await manager.flatView()), comparable(removed.flatView));
  await manager.close();
});

test('bad input to flatView and plan', async (t) => {
  const { manager } = await setup();
  await t.throwsAsync(manager.plan(null), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  await t.throwsAsync(manager.plan({ kind: 'frob' }), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE' });
  await t.throwsAsync(manager.plan({ kind: 'ramVisibility', range: VGA, visibility: 'Hidden' }), { instanceOf: RangeError });
  await t.throwsAsync(manager.plan({ kind: 'ramVisibility', range: { start: 1, end: 2 }, visibility: 'Unmapped' }), { instanceOf: RangeError });
  await t.throwsAsync(manager.plan({ kind: 'ramVisibility', range: range(0xa0000, 0xb0000), visibility: 'Unmapped' }), { instanceOf: mb.MemoryManagerError, code: 'ERR_INVALID_RAM_REGION' });
  await t.throwsAsync(manager.plan({ kind: 'deviceMapToGuest', window: {}, gpa: 0, writable: true }), { instanceOf: TypeError });
  await t.throwsAsync(manager.plan({ kind: 'deviceMapToGuest', window: manager.deviceMemoryMapper().newRegion(4096, 'w').control, gpa: -1, writable: true }), { instanceOf: TypeError });
  await manager.close();
  await t.throwsAsync(manager.flatView(), { code: 'ERR_MANAGER_GONE' });
});

test("plan refuses a change naming another manager's window, as apply does, and plans nothing", async (t) => {
  const { manager, partition } = await setup();
  const other = await setup();
  const { control, region } = other.manager.deviceMemoryMapper().newRegion(4096, 'foreign');
  const object = mb.Mappable.allocSharedMemory(4096, 'foreign');
  const changes = [
    { kind: 'deviceMapToGuest', window: control, gpa: 0xd000_0000, writable: true },
    { kind: 'deviceUnmapFromGuest', window: control },
    { kind: 'deviceMap', region, offset: 0, object, fileOffset: 0, len: 4096, writable: true },
    { kind: 'deviceUnmap', region, offset: 0, len: 4096 },
  ];
  for (const change of changes) {
    const error = await t.throwsAsync(manager.plan(change), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE' }, change.kind);
    t.regex(error.message, /belongs to another memory manager/);
    await t.throwsAsync(manager.apply([change]), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE' }, change.kind);
  }
  // The manager that made the window plans it.
  const own = await other.manager.plan(changes[0]);
  t.true(own.ops.some((op) => op.op === 'map' && op.gpa === 0xd000_0000n));
  t.deepEqual(partition.log(), []);
  t.deepEqual(other.partition.log(), []);
  await other.manager.close();
  await manager.close();
});

test('property: for random change sequences, applying each plan gives exactly the planned calls and flat view', async (t) => {
  const change = fc.oneof(
    fc.record({ kind: fc.constant('ram'), region: fc.integer({ min: 0, max: 12 }), visibility: fc.constantFrom('Unmapped', 'ReadOnly', 'ReadWrite') }),
    fc.record({ kind: fc.constant('place'), window: fc.integer({ min: 0, max: 1 }), slot: fc.integer({ min: 0, max: 3 }) }),
    fc.record({ kind: fc.constant('unplace'), window: fc.integer({ min: 0, max: 1 }) }),
  );
  let runs = 0;
  await fc.assert(
    fc.asyncProperty(fc.array(change, { minLength: 1, maxLength: 12 }), async (changes) => {
      runs += 1;
      const { manager, partition } = await setup();
      try {
        const mapper = manager.deviceMemoryMapper();
        const windows = [mapper.newRegion(64n * KiB, 'dev0').control, mapper.newRegion(64n * KiB, 'dev1').control];
        // Window slots: the VGA window and three places in the MMIO gap (some overlap).
        const slots = [0xa0000n, 3n * GiB, 3n * GiB + 32n * KiB, 3n * GiB + MiB];
        const regions = [VGA, ...PAM];
        for (const c of changes) {
          let planned;
          let apply;
          if (c.kind === 'ram') {
            planned = await manager.plan({ kind: 'ramVisibility', range: regions[c.region], visibility: c.visibility });
            apply = () => manager.ramVisibilityControl().setRamVisibility(regions[c.region], c.visibility);
          } else if (c.kind === 'place') {
            try {
              planned = await manager.plan({ kind: 'deviceMapToGuest', window: windows[c.window], gpa: slots[c.slot], writable: true });
            } catch (error) {
              // Overlapping the other window is refused by the plan and by the change alike;
              // the failed change leaves the window unplaced (its old placement,
              // if any, was torn down first).
              if (error.code !== 'ERR_OVERLAP_ERROR') throw error;
              await t.throwsAsync(windows[c.window].mapToGuest(slots[c.slot], true), { code: 'ERR_OVERLAP_ERROR' });
              partition.takeLog();
              const name = c.window === 0 ? 'dev0' : 'dev1';
              if ((await manager.flatView()).some((e) => e.region && e.region.name === name)) return false;
              continue;
            }
            apply = () => windows[c.window].mapToGuest(slots[c.slot], true);
          } else {
            planned = await manager.plan({ kind: 'deviceUnmapFromGuest', window: windows[c.window] });
            apply = () => windows[c.window].unmapFromGuest();
          }
          if (partition.log().length !== 0) return false;
          await apply();
          const logged = loggedOps(partition.takeLog());
          if (JSON.stringify(logged, (_k, v) => (typeof v === 'bigint' ? String(v) : v)) !== JSON.stringify(partitionOps(planned.ops), (_k, v) => (typeof v === 'bigint' ? String(v) : v))) {
            t.log('change', c, 'planned', planned.ops, 'logged', logged);
            return false;
          }
          const after = comparable(await manager.flatView());
          if (JSON.stringify(after, (_k, v) => (typeof v === 'bigint' ? String(v) : v)) !== JSON.stringify(comparable(planned.flatView), (_k, v) => (typeof v === 'bigint' ? String(v) : v))) {
            t.log('change', c, 'flat view differs');
            return false;
          }
        }
        return true;
      } finally {
        await manager.close();
      }
    }),
    { numRuns: 40 },
  );
  t.true(runs >= 40);
});

kvmTest('KVM: plans name the slot ids they create and delete, and the slot table follows them', async (t) => {
  const kvm = await mb.KvmPartition.create();
  const layout = mb.MemoryLayout.new(4n * GiB, [range(3n * GiB, 4n * GiB)]);
  const manager = await new mb.GuestMemoryBuilder().x86LegacySupport(true).build(layout);
  await manager.attachPartition(Vtl.Vtl0, kvm);
  const slotsOf = () => new Map(kvm.inspect().slots.map((s) => [s.slot, `${s.gpa}+${s.size}:${s.readonly}`]));
  for (const [target, visibility] of [[VGA, 'ReadOnly'], [PAM[5], 'Unmapped'], [PAM[5], 'ReadWrite'], [VGA, 'Unmapped'], [VGA, 'ReadWrite']]) {
    const before = slotsOf();
    const plan = await manager.plan({ kind: 'ramVisibility', range: target, visibility });
    await manager.ramVisibilityControl().setRamVisibility(target, visibility);
    const after = slotsOf();
    const deleted = [...before.keys()].filter((id) => after.get(id) !== before.get(id));
    const created = [...after.keys()].filter((id) => after.get(id) !== before.get(id));
    t.deepEqual(plan.ops.filter((o) => o.op === 'unmap').flatMap((o) => o.slots).sort(), deleted.sort(), `${target} ${visibility}: deleted slots`);
    t.deepEqual(plan.ops.filter((o) => o.op === 'map').flatMap((o) => o.slots).sort(), created.sort(), `${target} ${visibility}: created slots`);
    // Only the toggled region's slots change.
    for (const id of [...deleted, ...created]) {
      const entry = before.get(id) ?? after.get(id);
      const gpa = BigInt(entry.split('+')[0]);
      t.true(gpa >= target.start && gpa < target.end, `slot ${id} lies in ${target}`);
    }
  }
  await manager.close();
  kvm.close();
});

test('window mappings and partition attach: planned, then applied exactly', async (t) => {
  const { manager, partition } = await setup();
  const { control, region } = manager.deviceMemoryMapper().newRegion(128n * KiB, 'gfx');
  await control.mapToGuest(3n * GiB, true);
  partition.clearLog();
  const object = mb.Mappable.allocSharedMemory(64n * KiB, 'gfx-bank');
  const mapPlan = await manager.plan({ kind: 'deviceMap', region, offset: 64n * KiB, object, fileOffset: 0, len: 64n * KiB, writable: false });
  // The window's region is mapped whole into the partition already: a new mapping inside it
  // changes only what backs the VA (mapping-manager bookkeeping), so no partition call is planned.
  t.deepEqual(partitionOps(mapPlan.ops), []);
  t.deepEqual(partition.log(), [], 'planning calls no partition');
  await region.map(64n * KiB, object, 0, 64n * KiB, false);
  t.deepEqual(loggedOps(partition.takeLog()), partitionOps(mapPlan.ops));
  const entry = mapPlan.flatView.find((e) => e.range.start === 3n * GiB + 64n * KiB);
  t.is(entry.backing.object, 'memfd:gfx-bank');
  const unmapPlan = await manager.plan({ kind: 'deviceUnmap', region, offset: 64n * KiB, len: 64n * KiB });
  await region.unmap(64n * KiB, 64n * KiB);
  t.deepEqual(loggedOps(partition.takeLog()), partitionOps(unmapPlan.ops));
  await t.throwsAsync(manager.plan({ kind: 'deviceUnmap', region, offset: 0, len: 100 }), { instanceOf: RangeError });
  await t.throwsAsync(manager.plan({ kind: 'deviceMap', region: control, offset: 0, object, fileOffset: 0, len: 4096, writable: true }), { instanceOf: TypeError });

  const second = new mb.RecordingPartition();
  const attachPlan = await manager.plan({ kind: 'attachPartition', vtl: Vtl.Vtl0, partition: second });
  t.true(attachPlan.ops.every((o) => o.op === 'invalidate' || o.partition === 1), 'the new partition is partition 1');
  await manager.attachPartition(Vtl.Vtl0, second);
  t.deepEqual(loggedOps(second.log()), partitionOps(attachPlan.ops));
  t.deepEqual(partition.log(), [], 'the first partition sees nothing');
  await manager.close();
});

kvmTest('KVM: planning an attach names the slots the new partition will get', async (t) => {
  const kvm = await mb.KvmPartition.create();
  const { manager } = await setup();
  const plan = await manager.plan({ kind: 'attachPartition', vtl: Vtl.Vtl0, partition: kvm });
  await manager.attachPartition(Vtl.Vtl0, kvm);
  const slots = kvm.inspect().slots;
  const maps = plan.ops.filter((o) => o.op === 'map');
  t.is(maps.length, slots.length);
  for (const op of maps) {
    const slot = slots.find((s) => s.gpa === op.gpa);
    t.deepEqual(op.slots, [slot.slot], `slot at ${op.gpa}`);
  }
  await manager.close();
  kvm.close();
});

test('planning a change of a closed window half names that half in its ERR_CLOSED', async (t) => {
  const { manager } = await setup();
  const { control, region } = manager.deviceMemoryMapper().newRegion(64n * KiB, 'closed-halves');
  await control.close();
  for (const change of [
    { kind: 'deviceMapToGuest', window: control, gpa: 3n * GiB, writable: true },
    { kind: 'deviceUnmapFromGuest', window: control },
  ]) {
    const error = await t.throwsAsync(manager.plan(change), { code: 'ERR_CLOSED' });
    t.is(error.message, 'DeviceMemoryControl is closed', change.kind);
  }
  await region.close();
  const object = mb.Mappable.allocSharedMemory(64n * KiB, 'closed-halves');
  const error = await t.throwsAsync(manager.plan({ kind: 'deviceMap', region, offset: 0, object, fileOffset: 0, len: 64n * KiB, writable: true }), { code: 'ERR_CLOSED' });
  t.is(error.message, 'DeviceMemoryRegion is closed');
  object.close();
  await manager.close();
});

test('flatView() and plan() called before an unawaited change show the state before it', async (t) => {
  const { manager } = await setup();
  t.teardown(() => manager.close());
  const vis = manager.ramVisibilityControl();
  for (let i = 0; i < 20; i++) {
    const view = manager.flatView();
    const plan = manager.plan({ kind: 'ramVisibility', range: VGA, visibility: 'Unmapped' });
    const hide = vis.setRamVisibility(VGA, 'Unmapped');
    const [before, planned] = await Promise.all([view, plan, hide]);
    t.truthy(before.find((e) => e.range.equals(VGA) && e.region !== null), 'VGA still visible in the earlier view');
    t.true(planned.ops.length > 0, 'hiding visible VGA has work to do');
    t.deepEqual((await manager.plan({ kind: 'ramVisibility', range: VGA, visibility: 'Unmapped' })).ops, [], 'a later plan sees it hidden');
    await vis.setRamVisibility(VGA, 'ReadWrite');
  }
});
