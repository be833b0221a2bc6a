// `npm run bench`: runs every bench/*.bench.js in its own process, passes their JSON lines
// through, and ends with a summary table that marks each target met or missed.
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const only = process.argv.slice(2);
const files = fs
  .readdirSync(__dirname)
  .filter((f) => f.endsWith('.bench.js'))
  .filter((f) => only.length === 0 || only.some((o) => f.includes(o)))
  .sort();
const results = [];
let failed = false;
for (const file of files) {
  const child = spawnSync(process.execPath, ['--expose-gc', path.join(__dirname, file)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  for (const line of child.stdout.split('\n')) {
    if (!line.trim()) continue;
    process.stdout.write(`${line}\n`);
    try {
      results.push(JSON.parse(line));
    } catch {
      // A benchmark's own notes pass through unchanged.
    }
  }
  if (child.status !== 0) {
    failed = true;
    console.error(`${file} exited with ${child.status ?? child.signal}`);
  }
}
const rows = results.map((r) => [r.name, `${r.value} ${r.unit}`, `${r.baselineValue} ${r.unit}`, String(r.ratio), r.target ?? '', r.met === undefined ? '' : r.met ? 'met' : 'MISSED']);
const header = ['benchmark', 'value', 'baseline', 'ratio', 'target', ''];
const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
const fmt = (cells) => cells.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd();
console.log(`\n${fmt(header)}\n${fmt(widths.map((w) => '-'.repeat(w)))}\n${rows.map(fmt).join('\n')}`);
process.exitCode = failed ? 1 : 0;
