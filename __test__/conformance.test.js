// Every case of every conformance vector file, checked through the public JavaScript API.
'use strict';
const test = require('ava');
const mb = require('../dist');
const { load, hex, big, rangeJson, rangeIn, outcome, isPanicLike, Tally } = require('./helpers/conformance');

const { MemoryRange } = mb;
const r = (j) => new MemoryRange(big(j.start), big(j.end));

function rangeOp(c) {
  const i = c.input;
  switch (c.op) {
    case 'try_new':
      try {
        return { ok: rangeJson(MemoryRange.tryNew(big(i.start), big(i.end))) };
      } catch (e) {
        if (!(e instanceof mb.InvalidMemoryRangeError) || e.code !== 'ERR_INVALID_MEMORY_RANGE') throw e;
        return { err: { start: hex(e.start), end: hex(e.end), message: e.message } };
      }
    case 'new':
      return outcome(() => ({ ok: rangeJson(MemoryRange.new(big(i.start), big(i.end))) }));
    case 'bounding':
      return outcome(() => ({ ok: rangeJson(MemoryRange.bounding(big(i.start), big(i.end))) }));
    case 'from_4k_gpn_range':
      return outcome(() => ({ ok: rangeJson(MemoryRange.from4kGpnRange(big(i.start), big(i.end))) }));
    case 'accessors': {
      const x = r(i.range);
      return {
        ok: {
          start: hex(x.start), end: hex(x.end), start_4k_gpn: hex(x.start4kGpn), end_4k_gpn: hex(x.end4kGpn),
          page_count_4k: hex(x.pageCount4k), page_count_2m: hex(x.pageCount2m), len: hex(x.len),
          is_empty: x.isEmpty, display: x.toString(),
        },
      };
    }
    case 'alignment':
      return outcome(() => ({ ok: hex(r(i.range).alignment(big(i.base))) }));
    case 'aligned_subrange':
      return outcome(() => ({ ok: rangeJson(r(i.range).alignedSubrange(big(i.alignment))) }));
    case 'overlaps':
      return { ok: r(i.a).overlaps(r(i.b)) };
    case 'contains':
      return { ok: r(i.a).contains(rangeIn(i.b)) };
    case 'cmp':
      return { ok: MemoryRange.compare(r(i.a), rangeIn(i.b)) };
    case 'intersection':
      return { ok: rangeJson(r(i.a).intersection(r(i.b))) };
    case 'contains_addr':
      return { ok: r(i.range).containsAddr(big(i.addr)) };
    case 'offset_of': {
      const offset = r(i.range).offsetOf(big(i.addr));
      return { ok: offset === null ? null : hex(offset) };
    }
    case 'split_at_offset':
      return outcome(() => ({ ok: r(i.range).splitAtOffset(big(i.offset)).map(rangeJson) }));
    default:
      throw new Error(`unknown op ${c.op}`);
  }
}

test('memory_range_ops.json through the JS API', (t) => {
  const file = load('memory_range_ops.json');
  const tally = new Tally(t, 'memory_range_ops.json');
  for (const c of file.cases) tally.check(c, rangeOp(c));
  tally.finish();
});

/** Collects a lazy iterator; a panic-like throw yields the panic shape with the items before it. */
function collect(iterable, map, limit = Infinity) {
  const items = [];
  const iterator = iterable[Symbol.iterator]();
  try {
    while (items.length < limit) {
      const next = iterator.next();
      if (next.done) return { ok: items, truncated: false };
      items.push(map(next.value));
    }
    return { ok: items, truncated: true };
  } catch (e) {
    if (!isPanicLike(e)) throw e;
    return { panic: true, items_before_panic: items };
  }
}

const tagged = (list) => list.map((x) => ({ range: rangeIn(x.range), tag: x.tag }));

function algorithmOp(c) {
  const i = c.input;
  const noTrunc = ({ truncated, ...rest }) => rest;
  switch (c.op) {
    case 'overlapping_ranges':
      return noTrunc(collect(mb.overlappingRanges(i.left.map(rangeIn), i.right.map(rangeIn)), rangeJson));
    case 'subtract_ranges':
      return noTrunc(collect(mb.subtractRanges(i.left.map(rangeIn), i.right.map(rangeIn)), rangeJson));
    case 'flatten_ranges':
      return noTrunc(collect(mb.flattenRanges(i.ranges.map(rangeIn)), rangeJson));
    case 'walk_ranges':
      return noTrunc(
        collect(mb.walkRanges(tagged(i.left), tagged(i.right)), (item) => {
          const out = { range: rangeJson(item.range), kind: item.kind };
          if ('left' in item) out.left = item.left;
          if ('right' in item) out.right = item.right;
          return out;
        }),
      );
    case 'merge_adjacent_ranges':
      return noTrunc(collect(mb.mergeAdjacentRanges(tagged(i.ranges)), (item) => ({ range: rangeJson(item.range), tag: item.tag })));
    case 'aligned_subranges': {
      const offset = i.offset === undefined ? 0n : big(i.offset);
      const it = new mb.AlignedSubranges(rangeIn(i.range));
      if (i.offset !== undefined) it.withOffset(offset);
      if (i.max_len !== undefined) it.withMaxRangeLen(big(i.max_len));
      const result = collect(it, (piece) => ({
        range: rangeJson(piece),
        alignment: outcome(() => hex(piece.alignment(offset))),
      }), 256);
      return result;
    }
    default:
      throw new Error(`unknown op ${c.op}`);
  }
}

