// The closed list of error codes (`ERROR_CODES`, generated from the Rust error table, plus Node's
// errno names for OS errors) against what the package really throws: every code is either
// provoked here through the public API, provoked by another test file that says so, or listed as
// unreachable from JavaScript with the reason. A code thrown here that is not in the list fails,
// and so does a listed code that none of the three accounts for (or that two of them claim).
'use strict';
const test = require('ava');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const mb = require('../dist');
const { once } = require('node:events');
const { duplexPair } = require('node:stream');
const { kvmTest, kvmUnavailable } = require('./helpers/kvm');
const { relayed } = require('./helpers/migration');

const { GiB, MiB, range, MemoryRange, MemoryLayout, GuestMemoryBuilder, GuestMemory, SparseMapping, Mappable, MemoryRegistrar, RecordingPartition, KvmPartition, Vtl, RamVisibility } = mb;

const ERRNO_NAMES = new Set(Object.keys(os.constants.errno));
const KNOWN = new Set([...mb.ERROR_CODES, ...ERRNO_NAMES]);
const P = 4096;
const GAP = range(3n * GiB, 4n * GiB);
const layout = () => MemoryLayout.new(GiB, [GAP]);

/** The codes of `error` and of its causes, outermost first. */
function codeChain(error) {
  const codes = [];
  for (let e = error; e !== undefined && e !== null && codes.length < 10; e = e.cause) codes.push(e.code);
  return codes;
}

/** A manager over 1 GiB of RAM (x86 legacy support when `x86`) with a RecordingPartition attached. */
async function attached({ x86 = false } = {}) {
  const manager = await new GuestMemoryBuilder().x86LegacySupport(x86).build(layout());
  const partition = new RecordingPartition();
  await manager.attachPartition(Vtl.Vtl0, partition);
  return { manager, partition };
}

/** Runs `body(manager)` on a fresh manager (built with `configure(builder)`) and closes it. */
async function withManager(body, configure = (b) => b) {
  const manager = await configure(new GuestMemoryBuilder()).build(layout());
  try {
    return await body(manager);
  } finally {
    await manager.close();
  }
}

/** A device window of `len` bytes with a 64 KiB object mapped at its start. */
function deviceWindow(manager, len = 0x10000) {
  const { control, region } = manager.deviceMemoryMapper().newRegion(len, 'sweep');
  return { control, region, object: Mappable.allocSharedMemory(0x10000, 'sweep') };
}

/** A GuestMemory over one allocated page of four whose pageFault answers `answer`. */
function faultingMemory(answer, hooks = {}) {
  const mapping = new SparseMapping(4 * P);
  mapping.alloc(0, P);
  return GuestMemory.fromSparseMapping(mapping, { pageFault: () => answer, ...hooks });
}

