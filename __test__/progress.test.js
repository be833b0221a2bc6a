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
  const layout = mb.MemoryLayout.new(64n * MiB, [range(3n * GiB, 4n * GiB)]);
  const manager = await new mb.GuestMemoryBuilder()
    .x86LegacySupport(true)
    .prefetchRam(true, { onProgress: (done, total) => seen.push([done, total]) })
    .build(layout);
  const partition = new mb.RecordingPartition();
  await manager.attachPartition(Vtl.Vtl0, partition);
  // Reports are fire-and-forget: they arrive on this thread's event loop.
  for (let i = 0; i < 50 && seen.length < 16; i++) await new Promise((resolve) => setTimeout(resolve, 10));
  const prefetched = partition.log().filter((c) => c.op === 'prefetch').reduce((sum, c) => sum + c.size, 0n);
  t.is(prefetched, 64n * MiB);
  t.is(seen.length, 16, 'one report per prefetched RAM region');
  t.true(seen.every(([, total]) => total === prefetched));
  t.deepEqual(seen[seen.length - 1], [prefetched, prefetched]);
  t.true(seen.every(([done], i) => i === 0 || done > seen[i - 1][0]));
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
