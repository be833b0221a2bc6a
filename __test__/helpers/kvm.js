// The KVM skip rule of the ava tests: tests that need /dev/kvm are declared with `kvmTest`, which
// is ava's `test` when a KvmPartition can be created and a skip naming the reason otherwise.
// KVM is probed once per test file in a child process (ava needs tests declared synchronously).
// Only ERR_KVM_UNAVAILABLE skips: any other failure of KvmPartition.create() lets the tests run,
// and fail, so it is seen. MEMBACKING_REQUIRE_KVM=1 (CI sets it where the runner has /dev/kvm)
// turns the skip into a failure, so a broken /dev/kvm cannot pass unnoticed.
'use strict';
const test = require('ava');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

/** null when a KvmPartition can be created; otherwise how it failed (`code: message`). */
function probeKvm() {
  const dist = JSON.stringify(path.join(__dirname, '..', '..', 'dist'));
  const script = `require(${dist}).KvmPartition.create().then((p) => p.close(), (e) => { process.stdout.write(e.code + ': ' + e.message); process.exitCode = 3; })`;
  const probe = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });
  if (probe.status === 0) return null;
  return probe.stdout || `the probe exited with ${probe.status ?? probe.signal}: ${probe.stderr}`;
}

/** How KvmPartition.create() failed here, or null. */
const probeFailure = probeKvm();
/** Why KVM tests are skipped here, or null when they run. */
const kvmUnavailable = probeFailure !== null && probeFailure.startsWith('ERR_KVM_UNAVAILABLE') ? probeFailure : null;
const kvmRequired = process.env.MEMBACKING_REQUIRE_KVM === '1';
if (kvmUnavailable !== null && !kvmRequired) console.log(`KVM tests skipped: KvmPartition.create() failed with ${kvmUnavailable}`);

/** ava's `test` for tests that need /dev/kvm (see the module comment). */
function kvmTest(title, fn) {
  if (kvmUnavailable === null) return test(title, fn);
  if (kvmRequired) return test(title, (t) => t.fail(`MEMBACKING_REQUIRE_KVM=1 but KVM is unavailable: ${kvmUnavailable}`));
  return test.skip(`${title} [skipped: /dev/kvm unavailable: ${kvmUnavailable}]`, fn);
}

module.exports = { probeFailure, kvmUnavailable, kvmTest };