/** How each reachable code is provoked: a function that throws (or rejects) with it in its cause chain. */
const PROVOKED = {
  ERR_INVALID_ARG_TYPE: () => range('0', 1),
  ERR_INVALID_ARG_VALUE: () => MemoryRange.new(0x1000, 0x1800),
  ERR_BUFFER_CHANGED: () => {
    // A pageFault hook that detaches the buffer readAt is copying into.
    const dest = new Uint8Array(2 * P);
    const mapping = new SparseMapping(2 * P);
    mapping.alloc(0, P);
    const memory = GuestMemory.fromSparseMapping(mapping, {
      pageFault: () => {
        structuredClone(dest.buffer, { transfer: [dest.buffer] });
        mapping.alloc(P, P);
        return 'retry';
      },
    });
    memory.readAt(0, dest);
  },
  ERR_INVALID_INPUT: () => new SparseMapping(0),
  ERR_CLOSED: () => {
    const mapping = new SparseMapping(P);
    mapping.close();
    return mapping.length;
  },
  ERR_INVALID_MEMORY_RANGE: () => MemoryRange.tryNew(0x1001, 0x2000),
  ERR_BAD_SIZE: () => MemoryLayout.new(0x1001, [GAP]),
  ERR_BAD_MEMORY_RANGES: () => MemoryLayout.new(2n * GiB, [range(GiB, 0xffff_ffff_ffff_f000n)]),
  ERR_INVALID_RAM_FOR_X86: () => new GuestMemoryBuilder().x86LegacySupport(true).build(MemoryLayout.new(0x8_0000, [GAP])),
  ERR_REGISTRATION_FAILED: () =>
    new MemoryRegistrar(MemoryLayout.new(4n * GiB, []), 0, () => {
      throw new Error('refused');
    }).register(0, 1),
  ERR_REGISTRAR_REENTRY: () => {
    let inner;
    const registrar = new MemoryRegistrar(MemoryLayout.new(4n * GiB, []), 0, () => {
      try {
        registrar.register(2n * GiB, 1);
      } catch (error) {
        inner = error;
      }
    });
    registrar.register(0, 1);
    throw inner;
  },
  ERR_OUT_OF_BOUNDS: () => new SparseMapping(P).readAt(P - 1, new Uint8Array(2)),
  ERR_MEMORY: () => new SparseMapping(P).readAt(0, new Uint8Array(1)),
  ERR_GUEST_MEMORY_OTHER: () => faultingMemory('fallback').readU8(2 * P),
  ERR_GUEST_MEMORY_OUT_OF_RANGE: () => GuestMemory.allocate(0x10000).read(0xffff, 2),
  ERR_GUEST_MEMORY_VTL_PROTECTED: () => faultingMemory({ fail: 'VtlProtected' }).readU8(2 * P),
  ERR_GUEST_MEMORY_NOT_PRIVATE: () => faultingMemory({ fail: 'NotPrivate' }).readU8(2 * P),
  ERR_GUEST_MEMORY_NOT_SHARED: () => faultingMemory({ fail: 'NotShared' }).readU8(2 * P),
  ERR_GUEST_MEMORY_FAULT: () => GuestMemory.fromSparseMapping(new SparseMapping(4 * P)).readU8(P),
  ERR_ALLOCATION_FAILED: () => GuestMemory.allocate(1n << 62n),
  ERR_RAM_TOO_LARGE: () => new GuestMemoryBuilder().build(MemoryLayout.new(1n << 63n, [GAP])),
  ERR_VA_MAPPER: () => new GuestMemoryBuilder().build(MemoryLayout.new(1n << 50n, [GAP])),
  ERR_RESERVE: () => new GuestMemoryBuilder().build(MemoryLayout.new(1n << 50n, [GAP])),
  ERR_ALIAS_MAP_WONT_FIT: () => new GuestMemoryBuilder().vtl0AliasMap(0x1_0000_0800n).build(layout()),
  ERR_PRIVATE_MEMORY_WITH_LEGACY: () => new GuestMemoryBuilder().privateMemory(true).x86LegacySupport(true).build(layout()),
  ERR_PRIVATE_MEMORY_WITH_EXISTING_BACKING: () =>
    new GuestMemoryBuilder()
      .privateMemory(true)
      .existingBacking(mb.SharedMemoryBacking.fromMappable(Mappable.allocSharedMemory(GiB, 'loose')))
      .build(layout()),
  ERR_THP_WITHOUT_PRIVATE_MEMORY: () => new GuestMemoryBuilder().transparentHugepages(true).build(layout()),
  ERR_INVALID_LAYOUT: () => new GuestMemoryBuilder().build(MemoryLayout.new(GiB, [])),
  ERR_EXISTING_BACKING_TOO_SMALL: () =>
    new GuestMemoryBuilder().existingBacking(mb.SharedMemoryBacking.fromMappable(Mappable.allocSharedMemory(P, 'short'))).build(layout()),
  ERR_EXISTING_BACKING_NOT_WRITABLE: () => {
    const memfd = Mappable.allocSharedMemory(GiB, 'read-only view');
    const fd = fs.openSync(`/proc/self/fd/${memfd.fd}`, 'r');
    const readOnly = Mappable.fromFd(fd);
    fs.closeSync(fd);
    return new GuestMemoryBuilder().existingBacking(mb.SharedMemoryBacking.fromMappable(readOnly)).build(layout());
  },
  ERR_PARTITION_MAPPER: () => failedAttach('map'),
  ERR_MAP: () => failedAttach('map'),
  ERR_INJECTED_FAILURE: () => failedAttach('map'),
  ERR_PIN: () => failedAttach('pin', (b) => b.pinMappings(true)),
  ERR_UNSUPPORTED: () => withManager((manager) => manager.attachPartition(Vtl.Vtl0, new RecordingPartition(), { remoteProcess: process.pid })),
  ERR_ALREADY_ATTACHED: () =>
    withManager(async (manager) => {
      const partition = new RecordingPartition();
      await manager.attachPartition(Vtl.Vtl0, partition);
      return manager.attachPartition(Vtl.Vtl0, partition);
    }),
  ERR_MEMORY_MANAGER_GONE: async () => {
    const manager = await new GuestMemoryBuilder().build(layout());
    const client = manager.client();
    await manager.close();
    return client.guestMemory();
  },
  ERR_MANAGER_GONE: async () => {
    const manager = await new GuestMemoryBuilder().build(layout());
    await manager.close();
    return manager.inspect();
  },
  ERR_NO_MAPPING: () => withManager(async (manager) => (await manager.client().guestMemory()).read(GAP.start, 1)),
  ERR_INVALID_RAM_REGION: () => withManager((manager) => manager.decommitRam(range(GAP.start, GAP.start + 0x1000n))),
  ERR_OVERLAP_ERROR: () =>
    withManager(async (manager) => {
      await deviceWindow(manager, 0x2000).control.mapToGuest(GAP.start, true);
      await deviceWindow(manager, 0x2000).control.mapToGuest(GAP.start + 0x1000n, true);
    }),
  ERR_REGION_OUT_OF_RANGE: () => withManager((manager) => deviceWindow(manager).control.mapToGuest(1n << 40n, true)),
  ERR_MANAGER_POISONED: () => poisonedChange(),
  ERR_FATAL_ERROR: () => poisonedChange(),
  ERR_REGION_OVERLAPS_PRIVATE_RAM: () => withManager((manager) => deviceWindow(manager).control.mapToGuest(0, true), (b) => b.privateMemory(true)),
  // A device mapping past the end of its object.
  ERR_MAPPING_OUT_OF_RANGE: () =>
    withManager((manager) => {
      const { region, object } = deviceWindow(manager);
      return region.map(0, object, 0xf000, 0x2000, true);
    }),
  ERR_PRIVATE_RAM_ALLOC: {
    // 1 TiB of private RAM is more than the host can commit, unless it overcommits always.
    skip: fs.readFileSync('/proc/sys/vm/overcommit_memory', 'utf8').trim() === '1' ? 'vm.overcommit_memory is 1: the kernel grants any private allocation' : null,
    provoke: () => new GuestMemoryBuilder().privateMemory(true).build(MemoryLayout.new(1n << 40n, [range(1n << 41n, (1n << 41n) + GiB)])),
  },
  ERR_SNAPSHOT_CORRUPT: () =>
    withSnapshot((dir) => {
      const index = path.join(dir, 'extents.bin');
      const bytes = fs.readFileSync(index);
      bytes[20] ^= 1;
      fs.writeFileSync(index, bytes);
      return GuestMemoryBuilder.restore(dir);
    }),
  ERR_SNAPSHOT_VERSION: () =>
    withSnapshot((dir) => {
      const manifest = path.join(dir, 'manifest.json');
      fs.writeFileSync(manifest, fs.readFileSync(manifest, 'utf8').replace('"version":1', '"version":2'));
      return GuestMemoryBuilder.restore(dir);
    }),
  ERR_SNAPSHOT_LAYOUT: () => withSnapshot((dir) => GuestMemoryBuilder.restore(dir, { layout: MemoryLayout.new(2n * GiB, [GAP]) })),
  ERR_DIRTY_TRACKING_OFF: () => withManager((manager) => manager.dirtyTracking().take()),
  ERR_MIGRATION_ABORTED: () => {
    const [source, destination] = duplexPair();
    source.end();
    return GuestMemoryBuilder.migrateFrom(destination);
  },
  ERR_MIGRATION_PROTOCOL: () => {
    const [source, destination] = duplexPair();
    source.end(Buffer.alloc(64, 0x41));
    return GuestMemoryBuilder.migrateFrom(destination);
  },
  ERR_MIGRATION_DOWNTIME: () =>
    withManager(async (manager) => {
      const memory = await manager.client().guestMemory();
      // Written once tracking is on (the handshake is under way): still dirty after round 0.
      const relay = relayed({ teardown: () => undefined }, (_chunk, index) => {
        if (index === 0) memory.fillAt(0x10_0000, 1, P);
      });
      const [sent] = await Promise.allSettled([manager.migrate(relay.source, { pause: () => undefined, maxRounds: 1, maxDowntimeMs: 0 }), GuestMemoryBuilder.migrateFrom(relay.destination)]);
      memory.close();
      if (sent.status === 'rejected') throw sent.reason;
    }),
  ERR_MIGRATION_IN_PROGRESS: () =>
    withManager(async (manager) => {
      const [held, other] = duplexPair();
      const first = manager.migrate(held, { pause: () => undefined });
      await once(other, 'data');
      try {
        await manager.migrate(duplexPair()[0], { pause: () => undefined });
      } finally {
        held.destroy(new Error('released by the sweep'));
        await first.catch(() => undefined);
      }
    }),
  ERR_KVM_UNAVAILABLE: {
    skip: kvmUnavailable === null ? 'KvmPartition.create() succeeds here' : null,
    provoke: () => KvmPartition.create(),
  },
  ERR_VCPU_BUSY: { kvm: true, provoke: () => withVcpu(async ({ vcpu, start }) => {
    start(mb.guestPrograms().spin);
    const running = vcpu.run();
    try {
      vcpu.getRegisters();
    } finally {
      vcpu.cancel();
      await running;
    }
  }) },
  ERR_VCPU_READ_PENDING: { kvm: true, provoke: () => withVcpu(async ({ vcpu, start }) => {
    start(mb.guestPrograms().loadAddStore, { rdi: GAP.start + 0x1000n, rsi: 0x4000n, rdx: 5n });
    const exit = await vcpu.run({ timeoutMs: 20000 });
    if (exit.kind !== 'MmioRead') throw new Error(`expected an MMIO read, got ${exit.kind}`);
    await vcpu.run({ timeoutMs: 20000 });
  }) },
  ERR_NO_PENDING_READ: { kvm: true, provoke: () => withVcpu(({ vcpu }) => vcpu.completeRead(1)) },
  // KVM keeps a closed vCPU until the VM is destroyed: a VM creates 1,024 vCPUs over its life here.
  ERR_TOO_MANY_VCPUS: { kvm: true, provoke: async () => {
    const partition = await KvmPartition.create();
    try {
      for (;;) (await partition.createVcpu({ mode: 'Real', cpl: 0 })).close();
    } finally {
      partition.close();
    }
  } },
};

