// Dirty tracking, snapshots and restores through the public API (docs/snapshots.md): byte-exact
// round trips of random JavaScript writes in both restore modes, with visibility changes and a
// device window in between; file-backed and private RAM; incremental chains of five; the
// dirty-tracking rules; a flipped byte in any file; layouts and window backings; options and
// their errors; progress reports that never keep the event loop alive.
//
// Lazy-restore tests are skipped, with the reason, where userfaultfd is unavailable
// (helpers/snapshot.js). Guest-code round trips on KVM are in snapshot_kvm.test.js; processes
// killed while snapshotting, a writer in a worker during take(), and resource counts after
// failed restores are in snapshot_process.test.js.
'use strict';
const test = require('ava');
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const { inspect } = require('node:util');
const mb = require('../dist');
const { lazyTest, modeTest, rng, tempDir, ramImage, flip } = require('./helpers/snapshot');

const { GiB, MiB, range, MemoryLayout, GuestMemoryBuilder, Mappable, SparseMapping, RamVisibility, SnapshotError } = mb;

const P = 4096n;
const MMIO_GAP = range(3n * GiB, 4n * GiB);
const LOW = range(0, 16n * MiB);
const HIGH = range(4n * GiB, 4n * GiB + 8n * MiB);
const VGA = range(0xa_0000, 0xc_0000);
const PAM0 = range(0xc_0000, 0xc_4000);
const WINDOW_GPA = 0xd000_0000n;

/** 16 MiB below the gap and 8 MiB above it. */
const layout = () => MemoryLayout.fromRanges([{ range: LOW }, { range: HIGH }], [MMIO_GAP]);

async function build(t, { privateMemory = false } = {}) {
  const manager = await new GuestMemoryBuilder().privateMemory(privateMemory).x86LegacySupport(!privateMemory).build(layout());
  t.teardown(() => manager.close());
  return manager;
}

/** Random writes of random bytes into RAM that stays visible (low RAM from 1 MiB, and high RAM). */
function scribble(memory, rand, writes) {
  for (let i = 0; i < writes; i++) {
    const ram = rand.below(3) === 0 ? HIGH : range(MiB, LOW.end);
    const len = 1 + rand.below(3 * 4096);
    const gpa = ram.start + BigInt(rand.below(Number(ram.len) - len));
    memory.writeAt(gpa, rand.bytes(len));
  }
}

/** A memfd of `len` bytes filled with `fill`. */
function memfd(t, len, fill) {
  const object = Mappable.allocSharedMemory(len, 'device');
  const view = new SparseMapping(len);
  view.mapFile(0, len, object, 0, true);
  view.fillAt(0, fill, len);
  view.close();
  t.teardown(() => object.close());
  return object;
}

/**
 * A machine with written RAM, the VGA window unmapped, the first PAM piece read-only, and a
 * device window with two mappings placed at WINDOW_GPA, then more writes. Returns the window's
 * backings.
 */
async function prepare(t, manager, rand) {
  const memory = await manager.client().guestMemory();
  scribble(memory, rand, 300);
  const control = manager.ramVisibilityControl();
  await control.setRamVisibility(VGA, RamVisibility.Unmapped);
  await control.setRamVisibility(PAM0, 'ReadOnly');
  const window = manager.deviceMemoryMapper().newRegion(0x4000, 'framebuffer');
  const first = memfd(t, 0x2000, 0xab);
  const second = memfd(t, 0x1000, 0xcd);
  await window.region.map(0, first, 0, 0x2000, true);
  await window.region.map(0x3000, second, 0, 0x1000, false);
  await window.control.mapToGuest(WINDOW_GPA, true);
  scribble(memory, rand, 50);
  memory.close();
  return { window, first, second };
}

/** The regions without ids, in a stable order. */
async function regionSummary(manager) {
  const { regions } = await manager.inspect();
  return regions
    .map((r) => ({ name: r.name, range: String(r.range), priority: r.priority, mapParams: r.mapParams, mappings: r.mappings.map((m) => [String(m.rangeInRegion), m.fileOffset, m.writable]) }))
    .sort((a, b) => (a.range === b.range ? a.name.localeCompare(b.name) : a.range < b.range ? -1 : 1));
}

