// Lifecycle: how the process and its objects end while work is in flight. Each scenario runs in a
// child process, whose timeout only detects a hang (it is generous; no timing is asserted): the
// process must end by itself, with the status its script asked for.
'use strict';
const test = require('ava');
const path = require('node:path');
const { spawn } = require('node:child_process');

const DIST = JSON.stringify(path.join(__dirname, '..', 'dist'));
/** A child that has not ended after this long is taken to hang (and killed). */
const HANG_MS = 30_000;

/** Runs `script` (CommonJS, with `mb` the package) in a child node; resolves with its outcome. */
function runScript(script) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['-e', `const mb = require(${DIST});\n${script}`], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    let hung = false;
    const timer = setTimeout(() => {
      hung = true;
      child.kill('SIGKILL');
    }, HANG_MS);
    child.on('close', (status, signal) => {
      clearTimeout(timer);
      resolve({ status, signal, hung, stdout, stderr });
    });
  });
}

/** Asserts the child ended by itself with `status`. */
function endsWith(t, outcome, status) {
  t.false(outcome.hung, `the child did not exit within ${HANG_MS} ms (killed): ${outcome.stderr}`);
  t.is(outcome.status, status, `status ${outcome.status ?? outcome.signal}: ${outcome.stderr}`);
}

// A pageFault hook that never resolves the fault ('retry' for ever, with no retry limit to end
// it) keeps a readAtAsync's pool thread handing hook calls to the main thread; `then` runs on
// the main thread after the first call, while the pool thread waits for the next answer.
const waitingForHook = (then) => `
  const mapping = new mb.SparseMapping(1n << 20n);
  let first = true;
  const memory = mb.GuestMemory.fromSparseMapping(mapping, {
    retryLimit: 0xffff_ffff,
    pageFault: () => {
      if (first) { first = false; ${then} }
      return 'retry';
    },
  });
  memory.readAtAsync(0, 4096).then(() => process.exit(10), () => process.exit(11));
`;

test('process.exit() while a readAtAsync waits for a pageFault hook ends the process', async (t) => {
  endsWith(t, await runScript(waitingForHook('setImmediate(() => process.exit(0));')), 0);
});

test('process.exit() called inside a pageFault hook of a readAtAsync ends the process', async (t) => {
  endsWith(t, await runScript(waitingForHook('process.exit(3);')), 3);
});

test('an uncaught exception while a readAtAsync waits for a pageFault hook ends the process', async (t) => {
  const outcome = await runScript(waitingForHook("setImmediate(() => { throw new Error('uncaught in the test'); });"));
  endsWith(t, outcome, 1);
  t.regex(outcome.stderr, /uncaught in the test/);
});

test('a readFallback of a writeAtAsync/readAtAsync pair: process.exit() from the hook ends the process', async (t) => {
  const outcome = await runScript(`
    const mapping = new mb.SparseMapping(1n << 20n);
    const memory = mb.GuestMemory.fromSparseMapping(mapping, {
      pageFault: () => 'fallback',
      readFallback: (gpa, len) => new Uint8Array(Number(len)),
      writeFallback: () => process.exit(4),
    });
    memory.readAtAsync(0, 4096).then(() => memory.writeAtAsync(0, Buffer.alloc(4096))).then(() => process.exit(10), () => process.exit(11));
  `);
  endsWith(t, outcome, 4);
});

test('closing the source manager while its migration awaits pause() fails the migration on both sides', async (t) => {
  // The migration's thread waited for pause() for ever: close() resolved, but migrate() and
  // migrateFrom() never settled (and held the process open).
  const outcome = await runScript(`
    const net = require('node:net');
    (async () => {
      const [a, b] = await new Promise((resolve) => {
        let client;
        const server = net.createServer((socket) => { server.close(); resolve([socket, client]); });
        server.listen(0, '127.0.0.1', () => { client = net.connect(server.address().port, '127.0.0.1'); });
      });
      const layout = mb.MemoryLayout.new(16n * mb.MiB, [mb.range(3n * mb.GiB, 4n * mb.GiB)]);
      const source = await new mb.GuestMemoryBuilder().build(layout);
      (await source.client().guestMemory()).fillAt(0, 1, 2n * mb.MiB);
      let pauseCalled;
      const paused = new Promise((resolve) => (pauseCalled = resolve));
      const migrating = source.migrate(a, { pause: () => { pauseCalled(); return new Promise(() => {}); } }).then(() => 'resolved', (e) => e.code);
      const arriving = mb.GuestMemoryBuilder.migrateFrom(b).then(() => 'resolved', (e) => e.code);
      await paused;
      await source.close();
      console.log(JSON.stringify({ source: await migrating, destination: await arriving }));
      a.destroy();
      b.destroy();
    })().catch((e) => { console.error(e); process.exit(1); });
  `);
  endsWith(t, outcome, 0);
  t.deepEqual(JSON.parse(outcome.stdout.trim() || 'null'), { source: 'ERR_MANAGER_GONE', destination: 'ERR_MIGRATION_ABORTED' });
});

test('closing the source manager while its migration waits for a silent peer fails the migration', async (t) => {
  // A destination that neither reads nor answers held the migration for ever: close()
  // resolved, but migrate() never settled (and held the process open).
  const outcome = await runScript(`
    const net = require('node:net');
    (async () => {
      const [a, b] = await new Promise((resolve) => {
        let client;
        const server = net.createServer((socket) => { server.close(); resolve([socket, client]); });
        server.listen(0, '127.0.0.1', () => { client = net.connect(server.address().port, '127.0.0.1'); });
      });
      b.pause();
      const layout = mb.MemoryLayout.new(16n * mb.MiB, [mb.range(3n * mb.GiB, 4n * mb.GiB)]);
      const source = await new mb.GuestMemoryBuilder().build(layout);
      (await source.client().guestMemory()).fillAt(0, 1, 8n * mb.MiB);
      const tracking = source.dirtyTracking();
      const migrating = source.migrate(a, { pause: () => {} }).then(() => 'resolved', (e) => e.code);
      // The migration has begun (it tracks dirty pages from then on) and waits for its peer.
      while (!tracking.active) await new Promise(setImmediate);
      await source.close();
      console.log(JSON.stringify({ source: await migrating }));
      a.destroy();
      b.destroy();
    })().catch((e) => { console.error(e); process.exit(1); });
  `);
  endsWith(t, outcome, 0);
  t.deepEqual(JSON.parse(outcome.stdout.trim() || 'null'), { source: 'ERR_MANAGER_GONE' });
});