/** Codes another test file provokes, because the setup does not fit here: the file that does. */
const PROVOKED_ELSEWHERE = {
  // Needs a packed copy of the package with its native binary removed or replaced.
  ERR_NATIVE_BINDING_LOAD_FAILED: 'pack.test.js',
  // Needs one device window more than the KvmPartition has free slots (about 32k).
  ERR_NO_FREE_SLOT: 'kvm.test.js',
};

/** Codes the error table has but JavaScript cannot provoke, and why. */
const UNREACHABLE = {
  ERR_PANIC: 'a Rust panic caught at the binding boundary: a bug, never an expected outcome',
  ERR_THREAD: 'the OS refuses to start a thread',
  ERR_BAD_MMIO_GAPS: 'no layout constructor returns BadMmioGaps (kept for parity with the original error type)',
  ERR_VTL2_RANGE_BEFORE_END_OF_RAM: 'a VTL2 range below the end of RAM always overlaps RAM or a gap, which is BadMemoryRanges first',
  ERR_THP_UNSUPPORTED_PLATFORM: 'only on hosts without transparent huge pages (not Linux)',
  ERR_REMOTE_WITH_PRIVATE_MEMORY: 'remote VA mappers exist only on Windows',
  ERR_EMPTY_REGION: 'a device window checks its own range first (ERR_INVALID_INPUT)',
  ERR_MAPPING_OVERLAP: 'a device window checks its own mappings first (ERR_UNSUPPORTED)',
  ERR_EMPTY_MAPPING: 'a device window checks its own range first (ERR_INVALID_INPUT)',
  ERR_PARTIAL_UNMAP: 'a device window checks its own mappings first (ERR_UNSUPPORTED)',
  ERR_NO_SUCH_REGION: 'a device window handle always names a region the manager knows',
  ERR_INVALID_PARTITION_OFFSET: 'an alias offset that does not fit fails the build (ERR_ALIAS_MAP_WONT_FIT) first',
  ERR_DECOMMIT_FAILED: 'the OS refuses to punch a hole in, or decommit, RAM that a memfd or private mapping backs',
  ERR_KVM_IOCTL: 'KVM refuses an ioctl that the binding makes only with checked arguments',
  ERR_HOST_CALL: 'a host call (mmap, eventfd) around KVM fails',
  ERR_SLOT_OVERLAP: 'the memory manager never asks a KvmPartition for overlapping slots',
  ERR_PARTIAL_SLOT_UNMAP: 'the memory manager never asks a KvmPartition to unmap part of a slot',
  ERR_READ_ONLY_UNSUPPORTED: 'only on kernels without KVM_CAP_READONLY_MEM',
  ERR_DIRTY_LOG_OFF: 'dirty-page logging of a KvmPartition is not exposed to JavaScript',
};