/**
 * Waits until `done()` holds: progress reports arrive on the event loop after the work. The
 * minute is a guard only (polling ends as soon as it holds; 500 polls of 10 ms before, a bound a
 * loaded machine's event loop could reach).
 */
async function eventually(done) {
  const giveUp = Date.now() + 60_000;
  while (!done() && Date.now() < giveUp) await new Promise((resolve) => setTimeout(resolve, 10));
}

for (const mode of ['copy', 'lazy']) {
  modeTest(mode, `a ${mode} restore is byte-exact, with visibility and a device window placed as they were`, async (t) => {
    const rand = rng(mode === 'copy' ? 7 : 8);
    const manager = await build(t);
    // The window's halves stay referenced until the test ends: once both are collected, the
    // window leaves the guest (it did, under load, between the snapshot and the summary).
    const { window: placed, first, second } = await prepare(t, manager, rand);
    t.teardown(() => void placed);
    const dir = path.join(tempDir(t), 'snap');
    const reports = [];
    const info = await manager.snapshot(dir, { onProgress: (done, total) => reports.push([done, total]) });
    t.is(info.dir, dir);
    t.false(info.incremental);
    t.regex(info.id, /^[0-9a-f]{32}$/);
    t.is(typeof info.bytes, 'bigint');
    t.true(info.bytes > 0n && info.bytes < 4n * MiB, String(info.bytes));
    t.true(info.totalBytes > info.bytes);
    t.is(typeof info.extents, 'number');
    t.is(info.zeroPages, 0);
    const image = ramImage(manager);
    const summary = await regionSummary(manager);

    const restoreReports = [];
    const restored = await GuestMemoryBuilder.restore(dir, {
      mode,
      layout: layout(),
      windowBackings: [
        { window: 'framebuffer', offset: 0, object: first },
        { window: 'framebuffer', offset: 0x3000n, object: second },
      ],
      deferBackgroundFill: mode === 'lazy',
      onProgress: (done, total) => restoreReports.push([done, total]),
    });
    t.teardown(() => restored.close());
    t.deepEqual(restored.restoredFrom, { dir, id: info.id, layers: 1, bytes: info.bytes, mode });
    // Results serialize like every other (u64 values as hex strings) and inspect in hex.
    t.like(JSON.parse(JSON.stringify(restored.restoredFrom)), { id: info.id, bytes: `0x${info.bytes.toString(16)}` });
    t.regex(inspect(restored.restoredFrom), new RegExp(`bytes: 0x${info.bytes.toString(16)}n?`));
    const memory = await restored.client().guestMemory();
    if (mode === 'lazy') {
      const lazy = restored.lazyRestore;
      t.false(lazy.finished);
      // Pages touched first are served by the fault handler, with the snapshot's bytes.
      for (let i = 0; i < 32; i++) {
        const gpa = MiB + BigInt(rand.below(Number((LOW.end - MiB) / P))) * P;
        t.true(memory.read(gpa, P).equals(image.subarray(Number(gpa), Number(gpa + P))), `page 0x${gpa.toString(16)}`);
      }
      t.true(lazy.stats().faults > 0);
      lazy.startBackground();
      const stats = await lazy.done;
      t.true(lazy.finished);
      t.is(stats.pagesFilled, Number(info.bytes / P));
      t.is(lazy.done, lazy.done, 'one Promise');
    } else {
      t.is(restored.lazyRestore, null);
    }
    t.true(ramImage(restored).equals(image), 'the RAM object holds the same bytes');
    t.deepEqual(await regionSummary(restored), summary);
    // Visibility: the VGA window is still unmapped, the PAM piece read-only.
    t.throws(() => memory.readU8(VGA.start), { code: 'ERR_GUEST_MEMORY_OUT_OF_RANGE' });
    // The device window is where it was, with the backings given.
    const [window] = restored.restoredWindows();
    t.like(window, { name: 'framebuffer', gpa: WINDOW_GPA, len: 0x4000n, writable: true, missing: [] });
    t.deepEqual(
      window.mappings.map((m) => [m.offset, m.len, m.fileOffset, m.writable]),
      [
        [0n, 0x2000n, 0n, true],
        [0x3000n, 0x1000n, 0n, false],
      ],
    );
    t.is(restored.restoredWindows()[0], window, 'the same objects each call');
    t.like(JSON.parse(JSON.stringify(restored.restoredWindows()))[0], { name: 'framebuffer', gpa: `0x${WINDOW_GPA.toString(16)}`, len: '0x4000' });
    t.is(memory.readU8(WINDOW_GPA + 0x1000n), 0xab);
    t.is(memory.readU8(WINDOW_GPA + 0x3000n), 0xcd);
    await eventually(() => reports.at(-1)?.[0] === reports.at(-1)?.[1] && restoreReports.at(-1)?.[0] === info.bytes);
    t.true(reports.length > 0 && reports.every(([done, total]) => done <= total));
    t.deepEqual(restoreReports.at(-1), [info.bytes, info.bytes]);
    memory.close();
  });
}

