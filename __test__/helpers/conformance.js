// Loads the conformance vectors recorded from the original (the repository's conformance/ folder,
// or MEMBACKING_CONFORMANCE_DIR) and compares outcomes the way their README says.
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const repoRoot = path.resolve(__dirname, '..', '..');
const conformanceDir = process.env.MEMBACKING_CONFORMANCE_DIR || path.resolve(repoRoot, 'conformance');

/** Reads one vector file; throws (failing the test) when the folder or file is missing. */
function load(fileName) {
  const file = path.join(conformanceDir, fileName);
  if (!fs.existsSync(file)) {
    throw new Error(`conformance vectors are required: ${file} is missing (the repository's conformance/ folder, or set MEMBACKING_CONFORMANCE_DIR)`);
  }
  const parsed = JSON.parse(fs.readFileSync(file, 'utf8'));
  if (parsed.case_count !== parsed.cases.length) throw new Error(`${fileName}: case_count mismatch`);
  return parsed;
}

const hex = (value) => `0x${value.toString(16)}`;
const big = (text) => BigInt(text);
const rangeJson = (r) => ({ start: hex(r.start), end: hex(r.end) });
const rangeIn = (j) => ({ start: big(j.start), end: big(j.end) });

/** The outcome to compare against: `expected_project` where the project deviates on purpose. */
const expectedOf = (c) => c.expected_project ?? c.expected;

/** Deep copy without the informational `panic_message` fields. */
function strip(value) {
  if (Array.isArray(value)) return value.map(strip);
  if (value && typeof value === 'object') {
    const out = {};
    for (const [k, v] of Object.entries(value)) if (k !== 'panic_message') out[k] = strip(v);
    return out;
  }
  return value;
}

/**
 * Whether a thrown error is an acceptable stand-in for a Rust panic: a RangeError/TypeError or a
 * coded error. Anything else (a plain bug in the layer) is reported.
 */
function isPanicLike(error) {
  return error instanceof Error && typeof error.code === 'string';
}

/** Runs f: `{ok: value}` style results are built by the caller; a panic-like throw → panic. */
function outcome(f) {
  try {
    return f();
  } catch (error) {
    if (!isPanicLike(error)) throw error;
    return { panic: true };
  }
}

/** Counts passes of one file; `finish` prints `conformance <file>: N cases, M passed`. */
class Tally {
  constructor(t, file) {
    this.t = t;
    this.file = file;
    this.total = 0;
    this.passed = 0;
    this.failures = [];
  }

  check(c, actual) {
    this.total += 1;
    const want = JSON.stringify(strip(expectedOf(c)));
    const got = JSON.stringify(strip(actual));
    if (want === got) this.passed += 1;
    else if (this.failures.length < 5) this.failures.push(`case ${c.id} (${c.category}) input ${JSON.stringify(c.input)}\n  expected ${want}\n  actual   ${got}`);
  }

  finish() {
    const line = `conformance ${this.file}: ${this.total} cases, ${this.passed} passed`;
    console.log(line);
    this.t.log(line);
    this.t.true(this.total > 0, 'no case checked');
    this.t.is(this.passed, this.total, this.failures.join('\n'));
  }
}

module.exports = { load, hex, big, rangeJson, rangeIn, strip, outcome, isPanicLike, Tally, conformanceDir };