/** Runs `body(dir)` on a fresh snapshot of a manager in a temporary directory, then removes it. */
async function withSnapshot(body) {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'membacking-codes-'));
  try {
    const dir = path.join(root, 'snap');
    await withManager(async (manager) => {
      (await manager.client().guestMemory()).fillAt(0x10_0000, 1, P);
      await manager.snapshot(dir);
    });
    return await body(dir);
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
}

async function failedAttach(op, configure = (b) => b) {
  return withManager(async (manager) => {
    const partition = new RecordingPartition();
    partition.failOn(op, 0);
    await manager.attachPartition(Vtl.Vtl0, partition);
  }, (b) => configure(b));
}

/** A partition failure during a runtime change poisons the manager; the next change fails. */
async function poisonedChange() {
  const { manager, partition } = await attached({ x86: true });
  try {
    const control = manager.ramVisibilityControl();
    const vga = range(0xa_0000, 0xc_0000);
    partition.failOn('map', 0xa_0000);
    await control.setRamVisibility(vga, RamVisibility.Unmapped);
    await control.setRamVisibility(vga, RamVisibility.ReadWrite);
  } finally {
    await manager.close();
  }
}

/** Runs `body` with a 64-bit vCPU of a KVM partition attached to a fresh manager, then closes all. */
async function withVcpu(body) {
  const manager = await new GuestMemoryBuilder().build(layout());
  const partition = await KvmPartition.create();
  try {
    await manager.attachPartition(Vtl.Vtl0, partition);
    const memory = await manager.client().guestMemory();
    const vcpu = await partition.createVcpu({ pageTables: range(2n * MiB, 4n * MiB + 8n * 1024n) });
    const start = (program, registers = {}) => {
      memory.writeAt(0x1000, program);
      vcpu.setRegisters({ rip: 0x1000n, ...registers });
    };
    try {
      return await body({ vcpu, start });
    } finally {
      vcpu.close();
    }
  } finally {
    await manager.close();
    partition.close();
  }
}

