// Snapshots: opt-in dirty tracking, a full snapshot and an incremental one on it, and a restore
// of the chain into a new manager — lazily (userfaultfd: pages are filled on first touch and by a
// background thread) where snapshotSupport() says it can, by copying elsewhere.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestMemoryBuilder, MemoryLayout, RamVisibility, range, snapshotSupport, GiB, KiB, MiB } from 'membacking';

const layout = MemoryLayout.new(GiB, [range(3n * GiB, 4n * GiB)]);
const manager = await new GuestMemoryBuilder().x86LegacySupport(true).build(layout);
const memory = await manager.client().guestMemory();
const tracking = manager.dirtyTracking();
await tracking.start();                                // opt-in, never on by default
memory.fillAt(16n * MiB, 0xab, 64n * KiB);
await manager.ramVisibilityControl().setRamVisibility(range(0xa0000, 0xc0000), RamVisibility.Unmapped);

const dir = mkdtempSync(join(tmpdir(), 'snapshots-'));
const full = await manager.snapshot(join(dir, 'full'));
assert.equal(full.bytes, 64n * KiB);                   // only the pages that hold data
memory.writeU64(32n * MiB, 42n);
assert.deepEqual((await tracking.take()).map(String), ['0x1000000-0x1010000', '0x2000000-0x2001000']);
const next = await manager.snapshot(join(dir, 'next'), { base: join(dir, 'full') });
assert.ok(next.incremental);
assert.equal(next.bytes, 4n * KiB);                    // the one page written since the base

const mode = snapshotSupport().lazyRestore ? 'lazy' : 'copy';
const restored = await GuestMemoryBuilder.restore(join(dir, 'next'), { mode, layout });
const again = await restored.client().guestMemory();
assert.equal(again.readU64(32n * MiB), 42n);           // from the increment
assert.equal(again.readU8(16n * MiB), 0xab);           // from its base
assert.equal(restored.restoredFrom.layers, 2);
await restored.lazyRestore?.done;                      // lazy: every page is in, userfaultfd is gone
const [vga] = (await restored.inspect()).regions.filter((r) => r.range.start === 0xa0000n);
assert.equal(vga.active, false);                       // visibility as it was: the VGA window unmapped
await restored.close();
await manager.close();
rmSync(dir, { recursive: true });
