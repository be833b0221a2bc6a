// The memory manager across threads and processes, and its resources: a GuestMemoryClient handed
// to a worker_threads worker shares the process's one VA mapper; a child process rebuilds the
// same guest memory from the RAM memfd; a 1 TiB guest costs no resident memory until touched;
// managers do not keep the event loop alive; 500 managers created and closed (and more dropped
// and collected) leave descriptors, mappings and threads where they were.
'use strict';
const test = require('ava');
const fs = require('node:fs');
const readline = require('node:readline');
const { spawn, spawnSync } = require('node:child_process');
const { Worker } = require('node:worker_threads');
const { once } = require('node:events');
const { mb, L1, build, pattern, fixture } = require('./fixtures/manager/common');

/** Runs a fixture in a child node process; resolves with its last stdout line parsed. */
function runChild(t, name, args = [], { timeout = 110_000, nodeArgs = [] } = {}) {
  const started = process.hrtime.bigint();
  const child = spawnSync(process.execPath, [...nodeArgs, fixture(name), ...args], { encoding: 'utf8', timeout });
  const elapsedMs = Number(process.hrtime.bigint() - started) / 1e6;
  t.is(child.status, 0, `${name} failed (${child.signal ?? child.status}): ${child.stderr}`);
  const last = child.stdout.trim().split('\n').pop();
  // A child whose event loop empties before it reports ends with status 0 and prints nothing.
  if (!last) throw new Error(`${name} ended (status ${child.signal ?? child.status}) without printing its JSON line: ${child.stderr}`);
  return { result: JSON.parse(last), elapsedMs, stderr: child.stderr };
}

test('a GuestMemoryClient handle gives a worker a GuestMemory over the same VA mapper', async (t) => {
  const manager = await build(L1());
  const memory = await manager.client().guestMemory();
  const gpa = 0x123_4000;
  memory.writeU64(gpa, 0x0011_2233_4455_6677n);
  const client = manager.client();
  const handle = client.toHandle();
  t.is(handle.kind, 'GuestMemoryClient');
  t.is(typeof handle.id, 'bigint');
  const worker = new Worker(fixture('worker.js'), { workerData: { handle, gpa } });
  const exited = once(worker, 'exit');
  const [first] = await once(worker, 'message');
  t.falsy(first.error, JSON.stringify(first.error));
  t.is(first.seen, 0x0011_2233_4455_6677n, 'the worker reads what the main thread wrote');
  t.is(first.name, 'ram');
  t.is(first.maxAddress, 0x1_0000_0000n);
  t.is(memory.readU64(gpa + 8), 0xffee_ddcc_bbaa_9988n, 'the main thread reads what the worker wrote');
  memory.writeAt(gpa + 16, Buffer.from('second round'));
  worker.postMessage({ length: 12 });
  const [second] = await once(worker, 'message');
  t.is(second.second, 'second round');
  t.deepEqual(await exited, [0]);
  const snapshot = await manager.inspect();
  t.is(snapshot.mapperCount, 1, 'the worker used the process mapper');
  t.deepEqual(snapshot.mappings[0].activeMappers, [0]);
  client.close();
  // The worker opened the handle: it does not open twice.
  const stale = t.throws(() => mb.GuestMemoryClient.fromHandle(handle), { instanceOf: RangeError, message: /already opened or closed/ });
  t.is(stale.code, 'ERR_INVALID_ARG_VALUE');
  memory.close();
  await manager.close();
});

// The reported bug: `manager.client().toHandle()` then `fromHandle` in a worker failed with "no
// object for handle 1" once the temporary client was collected. A handle keeps what it names
// alive until it is opened (once) or closed.
test('a handle outlives the object that made it: opens once in a worker after GC, close() releases an unopened one', async (t) => {
  const { result } = runChild(t, 'handle_child.js', [], { nodeArgs: ['--expose-gc'] });
  t.deepEqual(result.temporaryClient, { value: '0x1234', keys: ['kind', 'id'] });
  t.is(result.afterOpen, 0, 'opening took the handle out of the registry');
  t.true(result.memoryReopened);
  t.regex(result.secondOpen, /^ERR_INVALID_ARG_VALUE: handle \d+ was already opened or closed: a handle opens once/);
  t.is(result.pending, 1, 'an unopened handle is counted');
  t.is(result.afterClose, 0, 'close() released it (twice is fine)');
  t.is(result.openAfterClose, 'ERR_INVALID_ARG_VALUE');
});

