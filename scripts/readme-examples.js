#!/usr/bin/env node
// Keeps the README's API tour and examples/ in step: every README code block preceded by a line
// `<!-- example: examples/NAME.mjs -->` must be that file without its leading comment lines.
// `node scripts/readme-examples.js` checks (exit 1 and a list of stale blocks when they differ);
// `--write` rewrites the README's blocks from the files. __test__/examples.test.js runs the check
// and every example.
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const repoRoot = path.resolve(__dirname, '..');
const readmePath = path.join(repoRoot, 'README.md');
const marker = /^<!-- example: (examples\/[\w.-]+\.mjs) -->\n```js\n([\s\S]*?)```\n/gm;

/** The part of an example the README shows: the file without its leading `//` comment lines. */
function shownPart(file) {
  const lines = fs.readFileSync(path.join(repoRoot, file), 'utf8').split('\n');
  let first = 0;
  while (first < lines.length && (lines[first].startsWith('//') || lines[first] === '')) first++;
  return lines.slice(first).join('\n');
}

/** Every marked block of the README: its file, what it shows now and what it should show. */
function readmeBlocks(readme = fs.readFileSync(readmePath, 'utf8')) {
  return [...readme.matchAll(marker)].map((m) => ({ file: m[1], shown: m[2], expected: shownPart(m[1]) }));
}

function main() {
  const readme = fs.readFileSync(readmePath, 'utf8');
  if (process.argv.includes('--write')) {
    const updated = readme.replace(marker, (_, file) => `<!-- example: ${file} -->\n\`\`\`js\n${shownPart(file)}\`\`\`\n`);
    fs.writeFileSync(readmePath, updated);
    console.log(`README.md: ${readmeBlocks(updated).length} example blocks written`);
    return;
  }
  const stale = readmeBlocks(readme).filter((b) => b.shown !== b.expected);
  for (const b of stale) console.error(`README.md block for ${b.file} differs from the file`);
  if (stale.length > 0) {
    console.error('run `node scripts/readme-examples.js --write` after editing examples/');
    process.exit(1);
  }
}

if (require.main === module) main();
module.exports = { readmeBlocks, shownPart };
