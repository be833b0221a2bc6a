// Live migration: a manager's guest memory moves over a socket to a manager built at the other
// end, while it could keep running (the pre-copy rounds); pause() stops the guest before the
// final round and what it returns arrives with it.
import assert from 'node:assert/strict';
import { createServer, connect } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestMemoryBuilder, MemoryLayout, range, GiB, MiB } from 'membacking';

// Two ends of a Unix socket (in real use: two processes or hosts, over SSH or TLS).
const dir = mkdtempSync(join(tmpdir(), 'migration-'));
const server = createServer().listen(join(dir, 'socket'));
const [incoming, outgoing] = await Promise.all([
  new Promise((resolve) => server.once('connection', resolve)),
  new Promise((resolve) => { const socket = connect(join(dir, 'socket'), () => resolve(socket)); }),
]);

const layout = MemoryLayout.new(GiB, [range(3n * GiB, 4n * GiB)]);
const source = await new GuestMemoryBuilder().build(layout);
const memory = await source.client().guestMemory();
memory.fillAt(16n * MiB, 0xab, 4n * MiB);

const [info, destination] = await Promise.all([
  source.migrate(outgoing, {
    maxDowntimeMs: 100,                                // binding: ERR_MIGRATION_DOWNTIME rather than more
    pause: async () => Buffer.from('vCPU state'),      // stop the vCPUs here; what it returns travels along
    onProgress: (round, bytes) => {},                  // page bytes sent in this round so far
  }),
  GuestMemoryBuilder.migrateFrom(incoming, { layout }), // another layout: ERR_SNAPSHOT_LAYOUT
]);
assert.equal(info.bytesPerRound[0], 4n * MiB);         // round 0: only the pages that hold data
assert.equal(info.bytes, info.bytesPerRound.reduce((a, b) => a + b));
console.log(`${info.rounds} rounds, downtime ${info.downtimeMs.toFixed(1)} ms`);

const arrived = await destination.client().guestMemory();
assert.equal(arrived.readU8(18n * MiB), 0xab);
assert.equal(Buffer.from(destination.migratedFrom.payload).toString(), 'vCPU state');
for (const end of [incoming, outgoing]) end.destroy();  // the streams stay the caller's
server.close();
arrived.close();
memory.close();
await destination.close();
await source.close();
rmSync(dir, { recursive: true });