for (const [code, entry] of Object.entries(PROVOKED)) {
  const { provoke, skip = null, kvm = false } = typeof entry === 'function' ? { provoke: entry } : entry;
  const title = `${code} is thrown, with known codes along its causes`;
  const body = async (t) => {
    let error;
    try {
      await provoke();
    } catch (thrown) {
      error = thrown;
    }
    t.truthy(error, `${code}: nothing was thrown`);
    const codes = codeChain(error);
    t.true(codes.includes(code), `${code} not in ${JSON.stringify(codes)}: ${error?.message}`);
    for (const c of codes.filter((c) => c !== undefined)) t.true(KNOWN.has(c), `${c} (a cause of ${code}) is not in ERROR_CODES`);
  };
  if (skip !== null) test.skip(`${title} [skipped: ${skip}]`, body);
  else if (kvm) kvmTest(title, body);
  else test(title, body);
}

test('every code in ERROR_CODES is provoked here, provoked elsewhere, or unreachable, exactly once', (t) => {
  const lists = { PROVOKED, PROVOKED_ELSEWHERE, UNREACHABLE };
  const claimed = new Map();
  for (const [list, codes] of Object.entries(lists)) {
    for (const code of Object.keys(codes)) {
      t.true(mb.ERROR_CODES.includes(code), `${list} names ${code}, which is not in ERROR_CODES`);
      t.false(claimed.has(code), `${code} is in both ${claimed.get(code)} and ${list}`);
      claimed.set(code, list);
    }
  }
  for (const code of mb.ERROR_CODES) t.true(claimed.has(code), `${code} is in ERROR_CODES but not accounted for`);
});

