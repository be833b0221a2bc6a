// User JavaScript that runs in the middle of a library call (an argument's getter, a hook) and
// calls the library again must not change what the outer call does.
'use strict';
const test = require('ava');
const mb = require('../dist');
const { P } = require('./fixtures/memory');

const { GuestMemory } = mb;

test('writev: an entry whose gpa getter runs a writev of its own does not move the earlier entries', (t) => {
  const memory = GuestMemory.allocate(4 * P);
  const nested = new Uint8Array(16).fill(0xcc);
  memory.writev([
    { gpa: 0, buffer: new Uint8Array(16).fill(0xaa) },
    {
      get gpa() {
        memory.writev([{ gpa: 3 * P, buffer: nested }]);
        return P;
      },
      buffer: new Uint8Array(16).fill(0xbb),
    },
  ]);
  t.deepEqual(memory.read(0, 16), Buffer.alloc(16, 0xaa));
  t.deepEqual(memory.read(P, 16), Buffer.alloc(16, 0xbb));
  t.deepEqual(memory.read(3 * P, 16), Buffer.alloc(16, 0xcc));
});

test('readv: an entry whose gpa getter runs a readv of its own does not move the earlier entries', (t) => {
  const memory = GuestMemory.allocate(4 * P);
  for (let page = 0; page < 3; page++) memory.fillAt(page * P, page + 1, P);
  const first = new Uint8Array(4);
  const second = new Uint8Array(4);
  const nested = new Uint8Array(4);
  memory.readv([
    { gpa: 0, buffer: first },
    {
      get gpa() {
        memory.readv([{ gpa: 2 * P, buffer: nested }]);
        return P;
      },
      buffer: second,
    },
  ]);
  t.deepEqual([...first], [1, 1, 1, 1]);
  t.deepEqual([...second], [2, 2, 2, 2]);
  t.deepEqual([...nested], [3, 3, 3, 3]);
});

test('MemoryRegistrar: a callback answer whose then getter throws fails the chunk with that error as the cause', (t) => {
  const boom = new Error('then getter');
  const registrar = new mb.MemoryRegistrar(mb.MemoryLayout.new(4n * mb.GiB, []), 0, () => ({
    get then() {
      throw boom;
    },
  }));
  const error = t.throws(() => registrar.register(0, 1), { instanceOf: mb.RegistrarError, code: 'ERR_REGISTRATION_FAILED' });
  t.is(error.cause, boom);
});

test('pageFault: an answer whose getters throw (a Proxy) fails the access with that error as a cause', (t) => {
  const boom = new Error('proxy trap');
  const mapping = new mb.SparseMapping(2 * P);
  const memory = GuestMemory.fromSparseMapping(mapping, {
    pageFault: () =>
      new Proxy(
        {},
        {
          get() {
            throw boom;
          },
        },
      ),
  });
  const error = t.throws(() => memory.readAt(0, new Uint8Array(4)), { instanceOf: mb.GuestMemoryError });
  const causes = [];
  for (let cause = error; cause !== undefined; cause = cause.cause) causes.push(cause);
  t.true(causes.includes(boom), causes.map(String).join(' <- '));
  t.true(causes.some((cause) => String(cause.detail ?? cause.message).includes("pageFault's answer could not be read: proxy trap")), causes.map((c) => c.detail ?? c.message).join(' | '));
});

test('LockedPages: the unlockGpns hook that release() runs may use the pages object: it finds it released', (t) => {
  const mapping = new mb.SparseMapping(4 * P);
  mapping.alloc(0, 4 * P);
  let locked;
  const seen = [];
  let unlocks = 0;
  const memory = GuestMemory.fromSparseMapping(mapping, {
    lockGpns: () => true,
    unlockGpns: () => {
      unlocks++;
      seen.push(locked.count, locked.gpns);
      locked.release();
      locked[Symbol.dispose]();
      seen.push(t.throws(() => locked.readAt(0, 0, new Uint8Array(4)), { code: 'ERR_CLOSED' }).message);
    },
  });
  locked = memory.lockGpns([0n, 1n]);
  locked.release();
  locked.release();
  t.is(unlocks, 1);
  t.deepEqual(seen, [2, [0n, 1n], 'LockedPages is closed']);
  memory.close();
  mapping.close();
});

/** An object whose `key` getter answers `first` `times` times, then `later`. */
function shifting(base, key, first, later, times = 1) {
  let reads = 0;
  return Object.defineProperty(base, key, {
    enumerable: true,
    get: () => (++reads <= times ? first : later),
  });
}

