// MemoryLayout.new with 10, 1,000 and 100,000 gaps: time per gap, against the per-gap time
// with 10 gaps measured in the same run (a ratio near 1 means linear cost).
'use strict';
const { MemoryLayout, range, GiB } = require('../dist');
const { measure, report } = require('./harness');

function gaps(count) {
  // Gaps of 4 KiB every 8 KiB, then RAM continues after the last gap.
  return Array.from({ length: count }, (_, i) => range(BigInt(i) * 0x2000n + 0x1000n, BigInt(i) * 0x2000n + 0x2000n));
}

const perGap = {};
for (const count of [10, 1000, 100000]) {
  const list = gaps(count);
  const ns = measure(() => MemoryLayout.new(GiB, list), { runs: count >= 100000 ? 3 : 7 });
  perGap[count] = ns / count;
}
for (const count of [1000, 100000]) {
  report({
    name: `MemoryLayout.new ${count} gaps (per gap)`,
    value: perGap[count],
    unit: 'ns',
    baseline: 'MemoryLayout.new 10 gaps (per gap)',
    baselineValue: perGap[10],
    target: '<= 2',
  });
}
