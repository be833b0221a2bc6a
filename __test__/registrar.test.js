// MemoryRegistrar through the public API: lazy chunked registration, unaligned and zero-length
// requests, sticky failures, bounds, async callbacks, bad input.
'use strict';
const test = require('ava');
const mb = require('../dist');

const { MemoryLayout, MemoryRegistrar, range, GiB, TiB } = mb;
const G = GiB;

function recorder(failWhen = () => false) {
  const calls = [];
  const callback = (r) => {
    calls.push(String(r));
    if (failWhen(r)) throw new Error(`refused ${r}`);
  };
  return { calls, callback };
}

// Registration of 2 GiB chunks on demand, shifted by the registration offset.
test('lazy chunked registration with an offset', (t) => {
  const layout = MemoryLayout.new(TiB, [range(0x10000, 0x20000), range(TiB, 2n * TiB)]);
  t.deepEqual(layout.ram.map((r) => String(r.range)), ['0x0-0x10000', '0x20000-0x10000000000', '0x20000000000-0x20000010000']);
  const O = 1n << 50n;
  const rec = recorder();
  const registrar = new MemoryRegistrar(layout, O, rec.callback);
  t.deepEqual(registrar.inspect(), { chunksRegistered: 0, chunkCount: 1025, registrationOffset: O });
  t.is(registrar.register(0x1000, 0x7000), undefined);
  t.deepEqual(rec.calls, ['0x4000000000000-0x4000000010000', '0x4000000020000-0x4000080000000']);
  rec.calls.length = 0;
  t.is(registrar.register(0x20000, 0x10000), undefined);
  t.is(registrar.register(0x100000n, 0x100000n), undefined);
  t.deepEqual(rec.calls, []);
  registrar.register(8n * G, 24n * G + 1n);
  t.is(rec.calls.length, 13);
  t.is(rec.calls[0], `0x${(O + 8n * G).toString(16)}-0x${(O + 10n * G).toString(16)}`);
  t.is(rec.calls[12], `0x${(O + 32n * G).toString(16)}-0x${(O + 34n * G).toString(16)}`);
  t.is(registrar.inspect().chunksRegistered, 14);
});

test('unaligned and zero-length requests', (t) => {
  const layout = MemoryLayout.new(8n * G, [range(3n * G, 4n * G)]);
  const rec = recorder();
  const registrar = new MemoryRegistrar(layout, 0, rec.callback);
  t.is(registrar.inspect().chunkCount, 5);
  registrar.register(2n * G - 4096n, 8192);
  t.deepEqual(rec.calls, ['0x0-0x80000000', '0x80000000-0xc0000000']);
  rec.calls.length = 0;
  registrar.register(0x1800, 0);
  registrar.register(2n * G, 0);
  t.deepEqual(rec.calls, []);
  registrar.register(6n * G + 5n, 1);
  t.deepEqual(rec.calls, ['0x180000000-0x200000000']);
  registrar.register(8n * G, 4n * G);
  t.deepEqual(rec.calls, ['0x180000000-0x200000000', '0x200000000-0x240000000']);
  t.is(registrar.inspect().chunksRegistered, 4);
});

test('sticky failure with the original asymmetric error values and cause', (t) => {
  const layout = MemoryLayout.new(8n * G, [range(3n * G, 4n * G)]);
  const O = 1n << 40n;
  const rec = recorder((r) => r.start === O + 4n * G);
  const registrar = new MemoryRegistrar(layout, O, rec.callback);
  const first = t.throws(() => registrar.register(4n * G + 0x5000n, 1), { instanceOf: mb.RegistrarError, code: 'ERR_REGISTRATION_FAILED' });
  t.is(first.address, 0x10100000000n);
  t.true(first.cause instanceof Error);
  t.is(first.cause.message, `refused 0x${(O + 4n * G).toString(16)}-0x${(O + 6n * G).toString(16)}`);
  t.true(first instanceof mb.MembackingError);
  t.deepEqual(rec.calls.length, 1);
  const again = t.throws(() => registrar.register(5n * G, 1), { code: 'ERR_REGISTRATION_FAILED' });
  t.is(again.address, 0x100000000n);
  t.is(again.cause, undefined);
  t.is(t.throws(() => registrar.register(5n * G, 1)).address, 0x100000000n);
  t.is(rec.calls.length, 1);
  t.is(registrar.register(0, 1), undefined);
  const mixed = t.throws(() => registrar.register(2n * G, 6n * G));
  t.is(mixed.address, 0x100000000n);
  t.is(rec.calls.at(-1), `0x${(O + 2n * G).toString(16)}-0x${(O + 3n * G).toString(16)}`);
  t.is(registrar.inspect().chunksRegistered, 2);
});

