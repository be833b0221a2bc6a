// Sharing a backing with a child process: the RAM memfd passed as fd 3; the child rebuilds the
// same guest memory over it. Writes on one side are seen on the other.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { GuestMemoryBuilder, MemoryLayout, range, GiB } from 'membacking';

const layout = MemoryLayout.new(4n * GiB, [range(3n * GiB, 4n * GiB)]);
const manager = await new GuestMemoryBuilder().build(layout);
const memory = await manager.client().guestMemory();
memory.writeU64(0x5000, 0x1234n);

const backing = manager.sharedMemoryBacking();        // the RAM memfd (null in private mode)
const child = fileURLToPath(new URL('./shared-backing-child.mjs', import.meta.url));
const run = spawnSync(process.execPath, [child], { stdio: ['inherit', 'pipe', 'inherit', backing.mappable().fd], encoding: 'utf8' });
assert.equal(run.status, 0);
assert.equal(run.stdout.trim(), '0x1234');            // the child read the parent's write
assert.equal(memory.readU64(0x6000), 0x5678n);        // and the parent sees the child's
await manager.close();
