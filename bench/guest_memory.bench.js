// Guest memory from JavaScript (issue 3): copies against Buffer.copy of the same size, scalar
// accesses against empty native functions of the same signature, the binding's own overhead
// against a plain N-API call, the fault round trip, and readAtAsync of 1 MiB. Batched copies:
// readv/writev of 64 pages of 4 KiB in one call against 64 Buffer.copy calls of the same bytes
// (target >= 0.9), and the floors of readAt and readv measured in the same run (plain N-API
// functions that read the same arguments the same way and then only memcpy).
'use strict';
const { SparseMapping, GuestMemory } = require('../dist');
const { __bench } = require('../dist/internal');
const { measure, report } = require('./harness');

const KiB = 1024;
const MiB = 1024 * KiB;

// A 2 MiB guest memory over a sparse mapping, all placed, plus one unplaced page after it.
const mapping = new SparseMapping(4 * MiB);
mapping.alloc(0, 2 * MiB);
const memory = GuestMemory.fromSparseMapping(mapping);
memory.fillAt(0, 0x5a, 2 * MiB);
const UNMAPPED = 2 * MiB + 4 * KiB;

// ─── Copies: readAt/writeAt vs Buffer.copy (throughput ratio, kind 'rate') ────────────────────
const targets = { [64]: undefined, [4 * KiB]: '>= 0.7', [64 * KiB]: '>= 0.9', [MiB]: '>= 0.9' };
for (const size of [64, 4 * KiB, 64 * KiB, MiB]) {
  const label = size >= MiB ? `${size / MiB} MiB` : size >= KiB ? `${size / KiB} KiB` : `${size} B`;
  const dest = Buffer.alloc(size);
  const src = Buffer.alloc(size, 0xa5);
  const other = Buffer.alloc(size);
  const options = size >= MiB ? { runs: 9, targetMs: 50 } : { runs: 9 };
  // Interleave ours and the baseline so that both see the same machine load.
  const copy = measure(() => src.copy(other, 0, 0, size), options);
  const read = measure(() => memory.readAt(0, dest), options);
  const copy2 = measure(() => src.copy(other, 0, 0, size), options);
  const write = measure(() => memory.writeAt(0, src), options);
  const baseline = Math.min(copy, copy2);
  for (const [name, value] of [
    [`GuestMemory.readAt ${label}`, read],
    [`GuestMemory.writeAt ${label}`, write],
  ]) {
    report({ name, value, unit: 'ns', baseline: `Buffer.copy ${label}`, baselineValue: baseline, kind: 'rate', target: targets[size] });
  }
}

// ─── Batched copies: readv/writev of 64 × 4 KiB vs Buffer.copy, and the N-API floors ─────────
{
  const PAGES = 64;
  const floors = __bench.copyFloors();
  const pages = Array.from({ length: PAGES }, () => Buffer.alloc(4 * KiB));
  const sources = Array.from({ length: PAGES }, () => Buffer.alloc(4 * KiB, 0xa5));
  // Scattered guest pages (every other page of the 2 MiB), as a device's descriptor list would be.
  const readList = pages.map((buffer, i) => ({ gpa: i * 8 * KiB, buffer }));
  const writeList = sources.map((buffer, i) => ({ gpa: i * 8 * KiB, buffer }));
  const floorGpas = Float64Array.from(readList, (entry) => entry.gpa);
  const copyAll = () => {
    for (let i = 0; i < PAGES; i++) sources[i].copy(pages[i], 0, 0, 4 * KiB);
  };
  const page = pages[0];
  const copy4k = measure(() => sources[1].copy(page, 0, 0, 4 * KiB), { runs: 9 });
  const readAt4k = measure(() => memory.readAt(0, page), { runs: 9 });
  const floor4k = measure(() => floors.readAt(0, page), { runs: 9 });
  const copies = measure(copyAll, { runs: 9 });
  const readv = measure(() => memory.readv(readList), { runs: 9 });
  const copies2 = measure(copyAll, { runs: 9 });
  const writev = measure(() => memory.writev(writeList), { runs: 9 });
  const floorReadv = measure(() => floors.readv(floorGpas, ...pages), { runs: 9 });
  const baseline = Math.min(copies, copies2);
  report({ name: 'GuestMemory.readv 64 × 4 KiB (one call)', value: readv, unit: 'ns', baseline: 'Buffer.copy 4 KiB × 64 (the same bytes)', baselineValue: baseline, kind: 'rate', target: '>= 0.9' });
  report({ name: 'GuestMemory.writev 64 × 4 KiB (one call)', value: writev, unit: 'ns', baseline: 'Buffer.copy 4 KiB × 64 (the same bytes)', baselineValue: baseline, kind: 'rate', target: '>= 0.9' });
  report({ name: 'GuestMemory.readv 64 × 4 KiB vs its floor', value: readv, unit: 'ns', baseline: 'floor: plain N-API call, the same arguments, 64 memcpy of 4 KiB', baselineValue: floorReadv, kind: 'rate' });
  report({ name: 'copy floor: plain N-API readv 64 × 4 KiB', value: floorReadv, unit: 'ns', baseline: 'Buffer.copy 4 KiB × 64 (the same bytes)', baselineValue: baseline, kind: 'rate' });
  report({ name: 'GuestMemory.readAt 4 KiB vs its floor', value: readAt4k, unit: 'ns', baseline: 'floor: plain N-API call, (gpa, Uint8Array) in, memcpy of 4 KiB', baselineValue: floor4k, kind: 'rate' });
  report({ name: 'copy floor: plain N-API readAt 4 KiB', value: floor4k, unit: 'ns', baseline: 'Buffer.copy 4 KiB', baselineValue: copy4k, kind: 'rate' });
}

