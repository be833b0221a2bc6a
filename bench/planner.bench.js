// The dry-run planner: plan() of one RAM visibility change with 10, 1,000 and 10,000 regions
// (device windows placed in the MMIO gap). The cost must grow no faster than
// O(log n + size of the change): the ratio against 10 regions is the figure.
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

async function planCost(windows) {
  const layout = mb.MemoryLayout.new(4n * GiB, [range(3n * GiB, 4n * GiB)]);
  const manager = await new mb.GuestMemoryBuilder().x86LegacySupport(true).build(layout);
  const partition = new mb.RecordingPartition();
  await manager.attachPartition(mb.Vtl.Vtl0, partition);
  const mapper = manager.deviceMemoryMapper();
  const controls = [];
  for (let i = 0; i < windows; i++) {
    const { control } = mapper.newRegion(4n * KiB, `dev${i}`);
    await control.mapToGuest(3n * GiB + BigInt(i) * 8n * KiB, true);
    controls.push(control);
  }
  partition.clearLog();
  const vga = range(0xa0000, 0xc0000);
  const ns = await measureAsync(() => manager.plan({ kind: 'ramVisibility', range: vga, visibility: 'Unmapped' }));
  await manager.close();
  return ns;
}

(async () => {
  const base = await planCost(10);
  for (const count of [1000, 10000]) {
    const ns = await planCost(count);
    report({
      name: `plan() of one visibility change, ${count} regions`,
      value: ns / 1000,
      unit: 'us',
      baseline: 'the same with 10 regions',
      baselineValue: base / 1000,
      target: '<= 2',
    });
  }
})().catch((error) => {
  console.error(error);
  process.exit(1);
});
