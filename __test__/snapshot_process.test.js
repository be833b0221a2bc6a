// Snapshots and dirty tracking under processes and threads: a child killed with SIGKILL at random
// points while it snapshots leaves the previous snapshot (or the complete new one) restorable; a
// worker_threads writer loses no write while the main thread takes dirty ranges; failed restores
// and lazy restores closed early leave descriptors and threads where they were; a lazy restore
// without userfaultfd is ERR_UNSUPPORTED with the reason and builds nothing.
'use strict';
const test = require('ava');
const fs = require('node:fs');
const path = require('node:path');
const { spawn, spawnSync } = require('node:child_process');
const { Worker } = require('node:worker_threads');
const { once } = require('node:events');
const mb = require('../dist');
const { rng, tempDir } = require('./helpers/snapshot');
const { readableByAll, readablePackageCopy } = require('./helpers/unprivileged');

const { GiB, MiB, range, MemoryLayout, GuestMemoryBuilder } = mb;
const CHILD = path.join(__dirname, 'fixtures', 'snapshot', 'restore_child.js');
const WRITER = path.join(__dirname, 'fixtures', 'snapshot', 'writer_worker.js');

/** Runs the child with `args`; resolves its outcome and last JSON line. */
function runChild(args, { command = process.execPath, prefix = [], script = CHILD } = {}) {
  const child = spawnSync(command, [...prefix, script, ...args], { encoding: 'utf8', timeout: 120_000 });
  const last = child.stdout.trim().split('\n').pop();
  let report = null;
  try {
    report = JSON.parse(last);
  } catch {
    // No report: the assertions on the status say why.
  }
  return { child, report };
}

/** The expected contents of page `i` written in `generation` (restore_child.js `fill`). */
function expectedPage(generation, i) {
  const page = Buffer.alloc(4096);
  page.writeUInt32LE(generation, 0);
  page.writeUInt32LE(i, 4);
  page.fill((generation * 31 + i) & 0xff, 8, 4096);
  return page;
}

/** The generation every page of the restored snapshot holds, or an error naming the first page that disagrees. */
async function restoredGeneration(dir) {
  const manager = await GuestMemoryBuilder.restore(dir);
  try {
    const memory = await manager.client().guestMemory();
    const data = memory.read(0, 8192n * 4096n);
    memory.close();
    const generation = data.readUInt32LE(0);
    for (let i = 0; i < 8192; i++) {
      const page = data.subarray(i * 4096, (i + 1) * 4096);
      if (!page.equals(expectedPage(generation, i))) return { generation, torn: i };
    }
    return { generation, torn: null };
  } finally {
    await manager.close();
  }
}

