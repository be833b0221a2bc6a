// KVM partition costs seen from JavaScript (issue 5), against baselines measured in the same run:
//
// 1. setRamVisibility on a 16 KiB PAM region of a manager with a KvmPartition attached, toggling
//    ReadWrite <-> ReadOnly (each call deletes and recreates that region's one memory slot),
//    against one raw KVM_SET_USER_MEMORY_REGION delete + create of a 16 KiB slot made with plain
//    ioctls on a VM of its own (`__bench.kvmRawSlotChurn`, no slot table, no manager).
//    Target <= 3, measured per CPU like 1b. Also Unmapped <-> ReadWrite (a delete, then a
//    create) per pair of calls, and the same toggle with no partition and with a
//    RecordingPartition attached (what the manager and the binding cost without KVM).
// 1b. The 12 PAM ranges toggled ReadWrite <-> ReadOnly in one manager.apply() (12 slot deletes
//    and 12 creates per batch) against 12 raw delete + create pairs of 16 KiB slots. Target <= 3,
//    measured per CPU in a process pinned there (ours and the baseline alike), because a slot
//    change's cost depends on the CPU it is made from; also once with threads on any CPU.
// 2. Guest first touch of 256 MiB (one byte per 4 KiB page, 64-bit CPL3 guest) with prefetchRam
//    against without, each on a fresh manager and VM; and attach + touch together, since
//    prefetchRam moves the population into attachPartition.
//
// Needs /dev/kvm: prints a note and exits 0 where KvmPartition.create() fails.
'use strict';
const { GiB, MiB, KiB, range, MemoryLayout, GuestMemoryBuilder, KvmPartition, RecordingPartition, RamVisibility, Vtl, guestPrograms } = require('../dist');
const { __bench } = require('../dist/internal');
const { report } = require('./harness');
const { spawnSync } = require('node:child_process');
const os = require('node:os');

/** The PAM toggles are measured pinned to each of the first this many CPUs (about 10 s each). */
const PINNED_CPUS = 4;

/** The argument that runs this file as the child of `pinnedPamBatch`. */
const PAM_CHILD = '--pam-batch-child';

const PAM = range(0xc8000, 0xcc000);
const ALL_PAM = Array.from({ length: 12 }, (_, i) => range(0xc0000 + i * 0x4000, 0xc4000 + i * 0x4000));
const PAGE_TABLES = range(2n * MiB, 4n * MiB + 8n * KiB);
const CODE = 0x1000n;

