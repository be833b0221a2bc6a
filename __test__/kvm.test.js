// KvmPartition and Vcpu through the JavaScript API (issue 5): a 64-bit CPL3 guest writes RAM
// below and above the 4 GiB gap and GuestMemory reads it; JS writes and the guest reads; MMIO
// reads completed with completeRead; port input; HLT; cancel and timeout; bad input to every
// KVM entry point.
//
// Every test that needs /dev/kvm is skipped, with the reason in its title, when
// KvmPartition.create() fails with ERR_KVM_UNAVAILABLE (helpers/kvm.js).
'use strict';
const test = require('ava');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const mb = require('../dist');
const { kvmTest } = require('./helpers/kvm');

const { GiB, MiB, KiB, range, MemoryLayout, GuestMemoryBuilder, KvmPartition, VcpuMode, Vtl, guestPrograms } = mb;


const programs = guestPrograms();
const CODE = 0x1000n;
const PAGE_TABLES = range(2n * MiB, 2n * MiB + 2n * MiB + 8n * KiB);
const RUN = { timeoutMs: 20000 };
const MASK64 = (1n << 64n) - 1n;

/** 4 GiB of RAM around the x86 MMIO gap [3 GiB, 4 GiB): RAM at [0, 3G) and [4G, 5G). */
const gapLayout = () => MemoryLayout.new(4n * GiB, [range(3n * GiB, 4n * GiB)]);

/** A manager for `layout`, a KVM partition attached to it, guest memory and a 64-bit CPL3 vCPU. */
async function guest(t, { layout = gapLayout(), vcpu: vcpuOptions = {} } = {}) {
  const manager = await new GuestMemoryBuilder().build(layout);
  const partition = await KvmPartition.create();
  await manager.attachPartition(Vtl.Vtl0, partition);
  const memory = await manager.client().guestMemory();
  const vcpu = await partition.createVcpu({ pageTables: PAGE_TABLES, ...vcpuOptions });
  t.teardown(async () => {
    vcpu.close();
    partition.close();
    await manager.close();
  });
  /** Copies `program` to CODE and points rip at it with `registers` set. */
  const start = (program, registers = {}) => {
    memory.writeAt(CODE, program);
    vcpu.setRegisters({ rip: CODE, ...registers });
  };
  return { manager, partition, memory, vcpu, start };
}

/** Asserts a 1-byte write to the done port. */
function isDone(t, exit) {
  t.is(exit.kind, 'IoOut', JSON.stringify(exit, (_, v) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : v)));
  t.is(exit.port, programs.donePort);
  t.is(exit.size, 1);
}

kvmTest('the guest writes a pattern below and above the 4 GiB gap and GuestMemory reads it', async (t) => {
  const { memory, vcpu, start } = await guest(t);
  const key = 0x5a5a_0000_1234_abcdn;
  const len = 64n * KiB;
  // The last 64 KiB below the gap, the first above it, and the last of RAM.
  for (const base of [3n * GiB - len, 4n * GiB, 5n * GiB - len]) {
    start(programs.fillPattern, { rdi: base, rcx: len / 8n, rdx: key });
    isDone(t, await vcpu.run(RUN));
    const regs = vcpu.getRegisters();
    t.is(regs.rdi, base + len);
    t.is(regs.rcx, 0n);
    const bytes = memory.read(base, len);
    let mismatches = 0;
    for (let i = 0; i < Number(len); i += 8) {
      if (bytes.readBigUInt64LE(i) !== ((base + BigInt(i)) ^ key)) mismatches++;
    }
    t.is(mismatches, 0, `pattern at 0x${base.toString(16)}`);
  }
  // Untouched RAM next to the pattern is still zero.
  t.is(memory.readU64(3n * GiB - len - 8n), 0n);
  t.is(memory.readU64(4n * GiB + len), 0n);
});

