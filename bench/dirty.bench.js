// Dirty tracking in a layout with many RAM ranges: DirtyTracking.take() of one dirty page in each
// of 100, 4,000 and 16,000 RAM ranges (MMIO gaps of 4 KiB every 64 KiB), time per dirty run,
// against the per-run time with 100 ranges measured in the same run. Each run is clipped to the
// RAM ranges it overlaps, so the cost per run must not grow with the number of ranges (a ratio
// near 1; a scan of every range per run made it grow linearly, the take quadratically).
'use strict';
const mb = require('../dist');
const { report } = require('./harness');

const { KiB, range } = mb;
const STRIDE = 64n * KiB;

async function setup(ranges) {
  const gaps = Array.from({ length: ranges }, (_, i) => range(BigInt(i + 1) * STRIDE - 4n * KiB, BigInt(i + 1) * STRIDE));
  const layout = mb.MemoryLayout.new(BigInt(ranges) * (STRIDE - 4n * KiB), gaps);
  const manager = await new mb.GuestMemoryBuilder().build(layout);
  const memory = await manager.client().guestMemory();
  const tracking = manager.dirtyTracking();
  await tracking.start();
  return { manager, memory, tracking, ranges };
}

/** Nanoseconds per dirty run of one take (the writes before it untimed). */
async function takeCost({ memory, tracking, ranges }) {
  for (let i = 0; i < ranges; i++) memory.writeU8(BigInt(i) * STRIDE, i & 0xff);
  const start = process.hrtime.bigint();
  const taken = await tracking.take();
  const ns = Number(process.hrtime.bigint() - start);
  if (taken.length !== ranges) throw new Error(`take() reported ${taken.length} runs, expected ${ranges}`);
  return ns / ranges;
}

(async () => {
  const sizes = [100, 4000, 16000];
  const setups = [];
  for (const size of sizes) setups.push(await setup(size));
  for (const s of setups) await takeCost(s);
  // Measured in alternation, keeping each size's best, so that outside load hits all alike.
  const best = sizes.map(() => Infinity);
  for (let round = 0; round < 7; round++) {
    for (let i = 0; i < sizes.length; i++) best[i] = Math.min(best[i], await takeCost(setups[i]));
  }
  for (const { manager, memory, tracking } of setups) {
    await tracking.stop();
    memory.close();
    await manager.close();
  }
  for (let i = 1; i < sizes.length; i++) {
    report({
      name: `DirtyTracking.take, one dirty page in each of ${sizes[i]} RAM ranges (per run)`,
      value: best[i],
      unit: 'ns',
      baseline: `the same with ${sizes[0]} RAM ranges`,
      baselineValue: best[0],
      target: '<= 2',
    });
  }
})().catch((error) => {
  console.error(error);
  process.exit(1);
});
