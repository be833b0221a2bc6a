#!/usr/bin/env node
'use strict'
// Conformance against the original, live: builds conformance/generator/ against an OpenVMM
// checkout, regenerates the vector files into a temporary folder, runs this project's Rust and
// JavaScript conformance tests against them, and replays the committed vectors' inputs through
// the original to check that their recorded outcomes still hold.
//
//   npm run conformance:upstream -- --openvmm PATH [--seed N] [--ref REF] [--scale F]
//                                   [--mutate ROUNDS] [--summary FILE] [--keep]
//
// Without --ref every area uses its pinned commit (conformance/upstream-pins.json); with
// --ref REF (e.g. `main`, `HEAD`) every area uses REF, and the report says what changed there
// (the registrar's chunk size, an area whose API no longer builds). PATH must be a git
// checkout (bare or not) for the pinned commits; a plain source tree is used as it is.
// Files are read with `git show COMMIT:PATH` into a temporary folder, where the generator is
// built: nothing of the original enters the repository, and nothing is fetched.
//
// With --mutate ROUNDS, the committed cases' inputs are also changed ROUNDS times each
// (scripts/conformance-mutate.js), evaluated by the original, and the tests run on those too:
// inputs shaped like the committed ones, which the generator's own streams do not produce.

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { execFileSync, spawnSync } = require('node:child_process')
const { parseArgs } = require('node:util')
const { matchingBrace } = require('./rust-source')
const { mutateVectors } = require('./conformance-mutate')

const repoRoot = path.resolve(__dirname, '..')
const pins = JSON.parse(fs.readFileSync(path.join(repoRoot, 'conformance/upstream-pins.json'), 'utf8')).areas
const AREAS = ['memory_range_ops', 'memory_range_algorithms', 'memory_layout', 'registrar', 'x86_legacy_ram_split']
// Cargo feature of the generator that each upstream piece enables.
const PIECE_FEATURE = { vm_topology: 'layout', registrar: 'registrar', x86_legacy_ram_split: 'x86' }

function sh(command, args, options = {}) {
  return spawnSync(command, args, { encoding: 'utf8', maxBuffer: 256 << 20, ...options })
}

/** Reads upstream files at a commit (git) or from the tree. */
function reader(openvmm) {
  const git = sh('git', ['-C', openvmm, 'rev-parse', '--git-dir']).status === 0
  return {
    git,
    resolve(ref) {
      if (!git) return 'working-tree'
      return execFileSync('git', ['-C', openvmm, 'rev-parse', `${ref}^{commit}`], { encoding: 'utf8' }).trim()
    },
    read(commit, file) {
      if (!git) return fs.readFileSync(path.join(openvmm, file), 'utf8')
      return execFileSync('git', ['-C', openvmm, 'show', `${commit}:${file}`], { encoding: 'utf8', maxBuffer: 64 << 20 })
    },
  }
}

function write(file, text) {
  fs.mkdirSync(path.dirname(file), { recursive: true })
  fs.writeFileSync(file, text)
}

// Stand-ins for the original's infrastructure crates that the pieces use (facts about their
// use: the registrar's inspect support is a no-op here, its page size is 4096).
const INSPECT_STUB = `//! A no-op stand-in for the inspect crate.
pub trait Inspect { fn inspect(&self, req: Request<'_>); }
pub struct Request<'a>(std::marker::PhantomData<&'a ()>);
pub struct Response<'a>(std::marker::PhantomData<&'a ()>);
impl<'a> Request<'a> { pub fn respond(self) -> Response<'a> { Response(std::marker::PhantomData) } }
impl<'a> Response<'a> {
    pub fn field<T>(&mut self, _name: &str, _value: T) -> &mut Self { self }
    pub fn field_with<T, F: FnOnce() -> T>(&mut self, _name: &str, _f: F) -> &mut Self { self }
    pub fn hex<T>(&mut self, _name: &str, _value: T) -> &mut Self { self }
}
`