// A failing chunk stops the request there; addresses beyond the layout; an unaligned offset.
test('later chunks not attempted, bounds and unaligned offset panics', (t) => {
  const rec = recorder((r) => r.start === 6n * G);
  const registrar = new MemoryRegistrar(MemoryLayout.new(16n * G, []), 0, rec.callback);
  t.is(t.throws(() => registrar.register(G, 8n * G)).address, 0x180000000n);
  t.deepEqual(rec.calls, ['0x0-0x80000000', '0x80000000-0x100000000', '0x100000000-0x180000000', '0x180000000-0x200000000']);
  t.is(registrar.inspect().chunksRegistered, 3);
  t.is(t.throws(() => registrar.register(G, 8n * G)).address, 0x180000000n);
  t.is(rec.calls.length, 4);
  registrar.register(8n * G, 1);
  t.is(registrar.inspect().chunksRegistered, 4);

  const small = new MemoryRegistrar(MemoryLayout.new(4n * G, []), 0, recorder().callback);
  t.is(small.inspect().chunkCount, 2);
  t.is(small.register(100n * G, 1), undefined);
  t.is(small.inspect().chunksRegistered, 0);
  t.throws(() => small.register(128n * G, 1), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE' });
  t.is(small.register(0, 1), undefined, 'the registrar stays usable after a panic');

  const unaligned = new MemoryRegistrar(MemoryLayout.new(4n * G, []), 0x800, recorder().callback);
  t.throws(() => unaligned.register(0, 1), { instanceOf: RangeError });
  t.throws(() => new MemoryRegistrar(MemoryLayout.new(4n * G, []), 0, () => {}).register(0xffff_ffff_ffff_f000n, 0x2000), { instanceOf: RangeError });
});

test('async callbacks: register returns a Promise; concurrent calls share one registration', async (t) => {
  const calls = [];
  const pending = [];
  const registrar = new MemoryRegistrar(MemoryLayout.new(8n * G, []), 0, (r) => {
    calls.push(String(r));
    return new Promise((resolve) => pending.push(resolve));
  });
  const a = registrar.register(0, 1);
  const b = registrar.register(4096, 1);
  const c = registrar.register(G, 2n * G);
  t.true(a instanceof Promise);
  t.true(b instanceof Promise);
  t.true(c instanceof Promise);
  t.deepEqual(calls, ['0x0-0x80000000'], 'chunk 0 is registered once; c waits behind it');
  let settled = false;
  Promise.all([a, b]).then(() => {
    settled = true;
  });
  await new Promise((resolve) => setImmediate(resolve));
  t.false(settled, 'nothing settles before the callback does');
  pending.shift()();
  await Promise.all([a, b]);
  await new Promise((resolve) => setImmediate(resolve));
  t.deepEqual(calls, ['0x0-0x80000000', '0x80000000-0x100000000']);
  pending.shift()();
  await c;
  t.is(registrar.inspect().chunksRegistered, 2);
  t.is(registrar.register(0, 3n * G), undefined, 'registered chunks take the synchronous fast path');
});

test('async callbacks: a rejection marks the chunk failed; waiters get the chunk base', async (t) => {
  const O = 1n << 40n;
  let reject;
  const registrar = new MemoryRegistrar(MemoryLayout.new(8n * G, []), O, () => new Promise((_, rej) => (reject = rej)));
  const first = registrar.register(2n * G + 0x3000n, 1);
  const waiter = registrar.register(3n * G, 1);
  const boom = new Error('device said no');
  reject(boom);
  const e1 = await t.throwsAsync(first, { instanceOf: mb.RegistrarError, code: 'ERR_REGISTRATION_FAILED' });
  t.is(e1.address, O + 2n * G);
  t.is(e1.cause, boom);
  const e2 = await t.throwsAsync(waiter, { instanceOf: mb.RegistrarError });
  t.is(e2.address, 2n * G);
  t.is(e2.cause, undefined);
  t.is(t.throws(() => registrar.register(2n * G, 1)).address, 2n * G, 'later calls fail synchronously without calling back');
});

test('mixed callbacks: synchronous pieces finish synchronously, a later async one makes a Promise', async (t) => {
  const registrar = new MemoryRegistrar(MemoryLayout.new(6n * G, []), 0, (r) => (r.start >= 4n * G ? Promise.resolve() : undefined));
  t.is(registrar.register(0, 4n * G), undefined);
  const p = registrar.register(0, 6n * G);
  t.true(p instanceof Promise);
  await p;
  t.is(registrar.inspect().chunksRegistered, 3);
});

test('re-entry from inside the callback is rejected with ERR_REGISTRAR_REENTRY', (t) => {
  let inner;
  const registrar = new MemoryRegistrar(MemoryLayout.new(4n * G, []), 0, () => {
    inner = t.throws(() => registrar.register(2n * G, 1));
  });
  registrar.register(0, 1);
  t.is(inner.code, 'ERR_REGISTRAR_REENTRY');
  t.true(inner instanceof mb.RegistrarError);
  t.is(registrar.inspect().chunksRegistered, 1);
});

test('a callback that throws a non-Error value still fails the chunk with that cause', (t) => {
  const registrar = new MemoryRegistrar(MemoryLayout.new(4n * G, []), 0, () => {
    throw 42; // eslint-disable-line no-throw-literal
  });
  const e = t.throws(() => registrar.register(0, 1), { code: 'ERR_REGISTRATION_FAILED' });
  t.is(e.cause, 42);
});

test('bad input to the registrar', (t) => {
  const layout = MemoryLayout.new(4n * G, []);
  const typeError = { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' };
  t.throws(() => new MemoryRegistrar({}, 0, () => {}), typeError);
  t.throws(() => new MemoryRegistrar(layout, -1, () => {}), typeError);
  t.throws(() => new MemoryRegistrar(layout, 1n << 64n, () => {}), { instanceOf: RangeError });
  t.throws(() => new MemoryRegistrar(layout, 0, 'callback'), typeError);
  const registrar = new MemoryRegistrar(layout, 0, () => {});
  t.throws(() => registrar.register('0', 1), typeError);
  t.throws(() => registrar.register(0, 0.5), typeError);
  t.throws(() => registrar.register(0xffff_ffff_ffff_ffffn, 2n), { instanceOf: RangeError });
});
