// Every way this library writes guest RAM, checked against dirty tracking and incremental
// snapshots (docs/snapshots.md, "What dirty means"): for each write path, take() reports every
// page whose bytes changed, and full snapshot → writes → incremental snapshot → restore (copy
// and, where it can, lazy) gives the source's RAM byte for byte. Also the two ways writes were
// lost: a write that fails part-way (its first bytes land, then it faults at a read-only or
// unmapped page), and a KVM partition closed before its dirty log was harvested.
//
// Lazy restores are skipped with the reason where userfaultfd is unavailable, KVM tests where
// /dev/kvm cannot be opened (helpers/snapshot.js, helpers/kvm.js).
'use strict';
const test = require('ava');
const path = require('node:path');
const { Worker } = require('node:worker_threads');
const mb = require('../dist');
const { userfaultfdUnavailable, rng, tempDir, ramImage } = require('./helpers/snapshot');
const { kvmTest } = require('./helpers/kvm');
const guest = require('./helpers/guest');

const { GiB, MiB, range, MemoryLayout, GuestMemoryBuilder } = mb;

const P = 4096n;
const LOW = range(0, 16n * MiB);
const HIGH = range(4n * GiB, 4n * GiB + 8n * MiB);
const PAM1 = range(0xc_4000, 0xc_8000);
const layout = () => MemoryLayout.fromRanges([{ range: LOW }, { range: HIGH }], [range(3n * GiB, 4n * GiB)]);
const MODES = userfaultfdUnavailable === null ? ['copy', 'lazy'] : ['copy'];

/** A random `len`-byte place in RAM that stays visible (low RAM from 1 MiB, or high RAM). */
function place(rand, len) {
  const ram = rand.below(3) === 0 ? HIGH : range(MiB, LOW.end);
  return ram.start + BigInt(rand.below(Number(ram.len) - len));
}

/** The GPAs of the pages whose bytes differ between two RAM images of `manager`. */
function changedPages(manager, before, after) {
  const pages = [];
  for (const region of manager.ramRegions()) {
    for (let offset = 0n; offset < region.range.len; offset += P) {
      const at = Number(region.fileOffset + offset);
      if (!before.subarray(at, at + 4096).equals(after.subarray(at, at + 4096))) pages.push(region.range.start + offset);
    }
  }
  return pages;
}

const hex = (value) => `0x${value.toString(16)}`;

/**
 * Checks a chain on `manager` (tracking on, `full` its chain head): `write()` changes RAM; every
 * changed page must be in the next take, and an incremental snapshot on `full` must restore,
 * in every mode, to the RAM as it is then.
 */
async function checkWrites(t, manager, root, write, restoreOptions = {}) {
  const tracking = manager.dirtyTracking();
  await tracking.take();
  const before = ramImage(manager);
  await write();
  const after = ramImage(manager);
  const reported = await tracking.take();
  const missed = changedPages(manager, before, after).filter((gpa) => !reported.some((r) => r.start <= gpa && gpa < r.end));
  t.deepEqual(missed.map(hex), [], `take() reported ${reported.join(' ')}`);
  const dir = path.join(root, `incr-${Math.random().toString(16).slice(2)}`);
  const info = await manager.snapshot(dir, { base: path.join(root, 'full') });
  t.true(info.incremental);
  for (const mode of MODES) {
    const restored = await GuestMemoryBuilder.restore(dir, { mode, ...restoreOptions });
    if (mode === 'lazy') await restored.lazyRestore.done;
    const image = ramImage(restored);
    await restored.close();
    t.deepEqual(changedPages(manager, after, image).map(hex), [], `${mode} restore`);
  }
}

/** A manager with scattered data, tracking on, a full snapshot `full` in a fresh directory. */
async function tracked(t, seed, prepare = () => {}) {
  const manager = await new GuestMemoryBuilder().x86LegacySupport(true).build(layout());
  t.teardown(() => manager.close());
  await manager.dirtyTracking().start();
  const memory = await manager.client().guestMemory();
  t.teardown(() => memory.close());
  const rand = rng(seed);
  for (let i = 0; i < 100; i++) {
    const len = 1 + rand.below(9000);
    memory.writeAt(place(rand, len), rand.bytes(len));
  }
  prepare(memory);
  const root = tempDir(t);
  await manager.snapshot(path.join(root, 'full'));
  return { manager, memory, rand, root };
}

