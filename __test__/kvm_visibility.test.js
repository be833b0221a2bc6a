// What a KVM guest sees as the memory manager changes the guest-physical map (issue 5):
// setRamVisibility on legacy regions (64-bit CPL3 guest and a tiny real-mode program for the
// VGA window and PAM ranges), device memory placed in an MMIO gap and removed, the VTL0 alias
// map of a VTL2 partition, and the slot table, which changes only where a region changed.
//
// Every test is skipped, with the reason in its title, when KvmPartition.create() fails with
// ERR_KVM_UNAVAILABLE (helpers/kvm.js).
'use strict';
const test = require('ava');
const mb = require('../dist');
const { kvmTest } = require('./helpers/kvm');

const { GiB, MiB, KiB, range, MemoryLayout, GuestMemoryBuilder, KvmPartition, VcpuMode, Vtl, RamVisibility, Mappable, SparseMapping, guestPrograms } = mb;


const programs = guestPrograms();
const CODE = 0x1000n;
const PAGE_TABLES = range(2n * MiB, 2n * MiB + 2n * MiB + 8n * KiB);
const RUN = { timeoutMs: 20000 };
const VGA = range(0xa0000, 0xc0000);
const PAM = range(0xc8000, 0xcc000);

/**
 * Real mode, this test's own program (keep it tiny: real mode is emulated on PVM):
 *   mov ds, bx; mov al, [si]; out 0x11, al; mov [si], dl; out 0x10, al; hlt; jmp hlt
 * It reads the byte at bx:si, reports it on the result port, stores dl there, reports done.
 */
const REAL_MODE_READ_THEN_WRITE = Buffer.from([0x8e, 0xdb, 0x8a, 0x04, 0xe6, 0x11, 0x88, 0x14, 0xe6, 0x10, 0xf4, 0xeb, 0xfd]);

/** 64 MiB of RAM below the x86 MMIO gap [3 GiB, 4 GiB). */
const smallLayout = () => MemoryLayout.new(64n * MiB, [range(3n * GiB, 4n * GiB)]);

/** A manager for `layout` (x86 legacy support unless told), a KVM partition attached at `vtl`, guest memory. */
async function attached(t, { layout = smallLayout(), legacy = true, alias = null, vtl = Vtl.Vtl0 } = {}) {
  const manager = await new GuestMemoryBuilder().x86LegacySupport(legacy).vtl0AliasMap(alias).build(layout);
  const partition = await KvmPartition.create();
  await manager.attachPartition(vtl, partition);
  const memory = await manager.client().guestMemory();
  const vcpus = [];
  t.teardown(async () => {
    for (const vcpu of vcpus) vcpu.close();
    partition.close();
    await manager.close();
  });
  const vcpu = async (options) => {
    const v = await partition.createVcpu(options);
    vcpus.push(v);
    return v;
  };
  return { manager, partition, memory, vcpu, visibility: manager.ramVisibilityControl() };
}

/** Copies `program` to CODE and points rip at it with `registers` set. */
function start(memory, vcpu, program, registers = {}) {
  memory.writeAt(CODE, program);
  vcpu.setRegisters({ rip: CODE, ...registers });
}

function isDone(t, exit) {
  t.is(exit.kind, 'IoOut', JSON.stringify(exit, (_, v) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : v)));
  t.is(exit.port, programs.donePort);
}

/** The slot table as gpa → {slot, size, readonly}. */
function slots(partition) {
  return new Map(partition.inspect().slots.map((s) => [s.gpa, { slot: s.slot, size: s.size, readonly: s.readonly }]));
}

/** Asserts that every slot outside `region` is unchanged between two slot tables. */
function onlyRegionChanged(t, before, after, region) {
  const outside = (table) => [...table].filter(([gpa]) => gpa < region.start || gpa >= region.end);
  t.deepEqual(outside(after), outside(before), `slots outside ${region} changed`);
}

