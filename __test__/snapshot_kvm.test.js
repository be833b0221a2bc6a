// Snapshots of memory a KVM guest wrote: the guest's code fills random places below and above
// the MMIO gap, a device window is placed and the VGA window unmapped; the snapshot is restored
// by copying and lazily into a new manager and a new KvmPartition, and the guest's code reads
// its data back (in lazy mode before the background fill runs, so its first touches are the
// userfaultfd's faults). Dirty tracking reports what the guest wrote.
//
// Skipped, with the reason, without /dev/kvm (helpers/kvm.js); the lazy tests also without
// userfaultfd (helpers/snapshot.js).
'use strict';
const path = require('node:path');
const mb = require('../dist');
const { kvmTest } = require('./helpers/kvm');
const { userfaultfdUnavailable, rng, tempDir, ramImage } = require('./helpers/snapshot');
const { programs, CODE, PAGE_TABLES, RUN, VGA, WINDOW_GPA, LOW, HIGH, layout, guestOn, patternSum } = require('./helpers/guest');

const { MiB, KiB, GuestMemoryBuilder, Mappable, RamVisibility } = mb;

/** A RAM image (RAM object offsets = GPAs below the gap) with the code page and the page tables zeroed. */
function withoutVcpuState(image) {
  image.fill(0, Number(CODE), Number(CODE) + 4096);
  image.fill(0, Number(PAGE_TABLES.start), Number(PAGE_TABLES.end));
  return image;
}

/** Random 64 KiB areas below and above the gap, each with its own key. */
function areas(rand) {
  const pick = (start, len) => start + BigInt(rand.below(Number(len / (64n * KiB)))) * 64n * KiB;
  const out = [];
  for (let i = 0; i < 6; i++) {
    const below = i % 2 === 0;
    out.push({ base: below ? pick(16n * MiB, LOW.end - 16n * MiB) : pick(HIGH.start, HIGH.len), key: (BigInt(rand.next()) << 32n) | BigInt(rand.next()) });
  }
  return out;
}

/** A manager whose guest filled `areas`, with the VGA window unmapped and a device window placed. */
async function writtenByTheGuest(t, rand, { tracking = false } = {}) {
  const manager = await new GuestMemoryBuilder().x86LegacySupport(true).build(layout());
  t.teardown(() => manager.close());
  const guest = await guestOn(t, manager);
  if (tracking) await manager.dirtyTracking().start();
  const written = areas(rand);
  await manager.ramVisibilityControl().setRamVisibility(VGA, RamVisibility.Unmapped);
  for (const { base, key } of written) await guest.run(programs.fillPattern, { rdi: base, rcx: 8192n, rdx: key });
  const object = Mappable.allocSharedMemory(0x1000, 'nic');
  t.teardown(() => object.close());
  const window = manager.deviceMemoryMapper().newRegion(0x1000, 'nic');
  await window.region.map(0, object, 0, 0x1000, true);
  await window.control.mapToGuest(WINDOW_GPA, true);
  return { manager, guest, written, object };
}

kvmTest('dirty tracking reports the pages a KVM guest wrote', async (t) => {
  const { manager, written } = await writtenByTheGuest(t, rng(1), { tracking: true });
  const ranges = await manager.dirtyTracking().take();
  for (const { base } of written) {
    const covered = ranges.some((r) => r.start <= base && r.end >= base + 64n * KiB);
    t.true(covered, `0x${base.toString(16)}: ${ranges.join(' ')}`);
  }
});

for (const mode of ['copy', 'lazy']) {
  const title = `a KVM guest reads its data back after a ${mode} restore into a new manager and partition`;
  const declare = mode === 'lazy' && userfaultfdUnavailable !== null ? (name, fn) => require('ava').skip(`${name} [skipped: userfaultfd unavailable: ${userfaultfdUnavailable}]`, fn) : kvmTest;
  declare(title, async (t) => {
    const { manager, written, object } = await writtenByTheGuest(t, rng(mode === 'copy' ? 2 : 3));
    const dir = path.join(tempDir(t), 'snap');
    await manager.snapshot(dir);
    const image = ramImage(manager);

    const restored = await GuestMemoryBuilder.restore(dir, { mode, windowBackings: { nic: object }, deferBackgroundFill: mode === 'lazy' });
    t.teardown(() => restored.close());
    const guest = await guestOn(t, restored);
    // The guest's first touches (lazy: served by the fault handler, the background fill not started).
    for (const { base, key } of written) t.is(await guest.sum(base, 8192n), patternSum(base, 8192n, key), `area 0x${base.toString(16)}`);
    if (mode === 'lazy') {
      t.true(restored.lazyRestore.stats().faults > 0, 'the guest faulted the pages in');
      t.false(restored.lazyRestore.finished);
      restored.lazyRestore.startBackground();
      await restored.lazyRestore.done;
    }
    // Every byte the snapshot saved, but for what the new vCPU rewrote: its code page and its
    // page tables (whose accessed and dirty bits the hardware sets as the guest runs).
    t.true(withoutVcpuState(ramImage(restored)).equals(withoutVcpuState(image)));
    // The VGA window is still unmapped for the guest: its load is an MMIO exit.
    guest.memory.writeAt(CODE, programs.loadAddStore);
    guest.vcpu.setRegisters({ rip: CODE, rdi: VGA.start, rsi: 0x30_0000n, rdx: 0n });
    const exit = await guest.vcpu.run(RUN);
    t.is(exit.kind, 'MmioRead');
    guest.vcpu.completeRead(0);
    t.is((await guest.vcpu.run(RUN)).kind, 'IoOut');
    // And the device window is placed with its backing: the guest writes through it.
    await guest.run(programs.fillPattern, { rdi: WINDOW_GPA, rcx: 1n, rdx: 0x77n });
    t.is(guest.memory.readU64(WINDOW_GPA), WINDOW_GPA ^ 0x77n);
  });
}
