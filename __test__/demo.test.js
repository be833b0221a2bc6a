// `membacking demo` (the README's first quick-start command) in a child process: exit code 0,
// and the lines that show each step happened — with a KvmPartition where /dev/kvm opens, and
// with the RecordingPartition that `--no-kvm` forces (also what runs where KVM is unavailable).
'use strict';
// Serial on purpose: these tests are synchronous (spawnSync), and ava reports concurrent tests of
// a file only once all of them have run, so on a loaded machine the whole file went past ava's
// 2-minute inactivity timeout with no result ("Timed out while running tests"). Serial tests are
// reported one by one.
const test = require('ava').serial;
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const cli = path.join(__dirname, '..', 'dist', 'cli', 'main.js');
const run = (...args) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 120_000 });

const mb = require('../dist');
const fs = require('node:fs');
const { probeFailure: unavailable } = require('./helpers/kvm');

/** The snapshot directory the demo printed: it must be gone when the demo has ended. */
function snapshotDirGone(t, out) {
  const dir = /in (\/\S+\/snapshot)\n/.exec(out)?.[1];
  t.truthy(dir, 'the demo names its snapshot directory');
  if (dir) t.false(fs.existsSync(dir), `${dir} is removed`);
}

/** Lines common to both partitions: layout, legacy split, device window, regions, inspect tree, registrar. */
function commonLines(t, out) {
  t.regex(out, /== 1\. Layout: 4 GiB of RAM around the x86 MMIO gap 0xc0000000-0x100000000 ==/);
  t.regex(out, /RAM\s+0x100000000-0x140000000\s+1 GiB/);
  t.regex(out, /split into 17 RAM regions \(x86 legacy support\)/);
  t.regex(out, /placed read-only at 0xd0000000 in the MMIO gap/);
  t.regex(out, /fills 4 KiB at 0xbffff000 \(below the gap\) .* 512\/512 matching qwords/);
  t.regex(out, /fills 4 KiB at 0x100000000 \(above the gap\) .* 512\/512 matching qwords/);
  t.regex(out, /sums the device window's 8192 qwords: 0x[0-9a-f]+ \(matches the memfd\)/);
  t.regex(out, /copies a qword of the window into RAM at 0x300000: GuestMemory reads "membacki"/);
  t.notRegex(out, /MISMATCH/);
  // The region table: 17 RAM regions and the device window at priority 0.
  t.regex(out, /\n\s+2\s+ram\s+0xa0000-0xc0000\s+128 KiB\s+255\s+rw/);
  t.regex(out, /\n\s+18\s+demo-device\s+0xd0000000-0xd0010000\s+64 KiB\s+0\s+ro/);
  t.regex(out, /== 8\. Inspect tree \(compact\) ==\n  manager:\n    aliasOffset: null/);
  t.regex(out, /mappings: \(18\)/);
  t.regex(out, /2 of 3 chunks registered/);
  // Step 10: the snapshot and the restore (lazy where userfaultfd is available).
  const mode = mb.snapshotSupport().lazyRestore ? 'lazy' : 'copy';
  t.regex(out, new RegExp(`== 10\\. Snapshot, then a ${mode} restore into a new manager`));
  t.regex(out, /manager\.snapshot\(\): \d+ KiB of page data \(only pages that hold data\) in \d+ extents/);
  t.regex(out, new RegExp(`GuestMemoryBuilder\\.restore\\(dir, \\{ mode: '${mode}' \\}\\) returned in [\\d.]+ ms: 17 RAM regions, device window "demo-device" placed at 0xd0000000`));
  if (mode === 'lazy') t.regex(out, /first touches served by userfaultfd before the background fill: \d+ pages.*; the fill then restored the rest \(\d+ pages in all\) and unregistered/);
  else t.regex(out, /lazy restore unavailable \(.*userfaultfd.*\): restoring by copying/);
  t.regex(out, /Everything closed; the demo took \d+ ms\.\n$/);
}

test(unavailable === null ? 'demo runs a KVM guest: RAM pattern, device window, VGA toggle with its slot changes' : `demo says it uses a RecordingPartition because /dev/kvm is unavailable (${unavailable})`, (t) => {
  const r = run('demo');
  t.is(r.status, 0, r.stderr);
  t.is(r.stderr, '');
  commonLines(t, r.stdout);
  if (unavailable !== null) {
    t.true(unavailable.startsWith('ERR_KVM_UNAVAILABLE'), unavailable);
    t.regex(r.stdout, /Partition: RecordingPartition \(\/dev\/kvm unavailable: ERR_KVM_UNAVAILABLE: /);
    return;
  }
  t.regex(r.stdout, /== 3\. Partition: KvmPartition, a real KVM VM \(\/dev\/kvm\): 17 memory slots/);
  t.regex(r.stdout, /the guest fills 4 KiB at 0xbffff000/);
  t.regex(r.stdout, /partition call: map 0xd0000000-0xd0010000 \(created slot \d+\)/);
  // The toggle deletes the VGA window's slot, the guest's load becomes an MMIO exit, and the slot comes back.
  const unmapped = /Unmapped: {2}unmap 0xa0000-0xc0000 \(deleted slot (\d+)\)\n\s+then the guest's load at 0xa0000 is an MmioRead exit \(address 0xa0000, 8 bytes\), completed with "MMIO": RAM at 0x300000 gets "MMIO\.\.\.\."/.exec(r.stdout);
  t.truthy(unmapped, r.stdout);
  t.regex(r.stdout, /ReadWrite: map 0xa0000-0xc0000 \(created slot \d+\)\n\s+then the guest's load at 0xa0000 reads RAM again: "VGA RAM!"/);
  t.regex(r.stdout, /kind: KvmPartition\n\s+maxSlots: \d+/);
  t.regex(r.stdout, /vcpuCount: 1/);
  t.regex(r.stdout, /and a new KVM partition ==/);
  t.regex(r.stdout, /GuestMemory reads the qword steps 5 and 6 left at 0x300000: "VGA RAM!"/);
  t.regex(r.stdout, /the guest's code in the new VM sums its 4 KiB at 0xbffff000: 0x[0-9a-f]+ \(what it wrote before the snapshot\)/);
  t.regex(r.stdout, /the guest's code in the new VM sums its 4 KiB at 0x100000000: 0x[0-9a-f]+ \(what it wrote before the snapshot\)/);
  snapshotDirGone(t, r.stdout);
});

test('demo --no-kvm uses a RecordingPartition, says so, and shows the recorded calls', (t) => {
  const r = run('demo', '--no-kvm');
  t.is(r.status, 0, r.stderr);
  t.is(r.stderr, '');
  commonLines(t, r.stdout);
  t.regex(r.stdout, /== 3\. Partition: RecordingPartition \(--no-kvm: KVM not tried\) ==/);
  t.regex(r.stdout, /17 map calls at attach, one per RAM region/);
  t.regex(r.stdout, /partition call: map 0xd0000000-0xd0010000 ro/);
  t.regex(r.stdout, /GuestMemory fills 4 KiB at 0xbffff000/);
  t.regex(r.stdout, /Unmapped: {2}unmap 0xa0000-0xc0000\n\s+then GuestMemory at 0xa0000: ERR_GUEST_MEMORY_OUT_OF_RANGE/);
  t.regex(r.stdout, /ReadWrite: map 0xa0000-0xc0000 rw\n\s+then GuestMemory reads "VGA RAM!" at 0xa0000/);
  t.regex(r.stdout, /kind: RecordingPartition\n\s+calls: \d+/);
  t.notRegex(r.stdout, /KvmPartition/);
  t.regex(r.stdout, /No vCPU without KVM: GuestMemory reads the data back through the same first-touch path/);
  t.regex(r.stdout, /GuestMemory reads 4 KiB at 0xbffff000: 512\/512 qwords as written before the snapshot/);
  t.regex(r.stdout, /GuestMemory reads 4 KiB at 0x100000000: 512\/512 qwords as written before the snapshot/);
  t.regex(r.stdout, /GuestMemory reads the qword steps 5 and 6 left at 0x300000: "membacki"/);
  snapshotDirGone(t, r.stdout);
});

test('demo --help documents --no-kvm; an unknown flag is exit code 2 with one line', (t) => {
  const help = run('demo', '--help');
  t.is(help.status, 0);
  t.regex(help.stdout, /usage: membacking demo \[--no-kvm\]/);
  const bad = run('demo', '--bogus');
  t.is(bad.status, 2);
  t.is(bad.stdout, '');
  t.is(bad.stderr.trim().split('\n').length, 1);
  t.regex(bad.stderr, /--bogus/);
});
