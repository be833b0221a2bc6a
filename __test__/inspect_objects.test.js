// What a user sees of the API's objects and errors: util.inspect of managers, guest memories,
// partitions, device windows and mappings shows open or closed and their sizes; inspect trees
// print u64 values in hex; error stacks start at the user's call (this file), not inside
// membacking; the fast paths name the argument they refuse; and the source maps of the package
// resolve (their sources are embedded; `npm pack --dry-run` lists what ships).
'use strict';
const test = require('ava');
const path = require('node:path');
const fs = require('node:fs');
const { inspect } = require('node:util');
const { spawnSync } = require('node:child_process');
const mb = require('../dist');
const { kvmTest } = require('./helpers/kvm');

const { GiB, range, MemoryLayout, GuestMemoryBuilder, KvmPartition, RecordingPartition, SparseMapping, Mappable, GuestMemory, Vtl, VcpuMode } = mb;
const ROOT = path.join(__dirname, '..');
const DIST = path.join(ROOT, 'dist') + path.sep;
/** Whether a stack line is a frame of membacking's own code (compiled, or source-mapped to ts/). */
const isOwnFrame = (line) => line.includes(DIST) || line.includes(path.join(ROOT, 'ts') + path.sep);

const layout = () => MemoryLayout.new(GiB, [range(3n * GiB, 4n * GiB)]);

test('locked pages and a builder show what they hold, and closed once released or built', async (t) => {
  const memory = GuestMemory.allocate(0x4000);
  const locked = memory.lockGpns([1, 3]);
  t.is(inspect(locked), "LockedPages { state: 'open', count: 2, gpns: [ 0x1n, 0x3n ] }");
  locked.release();
  t.is(inspect(locked), "LockedPages { state: 'closed' }");
  memory.close();
  const builder = new GuestMemoryBuilder().x86LegacySupport(true).vtl0AliasMap(1n << 40n);
  t.is(
    inspect(builder, { breakLength: Infinity }),
    "GuestMemoryBuilder { state: 'open', existingBacking: false, vtl0AliasMap: 0x10000000000n, prefetchRam: false, pinMappings: false, x86LegacySupport: true, privateMemory: false, transparentHugepages: false }",
  );
  const manager = await builder.build(layout());
  t.is(inspect(builder), "GuestMemoryBuilder { state: 'closed' }");
  await manager.close();
});

test('managers, clients, guest memory and device windows show their state and sizes, open and closed', async (t) => {
  const manager = await new GuestMemoryBuilder().build(layout());
  t.is(inspect(manager), "GuestMemoryManager { state: 'open', ramRegions: 1, ramSize: 0x40000000n }");
  const client = manager.client();
  t.is(inspect(client), "GuestMemoryClient { state: 'open' }");
  const memory = await client.guestMemory();
  t.is(inspect(memory), "GuestMemory { state: 'open', name: 'ram', maxAddress: 0x100000000n }");
  const { control, region } = manager.deviceMemoryMapper().newRegion(0x10000, 'dev');
  t.is(inspect(control), "DeviceMemoryControl { state: 'open', len: 0x10000n }");
  t.is(inspect(region), "DeviceMemoryRegion { state: 'open', len: 0x10000n }");
  const tracking = manager.dirtyTracking();
  t.is(inspect(tracking), "DirtyTracking { state: 'open', active: false }");
  await tracking.start();
  t.is(inspect(tracking), "DirtyTracking { state: 'open', active: true }");
  await tracking.stop();
  t.is(inspect({ nested: { deeper: { manager } } }, { depth: 1 }), '{ nested: { deeper: [Object] } }');
  t.is(inspect([manager], { depth: -1 }), '[Array]');

  await region.close();
  await control.close();
  memory.close();
  client.close();
  await manager.close();
  for (const [object, name] of [[manager, 'GuestMemoryManager'], [client, 'GuestMemoryClient'], [memory, 'GuestMemory'], [control, 'DeviceMemoryControl'], [region, 'DeviceMemoryRegion']]) {
    t.is(inspect(object), `${name} { state: 'closed' }`);
  }
});

test('sparse mappings, mappables, heap guest memory and recording partitions show their state', (t) => {
  const mapping = new SparseMapping(0x10000);
  t.is(inspect(mapping), "SparseMapping { state: 'open', length: 0x10000n }");
  mapping.close();
  t.is(inspect(mapping), "SparseMapping { state: 'closed' }");
  const mappable = Mappable.allocSharedMemory(0x1000, 'inspect');
  t.regex(inspect(mappable), /^Mappable \{ state: 'open', fd: \d+ \}$/);
  mappable.close();
  t.is(inspect(mappable), "Mappable { state: 'closed' }");
  const heap = GuestMemory.allocate(0x2000);
  t.is(inspect(heap), "GuestMemory { state: 'open', name: 'heap', maxAddress: 0x2000n }");
  heap.close();
  const partition = new RecordingPartition();
  t.is(inspect(partition), "RecordingPartition { state: 'open', logLength: 0 }");
  partition.close();
  t.is(inspect(partition), "RecordingPartition { state: 'closed', logLength: 0 }");
});

