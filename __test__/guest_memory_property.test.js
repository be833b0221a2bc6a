// Property test (fast-check): random sequences of placements (alloc, mapZero, unmap, decommit)
// and accesses (readAt, writeAt, fillAt, scalar loads and stores, compare-exchange) on a
// GuestMemory over a SparseMapping, checked against a JavaScript model of the pages: placed
// pages hold the model's bytes, unplaced or read-only pages fail with ERR_GUEST_MEMORY_FAULT at
// the first byte that cannot be accessed, and accesses past the end are OutOfRange.
'use strict';
const test = require('ava');
const fc = require('fast-check');
const mb = require('../dist');
const { P } = require('./fixtures/memory');

const { SparseMapping, GuestMemory, GuestMemoryError } = mb;

const PAGES = 16;
const SIZE = PAGES * P;

/** Page states of the model. */
const NONE = 0; // reserved, inaccessible
const RW = 1; // alloc: read-write
const RO = 2; // mapZero: read-only zeros

class Model {
  constructor() {
    this.state = new Uint8Array(PAGES);
    this.bytes = new Uint8Array(SIZE);
  }

  place(page, count, state) {
    for (let p = page; p < page + count; p++) this.state[p] = state;
    this.bytes.fill(0, page * P, (page + count) * P);
  }

  /** The first byte of [gpa, gpa+len) that a read (write) cannot access, or -1. */
  firstBad(gpa, len, write) {
    for (let p = Math.floor(gpa / P); p * P < gpa + len; p++) {
      const ok = write ? this.state[p] === RW : this.state[p] !== NONE;
      if (!ok) return Math.max(gpa, p * P);
    }
    return -1;
  }
}

const gpaArb = fc.oneof(
  { weight: 8, arbitrary: fc.integer({ min: 0, max: SIZE - 1 }) },
  { weight: 1, arbitrary: fc.integer({ min: SIZE - 64, max: SIZE + 64 }) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: PAGES - 1 }).map((p) => p * P) },
);
const lenArb = fc.oneof({ weight: 3, arbitrary: fc.integer({ min: 0, max: 64 }) }, { weight: 2, arbitrary: fc.integer({ min: 0, max: 3 * P }) });
const pageRangeArb = fc.integer({ min: 0, max: PAGES - 1 }).chain((page) => fc.record({ page: fc.constant(page), count: fc.integer({ min: 1, max: PAGES - page }) }));

const opArb = fc.oneof(
  pageRangeArb.map((r) => ({ op: 'alloc', ...r })),
  pageRangeArb.map((r) => ({ op: 'unmap', ...r })),
  pageRangeArb.map((r) => ({ op: 'mapZero', ...r })),
  pageRangeArb.map((r) => ({ op: 'decommit', ...r })),
  fc.record({ op: fc.constant('read'), gpa: gpaArb, len: lenArb }),
  fc.record({ op: fc.constant('read'), gpa: gpaArb, len: lenArb }),
  fc.record({ op: fc.constant('write'), gpa: gpaArb, len: lenArb, seed: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ op: fc.constant('write'), gpa: gpaArb, len: lenArb, seed: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ op: fc.constant('fill'), gpa: gpaArb, len: lenArb, byte: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ op: fc.constant('readU32'), gpa: gpaArb }),
  fc.record({ op: fc.constant('writeU64'), gpa: gpaArb, value: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }) }),
  fc.record({ op: fc.constant('cas'), gpa: gpaArb.map((g) => g - (g % 8)), expectedHit: fc.boolean(), value: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }) }),
);

/** Checks that `fn` throws the guest error the model predicts. */
function expectFailure(fn, { code, gpa }, context) {
  try {
    fn();
  } catch (error) {
    if (!(error instanceof GuestMemoryError)) throw new Error(`${context}: expected a GuestMemoryError, got ${error}`);
    if (error.code !== code) throw new Error(`${context}: expected ${code}, got ${error.code} (${error.message})`);
    if (gpa !== undefined && error.gpa !== BigInt(gpa)) throw new Error(`${context}: expected gpa ${gpa}, got ${error.gpa}`);
    if (code === 'ERR_GUEST_MEMORY_FAULT' && (!error.fault || error.fault.signal !== 'SIGSEGV')) throw new Error(`${context}: no fault record`);
    return;
  }
  throw new Error(`${context}: expected ${code}, but the access succeeded`);
}

