// Guest memory from worker_threads: handles (toHandle/fromHandle), a worker remapping a
// SparseMapping while the main thread copies through a GuestMemory over it (and the reverse),
// atomicity across threads, a concurrent writer, the fault handler initialised from several
// workers (wasm traps stay theirs), and where the JavaScript hooks of a memory run when other threads use it.
'use strict';
const test = require('ava');
const { Worker, threadId } = require('node:worker_threads');
const { once } = require('node:events');
const mb = require('../dist');
const { P, MiB, fixture, GUEST_CODES } = require('./fixtures/memory');

const { SparseMapping, GuestMemory, GuestMemoryError } = mb;
const workerPath = fixture('memory_worker.js');

/** Starts a worker task; `messages` collects what it posts, `exited` resolves with its exit code. */
function start(task, data = {}) {
  const worker = new Worker(workerPath, { workerData: { task, ...data } });
  const messages = [];
  const waiters = [];
  worker.on('message', (message) => {
    messages.push(message);
    while (waiters.length > 0 && waiters[0].count <= messages.length) waiters.shift().resolve();
  });
  const exited = once(worker, 'exit').then(([code]) => code);
  const errored = once(worker, 'error').then(([error]) => {
    throw error;
  });
  errored.catch(() => {});
  /** Resolves with the `n`-th message (1-based). */
  const message = (n) =>
    Promise.race([
      errored,
      new Promise((resolve) => {
        if (messages.length >= n) resolve();
        else waiters.push({ count: n, resolve });
      }).then(() => messages[n - 1]),
    ]);
  return { worker, messages, message, exited };
}

/**
 * A shared stop flag (word 0) with progress counters (word 1 + slot) the workers bump as they go:
 * the racing tests run until the other side has made progress, not for a fixed time, which a
 * loaded machine can spend without scheduling the worker at all.
 */
function stopFlag() {
  const stop = new Int32Array(new SharedArrayBuffer(16));
  return { stop, buffer: stop.buffer, set: () => Atomics.store(stop, 0, 1), progress: (slot = 0) => Atomics.load(stop, 1 + slot) };
}

/** A guard against a hang only: the racing loops end on progress, long before this. */
const GIVE_UP_MS = 60_000;

test.serial('handles reopen a SparseMapping and a GuestMemory in a worker of this process', async (t) => {
  const mapping = new SparseMapping(4 * P);
  mapping.alloc(0, P);
  mapping.writeAt(0, Buffer.from('hello'));
  const memory = GuestMemory.fromSparseMapping(mapping);
  const w = start('handles', { mapping: mapping.toHandle(), memory: memory.toHandle() });
  const result = await w.message(1);
  t.is(result.error, undefined, JSON.stringify(result.error));
  t.is(result.seen, 'hello');
  t.is(result.maxAddress, BigInt(4 * P));
  t.is(result.length, BigInt(4 * P));
  t.is(result.fault.name, 'GuestMemoryError');
  t.is(result.fault.code, 'ERR_GUEST_MEMORY_FAULT');
  t.is(await w.exited, 0);
  // What the worker placed and wrote is seen here; its references are gone, ours still work.
  const back = Buffer.alloc(11);
  mapping.readAt(P, back);
  t.is(back.toString(), 'from worker');
  t.is(memory.readU32(8), 0xfeedf00d);
  t.is(memory.read(P, 11).toString(), 'from worker');
});