test('a child process rebuilds guest memory from the RAM memfd passed as fd 3; writes are seen both ways', async (t) => {
  const manager = await build(L1());
  const memory = await manager.client().guestMemory();
  const fromParent = pattern(0x11, 32);
  memory.writeAt(0x3000, fromParent);
  const backing = manager.sharedMemoryBacking();
  const mappable = backing.mappable();
  const child = spawn(process.execPath, [fixture('backing_child.js')], { stdio: ['pipe', 'pipe', 'inherit', mappable.fd] });
  const exited = once(child, 'exit');
  const lines = readline.createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const next = async () => JSON.parse((await lines.next()).value);
  const send = (line) => child.stdin.write(`${line}\n`);
  const ready = await next();
  t.true(ready.ready);
  t.not(ready.pid, process.pid);

  send('read 0x3000 32');
  t.is((await next()).data, fromParent.toString('hex'), 'the child reads what the parent wrote before it started');
  send(`write 0x5000 ${Buffer.from('written by the child').toString('hex')}`);
  t.true((await next()).written);
  t.is(memory.read(0x5000, 20).toString(), 'written by the child', 'the parent reads what the child wrote');
  memory.writeAt(0x3fff_f000, Buffer.from('late parent write'));
  send('read 0x3ffff000 17');
  t.is(Buffer.from((await next()).data, 'hex').toString(), 'late parent write', 'and the child sees later parent writes');
  send('quit');
  child.stdin.end();
  t.true((await next()).closed);
  t.deepEqual(await exited, [0, null]);
  // The child closing its manager changes nothing here.
  t.is(memory.read(0x5000, 20).toString(), 'written by the child');
  mappable.close();
  backing.close();
  await manager.close();
});

test('a 1 TiB guest built without prefetch stays small in resident memory until pages are touched', (t) => {
  const touch = 64 * 1024 * 1024;
  const { result } = runChild(t, 'rss_child.js', [String(touch)]);
  const MiBk = 1024; // KiB per MiB
  t.log(`VmRSS KiB: before ${result.before.rss}, built ${result.built.rss}, probed ${result.probed.rss}, touched ${result.touched.rss}, closed ${result.closed.rss}`);
  t.log(`VmSize KiB: before ${result.before.size}, built ${result.built.size}`);
  // The VA window of 1 TiB + 1 GiB was reserved...
  t.true(result.built.size - result.before.size >= 1024 * 1024 * MiBk, 'the 1 TiB window is reserved');
  // ...but building and probing four scattered pages cost only a few MiB of RSS.
  t.true(result.built.rss - result.before.rss < 32 * MiBk, `build grew RSS by ${result.built.rss - result.before.rss} KiB`);
  t.true(result.probed.rss - result.before.rss < 40 * MiBk, `probing grew RSS by ${result.probed.rss - result.before.rss} KiB`);
  // Touching 64 MiB makes about 64 MiB resident: the measure sees touched pages.
  const grown = result.touched.rss - result.probed.rss;
  t.true(grown >= 60 * MiBk && grown < 96 * MiBk, `touching 64 MiB grew RSS by ${grown} KiB`);
  t.is(result.sampleByte, 0xa5);
  // Closing the manager (the last user of the RAM object) releases the touched pages.
  t.true(result.touched.rss - result.closed.rss >= 56 * MiBk, `close released ${result.touched.rss - result.closed.rss} KiB`);
});

for (const mode of ['close', 'drop']) {
  test(`a manager does not keep the event loop alive (${mode === 'close' ? 'after close()' : 'without close()'})`, (t) => {
    // The child reports from 'beforeExit': its line proves the event loop emptied by itself.
    // (Before, the test asserted the process lived less than 5 s after its work, measured from
    // outside: node's start-up counted too, and a loaded machine exceeded it.) A manager that
    // keeps the loop alive keeps it forever, until the time limit (a pure guard) kills the child.
    const { result, elapsedMs } = runChild(t, 'exit_child.js', [mode]);
    t.is(result.mode, mode);
    t.true(result.calls > 0);
    t.true(result.loopEmptied, 'the event loop emptied');
    t.log(`work ${result.doneMs.toFixed(1)} ms, loop empty at ${result.emptiedMs.toFixed(1)} ms, process lifetime ${elapsedMs.toFixed(0)} ms`);
  });
}

