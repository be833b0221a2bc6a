#!/usr/bin/env node
'use strict'
// Runs the original OpenVMM crates' own unit tests against this project's crates.
//
//   node scripts/upstream-tests.js --openvmm PATH [--keep] [--json FILE]
//   npm run conformance:upstream-tests -- --openvmm PATH
//
// PATH is an OpenVMM checkout (a git repository, bare or not, or a plain source tree). For each
// suite below, the script reads the original file at the commit the suite names (git) or as it
// is on disk (plain tree), lifts its `#[cfg(test)] mod tests` module out, applies the rewrite
// table to its `use` lines only, and appends it (renamed `upstream_tests`) to the matching file
// of a scratch copy of this repository's crates in a temporary folder. Then it builds and runs
// each crate's tests there. A test whose code does not compile against our public API is
// switched off with `#[cfg(any())]` (with the compiler's first message), and the build is
// retried, so every test that does compile still runs. The report gives, per suite, how many of
// the original's tests compiled and how many passed.
//
// Nothing is fetched and nothing is written into the repository: the scratch folder is removed
// at the end unless --keep is given. docs/conformance.md records a run.

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { execFileSync, spawnSync } = require('node:child_process')
const { parseArgs } = require('node:util')
const { findTestModule, moduleItems } = require('./rust-source')

const repoRoot = path.resolve(__dirname, '..')
const pins = JSON.parse(fs.readFileSync(path.join(repoRoot, 'conformance/upstream-pins.json'), 'utf8')).areas

// The rewrite table: the only changes made to the original's test modules, applied to `use`
// lines (exact line match after trimming). Each entry says why. An empty table means the
// module's `use` lines compile unchanged.
const SUITES = [
  {
    name: 'memory_range',
    crate: 'memory_range',
    commit: pins.memory_range.commit,
    source: 'vm/vmcore/memory_range/src/lib.rs',
    target: 'crates/memory_range/src/lib.rs',
    rewrites: [],
  },
  {
    name: 'vm_topology::memory',
    crate: 'vm_topology',
    commit: pins.vm_topology.commit,
    source: 'vm/vmcore/vm_topology/src/memory.rs',
    target: 'crates/vm_topology/src/memory.rs',
    rewrites: [],
  },
  {
    name: 'underhill_mem::registrar',
    crate: 'underhill_mem',
    commit: pins.registrar.commit,
    source: 'openhcl/underhill_mem/src/registrar.rs',
    target: 'crates/underhill_mem/src/registrar.rs',
    rewrites: [],
  },
  {
    name: 'guestmem (lib.rs)',
    crate: 'guestmem',
    commit: pins.guest_memory.commit,
    source: 'vm/vmcore/guestmem/src/lib.rs',
    target: 'crates/guestmem/src/lib.rs',
    rewrites: [],
  },
  {
    name: 'guestmem (lib.rs) --features bitmap',
    crate: 'guestmem',
    features: ['bitmap'],
    commit: pins.guest_memory.commit,
    source: 'vm/vmcore/guestmem/src/lib.rs',
    target: 'crates/guestmem/src/lib.rs',
    rewrites: [],
  },
  {
    name: 'guestmem::ranges',
    crate: 'guestmem',
    commit: pins.guest_memory.commit,
    source: 'vm/vmcore/guestmem/src/ranges.rs',
    target: 'crates/guestmem/src/ranges.rs',
    rewrites: [
      // The original's ranges.rs defines the types and imports PAGE_SIZE from the crate root;
      // ours re-exports the types, so `super::*` lacks PAGE_SIZE: import it as well.
      ['use super::*;', 'use super::*;\n    use crate::PAGE_SIZE;'],
    ],
  },
  {
    name: 'sparse_mmap',
    crate: 'sparse_mmap',
    commit: pins.guest_memory.commit,
    source: 'support/sparse_mmap/src/lib.rs',
    target: 'crates/sparse_mmap/src/lib.rs',
    rewrites: [],
  },
  {
    name: 'membacking va_mapper',
    crate: 'membacking',
    commit: pins.guest_memory.commit,
    source: 'openvmm/membacking/src/mapping_manager/va_mapper.rs',
    target: 'crates/membacking/src/mapping_manager/va_mapper.rs',
    rewrites: [],
  },
]

