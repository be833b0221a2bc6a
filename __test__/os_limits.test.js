// When the operating system says no: snapshots and restores out of threads (a pids cgroup),
// on a full file system (a small tmpfs), with files that are not regular files, with a memory
// file truncated during a lazy restore, and incremental snapshots on a damaged chain. Each
// failure is a coded error naming the path and the cause, the previous snapshot stays, nothing
// is left behind and the manager keeps working. Tests that need root (a tmpfs mount, a pids
// cgroup) say why they were skipped.
'use strict';
const test = require('ava');
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync, execFileSync } = require('node:child_process');
const mb = require('../dist');
const { lazyTest, tempDir } = require('./helpers/snapshot');

const { GiB, MiB, KiB, range, MemoryLayout, GuestMemoryBuilder } = mb;
const PIDS = '/sys/fs/cgroup/pids';

/** A fresh pids cgroup (removed when the test ends), or why there is none. */
function pidsCgroup(t) {
  const dir = path.join(PIDS, `membacking-test-${process.pid}-${Math.random().toString(16).slice(2)}`);
  try {
    fs.mkdirSync(dir);
  } catch (error) {
    return { reason: `cannot create a pids cgroup under ${PIDS}: ${error.code}` };
  }
  t?.teardown(() => fs.rmdirSync(dir));
  return { dir };
}
const pidsUnavailable = (() => {
  const { dir, reason } = pidsCgroup();
  if (dir) fs.rmdirSync(dir);
  return reason ?? null;
})();

/** A tmpfs of `size` mounted on a fresh directory, unmounted when the test ends. */
function tmpfs(t, size) {
  const dir = tempDir(t);
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir], { stdio: 'pipe' });
  t.teardown(() => execFileSync('umount', [dir]));
  return dir;
}
/** Why no tmpfs can be mounted here (probed once: a mount and an unmount), or null. */
const tmpfsUnavailable = (() => {
  if (process.getuid() !== 0) return 'mounting a tmpfs needs root';
  const dir = fs.mkdtempSync(path.join(require('node:os').tmpdir(), 'mb-tmpfs-probe-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', dir], { stdio: 'pipe' });
    execFileSync('umount', [dir], { stdio: 'pipe' });
    return null;
  } catch (error) {
    return `cannot mount a tmpfs: ${String(error.stderr || error.message).trim()}`;
  } finally {
    fs.rmdirSync(dir);
  }
})();
const rootTest = (reason, title, fn) => (reason === null ? test(title, fn) : test.skip(`${title} [skipped: ${reason}]`, fn));

async function filledManager(bytes) {
  const manager = await new GuestMemoryBuilder().build(MemoryLayout.new(GiB, [range(3n * GiB, 4n * GiB)]));
  const memory = await manager.client().guestMemory();
  memory.fillAt(0, 0x11, bytes);
  return { manager, memory };
}

rootTest(pidsUnavailable, 'out of threads, snapshots work on the threads they have and restores fail with a coded error', (t) => {
  const { dir: cgroup } = pidsCgroup(t);
  const dir = tempDir(t);
  const child = spawnSync(process.execPath, [path.join(__dirname, 'fixtures', 'os_limits', 'threads_child.js'), cgroup, dir], { encoding: 'utf8', timeout: 120_000 });
  t.is(child.status, 0, child.stderr);
  t.notRegex(child.stderr, /panicked/);
  const report = JSON.parse(child.stdout.trim().split('\n').pop());
  t.is(report.snapshot, 'ok');
  t.is(report.incremental, 'ok');
  t.not(report.restore, 'ERR_PANIC'); // a new manager needs threads: ERR_THREAD (or ok if it had them)
  t.is(report.afterwards, 'ok');
});

test('a snapshot with no file descriptor left is EMFILE and leaves no temporary directory beside the target', (t) => {
  // The child takes every descriptor its limit allows, so the temporary directory is created
  // (mkdir needs none) but nothing in it can be opened, nor the directory itself to list it.
  const dir = tempDir(t);
  const child = spawnSync('/bin/sh', ['-c', 'ulimit -n 256 && exec "$0" "$1" "$2"', process.execPath, path.join(__dirname, 'fixtures', 'os_limits', 'fd_limit_child.js'), dir], {
    encoding: 'utf8',
    timeout: 120_000,
  });
  t.is(child.status, 0, child.stderr);
  const report = JSON.parse(child.stdout.trim().split('\n').pop());
  t.is(report.fresh, 'EMFILE');
  t.is(report.replace, 'EMFILE');
  t.deepEqual(report.listing, ['kept']);
  t.is(report.kept, 'ok');
});