/** The value of a constant expression such as `2 << 30`, `1 << 30` or `0x8000_0000`; NaN if other. */
function constantValue(text) {
  const number = (t) => Number(BigInt(t.replace(/_/g, '').replace(/u64$/, '')))
  const shift = /^\s*([0-9a-fx_]+)\s*<<\s*([0-9]+)\s*$/i.exec(text)
  if (shift) return number(shift[1]) * 2 ** Number(shift[2])
  if (/^\s*[0-9a-fx_]+(u64)?\s*$/i.test(text)) return number(text.trim())
  return NaN
}

/** Lays out the upstream crates the generator is built against; returns notes on changes. */
function layoutUpstream(dir, src, commits, notes) {
  const mr = src.read(commits.memory_range, pins.memory_range.path)
  write(path.join(dir, 'memory_range/Cargo.toml'), '[package]\nname = "memory_range"\nversion = "0.0.0"\nedition = "2024"\n[dependencies]\nthiserror = "2"\n')
  write(path.join(dir, 'memory_range/src/lib.rs'), mr)

  const vt = src.read(commits.vm_topology, pins.vm_topology.path)
  const newArity = /pub fn new\(\s*([^)]*)\)/.exec(vt)
  if (newArity && newArity[1].split(',').filter((p) => p.trim()).length !== 3) {
    notes.push(`vm_topology @ ${commits.vm_topology.slice(0, 12)}: MemoryLayout::new takes (${newArity[1].replace(/\s+/g, ' ').trim()}), not (ram_size, gaps, vtl2_range)`)
  }
  write(path.join(dir, 'vm_topology/Cargo.toml'), '[package]\nname = "vm_topology"\nversion = "0.0.0"\nedition = "2024"\n[features]\nx86 = []\n[dependencies]\nthiserror = "2"\nmemory_range = { path = "../memory_range" }\n')
  write(path.join(dir, 'vm_topology/src/memory.rs'), vt)

  const mm = src.read(commits.x86_legacy_ram_split, pins.x86_legacy_ram_split.path)
  const start = mm.indexOf('let mut ram_ranges = mem_layout')
  const ifStart = mm.indexOf('if self.x86_legacy_support {', start)
  let x86 = '// The original statements were not found at this commit.\n'
  if (start === -1 || ifStart === -1) {
    notes.push(`x86 split @ ${commits.x86_legacy_ram_split.slice(0, 12)}: the RAM-list statements of GuestMemoryBuilder::build were not found`)
  } else {
    const end = matchingBrace(mm, mm.indexOf('{', ifStart)) + 1
    const statements = mm.slice(start, end).replace(/self\.x86_legacy_support/g, 'x86_legacy_support')
    x86 = `//! The original's RAM-list statements of GuestMemoryBuilder::build, wrapped in a function.
use crate::memory::MemoryLayout;
use memory_range::MemoryRange;
#[derive(Debug)]
pub enum MemoryBuildError { InvalidRamForX86 }
pub fn ram_ranges(mem_layout: &MemoryLayout, x86_legacy_support: bool) -> Result<Vec<MemoryRange>, MemoryBuildError> {
${statements}
    Ok(ram_ranges)
}
`
  }
  write(path.join(dir, 'vm_topology/src/x86_split.rs'), x86)
  write(path.join(dir, 'vm_topology/src/lib.rs'), 'pub mod memory;\n#[cfg(feature = "x86")]\npub mod x86_split;\n')

  const reg = src.read(commits.registrar, pins.registrar.path)
  const granularity = /const GRANULARITY: u64 = ([^;]+);/.exec(reg)
  if (granularity) {
    const bytes = constantValue(granularity[1])
    if (bytes !== 2 ** 31) notes.push(`registrar @ ${commits.registrar.slice(0, 12)}: chunk size (GRANULARITY) is ${bytes / 2 ** 30} GiB, not 2 GiB`)
  } else {
    notes.push(`registrar @ ${commits.registrar.slice(0, 12)}: no GRANULARITY constant found`)
  }
  write(path.join(dir, 'underhill_mem/Cargo.toml'), '[package]\nname = "underhill_mem"\nversion = "0.0.0"\nedition = "2024"\n[dependencies]\nmemory_range = { path = "../memory_range" }\nvm_topology = { path = "../vm_topology" }\ninspect = { path = "../inspect" }\nguestmem = { path = "../guestmem" }\nparking_lot = "0.12"\ntracing = "0.1"\n')
  write(path.join(dir, 'underhill_mem/src/lib.rs'), 'pub mod registrar;\n')
  write(path.join(dir, 'underhill_mem/src/registrar.rs'), reg)
  write(path.join(dir, 'inspect/Cargo.toml'), '[package]\nname = "inspect"\nversion = "0.0.0"\nedition = "2021"\n')
  write(path.join(dir, 'inspect/src/lib.rs'), INSPECT_STUB)
  write(path.join(dir, 'guestmem/Cargo.toml'), '[package]\nname = "guestmem"\nversion = "0.0.0"\nedition = "2021"\n')
  write(path.join(dir, 'guestmem/src/lib.rs'), '//! The one fact the registrar needs.\npub const PAGE_SIZE: usize = 4096;\n')
}

