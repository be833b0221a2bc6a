// Bad input (issue 7): fast-check property tests over every JS entry point — every exported
// function, every class's constructor, static members and prototype members (getters and
// Symbol.dispose/asyncDispose included), enumerated from the package at run time — called with
// random JavaScript values: numbers (NaN, ±Infinity, -0, negative, fractional, huge), bigints
// (negative, above 2^64-1), strings, objects, arrays, null/undefined, symbols, functions of
// every shape (throwing, rejecting, re-entering the package, returning the hook answers and
// nonsense), hostile objects (throwing getters, Proxies, throwing iterators, a fake MemoryRange)
// and valid objects of the package in the wrong places. Two composite entry points run random
// hooks while an operation is under way (GuestMemory over a SparseMapping whose pages fault,
// the registrar's callback). Returned Promises are awaited, iterators drained, results with
// close() closed. A deterministic sweep adds, for every entry point and each of its first four
// argument positions, ~30 values that break naive stringification and validation.
//
// The property: the process never crashes or hangs, and every throw or rejection is an Error
// with a string `code` that is a TypeError/RangeError (arguments) or a MembackingError — or is
// exactly what one of the test's own callbacks threw. The calls run in child processes
// (fixtures/stress/fuzz_child.js, one per group of entry points): a crash is seen as the child
// dying, and the call in progress is read from its journal file.
//
// Violations the fuzzing found have deterministic reproductions below: plain tests for those
// since fixed, test.failing for those still open (it passes while the problem exists; make it a
// plain test once fixed). Open ones are also listed in the child (KNOWN) and counted, not
// failed on, so a run keeps looking for new ones.
//
// Runs: 10,000 calls per group, 3,000 in CI (CI set); MEMBACKING_FUZZ_RUNS overrides;
// MEMBACKING_FUZZ_SEED replays a run (the seed is logged).
'use strict';
const test = require('ava');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn } = require('node:child_process');
const mb = require('../dist');

const CHILD = path.join(__dirname, 'fixtures', 'stress', 'fuzz_child.js');
/** Random groups, and `sweep`: every entry point with each of ~30 values that break naive
 *  stringification and validation (null-prototype objects, Symbols, a fake MemoryRange, alone
 *  and inside option and change objects) at each of the first four argument positions. */
const GROUPS = ['ranges', 'memory', 'manager', 'partitions', 'hooks', 'sweep'];
const RUNS = Number(process.env.MEMBACKING_FUZZ_RUNS ?? (process.env.CI ? 3000 : 10_000));
/** The child's time budget: it stops there (reporting `interrupted`) on a loaded machine. */
const BUDGET_MS = Number(process.env.MEMBACKING_FUZZ_BUDGET_MS ?? 60_000);
/** Past the budget, a child still running is wedged (a call's own hang limit is 15 s). */
const KILL_AFTER_MS = BUDGET_MS + 45_000;

/** Runs the fuzz child; resolves {status, signal, stdout, stderr, journal}. */
function runChild(group, runs, seed) {
  const journal = path.join(os.tmpdir(), `membacking-fuzz-${process.pid}-${group}-${seed}.txt`);
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CHILD, group, String(runs), String(seed), journal, String(BUDGET_MS)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), KILL_AFTER_MS);
    child.on('close', (status, signal) => {
      clearTimeout(timer);
      let last = '';
      try {
        last = fs.readFileSync(journal, 'utf8');
        fs.rmSync(journal, { force: true });
      } catch {
        // The child removes its journal when it finishes normally.
      }
      resolve({ status, signal, stdout, stderr, journal: last });
    });
  });
}