test('readRange/zeroRange: a range.offset getter is read once, so the offset checked is the offset used', (t) => {
  const memory = GuestMemory.allocate(4 * P);
  memory.fillAt(0, 7, 4 * P);
  memory.zeroRange(shifting({ len: P, gpns: [1n] }, 'offset', 0, 'not a number'));
  t.is(memory.readU8(P), 0);
  t.is(memory.readU8(P + P - 1), 0);
  const dest = new Uint8Array(P);
  memory.readRange(shifting({ len: P, gpns: [0n] }, 'offset', 0, 'not a number'), dest);
  t.true(dest.every((byte) => byte === 7));
});

test('prefetchRam: an onProgress getter is read once, so the reports go to the function that was checked', async (t) => {
  const { MiB, range, Vtl } = mb;
  const reports = { checked: 0, unchecked: 0 };
  let last;
  const complete = new Promise((resolve) => (last = resolve));
  const reporter = (name) => (done, total) => {
    reports[name]++;
    if (done === total) last();
  };
  const [checked, other] = [reporter('checked'), reporter('unchecked')];
  const manager = await new mb.GuestMemoryBuilder().prefetchRam(true, shifting({}, 'onProgress', checked, other, 2)).build(mb.MemoryLayout.new(8n * MiB, [range(3n * mb.GiB, 4n * mb.GiB)]));
  t.teardown(() => manager.close());
  await manager.attachPartition(Vtl.Vtl0, new mb.RecordingPartition());
  await complete;
  t.true(reports.checked > 0);
  t.is(reports.unchecked, 0);
});

test('migrate: an options.pause getter is read once, so the pause that runs is the one checked', async (t) => {
  const { MiB, range } = mb;
  const { duplexPair } = require('node:stream');
  const layout = mb.MemoryLayout.new(4n * MiB, [range(3n * mb.GiB, 4n * mb.GiB)]);
  const manager = await new mb.GuestMemoryBuilder().build(layout);
  t.teardown(() => manager.close());
  const [a, b] = duplexPair();
  const paused = [];
  const options = shifting({}, 'pause', () => void paused.push('checked'), () => void paused.push('unchecked'));
  const [sent, received] = await Promise.allSettled([manager.migrate(a, options), mb.GuestMemoryBuilder.migrateFrom(b)]);
  t.is(sent.status, 'fulfilled', String(sent.reason?.stack));
  t.is(received.status, 'fulfilled', String(received.reason?.stack));
  t.deepEqual(paused, ['checked']);
  if (received.status === 'fulfilled') await received.value.close();
});

test('restore: a windowBackings[i].window getter is read once (the name checked is the name used)', async (t) => {
  const object = mb.Mappable.allocSharedMemory(P, 'fb');
  t.teardown(() => object.close());
  const entry = shifting({ object }, 'window', 'fb', 42);
  const missing = require('node:path').join(require('node:os').tmpdir(), `membacking-reentry-missing-${process.pid}`);
  // The options are taken as checked; the restore then fails on the missing snapshot only.
  await t.throwsAsync(mb.GuestMemoryBuilder.restore(missing, { windowBackings: [entry] }), { code: 'ENOENT' });
});

test('apply: a later change\'s getter that closes an earlier change\'s window makes the batch ERR_CLOSED, and no window is left placed without halves', async (t) => {
  const { MiB, GiB, range } = mb;
  const manager = await new mb.GuestMemoryBuilder().build(mb.MemoryLayout.new(32n * MiB, [range(3n * GiB, 4n * GiB)]));
  t.teardown(() => manager.close());
  const mapper = manager.deviceMemoryMapper();
  const first = mapper.newRegion(2n * MiB, 'first');
  const second = mapper.newRegion(2n * MiB, 'second');
  const closing = [];
  const changes = [
    { kind: 'deviceMapToGuest', window: first.control, gpa: 0xd000_0000n, writable: true },
    {
      kind: 'deviceMapToGuest',
      window: second.control,
      gpa: 0xd020_0000n,
      get writable() {
        closing.push(first.control.close(), first.region.close());
        return true;
      },
    },
  ];
  const error = await t.throwsAsync(manager.apply(changes), { code: 'ERR_CLOSED' });
  t.is(error.changeIndex, 0);
  await Promise.all(closing);
  const placed = (await manager.flatView()).filter((entry) => entry.region && entry.region.name !== 'ram').map((entry) => entry.region.name);
  t.deepEqual(placed, []);
  await second.control.close();
  await second.region.close();
});