/** Builds the generator with `features` (and `profile`); returns the binary path or the error. */
function build(genDir, features, profile, targetDir) {
  const args = ['build', '--quiet', '--no-default-features', '--profile', profile]
  if (features.length) args.push('--features', features.join(','))
  const result = sh('cargo', args, { cwd: genDir, env: { ...process.env, CARGO_TARGET_DIR: targetDir, RUSTFLAGS: '--cap-lints=allow' } })
  if (result.status !== 0) return { error: firstError(result.stderr) }
  const dirName = profile === 'dev' ? 'debug' : profile
  return { binary: path.join(targetDir, dirName, 'membacking-conformance-generator') }
}

function firstError(stderr) {
  const start = stderr.indexOf('error')
  return stderr.slice(Math.max(0, start), start + 600).trim()
}

function run(binary, args) {
  const result = sh(binary, args)
  if (result.status !== 0) throw new Error(`${path.basename(binary)} ${args.join(' ')} failed:\n${result.stderr.slice(-3000)}`)
  return result
}

/** Adds `expected_release` where the original without overflow checks behaves differently. */
function mergeRelease(file, releaseOutcomes) {
  const release = new Map(releaseOutcomes.trim().split('\n').filter(Boolean).map((line) => {
    const value = JSON.parse(line)
    return [value.id, value.expected]
  }))
  const lines = fs.readFileSync(file, 'utf8').split('\n')
  let count = 0
  const strip = (value) => JSON.stringify(value, (key, v) => (key === 'panic_message' ? undefined : v))
  const out = lines.map((line) => {
    if (!line.startsWith('{"id"')) return line
    const comma = line.endsWith(',') ? ',' : ''
    const value = JSON.parse(comma ? line.slice(0, -1) : line)
    const other = release.get(value.id)
    if (other !== undefined && strip(other) !== strip(value.expected)) {
      value.expected_release = other
      count++
    }
    return JSON.stringify(value) + comma
  })
  fs.writeFileSync(file, out.join('\n'))
  return count
}

/** Runs a test command against a vector folder; returns `{status, summary}`. */
function runTests(command, args, dir, cwd) {
  const result = sh(command, args, { cwd, env: { ...process.env, MEMBACKING_CONFORMANCE_DIR: dir } })
  const output = result.stdout + result.stderr
  const lines = [...output.matchAll(/conformance (\S+\.json): (\d+) cases, (\d+) passed/g)].map((m) => `${m[1]}: ${m[3]}/${m[2]}`)
  const failures = [...output.matchAll(/(\S+\.json): (\d+) of (\d+) cases failed/g)].map((m) => `${m[1]}: ${m[2]} of ${m[3]} failed`)
  return { status: result.status, lines, failures, tail: output.slice(-2500) }
}

/**
 * Adds the outcome of the Rust and (when run) JavaScript conformance tests on one vector set
 * (`which`: generated, mutated) to `report`; false when either failed.
 */
function reportTests(report, which, rust, js) {
  let passed = true
  if (rust.status !== 0) {
    passed = false
    report.push(`Rust conformance tests FAILED on the ${which} vectors:`, '', '```', ...rust.failures, rust.tail, '```', '')
  } else report.push(`Rust conformance tests: passed on the ${which} vectors.`, '')
  if (js) {
    if (js.status !== 0) passed = false
    report.push(`JavaScript conformance tests (ava): ${js.status === 0 ? 'passed' : 'FAILED'} on the ${which} vectors.`, '')
    if (js.status !== 0) report.push('```', js.tail, '```', '')
  }
  return passed
}