for (const mode of ['copy', 'lazy']) {
  modeTest(mode, `private RAM round-trips byte-exact in ${mode} mode`, async (t) => {
    const rand = rng(mode === 'copy' ? 21 : 22);
    const manager = await build(t, { privateMemory: true });
    const memory = await manager.client().guestMemory();
    scribble(memory, rand, 200);
    const before = [memory.read(LOW.start, LOW.len), memory.read(HIGH.start, HIGH.len)];
    const dir = path.join(tempDir(t), 'snap');
    await manager.snapshot(dir);
    const restored = await GuestMemoryBuilder.restore(dir, { mode });
    t.teardown(() => restored.close());
    if (mode === 'lazy') await restored.lazyRestore.done;
    const again = await restored.client().guestMemory();
    t.true(again.read(LOW.start, LOW.len).equals(before[0]));
    t.true(again.read(HIGH.start, HIGH.len).equals(before[1]));
    t.is(restored.sharedMemoryBacking(), null);
    memory.close();
    again.close();
  });
}

test('dirty tracking: off by default, take() reports coalesced page ranges of every write since the last take', async (t) => {
  const manager = await build(t);
  const tracking = manager.dirtyTracking();
  t.false(tracking.active);
  const off = await t.throwsAsync(tracking.take(), { instanceOf: SnapshotError, code: 'ERR_DIRTY_TRACKING_OFF' });
  t.regex(off.message, /start\(\)/);
  const memory = await manager.client().guestMemory();
  memory.writeU8(MiB, 1); // before start: not reported
  await tracking.start();
  t.true(tracking.active);
  t.true(manager.dirtyTracking().active, 'one tracking per manager');
  t.deepEqual(await tracking.take(), []);
  memory.writeAt(2n * MiB + 100n, Buffer.alloc(2 * 4096)); // three pages
  memory.writeU32(2n * MiB + 3n * P, 5); // the next page: one run
  memory.fillAt(HIGH.start, 7, 1);
  await memory.writeAtAsync(HIGH.start + 5n * P, Buffer.alloc(10));
  memory.compareExchangeU32(HIGH.start + 9n * P, 1, 2); // a failed compare-exchange counts
  const ranges = await tracking.take();
  t.true(ranges.every((r) => r instanceof mb.MemoryRange));
  t.deepEqual(ranges.map(String), ['0x200000-0x204000', '0x100000000-0x100001000', '0x100005000-0x100006000', '0x100009000-0x10000a000']);
  t.deepEqual(await tracking.take(), [], 'reset by the take');
  await manager.decommitRam(range(3n * MiB, 3n * MiB + 2n * P));
  t.deepEqual((await tracking.take()).map(String), ['0x300000-0x302000'], 'a decommit counts as a write');
  await tracking.stop();
  t.false(tracking.active);
  await tracking.stop();
  await t.throwsAsync(tracking.take(), { code: 'ERR_DIRTY_TRACKING_OFF' });
  memory.close();
});

