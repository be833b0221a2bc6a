// GuestMemory and LockedPages through the public API (synchronous operations): allocation,
// holes and address bounds, compare-exchange, scalar accesses, subranges, page locking, probes,
// the error model, the JavaScript hooks (pageFault, fallbacks, locking), and bad input for every
// entry point.
'use strict';
const test = require('ava');
const v8 = require('node:v8');
const vm = require('node:vm');
const mb = require('../dist');
const { badU64, checkU64 } = require('./helpers/bad_input');
const { P, MiB } = require('./fixtures/memory');
const { pattern } = require('./helpers/data');

const { SparseMapping, GuestMemory, GuestMemoryError, GuestMemoryErrorKind, LockedPages, MembackingError } = mb;

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc');

/** Asserts a GuestMemoryError and its fields; returns it. */
function assertGuestError(t, fn, { code, kind, op, gpa, range, fault }) {
  const error = t.throws(fn, { instanceOf: GuestMemoryError });
  t.is(error.code, code, error.message);
  t.is(error.kind, kind);
  if (op !== undefined) t.is(error.op, op);
  if (gpa !== undefined) t.is(error.gpa, BigInt(gpa));
  if (range !== undefined) t.deepEqual(error.range, range === null ? undefined : { start: BigInt(range[0]), end: BigInt(range[1]) });
  if (fault === true) {
    t.is(error.fault.signal, 'SIGSEGV');
    t.true([1, 2].includes(error.fault.siCode));
  } else if (fault === false) {
    t.is(error.fault, undefined);
  }
  t.true(error instanceof MembackingError);
  return error;
}

/** A 4 MiB mapping with RAM 0-1 MiB, 2-3 MiB and 3 MiB+P-4 MiB. */
function layoutMemory(options) {
  const mapping = new SparseMapping(4 * MiB);
  mapping.alloc(0, MiB);
  mapping.alloc(2 * MiB, MiB);
  mapping.alloc(3 * MiB + P, MiB - P);
  return { mapping, memory: GuestMemory.fromSparseMapping(mapping, options) };
}

test('allocate: a 64 KiB round trip, zeroed at first, installs no handler requirement', (t) => {
  const memory = GuestMemory.allocate(0x10000);
  t.is(memory.name, 'heap');
  t.is(memory.maxAddress, 0x10000n);
  t.true(memory.read(0, 0x10000).every((b) => b === 0));
  memory.fillAt(0, 0x42, 0x10000);
  const back = memory.read(0, 0x10000);
  t.true(back.equals(Buffer.alloc(0x10000, 0x42)));
  memory.writeAt(0x100, Buffer.from('heap data'));
  t.is(memory.read(0x100, 9).toString(), 'heap data');
  assertGuestError(t, () => memory.read(0xffff, 2), { code: 'ERR_GUEST_MEMORY_OUT_OF_RANGE', kind: 'OutOfRange', op: 'read', gpa: 0xffff });
});

test('allocate rounds up to 4 KiB', (t) => {
  t.is(GuestMemory.allocate(1).maxAddress, 4096n);
  t.is(GuestMemory.allocate(4097n).maxAddress, 8192n);
  t.is(GuestMemory.allocate(0).maxAddress, 0n);
});

test('a layout with holes: round trips in RAM, kind Other (ERR_GUEST_MEMORY_FAULT) in holes', (t) => {
  const { memory } = layoutMemory();
  t.is(memory.name, 'sparse');
  t.is(memory.maxAddress, BigInt(4 * MiB));
  t.is(memory.readU8(0), 0);
  for (const base of [0, 2 * MiB]) {
    memory.writeAt(base, Buffer.from('hello'));
    t.is(memory.read(base, 5).toString(), 'hello');
    const big = pattern(MiB, base / MiB);
    memory.writeAt(base, big);
    t.true(memory.read(base, MiB).equals(big));
  }
  assertGuestError(t, () => memory.readU8(MiB), {
    code: 'ERR_GUEST_MEMORY_FAULT',
    kind: GuestMemoryErrorKind.Other,
    op: 'read',
    gpa: MiB,
    range: [MiB, MiB + 1],
    fault: true,
  });
  const error = assertGuestError(t, () => memory.readAt(3 * MiB - 4, Buffer.alloc(8)), {
    code: 'ERR_GUEST_MEMORY_FAULT',
    kind: 'Other',
    op: 'read',
    gpa: 3 * MiB,
    range: [3 * MiB - 4, 3 * MiB + 4],
    fault: true,
  });
  t.true(error.message.includes('0x2ffffc-0x300004'), error.message);
  t.true(error.message.includes('at 0x300000'), error.message);
  t.true(error.message.startsWith("guest memory 'sparse': read error: failed to access "), error.message);
  t.is(error.fault.siCode, 2);
  t.is(error.fault.trapno, 14);
  // The other operations report their own op names.
  assertGuestError(t, () => memory.writeU32(MiB + 8, 1), { code: 'ERR_GUEST_MEMORY_FAULT', kind: 'Other', op: 'write', gpa: MiB + 8 });
  assertGuestError(t, () => memory.fillAt(MiB - 2, 0, 4), { code: 'ERR_GUEST_MEMORY_FAULT', kind: 'Other', op: 'fill', gpa: MiB });
  assertGuestError(t, () => memory.compareExchangeU32(MiB, 0, 1), { code: 'ERR_GUEST_MEMORY_FAULT', kind: 'Other', op: 'compare exchange', gpa: MiB });
  // A named memory carries its name.
  const named = GuestMemory.fromSparseMapping(layoutMemory().mapping, { name: 'ram' });
  t.is(named.name, 'ram');
  t.regex(t.throws(() => named.readU8(MiB)).message, /^guest memory 'ram': read error/);
});

test('OutOfRange at and beyond maxAddress, with bit 63, and without wrap-around', (t) => {
  const mapping = new SparseMapping(16 * P);
  mapping.alloc(0, 16 * P);
  const memory = GuestMemory.fromSparseMapping(mapping);
  const max = memory.maxAddress;
  t.is(max, BigInt(16 * P));
  const outOfRange = { code: 'ERR_GUEST_MEMORY_OUT_OF_RANGE', kind: 'OutOfRange', fault: false };
  assertGuestError(t, () => memory.readU8(max), { ...outOfRange, op: 'read', gpa: max });
  assertGuestError(t, () => memory.readAt(max - 1n, Buffer.alloc(2)), { ...outOfRange, gpa: max - 1n, range: [max - 1n, max + 1n] });
  assertGuestError(t, () => memory.readU8(1n << 63n), { ...outOfRange, gpa: 1n << 63n });
  assertGuestError(t, () => memory.writeU8((1n << 63n) + 5n, 1), { ...outOfRange, op: 'write', gpa: (1n << 63n) + 5n });
  const wrap = assertGuestError(t, () => memory.readAt((1n << 64n) - 1n, Buffer.alloc(2)), { ...outOfRange, gpa: (1n << 64n) - 1n });
  t.is(wrap.range.start, (1n << 64n) - 1n);
  t.is(wrap.range.end, 1n); // the requested range wraps (gpa + len mod 2^64), as upstream reports it
  assertGuestError(t, () => memory.readU64(max - 4n), { ...outOfRange, gpa: max - 4n });
  assertGuestError(t, () => memory.fillAt(0, 0, max + 1n), { ...outOfRange, op: 'fill', gpa: 0 });
  t.is(memory.readU8(max - 1n), 0);
});

test('zero-length operations succeed anywhere, even at 2^64-1', (t) => {
  const memory = GuestMemory.fromSparseMapping(new SparseMapping(P));
  const top = (1n << 64n) - 1n;
  t.is(memory.readAt(top, Buffer.alloc(0)), undefined);
  t.is(memory.writeAt(top, Buffer.alloc(0)), undefined);
  t.is(memory.fillAt(top, 0, 0), undefined);
  t.is(memory.read(top, 0).length, 0);
  t.is(memory.readRange({ offset: 0, len: 0, gpns: [] }, Buffer.alloc(0)), undefined);
  t.is(memory.writeRange({ offset: 0, len: 0, gpns: [] }, Buffer.alloc(0)), undefined);
  t.is(memory.zeroRange({ offset: 0, len: 0, gpns: [] }), undefined);
  t.is(GuestMemory.empty().readAt(top, new Uint8Array(0)), undefined);
});

