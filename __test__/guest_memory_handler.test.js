// The process-wide fault handler from JavaScript: WebAssembly traps keep working,
// foreign faults still kill with SIGSEGV, installation is idempotent, process.on('SIGSEGV')
// listeners never make a guest access hang, a displacement the package does not see is
// followed by re-arming with one warning, and installation is lazy.
// Everything that can kill the process or change its dispositions for good runs in a child.
'use strict';
const test = require('ava');
const mb = require('../dist');
const { runChild, fixture, wasmLoad } = require('./fixtures/memory');

const child = fixture('handler_child.js');

/** The JSON lines a child printed. */
function findings(result) {
  return result.stdout
    .trim()
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line));
}

test('in this process: after initialize(), a wasm out-of-bounds load is a catchable RuntimeError', (t) => {
  mb.initialize();
  t.is(mb.handlerStatus(), 'installed');
  const load = wasmLoad();
  for (let i = 0; i < 50; i++) t.throws(() => load(65536), { instanceOf: WebAssembly.RuntimeError });
  t.is(load(65532), 0);
  // Our own recoverable faults keep working in between.
  const mapping = new mb.SparseMapping(4096);
  t.throws(() => mapping.readAt(0, Buffer.alloc(1)), { code: 'ERR_MEMORY' });
  t.throws(() => load(1 << 30), { instanceOf: WebAssembly.RuntimeError });
});

for (const flags of [[], ['--disable-wasm-trap-handler']]) {
  const label = flags.length ? ' (--disable-wasm-trap-handler)' : '';

  test(`in a fresh process${label}: wasm traps before and after initialize()`, async (t) => {
    const result = await runChild(child, { nodeArgs: flags, args: ['wasm'] });
    t.is(result.status, 0, result.stderr);
    const [f] = findings(result);
    t.is(f.before, 'RuntimeError');
    t.is(f.status, 'installed');
    t.deepEqual(f.after, Array(10).fill('RuntimeError'));
    t.is(f.guarded, 'ERR_MEMORY/SIGSEGV/2');
    t.is(f.afterGuarded, 'RuntimeError');
  });

  // A fault handler that recursed on the foreign fault would never end: runChild's time limit
  // (a hang guard) catches that. No duration is asserted: a loaded machine is slow, not wrong.
  test(`a fault outside our routines kills the child with SIGSEGV, not SIGABRT${label}`, async (t) => {
    const result = await runChild(child, { nodeArgs: flags, args: ['foreign'] });
    t.is(result.signal, 'SIGSEGV', `status ${result.status}, stderr: ${result.stderr}`);
    const lines = findings(result);
    t.deepEqual(lines, [{ status: 'installed', guarded: 'ERR_MEMORY/SIGSEGV/2' }]);
  });

  test(`process.kill(process.pid, 'SIGSEGV') still kills with SIGSEGV${label}`, async (t) => {
    const result = await runChild(child, { nodeArgs: flags, args: ['kill'] });
    t.is(result.signal, 'SIGSEGV', `status ${result.status}, stderr: ${result.stderr}`);
    t.deepEqual(findings(result), [{ status: 'installed', guarded: 'ERR_MEMORY/SIGSEGV/2' }]);
  });
}

test('initialize() 100 times and mappings in several workers: one handler, and a foreign fault still kills at once', async (t) => {
  const result = await runChild(child, { args: ['idempotent'] });
  t.is(result.signal, 'SIGSEGV', `status ${result.status}, stderr: ${result.stderr}`);
  const [f, ...rest] = findings(result);
  t.deepEqual(rest, []);
  t.is(f.status, 'installed');
  t.deepEqual(f.fromWorkers, Array(3).fill({ code: 'ERR_MEMORY', status: 'installed' }));
  t.is(f.guarded, 'ERR_MEMORY/SIGSEGV/2');
  t.is(f.wasm, 'RuntimeError');
  // Self-recursion on the foreign fault would hang the child: runChild's time limit catches it.
});

test('an unseen displacement (libuv handler without our listener hooks) is re-armed by new mappings, memories, subranges and initialize(), warning once', async (t) => {
  let result = await runChild(child, { args: ['displace'] });
  if (result.status !== 0 || findings(result).length === 0) {
    // Seen once in CI under heavy load from other processes; keep the evidence and retry once.
    t.log(`first attempt: status ${result.status} signal ${result.signal}\n${result.stdout}\n${result.stderr}`);
    result = await runChild(child, { args: ['displace'] });
  }
  t.is(result.status, 0, result.stderr);
  const found = findings(result);
  t.is(found.length, 1, `the child reported nothing: ${result.stdout}\n${result.stderr}`);
  if (found.length !== 1) return;
  const [{ steps, warnings }] = found;
  t.deepEqual(steps, {
    initial: 'not-installed',
    afterMapping: 'installed',
    first: 'displaced/default',
    afterGuestMemory: 'installed',
    guarded: 'ERR_MEMORY/SIGSEGV/2',
    guestFault: 'ERR_GUEST_MEMORY_FAULT',
    wasm: 'RuntimeError',
    second: 'displaced/default',
    afterInitialize: 'installed',
    third: 'displaced/default',
    afterNewMapping: 'installed',
    fourth: 'displaced/default',
    afterSubrange: 'installed',
    guardedAgain: 'ERR_MEMORY/SIGSEGV/2',
    wasmAgain: 'RuntimeError',
  });
  t.is(warnings.length, 1, JSON.stringify(warnings));
  t.is(warnings[0].name, 'MembackingWarning');
  t.is(warnings[0].code, 'MEMBACKING_HANDLER_REARMED');
  t.regex(warnings[0].message, /reset to the default action/);
});