kvmTest('a KvmPartition shows its slots, mapped bytes and vCPUs; a Vcpu its id', async (t) => {
  const manager = await new GuestMemoryBuilder().build(layout());
  const kvm = await KvmPartition.create();
  t.teardown(() => manager.close());
  await manager.attachPartition(Vtl.Vtl0, kvm);
  const vcpu = await kvm.createVcpu({ mode: VcpuMode.Long, pageTables: range(0x200000, 0x600000) });
  t.regex(inspect(kvm, { breakLength: Infinity }), /^KvmPartition \{ state: 'open', slots: 1, maxSlots: \d+, vcpuCount: 1, mappedBytes: 0x40000000n \}$/);
  t.is(inspect(vcpu), "Vcpu { state: 'open', id: 0 }");
  // Closing the partition closes its vCPUs, which show it.
  const other = await kvm.createVcpu({ mode: VcpuMode.Real });
  kvm.close();
  t.is(inspect(other), "Vcpu { state: 'closed' }");
  vcpu.close();
  t.is(inspect(vcpu), "Vcpu { state: 'closed' }");
  t.is(inspect(kvm), "KvmPartition { state: 'closed' }");
});

test('inspect trees print u64 values in hex, never as decimal bigints', async (t) => {
  const manager = await new GuestMemoryBuilder().x86LegacySupport(true).build(layout());
  t.teardown(() => manager.close());
  const tree = inspect(await manager.inspect(), { depth: Infinity });
  t.regex(tree, /fileOffset: 0xa0000n/);
  t.notRegex(tree, /\b\d+n\b/);
  t.notRegex(inspect(manager.ramRegions(), { depth: Infinity }), /\b\d+n\b/);
  t.notRegex(inspect(await manager.flatView(), { depth: Infinity }), /\b\d+n\b/);
});

/** The `at …` lines of a stack. */
const frames = (error) => error.stack.split('\n').filter((line) => /^\s+at /.test(line));

test('error stacks start at the user\'s call, for synchronous, asynchronous and argument errors', async (t) => {
  const manager = await new GuestMemoryBuilder().build(layout());
  t.teardown(() => manager.close());
  const memory = await manager.client().guestMemory();
  const errors = [
    t.throws(() => memory.readU8(3n * GiB)),
    t.throws(() => MemoryLayout.new(0x1001, [])),
    t.throws(() => memory.readU8('x')),
    await t.throwsAsync(async () => {
      await manager.ramVisibilityControl().setRamVisibility(range(0xa0000, 0xa1000), 'Unmapped');
    }),
    await t.throwsAsync(async () => {
      await new GuestMemoryBuilder().build(MemoryLayout.new(GiB, []));
    }),
  ];
  for (const error of errors) {
    const lines = frames(error);
    t.true(lines.length > 0, error.stack);
    t.false(lines.some(isOwnFrame), error.stack);
    t.true(lines[0].includes(__filename), error.stack);
  }
});

test('MEMBACKING_FULL_STACKS keeps membacking\'s own frames (to debug it)', (t) => {
  const script = `const mb = require(${JSON.stringify(path.join(ROOT, 'dist'))});
try { mb.MemoryLayout.new(0x1001, []); } catch (e) { console.log(e.stack); }`;
  const run = (env) => spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', env: { ...process.env, ...env } });
  const full = run({ MEMBACKING_FULL_STACKS: '1' });
  t.is(full.status, 0, full.stderr);
  t.true(full.stdout.split('\n').some(isOwnFrame), full.stdout);
  for (const flags of [[], ['--enable-source-maps']]) {
    const trimmed = spawnSync(process.execPath, [...flags, '-e', script], { encoding: 'utf8', env: { ...process.env, MEMBACKING_FULL_STACKS: '' } });
    t.regex(trimmed.stdout, /^MemoryLayoutError: invalid memory size/);
    t.false(trimmed.stdout.split('\n').some(isOwnFrame), trimmed.stdout);
  }
});

