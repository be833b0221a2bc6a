#!/usr/bin/env node
/**
 * Smoke test of an installed membacking package, run with plain `node` inside a project that
 * installed the packed tarballs (see `__test__/pack.test.js`, which copies this file there).
 *
 * Usage: `node pack-smoke.js <expected platform package>` (e.g. `membacking-linux-x64-gnu`).
 * It requires `membacking` from the current directory's node_modules, runs every check below,
 * and prints one JSON line: `{ ok, binaries, results: [{ name, ok, error? }] }`; the exit code is
 * 0 only when every check passed. To cover more of the API, add a `check(name, (mb) => …)`.
 */
'use strict';
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');

const checks = [];
/** Registers a check: `run(mb, context)` throws (node:assert) when the behaviour is wrong. */
function check(name, run) {
  checks.push({ name, run });
}

check('the binary comes from the installed platform package', (_mb, { expectedPackage, binaries }) => {
  assert.equal(binaries.length, 1, `exactly one native addon is loaded: ${binaries.join(', ')}`);
  const packageDir = fs.realpathSync(path.join(process.cwd(), 'node_modules', expectedPackage));
  assert.equal(path.dirname(binaries[0]), packageDir);
  const membackingDir = fs.realpathSync(path.dirname(require.resolve('membacking/package.json')));
  assert.equal(membackingDir, fs.realpathSync(path.join(process.cwd(), 'node_modules', 'membacking')));
});

check('MemoryLayout.new: 4 GiB around the 3G-4G gap', ({ MemoryLayout, range, GiB }) => {
  const layout = MemoryLayout.new(4n * GiB, [range(3n * GiB, 4n * GiB)]);
  assert.deepEqual(layout.ram.map((r) => String(r.range)), ['0x0-0xc0000000', '0x100000000-0x140000000']);
  assert.deepEqual(layout.ram.map((r) => r.vnode), [0, 0]);
  assert.equal(layout.ramSize, 4n * GiB);
  assert.equal(layout.endOfRam, 5n * GiB);
  assert.equal(layout.ramBelow4gb, 3n * GiB);
  assert.equal(layout.probeAddress(0xfee00000), 'Mmio');
  assert.equal(layout.probeAddress(0x1000), 'Ram');
  assert.equal(layout.vtl2Range, null);
});

check('x86LegacyRamRanges: 17 regions with running file offsets', ({ MemoryLayout, range, GiB, x86LegacyRamRanges }) => {
  const regions = x86LegacyRamRanges(MemoryLayout.new(4n * GiB, [range(3n * GiB, 4n * GiB)]));
  assert.equal(regions.length, 17);
  assert.equal(String(regions[0].range), '0x0-0xa0000');
  assert.equal(String(regions[1].range), '0xa0000-0xc0000');
  assert.equal(String(regions[15].range), '0x100000-0xc0000000');
  assert.equal(String(regions[16].range), '0x100000000-0x140000000');
  let offset = 0n;
  for (const region of regions) {
    assert.equal(region.fileOffset, offset);
    offset += region.range.len;
  }
  assert.equal(offset, 4n * GiB);
});

check('MemoryRegistrar: a sync callback registers 2 GiB chunks once', ({ MemoryLayout, MemoryRegistrar, range, GiB }) => {
  const layout = MemoryLayout.new(4n * GiB, [range(3n * GiB, 4n * GiB)]);
  const calls = [];
  const registrar = new MemoryRegistrar(layout, 1n << 40n, (piece) => {
    calls.push(String(piece));
  });
  assert.equal(registrar.register(0x1000, 0x1000), undefined);
  assert.deepEqual(calls, ['0x10000000000-0x10080000000']);
  assert.equal(registrar.register(0x2000, 0x1000), undefined);
  assert.equal(calls.length, 1);
  assert.equal(registrar.register(3n * GiB - 0x1000n, 0x1000), undefined);
  assert.deepEqual(calls, ['0x10000000000-0x10080000000', '0x10080000000-0x100c0000000']);
  assert.deepEqual(registrar.inspect(), { chunksRegistered: 2, chunkCount: 3, registrationOffset: 1n << 40n });
});

check('errors carry their code', ({ MemoryLayout, MemoryRegistrar, MembackingError, range, GiB }) => {
  assert.throws(() => MemoryLayout.new(0x1001, []), (e) => e instanceof MembackingError && e.name === 'MemoryLayoutError' && e.code === 'ERR_BAD_SIZE');
  assert.throws(() => range(-1, 0), (e) => e instanceof TypeError && e.code === 'ERR_INVALID_ARG_TYPE');
  const layout = MemoryLayout.new(4n * GiB, [range(3n * GiB, 4n * GiB)]);
  const registrar = new MemoryRegistrar(layout, 0, () => {
    throw new Error('refused');
  });
  assert.throws(
    () => registrar.register(0, 1),
    (e) => e.code === 'ERR_REGISTRATION_FAILED' && e.address === 0n && e.cause instanceof Error && e.cause.message === 'refused',
  );
});

check('GuestMemory: heap-backed reads and writes', ({ GuestMemory, GuestMemoryError }) => {
  const memory = GuestMemory.allocate(0x10000);
  memory.writeAt(0x1000, Buffer.from('membacking'));
  assert.equal(memory.read(0x1000, 10).toString(), 'membacking');
  memory.writeU32(0x2000, 0xdeadbeef);
  assert.equal(memory.readU32(0x2000), 0xdeadbeef);
  assert.equal(memory.readU8(0x2000), 0xef);
  assert.equal(memory.maxAddress, 0x10000n);
  assert.throws(() => memory.read(0x10000, 1), (e) => e instanceof GuestMemoryError && e.code === 'ERR_GUEST_MEMORY_OUT_OF_RANGE');
});

