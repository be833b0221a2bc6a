#!/usr/bin/env node
'use strict';
// Side-by-side speed of this project's `trycopy` and `guestmem` crates and the original's
// (OpenVMM), on this machine, in one run:
//
//   npm run bench:upstream -- --openvmm PATH [--rounds N] [--filter TEXT] [--quick]
//                             [--control] [--checked] [--keep | --scratch DIR]
//
// PATH is an OpenVMM source tree (or a git directory: its HEAD, or --ref REF, is exported with
// `git archive` into the scratch folder). Two scratch crates are written into a temporary
// folder, one depending on the original's crates by path, one on ours; both build the same
// benchmark sources: the original's own `benches/perf.rs` of both crates (referenced in place,
// unchanged) and a benchmark written by this script for the sizes those files leave out (every
// scalar width, read_plain/write_plain up to 256 B, try-set of 4 and 8 B, copies of 64 KiB and
// 1 MiB). Both sides are built with the same profile (the original's release settings: thin
// LTO; one codegen unit) and run in alternating rounds (the order flips every round). Each
// benchmark prints one JSON line (the format of `npm run bench`): our median time, the
// original's, the median of the per-round ratios ours/original and their spread, and the
// target (<= 1: at most the original's time). Nothing of the original is kept in the
// repository, and the script fetches nothing of it. --keep keeps the temporary folder;
// --scratch DIR uses DIR instead (kept, and reused by the next run: incremental builds).
//
// --control measures the run's noise: the original is built a second time, as a third scratch
// crate of its own (the same sources; only the crate name, and so the code's placement,
// differs), and runs as a third side in every round. Each line then also carries the ratio of
// that second build to the first (`control`, the median of the per-round ratios, and
// `controlSpread`): what "the same code" measures in this run. A row whose ratio is above 1 but
// within the control's spread cannot be told apart from the original's speed (`parity: true`).
//
// --checked measures what overflow checks cost: our crates are built a second time with
// `overflow-checks = true` in the release profile (as the published addon is built; the sides
// above are built without them, as the original's release builds are) and run as one more side.
// Each line then also carries the ratio of that build to ours without the checks (`checked`,
// the median of the per-round ratios, and `checkedSpread`).

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const { parseArgs } = require('node:util');

const repoRoot = path.resolve(__dirname, '..');

const { values: options } = parseArgs({
  options: {
    openvmm: { type: 'string' },
    ref: { type: 'string', default: 'HEAD' },
    rounds: { type: 'string', default: '3' },
    filter: { type: 'string', default: '' },
    quick: { type: 'boolean', default: false },
    control: { type: 'boolean', default: false },
    checked: { type: 'boolean', default: false },
    keep: { type: 'boolean', default: false },
    scratch: { type: 'string' },
  },
});

function fail(message) {
  console.error(`bench-upstream: ${message}`);
  process.exit(2);
}

function sh(command, args, opts = {}) {
  return spawnSync(command, args, { encoding: 'utf8', maxBuffer: 256 << 20, ...opts });
}

if (!options.openvmm) fail('usage: npm run bench:upstream -- --openvmm PATH [--rounds N] [--filter TEXT] [--quick] [--control] [--checked] [--keep | --scratch DIR]');
const rounds = Number(options.rounds);
if (!Number.isSafeInteger(rounds) || rounds < 1) fail(`--rounds must be a positive integer, got ${options.rounds}`);

// The original's crates and their own benchmarks, relative to the checkout's root.
const TRYCOPY = 'support/trycopy';
const GUESTMEM = 'vm/vmcore/guestmem';

const keep = options.keep || options.scratch !== undefined;
const scratch = options.scratch ? path.resolve(options.scratch) : fs.mkdtempSync(path.join(os.tmpdir(), 'membacking-bench-upstream-'));
if (scratch.startsWith(repoRoot + path.sep) || scratch === repoRoot) fail(`--scratch must be outside the repository (${repoRoot})`);
fs.mkdirSync(scratch, { recursive: true });
process.on('exit', () => {
  if (keep) console.error(`bench-upstream: scratch folder kept at ${scratch}`);
  else fs.rmSync(scratch, { recursive: true, force: true });
});

