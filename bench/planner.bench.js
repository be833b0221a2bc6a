// The dry-run planner: plan() of one RAM visibility change with 10, 1,000 and 10,000 regions
// (device windows placed in the MMIO gap). The plan's operations cost O(log n + size of the
// change); the flat view plan() also returns lists every region, so the whole call is O(n) in
// the number of regions once n is large: the ratio against 10 regions is the figure.
'use strict';
const mb = require('../dist');
const { report } = require('./harness');

const { GiB, KiB, range } = mb;

async function measureAsync(fn, { runs = 5, iterations = 200 } = {}) {
  for (let i = 0; i < 20; i++) await fn();
  const samples = [];
  for (let run = 0; run < runs; run++) {
    const start = process.hrtime.bigint();
    for (let i = 0; i < iterations; i++) await fn();
    samples.push(Number(process.hrtime.bigint() - start) / iterations);
  }
  samples.sort((a, b) => a - b);
  return samples[Math.floor(samples.length / 2)];
}

async function setupManager(windows) {
  const layout = mb.MemoryLayout.new(4n * GiB, [range(3n * GiB, 4n * GiB)]);
  const manager = await new mb.GuestMemoryBuilder().x86LegacySupport(true).build(layout);
  const partition = new mb.RecordingPartition();
  await manager.attachPartition(mb.Vtl.Vtl0, partition);
  const mapper = manager.deviceMemoryMapper();
  for (let i = 0; i < windows; i++) {
    const { control } = mapper.newRegion(4n * KiB, `dev${i}`);
    await control.mapToGuest(3n * GiB + BigInt(i) * 8n * KiB, true);
  }
  partition.clearLog();
  return manager;
}

(async () => {
  // Three managers at once, measured in alternation and keeping each one's best median, so
  // that load from other processes (a shared 2-core machine) hits every size alike.
  const sizes = [10, 1000, 10000];
  const managers = [];
  for (const size of sizes) managers.push(await setupManager(size));
  const vga = range(0xa0000, 0xc0000);
  const best = sizes.map(() => Infinity);
  for (let round = 0; round < 3; round++) {
    for (let i = 0; i < sizes.length; i++) {
      const ns = await measureAsync(() => managers[i].plan({ kind: 'ramVisibility', range: vga, visibility: 'Unmapped' }), { runs: 3, iterations: 100 });
      best[i] = Math.min(best[i], ns);
    }
  }
  for (const manager of managers) await manager.close();
  for (let i = 1; i < sizes.length; i++) {
    report({
      name: `plan() of one visibility change, ${sizes[i]} regions`,
      value: best[i] / 1000,
      unit: 'us',
      baseline: 'the same with 10 regions',
      baselineValue: best[0] / 1000,
      target: '<= 2',
    });
  }
})().catch((error) => {
  console.error(error);
  process.exit(1);
});
