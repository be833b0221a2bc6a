// GuestMemory's asynchronous copies on the libuv pool: a fault on a pool thread,
// copies through Rust-owned buffers, and the JavaScript hooks of an asynchronous
// operation, which run on the creating thread through a thread-safe function while the pool
// thread waits.
'use strict';
const test = require('ava');
const { threadId } = require('node:worker_threads');
const mb = require('../dist');
const { P, MiB } = require('./fixtures/memory');
const { pattern } = require('./helpers/data');

const { SparseMapping, GuestMemory, GuestMemoryError } = mb;

test('readAtAsync of an inaccessible page rejects with a GuestMemoryError; the process survives', async (t) => {
  const mapping = new SparseMapping(4 * P);
  mapping.alloc(0, P);
  const memory = GuestMemory.fromSparseMapping(mapping);
  const error = await t.throwsAsync(memory.readAtAsync(P - 4, 8), { instanceOf: GuestMemoryError, code: 'ERR_GUEST_MEMORY_FAULT' });
  t.is(error.kind, 'Other');
  t.is(error.op, 'read');
  t.is(error.gpa, BigInt(P));
  t.deepEqual(error.range, { start: BigInt(P - 4), end: BigInt(P + 4) });
  t.is(error.fault.signal, 'SIGSEGV');
  t.is(error.fault.siCode, 2);
  const write = await t.throwsAsync(memory.writeAtAsync(3 * P, Buffer.alloc(16)), { instanceOf: GuestMemoryError, code: 'ERR_GUEST_MEMORY_FAULT' });
  t.is(write.op, 'write');
  t.is(write.gpa, BigInt(3 * P));
  await t.throwsAsync(memory.readAtAsync(4 * P, 1), { instanceOf: GuestMemoryError, code: 'ERR_GUEST_MEMORY_OUT_OF_RANGE' });
  // Still alive, and the same memory works synchronously and asynchronously.
  memory.writeAt(0, Buffer.from('alive'));
  t.is((await memory.readAtAsync(0, 5)).toString(), 'alive');
});

test('readAtAsync/writeAtAsync round-trip 1 MiB and copy the source before returning', async (t) => {
  const memory = GuestMemory.allocate(4 * MiB);
  const data = pattern(MiB, 5);
  const source = Buffer.from(data);
  const pending = memory.writeAtAsync(MiB, source);
  source.fill(0); // the write works on its own copy
  await pending;
  const back = await memory.readAtAsync(MiB, MiB);
  t.true(Buffer.isBuffer(back));
  t.true(back.equals(data));
  t.true(memory.read(MiB, MiB).equals(data));
  t.is((await memory.readAtAsync((1n << 64n) - 1n, 0)).length, 0);
  await memory.writeAtAsync((1n << 64n) - 1n, new Uint8Array(0));
  // Views of any typed array, and a SharedArrayBuffer.
  const shared = new Uint8Array(new SharedArrayBuffer(8));
  shared.set([1, 2, 3, 4, 5, 6, 7, 8]);
  await memory.writeAtAsync(0, shared);
  t.is(memory.readU64(0), 0x0807060504030201n);
  await memory.writeAtAsync(8, new Uint16Array([0x0201]));
  t.is(memory.readU16(8), 0x0201);
  // Many at once.
  const all = await Promise.all(Array.from({ length: 16 }, (_, i) => memory.readAtAsync(MiB + i * P, P)));
  all.forEach((page, i) => t.true(page.equals(data.subarray(i * P, (i + 1) * P)), `page ${i}`));
});

