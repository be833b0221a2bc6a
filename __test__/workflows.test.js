// The CI entry points (.github/workflows/*.yml, .ci/run and the package.json scripts they run)
// only name things that exist here: every `npm run NAME` and `npm test` a package.json script,
// every `node scripts/FILE` and `__test__/FILE` a file of the repository. GitHub runs the release
// and conformance workflows only on a tag, by hand or on a schedule, so a renamed script would
// otherwise be found by a failed release.
'use strict';
const test = require('ava');
const fs = require('node:fs');
const path = require('node:path');

const ROOT = path.join(__dirname, '..');
const scripts = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).scripts;
const workflowDir = path.join(ROOT, '.github', 'workflows');
const entryPoints = [
  ...fs.readdirSync(workflowDir).filter((name) => /\.ya?ml$/.test(name)).map((name) => path.join(workflowDir, name)),
  path.join(ROOT, '.ci', 'run'),
  path.join(ROOT, 'package.json'), // its scripts, which the workflows run
];

/** What a CI file refers to: npm scripts and repository files, each with its line number. */
function references(file) {
  const found = [];
  fs.readFileSync(file, 'utf8').split('\n').forEach((text, index) => {
    const line = index + 1;
    if (/^\s*#/.test(text)) return;
    for (const match of text.matchAll(/\bnpm run (?:--silent |-s )?([\w:.-]+)/g)) found.push({ line, kind: 'script', name: match[1] });
    for (const match of text.matchAll(/\bnpm (test|start)\b/g)) found.push({ line, kind: 'script', name: match[1] });
    for (const match of text.matchAll(/\bnode (scripts\/[\w./-]+)/g)) found.push({ line, kind: 'file', name: match[1] });
    for (const match of text.matchAll(/(?:^|[\s'"])(__test__\/[\w./-]+)/g)) found.push({ line, kind: 'file', name: match[1] });
  });
  return found;
}

for (const file of entryPoints) {
  const name = path.relative(ROOT, file);
  test(`${name} names only scripts and files that exist`, (t) => {
    const found = references(file);
    t.true(found.length > 0, `${name} runs something of this repository`);
    for (const reference of found) {
      const where = `${name}:${reference.line}`;
      if (reference.kind === 'script') t.true(Object.hasOwn(scripts, reference.name), `${where}: npm run ${reference.name} is no package.json script`);
      else t.true(fs.existsSync(path.join(ROOT, reference.name)), `${where}: ${reference.name} does not exist`);
    }
  });
}
