// `membacking demo` (the README's first quick-start command) in a child process: exit code 0,
// and the lines that show each step happened — with a KvmPartition where /dev/kvm opens, and
// with the RecordingPartition that `--no-kvm` forces (also what runs where KVM is unavailable).
'use strict';
const test = require('ava');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const cli = path.join(__dirname, '..', 'dist', 'cli', 'main.js');
const run = (...args) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 120_000 });

const { probeFailure: unavailable } = require('./helpers/kvm');

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