function main() {
  const { values } = parseArgs({
    options: {
      openvmm: { type: 'string' },
      seed: { type: 'string', default: '0x5eed0001' },
      ref: { type: 'string' },
      scale: { type: 'string', default: '1' },
      mutate: { type: 'string' },
      summary: { type: 'string' },
      keep: { type: 'boolean' },
      'skip-js': { type: 'boolean' },
    },
  })
  if (!values.openvmm) {
    console.error('usage: npm run conformance:upstream -- --openvmm PATH [--seed N] [--ref REF] [--scale F] [--mutate ROUNDS] [--summary FILE] [--keep] [--skip-js]')
    process.exit(2)
  }
  const rounds = values.mutate === undefined ? 0 : Number(values.mutate)
  if (values.mutate !== undefined && (!Number.isInteger(rounds) || rounds < 1)) {
    console.error(`--mutate ${values.mutate}: give a positive whole number of rounds`)
    process.exit(2)
  }
  const openvmm = path.resolve(values.openvmm)
  const src = reader(openvmm)
  const pieces = ['memory_range', 'vm_topology', 'registrar', 'x86_legacy_ram_split']
  const commits = Object.fromEntries(pieces.map((piece) => [piece, src.resolve(values.ref || pins[piece].commit)]))
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'membacking-conformance-upstream-'))
  const targetDir = process.env.CARGO_TARGET_DIR || path.join(scratch, 'target')
  const report = [`## Conformance against OpenVMM ${values.ref ? `\`${values.ref}\`` : 'pinned commits'}`, '']
  let ok = true
  try {
    const genDir = path.join(scratch, 'generator')
    fs.cpSync(path.join(repoRoot, 'conformance/generator'), genDir, { recursive: true, filter: (s) => !s.includes(`${path.sep}target`) })
    const notes = []
    layoutUpstream(path.join(genDir, 'upstream'), src, commits, notes)
    report.push('| piece | file | commit |', '| --- | --- | --- |')
    for (const piece of pieces) report.push(`| ${piece} | \`${pins[piece].path}\` | \`${commits[piece]}\` |`)
    report.push('')

    // Build with every area; if that fails, find the areas whose upstream code no longer fits.
    let features = ['layout', 'registrar', 'x86']
    let built = build(genDir, features, 'dev', targetDir)
    if (built.error) {
      const failing = []
      features = []
      for (const feature of ['layout', 'registrar', 'x86']) {
        const attempt = build(genDir, [...features, feature], 'dev', targetDir)
        if (attempt.error) failing.push(`${feature}: ${attempt.error.split('\n').slice(0, 6).join(' / ')}`)
        else features.push(feature)
      }
      built = build(genDir, features, 'dev', targetDir)
      if (built.error) throw new Error(`memory_range does not build:\n${built.error}`)
      for (const failure of failing) notes.push(`does not build against the generator (API changed upstream): ${failure}`)
    }
    const areas = run(built.binary, ['areas']).stdout.trim().split('\n')
    const wrapping = build(genDir, features, 'wrapping', targetDir)

    const vectors = path.join(scratch, 'vectors')
    const commitArgs = pieces.flatMap((piece) => ['--commit', `${piece}=${commits[piece]}`])
    run(built.binary, ['generate', '--out', vectors, '--seed', values.seed, '--scale', values.scale, ...commitArgs])
    const releaseCounts = {}
    for (const area of areas) {
      const file = path.join(vectors, `${area}.json`)
      if (wrapping.binary) {
        const outcomes = path.join(scratch, `${area}.release.jsonl`)
        run(wrapping.binary, ['evaluate', '--in', file, '--out', outcomes])
        releaseCounts[area] = mergeRelease(file, fs.readFileSync(outcomes, 'utf8'))
      }
    }
    // The areas the original could not provide keep the committed files, so the tests run.
    for (const area of AREAS) {
      if (!areas.includes(area)) fs.copyFileSync(path.join(repoRoot, 'conformance', `${area}.json`), path.join(vectors, `${area}.json`))
    }

    const replayReport = path.join(scratch, 'replay.json')
    run(built.binary, ['replay', '--vectors', path.join(repoRoot, 'conformance'), '--report', replayReport])
    const replay = JSON.parse(fs.readFileSync(replayReport, 'utf8'))

    const rust = runTests('cargo', ['test', '--quiet', '-p', 'memory_range', '-p', 'vm_topology', '-p', 'underhill_mem', '--test', 'conformance', '--', '--nocapture'], vectors, repoRoot)
    let js = null
    if (!values['skip-js']) {
      if (fs.existsSync(path.join(repoRoot, 'dist/index.js'))) js = runTests('npx', ['ava', '__test__/conformance.test.js', '--verbose'], vectors, repoRoot)
      else notes.push('JavaScript conformance tests not run: build the package first (npm run build)')
    }

    report.push('| area | generated cases | expected_release | committed cases reproduced by the original | Rust tests on the generated set |', '| --- | ---: | ---: | --- | --- |')
    for (const area of AREAS) {
      const generated = areas.includes(area) ? JSON.parse(fs.readFileSync(path.join(vectors, `${area}.json`), 'utf8')).case_count : 'committed copy'
      const replayed = replay.find((r) => r.area === area)
      const reproduced = replayed ? `${replayed.matched}/${replayed.cases}` : 'not run'
      const rustLine = rust.lines.find((line) => line.startsWith(`${area}.json`)) || rust.failures.find((line) => line.startsWith(`${area}.json`)) || '—'
      report.push(`| ${area} | ${generated} | ${releaseCounts[area] ?? '—'} | ${reproduced} | ${rustLine} |`)
      if (replayed && replayed.matched !== replayed.cases) ok = false
    }
    report.push('')
    if (!reportTests(report, 'generated', rust, js)) ok = false
    for (const replayed of replay) {
      for (const difference of replayed.differences.slice(0, 5)) {
        report.push(`- ${replayed.area} case ${difference.id} (${difference.op}): recorded ${JSON.stringify(difference.recorded).slice(0, 300)}, the original now gives ${JSON.stringify(difference.original).slice(0, 300)}`)
      }
    }
    if (rounds) {
      const mutated = path.join(scratch, 'mutated')
      const counts = mutateVectors({ binary: built.binary, vectorsDir: path.join(repoRoot, 'conformance'), outDir: mutated, seed: values.seed, rounds, areas })
      for (const area of AREAS) {
        if (!areas.includes(area)) fs.copyFileSync(path.join(repoRoot, 'conformance', `${area}.json`), path.join(mutated, `${area}.json`))
      }
      const mutatedRust = runTests('cargo', ['test', '--quiet', '-p', 'memory_range', '-p', 'vm_topology', '-p', 'underhill_mem', '--test', 'conformance', '--', '--nocapture'], mutated, repoRoot)
      const mutatedJs = js ? runTests('npx', ['ava', '__test__/conformance.test.js', '--verbose'], mutated, repoRoot) : null
      report.push('', `Mutated committed inputs (${rounds} round(s), seed ${values.seed}), evaluated by the original:`, '')
      report.push('| area | mutated cases | Rust tests |', '| --- | ---: | --- |')
      for (const area of AREAS) {
        const rustLine = mutatedRust.lines.find((line) => line.startsWith(`${area}.json`)) || mutatedRust.failures.find((line) => line.startsWith(`${area}.json`)) || '—'
        report.push(`| ${area} | ${counts[area] ?? 'committed copy'} | ${rustLine} |`)
      }
      report.push('')
      if (!reportTests(report, 'mutated', mutatedRust, mutatedJs)) ok = false
    }
    if (notes.length) report.push('', 'What differs upstream:', '', ...notes.map((note) => `- ${note}`))
    if (values.keep) report.push('', `Generated vectors kept in \`${vectors}\`${values.mutate ? ` (mutated ones beside it, in \`${path.join(scratch, 'mutated')}\`)` : ''}.`)
  } finally {
    if (!values.keep) fs.rmSync(scratch, { recursive: true, force: true })
  }
  const text = report.join('\n') + '\n'
  process.stdout.write(text)
  if (values.summary) fs.appendFileSync(values.summary, text)
  process.exitCode = ok ? 0 : 1
}

main()