test('a child killed with SIGKILL at random points while snapshotting leaves a complete, restorable snapshot', async (t) => {
  const root = tempDir(t);
  const rand = rng(Number(process.env.MEMBACKING_TEST_SEED ?? 1234));
  const kills = 6;
  const landed = { beforePublish: 0, afterPublish: 0 };
  for (let round = 0; round < kills; round++) {
    const dir = path.join(root, `snap${round}`);
    const child = spawn(process.execPath, [CHILD, 'snapshots', dir, String(round + 1)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const exited = once(child, 'exit');
    // Wait until the first snapshot is complete and a second one is being written, then kill
    // after a random delay: somewhere in writing the pages, the files, the fsyncs or the renames.
    await new Promise((resolve, reject) => {
      child.stdout.on('data', (d) => {
        stdout += d;
        if (/^writing \d+$/m.test(stdout)) resolve();
      });
      exited.then(() => reject(new Error(`the child exited early: ${stderr}`)));
    });
    const delay = rand.below(300);
    await new Promise((resolve) => setTimeout(resolve, delay));
    child.kill('SIGKILL');
    const [, signal] = await exited;
    t.is(signal, 'SIGKILL', stderr);
    const lines = stdout.trim().split('\n');
    const ready = Number(/^ready (\d+)$/m.exec(stdout)[1]);
    const written = lines.filter((l) => l.startsWith('written ')).map((l) => Number(l.split(' ')[1]));
    const writing = lines.filter((l) => l.startsWith('writing ')).map((l) => Number(l.split(' ')[1]));
    const previous = written.length > 0 ? written.at(-1) : ready;
    const { generation, torn } = await restoredGeneration(dir);
    t.is(torn, null, `round ${round}: page ${torn} is not of generation ${generation}`);
    // The previous complete snapshot, or the one being written if it was published just before the kill.
    t.true(generation === previous || generation === writing.at(-1), `round ${round} (killed after ${delay} ms): restored ${generation}, previous ${previous}, writing ${writing.at(-1)}`);
    if (generation === previous) landed.beforePublish++;
    else landed.afterPublish++;
  }
  t.log(`kills that left the previous snapshot: ${landed.beforePublish}, the new one: ${landed.afterPublish}`);
});

test('a worker writing continuously while the main thread takes dirty ranges loses no write', async (t) => {
  const pages = 32768; // 128 MiB, each page written once, in order
  const base = 16n * MiB;
  const manager = await new GuestMemoryBuilder().build(MemoryLayout.new(256n * MiB, [range(3n * GiB, 4n * GiB)]));
  t.teardown(() => manager.close());
  const tracking = manager.dirtyTracking();
  await tracking.start();
  const client = manager.client();
  const block = 1024;
  const log = new SharedArrayBuffer(8);
  const completed = new Int32Array(log);
  const worker = new Worker(WRITER, { workerData: { handle: client.toHandle(), log, base, pages, block } });
  const finished = once(worker, 'message');
  /** For each take: how many writes had completed before it was asked for, and the pages it reported. */
  const takes = [];
  for (;;) {
    const before = Atomics.load(completed, 0);
    const ranges = await tracking.take();
    takes.push({ before, ranges });
    Atomics.add(completed, 1, 1);
    Atomics.notify(completed, 1);
    if (before === pages) break;
  }
  const [message] = await finished;
  t.is(message, 'done', JSON.stringify(message));
  await worker.terminate();
  client.close();
  // Every write that completed before a take was asked for is in that take or an earlier one.
  const seen = new Uint8Array(pages);
  let racing = 0;
  for (const [k, { before, ranges }] of takes.entries()) {
    for (const r of ranges) {
      for (let gpa = r.start; gpa < r.end; gpa += 4096n) {
        const page = Number((gpa - base) / 4096n);
        if (page >= 0 && page < pages) seen[page] = 1;
      }
    }
    const lost = seen.subarray(0, before).indexOf(0);
    t.is(lost, -1, `take ${k}: write ${lost} completed before it but is in no take so far`);
    if (lost !== -1) break;
    if (k > 0 && before > takes[k - 1].before) racing++;
  }
  t.true(racing >= pages / block - 1, `the takes ran while the worker wrote (${racing} of ${takes.length})`);
  t.log(`${takes.length} takes, ${racing} of them while writes were in flight`);
});

test('failed restores and lazy restores closed early leave descriptors and threads where they were', (t) => {
  const dir = tempDir(t);
  const { child, report } = runChild(['leaks', dir]);
  t.is(child.status, 0, child.stderr);
  if (report === null) return;
  t.deepEqual(report.codes, ['ENOENT', 'ERR_MAPPING_OUT_OF_RANGE', 'ERR_SNAPSHOT_CORRUPT', 'ERR_SNAPSHOT_LAYOUT']);
  t.true(report.after.fds <= report.start.fds, `descriptors ${report.start.fds} → ${report.after.fds}`);
  t.true(report.after.threads <= report.start.threads, `threads ${report.start.threads} → ${report.after.threads}`);
  if (report.lazy) {
    t.is(report.lazyOutcomes.length, 10);
    for (const outcome of report.lazyOutcomes) t.deepEqual(outcome, { faults: 1, outcome: 'ERR_MANAGER_GONE', finished: true });
  } else {
    t.log('lazy restores closed early: not run (userfaultfd unavailable)');
  }
});

/** How to run the child without the rights userfaultfd needs, or why it cannot be done here. */
function withoutUserfaultfd() {
  if (!mb.snapshotSupport().lazyRestore) return { prefix: [], command: process.execPath, reason: null };
  if (process.getuid() !== 0) return { reason: 'userfaultfd is available and this user cannot drop the rights it needs' };
  const setpriv = spawnSync('setpriv', ['--version']);
  if (setpriv.status !== 0) return { reason: 'userfaultfd is available and setpriv, to run as an unprivileged user, is not installed' };
  return { command: 'setpriv', prefix: ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath], reason: null };
}

const unprivileged = withoutUserfaultfd();
(unprivileged.reason === null ? test : test.skip)(
  `a lazy restore without userfaultfd is ERR_UNSUPPORTED with the reason, and builds nothing${unprivileged.reason === null ? '' : ` [skipped: ${unprivileged.reason}]`}`,
  async (t) => {
    const root = tempDir(t);
    const dir = path.join(root, 'snap');
    const manager = await new GuestMemoryBuilder().build(MemoryLayout.new(64n * MiB, [range(3n * GiB, 4n * GiB)]));
    (await manager.client().guestMemory()).fillAt(MiB, 3, 4096);
    await manager.snapshot(dir);
    await manager.close();
    // The unprivileged user the child runs as may not reach this checkout (a fresh clone in a
    // private temporary directory): it runs a copy of the package and of the child, made
    // readable beside the snapshot.
    const copy = readablePackageCopy(root);
    const script = path.join(copy, path.relative(path.join(__dirname, '..'), CHILD));
    fs.cpSync(CHILD, script);
    readableByAll(root);
    const { child, report } = runChild(['lazy', dir], { ...unprivileged, script });
    t.is(child.status, 0, child.stderr);
    t.like(report, { code: 'ERR_UNSUPPORTED', name: 'SnapshotError' });
    t.regex(report.reason, /userfaultfd/);
    t.regex(report.message, /restore with mode 'copy'/);
  },
);