test.serial('a handle given to the wrong class is refused naming the class that opens it, and stays unopened', async (t) => {
  const mapping = new SparseMapping(P);
  mapping.alloc(0, P);
  const memory = GuestMemory.fromSparseMapping(mapping);
  const manager = await new mb.GuestMemoryBuilder().build(mb.MemoryLayout.new(16n * mb.MiB, [mb.range(16n * mb.MiB, 17n * mb.MiB)]));
  t.teardown(() => manager.close());
  const client = manager.client();
  const handles = { SparseMapping: mapping.toHandle(), GuestMemory: memory.toHandle(), GuestMemoryClient: client.toHandle() };
  const openers = { SparseMapping, GuestMemory, GuestMemoryClient: mb.GuestMemoryClient };
  for (const [kind, handle] of Object.entries(handles)) {
    const posted = { kind: handle.kind, id: handle.id };
    for (const [other, Class] of Object.entries(openers)) {
      if (other === kind) continue;
      const error = t.throws(() => Class.fromHandle(posted), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
      t.is(error.message, `handle must be a ${other} TransferHandle (from toHandle()), got a ${kind} handle: open it with ${kind}.fromHandle() (it is still unopened)`);
    }
    openers[kind].fromHandle(posted).close();
  }
  client.close();
  memory.close();
  mapping.close();
});

test.serial('a worker toggles unmap/alloc while the main thread copies 1 MiB; every access succeeds or fails with a guest error', async (t) => {
  const mapping = new SparseMapping(2 * MiB);
  mapping.alloc(0, MiB);
  const memory = GuestMemory.fromSparseMapping(mapping);
  const flag = stopFlag();
  const w = start('remap', { mapping: mapping.toHandle(), stop: flag.buffer });
  await w.message(1);
  const buffer = Buffer.alloc(MiB, 0x5c);
  const counts = { ok: 0, failed: 0 };
  const unexpected = [];
  // Until the worker has remapped 1,000 times and both outcomes were seen (at least 2,000
  // accesses): the race is observed, however the threads are scheduled.
  const giveUp = Date.now() + GIVE_UP_MS;
  while ((flag.progress() < 1000 || counts.ok + counts.failed < 2000 || counts.ok === 0 || counts.failed === 0) && Date.now() < giveUp) {
    for (const op of [() => memory.readAt(0, buffer), () => memory.writeAt(0, buffer), () => memory.fillAt(MiB / 2, 1, MiB / 2), () => memory.readU64(MiB - 8)]) {
      try {
        op();
        counts.ok++;
      } catch (error) {
        if (error instanceof GuestMemoryError && GUEST_CODES.has(error.code)) {
          counts.failed++;
          if (error.code === 'ERR_GUEST_MEMORY_FAULT' && !(error.fault && error.gpa < BigInt(MiB))) unexpected.push(error.message);
        } else {
          unexpected.push(String(error));
        }
      }
    }
  }
  // Asynchronous copies race with the remapping as well.
  const asyncResults = await Promise.allSettled(Array.from({ length: 64 }, (_, i) => (i % 2 ? memory.readAtAsync(0, MiB) : memory.writeAtAsync(0, buffer))));
  for (const r of asyncResults) {
    if (r.status === 'rejected' && !(r.reason instanceof GuestMemoryError && GUEST_CODES.has(r.reason.code))) unexpected.push(String(r.reason));
  }
  flag.set();
  const { toggles } = await w.message(2);
  t.is(await w.exited, 0);
  t.deepEqual(unexpected, []);
  t.true(toggles >= 1000, `the worker remapped: ${toggles}`);
  t.true(counts.ok > 0, `accesses succeeded: ${JSON.stringify(counts)}`);
  t.true(counts.failed > 0, `accesses raced with unmapping: ${JSON.stringify(counts)} (${toggles} toggles)`);
  t.log(`${counts.ok} accesses succeeded, ${counts.failed} failed with guest errors, ${toggles} remaps`);
  // The worker stopped with the range allocated: a round trip succeeds.
  const data = Buffer.alloc(MiB, 0xa7);
  memory.writeAt(0, data);
  t.true(memory.read(0, MiB).equals(data));
});

test.serial('the main thread remaps while a worker copies through a GuestMemory handle', async (t) => {
  const mapping = new SparseMapping(MiB);
  mapping.alloc(0, MiB);
  const memory = GuestMemory.fromSparseMapping(mapping);
  const flag = stopFlag();
  const w = start('access', { memory: memory.toHandle(), stop: flag.buffer });
  await w.message(1);
  let toggles = 0;
  // Until the worker has made 200 accesses while this thread remapped (at least 1,000 times).
  const giveUp = Date.now() + GIVE_UP_MS;
  while ((flag.progress() < 200 || toggles < 1000) && Date.now() < giveUp) {
    mapping.unmap(0, MiB);
    mapping.alloc(0, MiB);
    toggles++;
  }
  flag.set();
  const result = await w.message(2);
  t.is(await w.exited, 0);
  t.deepEqual(result.unexpected, []);
  t.true(result.ok + result.failed >= 200, `the worker accessed: ${JSON.stringify(result)}`);
  t.true(toggles >= 1000);
  t.log(`main thread remapping: ${result.ok} succeeded, ${result.failed} failed, ${toggles} remaps`);
  memory.writeU64(0, 42n);
  t.is(memory.readU64(0), 42n);
});

test.serial('8 threads x 100 000 compare-exchange increments of one u64 make exactly 800 000', async (t) => {
  const memory = GuestMemory.allocate(P);
  // A handle opens once: one per worker.
  const workers = Array.from({ length: 8 }, () => start('increment', { memory: memory.toHandle(), count: 100000 }));
  const results = await Promise.all(workers.map((w) => w.message(1)));
  for (const r of results) t.is(r.error, undefined, JSON.stringify(r.error));
  await Promise.all(workers.map((w) => w.exited));
  t.is(memory.readU64(0), 800000n);
  t.log(`${results.reduce((sum, r) => sum + r.conflicts, 0)} CAS conflicts were retried`);
});

test.serial('aligned writeU64 of 0 and 2^64-1 from two threads never tears for readU64', async (t) => {
  const mapping = new SparseMapping(P);
  mapping.alloc(0, P);
  const memory = GuestMemory.fromSparseMapping(mapping);
  const flag = stopFlag();
  const max = (1n << 64n) - 1n;
  const writers = [0n, max].map((value, slot) => start('store', { memory: memory.toHandle(), stop: flag.buffer, slot, value, gpa: 64 }));
  await Promise.all(writers.map((w) => w.message(1)));
  const seen = new Map();
  // Until both writers have stored (100,000 times each) while this thread read.
  const giveUp = Date.now() + GIVE_UP_MS;
  while ((flag.progress(0) < 100_000 || flag.progress(1) < 100_000) && Date.now() < giveUp) {
    for (let i = 0; i < 1000; i++) {
      const value = memory.readU64(64);
      seen.set(value, (seen.get(value) ?? 0) + 1);
    }
  }
  flag.set();
  const stores = await Promise.all(writers.map((w) => w.message(2)));
  await Promise.all(writers.map((w) => w.exited));
  t.deepEqual([...seen.keys()].filter((v) => v !== 0n && v !== max), []);
  t.true(stores.every((s) => s.stores >= 100_000), JSON.stringify(stores));
  t.log(`torn-read check: ${[...seen.entries()].map(([v, n]) => `${v === 0n ? '0' : 'max'}×${n}`).join(', ')}`);
});

test.serial('probeWritable (CAS v→v) never loses a concurrent writer\'s update', async (t) => {
  const memory = GuestMemory.allocate(P);
  const w = start('writer', { memory: memory.toHandle(), gpa: 0, count: 200000 });
  await w.message(1);
  let probes = 0;
  while (w.messages.length < 2) {
    for (let i = 0; i < 1000; i++) {
      if (!memory.probeWritable(i % 8)) t.fail('probe failed');
      probes++;
    }
    await new Promise((resolve) => setImmediate(resolve));
  }
  t.is(await w.exited, 0);
  t.is(memory.readU64(0), 200000n);
  t.true(probes > 0);
});

// The fault handler initialised from several workers at once.
test.serial('from 4 workers at once: initialize and mappings in each, wasm traps stay RuntimeErrors', async (t) => {
  const workers = Array.from({ length: 4 }, () => start('wasm'));
  const results = await Promise.all(workers.map((w) => w.message(1)));
  await Promise.all(workers.map((w) => w.exited));
  for (const r of results) {
    t.is(r.error, undefined, JSON.stringify(r.error));
    t.is(r.fault, 'ERR_MEMORY');
    t.deepEqual(r.results, Array(20).fill('RuntimeError'));
    t.is(r.inBounds, 0);
    t.is(r.status, 'installed');
  }
  t.is(mb.handlerStatus(), 'installed');
});

test.serial('hooks of a main-thread memory: a worker\'s synchronous use fails clearly, its async use runs them here', async (t) => {
  const mapping = new SparseMapping(4 * P);
  const calls = [];
  const memory = GuestMemory.fromSparseMapping(mapping, {
    pageFault(gpa) {
      calls.push({ gpa, thread: threadId });
      mapping.alloc((gpa / BigInt(P)) * BigInt(P), P);
      mapping.writeAt(Number(gpa), Buffer.from([1, 2, 3, 4, 5, 6, 7, 8]));
      return 'retry';
    },
  });
  const w = start('foreignHooks', { memory: memory.toHandle() });
  const result = await w.message(1);
  t.is(await w.exited, 0);
  t.is(result.error, undefined, JSON.stringify(result.error));
  t.is(result.syncError.code, 'ERR_GUEST_MEMORY_FAULT');
  t.regex(result.syncError.detail, /pageFault hook cannot run on another JavaScript thread/);
  t.deepEqual(result.asyncData, [1, 2, 3, 4, 5, 6, 7, 8]);
  t.not(result.threadId, threadId);
  t.deepEqual(calls, [{ gpa: BigInt(2 * P), thread: threadId }]);
});

test.serial('hooks of a worker that has ended answer "failed" instead of hanging or crashing', async (t) => {
  const w = start('ownHooks');
  const first = await w.message(1);
  t.is(first.error, undefined, JSON.stringify(first.error));
  const memory = GuestMemory.fromHandle(first.memory);
  w.worker.postMessage('reopened');
  const done = await w.message(2);
  t.is(done.calls, 1);
  t.is(await w.exited, 0);
  t.is(memory.readU8(P), 0, 'the page the worker mapped stays mapped');
  const syncError = t.throws(() => memory.readU8(2 * P), { instanceOf: GuestMemoryError, code: 'ERR_GUEST_MEMORY_FAULT' });
  t.regex(syncError.detail, /pageFault hook cannot run/);
  const asyncError = await t.throwsAsync(memory.readAtAsync(2 * P, 4), { instanceOf: GuestMemoryError, code: 'ERR_GUEST_MEMORY_FAULT' });
  t.regex(asyncError.detail, /pageFault hook cannot run/);
  memory.close();
});