test('memory_range_algorithms.json through the JS API', (t) => {
  const file = load('memory_range_algorithms.json');
  const tally = new Tally(t, 'memory_range_algorithms.json');
  for (const c of file.cases) {
    const actual = algorithmOp(c);
    const want = c.expected;
    // Compare only what the vectors record: items before a panic when given, and for the
    // aligned iterator the first 256 items plus `truncated`.
    if (actual.panic && want.panic && !('items_before_panic' in want)) delete actual.items_before_panic;
    tally.check(c, actual);
  }
  tally.finish();
});

/** Builds a layout from a vector's constructor input. */
function buildLayout(input) {
  if (input.ctor === 'new') {
    return mb.MemoryLayout.new(big(input.ram_size), input.gaps.map(rangeIn), input.vtl2_range ? rangeIn(input.vtl2_range) : null);
  }
  return mb.MemoryLayout.fromRanges(
    input.memory.map((m) => ({ range: rangeIn(m.range), vnode: m.vnode })),
    input.gaps.map(rangeIn),
  );
}

const layoutErrorName = {
  ERR_BAD_SIZE: 'BadSize',
  ERR_BAD_MMIO_GAPS: 'BadMmioGaps',
  ERR_BAD_MEMORY_RANGES: 'BadMemoryRanges',
  ERR_VTL2_RANGE_BEFORE_END_OF_RAM: 'Vtl2RangeBeforeEndOfRam',
};

function layoutCase(c) {
  let layout;
  try {
    layout = buildLayout(c.input);
  } catch (e) {
    if (!isPanicLike(e)) throw e;
    // A case where the original panics must throw; the Rust core documents a coded error
    // (BadMemoryRanges) instead of the overflow panic when RAM would extend past 2^64.
    if (c.expected.panic) return { panic: true };
    if (e instanceof mb.MemoryLayoutError) return { err: layoutErrorName[e.code] ?? e.code };
    return { panic: true };
  }
  const opt = (v) => (v === null ? null : hex(v));
  const expectedOk = c.expected.ok;
  const probes = (expectedOk ? expectedOk.probes : []).map((p) => {
    const result = layout.probeAddress(big(p.address));
    return { address: p.address, result };
  });
  return {
    ok: {
      ram: layout.ram.map((x) => ({ range: rangeJson(x.range), vnode: x.vnode })),
      mmio: layout.mmio.map(rangeJson),
      vtl2_range: layout.vtl2Range ? rangeJson(layout.vtl2Range) : null,
      ram_size: hex(layout.ramSize),
      end_of_ram: hex(layout.endOfRam),
      ram_below_4gb: hex(layout.ramBelow4gb),
      ram_above_4gb: hex(layout.ramAbove4gb),
      ram_above_high_mmio: opt(layout.ramAboveHighMmio),
      max_ram_below_4gb: opt(layout.maxRamBelow4gb),
      end_of_ram_or_mmio: outcome(() => hex(layout.endOfRamOrMmio)),
      probes,
    },
  };
}

test('memory_layout.json through the JS API', (t) => {
  const file = load('memory_layout.json');
  const tally = new Tally(t, 'memory_layout.json');
  for (const c of file.cases) tally.check(c, layoutCase(c));
  tally.finish();
});

test('x86_legacy_ram_split.json through the JS API', (t) => {
  const file = load('x86_legacy_ram_split.json');
  const tally = new Tally(t, 'x86_legacy_ram_split.json');
  for (const c of file.cases) {
    const layout = buildLayout(c.input.layout);
    let actual;
    try {
      actual = { ok: mb.x86LegacyRamRanges(layout, c.input.x86_legacy_support).map((x) => ({ range: rangeJson(x.range), file_offset: hex(x.fileOffset) })) };
    } catch (e) {
      if (!(e instanceof mb.MemoryLayoutError) || e.code !== 'ERR_INVALID_RAM_FOR_X86') throw e;
      actual = { err: 'InvalidRamForX86' };
    }
    tally.check(c, actual);
  }
  tally.finish();
});

/** Runs one registrar case with a synchronous or an asynchronous callback. */
async function registrarCase(c, asyncCallback) {
  const i = c.input;
  const layout = buildLayout(i.layout);
  const fails = i.fail_ranges.map(rangeIn);
  let callbacks = [];
  const callback = (range) => {
    const fail = fails.some((f) => range.end > f.start && range.start < f.end);
    callbacks.push({ range: rangeJson(range), fail });
    if (asyncCallback) return fail ? Promise.reject(new Error('injected failure')) : Promise.resolve();
    if (fail) throw new Error('injected failure');
    return undefined;
  };
  const registrar = new mb.MemoryRegistrar(layout, big(i.registration_offset), callback);
  const calls = [];
  for (const call of i.calls) {
    callbacks = [];
    let result;
    try {
      await registrar.register(big(call.address), big(call.len));
      result = { ok: null };
    } catch (e) {
      if (e instanceof mb.RegistrarError && e.code === 'ERR_REGISTRATION_FAILED') result = { err: hex(e.address) };
      else if (isPanicLike(e)) result = { panic: true };
      else throw e;
    }
    calls.push({ callbacks, result });
    if (result.panic) break;
  }
  return { calls };
}

for (const mode of ['synchronous', 'asynchronous']) {
  test(`registrar.json through the JS API (${mode} callbacks)`, async (t) => {
    const file = load('registrar.json');
    const tally = new Tally(t, `registrar.json (${mode})`);
    for (const c of file.cases) tally.check(c, await registrarCase(c, mode === 'asynchronous'));
    tally.finish();
  });
}