kvmTest('setRamVisibility on a PAM region: Unmapped is an MMIO exit, ReadOnly reads RAM and traps writes, ReadWrite writes RAM; only its slot changes', async (t) => {
  const { partition, memory, vcpu: newVcpu, visibility } = await attached(t);
  const vcpu = await newVcpu({ pageTables: PAGE_TABLES });
  const load = PAM.start + 0x100n;
  const store = PAM.start + 0x108n;
  const value = 0x0102_0304_0506_0708n;
  memory.writeU64(load, value);
  const run = async (rdx) => {
    start(memory, vcpu, programs.loadAddStore, { rdi: load, rsi: store, rdx });
    return vcpu.run(RUN);
  };

  // Attached: RAM, read and written by the guest.
  const initial = slots(partition);
  t.deepEqual(initial.get(PAM.start), { slot: initial.get(PAM.start).slot, size: 16n * KiB, readonly: false });
  isDone(t, await run(1n));
  t.is(memory.readU64(store), value + 1n);
  partition.takeSlotLog();

  // Unmapped: the load is an MMIO read at that address, the store an MMIO write.
  await visibility.setRamVisibility(PAM, RamVisibility.Unmapped);
  const unmapped = slots(partition);
  t.false(unmapped.has(PAM.start));
  t.is(unmapped.size, initial.size - 1);
  onlyRegionChanged(t, initial, unmapped, PAM);
  t.deepEqual(
    partition.takeSlotLog().map((e) => [e.op, e.gpa, e.size, e.created, e.deleted]),
    [['unmap', PAM.start, PAM.len, [], [initial.get(PAM.start).slot]]],
  );
  t.deepEqual(await run(2n), { kind: 'MmioRead', address: load, size: 8 });
  vcpu.completeRead(0x1000n);
  const trapped = await vcpu.run(RUN);
  t.is(trapped.kind, 'MmioWrite');
  t.is(trapped.address, store);
  t.is(trapped.data.readBigUInt64LE(0), 0x1002n);
  isDone(t, await vcpu.run(RUN));
  // (GuestMemory cannot read the region now either: the VMM's view follows visibility.)
  t.throws(() => memory.readU64(store), { code: 'ERR_GUEST_MEMORY_OUT_OF_RANGE' });

  // ReadOnly: the load sees RAM, the store is an MMIO write exit; RAM keeps its value.
  await visibility.setRamVisibility(PAM, RamVisibility.ReadOnly);
  const readOnly = slots(partition);
  t.is(readOnly.get(PAM.start)?.readonly, true);
  t.is(readOnly.get(PAM.start).size, 16n * KiB);
  onlyRegionChanged(t, initial, readOnly, PAM);
  t.deepEqual(
    partition.takeSlotLog().map((e) => [e.op, e.gpa, e.size, e.deleted.length, e.created.length]),
    [['map', PAM.start, PAM.len, 0, 1]],
  );
  const write = await run(3n);
  t.is(write.kind, 'MmioWrite');
  t.is(write.address, store);
  t.is(write.size, 8);
  t.is(write.data.readBigUInt64LE(0), value + 3n, 'the guest read RAM');
  isDone(t, await vcpu.run(RUN));
  t.is(memory.readU64(store), value + 1n, 'neither the unmapped nor the read-only region was written by the guest');

  // Back to ReadWrite: the store lands in RAM.
  await visibility.setRamVisibility(PAM, RamVisibility.ReadWrite);
  const readWrite = slots(partition);
  t.is(readWrite.get(PAM.start)?.readonly, false);
  onlyRegionChanged(t, initial, readWrite, PAM);
  t.deepEqual(
    partition.takeSlotLog().map((e) => [e.op, e.gpa, e.size]),
    [
      ['unmap', PAM.start, PAM.len],
      ['map', PAM.start, PAM.len],
    ],
  );
  isDone(t, await run(4n));
  t.is(memory.readU64(store), value + 4n);
  t.deepEqual([...readWrite.keys()], [...initial.keys()]);
});

