// JSON forms: every object and array the public API returns survives JSON.stringify, with u64
// values as '0x…' strings (like MemoryLayout#toJSON), while deepEqual still sees bigints; errors
// have a JSON form with their fields and cause; MemoryLayout.fromJSON is the strict inverse of
// MemoryLayout#toJSON.
'use strict';
const test = require('ava');
const util = require('node:util');
const mb = require('../dist');
const { caught } = require('./helpers/bad_input');
const { kvmTest } = require('./helpers/kvm');

const { GiB, MiB, range, MemoryLayout, GuestMemoryBuilder, GuestMemory, SparseMapping, Mappable, MemoryRegistrar, RecordingPartition, KvmPartition, Vtl } = mb;
const P = 4096;

/** Every bigint anywhere in `value` (own enumerable members). */
function bigintsIn(value, seen = new Set()) {
  if (typeof value === 'bigint') return [value];
  if (typeof value !== 'object' || value === null || seen.has(value) || Buffer.isBuffer(value)) return [];
  seen.add(value);
  return Object.values(value).flatMap((member) => bigintsIn(member, seen));
}

/** Checks that `value` stringifies, and that each bigint in it appears as its '0x…' string. */
function survives(t, name, value) {
  let text;
  try {
    text = JSON.stringify(value);
  } catch (error) {
    t.fail(`${name}: JSON.stringify threw ${error.message}`);
    return undefined;
  }
  t.is(typeof text, 'string', name);
  for (const big of bigintsIn(value)) t.true(text.includes(`"0x${big.toString(16)}"`), `${name}: ${big} is not '0x${big.toString(16)}' in ${text.slice(0, 300)}`);
  return JSON.parse(text);
}

test('sweep: results of layouts, ranges, the registrar and the range algorithms survive JSON.stringify', (t) => {
  const layout = MemoryLayout.new(4n * GiB, [range(3n * GiB, 4n * GiB)], range(8n * GiB, 8n * GiB + 64n * MiB));
  survives(t, 'layout', layout);
  survives(t, 'layout.ram', layout.ram);
  survives(t, 'layout.mmio', layout.mmio);
  survives(t, 'x86LegacyRamRanges', mb.x86LegacyRamRanges(layout));
  const registrar = new MemoryRegistrar(layout, 1n << 40n, () => {});
  registrar.register(0, 1);
  const inspected = survives(t, 'registrar.inspect()', registrar.inspect());
  t.is(inspected.registrationOffset, '0x10000000000');
  survives(t, 'walkRanges', [...mb.walkRanges([{ range: range(0, 2n * MiB), tag: 'a' }], [{ range: range(MiB, 3n * MiB), tag: 'b' }])]);
  survives(t, 'subtractRanges', [...mb.subtractRanges([range(0, 2n * MiB)], [range(MiB, 3n * MiB)])]);
  survives(t, 'alignedSubranges', [...new mb.AlignedSubranges(range(0, 3n * MiB))]);
});

test('sweep: guest memory results, handles and locked pages survive JSON.stringify', (t) => {
  const mapping = new SparseMapping(4 * P);
  mapping.alloc(0, 2 * P);
  const memory = GuestMemory.fromSparseMapping(mapping);
  t.deepEqual(survives(t, 'SparseMapping#toHandle', mapping.toHandle()).kind, 'SparseMapping');
  survives(t, 'GuestMemory#toHandle', memory.toHandle());
  const locked = memory.lockGpns([0, 1]);
  t.deepEqual(survives(t, 'LockedPages#gpns', locked.gpns), ['0x0', '0x1']);
  t.deepEqual(locked.gpns, [0n, 1n], 'the data stays bigints');
  locked.release();
  survives(t, 'guestPrograms()', mb.guestPrograms());
});