test('dirty-tracking requests and decommits are carried out in call order, awaited or not', async (t) => {
  const manager = await build(t);
  const tracking = manager.dirtyTracking();
  const memory = await manager.client().guestMemory();
  for (let i = 0; i < 20; i++) {
    await tracking.start();
    memory.writeU8(MiB, 1);
    const decommit = manager.decommitRam(range(3n * MiB, 3n * MiB + P));
    // Called in this order without awaiting: the first take sees the write and the decommit,
    // the second takes nothing, and the stop comes after both.
    const [first, second, stop] = await Promise.allSettled([tracking.take(), tracking.take(), tracking.stop(), decommit]);
    t.is(first.status, 'fulfilled', String(first.reason));
    t.deepEqual(first.value.map(String), ['0x100000-0x101000', '0x300000-0x301000']);
    t.deepEqual(second.value, []);
    t.is(stop.status, 'fulfilled');
    t.false(tracking.active);
  }
  memory.close();
});

test('an incremental chain of five restores every link byte-exact, in copy and (where it can) lazy mode', async (t) => {
  const rand = rng(55);
  const manager = await build(t);
  const tracking = manager.dirtyTracking();
  await tracking.start();
  const memory = await manager.client().guestMemory();
  const root = tempDir(t);
  const links = [];
  for (let i = 0; i < 5; i++) {
    scribble(memory, rand, i === 0 ? 300 : 20);
    if (i === 3) await manager.decommitRam(range(2n * MiB, 2n * MiB + 16n * P));
    const dir = path.join(root, `link${i}`);
    const info = await manager.snapshot(dir, i === 0 ? {} : { base: links[i - 1].dir });
    t.is(info.incremental, i > 0);
    if (i === 3) t.true(info.zeroPages >= 1, 'the decommitted pages are recorded as zeros');
    links.push({ dir, info, image: ramImage(manager) });
  }
  t.true(links[4].info.bytes < links[0].info.bytes / 2n, `increments are small: ${links[4].info.bytes} vs ${links[0].info.bytes}`);
  for (const [i, link] of links.entries()) {
    const restored = await GuestMemoryBuilder.restore(link.dir);
    t.is(restored.restoredFrom.layers, i + 1);
    t.true(ramImage(restored).equals(link.image), `link ${i}`);
    await restored.close();
  }
  const chain = await mb.readSnapshot(links[4].dir);
  t.deepEqual(
    chain.chain.map((c) => c.manifest.id),
    [...links].reverse().map((l) => l.info.id),
  );
  t.is(chain.chain[0].manifest.base.path, '../link3');
  t.is(chain.pages, null);
  if (mb.snapshotSupport().lazyRestore) {
    const lazy = await GuestMemoryBuilder.restore(links[4].dir, { mode: 'lazy' });
    await lazy.lazyRestore.done;
    t.true(ramImage(lazy).equals(links[4].image), 'lazy, top of the chain');
    await lazy.close();
  } else {
    t.log(`lazy part skipped: ${mb.snapshotSupport().reason}`);
  }
  memory.close();
});

test('a restored manager started with startDirtyTracking continues the chain', async (t) => {
  const rand = rng(3);
  const manager = await build(t);
  await manager.dirtyTracking().start();
  const memory = await manager.client().guestMemory();
  scribble(memory, rand, 50);
  const root = tempDir(t);
  await manager.snapshot(path.join(root, 'full'));
  const restored = await GuestMemoryBuilder.restore(path.join(root, 'full'), { startDirtyTracking: true });
  t.teardown(() => restored.close());
  t.true(restored.dirtyTracking().active);
  const again = await restored.client().guestMemory();
  scribble(again, rand, 10);
  const info = await restored.snapshot(path.join(root, 'next'), { base: path.join(root, 'full') });
  t.true(info.incremental);
  const image = ramImage(restored);
  const last = await GuestMemoryBuilder.restore(path.join(root, 'next'));
  t.true(ramImage(last).equals(image));
  await last.close();
  // Without tracking since the base: refused, naming the base and the rule.
  const plain = await GuestMemoryBuilder.restore(path.join(root, 'full'));
  t.teardown(() => plain.close());
  const error = await t.throwsAsync(plain.snapshot(path.join(root, 'other'), { base: path.join(root, 'full') }), { instanceOf: SnapshotError, code: 'ERR_DIRTY_TRACKING_OFF' });
  t.is(error.base, path.join(root, 'full'));
  t.is(typeof error.reason, 'string');
  memory.close();
  again.close();
});