/** Random writes through each GuestMemory write path (a fixed seed per path). */
const writePaths = {
  writeAt: (memory, rand) => {
    for (let i = 0; i < 30; i++) {
      const len = 1 + rand.below(9000);
      memory.writeAt(place(rand, len), rand.bytes(len));
    }
  },
  fillAt: (memory, rand) => {
    for (let i = 0; i < 30; i++) {
      const len = 1 + rand.below(9000);
      memory.fillAt(place(rand, len), 1 + rand.below(255), len);
    }
  },
  'writeU8..U64': (memory, rand) => {
    for (let i = 0; i < 40; i++) {
      const gpa = place(rand, 8) & ~7n;
      [() => memory.writeU8(gpa, 1 + rand.below(255)), () => memory.writeU16(gpa, 1 + rand.below(65535)), () => memory.writeU32(gpa, 1 + rand.below(2 ** 31)), () => memory.writeU64(gpa, BigInt(1 + rand.below(2 ** 31)) << 20n)][i % 4]();
    }
  },
  'compareExchangeU8..U64': (memory, rand) => {
    for (let i = 0; i < 40; i++) {
      const gpa = place(rand, 8) & ~7n;
      const width = i % 4;
      const current = [memory.readU8, memory.readU16, memory.readU32, memory.readU64][width].call(memory, gpa);
      const exchange = [memory.compareExchangeU8, memory.compareExchangeU16, memory.compareExchangeU32, memory.compareExchangeU64][width];
      exchange.call(memory, gpa, current, width === 3 ? BigInt(i + 1) : i + 1);
    }
  },
  writev: (memory, rand) => {
    for (let i = 0; i < 10; i++) {
      const list = [];
      for (let j = 0; j < 4; j++) {
        const len = 1 + rand.below(6000);
        list.push({ gpa: place(rand, len), buffer: rand.bytes(len) });
      }
      memory.writev(list);
    }
  },
  writeAtAsync: async (memory, rand) => {
    for (let i = 0; i < 20; i++) {
      const len = 1 + rand.below(9000);
      await memory.writeAtAsync(place(rand, len), rand.bytes(len));
    }
  },
  'writeRange and zeroRange': (memory, rand) => {
    for (let i = 0; i < 20; i++) {
      const gpns = [0, 1, 2].map(() => place(rand, 4096) / P);
      const offset = rand.below(4096);
      const len = 1 + rand.below(3 * 4096 - offset);
      if (i % 2 === 0) memory.writeRange({ offset, len: BigInt(len), gpns }, rand.bytes(len));
      else memory.zeroRange({ offset, len: BigInt(len), gpns });
    }
  },
  'subrange writes (low and high)': (memory, rand) => {
    for (const base of [3n * MiB, HIGH.start + MiB]) {
      const view = memory.subrange(base, 2n * MiB);
      for (let i = 0; i < 10; i++) {
        const len = 1 + rand.below(9000);
        view.writeAt(BigInt(rand.below(2 * 1024 * 1024 - len)), rand.bytes(len));
      }
      view.close();
    }
  },
  'writes to locked pages': (memory, rand) => {
    const locked = memory.lockGpns([place(rand, 4096) / P, place(rand, 4096) / P]);
    for (const gpn of locked.gpns) memory.writeAt(gpn * P + 8n, rand.bytes(100));
    locked.release();
  },
  'a worker thread (toHandle)': async (memory, rand) => {
    const seed = rand.below(1000);
    const source = `const { workerData } = require('node:worker_threads'); const { GuestMemory } = require(${JSON.stringify(path.join(__dirname, '..', 'dist'))});
const memory = GuestMemory.fromHandle(workerData.handle);
for (let i = 0; i < 20; i++) memory.writeAt(0x1_0000_0000n + BigInt(((workerData.seed + i * 79) % 1900) * 4096 + 13), Buffer.alloc(5000, i + 1));
memory.close();`;
    await new Promise((resolve, reject) => {
      const worker = new Worker(source, { eval: true, workerData: { handle: memory.toHandle(), seed } });
      worker.on('error', reject);
      worker.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`the worker exited with ${code}`))));
    });
  },
};