check('SparseMapping: a fault on an unplaced page is recovered (x64)', ({ SparseMapping, SparseMappingError, GuestMemory, handlerStatus }) => {
  const mapping = new SparseMapping(1n << 20n);
  try {
    mapping.alloc(0, 0x10000);
    const memory = GuestMemory.fromSparseMapping(mapping, { name: 'smoke' });
    memory.writeAt(0x100, Buffer.from('abc'));
    assert.equal(memory.read(0x100, 3).toString(), 'abc');
    if (process.arch !== 'x64') {
      // No fault recovery off x86-64 (README "arm64 note"): a fault would end the process.
      assert.equal(handlerStatus(), 'not-installed');
      return;
    }
    assert.equal(handlerStatus(), 'installed');
    assert.throws(
      () => mapping.readAt(0x20000, Buffer.alloc(8)),
      (e) => e instanceof SparseMappingError && e.code === 'ERR_MEMORY' && e.offset === 0n && e.fault.signal === 'SIGSEGV',
    );
    assert.throws(() => memory.read(0x20000, 8), (e) => e.code === 'ERR_GUEST_MEMORY_FAULT');
  } finally {
    mapping.close();
  }
});

check('GuestMemoryManager with a RecordingPartition: guest memory and the partition calls', async ({ MemoryLayout, GuestMemoryBuilder, RecordingPartition, RamVisibility, Vtl, range, GiB, MiB }) => {
  const layout = MemoryLayout.new(64n * MiB, [range(3n * GiB, 4n * GiB)]);
  const manager = await new GuestMemoryBuilder().x86LegacySupport(true).build(layout);
  try {
    const partition = new RecordingPartition();
    await manager.attachPartition(Vtl.Vtl0, partition);
    assert.equal(partition.log().filter((call) => call.op === 'map').length, 16);
    const memory = await manager.client().guestMemory();
    memory.writeU64(0x2000, 0x1234_5678_9abc_def0n);
    assert.equal(memory.readU64(0x2000), 0x1234_5678_9abc_def0n);
    partition.clearLog();
    await manager.ramVisibilityControl().setRamVisibility(range(0xa0000, 0xc0000), RamVisibility.Unmapped);
    assert.deepEqual(partition.takeLog(), [{ op: 'unmap', gpa: 0xa0000n, size: 0x20000n, failed: false }]);
  } finally {
    await manager.close();
  }
});

check('the membacking command of the package runs', () => {
  const { spawnSync } = require('node:child_process');
  const root = path.dirname(require.resolve('membacking/package.json'));
  const bin = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')).bin.membacking;
  const run = spawnSync(process.execPath, [path.join(root, bin), 'layout', '--ram', '4G', '--gap', '3G-4G', '--format', 'json'], { encoding: 'utf8' });
  assert.equal(run.status, 0, run.stderr);
  assert.equal(JSON.parse(run.stdout).ramSize, '0x100000000');
});

check('the library entry exports no test or benchmark hooks', (mb) => {
  assert.equal(mb.__test, undefined);
  assert.equal(mb.__bench, undefined);
});

check('ES modules: every export is a named import, and the default import is the CommonJS exports', async (mb) => {
  // Node finds the named exports of a CommonJS module with cjs-module-lexer, from the shape of
  // the compiled code: a form it cannot read would leave an `import { X }` undefined.
  const esm = await import('membacking');
  assert.deepEqual(Object.keys(mb).filter((name) => esm[name] !== mb[name]), []);
  assert.equal(esm.default, mb);
});

check('only the entry point and package.json are exported', () => {
  assert.equal(require('membacking/package.json').name, 'membacking');
  for (const deep of ['membacking/dist/index.js', 'membacking/dist/internal.js', 'membacking/index.js', 'membacking/dist/cli/main.js']) {
    assert.throws(() => require(deep), { code: 'ERR_PACKAGE_PATH_NOT_EXPORTED' }, deep);
  }
});

check('the source maps embed the TypeScript sources, which are not shipped', () => {
  const root = path.dirname(require.resolve('membacking/package.json'));
  const maps = [];
  const walk = (dir) => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const file = path.join(dir, entry.name);
      if (entry.isDirectory()) walk(file);
      else if (entry.name.endsWith('.js.map')) maps.push(file);
    }
  };
  walk(path.join(root, 'dist'));
  assert.ok(maps.length > 10);
  for (const file of maps) {
    const map = JSON.parse(fs.readFileSync(file, 'utf8'));
    assert.equal(map.sources.length, 1, file);
    assert.equal(typeof (map.sourcesContent ?? [])[0], 'string', `${file} embeds its source`);
  }
});

async function main() {
  const expectedPackage = process.argv[2];
  if (!expectedPackage) throw new Error('usage: node pack-smoke.js <expected platform package>');
  const mb = require('membacking');
  const binaries = Object.keys(require.cache).filter((file) => file.endsWith('.node')).map((file) => fs.realpathSync(file));
  const results = [];
  for (const { name, run } of checks) {
    try {
      await run(mb, { expectedPackage, binaries });
      results.push({ name, ok: true });
    } catch (error) {
      results.push({ name, ok: false, error: String(error && error.stack ? error.stack : error) });
    }
  }
  const ok = results.every((result) => result.ok);
  process.stdout.write(`${JSON.stringify({ ok, binaries, results })}\n`);
  process.exitCode = ok ? 0 : 1;
}

main().catch((error) => {
  process.stdout.write(`${JSON.stringify({ ok: false, error: String(error) })}\n`);
  process.exitCode = 1;
});