for (const group of GROUPS) {
  const what = group === 'sweep' ? 'sweep: every entry point with nasty values at each argument position' : `fuzz ${group}: random values`;
  test(`${what} never crash or hang, and every throw is a coded error`, async (t) => {
    t.timeout(KILL_AFTER_MS + 10_000);
    const seed = Number(process.env.MEMBACKING_FUZZ_SEED ?? Math.floor(Math.random() * 0x7fff_ffff));
    const outcome = await runChild(group, RUNS, seed);
    const where = `(seed ${seed}; replay: MEMBACKING_FUZZ_SEED=${seed} MEMBACKING_FUZZ_RUNS=${RUNS} npx ava ${path.relative(process.cwd(), __filename)})`;
    t.is(outcome.signal, null, `the fuzz child crashed with ${outcome.signal} ${where} during: ${outcome.journal}\n${outcome.stderr}`);
    t.not(outcome.status, 4, `an unhandled rejection ended the fuzz child ${where}: ${outcome.stderr}\nduring: ${outcome.journal}`);
    const lines = outcome.stdout.trim().split('\n').filter(Boolean);
    if (lines.length === 0) {
      t.fail(`the fuzz child ended (status ${outcome.status}) without a report ${where}: ${outcome.stderr}\nduring: ${outcome.journal}`);
      return;
    }
    const summary = JSON.parse(lines[lines.length - 1]);
    t.log(`${summary.entryPoints} entry points, ${summary.calls.total} calls in ${(summary.ms / 1000).toFixed(1)} s ${where}`);
    t.log(`threw ${summary.calls.threw}, returned ${summary.calls.returned}; codes ${JSON.stringify(summary.codes)}`);
    const knownSeen = Object.entries(summary.known).filter(([, n]) => n > 0);
    if (knownSeen.length > 0) t.log(`known (reported) problems met: ${JSON.stringify(Object.fromEntries(knownSeen))}`);
    t.false(summary.failed, `a call broke the rule ${where}: ${summary.counterexample}\n${summary.error}`);
    t.is(outcome.status, 0, outcome.stderr);
    // The run reached the entry points: most calls ran (all that fit the budget on a loaded
    // machine), some returned and some threw.
    if (summary.interrupted) t.log(`the ${BUDGET_MS / 1000} s budget ended the run after ${summary.calls.total} calls`);
    else t.true(summary.calls.total >= RUNS * 0.9, `only ${summary.calls.total} of ${RUNS} calls ran (${summary.calls.skipped} skipped)`);
    t.true(summary.calls.returned > 0 && summary.calls.threw > 0, JSON.stringify(summary.calls));
  });
}

test('the fuzzed entry points cover every class and function of the public API', async (t) => {
  // The child enumerates members itself and refuses to start when a class has instance members
  // but no receiver; here the listing is checked against the exported names.
  const names = new Set();
  for (const group of GROUPS.filter((g) => g !== 'sweep')) {
    const { stdout, status, stderr } = await runChild(group, 1, 1);
    t.is(status, 0, stderr);
    for (const name of JSON.parse(stdout.trim().split('\n').pop()).entryNames) names.add(name);
  }
  const expected = [
    'range()', 'walkRanges()', 'overlappingRanges()', 'subtractRanges()', 'flattenRanges()', 'mergeAdjacentRanges()', 'x86LegacyRamRanges()',
    'initialize()', 'handlerStatus()', 'MemoryRange.tryNew', 'MemoryRange#splitAtOffset', 'AlignedSubranges#next', 'MemoryLayout.fromRanges',
    'MemoryLayout#endOfRamOrMmio (get)', 'new MemoryRegistrar', 'MemoryRegistrar#register', 'new SparseMapping', 'SparseMapping#mapFile',
    'SparseMapping.fromHandle', 'Mappable.fromFd', 'GuestMemory.fromSparseMapping', 'GuestMemory.fromHandle', 'GuestMemory#compareExchangeU64 (managerMemory)',
    'GuestMemory#readRange (viewMemory)', 'GuestMemory#readAtAsync (heapMemory)', 'LockedPages#readAt', 'GuestMemoryBuilder#build',
    'GuestMemoryManager#attachPartition', 'GuestMemoryManager#plan', 'GuestMemoryClient.fromHandle', 'SharedMemoryBacking.fromMappable',
    'RamVisibilityControl#setRamVisibility', 'DeviceMemoryMapper#newRegion', 'DeviceMemoryRegion#map', 'DeviceMemoryControl#mapToGuest',
    'RecordingPartition#failOn', 'KvmPartition.create', 'KvmPartition#createVcpu', 'Vcpu#run', 'Vcpu#completeRead', 'Vcpu#setRegisters',
    // The well-known symbols' names differ between Node versions (Node 22 polyfills them).
    `GuestMemoryManager#${String(Symbol.asyncDispose)}`, `SparseMapping#${String(Symbol.dispose)}`,
  ];
  for (const name of expected) t.true(names.has(name), `${name} is fuzzed`);
  t.true(names.size > 250, `${names.size} entry points`);
});

// ─── problems the fuzzing found (open ones: see KNOWN in fixtures/stress/fuzz_child.js) ─────

/** Asserts `f` throws a coded error. */
function assertCoded(t, f) {
  let error;
  try {
    f();
  } catch (caught) {
    error = caught;
  }
  t.truthy(error, 'expected a throw');
  t.is(typeof error?.code, 'string', `${error?.constructor?.name}: ${error?.message}`);
  t.true(error instanceof TypeError || error instanceof RangeError || error instanceof mb.MembackingError);
}