// ─── Scalars vs empty native functions of the same signature (time ratio) ─────────────────────
const gpas = Array.from({ length: 1024 }, (_, i) => i * 64);
const bigGpas = gpas.map(BigInt);
const readU32 = measure((i) => memory.readU32(gpas[i & 1023]));
const noopU32 = measure((i) => __bench.noopU32(gpas[i & 1023]));
report({ name: 'GuestMemory.readU32', value: readU32, unit: 'ns', baseline: '__bench.noopU32 (number in, number out)', baselineValue: noopU32, target: '<= 2' });
const writeU64 = measure((i) => memory.writeU64(bigGpas[i & 1023], 0x0123456789abcdefn));
const noopWriteU64 = measure((i) => __bench.noopWriteU64(bigGpas[i & 1023], 0x0123456789abcdefn));
report({ name: 'GuestMemory.writeU64', value: writeU64, unit: 'ns', baseline: '__bench.noopWriteU64 (bigint, bigint in)', baselineValue: noopWriteU64, target: '<= 2' });
const readU64 = measure((i) => memory.readU64(gpas[i & 1023]));
const noopReadU64 = measure((i) => __bench.noopReadU64(gpas[i & 1023]));
report({ name: 'GuestMemory.readU64', value: readU64, unit: 'ns', baseline: '__bench.noopReadU64 (number in, bigint out)', baselineValue: noopReadU64 });

// The binding's own overhead: the same calls against a plain N-API call with no arguments.
const noop = measure(() => __bench.noop());
report({ name: 'GuestMemory.readU32 vs a plain N-API call', value: readU32, unit: 'ns', baseline: '__bench.noop (no arguments, no result)', baselineValue: noop });
report({ name: '__bench.noopU32 vs a plain N-API call', value: noopU32, unit: 'ns', baseline: '__bench.noop (no arguments, no result)', baselineValue: noop });
const dest64 = Buffer.alloc(64);
const noopReadAt = measure(() => __bench.noopReadAt(0, dest64));
const readAt64 = measure(() => memory.readAt(0, dest64));
report({ name: 'GuestMemory.readAt 64 B', value: readAt64, unit: 'ns', baseline: '__bench.noopReadAt (u64, Uint8Array in)', baselineValue: noopReadAt });

// ─── The fault round trip: an access to an unplaced page, to the thrown error ────────────────
const faultDest = Buffer.alloc(8);
const guestFault = measure(() => {
  try {
    memory.readAt(UNMAPPED, faultDest);
  } catch {
    // ERR_GUEST_MEMORY_FAULT
  }
});
const mapped = measure(() => memory.readAt(0, faultDest));
report({ name: 'GuestMemory.readAt fault round trip (8 B, unplaced page → GuestMemoryError)', value: guestFault, unit: 'ns', baseline: 'GuestMemory.readAt 8 B of a placed page', baselineValue: mapped });
const sparseFault = measure(() => {
  try {
    mapping.readAt(UNMAPPED, faultDest);
  } catch {
    // ERR_MEMORY
  }
});
report({ name: 'SparseMapping.readAt fault round trip (8 B → SparseMappingError)', value: sparseFault, unit: 'ns', baseline: 'GuestMemory.readAt 8 B of a placed page', baselineValue: mapped });

// ─── readAtAsync of 1 MiB on the libuv pool ───────────────────────────────────────────────────
async function measureAsync(fn, { runs = 7, perRun = 64 } = {}) {
  for (let i = 0; i < perRun; i++) await fn();
  const samples = [];
  for (let run = 0; run < runs; run++) {
    const start = process.hrtime.bigint();
    for (let i = 0; i < perRun; i++) await fn();
    samples.push(Number(process.hrtime.bigint() - start) / perRun);
  }
  samples.sort((a, b) => a - b);
  return samples[Math.floor(samples.length / 2)];
}

(async () => {
  const syncRead = measure(() => memory.read(0, MiB), { runs: 9, targetMs: 50 });
  const asyncRead = await measureAsync(() => memory.readAtAsync(0, MiB));
  report({ name: 'GuestMemory.readAtAsync 1 MiB (one at a time)', value: asyncRead, unit: 'ns', baseline: 'GuestMemory.read 1 MiB (synchronous, new Buffer)', baselineValue: syncRead, kind: 'rate' });
  const parallel = await measureAsync(async () => {
    await Promise.all([0, 1, 2, 3].map((i) => memory.readAtAsync(i * 256 * KiB, MiB)));
  });
  report({ name: 'GuestMemory.readAtAsync 1 MiB (4 in flight, per copy)', value: parallel / 4, unit: 'ns', baseline: 'GuestMemory.read 1 MiB (synchronous, new Buffer)', baselineValue: syncRead, kind: 'rate' });
})();
