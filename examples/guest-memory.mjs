// Building guest memory: a manager over a layout, a recording partition that logs every call,
// lazily mapped guest RAM, RAM visibility, and device memory placed in the MMIO gap.
import assert from 'node:assert/strict';
import { GuestMemoryBuilder, GuestMemoryError, MemoryLayout, RecordingPartition, RamVisibility, Vtl, Mappable, range, x86LegacyRamRanges, GiB, KiB } from 'membacking';

const layout = MemoryLayout.new(4n * GiB, [range(3n * GiB, 4n * GiB)]);
const manager = await new GuestMemoryBuilder().x86LegacySupport(true).build(layout);
const partition = new RecordingPartition();           // logs every map/unmap/prefetch/pin call
await manager.attachPartition(Vtl.Vtl0, partition);
assert.equal(partition.takeLog().filter((call) => call.op === 'map').length, x86LegacyRamRanges(layout).length); // 17: one per RAM region

const memory = await manager.client().guestMemory();  // lazily mapped: a page is mapped on first touch
memory.writeU32(0x1000, 0xdeadbeef);
assert.equal(memory.readU32(0x1000), 0xdeadbeef);
assert.deepEqual(memory.read(0x1000, 4), Buffer.from([0xef, 0xbe, 0xad, 0xde])); // a copy, never a view
assert.throws(() => memory.readU8(3n * GiB), GuestMemoryError); // ERR_GUEST_MEMORY_OUT_OF_RANGE: the MMIO gap

// Hide the VGA window from the guest; the partition sees exactly one unmap.
await manager.ramVisibilityControl().setRamVisibility(range(0xa0000, 0xc0000), RamVisibility.Unmapped);
assert.deepEqual(partition.takeLog(), [{ op: 'unmap', gpa: 0xa0000n, size: 0x20000n, failed: false }]);

// Device memory placed in the MMIO gap.
const { control, region } = manager.deviceMemoryMapper().newRegion(64n * KiB, 'my-device');
await region.map(0, Mappable.allocSharedMemory(64n * KiB, 'my-device'), 0, 64n * KiB, true);
await control.mapToGuest(3n * GiB, true);
assert.deepEqual(partition.takeLog().map(({ op, gpa, size }) => ({ op, gpa, size })), [{ op: 'map', gpa: 3n * GiB, size: 64n * KiB }]);
memory.writeU8(3n * GiB, 7);                          // guest memory reaches the window too
assert.equal(memory.readU8(3n * GiB), 7);

const snapshot = await manager.inspect();             // regions, mappings, mappers
assert.ok(snapshot.regions.some((r) => r.name === 'my-device' && r.active));
await manager.close();
