// Helpers of the snapshot tests: the userfaultfd skip rule (`lazyTest`), the seeded generator
// (`rng`, from data.js), temporary snapshot directories, a byte image of a manager's RAM, and
// flipping a byte of a file.
//
// Lazy restores need a userfaultfd that serves kernel-mode faults (snapshotSupport() says why it
// cannot be had). Tests that need one are declared with `lazyTest`: ava's `test` where it can,
// a skip naming the reason otherwise. MEMBACKING_REQUIRE_USERFAULTFD=1 turns the skip into a
// failure.
'use strict';
const test = require('ava');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { snapshotSupport, SparseMapping } = require('../../dist');
const { generator: rng } = require('./data');

const support = snapshotSupport();
/** Why lazy restores cannot run here, or null. */
const userfaultfdUnavailable = support.lazyRestore ? null : support.reason;
const required = process.env.MEMBACKING_REQUIRE_USERFAULTFD === '1';
if (userfaultfdUnavailable !== null && !required) console.log(`lazy-restore tests skipped: ${userfaultfdUnavailable}`);

/** ava's `test` for tests that need a lazy restore (see the module comment). */
function lazyTest(title, fn) {
  if (userfaultfdUnavailable === null) return test(title, fn);
  if (required) return test(title, (t) => t.fail(`MEMBACKING_REQUIRE_USERFAULTFD=1 but userfaultfd is unavailable: ${userfaultfdUnavailable}`));
  return test.skip(`${title} [skipped: userfaultfd unavailable: ${userfaultfdUnavailable}]`, fn);
}

/** `lazyTest` for mode 'lazy', `test` for 'copy'. */
function modeTest(mode, title, fn) {
  return (mode === 'lazy' ? lazyTest : test)(title, fn);
}

/** A fresh directory removed when the test ends. */
function tempDir(t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'membacking-snap-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/**
 * Every byte of a file-backed manager's RAM object, read through a view of its own (so visibility
 * does not matter). During a lazy restore such a view is not registered: read after `done`.
 */
function ramImage(manager) {
  const size = manager.ramRegions().reduce((end, r) => (r.fileOffset + r.range.len > end ? r.fileOffset + r.range.len : end), 0n);
  const backing = manager.sharedMemoryBacking();
  const object = backing.mappable();
  const mapping = new SparseMapping(size);
  try {
    mapping.mapFile(0, size, object, 0, false);
    const image = Buffer.alloc(Number(size));
    mapping.readAt(0, image);
    return image;
  } finally {
    mapping.close();
    object.close();
    backing.close();
  }
}

/** Flips one bit of `file` at `offset`. */
function flip(file, offset) {
  const bytes = fs.readFileSync(file);
  bytes[offset] ^= 0x04;
  fs.writeFileSync(file, bytes);
}

/** Open descriptors and threads of this process. */
function resources() {
  return { fds: fs.readdirSync('/proc/self/fd').length, threads: fs.readdirSync('/proc/self/task').length };
}

module.exports = { userfaultfdUnavailable, lazyTest, modeTest, rng, tempDir, ramImage, flip, resources };