for (const [name, write] of Object.entries(writePaths)) {
  test(`${name}: take() reports every changed page and an incremental snapshot restores them byte-exact`, async (t) => {
    const { manager, memory, rand, root } = await tracked(t, name.length * 31 + name.charCodeAt(0));
    await checkWrites(t, manager, root, () => write(memory, rand));
  });
}

test('decommitted pages that held data read back as zeros after a restore of the increment', async (t) => {
  // Data in the base at 2 MiB and at the start of high RAM; more written at 5 MiB after it.
  const { manager, memory, root } = await tracked(t, 4, (memory) => {
    memory.fillAt(2n * MiB, 0xa5, 64n * P);
    memory.fillAt(HIGH.start, 0xa6, 3n * P);
  });
  await checkWrites(t, manager, root, async () => {
    memory.fillAt(5n * MiB, 0x5a, 64n * P);
    await manager.decommitRam(range(2n * MiB, 2n * MiB + 64n * P));
    await manager.decommitRam(range(HIGH.start, HIGH.start + 3n * P));
    await manager.decommitRam(range(5n * MiB, 5n * MiB + P));
  });
  t.is(memory.readU8(2n * MiB), 0);
  t.is(memory.readU8(5n * MiB + P), 0x5a);
});

test('a write that fails part-way is reported: its first bytes, written before the fault, survive an incremental snapshot', async (t) => {
  const { manager, memory, root } = await tracked(t, 5);
  // PAM1 read-only, the page before it writable; both views placed by an access before the write.
  await manager.ramVisibilityControl().setRamVisibility(PAM1, 'ReadOnly');
  memory.readU8(PAM1.start - 1n);
  memory.readU8(PAM1.start);
  // The same at the end of low RAM, where nothing follows.
  memory.readU8(LOW.end - 1n);
  await checkWrites(t, manager, root, () => {
    for (const end of [PAM1.start, LOW.end]) {
      t.throws(() => memory.writeAt(end - 100n, Buffer.alloc(200, 0x55)), { code: 'ERR_GUEST_MEMORY_OUT_OF_RANGE' });
      t.is(memory.readU8(end - 100n), 0x55, 'the bytes before the fault were written');
    }
  });
});

kvmTest('guest writes of a KVM partition closed before the next take are not lost: the take reports all RAM', async (t) => {
  const manager = await new GuestMemoryBuilder().x86LegacySupport(true).build(guest.layout());
  t.teardown(() => manager.close());
  await manager.dirtyTracking().start();
  const teardowns = [];
  const vm = await guest.guestOn({ teardown: (fn) => teardowns.push(fn) }, manager);
  t.teardown(() => teardowns.forEach((fn) => fn()));
  const root = tempDir(t);
  await manager.snapshot(path.join(root, 'full'));
  await checkWrites(t, manager, root, async () => {
    await vm.run(guest.programs.fillPattern, { rdi: 20n * MiB, rcx: 8192n, rdx: 0x1234n });
    await vm.run(guest.programs.fillPattern, { rdi: guest.HIGH.start + 5n * MiB, rcx: 1024n, rdx: 0x77n });
    // The VM is closed before anything harvested its dirty log.
    teardowns.splice(0).forEach((fn) => fn());
  });
  const memory = await manager.client().guestMemory();
  t.is(memory.readU64(20n * MiB), (20n * MiB) ^ 0x1234n);
  memory.close();
});