test('restoring an incremental snapshot whose base was moved names the base and what needs it', async (t) => {
  const manager = await build(t);
  await manager.dirtyTracking().start();
  const root = tempDir(t);
  await manager.snapshot(path.join(root, 'full'));
  await manager.snapshot(path.join(root, 'inc'), { base: path.join(root, 'full') });
  fs.renameSync(path.join(root, 'full'), path.join(root, 'moved'));
  for (const mode of ['copy', 'lazy']) {
    const error = await t.throwsAsync(GuestMemoryBuilder.restore(path.join(root, 'inc'), { mode }), { code: 'ENOENT' });
    t.true(error.message.startsWith(`snapshot ${path.join(root, 'inc')} is built on ${path.join(root, 'inc')}${path.sep}..${path.sep}full, which cannot be read`), error.message);
    t.regex(error.detail, /needs every snapshot of its chain; put the base back at /);
  }
  // Put back, the chain restores (the base's path is recorded relative to the snapshot).
  fs.renameSync(path.join(root, 'moved'), path.join(root, 'full'));
  const restored = await GuestMemoryBuilder.restore(path.join(root, 'inc'));
  await restored.close();
});

/** A snapshot with data, an index and a manifest; `dir` and its files. */
async function oneSnapshot(t) {
  const manager = await build(t);
  const memory = await manager.client().guestMemory();
  scribble(memory, rng(9), 100);
  memory.close();
  const dir = path.join(tempDir(t), 'snap');
  await manager.snapshot(dir);
  const files = Object.fromEntries(['manifest.json', 'extents.bin', 'memory.bin'].map((f) => [f, path.join(dir, f)]));
  return { manager, dir, files };
}

test('a flipped byte in any file is a coded error naming the file, and restores build nothing', async (t) => {
  const { dir, files } = await oneSnapshot(t);
  const rand = rng(11);
  const pristine = Object.fromEntries(Object.entries(files).map(([name, file]) => [name, fs.readFileSync(file)]));
  for (const [name, file] of Object.entries(files)) {
    for (let round = 0; round < 4; round++) {
      fs.writeFileSync(file, pristine[name]);
      const offset = rand.below(pristine[name].length);
      flip(file, offset);
      const error = await t.throwsAsync(GuestMemoryBuilder.restore(dir), undefined, `${name} offset ${offset}`);
      t.true(error instanceof SnapshotError, `${name} offset ${offset}: ${error.code} ${error.message}`);
      t.true(['ERR_SNAPSHOT_CORRUPT', 'ERR_SNAPSHOT_VERSION'].includes(error.code), `${name} offset ${offset}: ${error.code}`);
      t.is(error.file, file, `${name} offset ${offset}: ${error.message}`);
      t.true(error.message.includes(file));
      if (error.code === 'ERR_SNAPSHOT_CORRUPT') t.is(typeof error.offset, 'bigint');
      if (name === 'memory.bin') {
        // A page's checksum: the error names the page's offset in the memory file.
        t.is(error.offset, BigInt(offset - (offset % 4096)));
        const verify = await t.throwsAsync(mb.verifySnapshot(dir), { code: 'ERR_SNAPSHOT_CORRUPT' });
        t.is(verify.file, file);
      }
    }
    fs.writeFileSync(file, pristine[name]);
  }
  const verified = await mb.verifySnapshot(dir);
  t.true(verified.pages > 0);
  // A truncated memory file is a size mismatch, found before anything is built.
  fs.truncateSync(files['memory.bin'], pristine['memory.bin'].length - 4096);
  const truncated = await t.throwsAsync(GuestMemoryBuilder.restore(dir), { code: 'ERR_SNAPSHOT_CORRUPT' });
  t.is(truncated.file, files['memory.bin']);
  t.regex(truncated.what, /bytes, the manifest says/);
});

