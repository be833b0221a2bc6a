// The Rust guarded copy (crates/trycopy, criterion benchmark `try_copy`) against
// copy_nonoverlapping of the same size, the guarded u32 load against read_volatile, and the small
// accesses (copies and fills of 1-256 B of constant length, loads, stores and compare-exchanges
// of every width) against the same unguarded access, without targets: runs
// `cargo bench -p trycopy` and turns criterion's estimates (<criterion home>/<group>/<id>/new/
// estimates.json, mean per iteration) into the benchmark line format of docs/design.md.
// Cargo's and criterion's own output goes to stderr. Set TRYCOPY_BENCH_ARGS to pass other
// criterion flags (default: --warm-up-time 1 --measurement-time 3).
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const { report } = require('./harness');

const root = path.join(__dirname, '..');
const targetDir = process.env.CARGO_TARGET_DIR ? path.resolve(root, process.env.CARGO_TARGET_DIR) : path.join(root, 'target');
// Where criterion keeps its results: CRITERION_HOME, else <target dir>/criterion.
const criterionHome = process.env.CRITERION_HOME ? path.resolve(root, process.env.CRITERION_HOME) : path.join(targetDir, 'criterion');
const criterionArgs = (process.env.TRYCOPY_BENCH_ARGS ?? '--warm-up-time 1 --measurement-time 3').split(/\s+/).filter(Boolean);

const run = spawnSync('cargo', ['bench', '-p', 'trycopy', '--bench', 'try_copy', '--', ...criterionArgs], {
  cwd: root,
  env: { ...process.env, CRITERION_HOME: criterionHome },
  stdio: ['ignore', 2, 2],
});
if (run.error || run.status !== 0) {
  console.error(`cargo bench -p trycopy failed: ${run.error ?? `exit ${run.status ?? run.signal}`}`);
  process.exit(1);
}

/** Mean time per iteration (ns) of criterion benchmark `group/id` from its latest run. */
function meanNs(group, id) {
  const file = path.join(criterionHome, group, id, 'new', 'estimates.json');
  const estimates = JSON.parse(fs.readFileSync(file, 'utf8'));
  return estimates.mean.point_estimate;
}

for (const size of ['4KiB', '1MiB']) {
  report({
    name: `trycopy::try_copy ${size}`,
    value: meanNs('try_copy', size),
    unit: 'ns',
    baseline: `std::ptr::copy_nonoverlapping ${size}`,
    baselineValue: meanNs('copy_nonoverlapping', size),
    kind: 'rate',
    target: '>= 0.9',
  });
}
report({
  name: 'trycopy::try_read_volatile u32',
  value: meanNs('try_read_volatile', 'u32'),
  unit: 'ns',
  baseline: 'std::ptr::read_volatile u32',
  baselineValue: meanNs('read_volatile', 'u32'),
  target: '<= 3',
});
// Small accesses: group `small`, ids `try_<name>_<id>` and `plain_<name>_<id>`.
const small = { copy: ['1', '4', '8', '32', '256'], set: ['1', '4', '8', '32', '256'], read: ['u8', 'u16', 'u32', 'u64'], write: ['u8', 'u16', 'u32', 'u64'], cmpxchg: ['u8', 'u16', 'u32', 'u64'] };
for (const [name, ids] of Object.entries(small)) {
  for (const id of ids) {
    const label = name === 'copy' || name === 'set' ? `${id} B` : id;
    report({
      name: `trycopy::try_${name} ${label}`,
      value: meanNs('small', `try_${name}_${id}`),
      unit: 'ns',
      baseline: `unguarded ${name} ${label}`,
      baselineValue: meanNs('small', `plain_${name}_${id}`),
    });
  }
}
