// `membacking snapshot-info`: the table and JSON descriptions of a snapshot chain (layout,
// regions with visibility, device windows, extents, sizes), --verify on an intact and a damaged
// snapshot, and the exit codes (0 ok, 2 bad input, 1 a corrupt snapshot).
'use strict';
const test = require('ava');
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const mb = require('../dist');
const { tempDir, flip } = require('./helpers/snapshot');

const { GiB, MiB, range, MemoryLayout, GuestMemoryBuilder, Mappable, RamVisibility } = mb;
const cli = path.join(__dirname, '..', 'dist', 'cli', 'main.js');
const run = (...args) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 60_000 });

/** A full snapshot and an incremental one on it, of a machine with a hidden VGA window and a device window. */
async function chain(t) {
  const root = tempDir(t);
  const manager = await new GuestMemoryBuilder().x86LegacySupport(true).build(MemoryLayout.new(64n * MiB, [range(3n * GiB, 4n * GiB)]));
  t.teardown(() => manager.close());
  await manager.dirtyTracking().start();
  const memory = await manager.client().guestMemory();
  memory.fillAt(MiB, 0x5a, 8n * 4096n);
  await manager.ramVisibilityControl().setRamVisibility(range(0xa_0000, 0xc_0000), RamVisibility.Unmapped);
  const object = Mappable.allocSharedMemory(0x2000, 'fb');
  t.teardown(() => object.close());
  const window = manager.deviceMemoryMapper().newRegion(0x4000, 'framebuffer');
  await window.region.map(0x1000, object, 0x1000, 0x1000, false);
  await window.control.mapToGuest(0xd000_0000n, true);
  const full = path.join(root, 'full');
  const top = path.join(root, 'top');
  const base = await manager.snapshot(full);
  memory.fillAt(2n * MiB, 0x6b, 4096);
  const increment = await manager.snapshot(top, { base: full });
  memory.close();
  return { root, full, top, base, increment };
}

test('snapshot-info describes the chain, layout, regions, windows and sizes', async (t) => {
  const { full, top, base, increment } = await chain(t);
  const r = run('snapshot-info', top);
  t.is(r.status, 0, r.stderr);
  t.is(r.stderr, '');
  const out = r.stdout;
  t.regex(out, new RegExp(`^snapshot ${top}\\n  id ${increment.id}, taken \\d{4}-\\d\\d-\\d\\dT[^,]+, incremental on \\.\\./full, dirty tracking was on`));
  t.regex(out, /chain \(2 snapshots, newest first/);
  t.regex(out, new RegExp(`\\n  0  ${top}\\s+${increment.id.slice(0, 12)}\\s+4 KiB\\s+0\\s+1\\s`));
  t.regex(out, new RegExp(`\\n  1  ${full}\\s+${base.id.slice(0, 12)}\\s+32 KiB\\s+0\\s+1\\s`));
  t.regex(out, /layout: RAM 0x0-0x4000000 \(vnode 0\); MMIO 0xc0000000-0x100000000/);
  t.regex(out, /options: x86LegacySupport true, privateMemory false/);
  t.regex(out, /\n  0xa0000-0xc0000\s+128 KiB\s+0xa0000\s+Unmapped\n/);
  t.regex(out, /\n  0xc0000-0xc4000\s+16 KiB\s+0xc0000\s+ReadWrite\n/);
  t.regex(out, /\n  framebuffer\s+0xd0000000-0xd0004000\s+16 KiB\s+rw\s*\n\s+\+0x1000\s+4 KiB\s+ro\s+object offset 0x1000\n/);
  t.regex(out, /this snapshot: 1 data pages \(4 KiB\), 0 zero pages, 1 extents/);
  t.notRegex(out, /verified/);
});

test('snapshot-info --format json is the chain with hex strings for addresses and sizes', async (t) => {
  const { full, top, base, increment } = await chain(t);
  const r = run('snapshot-info', top, '--format', 'json');
  t.is(r.status, 0, r.stderr);
  const json = JSON.parse(r.stdout);
  t.deepEqual(
    json.chain.map((c) => [c.dir, c.manifest.id]),
    [
      [top, increment.id],
      [full, base.id],
    ],
  );
  t.is(json.pages, null);
  const m = json.chain[0].manifest;
  t.deepEqual(m.base, { path: '../full', id: base.id });
  t.is(m.ramSize, '0x4000000');
  t.deepEqual(m.layout.mmio, [{ start: '0xc0000000', end: '0x100000000' }]);
  t.deepEqual(m.ramRegions.find((r) => r.range.start === '0xa0000'), { range: { start: '0xa0000', end: '0xc0000' }, fileOffset: '0xa0000', visibility: 'Unmapped' });
  t.deepEqual(m.deviceWindows, [{ name: 'framebuffer', gpa: '0xd0000000', len: '0x4000', writable: true, mappings: [{ offset: '0x1000', len: '0x1000', fileOffset: '0x1000', writable: false }] }]);
  t.is(m.dataPages, 1);
});

test('snapshot-info --verify checks every page of the chain; a damaged page is exit code 1 naming the file and offset', async (t) => {
  const { full, top } = await chain(t);
  const ok = run('snapshot-info', top, '--verify');
  t.is(ok.status, 0, ok.stderr);
  t.regex(ok.stdout, /verified: 9 pages of 2 snapshots, every checksum matches/);
  // The base's copy of a page: a restore of the top would not notice it, --verify does.
  const memoryFile = path.join(full, 'memory.bin');
  flip(memoryFile, 3 * 4096 + 10);
  const plain = run('snapshot-info', top);
  t.is(plain.status, 0, 'without --verify only manifests and indexes are checked');
  const bad = run('snapshot-info', top, '--verify');
  t.is(bad.status, 1);
  t.is(bad.stdout, '');
  t.is(bad.stderr.trim().split('\n').length, 1, bad.stderr);
  t.true(bad.stderr.includes(`membacking: ERR_SNAPSHOT_CORRUPT: snapshot file ${memoryFile} is corrupt at offset 12288`), bad.stderr);
  // A damaged index is found without --verify.
  flip(path.join(top, 'extents.bin'), 3);
  const index = run('snapshot-info', top);
  t.is(index.status, 1);
  t.regex(index.stderr, /ERR_SNAPSHOT_CORRUPT: .*extents\.bin/);
});

test('snapshot-info: --help, and bad input is exit code 2 with one line', (t) => {
  const help = run('snapshot-info', '--help');
  t.is(help.status, 0);
  t.regex(help.stdout, /usage: membacking snapshot-info DIR \[--verify\] \[--format table\|json\]/);
  t.regex(run('--help').stdout, /snapshot-info\s+describe a snapshot directory/);
  for (const args of [['snapshot-info'], ['snapshot-info', '/nonexistent/snap'], ['snapshot-info', '/tmp', '--format', 'svg'], ['snapshot-info', '/tmp', '--bogus'], ['snapshot-info', 'a', 'b']]) {
    const r = run(...args);
    t.is(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
    t.is(r.stdout, '');
    t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
  }
  const notSnapshot = fs.mkdtempSync(path.join(require('node:os').tmpdir(), 'mb-notsnap-'));
  t.teardown(() => fs.rmSync(notSnapshot, { recursive: true, force: true }));
  const empty = run('snapshot-info', notSnapshot);
  t.is(empty.status, 1, 'a directory without a snapshot is an unreadable snapshot');
  t.is(empty.stderr.trim().split('\n').length, 1, empty.stderr);
  t.regex(empty.stderr, /^membacking: ENOENT: read .*manifest\.json failed/);
});
