// Resource leaks (issue 7, "Stress and faults"): 10,000 managers created with
// GuestMemoryBuilder.build and closed, then 10,000 more dropped and garbage collected, and the
// same for the standalone objects (GuestMemory.allocate, SparseMapping with private pages and a
// memfd view, GuestMemory.fromSparseMapping without and with a hook,
// Mappable.allocSharedMemory). Afterwards open descriptors (/proc/self/fd), /proc/self/maps
// lines, threads (/proc/self/task) and resident memory (VmRSS) must be back at their starting
// level within the tolerances below.
//
// Each measurement runs in its own child process (fixtures/stress/leak_child.js, with
// --expose-gc) so the ava worker's own state does not blur the figures. 10,000 of each takes
// about 8 s (managers) and 6 s (objects) on the 2-core project machine, so the full count is used.
//
// How RSS is measured: glibc's malloc keeps freed memory (it returns a fragmented heap to the OS
// only at the top), and V8 grows its young generation under allocation pressure and keeps it.
// Neither is a leak, and together they moved VmRSS by 60-150 MiB in trial runs. The child
// therefore runs with MALLOC_MMAP_THRESHOLD_=32768, MALLOC_TRIM_THRESHOLD_=131072,
// MALLOC_ARENA_MAX=2 (freed blocks go back to the OS) and --max-semi-space-size=1 (V8's young
// generation cannot grow), and measures after a warm-up of 500 closed and 1,500 dropped rounds.
// Trial runs then ended within +0.3 to +5 MiB of the start.
'use strict';
const test = require('ava');
const path = require('node:path');
const { spawn } = require('node:child_process');

const CHILD = path.join(__dirname, 'fixtures', 'stress', 'leak_child.js');
const COUNT = 10_000;

/** Tolerances against the starting level (stated in every assertion message). */
const TOLERANCE = {
  /** Every descriptor must be closed again: no slack. */
  fds: 0,
  /** Every thread (manager threads, VA mapper threads) must have ended: no slack. */
  threads: 0,
  /** /proc/self/maps lines: V8 and malloc may keep a few more areas (16 lines). */
  maps: 16,
  /** VmRSS: 16 MiB, i.e. less than 1.7 KiB per object over 10,000 (a manager's RAM alone is 2 MiB). */
  rssKiB: 16 * 1024,
};

const ALLOCATOR_ENV = { MALLOC_MMAP_THRESHOLD_: '32768', MALLOC_TRIM_THRESHOLD_: '131072', MALLOC_ARENA_MAX: '2' };

/**
 * How long a child may go without printing anything before it counts as hung and is killed. The
 * children print a progress line every few hundred rounds, so this bounds a stall, not the run:
 * on a loaded machine 10,000 managers take minutes, and a limit on the whole run (100 s before)
 * killed healthy children.
 */
const IDLE_MS = 60_000;

/**
 * Runs `command args`; resolves {status, signal, stdout, stderr}. The child is killed once it has
 * printed nothing for IDLE_MS. Each output extends the test's (and so ava's) timeout, so a child
 * that keeps making progress is never cut short however slow the machine is.
 */
function run(t, command, args, { env = {} } = {}) {
  return new Promise((resolve) => {
    const child = spawn(command, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), IDLE_MS);
    const progressed = () => {
      timer.refresh();
      t.timeout(IDLE_MS + 30_000, `the child printed nothing for ${IDLE_MS} ms`);
    };
    progressed();
    child.stdout.on('data', (d) => {
      stdout += d;
      progressed();
    });
    child.stderr.on('data', (d) => {
      stderr += d;
      progressed();
    });
    child.on('close', (status, signal) => {
      clearTimeout(timer);
      resolve({ status, signal, stdout, stderr });
    });
  });
}

/** Runs the leak child for `what`; resolves with the child's outcome and its JSON report. */
async function runLeakChild(t, what, closed, dropped) {
  const started = performance.now();
  const args = ['--expose-gc', '--max-semi-space-size=1', CHILD, what, String(closed), String(dropped)];
  const child = await run(t, process.execPath, args, { env: ALLOCATOR_ENV });
  const elapsed = performance.now() - started;
  return { child, elapsed, report: child.status === 0 ? JSON.parse(child.stdout.trim().split('\n').pop()) : null };
}

