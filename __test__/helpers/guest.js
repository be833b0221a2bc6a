// A KVM guest for the tests that check memory through guest code, and the machine they use: a 64-bit CPL3 vCPU on a new
// KvmPartition attached to a manager, which runs the guest programs (`guestPrograms()`) to their
// done port, and sums qwords as the guest reads them. Declare such tests with `kvmTest`
// (helpers/kvm.js).
'use strict';
const { KvmPartition, MemoryLayout, Vtl, guestPrograms, range, KiB, MiB, GiB } = require('../../dist');

const programs = guestPrograms();
/** Where the program runs. */
const CODE = 0x1000n;
/** The identity page tables the vCPU is created with. */
const PAGE_TABLES = range(2n * MiB, 4n * MiB + 8n * KiB);
const RUN = { timeoutMs: 20000 };
const MASK64 = (1n << 64n) - 1n;
/** The machine of these tests: 64 MiB below the MMIO gap and 64 MiB above it, the VGA window, a place for a device window. */
const VGA = range(0xa_0000, 0xc_0000);
const WINDOW_GPA = 0xd000_0000n;
const LOW = range(0, 64n * MiB);
const HIGH = range(4n * GiB, 4n * GiB + 64n * MiB);
const layout = () => MemoryLayout.fromRanges([{ range: LOW }, { range: HIGH }], [range(3n * GiB, 4n * GiB)]);

/** A KVM partition with a 64-bit CPL3 vCPU attached to `manager`; `run(program, registers)` runs to the done port and returns the other exits. */
async function guestOn(t, manager) {
  const partition = await KvmPartition.create();
  await manager.attachPartition(Vtl.Vtl0, partition);
  const memory = await manager.client().guestMemory();
  const vcpu = await partition.createVcpu({ pageTables: PAGE_TABLES });
  t.teardown(() => {
    vcpu.close();
    partition.close();
    memory.close();
  });
  const run = async (program, registers) => {
    memory.writeAt(CODE, program);
    vcpu.setRegisters({ rip: CODE, ...registers });
    const exits = [];
    for (;;) {
      const exit = await vcpu.run(RUN);
      if (exit.kind === 'IoOut' && exit.port === programs.donePort) return exits;
      if (exit.kind !== 'IoOut') throw new Error(`unexpected exit ${exit.kind}`);
      exits.push(exit);
    }
  };
  /** The guest sums `count` qwords from `gpa`. */
  const sum = async (gpa, count) => {
    const halves = (await run(programs.sumQwords, { rdi: gpa, rcx: count })).map((e) => BigInt(e.data.readUInt32LE(0)));
    return halves[0] | (halves[1] << 32n);
  };
  return { partition, memory, vcpu, run, sum };
}

/** The sum of the qwords `gpa ^ key` over `count` qwords from `base`. */
function patternSum(base, count, key) {
  let sum = 0n;
  for (let i = 0n; i < count; i++) sum = (sum + ((base + 8n * i) ^ key)) & MASK64;
  return sum;
}


module.exports = { programs, CODE, PAGE_TABLES, RUN, VGA, WINDOW_GPA, LOW, HIGH, layout, guestOn, patternSum };