function equalBytes(actual, expected, context) {
  const i = actual.findIndex((b, k) => b !== expected[k]);
  if (i >= 0) throw new Error(`${context}: byte ${i} is ${actual[i]}, the model says ${expected[i]}`);
}

/** Runs one operation on both the memory and the model, throwing on any disagreement. */
function step(mapping, memory, model, o) {
  const context = JSON.stringify(o, (_, v) => (typeof v === 'bigint' ? `${v}n` : v));
  const outOfRange = (gpa, len) => gpa + len > SIZE;
  switch (o.op) {
    case 'alloc':
    case 'mapZero':
      mapping[o.op](o.page * P, o.count * P);
      model.place(o.page, o.count, o.op === 'alloc' ? RW : RO);
      return;
    case 'unmap':
      mapping.unmap(o.page * P, o.count * P);
      model.place(o.page, o.count, NONE);
      return;
    case 'decommit':
      mapping.decommit(o.page * P, o.count * P);
      for (let p = o.page; p < o.page + o.count; p++) if (model.state[p] === RW) model.bytes.fill(0, p * P, (p + 1) * P);
      return;
    case 'read': {
      const dest = Buffer.alloc(o.len);
      if (o.len === 0) return memory.readAt(o.gpa, dest);
      if (outOfRange(o.gpa, o.len)) return expectFailure(() => memory.readAt(o.gpa, dest), { code: 'ERR_GUEST_MEMORY_OUT_OF_RANGE', gpa: o.gpa }, context);
      const bad = model.firstBad(o.gpa, o.len, false);
      if (bad >= 0) return expectFailure(() => memory.readAt(o.gpa, dest), { code: 'ERR_GUEST_MEMORY_FAULT', gpa: bad }, context);
      memory.readAt(o.gpa, dest);
      return equalBytes(dest, model.bytes.subarray(o.gpa, o.gpa + o.len), context);
    }
    case 'write':
    case 'fill': {
      const data = o.op === 'write' ? Buffer.from(Array.from({ length: o.len }, (_, i) => (o.seed + i * 31) & 0xff)) : Buffer.alloc(o.len, o.byte);
      const run = () => (o.op === 'write' ? memory.writeAt(o.gpa, data) : memory.fillAt(o.gpa, o.byte, o.len));
      if (o.len === 0) return run();
      if (outOfRange(o.gpa, o.len)) return expectFailure(run, { code: 'ERR_GUEST_MEMORY_OUT_OF_RANGE', gpa: o.gpa }, context);
      const bad = model.firstBad(o.gpa, o.len, true);
      if (bad < 0) {
        run();
        model.bytes.set(data, o.gpa);
        return;
      }
      const before = Buffer.from(model.bytes.subarray(o.gpa, o.gpa + o.len));
      expectFailure(run, { code: 'ERR_GUEST_MEMORY_FAULT', gpa: bad }, context);
      // Bytes before the failing one may hold the old or the new value; none after it changed.
      for (let p = Math.floor(o.gpa / P); p * P < o.gpa + o.len; p++) {
        if (model.state[p] === NONE) continue;
        const start = Math.max(o.gpa, p * P);
        const end = Math.min(o.gpa + o.len, (p + 1) * P);
        const actual = memory.read(start, end - start);
        for (let a = start; a < end; a++) {
          const value = actual[a - start];
          const old = before[a - o.gpa];
          const allowed = a < bad ? value === old || value === data[a - o.gpa] : value === old;
          if (!allowed) throw new Error(`${context}: byte at ${a} is ${value} after a failed write (old ${old}, new ${data[a - o.gpa]}, fault at ${bad})`);
          model.bytes[a] = value;
        }
      }
      return;
    }
    case 'readU32': {
      if (outOfRange(o.gpa, 4)) return expectFailure(() => memory.readU32(o.gpa), { code: 'ERR_GUEST_MEMORY_OUT_OF_RANGE', gpa: o.gpa }, context);
      const bad = model.firstBad(o.gpa, 4, false);
      if (bad >= 0) return expectFailure(() => memory.readU32(o.gpa), { code: 'ERR_GUEST_MEMORY_FAULT', gpa: bad }, context);
      const expected = Buffer.from(model.bytes.subarray(o.gpa, o.gpa + 4)).readUInt32LE(0);
      const actual = memory.readU32(o.gpa);
      if (actual !== expected) throw new Error(`${context}: readU32 gave ${actual}, the model says ${expected}`);
      return;
    }
    case 'writeU64': {
      if (outOfRange(o.gpa, 8)) return expectFailure(() => memory.writeU64(o.gpa, o.value), { code: 'ERR_GUEST_MEMORY_OUT_OF_RANGE', gpa: o.gpa }, context);
      const bad = model.firstBad(o.gpa, 8, true);
      if (bad >= 0) {
        // One store instruction: a fault leaves every byte unchanged (checked by later reads).
        return expectFailure(() => memory.writeU64(o.gpa, o.value), { code: 'ERR_GUEST_MEMORY_FAULT', gpa: bad }, context);
      }
      memory.writeU64(o.gpa, o.value);
      const bytes = Buffer.alloc(8);
      bytes.writeBigUInt64LE(o.value);
      model.bytes.set(bytes, o.gpa);
      return;
    }
    case 'cas': {
      if (outOfRange(o.gpa, 8)) return expectFailure(() => memory.compareExchangeU64(o.gpa, 0n, o.value), { code: 'ERR_GUEST_MEMORY_OUT_OF_RANGE', gpa: o.gpa }, context);
      const current = Buffer.from(model.bytes.subarray(o.gpa, o.gpa + 8)).readBigUInt64LE(0);
      const expected = o.expectedHit ? current : current ^ 1n;
      const bad = model.firstBad(o.gpa, 8, true);
      if (bad >= 0) return expectFailure(() => memory.compareExchangeU64(o.gpa, expected, o.value), { code: 'ERR_GUEST_MEMORY_FAULT', gpa: bad }, context);
      const previous = memory.compareExchangeU64(o.gpa, expected, o.value);
      if (previous !== current) throw new Error(`${context}: CAS returned ${previous}, the model holds ${current}`);
      if (o.expectedHit) {
        const bytes = Buffer.alloc(8);
        bytes.writeBigUInt64LE(o.value);
        model.bytes.set(bytes, o.gpa);
      }
      return;
    }
    default:
      throw new Error(`unknown op ${o.op}`);
  }
}

