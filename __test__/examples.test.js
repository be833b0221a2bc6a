// The README's API tour: every script in examples/ runs to completion (each checks its own
// results with node:assert), and the README shows each one exactly as it is.
'use strict';
const test = require('ava');
const fs = require('node:fs');
const path = require('node:path');
const { execFile } = require('node:child_process');
const { promisify } = require('node:util');
const { kvmTest } = require('./helpers/kvm');
const { readmeBlocks } = require('../scripts/readme-examples');

const examplesDir = path.join(__dirname, '..', 'examples');
const needsKvm = new Set(['kvm-guest.mjs']);
const childOnly = new Set(['shared-backing-child.mjs']); // run by shared-backing.mjs

test('the README shows every example exactly as the file in examples/', (t) => {
  const blocks = readmeBlocks();
  const files = fs.readdirSync(examplesDir).filter((f) => f.endsWith('.mjs'));
  t.deepEqual(blocks.map((b) => b.file).sort(), files.map((f) => `examples/${f}`).sort());
  for (const block of blocks) t.is(block.shown, block.expected, `${block.file}: run node scripts/readme-examples.js --write`);
});

for (const file of fs.readdirSync(examplesDir).filter((f) => f.endsWith('.mjs') && !childOnly.has(f))) {
  (needsKvm.has(file) ? kvmTest : test)(`examples/${file} runs and its assertions hold`, async (t) => {
    const { stderr } = await promisify(execFile)(process.execPath, [path.join(examplesDir, file)], { encoding: 'utf8', timeout: 60_000 });
    t.is(stderr, '');
  });
}