// The original's tests that are not attempted, with the reason (they test private internals
// of the original, not its public API).
const OUT_OF_SCOPE = [
  ['trycopy (src/lib.rs): 5 tests', "use the original's private primitives (try_memmove, try_read8.., LAST_ACCESS_FAILURE, AccessFailure), not its public API"],
  ['sparse_mmap (src/alloc.rs): test_alloc_free', "calls the original's private `sys` module"],
  ['sparse_mmap (src/windows.rs): 2 tests', 'Windows only'],
  ['membacking mapping_manager/manager.rs: 2 tests, region_manager.rs: 1 test', "async tasks driven by pal_async (not on crates.io) through the original's private region/mapping task types"],
]

// Tests of the original that fail here because of a documented, deliberate difference
// (docs/deviations.md): they are reported as such and do not fail the run.
const KNOWN_DEVIATIONS = {
  test_fault: "PagedRange probes read one byte per page here; the original's probes read zero bytes, and its test expects a probe over an inaccessible page to pass (docs/deviations.md, probe)",
}

function usage(message) {
  if (message) console.error(message)
  console.error('usage: node scripts/upstream-tests.js --openvmm PATH [--keep] [--json FILE]')
  process.exit(2)
}

function isGitCheckout(dir) {
  const result = spawnSync('git', ['-C', dir, 'rev-parse', '--git-dir'], { encoding: 'utf8' })
  return result.status === 0
}

/** The text of `file` at `commit` in a git checkout, or on disk in a plain tree. */
function readUpstream(openvmm, git, commit, file) {
  if (git) {
    return execFileSync('git', ['-C', openvmm, 'show', `${commit}:${file}`], {
      encoding: 'utf8',
      maxBuffer: 64 << 20,
    })
  }
  return fs.readFileSync(path.join(openvmm, file), 'utf8')
}

/** A scratch workspace holding a copy of this repository's crates (no napi binding). */
function makeScratch(dir) {
  const manifest = fs.readFileSync(path.join(repoRoot, 'Cargo.toml'), 'utf8')
  const workspacePart = manifest.slice(0, manifest.indexOf('\n[package]'))
  const members = /members = \[[^\]]*\]/
  if (!members.test(workspacePart)) throw new Error('Cargo.toml: no workspace members list')
  const profile = '\n[profile.dev]\nopt-level = 1\n'
  fs.writeFileSync(path.join(dir, 'Cargo.toml'), workspacePart.replace(members, 'members = ["crates/*"]').replace(/\nexclude = \[[^\]]*\]/, '') + profile)
  fs.copyFileSync(path.join(repoRoot, 'Cargo.lock'), path.join(dir, 'Cargo.lock'))
  fs.cpSync(path.join(repoRoot, 'crates'), path.join(dir, 'crates'), {
    recursive: true,
    filter: (source) => !source.split(path.sep).includes('target'),
  })
}

/** Applies the rewrite table to the `use` lines of a module; returns the new text. */
function rewriteUses(moduleText, rewrites) {
  const used = new Set()
  const lines = moduleText.split('\n').map((line) => {
    const trimmed = line.trim()
    if (!trimmed.startsWith('use ')) return line
    for (const [from, to] of rewrites) {
      if (trimmed === from) {
        used.add(from)
        return line.slice(0, line.indexOf(trimmed)) + to
      }
    }
    return line
  })
  for (const [from] of rewrites) {
    if (!used.has(from)) throw new Error(`rewrite table: no \`use\` line \`${from}\` in the module`)
  }
  return lines.join('\n')
}