test('random placements and accesses agree with the page model', (t) => {
  let runs = 0;
  fc.assert(
    fc.property(fc.array(opArb, { minLength: 1, maxLength: 60 }), (ops) => {
      runs++;
      const mapping = new SparseMapping(SIZE);
      const memory = GuestMemory.fromSparseMapping(mapping);
      const model = new Model();
      try {
        for (const o of ops) step(mapping, memory, model, o);
        // Finally every page reads as the model says (or faults where nothing is placed).
        for (let p = 0; p < PAGES; p++) {
          if (model.state[p] === NONE) expectFailure(() => memory.read(p * P, P), { code: 'ERR_GUEST_MEMORY_FAULT', gpa: p * P }, `final page ${p}`);
          else equalBytes(memory.read(p * P, P), model.bytes.subarray(p * P, (p + 1) * P), `final page ${p}`);
        }
      } finally {
        memory.close();
        mapping.close();
      }
    }),
    { numRuns: 300 },
  );
  t.true(runs >= 300);
});

test('random scatter lists: writeRange then readRange agree with a flat model', (t) => {
  const memory = GuestMemory.allocate(PAGES * P);
  const model = new Uint8Array(PAGES * P);
  fc.assert(
    fc.property(
      fc.integer({ min: 0, max: P - 1 }),
      fc.uniqueArray(fc.integer({ min: 0, max: PAGES - 1 }), { minLength: 1, maxLength: 5 }),
      fc.integer({ min: 0, max: 255 }),
      fc.nat(),
      (offset, gpns, seed, lenSeed) => {
        const capacity = gpns.length * P - offset;
        const len = lenSeed % (capacity + 1);
        const data = Buffer.from(Array.from({ length: len }, (_, i) => (seed + i) & 0xff));
        memory.writeRange({ offset, len, gpns }, data);
        let pos = 0;
        let at = offset;
        for (const gpn of gpns) {
          while (at < P && pos < len) model[gpn * P + at++] = data[pos++];
          at = 0;
        }
        const back = Buffer.alloc(len);
        memory.readRange({ offset, len, gpns }, back);
        equalBytes(back, data, 'readRange');
        equalBytes(memory.read(0, PAGES * P), model, 'flat view');
      },
    ),
    { numRuns: 300 },
  );
  t.true(memory.read(0, PAGES * P).equals(Buffer.from(model)));
});