test('on-demand mapping: pageFault maps each missing page and answers retry', (t) => {
  const mapping = new SparseMapping(16 * P);
  const calls = [];
  const memory = GuestMemory.fromSparseMapping(mapping, {
    pageFault(gpa, len, write) {
      calls.push([gpa, len, write]);
      const page = (gpa / BigInt(P)) * BigInt(P);
      mapping.alloc(page, P);
      return 'retry';
    },
  });
  const data = pattern(3 * P, 1);
  memory.writeAt(2.5 * P, data);
  t.deepEqual(calls, [
    [BigInt(2.5 * P), BigInt(3 * P), true],
    [BigInt(3 * P), BigInt(2.5 * P), true],
    [BigInt(4 * P), BigInt(1.5 * P), true],
    [BigInt(5 * P), BigInt(0.5 * P), true],
  ]);
  calls.length = 0;
  memory.writeAt(2.5 * P, data);
  t.deepEqual(calls, []);
  t.true(memory.read(2.5 * P, 3 * P).equals(data));
  // Reads fault pages in too, with write = false.
  t.is(memory.readU32(10 * P), 0);
  t.deepEqual(calls, [[BigInt(10 * P), 4n, false]]);
});

test('read-only on demand: zero pages for reads, failed writes at the exact byte', (t) => {
  const mapping = new SparseMapping(16 * P);
  mapping.alloc(0, P);
  const memory = GuestMemory.fromSparseMapping(mapping, {
    pageFault(gpa, len, write) {
      if (write) return { fail: 'Other', message: `write to read-only page at ${gpa}` };
      mapping.mapZero((gpa / BigInt(P)) * BigInt(P), P);
      return 'retry';
    },
  });
  t.is(memory.readU8(4 * P + 17), 0);
  const error = assertGuestError(t, () => memory.writeU8(4 * P + 17, 1), {
    code: 'ERR_GUEST_MEMORY_FAULT',
    kind: 'Other',
    op: 'write',
    gpa: 4 * P + 17,
    fault: true,
  });
  t.regex(error.detail, /write to read-only page at 16401/);
  // Page 1 becomes read-only zero pages; a u16 store across the boundary fails at P.
  t.is(memory.readU8(P), 0);
  memory.writeU8(P - 1, 0x5a);
  assertGuestError(t, () => memory.writeU16(P - 1, 0xffff), { code: 'ERR_GUEST_MEMORY_FAULT', kind: 'Other', op: 'write', gpa: P });
  t.is(memory.readU8(P - 1), 0x5a);
});

test('a pageFault failing with a kind reports that kind at the faulting byte', (t) => {
  const mapping = new SparseMapping(4 * P);
  mapping.alloc(0, P);
  const memory = GuestMemory.fromSparseMapping(mapping, { pageFault: () => ({ fail: 'VtlProtected' }) });
  assertGuestError(t, () => memory.readAt(P - 2, Buffer.alloc(4)), {
    code: 'ERR_GUEST_MEMORY_VTL_PROTECTED',
    kind: 'VtlProtected',
    op: 'read',
    gpa: P,
    fault: false,
  });
  for (const [kind, code] of [
    ['OutOfRange', 'ERR_GUEST_MEMORY_OUT_OF_RANGE'],
    ['NotPrivate', 'ERR_GUEST_MEMORY_NOT_PRIVATE'],
    ['NotShared', 'ERR_GUEST_MEMORY_NOT_SHARED'],
  ]) {
    const m = GuestMemory.fromSparseMapping(mapping, { pageFault: () => ({ fail: kind, message: `no: ${kind}` }) });
    const error = assertGuestError(t, () => m.writeU64(2 * P, 1n), { code, kind, op: 'write', gpa: 2 * P, fault: false });
    t.is(error.detail, `no: ${kind}`);
  }
});

test('pageFault answering fallback runs readFallback once with the original gpa and length', (t) => {
  const mapping = new SparseMapping(4 * P);
  mapping.alloc(0, P);
  const calls = [];
  const memory = GuestMemory.fromSparseMapping(mapping, {
    pageFault: () => 'fallback',
    readFallback(gpa, len) {
      calls.push([gpa, len]);
      return Buffer.from(Array.from({ length: Number(len) }, (_, i) => (Number(gpa) + i) & 0xff));
    },
  });
  const back = memory.read(P - 3, 8);
  t.deepEqual(calls, [[BigInt(P - 3), 8n]]);
  t.deepEqual([...back], Array.from({ length: 8 }, (_, i) => (P - 3 + i) & 0xff));
  // Without a fallback for the operation: kind Other "no fallback".
  const error = assertGuestError(t, () => memory.writeU8(2 * P, 1), { code: 'ERR_GUEST_MEMORY_OTHER', kind: 'Other', op: 'write', fault: false });
  t.regex(error.detail, /fallback/);
  const noHooks = GuestMemory.fromSparseMapping(mapping, { pageFault: () => 'fallback' });
  assertGuestError(t, () => noHooks.readU8(2 * P), { code: 'ERR_GUEST_MEMORY_OTHER', kind: 'Other', op: 'read' });
});

test('hooks that re-enter their memory without end stop at 32 nested calls with an error; the process lives on', (t) => {
  // Unbounded, such recursion reached V8's stack limit through native frames at ~180 levels and
  // the process died with SIGSEGV instead of throwing.
  const mapping = new SparseMapping(4 * P);
  mapping.alloc(0, P);
  let depth = 0;
  let deepest = 0;
  const access = (write) => (write ? memory.writeAt(P, Buffer.from([1])) : memory.read(P, 1));
  const reentering = (answer, write = false) => (...args) => {
    depth++;
    deepest = Math.max(deepest, depth);
    try {
      access(write); // the same unplaced page: its access calls the hooks again
      return answer(...args);
    } finally {
      depth--;
    }
  };
  let memory = GuestMemory.fromSparseMapping(mapping, { pageFault: () => 'fallback', readFallback: reentering((gpa, len) => Buffer.alloc(Number(len))) });
  for (const hooks of [null, { pageFault: reentering(() => 'retry') }, { pageFault: () => 'fallback', writeFallback: reentering(() => undefined, true) }]) {
    if (hooks) memory = GuestMemory.fromSparseMapping(mapping, hooks);
    deepest = 0;
    const error = t.throws(() => access(Boolean(hooks?.writeFallback)), { instanceOf: GuestMemoryError });
    t.is(deepest, 32);
    let innermost = error;
    while (innermost.cause instanceof Error) innermost = innermost.cause;
    t.regex(innermost.detail, /hook was not called: 32 hook calls are in progress on this thread already .*end the recursion in the hook/);
    // Nothing is left counted: a plain fallback read works at once.
    t.is(depth, 0);
  }
  const plain = GuestMemory.fromSparseMapping(mapping, { pageFault: () => 'fallback', readFallback: (gpa, len) => Buffer.alloc(Number(len), 7) });
  t.deepEqual([...plain.read(P, 2)], [7, 7]);
});

test('compareExchangeFallback and lockGpns must answer a boolean: anything else fails the access with a TypeError cause', (t) => {
  const mapping = new SparseMapping(4 * P);
  mapping.alloc(0, P);
  for (const answer of [undefined, 'yes', 0, 1, null]) {
    // A forgotten `return` read as "not swapped" with `current` untouched: the caller saw the
    // expected value come back and believed the swap happened.
    const cas = GuestMemory.fromSparseMapping(mapping, { pageFault: () => 'fallback', compareExchangeFallback: () => answer });
    const casError = assertGuestError(t, () => cas.compareExchangeU8(P, 0, 1), { code: 'ERR_GUEST_MEMORY_OTHER', kind: 'Other', op: 'compare exchange' });
    t.is(casError.cause.code, 'ERR_INVALID_ARG_TYPE');
    t.regex(casError.cause.message, /^compareExchangeFallback must return a boolean \(true when it swapped; .*\), got /);
    const unlocked = [];
    const lock = GuestMemory.fromSparseMapping(mapping, { lockGpns: () => answer, unlockGpns: (gpns) => unlocked.push(gpns) });
    const lockError = t.throws(() => lock.lockGpns([0n]), { instanceOf: GuestMemoryError });
    t.is(lockError.cause.code, 'ERR_INVALID_ARG_TYPE');
    t.regex(lockError.cause.message, /^lockGpns must return a boolean/);
    t.deepEqual(unlocked, []);
  }
  for (const swapped of [true, false]) {
    const cas = GuestMemory.fromSparseMapping(mapping, { pageFault: () => 'fallback', compareExchangeFallback: (gpa, current) => (swapped ? true : (current.fill(9), false)) });
    t.is(cas.compareExchangeU8(P, 0, 1), swapped ? 0 : 9);
  }
});