test('500 managers created and closed, and 50 dropped and collected, leave fds, mappings and threads in place', (t) => {
  const { result } = runChild(t, 'leak_child.js', ['500', '50'], { nodeArgs: ['--expose-gc'], timeout: 115_000 });
  t.log(`500 managers in ${result.closeMs.toFixed(0)} ms; start ${JSON.stringify(result.start)}, after close ${JSON.stringify(result.afterClose)}, after drop+gc ${JSON.stringify(result.afterDrop)}`);
  // Exact: descriptors, threads, and the mappings a manager makes (memfd views, VA windows of
  // 1 GiB and more); VmSize within 256 MiB (one leaked VA window of an L1 guest is 4 GiB).
  // Tolerance for the other /proc/self/maps lines: 64. The V8 heap and glibc malloc arenas
  // (one per thread that allocated) add a few lines that do not grow with the number of
  // managers (measured: +18 after 500, +36 after 1500); a per-manager leak would add >= 500.
  const MAPS_TOLERANCE = 64;
  // The readings see a live manager: its VA window and RAM view, its threads.
  t.true(result.during.ours >= 2, `a live manager shows ${result.during.ours} manager mappings`);
  t.true(result.during.threads >= result.start.threads + 2, `a live manager runs ${result.during.threads - result.start.threads} more threads`);
  for (const [phase, after] of [['after close', result.afterClose], ['after drop + GC', result.afterDrop]]) {
    t.true(after.fds <= result.start.fds, `${phase}: fds ${result.start.fds} → ${after.fds}`);
    t.true(after.threads <= result.start.threads, `${phase}: threads ${result.start.threads} → ${after.threads}`);
    t.true(after.ours <= result.start.ours, `${phase}: manager mappings ${result.start.ours} → ${after.ours}`);
    t.true(after.vmSizeKb - result.start.vmSizeKb < 256 * 1024, `${phase}: VmSize ${result.start.vmSizeKb} → ${after.vmSizeKb} KiB`);
    t.true(after.maps <= result.start.maps + MAPS_TOLERANCE, `${phase}: maps ${result.start.maps} → ${after.maps}`);
  }
});

test('close() resolves once, later calls resolve too, and every derived object reports a coded error', async (t) => {
  const manager = await build(L1(), { x86: true });
  const client = manager.client();
  const memory = await client.guestMemory();
  const control = manager.ramVisibilityControl();
  const mapper = manager.deviceMemoryMapper();
  const { control: window, region } = mapper.newRegion(0x1000, 'dev');
  const backing = manager.sharedMemoryBacking();
  const partition = new mb.RecordingPartition();
  await manager.attachPartition(mb.Vtl.Vtl0, partition);
  partition.clearLog();
  memory.writeU8(0x1000, 1);
  const closing = manager.close();
  t.true(closing instanceof Promise);
  t.is(await closing, undefined);
  t.is(await manager.close(), undefined, 'a second close resolves');
  await manager[Symbol.asyncDispose]();
  // Teardown unmapped the partition's whole window.
  t.deepEqual(partition.log(), [{ op: 'unmap', gpa: 0n, size: 0x1_0000_0000n, failed: false }]);

  // The manager itself.
  for (const f of [() => manager.client(), () => manager.deviceMemoryMapper(), () => manager.ramVisibilityControl(), () => manager.sharedMemoryBacking(), () => manager.ramRegions()]) {
    const error = t.throws(f);
    t.is(error.code, 'ERR_MANAGER_GONE');
    t.true(error instanceof mb.MemoryManagerError);
  }
  for (const pending of [manager.inspect(), manager.attachPartition(mb.Vtl.Vtl0, new mb.RecordingPartition()), manager.decommitRam(mb.range(0, 0x1000))]) {
    const error = await t.throwsAsync(pending);
    t.is(error.code, 'ERR_MANAGER_GONE');
    t.true(error instanceof mb.MemoryManagerError);
  }
  // Objects obtained from it.
  const gone = async (pending) => {
    const error = await t.throwsAsync(pending);
    const codes = [error.code, error.cause?.code];
    t.true(codes.includes('ERR_MANAGER_GONE') || codes.includes('ERR_MEMORY_MANAGER_GONE'), `${error.code}: ${error.message}`);
    return error;
  };
  t.true((await gone(control.setRamVisibility(mb.range(0xa_0000, 0xc_0000), mb.RamVisibility.Unmapped))) instanceof mb.MemoryManagerError);
  t.true((await gone(client.guestMemory())) instanceof mb.VaMapperError);
  await gone(window.mapToGuest(0xd000_0000, true));
  await gone(region.map(0, mb.Mappable.allocSharedMemory(0x1000, 'late'), 0, 0x1000, true));
  const access = t.throws(() => memory.readU8(0x1000));
  t.is(access.code, 'ERR_GUEST_MEMORY_OUT_OF_RANGE');
  t.is(access.kind, 'OutOfRange');
  // unmapFromGuest is infallible: it resolves.
  await window.unmapFromGuest();
  // The backing outlives the manager: it is the RAM object, usable for a new manager.
  const rebuilt = await build(L1(), { backing });
  const again = await rebuilt.client().guestMemory();
  t.is(again.readU8(0x1000), 1);
  await rebuilt.close();
});
