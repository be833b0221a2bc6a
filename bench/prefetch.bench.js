// Parallel prefetch into a KVM partition (crates/virt_kvm, `cargo bench --bench kvm_costs --
// parallel_prefetch`): KvmPartition's map + prefetch of a fresh memfd slot against the floor
// measured in the same run (MADV_POPULATE_WRITE of a fresh memfd of the same size with the same
// number of threads, plus KVM's part, the slot creation). The Rust benchmark prints the lines in
// the project's format; they pass through. MEMBACKING_PREFETCH_BENCH_MIB sets the size (default
// 1024). Needs /dev/kvm (the benchmark prints a skip note otherwise).
'use strict';
const { spawnSync } = require('node:child_process');
const path = require('node:path');

const run = spawnSync('cargo', ['bench', '-p', 'virt_kvm', '--bench', 'kvm_costs', '--', 'parallel_prefetch'], {
  cwd: path.join(__dirname, '..'),
  encoding: 'utf8',
  stdio: ['ignore', 'pipe', 2],
});
if (run.error || run.status !== 0) {
  console.error(`cargo bench -p virt_kvm failed: ${run.error ?? `exit ${run.status ?? run.signal}`}`);
  process.exit(1);
}
process.stdout.write(run.stdout);
