// Small guest memory accesses in Rust (crates/guestmem, criterion benchmark `access`):
// read_at/write_at of 1-256 B and read_plain/write_plain of every width against the same
// unguarded access at the same host address. The Rust benchmark prints the lines in the project's
// format; they pass through. GUESTMEM_BENCH_ARGS passes other criterion flags (default:
// --warm-up-time 1 --measurement-time 2).
'use strict';
const { spawnSync } = require('node:child_process');
const path = require('node:path');

const criterionArgs = (process.env.GUESTMEM_BENCH_ARGS ?? '--warm-up-time 1 --measurement-time 2').split(/\s+/).filter(Boolean);
const run = spawnSync('cargo', ['bench', '-p', 'guestmem', '--bench', 'access', '--', ...criterionArgs], {
  cwd: path.join(__dirname, '..'),
  encoding: 'utf8',
  stdio: ['ignore', 'pipe', 2],
  maxBuffer: 64 << 20,
});
if (run.error || run.status !== 0) {
  console.error(`cargo bench -p guestmem failed: ${run.error ?? `exit ${run.status ?? run.signal}`}`);
  process.exit(1);
}
// Only the result lines: criterion's own report goes to stderr.
for (const line of run.stdout.split('\n')) if (line.startsWith('{')) console.log(line);
for (const line of run.stdout.split('\n')) if (line && !line.startsWith('{')) console.error(line);