test('reported: RecordingPartition#failOn with an op that cannot become a string throws a coded TypeError', (t) => {
  // The argument error's message is built with String(op), which itself throws for a
  // null-prototype object, a Symbol or a fake MemoryRange.
  const partition = new mb.RecordingPartition();
  assertCoded(t, () => partition.failOn(Object.create(null), 0));
  assertCoded(t, () => partition.failOn(Symbol('op'), 0));
});

test('reported: new Mappable() is refused with ERR_INVALID_ARG_TYPE like the other non-constructible classes', (t) => {
  const error = t.throws(() => new mb.Mappable());
  t.is(error?.code, 'ERR_INVALID_ARG_TYPE', `${error?.constructor?.name}: ${error?.message}`);
});

test('reported: a fake MemoryRange (Object.create(MemoryRange.prototype)) as a range argument is a coded error', async (t) => {
  const manager = await new mb.GuestMemoryBuilder().build(mb.MemoryLayout.new(mb.MiB, [mb.range(2n * mb.MiB, 4n * mb.MiB)]));
  try {
    const fake = Object.create(mb.MemoryRange.prototype);
    for (const pending of [() => manager.decommitRam(fake), () => manager.ramVisibilityControl().setRamVisibility(fake, mb.RamVisibility.Unmapped)]) {
      const error = await pending().then(() => null, (e) => e);
      t.is(typeof error?.code, 'string', `${error?.constructor?.name}: ${error?.message}`);
    }
  } finally {
    await manager.close();
  }
});

/** Runs `script` in a child node process; resolves {status, out}. */
function runScript(script) {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    p.on('close', (status) => resolve({ status, out }));
  });
}

test('reported: a page-fault hook that returns a rejected Promise does not end the process (unhandled rejection)', async (t) => {
  // The hook's answer (a Promise) is refused with a coded error; its rejection used to be left
  // unhandled, and Node ended the process.
  const script = `
    const mb = require(${JSON.stringify(path.join(__dirname, '..', 'dist'))});
    const mapping = new mb.SparseMapping(1n << 20n);
    mapping.alloc(0, 4096);
    const memory = mb.GuestMemory.fromSparseMapping(mapping, { pageFault: async () => { throw new Error('async hook failed'); } });
    try { memory.readU8(8192); } catch (error) { console.log('refused', error.code); }
    setTimeout(() => console.log('alive'), 100);`;
  const child = await runScript(script);
  t.log(child.out.split('\n').slice(0, 2).join(' | '));
  t.is(child.status, 0, child.out);
  t.true(child.out.includes('alive'));
});

test('reported: a fallback or lockGpns hook that returns a rejected Promise does not end the process', async (t) => {
  // Like pageFault before its fix: readFallback, writeFallback, fillFallback,
  // compareExchangeFallback and lockGpns must answer synchronously, but a Promise answer is not
  // refused (writeAt/fillAt report success, lockGpns locks) and its rejection is left unhandled.
  const dist = JSON.stringify(path.join(__dirname, '..', 'dist'));
  const cases = {
    readFallback: 'memory.read(8192, 4)',
    writeFallback: 'memory.writeAt(8192, Buffer.alloc(4))',
    fillFallback: 'memory.fillAt(8192, 1, 4)',
    compareExchangeFallback: 'memory.compareExchangeU32(8192, 0, 1)',
    lockGpns: 'memory.lockGpns([0])',
  };
  for (const [hook, access] of Object.entries(cases)) {
    const { status, out } = await runScript(`
      const mb = require(${dist});
      const mapping = new mb.SparseMapping(1n << 20n);
      mapping.alloc(0, 4096);
      const memory = mb.GuestMemory.fromSparseMapping(mapping, { pageFault: () => 'fallback', ${hook}: async () => { throw new Error('async ${hook} failed'); } });
      try { ${access}; console.log('no error'); } catch (error) { console.log('refused', error.code); }
      setTimeout(() => console.log('alive'), 100);`);
    t.is(status, 0, `${hook}: ${out}`);
    t.true(out.includes('refused'), `${hook}: a Promise answer is refused with a coded error (${out.split('\n')[0]})`);
  }
});

test('reported: GuestMemoryManager#plan with a change kind that cannot become a string throws a coded error', async (t) => {
  const manager = await new mb.GuestMemoryBuilder().build(mb.MemoryLayout.new(mb.MiB, [mb.range(2n * mb.MiB, 4n * mb.MiB)]));
  try {
    for (const change of [{ kind: Object.create(null) }, { kind: 'ramVisibility', range: mb.range(0, 0x1000), visibility: Object.create(null) }]) {
      const error = await manager.plan(change).then(() => null, (e) => e);
      t.is(typeof error?.code, 'string', `${error?.constructor?.name}: ${error?.message}`);
    }
  } finally {
    await manager.close();
  }
});
