// Live migration between processes: `membacking migrate-demo` (a KVM guest keeps writing while
// its memory migrates to a child, which runs it on and checks what it finds; without /dev/kvm
// the test skips with the reason, and the `--no-kvm` run always goes), and a peer process
// killed with SIGKILL during the rounds, as destination and as source: the side left gets
// ERR_MIGRATION_ABORTED, a source keeps its memory with tracking stopped, a destination
// releases what it built.
'use strict';
const test = require('ava');
const path = require('node:path');
const { spawn, spawnSync } = require('node:child_process');
const mb = require('../dist');
const { kvmTest } = require('./helpers/kvm');
const { rng, ramImage } = require('./helpers/snapshot');
const { memfds } = require('./helpers/migration');

const { MiB, GiB, range, MemoryLayout, GuestMemoryBuilder } = mb;
const MAIN = path.join(__dirname, '..', 'dist', 'cli', 'main.js');
const PEER = path.join(__dirname, 'fixtures', 'migration', 'peer.js');

function demo(args) {
  return spawnSync(process.execPath, [MAIN, 'migrate-demo', ...args], { encoding: 'utf8', timeout: 120_000 });
}

kvmTest('migrate-demo: a KVM guest migrates to a child process and runs on there', (t) => {
  const run = demo([]);
  t.is(run.status, 0, run.stdout + run.stderr);
  t.regex(run.stdout, /a KVM guest keeps writing/);
  t.regex(run.stdout, /source: \d+ rounds .* downtime [\d.]+ ms/);
  t.regex(run.stdout, /destination: the area holds counter (\d+) .* exactly what the writer left/);
  t.regex(run.stdout, /the guest ran on in a new KVM partition: counter (\d+) → (\d+)/);
  t.regex(run.stdout, /match the source's checksum/);
  t.notRegex(run.stdout, /FAILED/);
});

test('migrate-demo --no-kvm: the memory a program keeps writing migrates to a child process', (t) => {
  const run = demo(['--no-kvm']);
  t.is(run.status, 0, run.stdout + run.stderr);
  t.regex(run.stdout, /this program writes a counter/);
  t.regex(run.stdout, /exactly what the writer left/);
});

/** A peer process on the other end of a socket pair (its fd 3). */
function peer(role) {
  const child = spawn(process.execPath, [PEER, role], { stdio: ['ignore', 'pipe', 'inherit', 'pipe'] });
  let out = '';
  child.stdout.on('data', (chunk) => {
    out += chunk;
  });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal, out })));
  return { child, socket: child.stdio[3], exited };
}

// Killed before the migration starts, and while the source's guest is paused before the final
// round (the source holds that point until the kill is seen).
for (const when of ['at the start', 'in the pause before the final round']) {
  test.serial(`a destination process killed ${when} aborts the source, which keeps running unchanged`, async (t) => {
    const manager = await new GuestMemoryBuilder().build(MemoryLayout.new(64n * MiB, [range(3n * GiB, 4n * GiB)]));
    t.teardown(() => manager.close());
    const memory = await manager.client().guestMemory();
    t.teardown(() => memory.close());
    const rand = rng(when.length);
    for (let i = 0; i < 16; i++) memory.writeAt(BigInt(rand.below(32)) * 2n * MiB, rand.bytes(128 * 1024));
    const before = ramImage(manager);
    const { child, socket, exited } = peer('destination');
    const kill = async () => {
      child.kill('SIGKILL');
      await exited;
    };
    if (when === 'at the start') await kill();
    const error = await t.throwsAsync(manager.migrate(socket, { pause: when === 'at the start' ? () => undefined : kill }));
    t.is((await exited).signal, 'SIGKILL');
    t.true(error instanceof mb.MigrationError, error.stack);
    t.is(error.code, 'ERR_MIGRATION_ABORTED');
    // Killed in the pause: the socket's end may answer the pause before it returns (no phase:
    // the final round never began; the cause is the stream's), or the final round may already
    // be queued in the stream when its write fails ('completing': the source cannot know the
    // destination did not complete).
    if (when === 'at the start') t.is(error.phase, 'handshake');
    else if (error.phase === undefined) t.regex(error.message, /pause callback failed/);
    else t.true(['final', 'completing'].includes(error.phase), error.phase);
    t.false(manager.dirtyTracking().active);
    t.true(ramImage(manager).equals(before));
    socket.destroy();
  });
}

test.serial('a source process killed in its pause aborts the destination, which releases what it built', async (t) => {
  const fdsBefore = memfds();
  const { socket, exited } = peer('source');
  const error = await t.throwsAsync(GuestMemoryBuilder.migrateFrom(socket));
  t.is((await exited).signal, 'SIGKILL');
  t.is(error.code, 'ERR_MIGRATION_ABORTED', error.stack);
  t.is(error.phase, 'rounds');
  socket.destroy();
  t.is(memfds(), fdsBefore);
});