lazyTest('a flipped page found by a lazy restore fails `done` with ERR_SNAPSHOT_CORRUPT naming the memory file', async (t) => {
  const { dir, files } = await oneSnapshot(t);
  flip(files['memory.bin'], 4096 + 5);
  const restored = await GuestMemoryBuilder.restore(dir, { mode: 'lazy' });
  t.teardown(() => restored.close());
  const error = await t.throwsAsync(restored.lazyRestore.done, { instanceOf: SnapshotError, code: 'ERR_SNAPSHOT_CORRUPT' });
  t.is(error.file, files['memory.bin']);
  t.is(error.offset, 4096n);
  t.true(restored.lazyRestore.finished);
});

test('a snapshot of another format version is ERR_SNAPSHOT_VERSION with what was found', async (t) => {
  const { dir, files } = await oneSnapshot(t);
  const text = fs.readFileSync(files['manifest.json'], 'utf8');
  fs.writeFileSync(files['manifest.json'], text.replace('"version":1', '"version":7'));
  const error = await t.throwsAsync(GuestMemoryBuilder.restore(dir), { instanceOf: SnapshotError, code: 'ERR_SNAPSHOT_VERSION' });
  t.like(error, { file: files['manifest.json'], found: 7, supported: 1 });
  await t.throwsAsync(mb.readSnapshot(dir), { code: 'ERR_SNAPSHOT_VERSION' });
});

test('layouts and window backings are checked against the snapshot before anything is built', async (t) => {
  const { dir } = await oneSnapshot(t);
  const other = MemoryLayout.new(64n * MiB, [MMIO_GAP]);
  const error = await t.throwsAsync(GuestMemoryBuilder.restore(dir, { layout: other }), { instanceOf: SnapshotError, code: 'ERR_SNAPSHOT_LAYOUT' });
  t.is(error.dir, dir);
  // Names the part that differs, in hex, and nothing that matches.
  t.is(error.what, "the snapshot's RAM is 0x0-0x1000000, 0x100000000-0x100800000 but the expected layout's RAM is 0x0-0x4000000");
  t.is(error.message, `snapshot ${dir} does not match: ${error.what}`);
  const object = memfd(t, 4096, 0);
  const unknown = await t.throwsAsync(GuestMemoryBuilder.restore(dir, { windowBackings: { nic: object } }), { code: 'ERR_SNAPSHOT_LAYOUT' });
  t.regex(unknown.what, /"nic"/);
  const missing = await t.throwsAsync(GuestMemoryBuilder.restore(path.join(dir, 'nowhere')));
  t.is(missing.code, 'ENOENT');
  t.is(missing.op, 'read');
  t.is(missing.path, path.join(dir, 'nowhere', 'manifest.json'));
});