kvmTest('guest writes through a KVM vCPU below and above the gap, across visibility changes and a moving device window, are all reported and restored', async (t) => {
  const manager = await new GuestMemoryBuilder().x86LegacySupport(true).build(guest.layout());
  t.teardown(() => manager.close());
  await manager.dirtyTracking().start();
  const vm = await guest.guestOn(t, manager);
  const root = tempDir(t);
  await manager.snapshot(path.join(root, 'full'));
  const rand = rng(12);
  const object = mb.Mappable.allocSharedMemory(0x4000, 'fb');
  t.teardown(() => object.close());
  const window = manager.deviceMemoryMapper().newRegion(0x4000, 'fb');
  t.teardown(() => void window);
  await checkWrites(
    t,
    manager,
    root,
    async () => {
      for (let i = 0; i < 8; i++) {
        const ram = i % 2 ? guest.HIGH : range(8n * MiB, guest.LOW.end);
        const gpa = ram.start + BigInt(rand.below(Number((ram.len - 64n * 1024n) / P))) * P;
        await vm.run(guest.programs.fillPattern, { rdi: gpa, rcx: 8192n, rdx: BigInt(rand.below(2 ** 31)) });
      }
      // A PAM piece written, then hidden (its slot deleted) and shown again.
      const pam = range(0xc_8000, 0xc_c000);
      await vm.run(guest.programs.fillPattern, { rdi: pam.start, rcx: 512n, rdx: 5n });
      await manager.ramVisibilityControl().setRamVisibility(pam, 'Unmapped');
      await manager.ramVisibilityControl().setRamVisibility(pam, 'ReadWrite');
      // A device window over the hidden VGA RAM, written, then moved to the MMIO gap.
      await manager.ramVisibilityControl().setRamVisibility(guest.VGA, 'Unmapped');
      await window.region.map(0, object, 0, 0x4000, true);
      await window.control.mapToGuest(guest.VGA.start, true);
      await vm.run(guest.programs.fillPattern, { rdi: guest.VGA.start, rcx: 2048n, rdx: 7n });
      await window.control.mapToGuest(guest.WINDOW_GPA, true);
      await vm.run(guest.programs.fillPattern, { rdi: guest.WINDOW_GPA, rcx: 2048n, rdx: 8n });
    },
    { windowBackings: { fb: object } },
  );
});

kvmTest('guest writes in the VTL2 range and through the VTL0 alias map are reported and restored', async (t) => {
  const alias = 64n * GiB;
  const vtl2Layout = MemoryLayout.new(64n * MiB, [range(3n * GiB, 4n * GiB)], range(4n * GiB, 4n * GiB + 32n * MiB));
  const manager = await new GuestMemoryBuilder().vtl0AliasMap(alias).build(vtl2Layout);
  t.teardown(() => manager.close());
  await manager.dirtyTracking().start();
  const partition = await mb.KvmPartition.create();
  await manager.attachPartition(mb.Vtl.Vtl2, partition);
  const memory = await manager.client().guestMemory();
  const vcpu = await partition.createVcpu({ pageTables: guest.PAGE_TABLES });
  t.teardown(() => {
    vcpu.close();
    partition.close();
    memory.close();
  });
  const fill = async (gpa, seed) => {
    memory.writeAt(guest.CODE, guest.programs.fillPattern);
    vcpu.setRegisters({ rip: guest.CODE, rdi: gpa, rcx: 4096n, rdx: BigInt(seed) });
    t.like(await vcpu.run(guest.RUN), { kind: 'IoOut', port: guest.programs.donePort });
  };
  const root = tempDir(t);
  await manager.snapshot(path.join(root, 'full'));
  const rand = rng(13);
  await checkWrites(t, manager, root, async () => {
    for (let i = 0; i < 4; i++) await fill(alias + 8n * MiB + BigInt(rand.below(200)) * 0x4_0000n, i + 1); // VTL0 RAM through the alias
    for (let i = 0; i < 4; i++) await fill(4n * GiB + BigInt(rand.below(100)) * 0x4_0000n, i + 10); // the VTL2 range
    await fill(alias + 4n * GiB + 0x10_0000n, 20); // the VTL2 range through the alias
  });
});