rootTest(tmpfsUnavailable, 'a snapshot on a full file system is ENOSPC, keeps the previous snapshot and leaves nothing behind', async (t) => {
  const dir = tmpfs(t, '12m');
  const { manager, memory } = await filledManager(4n * MiB);
  t.teardown(async () => {
    memory.close();
    await manager.close();
  });
  const target = path.join(dir, 'snap');
  await manager.snapshot(target);
  memory.fillAt(16n * MiB, 0x22, 16n * MiB);
  const error = await t.throwsAsync(manager.snapshot(target), { instanceOf: mb.OsError, code: 'ENOSPC' });
  t.is(error.op, 'write');
  t.true(error.path.startsWith(dir), error.path);
  t.true(error.detail.includes(`${target} is unchanged`), error.detail);
  t.regex(error.detail, /file system is full .*free space there, or snapshot to a directory on another file system/);
  t.deepEqual(fs.readdirSync(dir), ['snap']);
  const verified = await mb.verifySnapshot(target);
  t.is(verified.chain.length, 1);
  memory.fillAt(16n * MiB, 0, 16n * MiB);
  await manager.snapshot(target); // usable once there is room
  execFileSync('mount', ['-o', 'remount,ro', dir]);
  const readOnly = await t.throwsAsync(manager.snapshot(target), { instanceOf: mb.OsError, code: 'EROFS' });
  t.true(readOnly.path.startsWith(dir), readOnly.path);
  t.regex(readOnly.detail, /is unchanged: its file system is mounted read-only/);
  execFileSync('mount', ['-o', 'remount,rw', dir]);
  t.deepEqual(fs.readdirSync(dir), ['snap']);
});

test('a snapshot file that is a FIFO or a directory is ERR_SNAPSHOT_CORRUPT at once, and restores keep working', async (t) => {
  const { manager, memory } = await filledManager(MiB);
  const dir = tempDir(t);
  const target = path.join(dir, 'snap');
  await manager.snapshot(target);
  memory.close();
  await manager.close();
  for (const file of ['manifest.json', 'extents.bin', 'memory.bin']) {
    const saved = fs.readFileSync(path.join(target, file));
    for (const kind of ['FIFO', 'directory']) {
      fs.rmSync(path.join(target, file));
      if (kind === 'FIFO') execFileSync('mkfifo', [path.join(target, file)]);
      else fs.mkdirSync(path.join(target, file));
      // More than the two snapshot-io threads: a blocking open would hold them all.
      for (let i = 0; i < 3; i++) {
        for (const attempt of [GuestMemoryBuilder.restore(target), mb.readSnapshot(target)]) {
          const error = await t.throwsAsync(attempt, { code: 'ERR_SNAPSHOT_CORRUPT' });
          t.is(error.file, path.join(target, file));
          t.regex(error.message, new RegExp(`it is a ${kind}, not a regular file`));
        }
      }
      fs.rmSync(path.join(target, file), { recursive: true });
      fs.writeFileSync(path.join(target, file), saved);
    }
  }
  const restored = await GuestMemoryBuilder.restore(target);
  const again = await restored.client().guestMemory();
  t.is(again.readU8(MiB - 1n), 0x11);
  again.close();
  await restored.close();
});

lazyTest('a memory file truncated during a lazy restore fails it with ERR_SNAPSHOT_CORRUPT, not ERR_PANIC', async (t) => {
  const { manager, memory } = await filledManager(64n * MiB);
  const dir = tempDir(t);
  const target = path.join(dir, 'snap');
  await manager.snapshot(target);
  memory.close();
  await manager.close();
  const restored = await GuestMemoryBuilder.restore(target, { mode: 'lazy', deferBackgroundFill: true });
  const again = await restored.client().guestMemory();
  t.is(again.readU8(0), 0x11);
  fs.truncateSync(path.join(target, 'memory.bin'), 1024 * 1024);
  restored.lazyRestore.startBackground();
  const error = await t.throwsAsync(restored.lazyRestore.done, { instanceOf: mb.SnapshotError, code: 'ERR_SNAPSHOT_CORRUPT' });
  t.is(error.file, path.join(target, 'memory.bin'));
  t.regex(error.message, /truncated/);
  again.close();
  await restored.close();
});

test('an incremental snapshot on a base whose memory file is gone fails and writes nothing', async (t) => {
  const { manager, memory } = await filledManager(MiB);
  t.teardown(async () => {
    memory.close();
    await manager.close();
  });
  await manager.dirtyTracking().start();
  const dir = tempDir(t);
  const base = path.join(dir, 'base');
  await manager.snapshot(base);
  memory.fillAt(2n * MiB, 0x44, 4n * KiB);
  const saved = fs.readFileSync(path.join(base, 'memory.bin'));
  fs.truncateSync(path.join(base, 'memory.bin'), 4096);
  const truncated = await t.throwsAsync(manager.snapshot(path.join(dir, 'next'), { base }), { code: 'ERR_SNAPSHOT_CORRUPT' });
  t.is(truncated.file, path.join(base, 'memory.bin'));
  fs.rmSync(path.join(base, 'memory.bin'));
  const gone = await t.throwsAsync(manager.snapshot(path.join(dir, 'next'), { base }), { instanceOf: mb.OsError, code: 'ENOENT' });
  t.is(gone.path, path.join(base, 'memory.bin'));
  t.deepEqual(fs.readdirSync(dir), ['base']);
  fs.writeFileSync(path.join(base, 'memory.bin'), saved);
  const info = await manager.snapshot(path.join(dir, 'next'), { base });
  t.true(info.incremental);
  const restored = await GuestMemoryBuilder.restore(path.join(dir, 'next'));
  const again = await restored.client().guestMemory();
  t.is(again.readU8(2n * MiB), 0x44);
  t.is(again.readU8(0), 0x11);
  again.close();
  await restored.close();
});