test('sweep: manager results (inspect, ramRegions, flatView, plan, logs, regions of a shared backing) survive JSON.stringify', async (t) => {
  const layout = MemoryLayout.new(GiB, [range(3n * GiB, 4n * GiB)]);
  const manager = await new GuestMemoryBuilder().x86LegacySupport(true).build(layout);
  const partition = new RecordingPartition();
  await manager.attachPartition(Vtl.Vtl0, partition);
  const log = partition.log();
  const logJson = survives(t, 'RecordingPartition#log', log);
  t.is(logJson[0].gpa, `0x${log[0].gpa.toString(16)}`);
  survives(t, 'RecordingPartition#takeLog', partition.takeLog());
  survives(t, 'RecordingPartition#takeLog (single entry)', partition.log()[0] ?? {});
  const snapshot = await manager.inspect();
  const snapshotJson = survives(t, 'manager.inspect()', snapshot);
  t.is(snapshotJson.regions[0].range.start, `0x${snapshot.regions[0].range.start.toString(16)}`);
  survives(t, 'manager.inspect().regions[0] alone', snapshot.regions[0]);
  survives(t, 'manager.inspect().mappings alone', snapshot.mappings);
  survives(t, 'manager.ramRegions()', manager.ramRegions());
  survives(t, 'manager.flatView()', await manager.flatView());
  const plan = await manager.plan({ kind: 'ramVisibility', range: range(0xa0000, 0xc0000), visibility: 'ReadOnly' });
  const planJson = survives(t, 'manager.plan()', plan);
  t.is(planJson.ops[0].gpa, '0xa0000');
  survives(t, 'manager.plan().ops[0] alone', plan.ops[0]);
  survives(t, 'client.toHandle()', manager.client().toHandle());
  const memory = await manager.client().guestMemory();
  survives(t, 'sharing().getRegions()', await memory.sharing().getRegions());
  memory.close();
  await manager.close();
});

kvmTest('sweep: KvmPartition inspect, slot logs, registers and exits survive JSON.stringify', async (t) => {
  const manager = await new GuestMemoryBuilder().build(MemoryLayout.new(GiB, [range(3n * GiB, 4n * GiB)]));
  const kvm = await KvmPartition.create();
  try {
    await manager.attachPartition(Vtl.Vtl0, kvm);
    const memory = await manager.client().guestMemory();
    survives(t, 'KvmPartition#inspect', kvm.inspect());
    survives(t, 'KvmPartition#slotLog', kvm.slotLog());
    survives(t, 'KvmPartition#takeSlotLog', kvm.takeSlotLog());
    const programs = mb.guestPrograms();
    memory.writeAt(0x10000, programs.fillPattern);
    const vcpu = await kvm.createVcpu({ pageTables: range(2n * MiB, 4n * MiB + 8n * 1024n) });
    vcpu.setRegisters({ rip: 0x10000n, rdi: 0x1000000n, rcx: 8n, rdx: 0x5an, rsp: 0x8000n });
    survives(t, 'Vcpu#getRegisters', vcpu.getRegisters());
    const exit = await vcpu.run({ timeoutMs: 20000 });
    survives(t, 'Vcpu#run exit', exit);
    vcpu.close();
  } finally {
    await manager.close();
    kvm.close();
  }
});

test('errors have a JSON form: name, code, message, fields in hex, and the cause', async (t) => {
  const manager = await new GuestMemoryBuilder().build(MemoryLayout.new(GiB, [range(3n * GiB, 4n * GiB)]));
  const memory = await manager.client().guestMemory();
  const error = await caught(() => memory.read(3n * GiB, 2));
  const json = survives(t, 'GuestMemoryError', error);
  t.like(json, { name: 'GuestMemoryError', code: 'ERR_GUEST_MEMORY_OUT_OF_RANGE', gpa: '0xc0000000', range: { start: '0xc0000000', end: '0xc0000002' }, kind: 'OutOfRange', op: 'read' });
  t.is(json.message, error.message);
  t.like(json.cause, { name: 'MemoryManagerError', code: 'ERR_NO_MAPPING' });
  await manager.close();
  for (const [name, provoke] of [
    ['SparseMappingError', () => new SparseMapping(P).readAt(0, Buffer.alloc(1))],
    ['InvalidMemoryRangeError', () => mb.MemoryRange.tryNew(0x1001, 0x2000)],
    ['RangeError', () => range(0x1001, 0x2000)],
    ['TypeError', () => range('0', 1)],
    ['RegistrarError', () => new MemoryRegistrar(MemoryLayout.new(GiB, []), 0, () => { throw new Error('no'); }).register(0, 1)],
    ['OsError', () => Mappable.fromFd(0x7fff_fff0)],
  ]) {
    const e = await caught(provoke);
    const j = survives(t, name, e);
    t.is(j.name, name, JSON.stringify(j));
    t.is(j.code, e.code);
    t.is(j.message, e.message);
  }
});