kvmTest('JavaScript writes guest RAM and the guest reads it and reports through port I/O', async (t) => {
  const { memory, vcpu, start } = await guest(t);
  for (const base of [64n * MiB, 4n * GiB + 3n * MiB]) {
    const count = 1000;
    const data = Buffer.alloc(count * 8);
    let sum = 0n;
    for (let i = 0; i < count; i++) {
      const value = (BigInt(i + 1) * 0x9e37_79b9_7f4a_7c15n + base) & MASK64;
      data.writeBigUInt64LE(value, i * 8);
      sum = (sum + value) & MASK64;
    }
    memory.writeAt(base, data);
    start(programs.sumQwords, { rdi: base, rcx: BigInt(count) });
    const halves = [];
    for (let i = 0; i < 2; i++) {
      const exit = await vcpu.run(RUN);
      t.is(exit.kind, 'IoOut');
      t.is(exit.port, programs.resultPort);
      t.is(exit.size, 4);
      halves.push(BigInt(exit.data.readUInt32LE(0)));
    }
    t.is(halves[0] | (halves[1] << 32n), sum);
    isDone(t, await vcpu.run(RUN));
  }
});

kvmTest('an MMIO read in the gap is completed with completeRead and the guest uses the value', async (t) => {
  const { memory, vcpu, start } = await guest(t);
  const mmio = 3n * GiB + 0x1000n;
  const target = 4n * GiB + 0x2000n;
  start(programs.loadAddStore, { rdi: mmio, rsi: target, rdx: 5n });
  t.deepEqual(await vcpu.run(RUN), { kind: 'MmioRead', address: mmio, size: 8 });
  // The read must be completed before the guest runs again.
  const pending = await t.throwsAsync(vcpu.run(RUN), { instanceOf: mb.KvmError });
  t.is(pending.code, 'ERR_VCPU_READ_PENDING');
  const size = t.throws(() => vcpu.completeRead(new Uint8Array(4)), { instanceOf: RangeError });
  t.is(size.code, 'ERR_INVALID_ARG_VALUE');
  vcpu.completeRead(0x1122_3344_5566_7788n);
  t.is(t.throws(() => vcpu.completeRead(1)).code, 'ERR_NO_PENDING_READ');
  isDone(t, await vcpu.run(RUN));
  t.is(memory.readU64(target), 0x1122_3344_5566_778dn);

  // The same with the value as bytes, and a store into the gap: an MMIO write exit.
  start(programs.loadAddStore, { rdi: mmio + 8n, rsi: mmio + 16n, rdx: 1n });
  t.deepEqual(await vcpu.run(RUN), { kind: 'MmioRead', address: mmio + 8n, size: 8 });
  vcpu.completeRead(Uint8Array.from([1, 0, 0, 0, 0, 0, 0, 0x80]));
  const write = await vcpu.run(RUN);
  t.is(write.kind, 'MmioWrite');
  t.is(write.address, mmio + 16n);
  t.is(write.size, 8);
  t.is(write.data.readBigUInt64LE(0), 0x8000_0000_0000_0002n);
  isDone(t, await vcpu.run(RUN));
});

kvmTest('setRegisters from a read exit until the run that delivers its value is ERR_VCPU_READ_PENDING; the guest gets the value', async (t) => {
  const { memory, vcpu, start } = await guest(t);
  const mmio = 3n * GiB + 0x3000n;
  const target = 64n * MiB;
  for (const port of [false, true]) {
    if (port) start(programs.echoInput);
    else start(programs.loadAddStore, { rdi: mmio, rsi: target, rdx: 1n });
    const exit = await vcpu.run(RUN);
    t.is(exit.kind, port ? 'IoIn' : 'MmioRead');
    // Before and after the value is given, and after a cancel stopped the delivering run.
    const refused = () => {
      const error = t.throws(() => vcpu.setRegisters({ rbx: 5n }), { instanceOf: mb.KvmError });
      t.is(error.code, 'ERR_VCPU_READ_PENDING');
      t.regex(error.message, /run\(\) the vCPU once/);
      t.is(t.throws(() => vcpu.setRegisters({}), { instanceOf: mb.KvmError }).code, 'ERR_VCPU_READ_PENDING');
    };
    refused();
    vcpu.completeRead(0x1234_5678n);
    refused();
    vcpu.cancel();
    t.deepEqual(await vcpu.run(RUN), { kind: 'Cancelled', reason: 'cancel' });
    refused();
    // The run delivers the value (a register write before it lost the value on PVM).
    if (port) {
      const out = await vcpu.run(RUN);
      t.is(out.port, programs.resultPort);
      t.is(out.data.readUInt32LE(0), 0x1234_5678);
      isDone(t, await vcpu.run(RUN));
    } else {
      isDone(t, await vcpu.run(RUN));
      t.is(memory.readU64(target), 0x1234_5679n);
    }
    vcpu.setRegisters({ rbx: 5n });
    t.is(vcpu.getRegisters().rbx, 5n);
  }
});

