// The registrar's lock-free fast path called from JavaScript (every chunk already registered),
// against an empty native call with the same argument types measured in the same run.
'use strict';
const { MemoryLayout, MemoryRegistrar, GiB } = require('../dist');
const { __bench } = require('../dist/internal');
const { measure, report } = require('./harness');

const layout = MemoryLayout.new(64n * GiB, []);
const registrar = new MemoryRegistrar(layout, 0, () => {});
registrar.register(0, 64n * GiB);

const addresses = Array.from({ length: 1024 }, (_, i) => BigInt(i) * 0x100000n);
const fast = measure((i) => registrar.register(addresses[i & 1023], 4096n));
const noop = measure((i) => __bench.noopBigints(addresses[i & 1023], 4096n));
report({
  name: 'MemoryRegistrar.register fast path (from JS)',
  value: fast,
  unit: 'ns',
  baseline: 'empty native call (bigint, bigint)',
  baselineValue: noop,
});