/** The original's source tree: PATH itself, or its git tree exported into the scratch folder. */
function sourceTree(openvmm) {
  const root = path.resolve(openvmm);
  if (fs.existsSync(path.join(root, TRYCOPY, 'Cargo.toml'))) return root;
  if (sh('git', ['-C', root, 'rev-parse', '--git-dir']).status !== 0) fail(`${root} is neither an OpenVMM source tree (no ${TRYCOPY}/Cargo.toml) nor a git directory`);
  const tree = path.join(scratch, 'openvmm');
  fs.rmSync(tree, { recursive: true, force: true });
  fs.mkdirSync(tree);
  const archive = spawnSync('sh', ['-c', 'git -C "$1" archive "$2" | tar -x -C "$3"', 'sh', root, options.ref, tree], { stdio: ['ignore', 'ignore', 'inherit'] });
  if (archive.status !== 0) fail(`cannot export ${options.ref} of ${root}`);
  return tree;
}

const original = sourceTree(options.openvmm);
for (const crate of [TRYCOPY, GUESTMEM]) {
  if (!fs.existsSync(path.join(original, crate, 'benches/perf.rs'))) fail(`${original} has no ${crate}/benches/perf.rs`);
}
// The criterion version the original's benchmarks are written for (its workspace's).
const workspaceToml = fs.readFileSync(path.join(original, 'Cargo.toml'), 'utf8');
const criterion = /^criterion\s*=\s*(\{[^}\n]*\}|"[^"\n]*")/m.exec(workspaceToml)?.[1] ?? '{ version = "0.7", default-features = false }';

// Our own benchmark of the sizes and widths the original's perf.rs files leave out. It uses
// only the API both crates share, so it compiles against either.
const EXTRA_BENCH = `//! Sizes and widths the original's perf.rs files leave out (written by scripts/bench-upstream.js).
#![allow(unsafe_code, missing_docs, clippy::undocumented_unsafe_blocks)]
use guestmem::AlignedHeapMemory;
use guestmem::GuestMemory;
use std::hint::black_box;

criterion::criterion_main!(benches);
criterion::criterion_group!(benches, fills, scalars, plain, large);

fn fill<const N: usize>(c: &mut criterion::Criterion, name: &str) {
    let mut dest = vec![0u8; N];
    c.bench_function(name, |b| {
        b.iter(|| unsafe { trycopy::try_write_bytes(black_box(dest.as_mut_ptr()), 0u8, N).unwrap() })
    });
}

fn fills(c: &mut criterion::Criterion) {
    trycopy::initialize_try_copy();
    fill::<4>(c, "try-set-4");
    fill::<8>(c, "try-set-8");
}

// A macro, not a generic function: the two crates bound try_compare_exchange differently.
macro_rules! scalar {
    ($c:expr, $ty:ty, $bits:literal) => {{
        let mut cell: $ty = 0;
        let p: *mut $ty = &mut cell;
        $c.bench_function(concat!("try-read-volatile-u", $bits), |b| {
            b.iter(|| unsafe { black_box(trycopy::try_read_volatile(black_box(p.cast_const())).unwrap()) })
        });
        $c.bench_function(concat!("try-write-volatile-u", $bits), |b| {
            b.iter(|| unsafe { trycopy::try_write_volatile(black_box(p), &black_box(1 as $ty)).unwrap() })
        });
        $c.bench_function(concat!("try-compare-exchange-u", $bits), |b| {
            b.iter(|| unsafe {
                let _ = black_box(trycopy::try_compare_exchange(black_box(p), 0 as $ty, 0 as $ty).unwrap());
            })
        });
    }};
}

fn scalars(c: &mut criterion::Criterion) {
    scalar!(c, u8, 8);
    scalar!(c, u16, 16);
    scalar!(c, u32, 32);
    scalar!(c, u64, 64);
}

fn plain_of<const N: usize>(c: &mut criterion::Criterion, memory: &GuestMemory) {
    c.bench_function(&format!("read-plain-{N}"), |b| {
        b.iter(|| black_box(memory.read_plain::<[u8; N]>(black_box(64)).unwrap()))
    });
    c.bench_function(&format!("write-plain-{N}"), |b| {
        b.iter(|| memory.write_plain::<[u8; N]>(black_box(64), &black_box([0u8; N])).unwrap())
    });
}

fn plain(c: &mut criterion::Criterion) {
    let memory = GuestMemory::new("perf", AlignedHeapMemory::new(1 << 20));
    plain_of::<2>(c, &memory);
    plain_of::<4>(c, &memory);
    plain_of::<32>(c, &memory);
    plain_of::<256>(c, &memory);
    c.bench_function("write-plain-1", |b| b.iter(|| memory.write_plain::<u8>(black_box(64), &black_box(0)).unwrap()));
    c.bench_function("write-plain-8", |b| b.iter(|| memory.write_plain::<u64>(black_box(64), &black_box(0)).unwrap()));
    c.bench_function("compare-exchange-plain-u32", |b| {
        b.iter(|| { let _ = black_box(memory.compare_exchange::<u32>(black_box(64), 0, 0).unwrap()); })
    });
    c.bench_function("compare-exchange-plain-u64", |b| {
        b.iter(|| { let _ = black_box(memory.compare_exchange::<u64>(black_box(64), 0, 0).unwrap()); })
    });
}

fn large(c: &mut criterion::Criterion) {
    let source = vec![0u8; 1 << 20];
    let mut dest = vec![0u8; 1 << 20];
    c.bench_function("try-copy-65536", |b| {
        b.iter(|| unsafe { trycopy::try_copy(black_box(source.as_ptr()), black_box(dest.as_mut_ptr()), 1 << 16).unwrap() })
    });
    let memory = GuestMemory::new("perf", AlignedHeapMemory::new(2 << 20));
    for (name, len) in [("65536", 1usize << 16), ("1048576", 1 << 20)] {
        c.bench_function(&format!("read-at-{name}"), |b| b.iter(|| memory.read_at(black_box(0), &mut dest[..len]).unwrap()));
        c.bench_function(&format!("write-at-{name}"), |b| b.iter(|| memory.write_at(black_box(0), &source[..len]).unwrap()));
    }
}
`;