test('the write, fill and compare-exchange fallbacks receive their operations', (t) => {
  const mapping = new SparseMapping(4 * P);
  const store = new Map(); // gpa -> byte, the fallback's "device"
  const log = [];
  const memory = GuestMemory.fromSparseMapping(mapping, {
    pageFault: () => 'fallback',
    readFallback: (gpa, len) => Buffer.from(Array.from({ length: Number(len) }, (_, i) => store.get(gpa + BigInt(i)) ?? 0)),
    writeFallback(gpa, data) {
      log.push(['write', gpa, Buffer.from(data)]);
      data.forEach((b, i) => store.set(gpa + BigInt(i), b));
    },
    fillFallback(gpa, byte, len) {
      log.push(['fill', gpa, byte, len]);
      for (let i = 0n; i < len; i++) store.set(gpa + i, byte);
    },
    compareExchangeFallback(gpa, current, replacement) {
      log.push(['cas', gpa, Buffer.from(current), Buffer.from(replacement)]);
      const observed = Buffer.from(Array.from({ length: current.length }, (_, i) => store.get(gpa + BigInt(i)) ?? 0));
      if (observed.equals(current)) {
        replacement.forEach((b, i) => store.set(gpa + BigInt(i), b));
        return true;
      }
      observed.copy(current);
      return false;
    },
  });
  memory.writeAt(16, Buffer.from([1, 2, 3]));
  t.deepEqual(log.shift(), ['write', 16n, Buffer.from([1, 2, 3])]);
  t.deepEqual([...memory.read(16, 3)], [1, 2, 3]);
  memory.fillAt(32, 0x7f, 4);
  t.deepEqual(log.shift(), ['fill', 32n, 0x7f, 4n]);
  t.is(memory.readU32(32), 0x7f7f7f7f);
  t.is(memory.compareExchangeU16(16, 0x0201, 0xbeef), 0x0201);
  t.deepEqual(log.shift(), ['cas', 16n, Buffer.from([1, 2]), Buffer.from([0xef, 0xbe])]);
  t.is(memory.readU16(16), 0xbeef);
  t.is(memory.compareExchangeU16(16, 0x0201, 0x1111), 0xbeef);
  t.is(memory.readU16(16), 0xbeef);
});

test('a pageFault that always retries hits the retry cap (kind Other), not a hang', (t) => {
  const mapping = new SparseMapping(4 * P);
  let calls = 0;
  const memory = GuestMemory.fromSparseMapping(mapping, {
    retryLimit: 10,
    pageFault: () => {
      calls++;
      return 'retry';
    },
  });
  const error = assertGuestError(t, () => memory.readU8(P), { code: 'ERR_GUEST_MEMORY_FAULT', kind: 'Other', op: 'read', gpa: P, fault: true });
  t.regex(error.detail, /not resolved|retr/i);
  t.is(calls, 11); // ten Retry answers are honoured, the eleventh ends the access
  calls = 0;
  const byDefault = GuestMemory.fromSparseMapping(mapping, {
    pageFault: () => {
      calls++;
      return 'retry';
    },
  });
  assertGuestError(t, () => byDefault.writeU8(0, 1), { code: 'ERR_GUEST_MEMORY_FAULT', kind: 'Other' });
  t.is(calls, 1001);
  calls = 0;
  const never = GuestMemory.fromSparseMapping(mapping, { retryLimit: 0, pageFault: () => (calls++, 'retry') });
  assertGuestError(t, () => never.readU8(0), { code: 'ERR_GUEST_MEMORY_FAULT', kind: 'Other' });
  t.is(calls, 1);
});

test('pageFault exceptions and bad answers fail the access with the exception as cause', (t) => {
  const mapping = new SparseMapping(4 * P);
  const boom = new Error('boom');
  const throwing = GuestMemory.fromSparseMapping(mapping, {
    pageFault() {
      throw boom;
    },
  });
  const error = assertGuestError(t, () => throwing.readU8(0), { code: 'ERR_GUEST_MEMORY_FAULT', kind: 'Other', gpa: 0, fault: true });
  t.is(error.cause, boom);
  t.regex(error.detail, /boom/);
  const thrownValue = GuestMemory.fromSparseMapping(mapping, {
    pageFault() {
      throw 42; // eslint-disable-line no-throw-literal
    },
  });
  t.is(assertGuestError(t, () => thrownValue.readU8(0), { code: 'ERR_GUEST_MEMORY_FAULT', kind: 'Other' }).cause, 42);
  for (const answer of ['yes', undefined, 1, { fail: 'Nope' }, { fail: 1 }, null]) {
    const bad = GuestMemory.fromSparseMapping(mapping, { pageFault: () => answer });
    const e = assertGuestError(t, () => bad.readU8(0), { code: 'ERR_GUEST_MEMORY_FAULT', kind: 'Other' });
    t.true(e.cause instanceof TypeError, String(answer));
    t.is(e.cause.code, 'ERR_INVALID_ARG_TYPE');
  }
  // A fallback that throws, or returns the wrong length.
  const badFallback = GuestMemory.fromSparseMapping(mapping, {
    pageFault: () => 'fallback',
    readFallback: () => Buffer.alloc(1),
    writeFallback() {
      throw boom;
    },
  });
  const short = assertGuestError(t, () => badFallback.read(0, 4), { code: 'ERR_GUEST_MEMORY_OTHER', kind: 'Other', op: 'read' });
  t.true(short.cause instanceof RangeError);
  t.is(assertGuestError(t, () => badFallback.writeU8(0, 1), { code: 'ERR_GUEST_MEMORY_OTHER', kind: 'Other', op: 'write' }).cause, boom);
});

test('pageFault may call back into the same memory (re-entrant, no locks held)', (t) => {
  const mapping = new SparseMapping(4 * P);
  mapping.alloc(0, P);
  const memory = GuestMemory.fromSparseMapping(mapping, {
    pageFault(gpa) {
      // Read the "page table" at gpa 0 through the memory itself, then map.
      const allowed = memory.readU8(0);
      if (!allowed) return { fail: 'VtlProtected' };
      mapping.alloc((gpa / BigInt(P)) * BigInt(P), P);
      memory.writeU8(1, memory.readU8(1) + 1);
      return 'retry';
    },
  });
  assertGuestError(t, () => memory.readU8(2 * P), { code: 'ERR_GUEST_MEMORY_VTL_PROTECTED', kind: 'VtlProtected' });
  memory.writeU8(0, 1);
  t.is(memory.readU8(2 * P), 0);
  t.is(memory.readU8(1), 1);
});

