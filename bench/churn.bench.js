// Region churn: device-window map/unmap cycles (mapToGuest + unmapFromGuest of one window, each
// awaited) with a RecordingPartition attached and 100, 1,000 or 10,000 other regions placed.
// The cycle cost must grow no faster than O(log n) in the number of regions (ratio against 100
// regions), and the rate is compared with the issue's figure of 10,000 cycles per second.
'use strict';
const mb = require('../dist');
const { report } = require('./harness');

const { GiB, KiB, range } = mb;

async function setup(regions) {
  const layout = mb.MemoryLayout.new(4n * GiB, [range(3n * GiB, 4n * GiB)]);
  const manager = await new mb.GuestMemoryBuilder().build(layout);
  await manager.attachPartition(mb.Vtl.Vtl0, new mb.RecordingPartition());
  const mapper = manager.deviceMemoryMapper();
  for (let i = 0; i < regions; i++) {
    await mapper.newRegion(4n * KiB, `dev${i}`).control.mapToGuest(3n * GiB + BigInt(i) * 8n * KiB, true);
  }
  const { control } = mapper.newRegion(64n * KiB, 'churn');
  return { manager, control, gpa: 3n * GiB + 512n * 1024n * 1024n };
}

async function cycleCost({ control, gpa }, cycles) {
  const start = process.hrtime.bigint();
  for (let i = 0; i < cycles; i++) {
    await control.mapToGuest(gpa, true);
    await control.unmapFromGuest();
  }
  return Number(process.hrtime.bigint() - start) / cycles;
}

(async () => {
  const sizes = [100, 1000, 10000];
  const setups = [];
  for (const size of sizes) setups.push(await setup(size));
  for (const s of setups) await cycleCost(s, 200);
  // Measured in alternation, keeping each size's best, so that outside load hits all alike.
  const best = sizes.map(() => Infinity);
  for (let round = 0; round < 5; round++) {
    for (let i = 0; i < sizes.length; i++) best[i] = Math.min(best[i], await cycleCost(setups[i], 500));
  }
  for (const s of setups) await s.manager.close();
  report({
    name: 'device-window map+unmap cycles per second (100 regions)',
    value: 1e9 / best[0],
    unit: 'cycles/s',
    baseline: "the issue's figure",
    baselineValue: 10000,
    kind: 'time',
    target: '>= 1',
  });
  for (let i = 1; i < sizes.length; i++) {
    report({
      name: `device-window map+unmap cycle, ${sizes[i]} regions`,
      value: best[i] / 1000,
      unit: 'us',
      baseline: 'the same with 100 regions',
      baselineValue: best[0] / 1000,
      target: '<= 2',
    });
  }
})().catch((error) => {
  console.error(error);
  process.exit(1);
});