kvmTest('VGA window and PAM ranges with x86 legacy support, seen by a tiny real-mode program', async (t) => {
  const { partition, memory, vcpu: newVcpu, visibility } = await attached(t);
  const vcpu = await newVcpu({ mode: VcpuMode.Real });
  const PAM0 = range(0xc0000, 0xc4000);
  // Runs the program on segment:0 with dl = store; returns the exits up to the hlt.
  const run = async (segment, store, onMmioRead) => {
    start(memory, vcpu, REAL_MODE_READ_THEN_WRITE, { rbx: segment, rsi: 0n, rdx: store });
    const exits = [];
    for (;;) {
      const exit = await vcpu.run(RUN);
      exits.push(exit);
      if (exit.kind === 'MmioRead') vcpu.completeRead(onMmioRead);
      if (exit.kind === 'Hlt' || exits.length > 6) return exits;
    }
  };
  const summary = (exits) => exits.map((e) => (e.kind === 'IoOut' ? `out ${e.port.toString(16)}:${e.data.toString('hex')}` : e.kind === 'MmioRead' ? `mmio read ${e.address.toString(16)}/${e.size}` : e.kind === 'MmioWrite' ? `mmio write ${e.address.toString(16)}:${e.data.toString('hex')}` : e.kind));

  memory.writeU8(VGA.start, 0x11);
  memory.writeU8(PAM0.start, 0x22);
  // Both are RAM at first: the program reads what JS wrote and its store lands in RAM.
  t.deepEqual(summary(await run(0xa000n, 0x33n)), ['out 11:11', 'out 10:11', 'Hlt']);
  t.is(memory.readU8(VGA.start), 0x33);
  t.deepEqual(summary(await run(0xc000n, 0x44n)), ['out 11:22', 'out 10:22', 'Hlt']);
  t.is(memory.readU8(PAM0.start), 0x44);

  // The VGA window unmapped (a framebuffer device would take it over): MMIO exits at 0xa0000.
  const before = slots(partition);
  await visibility.setRamVisibility(VGA, RamVisibility.Unmapped);
  onlyRegionChanged(t, before, slots(partition), VGA);
  t.false(slots(partition).has(VGA.start));
  t.deepEqual(summary(await run(0xa000n, 0x55n, 0x66)), ['mmio read a0000/1', 'out 11:66', 'mmio write a0000:55', 'out 10:66', 'Hlt']);
  // (RAM behind the window keeps 0x33: the program reads it below once the window is RAM again.)

  // A PAM range read-only (BIOS shadow locked): reads see RAM, writes trap.
  await visibility.setRamVisibility(PAM0, RamVisibility.ReadOnly);
  t.deepEqual(summary(await run(0xc000n, 0x77n)), ['out 11:44', 'mmio write c0000:77', 'out 10:44', 'Hlt']);
  t.is(memory.readU8(PAM0.start), 0x44);

  // Both back to ReadWrite: RAM again, with the contents it kept.
  await visibility.setRamVisibility(VGA, RamVisibility.ReadWrite);
  await visibility.setRamVisibility(PAM0, RamVisibility.ReadWrite);
  t.deepEqual(summary(await run(0xa000n, 0x88n)), ['out 11:33', 'out 10:33', 'Hlt']);
  t.deepEqual(summary(await run(0xc000n, 0x99n)), ['out 11:44', 'out 10:44', 'Hlt']);
  t.is(memory.readU8(VGA.start), 0x88);
  t.is(memory.readU8(PAM0.start), 0x99);
  t.deepEqual([...slots(partition).keys()], [...before.keys()]);
});

kvmTest('page tables may span the adjacent slots of RAM split into x86 legacy regions', async (t) => {
  const { partition, memory, vcpu: newVcpu } = await attached(t);
  // 0x80000 + 2 MiB + 8 KiB crosses conventional memory, the VGA window, the PAM ranges and the BIOS.
  const tables = range(0x80000, 0x80000 + 2 * 1024 * 1024 + 8 * 1024);
  t.true(partition.inspect().slots.filter((s) => s.gpa < tables.end && s.gpa + s.size > tables.start).length > 10);
  const vcpu = await newVcpu({ pageTables: tables });
  start(memory, vcpu, programs.fillPattern, { rdi: 0x40_0000n, rcx: 4n, rdx: 0x99n });
  isDone(t, await vcpu.run(RUN));
  t.is(memory.readU64(0x40_0018n), 0x40_0018n ^ 0x99n);
});