test('compare-exchange semantics for every width', (t) => {
  const mapping = new SparseMapping(4 * P);
  mapping.alloc(0, P);
  const faults = [];
  const memory = GuestMemory.fromSparseMapping(mapping, { pageFault: (gpa, len, write) => (faults.push([gpa, len, write]), { fail: 'Other' }) });
  t.is(memory.compareExchangeU64(8, 0n, 1n), 0n);
  t.is(memory.readU64(8), 1n);
  t.is(memory.compareExchangeU64(8, 0n, 2n), 1n);
  t.is(memory.readU64(8), 1n);
  t.is(memory.compareExchangeU64(8, 1n, 2n), 1n);
  t.is(memory.readU64(8), 2n);
  t.is(memory.compareExchangeU64(8, 2, 0xffff_ffff_ffff_ffffn), 2n);
  t.is(memory.readU64(8), 0xffff_ffff_ffff_ffffn);
  t.is(memory.compareExchangeU32(16, 0, 0xdeadbeef), 0);
  t.is(memory.compareExchangeU32(16, 0, 1), 0xdeadbeef);
  t.is(memory.readU32(16), 0xdeadbeef);
  t.is(memory.compareExchangeU16(20, 0, 0xffff), 0);
  t.is(memory.compareExchangeU16(20, 0xffff, 7), 0xffff);
  t.is(memory.readU16(20), 7);
  t.is(memory.compareExchangeU8(23, 0, 0x80), 0);
  t.is(memory.compareExchangeU8(23, 1, 2), 0x80);
  t.is(memory.readU8(23), 0x80);
  t.is(memory.compareExchangeU8(25, 0, 1), 0); // bytes need no alignment
  for (const [call, size] of [
    [() => memory.compareExchangeU16(1, 0, 1), 2],
    [() => memory.compareExchangeU32(2, 0, 1), 4],
    [() => memory.compareExchangeU64(4, 0n, 1n), 8],
    [() => memory.compareExchangeU64(12n, 0n, 1n), 8],
  ]) {
    const error = t.throws(call, { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE' });
    t.regex(error.message, new RegExp(`${size}-byte aligned`));
  }
  t.is(memory.readU64(0), 0n, 'a misaligned CAS changes nothing');
  t.deepEqual(faults, []);
  assertGuestError(t, () => memory.compareExchangeU64(P, 0n, 1n), { code: 'ERR_GUEST_MEMORY_FAULT', kind: 'Other', op: 'compare exchange', gpa: P, fault: true });
  t.deepEqual(faults, [[BigInt(P), 8n, true]]);
});

test('compare-exchange on a read-only page fails even on a mismatch; probes', (t) => {
  const mapping = new SparseMapping(4 * P);
  mapping.alloc(0, P);
  mapping.mapZero(P, P);
  const memory = GuestMemory.fromSparseMapping(mapping);
  assertGuestError(t, () => memory.compareExchangeU32(P, 5, 6), { code: 'ERR_GUEST_MEMORY_FAULT', kind: 'Other', op: 'compare exchange', gpa: P, fault: true });
  assertGuestError(t, () => memory.compareExchangeU8(P + 1, 0, 6), { code: 'ERR_GUEST_MEMORY_FAULT', kind: 'Other', op: 'compare exchange' });
  t.is(memory.readU32(P), 0);
  t.true(memory.probeReadable(P));
  t.false(memory.probeWritable(P));
  t.true(memory.probeReadable(0));
  t.true(memory.probeWritable(0));
  t.false(memory.probeReadable(2 * P));
  t.false(memory.probeWritable(2 * P));
  t.false(memory.probeReadable(memory.maxAddress));
  t.false(memory.probeReadable((1n << 64n) - 1n));
  // Probing writes nothing: CAS(v, v).
  memory.writeU8(7, 0x99);
  t.true(memory.probeWritable(7));
  t.is(memory.readU8(7), 0x99);
});

test('scalar loads and stores are little-endian and range-checked', (t) => {
  const memory = GuestMemory.allocate(P);
  memory.writeU64(0, 0x0102030405060708n);
  t.deepEqual([...memory.read(0, 8)], [8, 7, 6, 5, 4, 3, 2, 1]);
  t.is(memory.readU8(0), 8);
  t.is(memory.readU16(0), 0x0708);
  t.is(memory.readU32(0), 0x05060708);
  t.is(memory.readU64(0), 0x0102030405060708n);
  memory.writeU64(8, 0xffff_ffff_ffff_ffffn);
  t.is(memory.readU64(8), 0xffff_ffff_ffff_ffffn);
  memory.writeU64(16, 7); // a safe number is a U64 too
  t.is(memory.readU64(16), 7n);
  memory.writeU32(24, 0xffffffff);
  t.is(memory.readU32(24), 0xffffffff);
  memory.writeU16(28, 0xffff);
  t.is(memory.readU16(28), 0xffff);
  memory.writeU8(30, 255);
  t.is(memory.readU8(30), 255);
  // Misaligned plain accesses are allowed.
  memory.writeU32(33, 0xa1b2c3d4);
  t.is(memory.readU32(33), 0xa1b2c3d4);
  t.is(memory.readU64(33) & 0xffffffffn, 0xa1b2c3d4n);
  for (const [call, max] of [
    [(v) => memory.writeU8(0, v), 0xff],
    [(v) => memory.writeU16(0, v), 0xffff],
    [(v) => memory.writeU32(0, v), 0xffffffff],
  ]) {
    t.throws(() => call(max + 1), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE' });
    t.throws(() => call(-1), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE' });
    t.throws(() => call(0.5), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
    t.throws(() => call(Number.NaN), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
    t.throws(() => call('1'), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
    t.throws(() => call(1n), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  }
  t.throws(() => memory.writeU64(0, 1n << 64n), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE' });
  t.throws(() => memory.writeU64(0, -1n), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE' });
  t.throws(() => memory.writeU64(0, -1), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  t.throws(() => memory.writeU64(0, 2 ** 53), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  t.is(memory.readU64(0), 0x0102030405060708n, 'rejected stores changed nothing');
});

test('subranges: own GPA 0, bounds, op "subrange", and parent-relative pageFault addresses', (t) => {
  const seen = [];
  const { memory } = layoutMemory({
    pageFault(gpa, len, write) {
      seen.push([gpa, len, write]);
      return { fail: 'Other', message: 'hole' };
    },
  });
  memory.writeAt(2 * MiB, Buffer.from('subrange'));
  const sub = memory.subrange(2 * MiB, MiB);
  t.is(sub.maxAddress, BigInt(MiB));
  t.is(sub.read(0, 8).toString(), 'subrange');
  t.true(sub.read(0, P).equals(memory.read(2 * MiB, P)));
  sub.writeU32(16, 0xcafe);
  t.is(memory.readU32(2 * MiB + 16), 0xcafe);
  assertGuestError(t, () => sub.readU8(MiB), { code: 'ERR_GUEST_MEMORY_OUT_OF_RANGE', kind: 'OutOfRange', op: 'read', gpa: MiB });
  const error = assertGuestError(t, () => memory.subrange(3 * MiB, 2 * MiB), { code: 'ERR_GUEST_MEMORY_OUT_OF_RANGE', kind: 'OutOfRange', op: 'subrange' });
  t.deepEqual(error.range, { start: BigInt(3 * MiB), end: BigInt(5 * MiB) });
  // A view over the end of the first RAM range and into the hole.
  const edge = memory.subrange(MiB - P, 2 * P);
  t.is(edge.readU8(P - 1), 0);
  assertGuestError(t, () => edge.readAt(P - 2, Buffer.alloc(4)), { code: 'ERR_GUEST_MEMORY_FAULT', kind: 'Other', op: 'read', gpa: P, fault: true });
  t.deepEqual(seen, [[BigInt(MiB), 2n, false]]);
  // Nested subranges stay relative to their own parent view.
  const nested = sub.subrange(P, P);
  t.is(nested.readU32(16 - P + P), 0);
  sub.writeU8(P + 1, 0x44);
  t.is(nested.readU8(1), 0x44);
  assertGuestError(t, () => nested.readU8(P), { code: 'ERR_GUEST_MEMORY_OUT_OF_RANGE', kind: 'OutOfRange' });
});

test('lockGpns: page contents, holes, overflow, and one unlock per lock', async (t) => {
  const { memory } = layoutMemory();
  memory.writeAt(0, pattern(2 * P, 1));
  memory.writeAt(2 * MiB, pattern(P, 2));
  const locked = memory.lockGpns([0, 1, 512]);
  t.true(locked instanceof LockedPages);
  t.is(locked.count, 3);
  t.deepEqual(locked.gpns, [0n, 1n, 512n]);
  for (const [index, gpa] of [[0, 0], [1, P], [2, 2 * MiB]]) {
    const page = Buffer.alloc(P);
    locked.readAt(index, 0, page);
    t.true(page.equals(memory.read(gpa, P)), `page ${index}`);
  }
  const part = Buffer.alloc(16);
  locked.readAt(1, P - 16, part);
  t.true(part.equals(memory.read(2 * P - 16, 16)));
  t.throws(() => locked.readAt(3, 0, part), {
    instanceOf: RangeError,
    code: 'ERR_INVALID_ARG_VALUE',
    message: 'page index 3 is out of range: 3 pages are locked (indexes 0 to 2)',
  });
  t.throws(() => locked.readAt(0, P - 8, part), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE' });
  locked.release();
  locked.release();
  t.throws(() => locked.readAt(0, 0, part), { instanceOf: MembackingError, code: 'ERR_CLOSED' });
  t.is(locked.count, 3);

  const hole = assertGuestError(t, () => memory.lockGpns([256]), { code: 'ERR_GUEST_MEMORY_FAULT', kind: 'Other', op: 'lock', gpa: MiB, range: null });
  t.regex(hole.message, /lock error: failed to access memory/);
  t.false(hole.message.includes('0x100000-'));
  assertGuestError(t, () => memory.lockGpns([2n ** 52n]), { code: 'ERR_GUEST_MEMORY_OUT_OF_RANGE', kind: 'OutOfRange', op: 'lock', range: null });
  assertGuestError(t, () => memory.lockGpns([0, 1024]), { code: 'ERR_GUEST_MEMORY_OUT_OF_RANGE', kind: 'OutOfRange', op: 'lock' });
  t.is(memory.lockGpns([]).count, 0);

  // A backing whose lock answers true: unlock exactly once per lock, also through duplicated
  // memory handles and garbage collection.
  const unlocks = [];
  const locks = [];
  const hooked = GuestMemory.fromSparseMapping(layoutMemory().mapping, {
    lockGpns: (gpns) => (locks.push(gpns), true),
    unlockGpns: (gpns) => unlocks.push(gpns),
  });
  const first = hooked.lockGpns([1, 2]);
  t.deepEqual(locks, [[1n, 2n]]);
  t.deepEqual(unlocks, []);
  first.release();
  first[Symbol.dispose]();
  first.release();
  t.deepEqual(unlocks, [[1n, 2n]]);
  const duplicate = GuestMemory.fromHandle(hooked.toHandle());
  const second = duplicate.lockGpns([3]);
  duplicate.close();
  second.release();
  second.release();
  t.deepEqual(unlocks, [[1n, 2n], [3n]]);
  (() => {
    hooked.lockGpns([4]);
  })();
  for (let i = 0; i < 50 && unlocks.length < 3; i++) {
    gc();
    await new Promise((resolve) => setImmediate(resolve));
  }
  t.deepEqual(unlocks, [[1n, 2n], [3n], [4n]]);
  // A lock hook answering false: no unlock.
  const noUnlock = GuestMemory.fromSparseMapping(layoutMemory().mapping, { lockGpns: () => false, unlockGpns: () => t.fail('unlock without lock') });
  noUnlock.lockGpns([0]).release();
  // A lock hook that throws fails the lock with the exception as cause.
  const boom = new Error('no lock');
  const failing = GuestMemory.fromSparseMapping(layoutMemory().mapping, {
    lockGpns() {
      throw boom;
    },
  });
  t.is(assertGuestError(t, () => failing.lockGpns([0]), { code: 'ERR_GUEST_MEMORY_OTHER', kind: 'Other', op: 'lock' }).cause, boom);
});

test('probes over writable and read-only pages, partial pages, no change to memory', (t) => {
  const mapping = new SparseMapping(8 * P);
  mapping.alloc(0, P);
  mapping.mapZero(P, P);
  const memory = GuestMemory.fromSparseMapping(mapping);
  memory.writeAt(100, pattern(500, 9));
  const before = memory.read(0, 2 * P);
  // "Writable range" over (writable, read-only): the second page fails; readable passes both.
  t.deepEqual([0, P].map((gpa) => memory.probeWritable(gpa)), [true, false]);
  t.deepEqual([0, P].map((gpa) => memory.probeReadable(gpa)), [true, true]);
  // Partial page (offset 100, len 500) on the writable page: every byte probes writable.
  for (let gpa = 100; gpa < 600; gpa += 37) t.true(memory.probeWritable(gpa));
  t.true(memory.read(0, 2 * P).equals(before));
  // A paged range larger than its pages is a RangeError.
  t.throws(() => memory.readRange({ offset: 1, len: 4096, gpns: [1] }, Buffer.alloc(4096)), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE' });
});

test('readRange/writeRange/zeroRange move bytes to gpn*4096+offset', (t) => {
  const memory = GuestMemory.allocate(16 * P);
  const range = { offset: 0x123, len: 2 * P, gpns: [7, 2, 11n] };
  const data = pattern(2 * P, 4);
  memory.writeRange(range, data);
  const head = P - 0x123;
  t.true(memory.read(7 * P + 0x123, head).equals(data.subarray(0, head)));
  t.true(memory.read(2 * P, P).equals(data.subarray(head, head + P)));
  t.true(memory.read(11 * P, 0x123).equals(data.subarray(head + P)));
  t.is(memory.readU8(7 * P + 0x122), 0);
  t.is(memory.readU8(11 * P + 0x123), 0);
  const back = Buffer.alloc(2 * P);
  memory.readRange(range, back);
  t.true(back.equals(data));
  // gpns may be any iterable of U64.
  const viaSet = Buffer.alloc(10);
  memory.readRange({ offset: 0, len: 10, gpns: new Set([2]) }, viaSet);
  t.true(viaSet.equals(data.subarray(head, head + 10)));
  memory.zeroRange({ offset: 0x200, len: P, gpns: [2, 11] });
  t.true(memory.read(2 * P + 0x200, P - 0x200).every((b) => b === 0));
  t.true(memory.read(11 * P, 0x123).every((b) => b === 0));
  t.is(memory.readU8(2 * P + 0x1ff), data[head + 0x1ff]);
  // Length mismatches and invalid windows are RangeErrors, and change nothing.
  for (const [r, buffer] of [
    [range, Buffer.alloc(2 * P - 1)],
    [range, Buffer.alloc(2 * P + 1)],
    [{ offset: 0, len: 3 * P, gpns: [1, 2] }, Buffer.alloc(3 * P)],
  ]) {
    t.throws(() => memory.readRange(r, buffer), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE' });
    t.throws(() => memory.writeRange(r, buffer.fill(0xff)), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE' });
  }
  t.throws(() => memory.zeroRange({ offset: 0, len: 3 * P, gpns: [1, 2] }), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE' });
  t.true(memory.read(2 * P, 0x200).equals(data.subarray(head, head + 0x200)));
  // A chunk outside memory fails with the precise gpa and no range; earlier chunks stay applied.
  const error = assertGuestError(t, () => memory.writeRange({ offset: 0, len: 2 * P, gpns: [3, 100] }, Buffer.alloc(2 * P, 0x66)), {
    code: 'ERR_GUEST_MEMORY_OUT_OF_RANGE',
    kind: 'OutOfRange',
    op: 'write',
    gpa: 100 * P,
    range: null,
  });
  t.truthy(error);
  t.is(memory.readU8(3 * P), 0x66);
  // gpn * 4096 overflowing u64.
  assertGuestError(t, () => memory.readRange({ offset: 0, len: 1, gpns: [2n ** 52n] }, Buffer.alloc(1)), { code: 'ERR_GUEST_MEMORY_OUT_OF_RANGE', kind: 'OutOfRange' });
});

test('GuestMemory.empty(): every non-empty access is OutOfRange', (t) => {
  const empty = GuestMemory.empty();
  t.is(empty.maxAddress, 0n);
  t.is(empty.name, 'empty');
  const oor = { code: 'ERR_GUEST_MEMORY_OUT_OF_RANGE', kind: 'OutOfRange' };
  assertGuestError(t, () => empty.readU8(0), { ...oor, op: 'read', gpa: 0 });
  assertGuestError(t, () => empty.writeAt(0, Buffer.alloc(1)), { ...oor, op: 'write' });
  assertGuestError(t, () => empty.fillAt(5, 0, 1), { ...oor, op: 'fill', gpa: 5 });
  assertGuestError(t, () => empty.compareExchangeU64(0, 0n, 1n), { ...oor, op: 'compare exchange' });
  assertGuestError(t, () => empty.lockGpns([0]), { ...oor, op: 'lock' });
  assertGuestError(t, () => empty.subrange(0, 1), { ...oor, op: 'subrange' });
  t.false(empty.probeReadable(0));
  t.false(empty.probeWritable(0));
  t.is(empty.sharing(), null);
});

test('the error kinds enum and GuestMemory construction rules', (t) => {
  t.deepEqual(Object.values(GuestMemoryErrorKind).sort(), ['NotPrivate', 'NotShared', 'Other', 'OutOfRange', 'VtlProtected']);
  t.is(GuestMemoryErrorKind.VtlProtected, 'VtlProtected');
  t.throws(() => new GuestMemory(), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  t.throws(() => new GuestMemory(1, 2), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  t.is(GuestMemory.allocate(P).sharing(), null);
});

// ─── Bad input for every entry point ──────────────────────────────────────────────────────────

const badBuffers = [[1, 2], 'ab', null, undefined, 5, new ArrayBuffer(4), {}];

function checkBuffer(t, label, call) {
  for (const value of badBuffers) {
    t.throws(() => call(value), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' }, `${label} with ${String(value)}`);
  }
}

test('bad input: GuestMemory factories', (t) => {
  checkU64(t, 'allocate', (v) => GuestMemory.allocate(v));
  t.throws(() => GuestMemory.allocate(1n << 62n), { instanceOf: MembackingError, code: 'ERR_ALLOCATION_FAILED' });
  const mapping = new SparseMapping(P);
  for (const notMapping of [null, undefined, 1, {}, GuestMemory.allocate(P), { length: 4096n }]) {
    t.throws(() => GuestMemory.fromSparseMapping(notMapping), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  }
  for (const options of [null, 1, 'name']) {
    t.throws(() => GuestMemory.fromSparseMapping(mapping, options), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  }
  t.throws(() => GuestMemory.fromSparseMapping(mapping, { name: 1 }), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  for (const retryLimit of ['1', 1.5, 1n, null]) {
    t.throws(() => GuestMemory.fromSparseMapping(mapping, { retryLimit }), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  }
  for (const retryLimit of [-1, 2 ** 32]) {
    t.throws(() => GuestMemory.fromSparseMapping(mapping, { retryLimit }), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE' });
  }
  for (const hook of ['pageFault', 'readFallback', 'writeFallback', 'fillFallback', 'compareExchangeFallback', 'lockGpns', 'unlockGpns']) {
    for (const value of [1, 'f', {}, true]) {
      t.throws(() => GuestMemory.fromSparseMapping(mapping, { [hook]: value }), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' }, hook);
    }
    t.truthy(GuestMemory.fromSparseMapping(mapping, { [hook]: null }));
  }
  for (const handle of [null, 1, {}, { kind: 'SparseMapping', id: 1n }, { kind: 'GuestMemory', id: 'x' }]) {
    t.throws(() => GuestMemory.fromHandle(handle), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  }
  t.throws(() => GuestMemory.fromHandle({ kind: 'GuestMemory', id: 1n << 62n }), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE' });
});

test('bad input: every GuestMemory method checks its arguments and changes nothing', (t) => {
  const memory = GuestMemory.allocate(4 * P);
  memory.fillAt(0, 0x5a, 4 * P);
  const b = () => Buffer.alloc(4);
  checkU64(t, 'readAt gpa', (v) => memory.readAt(v, b()));
  checkBuffer(t, 'readAt dest', (v) => memory.readAt(0, v));
  checkU64(t, 'read gpa', (v) => memory.read(v, 4));
  checkU64(t, 'read len', (v) => memory.read(0, v));
  // Beyond the memory: the range check comes first, before any allocation.
  t.throws(() => memory.read(0, 2n ** 60n), { instanceOf: mb.GuestMemoryError, code: 'ERR_GUEST_MEMORY_OUT_OF_RANGE' });
  checkU64(t, 'writeAt gpa', (v) => memory.writeAt(v, b()));
  checkBuffer(t, 'writeAt src', (v) => memory.writeAt(0, v));
  checkU64(t, 'fillAt gpa', (v) => memory.fillAt(v, 0, 1));
  checkU64(t, 'fillAt len', (v) => memory.fillAt(0, 0, v));
  t.throws(() => memory.fillAt(0, 256, 1), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE' });
  t.throws(() => memory.fillAt(0, 0.5, 1), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  t.throws(() => memory.fillAt(0, '0', 1), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  for (const name of ['readU8', 'readU16', 'readU32', 'readU64', 'probeReadable', 'probeWritable']) {
    checkU64(t, name, (v) => memory[name](v));
  }
  for (const name of ['writeU8', 'writeU16', 'writeU32', 'writeU64']) {
    checkU64(t, `${name} gpa`, (v) => memory[name](v, 1));
  }
  checkU64(t, 'writeU64 value', (v) => memory.writeU64(0, v));
  for (const [name, zero] of [['compareExchangeU8', 0], ['compareExchangeU16', 0], ['compareExchangeU32', 0], ['compareExchangeU64', 0n]]) {
    checkU64(t, `${name} gpa`, (v) => memory[name](v, zero, zero));
  }
  checkU64(t, 'compareExchangeU64 expected', (v) => memory.compareExchangeU64(0, v, 0n));
  checkU64(t, 'compareExchangeU64 replacement', (v) => memory.compareExchangeU64(0, 0n, v));
  for (const name of ['compareExchangeU8', 'compareExchangeU16', 'compareExchangeU32']) {
    t.throws(() => memory[name](0, -1, 0), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE' }, name);
    t.throws(() => memory[name](0, 0, 2 ** 32), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE' }, name);
    t.throws(() => memory[name](0, 0.5, 0), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' }, name);
    t.throws(() => memory[name](0, 0, '1'), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' }, name);
  }
  t.throws(() => memory.compareExchangeU8(0, 256, 0), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE' });
  t.throws(() => memory.compareExchangeU16(0, 0, 0x10000), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE' });
  checkU64(t, 'subrange offset', (v) => memory.subrange(v, 1));
  checkU64(t, 'subrange len', (v) => memory.subrange(0, v));
  const range = { offset: 0, len: 4, gpns: [0] };
  for (const bad of [null, 1, 'r', { len: 4, gpns: [0] }, { offset: '0', len: 4, gpns: [0] }, { offset: 0.5, len: 4, gpns: [0] }, { offset: 0, len: 4, gpns: 5 }, { offset: 0, len: 4 }]) {
    t.throws(() => memory.readRange(bad, b()), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' }, JSON.stringify(bad));
    t.throws(() => memory.writeRange(bad, b()), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
    t.throws(() => memory.zeroRange(bad), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  }
  for (const offset of [-1, 4096, 2 ** 40]) {
    t.throws(() => memory.readRange({ offset, len: 4, gpns: [0] }, b()), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE' });
  }
  checkU64(t, 'range len', (v) => memory.readRange({ offset: 0, len: v, gpns: [0] }, b()));
  checkU64(t, 'range gpn', (v) => memory.zeroRange({ offset: 0, len: 4, gpns: [v] }));
  checkBuffer(t, 'readRange dest', (v) => memory.readRange(range, v));
  checkBuffer(t, 'writeRange src', (v) => memory.writeRange(range, v));
  for (const gpns of [null, 5, 'abc', {}]) {
    t.throws(() => memory.lockGpns(gpns), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  }
  checkU64(t, 'lockGpns gpn', (v) => memory.lockGpns([0, v]));
  t.true(memory.read(0, 4 * P).equals(Buffer.alloc(4 * P, 0x5a)));
});

test('bad input: LockedPages.readAt', (t) => {
  const memory = GuestMemory.allocate(2 * P);
  const locked = memory.lockGpns([1]);
  for (const index of ['0', null, 1.5, -1, 0n]) {
    t.throws(() => locked.readAt(index, 0, Buffer.alloc(1)), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  }
  for (const offset of ['0', null, 1.5, -1, 0n]) {
    t.throws(() => locked.readAt(0, offset, Buffer.alloc(1)), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  }
  checkBuffer(t, 'LockedPages dest', (v) => locked.readAt(0, 0, v));
  t.throws(() => locked.readAt(2 ** 32, 0, Buffer.alloc(1)), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE' });
  t.throws(() => locked.readAt(1, 0, Buffer.alloc(1)), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE' });
  t.throws(() => locked.readAt(0, P, Buffer.alloc(1)), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE' });
  locked.readAt(0, P, Buffer.alloc(0));
  locked.release();
});

test('bad input: use after close is ERR_CLOSED for every GuestMemory method', async (t) => {
  const memory = GuestMemory.allocate(P);
  const handle = memory.toHandle();
  const again = GuestMemory.fromHandle(handle);
  memory[Symbol.dispose]();
  const calls = {
    name: () => memory.name,
    maxAddress: () => memory.maxAddress,
    readAt: () => memory.readAt(0, Buffer.alloc(1)),
    read: () => memory.read(0, 1),
    writeAt: () => memory.writeAt(0, Buffer.alloc(1)),
    fillAt: () => memory.fillAt(0, 0, 1),
    readU8: () => memory.readU8(0),
    readU16: () => memory.readU16(0),
    readU32: () => memory.readU32(0),
    readU64: () => memory.readU64(0),
    writeU8: () => memory.writeU8(0, 0),
    writeU16: () => memory.writeU16(0, 0),
    writeU32: () => memory.writeU32(0, 0),
    writeU64: () => memory.writeU64(0, 0),
    compareExchangeU8: () => memory.compareExchangeU8(0, 0, 0),
    compareExchangeU16: () => memory.compareExchangeU16(0, 0, 0),
    compareExchangeU32: () => memory.compareExchangeU32(0, 0, 0),
    compareExchangeU64: () => memory.compareExchangeU64(0, 0, 0),
    subrange: () => memory.subrange(0, 1),
    probeReadable: () => memory.probeReadable(0),
    probeWritable: () => memory.probeWritable(0),
    readRange: () => memory.readRange({ offset: 0, len: 1, gpns: [0] }, Buffer.alloc(1)),
    writeRange: () => memory.writeRange({ offset: 0, len: 1, gpns: [0] }, Buffer.alloc(1)),
    zeroRange: () => memory.zeroRange({ offset: 0, len: 1, gpns: [0] }),
    lockGpns: () => memory.lockGpns([0]),
    toHandle: () => memory.toHandle(),
  };
  for (const [name, call] of Object.entries(calls)) {
    t.throws(call, { instanceOf: MembackingError, code: 'ERR_CLOSED' }, name);
  }
  await t.throwsAsync(memory.readAtAsync(0, 1), { instanceOf: MembackingError, code: 'ERR_CLOSED' });
  await t.throwsAsync(memory.writeAtAsync(0, Buffer.alloc(1)), { instanceOf: MembackingError, code: 'ERR_CLOSED' });
  memory.close();
  // The reopened memory is unaffected; the handle opened once.
  t.is(again.readU8(0), 0);
  t.throws(() => GuestMemory.fromHandle(handle), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE', message: /already opened or closed/ });
});

test('a hook may close the memory during an operation: the operation completes, later ones are ERR_CLOSED', (t) => {
  const mapping = new SparseMapping(4 * P);
  const memory = GuestMemory.fromSparseMapping(mapping, {
    pageFault(gpa) {
      memory.close();
      mapping.alloc((gpa / BigInt(P)) * BigInt(P), P);
      return 'retry';
    },
  });
  memory.writeAt(P, Buffer.from('closed meanwhile'));
  t.throws(() => memory.readU8(P), { instanceOf: MembackingError, code: 'ERR_CLOSED' });
  const back = Buffer.alloc(16);
  mapping.readAt(P, back);
  t.is(back.toString(), 'closed meanwhile');
});

test('the raw fast-path functions reject bad arguments without crashing', (t) => {
  const { native } = require('../dist/native');
  const raw = native.NativeGuestMemory.allocate(P);
  const fast = native.guestMemoryFastPaths();
  const id = raw.fastPathId();
  t.is(raw.fastPathId(), id, 'one id per memory');
  const bad = [undefined, null, 'x', {}, [], -1, 1.5, -1n, 1n << 64n, Symbol('s'), () => 0];
  for (const value of bad) {
    for (const [name, call] of [
      ['readAt id', () => fast.readAt(value, 0, Buffer.alloc(1))],
      ['readAt gpa', () => fast.readAt(id, value, Buffer.alloc(1))],
      ['readAt dest', () => fast.readAt(id, 0, value)],
      ['writeAt src', () => fast.writeAt(id, 0, value)],
      ['readU32', () => fast.readU32(id, value)],
      ['writeU64 value', () => fast.writeU64(id, 0, value)],
      ['writeU16 value', () => fast.writeU16(id, 0, value)],
    ]) {
      const error = t.throws(call, undefined, `${name} with ${String(value)}`);
      t.true(error instanceof Error, name);
      t.is(typeof error.code, 'string', name);
    }
  }
  const { fromNative } = require('../dist/errors');
  const missing = fromNative(t.throws(() => fast.readU8(id)));
  t.true(missing instanceof TypeError);
  t.is(missing.code, 'ERR_INVALID_ARG_TYPE');
  t.is(fromNative(t.throws(() => fast.readU8())).code, 'ERR_INVALID_ARG_TYPE', 'no id');
  fast.writeU32(id, 0, 7, 'extra', 'arguments');
  t.is(fast.readU32(id, 0, 'ignored'), 7);
  // The functions need no receiver; the id stops naming the memory when the native object
  // closes.
  const { readU32 } = fast;
  t.is(readU32(id, 0), 7);
  raw.close();
  t.is(fromNative(t.throws(() => readU32(id, 0))).code, 'ERR_CLOSED');
});

test('readv/writev copy many ranges in one call, in order, into and from any ArrayBufferView', (t) => {
  const memory = GuestMemory.allocate(16 * P);
  const pages = [0, 1, 2, 3].map((i) => pattern(P, i + 1));
  // Scattered pages (every other page), GPAs as numbers and bigints.
  memory.writev(pages.map((buffer, i) => ({ gpa: i % 2 ? BigInt(2 * i * P) : 2 * i * P, buffer })));
  for (let i = 0; i < 4; i++) t.true(memory.read(2 * i * P, P).equals(pages[i]), `page ${i}`);
  // Overlapping entries: the later one wins, as two writeAt calls would; an empty entry is fine anywhere.
  memory.writev([
    { gpa: 0, buffer: Buffer.alloc(16, 9) },
    { gpa: 8, buffer: new Uint16Array(8).fill(0x0707) },
    { gpa: 2n ** 64n - 1n, buffer: Buffer.alloc(0) },
  ]);
  const head = Buffer.alloc(32);
  const view = new DataView(new ArrayBuffer(P + 8), 8, P);
  const words = new Uint32Array(4);
  memory.readv([
    { gpa: 0, buffer: head },
    { gpa: 4 * P, buffer: view },
    { gpa: 6 * P + 4, buffer: words },
    { gpa: 2n ** 64n - 1n, buffer: new Uint8Array(0) },
  ]);
  t.true(head.subarray(0, 8).equals(Buffer.alloc(8, 9)));
  t.true(head.subarray(8, 24).equals(Buffer.alloc(16, 7)));
  t.true(head.subarray(24).equals(pages[0].subarray(24, 32)));
  t.true(Buffer.from(view.buffer, 8, P).equals(pages[2]));
  t.true(Buffer.from(words.buffer).equals(pages[3].subarray(4, 20)));
  // More entries than the reused GPA array holds at first.
  const many = Array.from({ length: 200 }, (_, i) => ({ gpa: i * 8, buffer: Buffer.alloc(8) }));
  memory.readv(many);
  t.true(Buffer.concat(many.map((entry) => entry.buffer)).equals(memory.read(0, 1600)));
  memory.readv([]);
  memory.writev([]);
});

test('readv/writev take lists longer than a call can spread (200,000 entries), in order, with entryIndex past it', (t) => {
  // The engine refuses a spread call with this many arguments ("Maximum call stack size
  // exceeded"); the list must still be copied, and a failure still name its entry.
  const count = 200_000;
  const memory = GuestMemory.allocate(count * 8);
  const list = Array.from({ length: count }, (_, i) => ({ gpa: (count - 1 - i) * 8, buffer: new Uint32Array([i, ~i]) }));
  list.push({ gpa: 0, buffer: new Uint32Array([7, 7]) });
  memory.writev(list);
  const back = list.map(({ gpa }) => ({ gpa: BigInt(gpa), buffer: new Uint32Array(2) }));
  memory.readv(back);
  t.deepEqual(Array.from(back[0].buffer), [0, ~0 >>> 0]);
  t.deepEqual(Array.from(back[count - 2].buffer), [count - 2, ~(count - 2) >>> 0]);
  t.deepEqual(Array.from(back[count - 1].buffer), [7, 7], 'the last entry was written last');
  t.true(back.slice(0, count - 1).every(({ buffer }, i) => buffer[0] === i), 'every entry in place');
  back[count - 1] = { gpa: 2 ** 40, buffer: new Uint8Array(1) };
  const error = assertGuestError(t, () => memory.readv(back), { code: 'ERR_GUEST_MEMORY_OUT_OF_RANGE', kind: 'OutOfRange', op: 'read', gpa: 2 ** 40 });
  t.is(error.entryIndex, count - 1);
  list[count - 1] = { gpa: 0, buffer: 5 };
  t.is(t.throws(() => memory.writev(list), { code: 'ERR_INVALID_ARG_TYPE' }).entryIndex, count - 1);
});

test('readv/writev: the first failing entry stops the call; its error is readAt/writeAt\'s with entryIndex', (t) => {
  const memory = GuestMemory.allocate(4 * P);
  memory.fillAt(0, 0xaa, 4 * P);
  const [a, b, c] = [Buffer.alloc(8), Buffer.alloc(8), Buffer.alloc(8)];
  const error = assertGuestError(t, () => memory.readv([{ gpa: 0, buffer: a }, { gpa: 4 * P - 4, buffer: b }, { gpa: 8, buffer: c }]), {
    code: 'ERR_GUEST_MEMORY_OUT_OF_RANGE',
    kind: 'OutOfRange',
    op: 'read',
    gpa: 4 * P - 4,
  });
  const alone = t.throws(() => memory.readAt(4 * P - 4, Buffer.alloc(8)));
  t.is(error.entryIndex, 1);
  t.is(error.message, alone.message);
  t.true(error.detail.startsWith('list[1] failed (the entries before it were copied)'), error.detail);
  t.true(a.equals(Buffer.alloc(8, 0xaa)), 'the entry before was read');
  t.true(c.equals(Buffer.alloc(8)), 'the entry after was not touched');
  const write = assertGuestError(t, () => memory.writev([{ gpa: 0, buffer: Buffer.alloc(8, 1) }, { gpa: 8, buffer: Buffer.alloc(8, 2) }, { gpa: 2n ** 63n, buffer: Buffer.alloc(1) }, { gpa: 16, buffer: Buffer.alloc(8, 3) }]), {
    code: 'ERR_GUEST_MEMORY_OUT_OF_RANGE',
    kind: 'OutOfRange',
    op: 'write',
    gpa: 2n ** 63n,
  });
  t.is(write.entryIndex, 2);
  t.true(memory.read(0, 24).equals(Buffer.concat([Buffer.alloc(8, 1), Buffer.alloc(8, 2), Buffer.alloc(8, 0xaa)])));
  // A fault in a hole of a sparse layout names the faulting byte, as readAt does.
  const { memory: sparse } = layoutMemory();
  const fault = assertGuestError(t, () => sparse.readv([{ gpa: 0, buffer: Buffer.alloc(4) }, { gpa: 3 * MiB - 4, buffer: Buffer.alloc(8) }]), {
    code: 'ERR_GUEST_MEMORY_FAULT',
    kind: 'Other',
    op: 'read',
    gpa: 3 * MiB,
    range: [3 * MiB - 4, 3 * MiB + 4],
    fault: true,
  });
  t.is(fault.entryIndex, 1);
});

test('readv/writev run the pageFault hook of each entry, like readAt', (t) => {
  const mapping = new SparseMapping(8 * P);
  const faults = [];
  const memory = GuestMemory.fromSparseMapping(mapping, {
    pageFault(gpa) {
      faults.push(gpa);
      mapping.alloc((gpa / BigInt(P)) * BigInt(P), P);
      return 'retry';
    },
  });
  memory.writev([{ gpa: P, buffer: Buffer.from('one') }, { gpa: 5 * P, buffer: Buffer.from('two') }]);
  t.deepEqual(faults, [BigInt(P), BigInt(5 * P)]);
  const [one, two] = [Buffer.alloc(3), Buffer.alloc(3)];
  memory.readv([{ gpa: 5 * P, buffer: two }, { gpa: P, buffer: one }]);
  t.is(`${one} ${two}`, 'one two');
  t.is(faults.length, 2);
});

test('bad input: readv/writev check every entry before copying anything, and name the entry', (t) => {
  const memory = GuestMemory.allocate(2 * P);
  memory.fillAt(0, 0x5a, 2 * P);
  const good = () => ({ gpa: 0, buffer: Buffer.alloc(4, 1) });
  for (const name of ['readv', 'writev']) {
    for (const list of [undefined, null, 1, 'x', { length: 1, 0: good() }]) {
      const error = t.throws(() => memory[name](list), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' }, `${name} ${String(list)}`);
      t.is(error.entryIndex, undefined);
    }
    const cases = [
      [null, '', TypeError],
      [5, '', TypeError],
      [{ gpa: 0 }, '.buffer', TypeError],
      [{ gpa: 0, buffer: [1, 2] }, '.buffer', TypeError],
      [{ gpa: 0, buffer: new ArrayBuffer(4) }, '.buffer', TypeError],
      ...badU64.map(([gpa, Class]) => [{ gpa, buffer: Buffer.alloc(4) }, '.gpa', Class]),
    ];
    for (const [bad, part, Class] of cases) {
      const label = `${name} ${typeof bad === 'object' && bad !== null ? `gpa ${String(bad.gpa)}` : String(bad)}`;
      const error = t.throws(() => memory[name]([good(), good(), bad]), { instanceOf: Class }, label);
      t.is(error.code, Class === TypeError ? 'ERR_INVALID_ARG_TYPE' : 'ERR_INVALID_ARG_VALUE', label);
      t.is(error.entryIndex, 2, error.message);
      t.true(error.message.startsWith(`list[2]${part}`), error.message);
    }
  }
  t.true(memory.read(0, 2 * P).equals(Buffer.alloc(2 * P, 0x5a)), 'nothing was written');
  memory.close();
  t.is(t.throws(() => memory.readv([good()])).code, 'ERR_CLOSED');
  t.is(t.throws(() => memory.writev([good()])).code, 'ERR_CLOSED');
});

test('a fast-path id names its memory only while it is open: stale and made-up ids are ERR_CLOSED', (t) => {
  const { native } = require('../dist/native');
  const { fromNative } = require('../dist/errors');
  const fast = native.guestMemoryFastPaths();
  const first = native.NativeGuestMemory.allocate(P);
  const firstId = first.fastPathId();
  fast.writeU32(firstId, 0, 0x1111);
  first.close();
  // The freed slot is reused by the next memory, under a new id.
  const second = native.NativeGuestMemory.allocate(P);
  const secondId = second.fastPathId();
  t.not(secondId, firstId);
  fast.writeU32(secondId, 0, 0x2222);
  for (const id of [firstId, secondId + 1, 2 ** 51, 123456789]) {
    for (const call of [() => fast.readU32(id, 0), () => fast.writeAt(id, 0, Buffer.alloc(4)), () => fast.readv(id, [0], Buffer.alloc(4))]) {
      const error = fromNative(t.throws(call));
      t.is(error.code, 'ERR_CLOSED', `id ${id}`);
    }
  }
  t.is(fast.readU32(secondId, 0), 0x2222, 'the stale id reached nothing');
  // The functions are shared: a second set works on the same ids.
  t.is(native.guestMemoryFastPaths().readU32(secondId, 0), 0x2222);
  second.close();
  t.is(fromNative(t.throws(() => fast.readU32(secondId, 0))).code, 'ERR_CLOSED');
});

test('the raw readv/writev fast paths reject bad arguments without crashing', (t) => {
  const { native } = require('../dist/native');
  const { fromNative } = require('../dist/errors');
  const fast = native.guestMemoryFastPaths();
  const id = native.NativeGuestMemory.allocate(P).fastPathId();
  for (const name of ['readv', 'writev']) {
    for (const [label, call] of [
      ['no id', () => fast[name]()],
      ['no GPAs', () => fast[name](id)],
      ['GPAs not an array', () => fast[name](id, 5, Buffer.alloc(1))],
      ['a short Float64Array', () => fast[name](id, new Float64Array(1), Buffer.alloc(1), Buffer.alloc(1))],
      ['an Int32Array of GPAs', () => fast[name](id, new Int32Array(1), Buffer.alloc(1))],
      ['a short plain array', () => fast[name](id, [0], Buffer.alloc(1), Buffer.alloc(1))],
      ['a string GPA', () => fast[name](id, ['0'], Buffer.alloc(1))],
      ['a bad buffer', () => fast[name](id, new Float64Array(1), {})],
    ]) {
      const error = fromNative(t.throws(call, undefined, `${name}: ${label}`));
      t.true(error instanceof TypeError, `${name}: ${label}`);
      t.is(error.code, 'ERR_INVALID_ARG_TYPE', `${name}: ${label}`);
    }
    // GPAs past the buffers are ignored; more than 72 buffers take the long argument path.
    const buffers = Array.from({ length: 100 }, () => Buffer.alloc(8));
    fast[name](id, new Float64Array(101), ...buffers);
    fast[name](id, buffers.map((_, i) => BigInt(i * 8)), ...buffers);
  }
});