test('JSON and inspect forms are non-enumerable: deepEqual, keys and spreads see the plain data', async (t) => {
  const manager = await new GuestMemoryBuilder().build(MemoryLayout.new(GiB, [range(3n * GiB, 4n * GiB)]));
  const regions = manager.ramRegions();
  t.deepEqual(regions, [{ range: range(0, GiB), fileOffset: 0n }]);
  t.deepEqual(Object.keys(regions[0]), ['range', 'fileOffset']);
  t.deepEqual({ ...regions[0] }, { range: range(0, GiB), fileOffset: 0n });
  await manager.close();
  // util.inspect shows u64 values in hex beside the hex ranges (a second RAM region at 1 GiB
  // whose offset in the RAM object is 512 MiB).
  const split = await new GuestMemoryBuilder().build(MemoryLayout.new(GiB, [range(512n * MiB, GiB)]));
  const shown = util.inspect(await split.inspect(), { depth: 6 });
  t.notRegex(shown, /536870912n/);
  t.regex(shown, /fileOffset: 0x20000000n/);
  t.regex(shown, /MemoryRange 0x40000000-0x60000000/);
  await split.close();
});

test('MemoryLayout.fromJSON is the inverse of toJSON, also after JSON.parse', (t) => {
  const layouts = [
    MemoryLayout.new(4n * GiB, [range(3n * GiB, 4n * GiB)], range(8n * GiB, 8n * GiB + 64n * MiB)),
    MemoryLayout.new(GiB, []),
    MemoryLayout.fromRanges([{ range: range(0x1000, 2n * GiB) }, { range: range(2n * GiB, 6n * GiB), vnode: 2 }], [range(7n * GiB, 8n * GiB)]),
  ];
  for (const layout of layouts) {
    const json = layout.toJSON();
    t.deepEqual(MemoryLayout.fromJSON(json).toJSON(), json);
    t.deepEqual(MemoryLayout.fromJSON(JSON.parse(JSON.stringify(layout))).toJSON(), json);
  }
  // The defining parts alone are enough.
  const { ram, mmio, vtl2Range } = layouts[0].toJSON();
  t.is(MemoryLayout.fromJSON({ ram, mmio, vtl2Range }).endOfRamOrMmio, 4n * GiB + GiB);
});

test('MemoryLayout.fromJSON is strict: unknown keys and bad values are coded errors naming the key', (t) => {
  const good = MemoryLayout.new(4n * GiB, [range(3n * GiB, 4n * GiB)]).toJSON();
  const cases = [
    [{ ...good, gaps: [] }, RangeError, 'ERR_INVALID_ARG_VALUE', /unknown key 'gaps' \(accepted: ram, mmio, vtl2Range, ramSize, endOfRam/],
    [{ ...good, ramSize: 4n * GiB }, TypeError, 'ERR_INVALID_ARG_TYPE', /ramSize must be a '0x…' hex string, got the bigint 0x100000000/],
    [{ ...good, ramSize: '0x1000' }, RangeError, 'ERR_INVALID_ARG_VALUE', /ramSize is 0x1000 but the ranges give 0x100000000/],
    [{ ...good, ram: [{ range: { start: '0x0', end: '4G' }, vnode: 0 }] }, RangeError, 'ERR_INVALID_ARG_VALUE', /ram\[0\]\.range\.end must be a '0x…' hex string, got '4G'/],
    [{ ...good, mmio: [{ start: '0x0', end: '0x1000' }] }, mb.MemoryLayoutError, 'ERR_BAD_MEMORY_RANGES', /./],
    [{ mmio: [] }, RangeError, 'ERR_INVALID_ARG_VALUE', /has no 'ram'/],
  ];
  for (const [json, instanceOf, code, message] of cases) {
    t.throws(() => MemoryLayout.fromJSON(json), { instanceOf, code, message }, JSON.stringify(json, (_k, v) => (typeof v === 'bigint' ? `${v}n` : v)));
  }
  t.throws(() => MemoryLayout.fromJSON(JSON.stringify(good)), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE', message: /JSON\.parse text first/ });
  t.throws(() => MemoryLayout.fromJSON(null), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
});