test('snapshot() replaces only a snapshot or an empty directory; anything else is refused untouched with an OsError', async (t) => {
  const { manager, dir } = await oneSnapshot(t);
  const parent = path.dirname(dir);
  const userdir = path.join(parent, 'userdir');
  fs.mkdirSync(userdir);
  fs.writeFileSync(path.join(userdir, 'important.txt'), 'keep me\n');
  const refused = await t.throwsAsync(manager.snapshot(userdir), { instanceOf: mb.OsError, code: 'ENOTEMPTY' });
  t.like(refused, { op: 'replace', path: userdir, what: 'it holds "important.txt", which is not a snapshot file' });
  t.true(refused.message.startsWith(`cannot write a snapshot to ${userdir}: `), refused.message);
  t.regex(refused.message, /replaces only an existing snapshot or an empty directory, so choose an empty or new directory, or remove it first/);
  t.deepEqual(fs.readdirSync(userdir), ['important.txt']);
  t.is(fs.readFileSync(path.join(userdir, 'important.txt'), 'utf8'), 'keep me\n');
  // A file is refused too; nothing was written beside either.
  const file = path.join(parent, 'file');
  fs.writeFileSync(file, 'a file');
  await t.throwsAsync(manager.snapshot(file), { instanceOf: mb.OsError, code: 'EEXIST' });
  t.is(fs.readFileSync(file, 'utf8'), 'a file');
  t.deepEqual(fs.readdirSync(parent).sort(), ['file', 'snap', 'userdir']);
  // An existing snapshot is still replaced, and so is an empty directory.
  const before = await mb.readSnapshot(dir);
  const replaced = await manager.snapshot(dir);
  t.not(replaced.id, before.chain[0].manifest.id);
  t.is((await mb.readSnapshot(dir)).chain[0].manifest.id, replaced.id);
  const empty = path.join(parent, 'empty');
  fs.mkdirSync(empty);
  await manager.snapshot(empty);
  t.deepEqual(fs.readdirSync(empty).sort(), ['extents.bin', 'manifest.json', 'memory.bin']);
});

test('one Mappable backs every mapping of a window by name; unbacked mappings are listed as missing and can be mapped later', async (t) => {
  const manager = await build(t);
  const window = manager.deviceMemoryMapper().newRegion(0x4000, 'fb');
  const object = Mappable.allocSharedMemory(0x2000, 'fb');
  t.teardown(() => object.close());
  const view = new SparseMapping(0x2000);
  view.mapFile(0, 0x2000, object, 0, true);
  view.fillAt(0, 0x11, 0x1000);
  view.fillAt(0x1000, 0x22, 0x1000);
  view.close();
  await window.region.map(0, object, 0, 0x1000, true);
  await window.region.map(0x2000, object, 0x1000, 0x1000, false);
  await window.control.mapToGuest(WINDOW_GPA, true);
  const dir = path.join(tempDir(t), 'snap');
  await manager.snapshot(dir);

  const byName = await GuestMemoryBuilder.restore(dir, { windowBackings: { fb: object } });
  const memory = await byName.client().guestMemory();
  t.deepEqual(byName.restoredWindows()[0].missing, []);
  t.is(memory.readU8(WINDOW_GPA), 0x11);
  t.is(memory.readU8(WINDOW_GPA + 0x2000n), 0x22);
  memory.close();
  await byName.close();

  const none = await GuestMemoryBuilder.restore(dir);
  t.teardown(() => none.close());
  const [restored] = none.restoredWindows();
  t.deepEqual(
    restored.missing.map((m) => [m.offset, m.len, m.fileOffset, m.writable]),
    [
      [0n, 0x1000n, 0n, true],
      [0x2000n, 0x1000n, 0x1000n, false],
    ],
  );
  const again = await none.client().guestMemory();
  t.throws(() => again.readU8(WINDOW_GPA), { code: 'ERR_GUEST_MEMORY_OUT_OF_RANGE' }, 'placed, but nothing mapped yet');
  for (const m of restored.missing) await restored.region.map(m.offset, object, m.fileOffset, m.len, m.writable);
  t.is(again.readU8(WINDOW_GPA + 0x2000n), 0x22);
  again.close();
});

