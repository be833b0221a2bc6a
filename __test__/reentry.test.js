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