/** Writes `text` to `file` unless it holds it already (a reused scratch folder rebuilds nothing). */
function writeFile(file, text) {
  if (fs.existsSync(file) && fs.readFileSync(file, 'utf8') === text) return;
  fs.writeFileSync(file, text);
}

/**
 * Writes one scratch crate: the given trycopy and guestmem, the shared benchmark sources;
 * `profile` holds extra lines of its release profile.
 */
function scratchCrate(side, trycopyDir, guestmemDir, profile = '') {
  const dir = path.join(scratch, side);
  fs.mkdirSync(path.join(dir, 'src'), { recursive: true });
  writeFile(path.join(dir, 'src/lib.rs'), '//! Benchmarks only.\n');
  const toml = `[workspace]

[package]
name = "bench_upstream_${side}"
version = "0.0.0"
edition = "2024"
publish = false

[dependencies]
trycopy = { path = ${JSON.stringify(trycopyDir)} }
guestmem = { path = ${JSON.stringify(guestmemDir)} }
criterion = ${criterion}

[features]
bitmap = []

[profile.release]
lto = "thin"
codegen-units = 1
debug = false
${profile}

[[bench]]
name = "trycopy_perf"
path = ${JSON.stringify(path.join(original, TRYCOPY, 'benches/perf.rs'))}
harness = false

[[bench]]
name = "guestmem_perf"
path = ${JSON.stringify(path.join(original, GUESTMEM, 'benches/perf.rs'))}
harness = false

[[bench]]
name = "extra"
path = ${JSON.stringify(path.join(scratch, 'extra.rs'))}
harness = false
`;
  writeFile(path.join(dir, 'Cargo.toml'), toml);
  return dir;
}