test('an existing snapshot is replaced atomically and a snapshot cannot replace its own base or a snapshot of its chain', async (t) => {
  const manager = await build(t);
  await manager.dirtyTracking().start();
  const memory = await manager.client().guestMemory();
  const root = tempDir(t);
  const dir = path.join(root, 'snap');
  memory.writeU64(MiB, 1n);
  const first = await manager.snapshot(dir);
  memory.writeU64(MiB, 2n);
  const second = await manager.snapshot(dir);
  t.not(first.id, second.id);
  t.deepEqual(fs.readdirSync(root), ['snap'], 'no temporary directory is left');
  const restored = await GuestMemoryBuilder.restore(dir);
  t.is((await restored.client().guestMemory()).readU64(MiB), 2n);
  await restored.close();
  const error = await t.throwsAsync(manager.snapshot(dir, { base: dir }), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE' });
  t.regex(error.message, /base/);
  // Nor a snapshot its base is built on: the new one would be built on itself, and the chain
  // (with everything saved since the first snapshot) could not be restored again.
  memory.writeU64(MiB, 3n);
  const next = path.join(root, 'next');
  await manager.snapshot(next, { base: dir });
  memory.writeU64(MiB, 4n);
  const ancestor = await t.throwsAsync(manager.snapshot(dir, { base: next }), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE' });
  t.regex(ancestor.message, /a snapshot its base .* is built on/);
  const chain = await GuestMemoryBuilder.restore(next);
  t.is((await chain.client().guestMemory()).readU64(MiB), 3n, 'the chain is intact');
  await chain.close();
  memory.close();
});

test('snapshot and restore options are checked', async (t) => {
  const manager = await build(t);
  await t.throwsAsync(manager.snapshot(5), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  await t.throwsAsync(manager.snapshot(''), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE' });
  await t.throwsAsync(manager.snapshot('/tmp/x', null), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  await t.throwsAsync(manager.snapshot('/tmp/x', { base: 1 }), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  await t.throwsAsync(manager.snapshot('/tmp/x', { onProgress: 'no' }), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  const restore = (options) => GuestMemoryBuilder.restore('/tmp/x', options);
  await t.throwsAsync(restore({ mode: 'eager' }), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE', message: /'copy' or 'lazy'/ });
  await t.throwsAsync(restore({ mode: 1 }), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  await t.throwsAsync(restore({ layout: {} }), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  await t.throwsAsync(restore({ windowBackings: { fb: {} } }), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  await t.throwsAsync(restore({ windowBackings: [{ window: 'fb', offset: -1, object: null }] }), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  await t.throwsAsync(restore({ windowBackings: 3 }), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  await t.throwsAsync(restore({ startDirtyTracking: 'yes' }), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  await t.throwsAsync(restore({ onProgress: {} }), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  await t.throwsAsync(GuestMemoryBuilder.restore(undefined), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  await t.throwsAsync(mb.verifySnapshot(''), { code: 'ERR_INVALID_ARG_VALUE' });
  const closed = await build(t);
  await closed.close();
  t.throws(() => closed.dirtyTracking(), { code: 'ERR_MANAGER_GONE' });
  await t.throwsAsync(closed.snapshot('/tmp/x'), { code: 'ERR_MANAGER_GONE' });
});

test('snapshotSupport() says whether lazy restores can run, and why not', (t) => {
  const support = mb.snapshotSupport();
  t.is(typeof support.lazyRestore, 'boolean');
  if (support.lazyRestore) t.is(support.reason, null);
  else t.regex(support.reason, /userfaultfd/);
});

test('progress callbacks never keep the event loop alive: a process that snapshots and restores exits by itself', (t) => {
  const dist = JSON.stringify(path.join(__dirname, '..', 'dist'));
  const dir = JSON.stringify(path.join(tempDir(t), 'snap'));
  const script = `
    const mb = require(${dist});
    (async () => {
      const layout = mb.MemoryLayout.new(64n * mb.MiB, [mb.range(3n * mb.GiB, 4n * mb.GiB)]);
      const manager = await new mb.GuestMemoryBuilder().build(layout);
      (await manager.client().guestMemory()).fillAt(mb.MiB, 1, 8n * mb.MiB);
      let reports = 0;
      await manager.snapshot(${dir}, { onProgress: () => reports++ });
      const restored = await mb.GuestMemoryBuilder.restore(${dir}, { onProgress: () => reports++ });
      console.log('settled');
    })();`;
  const child = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 60_000 });
  t.is(child.signal, null, 'the process had to be killed: something kept it alive');
  t.is(child.status, 0, child.stderr);
  t.is(child.stdout.trim(), 'settled');
});