kvmTest('device memory placed in an MMIO gap is read by the guest; after removal the same access is an MMIO exit', async (t) => {
  const { manager, partition, memory, vcpu: newVcpu } = await attached(t, { legacy: false });
  const vcpu = await newVcpu({ pageTables: PAGE_TABLES });
  const windowGpa = 0xd000_0000n;
  const len = 64n * KiB;
  // A memfd with known contents: qword i = i * 0x0101_0101 + 7.
  const device = Mappable.allocSharedMemory(len, 'test-device');
  t.teardown(() => device.close());
  const contents = Buffer.alloc(Number(len));
  let sum = 0n;
  for (let i = 0; i < Number(len) / 8; i++) {
    const q = BigInt(i) * 0x0101_0101n + 7n;
    contents.writeBigUInt64LE(q, i * 8);
    sum += q;
  }
  const writer = new SparseMapping(len);
  writer.mapFile(0, len, device, 0, true);
  writer.writeAt(0, contents);
  writer.close();

  const { control, region } = manager.deviceMemoryMapper().newRegion(len, 'test-device');
  t.teardown(async () => {
    await region.close();
    await control.close();
  });
  await region.map(0, device, 0, len, false);
  const before = slots(partition);
  await control.mapToGuest(windowGpa, false);
  const placed = slots(partition);
  t.deepEqual(placed.get(windowGpa), { slot: placed.get(windowGpa)?.slot, size: len, readonly: true });
  onlyRegionChanged(t, before, placed, range(windowGpa, windowGpa + len));

  // The guest sums the whole window.
  start(memory, vcpu, programs.sumQwords, { rdi: windowGpa, rcx: len / 8n });
  const low = await vcpu.run(RUN);
  const high = await vcpu.run(RUN);
  t.is(BigInt(low.data.readUInt32LE(0)) | (BigInt(high.data.readUInt32LE(0)) << 32n), sum);
  isDone(t, await vcpu.run(RUN));
  // A load from it into RAM, and a store into the (read-only) window, which traps.
  start(memory, vcpu, programs.loadAddStore, { rdi: windowGpa + 0x800n, rsi: 0x30_0000n, rdx: 1n });
  isDone(t, await vcpu.run(RUN));
  t.is(memory.readU64(0x30_0000n), 0x100n * 0x0101_0101n + 8n);
  start(memory, vcpu, programs.loadAddStore, { rdi: windowGpa, rsi: windowGpa + 8n, rdx: 1n });
  const trapped = await vcpu.run(RUN);
  t.is(trapped.kind, 'MmioWrite');
  t.is(trapped.address, windowGpa + 8n);
  t.is(trapped.data.readBigUInt64LE(0), 8n);
  isDone(t, await vcpu.run(RUN));

  // Removed: the same load is an MMIO read exit, and only the window's slot went away.
  await control.unmapFromGuest();
  t.deepEqual(slots(partition), before);
  start(memory, vcpu, programs.loadAddStore, { rdi: windowGpa + 0x800n, rsi: 0x30_0000n, rdx: 1n });
  t.deepEqual(await vcpu.run(RUN), { kind: 'MmioRead', address: windowGpa + 0x800n, size: 8 });
  vcpu.completeRead(41n);
  isDone(t, await vcpu.run(RUN));
  t.is(memory.readU64(0x30_0000n), 42n);
});

kvmTest('VTL0 alias map: a partition attached as VTL2 sees RAM at gpa + offset, a VTL0 one does not', async (t) => {
  const offset = 64n * GiB;
  const { manager, partition, memory, vcpu: newVcpu } = await attached(t, { legacy: false, alias: offset, vtl: Vtl.Vtl2 });
  const table = slots(partition);
  t.deepEqual(
    [...table].map(([gpa, s]) => [gpa, s.size]),
    [
      [0n, 64n * MiB],
      [offset, 64n * MiB],
    ],
  );
  const vcpu = await newVcpu({ pageTables: PAGE_TABLES });
  memory.writeU64(0x30_0000n, 1000n);
  // Load through the alias, store through the alias: GuestMemory (VTL0 addresses) sees it.
  start(memory, vcpu, programs.loadAddStore, { rdi: offset + 0x30_0000n, rsi: offset + 0x30_0008n, rdx: 7n });
  isDone(t, await vcpu.run(RUN));
  t.is(memory.readU64(0x30_0008n), 1007n);
  // And the primary address sees the same RAM.
  start(memory, vcpu, programs.loadAddStore, { rdi: 0x30_0008n, rsi: offset + 0x30_0010n, rdx: 1n });
  isDone(t, await vcpu.run(RUN));
  t.is(memory.readU64(0x30_0010n), 1008n);
  // Past the end of the aliased RAM there is nothing.
  start(memory, vcpu, programs.loadAddStore, { rdi: offset + 64n * MiB, rsi: 0x30_0000n, rdx: 0n });
  t.deepEqual(await vcpu.run(RUN), { kind: 'MmioRead', address: offset + 64n * MiB, size: 8 });

  const vtl0 = await KvmPartition.create();
  t.teardown(() => vtl0.close());
  await manager.attachPartition(Vtl.Vtl0, vtl0);
  t.deepEqual(
    vtl0.inspect().slots.map((s) => [s.gpa, s.size]),
    [[0n, 64n * MiB]],
  );
});
