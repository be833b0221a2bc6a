// Running this package as an unprivileged user from a test that runs as root: a readable copy
// of the built package (the checkout may sit in a private temporary directory, as a fresh clone
// in CI does), and the user to run as.
'use strict';
const fs = require('node:fs');
const path = require('node:path');

/** The unprivileged user and group a root test runs children as. */
const NOBODY = 65534;

/** Makes `dir` and everything below it readable (and the directories searchable) by all. */
function readableByAll(dir) {
  fs.chmodSync(dir, 0o755);
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    if (entry.isDirectory()) readableByAll(p);
    else fs.chmodSync(p, 0o644);
  }
}

/**
 * Copies the built package (package.json, index.js, dist, the native addon) to `root/package`
 * and returns that folder; `root` is made readable by all, with everything in it.
 */
function readablePackageCopy(root) {
  const copy = path.join(root, 'package');
  const repo = path.join(__dirname, '..', '..');
  for (const entry of ['package.json', 'index.js', 'dist', ...fs.readdirSync(repo).filter((f) => f.endsWith('.node'))]) {
    fs.cpSync(path.join(repo, entry), path.join(copy, entry), { recursive: true });
  }
  readableByAll(root);
  return copy;
}

/** Why children cannot run as an unprivileged user here, or null when they can. */
function unprivilegedUnavailable() {
  return process.getuid?.() === 0 ? null : 'the tests do not run as root, so they cannot run a child as another user';
}

module.exports = { NOBODY, readableByAll, readablePackageCopy, unprivilegedUnavailable };