/** The module text prepared for pasting: renamed, `use` lines rewritten. */
function prepareModule(upstreamText, suite) {
  const found = findTestModule(upstreamText)
  if (!found) throw new Error(`${suite.source}: no #[cfg(test)] mod tests`)
  const text = upstreamText.slice(found.start, found.end).replace(/\nmod tests \{/, '\nmod upstream_tests {')
  return rewriteUses(text, suite.rewrites)
}

/** Test function names of a prepared module (every `#[test]` item, compiled or not). */
function testItems(moduleText) {
  const open = moduleText.indexOf('{', moduleText.indexOf('mod upstream_tests'))
  const bodyStart = open + 1
  const body = moduleText.slice(bodyStart, moduleText.lastIndexOf('}'))
  return moduleItems(body).map((item) => ({ ...item, start: item.start + bodyStart, end: item.end + bodyStart }))
}

function cargo(args, cwd, env) {
  return spawnSync('cargo', args, { cwd, env: { ...process.env, ...env }, encoding: 'utf8', maxBuffer: 256 << 20 })
}

/** Compiler errors located in `file` (relative path): `{line, message}` with 1-based lines. */
function compileErrors(output, file) {
  const errors = []
  for (const line of output.split('\n')) {
    if (!line.startsWith('{')) continue
    let message
    try {
      message = JSON.parse(line)
    } catch {
      continue
    }
    if (message.reason !== 'compiler-message' || message.message.level !== 'error') continue
    const spans = message.message.spans.filter((span) => span.file_name.endsWith(file))
    const primary = spans.find((span) => span.is_primary) || spans[0]
    errors.push({ line: primary ? primary.line_start : null, message: message.message.message, rendered: message.message.rendered })
  }
  return errors
}

/**
 * Builds a suite, switching off items that do not compile, then runs it. Returns the per-test
 * outcome.
 */
function runSuite(scratch, suite, upstreamText, targetDir, log) {
  const targetFile = path.join(scratch, suite.target)
  const original = fs.readFileSync(targetFile, 'utf8')
  let moduleText = prepareModule(upstreamText, suite)
  const allTests = testItems(moduleText).filter((item) => item.isTest)
  const disabled = []
  const featureArgs = suite.features ? ['--features', suite.features.join(',')] : []
  const env = { CARGO_TARGET_DIR: targetDir, RUSTFLAGS: '--cap-lints=warn' }
  try {
    for (let attempt = 0; attempt < 40; attempt++) {
      const prefix = original.endsWith('\n') ? original : original + '\n'
      fs.writeFileSync(targetFile, `${prefix}\n${moduleText}\n`)
      const moduleLine = prefix.split('\n').length + 1
      const build = cargo(['test', '-p', suite.crate, ...featureArgs, '--lib', '--no-run', '--message-format=json'], scratch, env)
      if (build.status === 0) break
      const errors = compileErrors(build.stdout, suite.target)
      const located = errors.filter((error) => error.line !== null && error.line >= moduleLine)
      if (located.length === 0) {
        const first = errors[0] ? errors[0].rendered : build.stderr.slice(-4000)
        throw new Error(`${suite.name}: the build fails outside the pasted module:\n${first}`)
      }
      // Switch off every item holding an error (the first error of each is kept as the reason).
      const items = testItems(moduleText)
      const offsets = lineOffsets(moduleText)
      const toDisable = new Map()
      for (const error of located) {
        const offset = offsets[error.line - moduleLine]
        const item = items.find((candidate) => candidate.start <= offset && offset < candidate.end)
        if (!item) throw new Error(`${suite.name}: an error outside any item: ${error.rendered}`)
        if (!toDisable.has(item.start)) toDisable.set(item.start, { item, error })
      }
      for (const { item, error } of [...toDisable.values()].sort((a, b) => b.item.start - a.item.start)) {
        disabled.push({ head: item.head, isTest: item.isTest, reason: error.message })
        moduleText = `${moduleText.slice(0, item.start)}#[cfg(any())] // upstream-tests: does not compile\n${moduleText.slice(item.start)}`
      }
      log(`  ${suite.name}: switched off ${toDisable.size} item(s) that do not compile; rebuilding`)
    }
    const run = cargo(['test', '-p', suite.crate, ...featureArgs, '--lib', '--', 'upstream_tests::', '--test-threads=2'], scratch, env)
    const results = new Map()
    for (const match of run.stdout.matchAll(/^test (\S*upstream_tests::(\S+))(?: - should panic)? \.\.\. (ok|FAILED|ignored)/gm)) {
      results.set(match[2], match[3])
    }
    const failures = [...run.stdout.matchAll(/^---- (\S+) stdout ----\n([\s\S]*?)(?=\n---- |\nfailures:\n\s)/gm)].map((m) => ({ test: m[1], output: m[2].trim().split('\n').slice(0, 6).join('\n') }))
    return {
      suite: suite.name,
      commit: suite.commit,
      source: suite.source,
      total: allTests.length,
      compiled: results.size,
      passed: [...results.values()].filter((v) => v === 'ok').length,
      failed: [...results.entries()].filter(([, v]) => v === 'FAILED').map(([k]) => k),
      notCompiled: disabled,
      notCompiledByCfg: allTests.length - results.size - disabled.filter((d) => d.isTest).length,
      failures,
    }
  } finally {
    fs.writeFileSync(targetFile, original)
  }
}

function lineOffsets(text) {
  const offsets = [0]
  for (let i = 0; i < text.length; i++) if (text[i] === '\n') offsets.push(i + 1)
  return offsets
}

function main() {
  const { values } = parseArgs({
    options: { openvmm: { type: 'string' }, keep: { type: 'boolean' }, json: { type: 'string' }, only: { type: 'string' } },
  })
  if (!values.openvmm) usage('--openvmm PATH is required')
  const openvmm = path.resolve(values.openvmm)
  if (!fs.existsSync(openvmm)) usage(`no such folder: ${openvmm}`)
  const git = isGitCheckout(openvmm)
  const log = (line) => console.error(line)
  if (!git) log(`${openvmm} is not a git checkout: using its files as they are (the pinned commits cannot be selected)`)

  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'membacking-upstream-tests-'))
  const targetDir = process.env.CARGO_TARGET_DIR || path.join(scratch, 'target')
  const reports = []
  try {
    makeScratch(scratch)
    for (const suite of SUITES) {
      if (values.only && !suite.name.includes(values.only)) continue
      log(`${suite.name}: ${suite.source} @ ${git ? suite.commit.slice(0, 12) : 'working tree'}`)
      const text = readUpstream(openvmm, git, suite.commit, suite.source)
      reports.push(runSuite(scratch, suite, text, targetDir, log))
    }
  } finally {
    if (values.keep) log(`scratch folder kept: ${scratch}`)
    else fs.rmSync(scratch, { recursive: true, force: true })
  }

  console.log('| suite | original file @ commit | tests | compiled | passed |')
  console.log('| --- | --- | ---: | ---: | ---: |')
  for (const r of reports) {
    console.log(`| ${r.suite} | \`${r.source}\` @ \`${git ? r.commit.slice(0, 9) : 'tree'}\` | ${r.total} | ${r.compiled} | ${r.passed} |`)
  }
  const total = (key) => reports.reduce((sum, r) => sum + r[key], 0)
  console.log(`| all | | ${total('total')} | ${total('compiled')} | ${total('passed')} |`)
  for (const r of reports) {
    for (const item of r.notCompiled) console.log(`- ${r.suite}: \`${item.head}\` does not compile: ${item.reason}`)
    if (r.notCompiledByCfg > 0) console.log(`- ${r.suite}: ${r.notCompiledByCfg} test(s) compiled out by their own #[cfg] (a feature or platform not enabled in this run)`)
    for (const failure of r.failures) console.log(`- ${r.suite}: ${failure.test} FAILED:\n\n  \`\`\`\n  ${failure.output.replace(/\n/g, '\n  ')}\n  \`\`\``)
  }
  console.log('\nNot attempted (out of scope):')
  for (const [what, why] of OUT_OF_SCOPE) console.log(`- ${what}: ${why}`)
  if (values.json) fs.writeFileSync(values.json, JSON.stringify({ reports, outOfScope: OUT_OF_SCOPE }, null, 2) + '\n')
  const unexpected = reports.flatMap((r) => r.failed.filter((name) => !KNOWN_DEVIATIONS[name]))
  for (const r of reports) {
    for (const name of r.failed.filter((n) => KNOWN_DEVIATIONS[n])) console.log(`- ${r.suite}: ${name} fails by a documented deviation: ${KNOWN_DEVIATIONS[name]}`)
  }
  const passedAll = unexpected.length === 0
  process.exitCode = passedAll ? 0 : 1
}

if (require.main === module) main()

module.exports = { SUITES, OUT_OF_SCOPE, prepareModule, rewriteUses }