/** Builds a scratch crate's benchmarks; returns {bench name: executable}. */
function build(dir) {
  console.error(`bench-upstream: building ${path.basename(dir)} (cargo bench --no-run)`);
  const run = sh('cargo', ['bench', '--no-run', '--message-format=json-render-diagnostics'], { cwd: dir, env: { ...process.env, CARGO_TARGET_DIR: path.join(dir, 'target'), RUSTFLAGS: '' }, stdio: ['ignore', 'pipe', 'inherit'] });
  if (run.status !== 0) fail(`building ${dir} failed`);
  const executables = {};
  for (const line of run.stdout.split('\n')) {
    if (!line.startsWith('{')) continue;
    const message = JSON.parse(line);
    if (message.reason === 'compiler-artifact' && message.executable && message.target.kind.includes('bench')) executables[message.target.name] = message.executable;
  }
  for (const name of ['trycopy_perf', 'guestmem_perf', 'extra']) if (!executables[name]) fail(`no ${name} executable in ${dir}`);
  return executables;
}

writeFile(path.join(scratch, 'extra.rs'), EXTRA_BENCH);
const sides = {
  original: build(scratchCrate('original', path.join(original, TRYCOPY), path.join(original, GUESTMEM))),
  ours: build(scratchCrate('ours', path.join(repoRoot, 'crates/trycopy'), path.join(repoRoot, 'crates/guestmem'))),
};
if (options.control) sides.control = build(scratchCrate('control', path.join(original, TRYCOPY), path.join(original, GUESTMEM)));
if (options.checked) sides.checked = build(scratchCrate('checked', path.join(repoRoot, 'crates/trycopy'), path.join(repoRoot, 'crates/guestmem'), 'overflow-checks = true'));

const criterionArgs = options.quick ? ['--warm-up-time', '0.2', '--measurement-time', '0.4'] : ['--warm-up-time', '0.5', '--measurement-time', '1.5'];
const results = new Map();
for (let round = 0; round < rounds; round++) {
  // The order of the sides turns every round, so none always runs first.
  const names = Object.keys(sides);
  const order = names.map((_, i) => names[(i + round) % names.length]);
  for (const bench of ['trycopy_perf', 'guestmem_perf', 'extra']) {
    for (const side of order) {
      const home = path.join(scratch, `criterion-${side}`);
      const args = ['--bench', '--noplot', ...criterionArgs];
      if (options.filter) args.push(options.filter);
      const run = sh(sides[side][bench], args, { env: { ...process.env, CRITERION_HOME: home } });
      if (run.status !== 0) fail(`${side} ${bench} failed:\n${run.stderr}`);
      // Criterion prints `name  time: [...]`, or a long name on a line of its own first.
      let named;
      for (const line of run.stdout.split('\n')) {
        const match = /^(\S+)?\s+time:/.exec(line);
        if (!match) {
          named = /^(\S+)\s*$/.exec(line)?.[1];
          continue;
        }
        const name = match[1] ?? named;
        if (name === undefined) continue;
        const estimates = JSON.parse(fs.readFileSync(path.join(home, name, 'new/estimates.json'), 'utf8'));
        const entry = results.get(name) ?? { original: [], ours: [], control: [], checked: [] };
        entry[side].push(estimates.median.point_estimate);
        results.set(name, entry);
      }
    }
  }
  console.error(`bench-upstream: round ${round + 1} of ${rounds} done`);
}

const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
const round4 = (x) => Number(x.toPrecision(4));
/** The per-round ratios times/base of one benchmark: their median and their range. */
function ratioOf(times, base) {
  const ratios = times.map((value, i) => value / base[i]);
  return { ratio: median(ratios), spread: [Math.min(...ratios), Math.max(...ratios)] };
}
for (const [name, { original: theirs, ours, control, checked }] of results) {
  const { ratio, spread } = ratioOf(ours, theirs);
  const line = {
    name: `${name} ours/original`,
    value: round4(median(ours)),
    unit: 'ns',
    baseline: `original ${name} (same machine, same run)`,
    baselineValue: round4(median(theirs)),
    ratio: round4(ratio),
    spread: spread.map(round4),
    target: '<= 1',
    met: ratio <= 1,
  };
  if (control.length > 0) {
    const noise = ratioOf(control, theirs);
    Object.assign(line, { control: round4(noise.ratio), controlSpread: noise.spread.map(round4), parity: ratio <= Math.max(1, noise.spread[1]) });
  }
  if (checked.length > 0) {
    const cost = ratioOf(checked, ours);
    Object.assign(line, { checked: round4(cost.ratio), checkedSpread: cost.spread.map(round4) });
  }
  console.log(JSON.stringify(line));
}
