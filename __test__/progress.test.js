// Progress of long work: prefetchRam's onProgress reports, the terminal progress bar, and the
// CLI's prefetch command.
'use strict';
const test = require('ava');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const mb = require('../dist');
const { ProgressBar } = require('../dist/cli/progress');

const { GiB, MiB, range, Vtl } = mb;

test('prefetchRam onProgress: one report per prefetched range, growing to the total', async (t) => {
  const seen = [];
  let lastReport;
  const complete = new Promise((resolve) => (lastReport = resolve));
  const layout = mb.MemoryLayout.new(64n * MiB, [range(3n * GiB, 4n * GiB)]);
  const manager = await new mb.GuestMemoryBuilder()
    .x86LegacySupport(true)
    .prefetchRam(true, {
      onProgress: (done, total, failure) => {
        seen.push([done, total, failure]);
        if (done === total) lastReport();
      },
    })
    .build(layout);
  const partition = new mb.RecordingPartition();
  await manager.attachPartition(Vtl.Vtl0, partition);
  // Reports are fire-and-forget: they arrive on this thread's event loop, the last one with done === total.
  await complete;
  const prefetched = partition.log().filter((c) => c.op === 'prefetch').reduce((sum, c) => sum + c.size, 0n);
  t.is(prefetched, 64n * MiB);
  t.is(seen.length, 16, 'one report per prefetched RAM region');
  t.true(seen.every(([, total]) => total === prefetched));
  t.deepEqual(seen[seen.length - 1], [prefetched, prefetched, null]);
  t.true(seen.every(([done], i) => i === 0 || done > seen[i - 1][0]));
  await manager.close();
});

test('prefetchRam onProgress and inspect() report a range that failed to prefetch, and the attach still succeeds', async (t) => {
  const seen = [];
  let reported;
  const firstReport = new Promise((resolve) => (reported = resolve));
  const layout = mb.MemoryLayout.new(64n * MiB, [range(3n * GiB, 4n * GiB)]);
  const manager = await new mb.GuestMemoryBuilder()
    .prefetchRam(true, {
      onProgress: (done, total, failure) => {
        seen.push({ done, total, failure });
        reported();
      },
    })
    .build(layout);
  const partition = new mb.RecordingPartition();
  partition.failOn('prefetch', 0);
  await manager.attachPartition(Vtl.Vtl0, partition);
  await firstReport;
  t.is(seen.length, 1);
  t.is(seen[0].done, 64n * MiB);
  t.is(seen[0].total, 64n * MiB);
  t.is(seen[0].failure.partition, 0);
  t.deepEqual([seen[0].failure.range.start, seen[0].failure.range.end], [0n, 64n * MiB]);
  t.is(seen[0].failure.errno, null, 'the recording partition fails without an OS error');
  t.is(typeof seen[0].failure.message, 'string');
  const failures = (await manager.inspect()).prefetchFailures;
  t.is(failures.count, 1);
  t.deepEqual(failures.recent, [seen[0].failure]);
  await manager.close();
});

test('prefetchRam options are checked', (t) => {
  const builder = new mb.GuestMemoryBuilder();
  t.throws(() => builder.prefetchRam(true, { onProgress: 5 }), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  t.throws(() => builder.prefetchRam(true, null), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  t.throws(() => builder.prefetchRam('yes'), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  t.is(builder.prefetchRam(true, { onProgress: () => {} }), builder);
});

test('the progress bar draws only on a terminal and redraws in place', (t) => {
  t.is(ProgressBar.render('prefetch', 512n * MiB, GiB, 10), 'prefetch [#####.....]  50% 512 MiB / 1 GiB');
  t.is(ProgressBar.render('x', 0n, 0n, 4), 'x [####] 100% 0 B / 0 B');
  const written = [];
  const tty = { isTTY: true, write: (s) => written.push(s) };
  const bar = new ProgressBar('prefetch', tty);
  bar.update(0n, GiB);
  bar.update(0n, GiB);
  bar.update(GiB, GiB);
  bar.finish();
  t.deepEqual(written, [`\r${ProgressBar.render('prefetch', 0n, GiB)}`, `\r${ProgressBar.render('prefetch', GiB, GiB)}`, '\n']);
  const pipe = { isTTY: false, write: (s) => written.push(s) };
  const quiet = new ProgressBar('prefetch', pipe);
  quiet.update(1n, 2n);
  quiet.finish();
  t.false(quiet.enabled);
  t.is(written.length, 3, 'nothing is drawn when the stream is not a terminal');
});

test('membacking prefetch prints what it prefetched (no bar when stderr is not a terminal)', (t) => {
  const cli = path.join(__dirname, '..', 'dist', 'cli', 'main.js');
  const r = spawnSync(process.execPath, [cli, 'prefetch', '--ram', '64M', '--gap', '3G-4G', '--no-kvm'], { encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, /^prefetched 64 MiB of 64 MiB into RecordingPartition/);
  t.is(r.stderr, '');
  const bad = spawnSync(process.execPath, [cli, 'prefetch', '--ram', '64M'], { encoding: 'utf8' });
  t.is(bad.status, 2);
  t.regex(bad.stderr, /^membacking: .*no MMIO gap/);
});