test('the codes provoked elsewhere are asserted in the file that provokes them', (t) => {
  for (const [code, file] of Object.entries(PROVOKED_ELSEWHERE)) {
    const text = fs.readFileSync(path.join(__dirname, file), 'utf8');
    t.true(text.includes(`'${code}'`), `${file} does not assert ${code}`);
  }
});

test('an errno name as a code is an OS error: an OS refusal carries it as its cause', async (t) => {
  const error = await t.throwsAsync(async () => PROVOKED.ERR_RESERVE());
  const errno = codeChain(error).find((c) => ERRNO_NAMES.has(c));
  t.is(errno, 'ENOMEM');
});

test('an OS error is named by its errno name also where Node has none (EHWPOISON, ENOEXEC, EUNATCH)', (t) => {
  // The native side sends an OS error as its errno value; the name is made in TypeScript. Node's
  // getSystemErrorName says "Unknown system error -133" for EHWPOISON and names EUNATCH, which
  // os.constants.errno lacks: both must still be `E…` names (the contract's `E${string}`).
  const { errorFromNative } = require('../dist/errors');
  const osError = (errno) => errorFromNative(`\u001f${JSON.stringify({ class: 'OsError', message: 'refused', fields: { errno } })}`);
  const cases = { 22: 'EINVAL', 12: 'ENOMEM', 95: 'ENOTSUP', 8: 'ENOEXEC', 35: 'EDEADLK', 49: 'EUNATCH', 121: 'EREMOTEIO', 133: 'EHWPOISON' };
  for (const [errno, name] of Object.entries(cases)) {
    const error = osError(Number(errno));
    t.true(error instanceof mb.OsError, name);
    t.is(error.code, name);
    t.is(error.errno, Number(errno));
  }
  // Every Linux errno (41 and 58 are unused) has a name.
  for (let errno = 1; errno <= 133; errno++) {
    if (errno !== 41 && errno !== 58) t.regex(osError(errno).code, /^E[A-Z0-9]+$/, `errno ${errno}`);
  }
});