test('the fast paths name the argument they refuse', (t) => {
  const memory = GuestMemory.allocate(0x1000);
  t.teardown(() => memory.close());
  t.throws(() => memory.readU8('x'), { code: 'ERR_INVALID_ARG_TYPE', message: "gpa must be a number or a bigint, got type string ('x')" });
  t.throws(() => memory.readU64(-1), { code: 'ERR_INVALID_ARG_TYPE', message: 'gpa must be a safe non-negative integer or a bigint, got -1' });
  t.throws(() => memory.writeU64(0, -2), { message: 'value must be a safe non-negative integer or a bigint, got -2' });
  t.throws(() => memory.readAt(0, 'x'), { message: "dest must be a Uint8Array or Buffer, got type string ('x')" });
  t.throws(() => memory.fillAt(0, 1, 'z'), { message: "len must be a number or a bigint, got type string ('z')" });
});

test('every GuestMemory method names the argument and the value it refuses (not the binding\'s "expected a number or a bigint")', async (t) => {
  const memory = GuestMemory.allocate(0x1000);
  t.teardown(() => memory.close());
  const type = (message) => ({ instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE', message });
  const value = (message) => ({ instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE', message });
  // Stores' values: the binding said only "value must be an integer number".
  t.throws(() => memory.writeU8(0, '1'), type("value must be an integer number, got type string ('1')"));
  t.throws(() => memory.writeU32(0, 1n), type('value must be an integer number, got type bigint (1n)'));
  // Compare-exchange: the binding said "Failed to convert napi value String into rust type `f64`".
  t.throws(() => memory.compareExchangeU16(0, '0', 1), type("expected must be an integer number, got type string ('0')"));
  t.throws(() => memory.compareExchangeU32(0, 0, null), type('replacement must be an integer number, got null'));
  t.throws(() => memory.compareExchangeU8('0', 0, 0), type("gpa must be a number or a bigint, got type string ('0')"));
  t.throws(() => memory.compareExchangeU64(0, 0n, NaN), type('replacement must be a safe non-negative integer or a bigint, got NaN'));
  t.throws(() => memory.compareExchangeU64(0, -1n, 0n), value('expected must be between 0 and 2^64-1, got -1'));
  t.throws(() => memory.subrange(0, '4096'), type("len must be a number or a bigint, got type string ('4096')"));
  t.throws(() => memory.probeReadable(1.5), type('gpa must be a safe non-negative integer or a bigint, got 1.5'));
  t.throws(() => memory.probeWritable({}), type('gpa must be a number or a bigint, got an object (Object)'));
  await t.throwsAsync(memory.readAtAsync('0', 1), type("gpa must be a number or a bigint, got type string ('0')"));
  await t.throwsAsync(memory.writeAtAsync(-1, Buffer.alloc(1)), type('gpa must be a safe non-negative integer or a bigint, got -1'));
  // Vectored copies: the entry, the value, and `entryIndex`.
  const bad = t.throws(() => memory.readv([{ gpa: 0, buffer: Buffer.alloc(1) }, { gpa: -1, buffer: Buffer.alloc(1) }]), type('list[1].gpa must be a safe non-negative integer or a bigint, got -1'));
  t.is(bad.entryIndex, 1);
  t.throws(() => memory.writev([{ gpa: 1n << 64n, buffer: Buffer.alloc(1) }]), value('list[0].gpa must be between 0 and 2^64-1, got 18446744073709551616'));
  // A Proxy that throws on every access is described, not asked (its throw used to escape).
  t.throws(() => range(new Proxy({}, { get() { throw new Error('trap'); } }), 0), type('start must be a number or a bigint, got an object'));
});

test('the packed source maps resolve: every map in the package embeds the sources it names', (t) => {
  const result = spawnSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: ROOT, encoding: 'utf8' });
  t.is(result.status, 0, result.stderr);
  const files = JSON.parse(result.stdout)[0].files.map((file) => file.path);
  const maps = files.filter((file) => file.endsWith('.js.map'));
  t.true(maps.length > 0);
  for (const map of maps) {
    const json = JSON.parse(fs.readFileSync(path.join(ROOT, map), 'utf8'));
    t.is(json.sourcesContent?.length, json.sources.length, `${map} does not embed its sources`);
    t.true(json.sourcesContent.every((source) => typeof source === 'string' && source.length > 0), map);
    // Every compiled file that points at a map ships that map.
    t.true(files.includes(map.replace(/\.map$/, '')), map);
  }
  for (const js of files.filter((file) => file.startsWith('dist/') && file.endsWith('.js'))) {
    const text = fs.readFileSync(path.join(ROOT, js), 'utf8');
    const url = /\/\/# sourceMappingURL=(.+)$/m.exec(text)?.[1];
    if (url !== undefined) t.true(files.includes(path.posix.join(path.posix.dirname(js), url)), `${js} points at ${url}, which is not packed`);
  }
});