test('async operations check their arguments synchronously', async (t) => {
  const memory = GuestMemory.allocate(P);
  for (const [value, Class, code] of [
    ['1', TypeError, 'ERR_INVALID_ARG_TYPE'],
    [-1, TypeError, 'ERR_INVALID_ARG_TYPE'],
    [1.5, TypeError, 'ERR_INVALID_ARG_TYPE'],
    [-1n, RangeError, 'ERR_INVALID_ARG_VALUE'],
    [1n << 64n, RangeError, 'ERR_INVALID_ARG_VALUE'],
  ]) {
    await t.throwsAsync(memory.readAtAsync(value, 1), { instanceOf: Class, code });
    await t.throwsAsync(memory.readAtAsync(0, value), { instanceOf: Class, code });
    await t.throwsAsync(memory.writeAtAsync(value, Buffer.alloc(1)), { instanceOf: Class, code });
  }
  // Beyond the memory: the range check comes before any allocation.
  await t.throwsAsync(memory.readAtAsync(0, 2n ** 60n), { instanceOf: mb.GuestMemoryError, code: 'ERR_GUEST_MEMORY_OUT_OF_RANGE' });
  for (const src of [[1], 'a', null, new ArrayBuffer(1)]) {
    await t.throwsAsync(memory.writeAtAsync(0, src), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  }
});

test('an async operation calls pageFault on the creating thread, while the pool thread waits', async (t) => {
  const mapping = new SparseMapping(16 * P);
  const calls = [];
  const memory = GuestMemory.fromSparseMapping(mapping, {
    pageFault(gpa, len, write) {
      calls.push({ gpa, len, write, thread: threadId });
      mapping.alloc((gpa / BigInt(P)) * BigInt(P), P);
      return 'retry';
    },
  });
  const data = pattern(3 * P, 2);
  const pending = memory.writeAtAsync(2.5 * P, data);
  t.deepEqual(calls, [], 'nothing ran synchronously');
  await pending;
  t.deepEqual(
    calls.map((c) => [c.gpa, c.len, c.write]),
    [
      [BigInt(2.5 * P), BigInt(3 * P), true],
      [BigInt(3 * P), BigInt(2.5 * P), true],
      [BigInt(4 * P), BigInt(1.5 * P), true],
      [BigInt(5 * P), BigInt(0.5 * P), true],
    ],
  );
  t.true(calls.every((c) => c.thread === threadId));
  calls.length = 0;
  t.true((await memory.readAtAsync(2.5 * P, 3 * P)).equals(data));
  t.deepEqual(calls, []);
  t.true((await memory.readAtAsync(9 * P, 8)).equals(Buffer.alloc(8)));
  t.deepEqual(calls.map((c) => [c.gpa, c.len, c.write]), [[BigInt(9 * P), 8n, false]]);
  // The same hook still runs directly for synchronous operations.
  t.is(memory.readU8(12 * P), 0);
  t.is(calls.length, 2);
});

test('many concurrent async operations share the JavaScript thread for their page faults', async (t) => {
  const mapping = new SparseMapping(64 * P);
  let faults = 0;
  const memory = GuestMemory.fromSparseMapping(mapping, {
    pageFault(gpa) {
      faults++;
      mapping.alloc((gpa / BigInt(P)) * BigInt(P), P);
      return 'retry';
    },
  });
  const writes = Array.from({ length: 32 }, (_, i) => memory.writeAtAsync(i * 2 * P + 100, pattern(P, i)));
  await Promise.all(writes);
  t.is(faults, 64); // each write spans two pages
  const reads = await Promise.all(Array.from({ length: 32 }, (_, i) => memory.readAtAsync(i * 2 * P + 100, P)));
  reads.forEach((page, i) => t.true(page.equals(pattern(P, i)), `write ${i}`));
});

test('async pageFault decisions: kinds, exceptions as cause, fallbacks, and the retry cap', async (t) => {
  const mapping = new SparseMapping(8 * P);
  mapping.alloc(0, P);
  const vtl = GuestMemory.fromSparseMapping(mapping, { pageFault: () => ({ fail: 'VtlProtected', message: 'vtl2 only' }) });
  const protectedError = await t.throwsAsync(vtl.readAtAsync(P - 1, 2), { instanceOf: GuestMemoryError, code: 'ERR_GUEST_MEMORY_VTL_PROTECTED' });
  t.is(protectedError.gpa, BigInt(P));
  t.is(protectedError.detail, 'vtl2 only');

  const boom = new Error('async boom');
  const throwing = GuestMemory.fromSparseMapping(mapping, {
    pageFault() {
      throw boom;
    },
  });
  const thrown = await t.throwsAsync(throwing.writeAtAsync(2 * P, Buffer.alloc(4)), { instanceOf: GuestMemoryError, code: 'ERR_GUEST_MEMORY_FAULT' });
  t.is(thrown.cause, boom);

  const fallbackCalls = [];
  const fallback = GuestMemory.fromSparseMapping(mapping, {
    pageFault: () => 'fallback',
    readFallback: (gpa, len) => (fallbackCalls.push(['read', gpa, len]), Buffer.alloc(Number(len), 0xfa)),
    writeFallback: (gpa, data) => fallbackCalls.push(['write', gpa, Buffer.from(data)]),
  });
  t.true((await fallback.readAtAsync(P - 2, 6)).equals(Buffer.alloc(6, 0xfa)));
  await fallback.writeAtAsync(3 * P, Buffer.from([1, 2, 3]));
  t.deepEqual(fallbackCalls, [
    ['read', BigInt(P - 2), 6n],
    ['write', BigInt(3 * P), Buffer.from([1, 2, 3])],
  ]);

  let retries = 0;
  const spinning = GuestMemory.fromSparseMapping(mapping, { retryLimit: 5, pageFault: () => (retries++, 'retry') });
  const capped = await t.throwsAsync(spinning.readAtAsync(4 * P, 1), { instanceOf: GuestMemoryError, code: 'ERR_GUEST_MEMORY_FAULT' });
  t.is(capped.kind, 'Other');
  t.is(retries, 6);
});

test("an async operation's pageFault may call synchronous operations of the same memory", async (t) => {
  const mapping = new SparseMapping(8 * P);
  mapping.alloc(0, P);
  const memory = GuestMemory.fromSparseMapping(mapping, {
    pageFault(gpa) {
      memory.writeU32(0, memory.readU32(0) + 1); // a synchronous, re-entrant use from the hook
      mapping.alloc((gpa / BigInt(P)) * BigInt(P), P);
      return 'retry';
    },
  });
  await memory.readAtAsync(P, 3 * P);
  t.is(memory.readU32(0), 3);
});

test('the memories of a thread share one hook runner: closing one leaves the others served, and a worker has its own', async (t) => {
  const { Worker } = require('node:worker_threads');
  const hooked = (mapping, calls) =>
    GuestMemory.fromSparseMapping(mapping, {
      pageFault(gpa) {
        calls.push(threadId);
        mapping.alloc((gpa / BigInt(P)) * BigInt(P), P);
        return 'retry';
      },
    });
  const calls = [];
  const first = hooked(new SparseMapping(4 * P), calls);
  const second = hooked(new SparseMapping(4 * P), calls);
  t.true((await first.readAtAsync(0, 8)).equals(Buffer.alloc(8)));
  first.close();
  t.true((await second.readAtAsync(P, 8)).equals(Buffer.alloc(8)));
  // A worker's memory calls its hook on the worker's thread, through that thread's own runner.
  const script = `
    const { parentPort, threadId } = require('node:worker_threads');
    const { GuestMemory, SparseMapping } = require(${JSON.stringify(require.resolve('../dist'))});
    const mapping = new SparseMapping(${4 * P});
    const seen = [];
    const memory = GuestMemory.fromSparseMapping(mapping, {
      pageFault(gpa) { seen.push(threadId); mapping.alloc(gpa - (gpa % ${P}n), ${P}); return 'retry'; },
    });
    memory.writeAtAsync(${2 * P}, Buffer.from('worker')).then(async () => {
      parentPort.postMessage({ seen, threadId, back: (await memory.readAtAsync(${2 * P}, 6)).toString() });
    });`;
  const worker = new Worker(script, { eval: true });
  const [reply] = await Promise.all([
    new Promise((resolve, reject) => worker.once('message', resolve).once('error', reject)),
    new Promise((resolve) => worker.once('exit', resolve)),
  ]);
  t.deepEqual(reply.seen, [reply.threadId]);
  t.is(reply.back, 'worker');
  // After the worker and its environment are gone, this thread's memories are still served.
  const third = hooked(new SparseMapping(4 * P), calls);
  t.true((await third.readAtAsync(2 * P, 8)).equals(Buffer.alloc(8)));
  t.true((await second.readAtAsync(3 * P, 8)).equals(Buffer.alloc(8)));
  t.deepEqual(calls, [threadId, threadId, threadId, threadId]);
});