function median(samples) {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

const now = () => process.hrtime.bigint();
const elapsedNs = (since) => Number(now() - since);

/** Nanoseconds per iteration of an async `step`, median of `runs` runs of `iterations`. */
async function measureAsync(step, { iterations, runs = 7, warmup = 1 }) {
  for (let w = 0; w < warmup; w++) for (let i = 0; i < iterations; i++) await step(i);
  const samples = [];
  for (let run = 0; run < runs; run++) {
    const start = now();
    for (let i = 0; i < iterations; i++) await step(i);
    samples.push(elapsedNs(start) / iterations);
  }
  return median(samples);
}

/** Touches `bytes` of memory and frees it, so that the next first touches do not measure pages the host handed back to the outer hypervisor (this machine's hypervisor takes freed memory back, and the next first touch of it is slow). */
function warmHostMemory(bytes) {
  const buffer = Buffer.alloc(bytes, 1);
  buffer[bytes - 1] = 2;
}

const legacyLayout = () => MemoryLayout.new(1n * GiB, [range(3n * GiB, 4n * GiB)]);
const iterations = 200;

/** ReadWrite <-> ReadOnly toggles of PAM on a manager with no partition or a RecordingPartition: the manager and binding share of the figure. */
async function visibilityWithout(partition) {
  const manager = await new GuestMemoryBuilder().x86LegacySupport(true).build(legacyLayout());
  try {
    if (partition) await manager.attachPartition(Vtl.Vtl0, partition);
    const control = manager.ramVisibilityControl();
    return await measureAsync((i) => control.setRamVisibility(PAM, i % 2 === 0 ? RamVisibility.ReadOnly : RamVisibility.ReadWrite), { iterations });
  } finally {
    await manager.close();
  }
}

/** Nanoseconds per raw delete+create pair of a 16 KiB slot on an idle VM (median of 7 runs). */
function rawSlotPair() {
  return median(Array.from({ length: 7 }, () => __bench.kvmRawSlotChurn(PAM.len, iterations)));
}

/**
 * Nanoseconds per `manager.apply` of all 12 PAM ranges toggled ReadWrite <-> ReadOnly (the
 * ranges start ReadWrite); first checks the batch's shape: 12 slot deletes and 12 creates.
 */
async function pamBatch(manager, partition) {
  const batches = [RamVisibility.ReadOnly, RamVisibility.ReadWrite].map((visibility) => ALL_PAM.map((r) => ({ kind: 'ramVisibility', range: r, visibility })));
  partition.takeSlotLog();
  await manager.apply(batches[0]);
  const batchCalls = partition.takeSlotLog();
  const deletes = batchCalls.reduce((n, c) => n + c.deleted.length, 0);
  const creates = batchCalls.reduce((n, c) => n + c.created.length, 0);
  if (deletes !== 12 || creates !== 12) throw new Error(`unexpected slot calls for the PAM batch: ${deletes} deletes, ${creates} creates`);
  await manager.apply(batches[1]);
  return measureAsync((i) => manager.apply(batches[i % 2]), { iterations: 50 });
}

/** Nanoseconds per `setRamVisibility` of the 16 KiB PAM range toggled ReadWrite <-> ReadOnly. */
function readOnlyToggle(control) {
  return measureAsync((i) => control.setRamVisibility(PAM, i % 2 === 0 ? RamVisibility.ReadOnly : RamVisibility.ReadWrite), { iterations });
}

/**
 * The single toggle, the PAM batch and the raw pair measured in a child process pinned to `cpu`
 * with taskset, so that ours and the baseline run under the same CPU's costs: on the project
 * machine a slot change costs many times more from one CPU than from the other (docs/design.md,
 * "Benchmarks"). `{single, batch, raw}` in nanoseconds, or null where taskset is missing.
 */
function pinnedPamBatch(cpu) {
  const child = spawnSync('taskset', ['-c', String(cpu), process.execPath, __filename, PAM_CHILD], { encoding: 'utf8' });
  if (child.error?.code === 'ENOENT') return null;
  if (child.status !== 0) throw new Error(`the PAM batch on CPU ${cpu} failed (${child.status ?? child.signal}): ${child.stderr || child.error}`);
  return JSON.parse(child.stdout.trim().split('\n').pop());
}

/** The child of `pinnedPamBatch`: prints `{single, batch, raw}`. */
async function pamBatchChild() {
  const manager = await new GuestMemoryBuilder().x86LegacySupport(true).build(legacyLayout());
  const partition = await KvmPartition.create();
  try {
    await manager.attachPartition(Vtl.Vtl0, partition);
    const single = await readOnlyToggle(manager.ramVisibilityControl());
    const batch = await pamBatch(manager, partition);
    console.log(JSON.stringify({ single, batch, raw: rawSlotPair() }));
  } finally {
    partition.close();
    await manager.close();
  }
}

async function visibilityChurn() {
  const withoutPartition = await visibilityWithout(null);
  const recording = new RecordingPartition();
  const withRecording = await visibilityWithout(recording);
  recording.close();
  const manager = await new GuestMemoryBuilder().x86LegacySupport(true).build(legacyLayout());
  const partition = await KvmPartition.create();
  await manager.attachPartition(Vtl.Vtl0, partition);
  const control = manager.ramVisibilityControl();
  try {
    const singleToggle = await readOnlyToggle(control);
    const unmapToggle = await measureAsync((i) => control.setRamVisibility(PAM, i % 2 === 0 ? RamVisibility.Unmapped : RamVisibility.ReadWrite), { iterations });
    // Each ReadOnly <-> ReadWrite call was one slot delete + one create; check, so the ratio means what it says.
    partition.takeSlotLog();
    await control.setRamVisibility(PAM, RamVisibility.ReadOnly);
    const calls = partition.takeSlotLog();
    const shape = calls.map((c) => `${c.op}:${c.deleted.length}/${c.created.length}`).join(',');
    if (shape !== 'unmap:1/0,map:0/1') throw new Error(`unexpected slot calls for one visibility change: ${shape}`);
    await control.setRamVisibility(PAM, RamVisibility.ReadWrite);
    const batchToggle = await pamBatch(manager, partition);
    const raw = rawSlotPair();
    report({
      name: 'setRamVisibility 16 KiB PAM ReadWrite<->ReadOnly, KVM attached (per call; threads on any CPU)',
      value: singleToggle / 1000,
      unit: 'us',
      baseline: 'raw KVM_SET_USER_MEMORY_REGION delete+create 16 KiB (idle VM, same process)',
      baselineValue: raw / 1000,
    });
    report({
      name: 'manager.apply: all 12 PAM ranges ReadWrite<->ReadOnly in one batch, KVM attached (per batch; threads on any CPU)',
      value: batchToggle / 1000,
      unit: 'us',
      baseline: '12 raw KVM_SET_USER_MEMORY_REGION delete+create 16 KiB (idle VM, same process)',
      baselineValue: (12 * raw) / 1000,
    });
    for (const cpu of [...os.cpus().keys()].slice(0, PINNED_CPUS)) {
      const pinned = pinnedPamBatch(cpu);
      if (pinned === null) {
        console.log('kvm.bench.js: taskset (util-linux) is not installed: the PAM toggles per CPU are not measured');
        break;
      }
      report({
        name: `setRamVisibility 16 KiB PAM ReadWrite<->ReadOnly, KVM attached (per call; process on CPU ${cpu})`,
        value: pinned.single / 1000,
        unit: 'us',
        baseline: `raw KVM_SET_USER_MEMORY_REGION delete+create 16 KiB (idle VM, same process on CPU ${cpu})`,
        baselineValue: pinned.raw / 1000,
        target: '<= 3',
      });
      report({
        name: `manager.apply: all 12 PAM ranges ReadWrite<->ReadOnly in one batch, KVM attached (per batch; process on CPU ${cpu})`,
        value: pinned.batch / 1000,
        unit: 'us',
        baseline: `12 raw KVM_SET_USER_MEMORY_REGION delete+create 16 KiB (idle VM, same process on CPU ${cpu})`,
        baselineValue: (12 * pinned.raw) / 1000,
        target: '<= 3',
      });
    }
    report({
      name: 'setRamVisibility 16 KiB PAM ReadWrite<->ReadOnly, no partition attached (per call; manager + binding share)',
      value: withoutPartition / 1000,
      unit: 'us',
      baseline: 'raw KVM_SET_USER_MEMORY_REGION delete+create 16 KiB (idle VM)',
      baselineValue: raw / 1000,
    });
    report({
      name: 'setRamVisibility 16 KiB PAM ReadWrite<->ReadOnly, RecordingPartition attached (per call)',
      value: withRecording / 1000,
      unit: 'us',
      baseline: 'raw KVM_SET_USER_MEMORY_REGION delete+create 16 KiB (idle VM)',
      baselineValue: raw / 1000,
    });
    report({
      name: 'setRamVisibility 16 KiB PAM Unmapped then ReadWrite, KVM attached (per pair of calls)',
      value: (2 * unmapToggle) / 1000,
      unit: 'us',
      baseline: 'raw KVM_SET_USER_MEMORY_REGION delete+create 16 KiB (idle VM)',
      baselineValue: raw / 1000,
    });
  } finally {
    partition.close();
    await manager.close();
  }
}

/** Builds 320 MiB of RAM (prefetchRam as told), attaches a fresh VM, and times the guest touching one byte per page of [64 MiB, 320 MiB). */
async function firstTouch(prefetch) {
  const touchStart = 64n * MiB;
  const touchLen = 256n * MiB;
  const pages = touchLen / (4n * KiB);
  const layout = MemoryLayout.new(touchStart + touchLen, [range(3n * GiB, 4n * GiB)]);
  const manager = await new GuestMemoryBuilder().prefetchRam(prefetch).build(layout);
  const partition = await KvmPartition.create();
  try {
    const attachStart = now();
    await manager.attachPartition(Vtl.Vtl0, partition);
    const attachNs = elapsedNs(attachStart);
    const memory = await manager.client().guestMemory();
    const vcpu = await partition.createVcpu({ pageTables: PAGE_TABLES });
    try {
      memory.writeAt(CODE, guestPrograms().touchPages);
      vcpu.setRegisters({ rip: CODE, rsi: touchStart, rcx: pages });
      const touchStartTime = now();
      const exit = await vcpu.run({ timeoutMs: 120000 });
      const touchNs = elapsedNs(touchStartTime);
      if (exit.kind !== 'IoOut' || exit.port !== guestPrograms().donePort) throw new Error(`touch loop ended with ${JSON.stringify(exit.kind)}`);
      if (memory.readU8(touchStart + touchLen - 4n * KiB) !== 1) throw new Error('the guest did not touch the last page');
      return { touchPerPage: touchNs / Number(pages), attachPlusTouchPerPage: (attachNs + touchNs) / Number(pages) };
    } finally {
      vcpu.close();
    }
  } finally {
    partition.close();
    await manager.close();
  }
}

async function firstTouchComparison() {
  const runs = { true: [], false: [] };
  for (let rep = 0; rep < 3; rep++) {
    for (const prefetch of [false, true]) {
      warmHostMemory(512 * 1024 * 1024);
      runs[prefetch].push(await firstTouch(prefetch));
    }
  }
  const pick = (prefetch, key) => median(runs[prefetch].map((r) => r[key]));
  report({
    name: 'guest first touch 256 MiB memfd RAM, prefetchRam on (per 4 KiB page)',
    value: pick(true, 'touchPerPage'),
    unit: 'ns',
    baseline: 'same, prefetchRam off',
    baselineValue: pick(false, 'touchPerPage'),
  });
  report({
    name: 'attachPartition + guest first touch 256 MiB, prefetchRam on (per 4 KiB page; 320 MiB RAM prefetched)',
    value: pick(true, 'attachPlusTouchPerPage'),
    unit: 'ns',
    baseline: 'same, prefetchRam off',
    baselineValue: pick(false, 'attachPlusTouchPerPage'),
  });
}

async function main() {
  let probe;
  try {
    probe = await KvmPartition.create();
  } catch (error) {
    if (error.code !== 'ERR_KVM_UNAVAILABLE') throw error;
    console.log(`kvm.bench.js skipped: ${error.code}: ${error.message}`);
    return;
  }
  probe.close();
  await visibilityChurn();
  await firstTouchComparison();
}

(process.argv.includes(PAM_CHILD) ? pamBatchChild() : main()).catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
