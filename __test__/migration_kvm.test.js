// Live migration of memory a KVM guest writes while the pre-copy rounds run: between frames of
// the stream the guest's code fills areas below and above the MMIO gap (and rewrites areas
// already sent), the VGA window is unmapped and a device window placed; after the migration a
// new KVM partition on the destination's manager sums every area through guest code, and the
// device window and the unmapped VGA window behave for the guest as at the source.
//
// Skipped, with the reason, without /dev/kvm (helpers/kvm.js).
'use strict';
const mb = require('../dist');
const { kvmTest } = require('./helpers/kvm');
const { programs, CODE, RUN, VGA, WINDOW_GPA, HIGH, layout, guestOn, patternSum } = require('./helpers/guest');
const { rng } = require('./helpers/snapshot');
const { relayed } = require('./helpers/migration');

const { MiB, KiB, GuestMemoryBuilder, Mappable, RamVisibility } = mb;

const QWORDS = 8192n; // 64 KiB per area

kvmTest('memory a KVM guest writes during the pre-copy rounds arrives; a new guest sums it back', async (t) => {
  const rand = rng(77);
  const source = await new GuestMemoryBuilder().x86LegacySupport(true).build(layout());
  t.teardown(() => source.close());
  const guest = await guestOn(t, source);
  const object = Mappable.allocSharedMemory(0x1000, 'nic');
  t.teardown(() => object.close());
  const window = source.deviceMemoryMapper().newRegion(0x1000, 'nic');
  await window.region.map(0, object, 0, 0x1000, true);
  await window.control.mapToGuest(WINDOW_GPA, true);
  // The window's halves stay referenced until the test ends: once both are collected, the
  // window leaves the guest.
  t.teardown(() => void window);
  /** The last key the guest filled each area with, by base. */
  const areas = new Map();
  const fill = async (base) => {
    const key = (BigInt(rand.next()) << 32n) | BigInt(rand.next());
    await guest.run(programs.fillPattern, { rdi: base, rcx: QWORDS, rdx: key });
    areas.set(base, key);
  };
  const pick = (i) => (i % 2 === 0 ? 16n * MiB + BigInt(rand.below(512)) * 64n * KiB : HIGH.start + BigInt(rand.below(1024)) * 64n * KiB);
  for (let i = 0; i < 6; i++) await fill(pick(i));
  let paused = false;
  const { source: a, destination: b } = relayed(t, async (_chunk, index) => {
    if (paused) return;
    // The guest runs between frames: new areas, and areas already sent rewritten.
    if (index % 2 === 1) await fill(index % 4 === 1 ? pick(index) : [...areas.keys()][index % areas.size]);
    if (index === 4) await source.ramVisibilityControl().setRamVisibility(VGA, RamVisibility.Unmapped);
  });
  const [sent, received] = await Promise.allSettled([
    source.migrate(a, {
      pause: () => {
        paused = true;
      },
    }),
    GuestMemoryBuilder.migrateFrom(b, { windowBackings: { nic: object } }),
  ]);
  t.is(sent.status, 'fulfilled', String(sent.reason?.stack));
  t.is(received.status, 'fulfilled', String(received.reason?.stack));
  const destination = received.value;
  t.teardown(() => destination.close());
  t.true(areas.size > 6, 'the guest wrote during the rounds');

  const moved = await guestOn(t, destination);
  for (const [base, key] of areas) t.is(await moved.sum(base, QWORDS), patternSum(base, QWORDS, key), `area 0x${base.toString(16)}`);
  // The VGA window is unmapped for the new guest too: its load is an MMIO exit.
  moved.memory.writeAt(CODE, programs.loadAddStore);
  moved.vcpu.setRegisters({ rip: CODE, rdi: VGA.start, rsi: 0x30_0000n, rdx: 0n });
  t.is((await moved.vcpu.run(RUN)).kind, 'MmioRead');
  moved.vcpu.completeRead(0);
  t.is((await moved.vcpu.run(RUN)).kind, 'IoOut');
  // The device window is placed with its backing: the new guest writes through it.
  await moved.run(programs.fillPattern, { rdi: WINDOW_GPA, rcx: 1n, rdx: 0x77n });
  t.is(moved.memory.readU64(WINDOW_GPA), WINDOW_GPA ^ 0x77n);
});
