// A memory's JavaScript hooks run in the middle of a copy, and may detach, transfer or resize
// the very buffer the copy uses. The copies of a memory with hooks go through a buffer of the
// binding's own: a read whose destination changed is ERR_BUFFER_CHANGED (never a write into
// freed memory), a write writes the bytes its source held when the call began.
'use strict';
const test = require('ava');
const v8 = require('node:v8');
const vm = require('node:vm');
const mb = require('../dist');
const { P } = require('./fixtures/memory');

const { SparseMapping, GuestMemory } = mb;

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc');

/** Detaches `view`'s ArrayBuffer and lets the engine free its memory. */
function detach(view) {
  structuredClone(view.buffer, { transfer: [view.buffer] });
  gc();
  gc();
}

/**
 * A memory over two pages, page 0 filled with 0xaa and page 1 unplaced; the first fault on page
 * 1 runs `meddle()`, then places page 1 filled with 0xbb and retries.
 */
function meddlingMemory(meddle) {
  const mapping = new SparseMapping(2 * P);
  mapping.alloc(0, P);
  mapping.fillAt(0, 0xaa, P);
  const faults = [];
  const memory = GuestMemory.fromSparseMapping(mapping, {
    pageFault(gpa) {
      faults.push(gpa);
      if (faults.length === 1) {
        meddle();
        mapping.alloc(P, P);
        mapping.fillAt(P, 0xbb, P);
      }
      return 'retry';
    },
  });
  return { memory, mapping, faults };
}

/** Asserts `fn` throws ERR_BUFFER_CHANGED naming `name`, `call` and the two lengths. */
function assertChanged(t, fn, { name, call, before, now }) {
  const error = t.throws(fn, { instanceOf: TypeError });
  t.is(error.code, 'ERR_BUFFER_CHANGED', error.message);
  t.true(error.message.includes(`${name} changed while ${call} was using it: it was ${before} bytes and is ${now} bytes now`), error.message);
  return error;
}

const expected = Buffer.concat([Buffer.alloc(P, 0xaa), Buffer.alloc(P, 0xbb)]);

test('readAt: a hook that detaches the destination gets ERR_BUFFER_CHANGED, and nothing is written into freed memory', (t) => {
  let dest = new Uint8Array(2 * P);
  const { memory, faults } = meddlingMemory(() => detach(dest));
  // Memory freed by the detach, then handed out again: must not receive the guest's bytes.
  const reused = [];
  assertChanged(t, () => {
    memory.readAt(0, dest);
    for (let i = 0; i < 200; i++) reused.push(new Uint8Array(2 * P));
  }, { name: 'dest', call: 'readAt', before: 2 * P, now: 0 });
  for (let i = 0; i < 200; i++) reused.push(new Uint8Array(2 * P));
  t.deepEqual(faults, [BigInt(P)]);
  t.is(dest.byteLength, 0);
  t.false(reused.some((buffer) => buffer.some((byte) => byte !== 0)));
  // The memory itself is fine: the same read into a buffer left alone returns the bytes.
  dest = new Uint8Array(2 * P);
  memory.readAt(0, dest);
  t.deepEqual(Buffer.from(dest), expected);
});

test('readAt: shrinking a resizable ArrayBuffer under a length-tracking view is ERR_BUFFER_CHANGED; growing one under a fixed view is fine', (t) => {
  const shrinking = new ArrayBuffer(2 * P, { maxByteLength: 4 * P });
  const tracking = new Uint8Array(shrinking);
  const { memory } = meddlingMemory(() => shrinking.resize(P / 2));
  assertChanged(t, () => memory.readAt(0, tracking), { name: 'dest', call: 'readAt', before: 2 * P, now: P / 2 });
  t.true(tracking.every((byte) => byte === 0));

  const growing = new ArrayBuffer(2 * P, { maxByteLength: 4 * P });
  const fixed = new Uint8Array(growing, 0, 2 * P);
  const other = meddlingMemory(() => growing.resize(4 * P));
  other.memory.readAt(0, fixed);
  t.deepEqual(Buffer.from(fixed), expected);
});

test('writeAt: a hook that detaches the source does not change what is written (the bytes at the call)', (t) => {
  const src = new Uint8Array(2 * P).fill(0x5c);
  const { memory, mapping } = meddlingMemory(() => detach(src));
  memory.writeAt(0, src);
  t.is(src.byteLength, 0);
  const back = Buffer.alloc(2 * P);
  mapping.readAt(0, back);
  t.deepEqual(back, Buffer.alloc(2 * P, 0x5c));
});

test('readv: the entries before a buffer a hook detached are filled; that entry is ERR_BUFFER_CHANGED with its index', (t) => {
  const first = new Uint8Array(P);
  const second = new Uint8Array(P);
  const { memory } = meddlingMemory(() => detach(second));
  const error = assertChanged(t, () => memory.readv([{ gpa: 0, buffer: first }, { gpa: P, buffer: second }]), {
    name: 'the buffer',
    call: 'readv',
    before: P,
    now: 0,
  });
  t.is(error.entryIndex, 1);
  t.true(error.message.startsWith('list[1].buffer: '), error.message);
  t.deepEqual(Buffer.from(first), Buffer.alloc(P, 0xaa));
});

test('writev: a hook that detaches a later entry\'s source does not change what is written', (t) => {
  const first = new Uint8Array(P).fill(1);
  const second = new Uint8Array(P).fill(2);
  const mapping = new SparseMapping(2 * P);
  mapping.alloc(P, P);
  let placed = false;
  const memory = GuestMemory.fromSparseMapping(mapping, {
    pageFault() {
      if (!placed) {
        detach(second);
        mapping.alloc(0, P);
        placed = true;
      }
      return 'retry';
    },
  });
  memory.writev([{ gpa: 0, buffer: first }, { gpa: P, buffer: second }]);
  t.true(placed);
  const back = Buffer.alloc(2 * P);
  mapping.readAt(0, back);
  t.deepEqual(back, Buffer.concat([Buffer.alloc(P, 1), Buffer.alloc(P, 2)]));
});

test('readRange, a subrange and a memory reopened from a handle on the same thread copy through their own buffer too', (t) => {
  let dest = new Uint8Array(2 * P);
  const { memory } = meddlingMemory(() => detach(dest));
  assertChanged(t, () => memory.readRange({ offset: 0, len: 2 * P, gpns: [0n, 1n] }, dest), {
    name: 'dest',
    call: 'readRange',
    before: 2 * P,
    now: 0,
  });

  dest = new Uint8Array(2 * P);
  const sub = meddlingMemory(() => detach(dest)).memory.subrange(0, 2 * P);
  assertChanged(t, () => sub.readAt(0, dest), { name: 'dest', call: 'readAt', before: 2 * P, now: 0 });

  dest = new Uint8Array(2 * P);
  const reopened = GuestMemory.fromHandle(meddlingMemory(() => detach(dest)).memory.toHandle());
  assertChanged(t, () => reopened.readAt(0, dest), { name: 'dest', call: 'readAt', before: 2 * P, now: 0 });
});