/** Asserts every resource of `after` is within the tolerance of `start`. */
function assertBackToStart(t, label, start, after) {
  for (const [key, slack] of Object.entries(TOLERANCE)) {
    t.true(
      after[key] <= start[key] + slack,
      `${label}: ${key} ${start[key]} → ${after[key]} (tolerance +${slack}${key === 'rssKiB' ? ' KiB' : ''})`,
    );
  }
}

for (const what of ['managers', 'objects']) {
  test(`${COUNT} ${what} closed and ${COUNT} dropped and collected leave fds, maps, threads and RSS at their starting level`, async (t) => {
    const { child, elapsed, report } = await runLeakChild(t, what, COUNT, COUNT);
    t.is(child.status, 0, `leak child failed (${child.signal ?? child.status}): ${child.stderr}`);
    if (!report) return;
    t.log(`${what}: ${COUNT} closed in ${report.closeMs.toFixed(0)} ms, ${COUNT} dropped in ${report.dropMs.toFixed(0)} ms (child ran ${elapsed.toFixed(0)} ms)`);
    t.log(`start ${JSON.stringify(report.start)}`);
    t.log(`after close ${JSON.stringify(report.afterClose)}`);
    t.log(`fullest while dropping ${JSON.stringify(report.peakWhileDropping)}`);
    t.log(`after drop ${JSON.stringify(report.afterDrop)}`);
    t.is(report.closed, COUNT);
    t.is(report.dropped, COUNT);
    assertBackToStart(t, `after ${COUNT} ${what} closed`, report.start, report.afterClose);
    assertBackToStart(t, `after ${COUNT} ${what} dropped and collected`, report.start, report.afterDrop);
    // The dropped objects really held resources until collected (the measure sees them).
    t.true(report.peakWhileDropping.fds > report.start.fds, `dropped ${what} held descriptors until collected: ${JSON.stringify(report.peakWhileDropping)}`);
  });
}

/**
 * A test of `count` worker threads terminated in the middle of `doing` (the leak child's `what`
 * mode): what they held must be back at its starting level afterwards.
 */
function terminatedWorkersTest(what, count, doing) {
  test(`workers terminated in the middle of ${doing} leave fds, maps, threads and RSS at their starting level`, async (t) => {
    const { child, elapsed, report } = await runLeakChild(t, what, count, 0);
    t.is(child.status, 0, `leak child failed (${child.signal ?? child.status}): ${child.stderr}`);
    if (!report) return;
    t.log(`${count} workers terminated in the middle of ${doing} in ${report.ms.toFixed(0)} ms (child ran ${elapsed.toFixed(0)} ms)`);
    t.log(`start ${JSON.stringify(report.start)}`);
    t.log(`after ${JSON.stringify(report.after)}`);
    t.is(report.count, count);
    assertBackToStart(t, `after ${count} workers terminated in the middle of ${doing}`, report.start, report.after);
  });
}

// Worker threads terminated while readAtAsync calls of theirs are in flight: a read completes on
// the libuv pool into a worker environment that runs no more JavaScript, where N-API refuses to
// create the result Buffer. The bytes read must be freed then; before, napi-rs' Buffer
// conversion leaked them (each worker keeps 4 reads of 1 MiB in flight: trial runs leaked
// about 3.9 MiB a worker, 186 MiB over the count, and 2.5 MiB with the fix). 48 workers take
// about 4 s on the 2-core project machine.
terminatedWorkersTest('workers', 48, 'readAtAsync');

// Worker threads terminated in the middle of a migration between two managers of theirs (over a
// duplexPair, the source waiting for a pause that never returns): the migrations' channels go
// with the worker, and nothing feeds them any more. Before, both migrations waited for bytes
// forever, holding both managers (their memfds, threads and VA windows) and the destination's
// half-built machine: 3 descriptors, 7 threads and about 2.3 MiB a worker in trial runs. Now a
// channel whose owner is gone fails the migration. 40 workers take about 3 s.
terminatedWorkersTest('migrating-workers', 40, 'a migration');