// The reported hang: a guest access that faulted after process.on('SIGSEGV') spun at 100% CPU
// in libuv's handler. The child has a watchdog: a regression fails as a timeout, not a hang.
test('after process.on(SIGSEGV), faulting guest accesses are errors; kill() still reaches the listener; wasm traps work', async (t) => {
  const result = await runChild(child, { args: ['listening'], timeoutMs: 30000 });
  t.is(result.status, 0, result.stderr);
  const [{ steps, warnings }] = findings(result);
  t.deepEqual(steps, {
    withListener: 'installed',
    lazyPage: '0',
    secondRegionPage: '0',
    gap: 'ERR_GUEST_MEMORY_OUT_OF_RANGE',
    unplaced: 'ERR_GUEST_MEMORY_FAULT',
    placed: '0',
    guarded: 'ERR_MEMORY/SIGSEGV/2',
    wasm: 'RuntimeError',
    received: ['SIGSEGV'],
    afterRemoval: 'installed',
    unplacedAfterRemoval: 'ERR_GUEST_MEMORY_FAULT',
    withBusListener: 'installed',
    unplacedWithBusListener: 'ERR_GUEST_MEMORY_FAULT',
    final: 'installed',
  });
  t.deepEqual(warnings, [], 'a listener the package saw needs no re-arming warning');
});

test('with a SIGSEGV listener present, a fault outside our routines still kills the process (no loop in the listener handler)', async (t) => {
  const result = await runChild(child, { args: ['listening', 'then-fault'], timeoutMs: 30000 });
  t.is(result.signal, 'SIGSEGV', `status ${result.status}, stderr: ${result.stderr}`);
  t.is(findings(result)[0].steps.final, 'installed');
});

// A displacement re-armed, then a foreign fault.
test('after re-arming, a foreign fault still kills with SIGSEGV (the Node chain is kept)', async (t) => {
  const result = await runChild(child, { args: ['displace', 'then-fault'] });
  t.is(result.signal, 'SIGSEGV', `status ${result.status}, stderr: ${result.stderr}`);
  t.is(findings(result)[0].steps.afterSubrange, 'installed');
});

// Re-arming while a process.on('SIGSEGV') listener is present records libuv's handler as
// "previous"; after the listener goes, re-arming over the default disposition must restore the
// handler found at first installation (Node's WebAssembly trap handler), not keep libuv's, or a
// wasm trap would be forwarded to a handler that returns without handling it, forever.
test('re-arming while a SIGSEGV listener is present, then removing it, keeps wasm traps working', async (t) => {
  // The regression loops for ever: runChild's default time limit detects it (8 s before, which a
  // loaded machine's start-up of the child alone can approach).
  const result = await runChild(child, { args: ['rearmWhileListening'] });
  const lines = findings(result);
  t.deepEqual(lines[0].steps, { whileListening: 'installed', guarded: 'ERR_MEMORY/SIGSEGV/2', afterRemoval: 'default', final: 'installed' });
  t.is(lines[1]?.steps.wasm, 'RuntimeError');
});

test('a process that only uses GuestMemory.allocate installs no handler; a SparseMapping does', async (t) => {
  const result = await runChild(child, { args: ['lazy'] });
  t.is(result.status, 0, result.stderr);
  t.deepEqual(findings(result), [
    { value: 7, emptyError: 'ERR_GUEST_MEMORY_OUT_OF_RANGE', onlyAllocate: 'not-installed', heapSub: 7, afterMapping: 'installed' },
  ]);
});

test('the addon is linked -z nodelete (it must never be unloaded while its handler is installed)', (t) => {
  const fs = require('node:fs');
  const path = require('node:path');
  const addon = fs.readdirSync(path.join(__dirname, '..')).find((f) => /^membacking\..*\.node$/.test(f));
  t.truthy(addon, 'a local build of the addon');
  const elf = fs.readFileSync(path.join(__dirname, '..', addon));
  t.true(hasNodeleteFlag(elf), 'DT_FLAGS_1 has DF_1_NODELETE');
});

/** Reads the ELF64 dynamic section and checks DT_FLAGS_1 (0x6ffffffb) for DF_1_NODELETE (0x8). */
function hasNodeleteFlag(elf) {
  const sectionHeaders = Number(elf.readBigUInt64LE(0x28));
  const entrySize = elf.readUInt16LE(0x3a);
  const count = elf.readUInt16LE(0x3c);
  for (let i = 0; i < count; i++) {
    const header = sectionHeaders + i * entrySize;
    if (elf.readUInt32LE(header + 4) !== 6) continue; // SHT_DYNAMIC
    const offset = Number(elf.readBigUInt64LE(header + 0x18));
    const size = Number(elf.readBigUInt64LE(header + 0x20));
    for (let entry = offset; entry < offset + size; entry += 16) {
      if (elf.readBigUInt64LE(entry) === 0x6ffffffbn) return (elf.readBigUInt64LE(entry + 8) & 0x8n) !== 0n;
    }
  }
  return false;
}
