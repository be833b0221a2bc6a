// Snapshots and restores (issue 11). The five targets of the issue are measured by the core's
// benchmark (`cargo bench -p membacking --bench snapshot`, which has the raw baselines:
// copy_file_range/sendfile, a raw userfaultfd fault + UFFDIO_COPY); this file runs it and
// forwards its JSON lines:
//
// - snapshot_bytes_written_4gib_256mib: bytes a full snapshot of a 4 GiB guest with 256 MiB
//   touched writes, against the touched bytes (<= 1.05);
// - snapshot_throughput_4gib_256mib: its throughput against copy_file_range of the same extents
//   (>= 0.8);
// - copy_restore_throughput_256mib: a copy restore against copy_file_range of memory.bin into a
//   memfd (>= 0.8);
// - incremental_snapshot_1pct_dirty_1gib: an incremental snapshot with 1% of pages dirty against
//   a full one (<= 0.05);
// - lazy_restore_16gib_vs_1gib (<= 1.2), lazy_restore_vs_build_16gib (<= 3) and lazy_first_touch
//   (<= 3 a raw userfaultfd fault).
//
// Then the same lazy-restore comparisons through the JavaScript API (what a caller of
// GuestMemoryBuilder.restore waits for, Promise included), against GuestMemoryBuilder#build.
//
// Run with `node bench/run.js snapshot` (after `npm run build`). Lines starting with `#` are notes.
'use strict';
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const mb = require('../dist');
const { report } = require('./harness');

const { GuestMemoryBuilder, MemoryLayout, range, GiB, MiB, KiB } = mb;
const note = (text) => console.log(`# ${text}`);
const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
const ms = (start) => Number(process.hrtime.bigint() - start) / 1e6;

/** Runs the core's snapshot benchmark and forwards its result lines. */
function coreBenchmark() {
  const root = path.join(__dirname, '..');
  const child = spawnSync('cargo', ['bench', '--quiet', '-p', 'membacking', '--bench', 'snapshot'], { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 1 << 26 });
  if (child.error) throw new Error(`cargo bench could not be run: ${child.error.message}`);
  for (const line of child.stdout.split('\n')) if (line.startsWith('{')) console.log(line);
  for (const line of child.stderr.split('\n')) if (/skipped|SKIPPED/.test(line)) note(line.trim());
  if (child.status !== 0) throw new Error(`cargo bench exited with ${child.status}: ${child.stderr.slice(-2000)}`);
}

/** Two RAM regions (a gap from 512 MiB to 1 GiB) of `ram` bytes in all. */
const layout = (ram) => MemoryLayout.new(ram, [range(512n * MiB, GiB)]);

/** A snapshot of a guest of `ram` bytes with the same 16 MiB of data whatever its size. */
async function snapshotWithData(dir, ram) {
  const manager = await new GuestMemoryBuilder().build(layout(ram));
  const memory = await manager.client().guestMemory();
  const chunk = Buffer.alloc(Number(128n * KiB));
  for (let i = 0; i < 128; i++) {
    chunk.fill(i + 1);
    memory.writeAt(BigInt(i) * 2n * MiB, chunk);
  }
  memory.close();
  await manager.snapshot(dir);
  await manager.close();
  return dir;
}

/** Milliseconds until a lazy restore's manager is returned (the fill runs afterwards, untimed). */
async function lazyRestoreMs(dir) {
  const start = process.hrtime.bigint();
  const manager = await GuestMemoryBuilder.restore(dir, { mode: 'lazy', deferBackgroundFill: true });
  const elapsed = ms(start);
  manager.lazyRestore.startBackground();
  await manager.lazyRestore.done;
  await manager.close();
  return elapsed;
}

async function buildMs(ram) {
  const start = process.hrtime.bigint();
  const manager = await new GuestMemoryBuilder().build(layout(ram));
  const elapsed = ms(start);
  await manager.close();
  return elapsed;
}

async function lazyFromJs() {
  const support = mb.snapshotSupport();
  if (!support.lazyRestore) {
    note(`lazy restores through JavaScript skipped: ${support.reason}`);
    return;
  }
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'membacking-bench-snapshot-'));
  try {
    const small = await snapshotWithData(path.join(root, 'small'), GiB);
    const large = await snapshotWithData(path.join(root, 'large'), 16n * GiB);
    const times = { small: [], large: [], build: [] };
    for (let round = 0; round < 41; round++) {
      // Alternating order: neither size always follows the other's teardown.
      for (const which of round % 2 === 0 ? ['small', 'large'] : ['large', 'small']) times[which].push(await lazyRestoreMs(which === 'small' ? small : large));
      times.build.push(await buildMs(16n * GiB));
    }
    const [smallMs, largeMs, build] = [median(times.small), median(times.large), median(times.build)];
    report({ name: 'GuestMemoryBuilder.restore lazy until the manager is ready (JS), 16 GiB guest vs 1 GiB', value: largeMs, unit: 'ms', baseline: 'the same for a 1 GiB guest with the same data', baselineValue: smallMs, target: '<= 1.2' });
    report({ name: 'GuestMemoryBuilder.restore lazy until the manager is ready (JS), 16 GiB guest vs build', value: largeMs, unit: 'ms', baseline: 'GuestMemoryBuilder#build of the same layout (JS)', baselineValue: build, target: '<= 3' });
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
}

async function main() {
  coreBenchmark();
  await lazyFromJs();
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