kvmTest('a port input is completed with completeRead and echoed by the guest', async (t) => {
  const { vcpu, start } = await guest(t);
  start(programs.echoInput);
  t.deepEqual(await vcpu.run(RUN), { kind: 'IoIn', port: programs.inputPort, size: 4 });
  // A value wider than the read is refused (it was cut to its low bytes); the read stays pending.
  t.throws(() => vcpu.completeRead(1n << 40n), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE', message: /below 2\^32/ });
  vcpu.completeRead(Uint8Array.from([0xef, 0xbe, 0xad, 0xde]));
  const out = await vcpu.run(RUN);
  t.is(out.kind, 'IoOut');
  t.is(out.port, programs.resultPort);
  t.deepEqual([...out.data], [0xef, 0xbe, 0xad, 0xde]);
  isDone(t, await vcpu.run(RUN));
});

kvmTest('port I/O at CPL 3 works for a program at GPA 0 and for ports up to 0x7fb7', async (t) => {
  const { memory, vcpu } = await guest(t);
  // A program at GPA 0 (where the vCPU's TSS used to be: its bytes decided which ports trapped).
  memory.writeAt(0n, programs.echoInput);
  vcpu.setRegisters({ rip: 0n });
  t.deepEqual(await vcpu.run(RUN), { kind: 'IoIn', port: programs.inputPort, size: 4 });
  vcpu.completeRead(9);
  t.deepEqual([...(await vcpu.run(RUN)).data], [9, 0, 0, 0]);
  isDone(t, await vcpu.run(RUN));
  // out dx, al to a UART port and to the highest port every KVM allows at CPL 3.
  memory.writeAt(CODE, Buffer.from([0xee, 0xe6, programs.donePort, 0xeb, 0xfc]));
  for (const port of [0x3f8, 0x7fb7]) {
    vcpu.setRegisters({ rip: CODE, rdx: BigInt(port), rax: 0x41n });
    const out = await vcpu.run(RUN);
    t.is(out.kind, 'IoOut', `port 0x${port.toString(16)}: ${out.kind}`);
    t.is(out.port, port);
    t.deepEqual([...out.data], [0x41]);
  }
});

kvmTest('hlt at CPL 0 is a Hlt exit; at CPL 3 it faults into a Shutdown', async (t) => {
  const ring0 = await guest(t, { vcpu: { cpl: 0 } });
  ring0.start(programs.halt);
  t.deepEqual(await ring0.vcpu.run(RUN), { kind: 'Hlt' });
  t.deepEqual(await ring0.vcpu.run(RUN), { kind: 'Hlt' });
  t.is(ring0.vcpu.getRegisters().rflags & 0x3000n, 0n, 'IOPL 0 at CPL 0');

  const ring3 = await guest(t);
  t.is(ring3.vcpu.getRegisters().rflags & 0x3000n, 0x3000n, 'IOPL 3 at CPL 3');
  ring3.start(programs.halt);
  t.deepEqual(await ring3.vcpu.run(RUN), { kind: 'Shutdown' });
});

kvmTest('a timeout stops a looping guest, which resumes where it was', async (t) => {
  const { vcpu, start } = await guest(t);
  start(programs.spin);
  const began = process.hrtime.bigint();
  t.deepEqual(await vcpu.run({ timeoutMs: 100 }), { kind: 'Cancelled', reason: 'timeout' });
  t.true(process.hrtime.bigint() - began >= 100_000_000n, 'not before the timeout');
  t.is(vcpu.getRegisters().rip, CODE);
  // The timer does not leak into a later run that finishes by itself.
  start(programs.fillPattern, { rdi: 64n * MiB, rcx: 1n, rdx: 0n });
  isDone(t, await vcpu.run({ timeoutMs: 30000 }));
  isDone(t, await vcpu.run());
});

kvmTest('cancel stops a looping guest; a second run while one is in progress is ERR_VCPU_BUSY', async (t) => {
  const { partition, vcpu, start } = await guest(t);
  start(programs.spin);
  let settled = false;
  const running = vcpu.run().then((exit) => {
    settled = true;
    return exit;
  });
  const busy = await t.throwsAsync(vcpu.run(RUN), { instanceOf: mb.KvmError });
  t.is(busy.code, 'ERR_VCPU_BUSY');
  t.is(t.throws(() => vcpu.getRegisters(), { instanceOf: mb.KvmError }).code, 'ERR_VCPU_BUSY');
  t.is(t.throws(() => vcpu.setRegisters({ rax: 1n }), { instanceOf: mb.KvmError }).code, 'ERR_VCPU_BUSY');
  await new Promise((resolve) => setTimeout(resolve, 50));
  t.false(settled, 'the spinning guest returned by itself');
  vcpu.cancel();
  t.deepEqual(await running, { kind: 'Cancelled', reason: 'cancel' });
  t.is(vcpu.getRegisters().rip, CODE);

  // A cancel with no run in progress stops the next run, and only that one.
  vcpu.cancel();
  t.deepEqual(await vcpu.run(), { kind: 'Cancelled', reason: 'cancel' });
  t.deepEqual(await vcpu.run({ timeoutMs: 20 }), { kind: 'Cancelled', reason: 'timeout' });

  // Closing the partition cancels a running vCPU.
  const again = vcpu.run();
  await new Promise((resolve) => setTimeout(resolve, 20));
  partition.close();
  t.deepEqual(await again, { kind: 'Cancelled', reason: 'cancel' });
});

kvmTest('close() right after run() settles that run as Cancelled, like a close while the guest runs', async (t) => {
  // Before, a run the vCPU thread had not started yet rejected with ERR_CLOSED instead (most times).
  for (const which of ['vcpu', 'partition', 'vcpu', 'partition']) {
    const { partition, vcpu, start } = await guest(t, { layout: MemoryLayout.new(64n * MiB, [range(3n * GiB, 4n * GiB)]) });
    start(programs.spin);
    const running = vcpu.run(RUN);
    if (which === 'vcpu') vcpu.close();
    else partition.close();
    t.deepEqual(await running, { kind: 'Cancelled', reason: 'cancel' }, which);
    await t.throwsAsync(vcpu.run(RUN), { code: 'ERR_CLOSED' });
  }
});

kvmTest('attaching an attached KvmPartition again is refused before any slot changes; its slot and guest survive', async (t) => {
  const layout = () => MemoryLayout.new(64n * MiB, [range(3n * GiB, 4n * GiB)]);
  const manager = await new GuestMemoryBuilder().build(layout());
  const other = await new GuestMemoryBuilder().build(layout());
  const partition = await KvmPartition.create();
  t.teardown(async () => {
    partition.close();
    await other.close();
    await manager.close().catch(() => {});
  });
  await manager.attachPartition(Vtl.Vtl0, partition);
  const slots = partition.inspect().slots;
  t.deepEqual(slots.map((s) => [s.gpa, s.size]), [[0n, 64n * MiB]]);
  partition.takeSlotLog();
  // The same manager (at any VTL) or another one: refused before any KVM call.
  for (const [target, vtl, where] of [[manager, Vtl.Vtl0, 'this'], [manager, Vtl.Vtl2, 'this'], [other, Vtl.Vtl0, 'another']]) {
    const error = await t.throwsAsync(target.attachPartition(vtl, partition), { instanceOf: mb.PartitionAttachError });
    t.is(error.code, 'ERR_ALREADY_ATTACHED');
    t.true(error.message.startsWith(`partition is already attached to ${where} memory manager`), error.message);
    t.deepEqual(partition.inspect().slots, slots, 'the first attach keeps its slot');
  }
  t.deepEqual(partition.slotLog(), [], 'no map or unmap reached the partition');
  t.is((await manager.inspect()).partitions.length, 1);
  t.is((await other.inspect()).partitions.length, 0);
  // The partition still runs guest code in the first manager's RAM.
  const memory = await manager.client().guestMemory();
  const vcpu = await partition.createVcpu({ pageTables: range(2n * MiB, 4n * MiB + 8n * KiB) });
  t.teardown(() => vcpu.close());
  const key = 0x1234_5678_9abc_def0n;
  memory.writeAt(CODE, programs.fillPattern);
  vcpu.setRegisters({ rip: CODE, rdi: 32n * MiB, rcx: 8n, rdx: key });
  isDone(t, await vcpu.run(RUN));
  t.is(memory.readU64(32n * MiB), (32n * MiB) ^ key);
  vcpu.close();
  // Once the first manager has closed (its slot removed), the other manager may attach it.
  await manager.close();
  t.deepEqual(partition.inspect().slots, []);
  await other.attachPartition(Vtl.Vtl0, partition);
  t.is(partition.inspect().slots.length, 1);
  t.is((await other.inspect()).partitions.length, 1);
});

// Running out of KVM memory slots is foreseeable: the manager checks every attached partition's
// free slots against the plan before any call, so the change is refused and nothing, not the
// manager, is broken (before, the failing slot creation poisoned the manager).
kvmTest('a batch needing more memory slots than the KvmPartition has free is refused with ERR_NO_FREE_SLOT before any slot change; the manager keeps working', async (t) => {
  const manager = await new GuestMemoryBuilder().build(MemoryLayout.new(64n * MiB, [range(3n * GiB, 4n * GiB)]));
  const partition = await KvmPartition.create();
  t.teardown(async () => {
    partition.close();
    await manager.close().catch(() => {});
  });
  await manager.attachPartition(Vtl.Vtl0, partition);
  const { maxSlots, slots } = partition.inspect();
  const free = maxSlots - slots.length;
  // One 4 KiB window more than there are free slots, 8 KiB apart in the MMIO gap: each placed
  // window would take a slot. Nothing is created in KVM, so this stays fast with ~32k slots.
  const mapper = manager.deviceMemoryMapper();
  const windows = Array.from({ length: free + 1 }, (_, i) => mapper.newRegion(4n * KiB, `w${i}`).control);
  const place = (window, i) => ({ kind: 'deviceMapToGuest', window, gpa: 3n * GiB + BigInt(i) * 8n * KiB, writable: true });
  const changes = windows.map(place);
  partition.takeSlotLog();
  for (const attempt of [() => manager.plan(changes), () => manager.apply(changes)]) {
    const error = await t.throwsAsync(attempt, { instanceOf: mb.MemoryManagerError, code: 'ERR_NO_FREE_SLOT' });
    t.true(error.message.startsWith(`partition 0 has ${free} of its ${maxSlots} memory slots free, but the change needs ${free + 1} more at once`), error.message);
    t.true(error.message.includes('nothing was applied'), error.message);
  }
  t.deepEqual(partition.slotLog(), [], 'no slot was created or deleted');
  t.deepEqual(partition.inspect().slots, slots);
  t.is((await manager.inspect()).regions.length, 1, 'no window was placed');
  // Not poisoned: later changes work, and a batch that frees slots before it takes them fits
  // the free slots that are left.
  await manager.apply(changes.slice(0, 2));
  t.is(partition.inspect().slots.length, slots.length + 2);
  await manager.apply([changes[2], { kind: 'deviceUnmapFromGuest', window: windows[0] }]);
  t.deepEqual(
    partition.takeSlotLog().map((e) => [e.op, e.gpa, e.failed]),
    [
      ['map', 3n * GiB, false],
      ['map', 3n * GiB + 8n * KiB, false],
      ['unmap', 3n * GiB, false],
      ['map', 3n * GiB + 16n * KiB, false],
    ],
  );
  t.is(partition.inspect().slots.length, slots.length + 2);
  t.is((await manager.inspect()).regions.length, 3);
});

kvmTest('inspect() is the slot table of the attached RAM', async (t) => {
  const { partition } = await guest(t);
  const state = partition.inspect();
  t.deepEqual(
    state.slots.map((s) => [s.gpa, s.size, s.readonly]),
    [
      [0n, 3n * GiB, false],
      [4n * GiB, GiB, false],
    ],
  );
  t.deepEqual(new Set(state.slots.map((s) => s.slot)).size, 2);
  t.is(state.vcpuCount, 1);
  t.true(state.maxSlots >= 32);
  t.is(typeof state.slotZapAllQuirkDisabled, 'boolean');
  t.true(state.readonlySupported);
  const log = partition.slotLog();
  t.deepEqual(
    log.map((e) => [e.op, e.gpa, e.size, e.created.length, e.deleted.length, e.failed]),
    [
      ['map', 0n, 3n * GiB, 1, 0, false],
      ['map', 4n * GiB, GiB, 1, 0, false],
    ],
  );
  t.true(log[0].sequence < log[1].sequence);
  t.is(partition.takeSlotLog().length, 2);
  t.deepEqual(partition.slotLog(), []);
});

// ─── Releasing on close() ────────────────────────────────────────────────────────────────────

// close() releases at once, not at garbage collection: measured in a child process
// (fixtures/stress/kvm_close_child.js) so this file's other VMs do not blur the counts. Before,
// every closed vCPU kept its anon_inode:kvm-vcpu descriptor, and with it its VM, until collected.
kvmTest('close() releases vCPU and VM descriptors and threads while the objects stay referenced; the manager keeps working', async (t) => {
  const child = spawnSync(process.execPath, [path.join(__dirname, 'fixtures', 'stress', 'kvm_close_child.js')], { encoding: 'utf8', timeout: 60_000 });
  t.is(child.status, 0, `child failed (${child.signal ?? child.status}): ${child.stderr}`);
  if (child.status !== 0) return;
  const report = JSON.parse(child.stdout.trim().split('\n').pop());
  t.log(JSON.stringify(report));
  const { start } = report;
  const plus = (vms, vcpus) => ({ vms: start.vms + vms, vcpus: start.vcpus + vcpus });
  const fds = ({ vms, vcpus }) => ({ vms, vcpus });
  // Three partitions with a vCPU each: vCPU close() releases the vCPU descriptors at once,
  // partition close() the VMs; their threads end.
  t.deepEqual(fds(report.open), plus(3, 3));
  t.is(report.open.threads, start.threads + 3, 'one thread per vCPU');
  t.deepEqual(fds(report.vcpusClosed), plus(3, 0), 'vcpu.close() released the vCPU descriptors');
  t.deepEqual(report.partitionsClosed, start, 'kvm.close() released the VMs; every thread ended');
  // A running vCPU: close() cancels the run, which settles, and releases it as the run returns.
  t.deepEqual(fds(report.running), plus(1, 2));
  t.deepEqual(report.runExit, { kind: 'Cancelled', reason: 'cancel' });
  t.deepEqual(fds(report.runningClosed), plus(1, 1));
  t.is(report.runningClosed.threads, report.running.threads - 1, "the closed vCPU's thread ended");
  for (const [call, code] of Object.entries(report.closedVcpuCodes)) {
    t.is(code, call === 'cancel' ? 'none' : 'ERR_CLOSED', `closed vCPU: ${call}`);
  }
  // Closing the attached partition closes its other vCPU (still open in JS) and the VM.
  t.deepEqual(report.attachedClosed, start, 'the attached partition and its open vCPU are released');
  t.deepEqual(report.vcpuOfClosedPartitionCodes, { run: 'ERR_CLOSED', getRegisters: 'ERR_CLOSED' });
  t.deepEqual(report.partitionCodes, { inspect: 'ERR_CLOSED', createVcpu: 'ERR_CLOSED' });
  // The manager holds partitions weakly: visibility changes skip the closed one and succeed.
  t.deepEqual(report.visibilityCodes, { unmap: 'none', remap: 'none' });
  t.deepEqual(report.memoryReads, [1, 2, 3]);
  t.is(report.managerPartitions, 1);
  t.is(report.stillReferenced, 6, 'every closed object was still referenced while measured');
  t.deepEqual(fds(report.afterManagerClose), fds(start));
});

// ─── Bad input ───────────────────────────────────────────────────────────────────────────────

/** Asserts that `fn` throws (or rejects with) class `Class` and `code`. */
async function rejects(t, fn, Class, code) {
  let error;
  try {
    await fn();
  } catch (e) {
    error = e;
  }
  t.true(error instanceof Class, `${fn}: expected ${Class.name}, got ${error}`);
  t.is(error?.code, code, String(fn));
}

test('KvmPartition.create rejects bad options (no KVM needed)', async (t) => {
  await rejects(t, () => KvmPartition.create(null), TypeError, 'ERR_INVALID_ARG_TYPE');
  await rejects(t, () => KvmPartition.create(5), TypeError, 'ERR_INVALID_ARG_TYPE');
  await rejects(t, () => KvmPartition.create({ disableSlotZapAllQuirk: 'yes' }), TypeError, 'ERR_INVALID_ARG_TYPE');
  t.throws(() => new KvmPartition(), { instanceOf: TypeError });
});

kvmTest('bad input to createVcpu, inspect, slotLog and close of a KvmPartition', async (t) => {
  const { partition } = await guest(t);
  await rejects(t, () => partition.createVcpu(null), TypeError, 'ERR_INVALID_ARG_TYPE');
  await rejects(t, () => partition.createVcpu({ mode: 'Protected' }), RangeError, 'ERR_INVALID_ARG_VALUE');
  await rejects(t, () => partition.createVcpu({ mode: 1 }), TypeError, 'ERR_INVALID_ARG_TYPE');
  await rejects(t, () => partition.createVcpu({ cpl: 1, pageTables: PAGE_TABLES }), RangeError, 'ERR_INVALID_ARG_VALUE');
  await rejects(t, () => partition.createVcpu({ cpl: '3', pageTables: PAGE_TABLES }), TypeError, 'ERR_INVALID_ARG_TYPE');
  // Long mode needs page tables, at least 2 MiB + 8 KiB of them, in RAM of this partition.
  await rejects(t, () => partition.createVcpu({}), RangeError, 'ERR_INVALID_ARG_VALUE');
  await rejects(t, () => partition.createVcpu({ pageTables: range(2n * MiB, 4n * MiB) }), RangeError, 'ERR_INVALID_ARG_VALUE');
  await rejects(t, () => partition.createVcpu({ pageTables: range(3n * GiB, 3n * GiB + 4n * MiB) }), RangeError, 'ERR_INVALID_ARG_VALUE');
  // The whole range must be RAM, not only the part the tables fill (here the first 2 MiB + 8 KiB).
  const pastRam = await t.throwsAsync(partition.createVcpu({ pageTables: range(3n * GiB - 4n * MiB, 3n * GiB + 4n * MiB) }), { instanceOf: RangeError });
  t.is(pastRam.code, 'ERR_INVALID_ARG_VALUE');
  t.regex(pastRam.message, /nothing writable is mapped at 0xc0000000/);
  await rejects(t, () => partition.createVcpu({ pageTables: 'low' }), TypeError, 'ERR_INVALID_ARG_TYPE');
  await rejects(t, () => partition.createVcpu({ pageTables: { start: 0x1001, end: 0x400000 } }), RangeError, 'ERR_INVALID_ARG_VALUE');
  // Real mode has no paging and runs at privilege level 0: Long mode's options are refused, not ignored.
  const realTables = await t.throwsAsync(partition.createVcpu({ mode: VcpuMode.Real, pageTables: PAGE_TABLES }), { instanceOf: RangeError });
  t.is(realTables.code, 'ERR_INVALID_ARG_VALUE');
  t.regex(realTables.message, /^pageTables applies to Long mode only/);
  const realCpl3 = await t.throwsAsync(partition.createVcpu({ mode: VcpuMode.Real, cpl: 3 }), { instanceOf: RangeError });
  t.regex(realCpl3.message, /^cpl applies to Long mode only: a Real-mode vCPU runs at privilege level 0/);
  t.is(partition.inspect().vcpuCount, 1, 'no vCPU was created by a rejected call');
  // A real-mode vCPU needs no page tables; cpl 0 is its level.
  const real = await partition.createVcpu({ mode: VcpuMode.Real });
  t.is(real.id, 1);
  real.close();
  (await partition.createVcpu({ mode: VcpuMode.Real, cpl: 0 })).close();
  partition.close();
  partition.close(); // idempotent
  for (const use of [() => partition.inspect(), () => partition.slotLog(), () => partition.takeSlotLog()]) {
    t.is(t.throws(use).code, 'ERR_CLOSED');
  }
  await rejects(t, () => partition.createVcpu({ mode: VcpuMode.Real }), mb.MembackingError, 'ERR_CLOSED');
  const other = await new GuestMemoryBuilder().build(MemoryLayout.new(64n * MiB, [range(3n * GiB, 4n * GiB)]));
  t.teardown(() => other.close());
  await rejects(t, () => other.attachPartition(Vtl.Vtl0, partition), mb.MembackingError, 'ERR_CLOSED');
});

kvmTest('bad input to every Vcpu entry point', async (t) => {
  const { vcpu, start } = await guest(t);
  t.is(t.throws(() => vcpu.setRegisters(null), { instanceOf: TypeError }).code, 'ERR_INVALID_ARG_TYPE');
  t.is(t.throws(() => vcpu.setRegisters({ rzz: 1n }), { instanceOf: RangeError }).code, 'ERR_INVALID_ARG_VALUE');
  t.is(t.throws(() => vcpu.setRegisters({ rax: -1 }), { instanceOf: TypeError }).code, 'ERR_INVALID_ARG_TYPE');
  t.is(t.throws(() => vcpu.setRegisters({ rax: 1.5 }), { instanceOf: TypeError }).code, 'ERR_INVALID_ARG_TYPE');
  t.is(t.throws(() => vcpu.setRegisters({ rax: 1n << 64n }), { instanceOf: RangeError }).code, 'ERR_INVALID_ARG_VALUE');
  t.is(t.throws(() => vcpu.setRegisters({ rax: 'x' }), { instanceOf: TypeError }).code, 'ERR_INVALID_ARG_TYPE');
  // A rejected call changed nothing; a good one changes only what it names.
  const before = vcpu.getRegisters();
  t.is(t.throws(() => vcpu.setRegisters({ rbx: 7n, rzz: 1n }), { instanceOf: RangeError }).code, 'ERR_INVALID_ARG_VALUE');
  t.deepEqual(vcpu.getRegisters(), before);
  vcpu.setRegisters({ r15: (1n << 64n) - 1n, rbx: 7 });
  t.deepEqual(vcpu.getRegisters(), { ...before, r15: (1n << 64n) - 1n, rbx: 7n });
  // A register given as undefined is not named (Partial<VcpuRegisters> allows it; a spread of
  // optional values produces it): the others are set, it keeps its value.
  const named = vcpu.getRegisters();
  vcpu.setRegisters({ rax: undefined, rcx: 9n, rip: undefined });
  t.deepEqual(vcpu.getRegisters(), { ...named, rcx: 9n });

  await rejects(t, () => vcpu.run(null), TypeError, 'ERR_INVALID_ARG_TYPE');
  await rejects(t, () => vcpu.run({ timeoutMs: '5' }), TypeError, 'ERR_INVALID_ARG_TYPE');
  await rejects(t, () => vcpu.run({ timeoutMs: -1 }), RangeError, 'ERR_INVALID_ARG_VALUE');
  await rejects(t, () => vcpu.run({ timeoutMs: Number.NaN }), RangeError, 'ERR_INVALID_ARG_VALUE');
  await rejects(t, () => vcpu.run({ timeoutMs: Infinity }), RangeError, 'ERR_INVALID_ARG_VALUE');
  await rejects(t, () => vcpu.run({ timeoutMs: 1e13 }), RangeError, 'ERR_INVALID_ARG_VALUE');

  t.is(t.throws(() => vcpu.completeRead(1)).code, 'ERR_NO_PENDING_READ');
  t.is(t.throws(() => vcpu.completeRead('1'), { instanceOf: TypeError }).code, 'ERR_INVALID_ARG_TYPE');
  t.is(t.throws(() => vcpu.completeRead(-1), { instanceOf: TypeError }).code, 'ERR_INVALID_ARG_TYPE');
  t.is(t.throws(() => vcpu.completeRead(null), { instanceOf: TypeError }).code, 'ERR_INVALID_ARG_TYPE');
  t.throws(() => new mb.Vcpu(), { instanceOf: TypeError });

  // After all that, the vCPU still runs guest code.
  start(programs.fillPattern, { rdi: 64n * MiB, rcx: 1n, rdx: 0n });
  isDone(t, await vcpu.run(RUN));

  vcpu.close();
  vcpu.close(); // idempotent
  await rejects(t, () => vcpu.run(), mb.MembackingError, 'ERR_CLOSED');
  for (const use of [() => vcpu.getRegisters(), () => vcpu.setRegisters({ rax: 1n }), () => vcpu.completeRead(1)]) {
    t.is(t.throws(use).code, 'ERR_CLOSED');
  }
  t.notThrows(() => vcpu.cancel());
});
