// Option bags refuse keys they do not know: a misspelt option (`{ bse: dir }`, `{ timeoutMS }`)
// used to be ignored, so the call ran with the default (a full snapshot instead of an
// incremental one, a vCPU run without its timeout). Each refusal is a RangeError
// ERR_INVALID_ARG_VALUE naming the key, the nearest accepted one and all of them, thrown before
// anything is done.
'use strict';
const test = require('ava');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { PassThrough } = require('node:stream');
const mb = require('../dist');
const { L1 } = require('./fixtures/manager/common');

const { GuestMemory, GuestMemoryBuilder, KvmPartition, RecordingPartition, SparseMapping, Vtl, verifySnapshot } = mb;

/** The refusal of `key`, suggesting `near`. */
const unknownOption = (key, near) => ({
  instanceOf: RangeError,
  code: 'ERR_INVALID_ARG_VALUE',
  message: new RegExp(`unknown option '${key}' \\(did you mean '${near}'\\?\\); the options are `),
});

test('GuestMemory.fromSparseMapping and prefetchRam refuse a misspelt option; an array is not an options object', (t) => {
  const mapping = new SparseMapping(0x10000);
  t.teardown(() => mapping.close());
  t.throws(() => GuestMemory.fromSparseMapping(mapping, { pagefault: () => 'retry' }), unknownOption('pagefault', 'pageFault'));
  t.throws(() => GuestMemory.fromSparseMapping(mapping, { name: 'x', retrylimit: 5 }), unknownOption('retrylimit', 'retryLimit'));
  t.throws(() => GuestMemory.fromSparseMapping(mapping, []), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  // Every documented key is accepted.
  const memory = GuestMemory.fromSparseMapping(mapping, {
    name: 'm', pageFault: () => 'fallback', retryLimit: 3, readFallback: (gpa, len) => new Uint8Array(Number(len)),
    writeFallback: () => {}, fillFallback: () => {}, compareExchangeFallback: () => true, lockGpns: () => false, unlockGpns: () => {},
  });
  t.is(memory.name, 'm');
  memory.close();
  t.throws(() => new GuestMemoryBuilder().prefetchRam(true, { onprogress: () => {} }), unknownOption('onprogress', 'onProgress'));
});

test('attachPartition refuses a misspelt option and attaches nothing', async (t) => {
  const manager = await new GuestMemoryBuilder().build(L1());
  t.teardown(() => manager.close());
  const partition = new RecordingPartition();
  await t.throwsAsync(manager.attachPartition(Vtl.Vtl0, partition, { remoteProces: 1 }), unknownOption('remoteProces', 'remoteProcess'));
  t.deepEqual(partition.log(), []);
  t.is((await manager.inspect()).mapperCount, 1, 'only the manager\'s own VA mapper');
});

test('snapshot, restore and verifySnapshot refuse a misspelt option before touching the directory', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mb-option-keys-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const manager = await new GuestMemoryBuilder().build(L1());
  t.teardown(() => manager.close());
  const snap = path.join(dir, 'snap');
  await t.throwsAsync(manager.snapshot(snap, { bse: path.join(dir, 'base') }), unknownOption('bse', 'base'));
  t.false(fs.existsSync(snap), 'no snapshot was written');
  await manager.snapshot(snap);
  await t.throwsAsync(GuestMemoryBuilder.restore(snap, { mdoe: 'lazy' }), unknownOption('mdoe', 'mode'));
  await t.throwsAsync(verifySnapshot(snap, { onprogres: () => {} }), unknownOption('onprogres', 'onProgress'));
});

test('migrate and migrateFrom refuse a misspelt option', async (t) => {
  const manager = await new GuestMemoryBuilder().build(L1());
  t.teardown(() => manager.close());
  const stream = new PassThrough();
  t.teardown(() => stream.destroy());
  await t.throwsAsync(manager.migrate(stream, { pause: () => {}, maxRound: 2 }), unknownOption('maxRound', 'maxRounds'));
  await t.throwsAsync(GuestMemoryBuilder.migrateFrom(stream, { sigal: new AbortController().signal }), unknownOption('sigal', 'signal'));
  t.is(stream.writableLength, 0, 'nothing was sent');
});

test('KvmPartition.create, createVcpu and Vcpu#run refuse a misspelt option', async (t) => {
  // Checked before /dev/kvm is opened: runs without KVM too.
  await t.throwsAsync(KvmPartition.create({ disableSlotZapAllquirk: false }), unknownOption('disableSlotZapAllquirk', 'disableSlotZapAllQuirk'));
  let partition;
  try {
    partition = await KvmPartition.create();
  } catch (error) {
    if (error.code !== 'ERR_KVM_UNAVAILABLE') throw error;
    t.log(`createVcpu and run not checked: ${error.message}`);
    return;
  }
  t.teardown(() => partition.close());
  await t.throwsAsync(partition.createVcpu({ mode: 'Real', cp: 0 }), unknownOption('cp', 'cpl'));
  const vcpu = await partition.createVcpu({ mode: 'Real' });
  t.teardown(() => vcpu.close());
  await t.throwsAsync(vcpu.run({ timeoutMS: 10 }), unknownOption('timeoutMS', 'timeoutMs'));
});

test('plan and apply refuse a change with a key its kind does not have, and apply nothing of the batch', async (t) => {
  const manager = await new GuestMemoryBuilder().x86LegacySupport(true).build(L1());
  t.teardown(() => manager.close());
  const partition = new RecordingPartition();
  await manager.attachPartition(Vtl.Vtl0, partition);
  partition.clearLog();
  const vga = { start: 0xa0000, end: 0xc0000 };
  const before = await manager.flatView();
  const hide = { kind: 'ramVisibility', range: vga, visibility: 'Unmapped' };
  const typo = { kind: 'ramVisibility', range: vga, visibility: 'ReadOnly', visibilty: 'ReadWrite' };
  const refused = { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE', message: /^changes\[1\] \(ramVisibility\): unknown key 'visibilty' \(did you mean 'visibility'\?\); the keys are 'kind', 'range', 'visibility'$/ };
  await t.throwsAsync(manager.apply([hide, typo]), refused);
  await t.throwsAsync(manager.plan([hide, typo]), refused);
  await t.throwsAsync(manager.plan({ ...hide, gpa: 0 }), { code: 'ERR_INVALID_ARG_VALUE', message: /^change \(ramVisibility\): unknown key 'gpa'/ });
  t.deepEqual(partition.log(), []);
  t.deepEqual(await manager.flatView(), before);
});
