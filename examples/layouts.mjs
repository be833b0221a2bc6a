// Scripting layouts: RAM around MMIO gaps, a VTL2 range, NUMA nodes, the x86 legacy split and
// the lazy range algorithms.
import assert from 'node:assert/strict';
import { MemoryLayout, range, x86LegacyRamRanges, walkRanges, GiB, MiB } from 'membacking';

// 4 GiB of RAM around the x86 MMIO gap, and a VTL2 range above it.
const layout = MemoryLayout.new(4n * GiB, [range(3n * GiB, 4n * GiB)], range(8n * GiB, 8n * GiB + 64n * MiB));
assert.deepEqual(layout.ram.map((r) => String(r.range)), ['0x0-0xc0000000', '0x100000000-0x140000000']);
assert.equal(layout.probeAddress(0xfee00000), 'Mmio');
assert.equal(JSON.parse(JSON.stringify(layout)).endOfRam, '0x140000000'); // u64 values as '0x…' strings
assert.equal(x86LegacyRamRanges(layout).length, 18);                    // VGA, 12 PAM pieces, BIOS, …

// NUMA: RAM taken verbatim with its vnodes.
const numa = MemoryLayout.fromRanges([{ range: range(0, 2n * GiB), vnode: 0 }, { range: range(2n * GiB, 6n * GiB), vnode: 1 }], []);
assert.deepEqual(numa.ram.map((r) => r.vnode), [0, 1]);

// The range algorithms are lazy iterators; tags are any JS values.
const walk = [...walkRanges([{ range: range(0, 2n * MiB), tag: 'ram' }], [{ range: range(MiB, 3n * MiB), tag: 'dev' }])];
assert.deepEqual(walk.slice(0, 3).map((w) => [String(w.range), w.kind]), [
  ['0x0-0x100000', 'Left'], ['0x100000-0x200000', 'Both'], ['0x200000-0x300000', 'Right'],
]);