// Managers dropped without close() and left to V8's own collection: each manager tells V8 what
// it holds (napi_adjust_external_memory: a memfd, two threads, a VA reservation), so V8 collects
// unreachable ones every few managers instead of letting thousands pile up. Before, 5,000 such
// managers under the common 1,024-descriptor limit failed with ERR_ALLOCATION_FAILED (EMFILE).
test('managers dropped without close() and without explicit collection stay within a 1,024-descriptor limit', async (t) => {
  const script = `
    const mb = require(${JSON.stringify(path.join(__dirname, '..', 'dist'))});
    (async () => {
      const layout = mb.MemoryLayout.new(2n * mb.MiB, [mb.range(4n * mb.MiB, 8n * mb.MiB)]);
      for (let i = 0; i < 5000; i++) {
        await new mb.GuestMemoryBuilder().build(layout);
        if (i % 250 === 249) console.log('progress', i + 1);
      }
      console.log('ok');
    })().catch((error) => { console.log(error.code, error.cause && error.cause.code); process.exitCode = 1; });`;
  const child = await run(t, '/bin/sh', ['-c', 'ulimit -n 1024 && exec "$@"', 'sh', process.execPath, '-e', script]);
  t.log(`5,000 dropped managers under ulimit -n 1024: exit ${child.status}, ${child.stdout.trim().split('\n').pop()}`);
  t.is(child.status, 0, child.stdout + child.stderr);
});

// Finalizers run between turns of the event loop: a program that drops Mappables in a loop that
// never yields keeps every descriptor until it yields; one that yields now and then stays low.
test('Mappables dropped without close() stay within a 1,024-descriptor limit too', async (t) => {
  const script = `
    const mb = require(${JSON.stringify(path.join(__dirname, '..', 'dist'))});
    (async () => {
      for (let i = 0; i < 20000; i++) {
        mb.Mappable.allocSharedMemory(4096, 'dropped');
        if (i % 100 === 99) await new Promise((resolve) => setImmediate(resolve));
        if (i % 1000 === 999) console.log('progress', i + 1);
      }
      console.log('ok');
    })().catch((error) => { console.log(error.code, error.message); process.exitCode = 1; });`;
  const child = await run(t, '/bin/sh', ['-c', 'ulimit -n 1024 && exec "$@"', 'sh', process.execPath, '-e', script]);
  t.log(`20,000 dropped Mappables under ulimit -n 1024: exit ${child.status}, ${child.stdout.trim().split('\n').pop()}`);
  t.is(child.status, 0, child.stdout + child.stderr);
});

test('running out of descriptors says so and what to do (EMFILE in the message, not only in the cause)', async (t) => {
  const script = `
    const mb = require(${JSON.stringify(path.join(__dirname, '..', 'dist'))});
    (async () => {
      const keep = [];
      const layout = mb.MemoryLayout.new(2n * mb.MiB, [mb.range(4n * mb.MiB, 8n * mb.MiB)]);
      try {
        for (let i = 0; i < 200; i++) keep.push(await new mb.GuestMemoryBuilder().build(layout));
        console.log(JSON.stringify({ built: keep.length }));
      } catch (error) {
        console.log(JSON.stringify({ code: error.code, message: error.message, cause: error.cause && error.cause.code }));
      }
      await Promise.all(keep.map((m) => m.close()));
    })();`;
  const child = await run(t, '/bin/sh', ['-c', 'ulimit -n 64 && exec "$@"', 'sh', process.execPath, '-e', script]);
  const report = JSON.parse(child.stdout.trim().split('\n').pop());
  t.is(report.code, 'ERR_ALLOCATION_FAILED', child.stdout + child.stderr);
  t.is(report.cause, 'EMFILE');
  t.regex(report.message, /too many open files: close managers you no longer need \(manager\.close\(\)\) or raise the limit \(ulimit -n\)/);
});
