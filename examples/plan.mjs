// Seeing a change before it happens: the plan of a visibility change (the partition calls in
// order, with reasons, and the flat view the guest would see), then applying it.
import assert from 'node:assert/strict';
import { GuestMemoryBuilder, MemoryLayout, RecordingPartition, Vtl, range, GiB } from 'membacking';

const manager = await new GuestMemoryBuilder().x86LegacySupport(true).build(MemoryLayout.new(4n * GiB, [range(3n * GiB, 4n * GiB)]));
const partition = new RecordingPartition();
await manager.attachPartition(Vtl.Vtl0, partition);
partition.clearLog();

const plan = await manager.plan({ kind: 'ramVisibility', range: range(0xa0000, 0xc0000), visibility: 'ReadOnly' });
// Unmap from partitions, invalidate the VA mappers, map again read-only. Each op says why; a
// partition op names the partition (index in attach order), and on a KvmPartition each map/unmap
// also names the slot ids it creates or deletes (`slots`).
assert.deepEqual(plan.ops.map(({ op, gpa, size }) => [op, gpa, size]), [
  ['unmap', 0xa0000n, 0x20000n], ['invalidate', 0xa0000n, 0x20000n], ['map', 0xa0000n, 0x20000n],
]);
assert.equal(plan.ops[2].writable, false);
assert.match(plan.ops[0].reason, /0xa0000-0xc0000/);
const vga = plan.flatView.find((entry) => entry.range.start === 0xa0000n);
assert.equal(vga.writable, false);                    // what the guest would see there

// Nothing happened yet; applying the change produces exactly the planned calls.
assert.deepEqual(partition.log(), []);
await manager.ramVisibilityControl().setRamVisibility(range(0xa0000, 0xc0000), 'ReadOnly');
assert.deepEqual(partition.takeLog().map(({ op, gpa, size }) => ({ op, gpa, size })),
  plan.ops.filter((op) => op.partition === 0).map(({ op, gpa, size }) => ({ op, gpa, size })));
assert.deepEqual(await manager.flatView(), plan.flatView);
await manager.close();
