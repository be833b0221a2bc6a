// Reads into new buffers that are too large: the whole range is checked before the buffer is
// allocated, so a read that cannot succeed fails at once (not after allocating gigabytes and
// copying up to a hole), and the errors are the same coded ones on every Node version (Node 22
// threw an uncoded RangeError for a failed Buffer allocation, Node 24 ERR_MEMORY_ALLOCATION_FAILED).
'use strict';
const test = require('ava');
const fs = require('node:fs');
const { constants } = require('node:buffer');
const mb = require('../dist');

const { GiB, TiB, range, MemoryLayout, GuestMemoryBuilder, GuestMemory } = mb;

/** 4 GiB of RAM around the x86 MMIO gap [3 GiB, 4 GiB). */
async function fourGiB() {
  const manager = await new GuestMemoryBuilder().build(MemoryLayout.new(4n * GiB, [range(3n * GiB, 4n * GiB)]));
  return { manager, memory: await manager.client().guestMemory() };
}

const rssBytes = () => process.memoryUsage().rss;

test(`read(0, 2**40) beyond the guest is ERR_GUEST_MEMORY_OUT_OF_RANGE at once (${process.version})`, async (t) => {
  const { manager, memory } = await fourGiB();
  for (const m of [memory, GuestMemory.allocate(0x10000)]) {
    const error = t.throws(() => m.read(0, 2 ** 40), { instanceOf: mb.GuestMemoryError, code: 'ERR_GUEST_MEMORY_OUT_OF_RANGE' });
    t.deepEqual(error.range, { start: 0n, end: 1n << 40n });
    await t.throwsAsync(m.readAtAsync(0, 2 ** 40), { instanceOf: mb.GuestMemoryError, code: 'ERR_GUEST_MEMORY_OUT_OF_RANGE' });
  }
  await manager.close();
});

// The range is checked first, so the Buffer limit matters only for a guest larger than it: on
// Node 20 (4 GiB), not on Node 22 and later (2^53-1 bytes, more than any reservation here).
const limitTitle = `a read longer than the largest Buffer is a RangeError naming the limit (${process.version})`;
if (BigInt(constants.MAX_LENGTH) >= TiB) {
  test.skip(`${limitTitle} [skipped: buffer.constants.MAX_LENGTH is 0x${constants.MAX_LENGTH.toString(16)}, beyond any guest this machine can reserve; js_api::args has the Rust test]`, () => {});
} else {
  test(limitTitle, async (t) => {
    const manager = await new GuestMemoryBuilder().build(MemoryLayout.new(TiB, [range(3n * GiB, 4n * GiB)]));
    const memory = await manager.client().guestMemory();
    const tooLong = BigInt(constants.MAX_LENGTH) + 1n;
    for (const read of [async () => memory.read(4n * GiB, tooLong), () => memory.readAtAsync(4n * GiB, tooLong)]) {
      const error = await t.throwsAsync(read(), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE' });
      t.regex(error.message, new RegExp(`len 0x${tooLong.toString(16)} is larger than the largest Buffer \\(buffer\\.constants\\.MAX_LENGTH, 0x${constants.MAX_LENGTH.toString(16)}`));
    }
    await manager.close();
  });
}

test(`readAtAsync(0, 5 GiB) over the MMIO gap of a 4 GiB guest fails at once, naming the hole, without allocating (${process.version})`, async (t) => {
  const { manager, memory } = await fourGiB();
  const before = rssBytes();
  for (const read of [() => memory.readAtAsync(0, 5n * GiB), async () => memory.read(0, 5n * GiB)]) {
    const error = await t.throwsAsync(read(), { instanceOf: mb.GuestMemoryError, code: 'ERR_GUEST_MEMORY_OUT_OF_RANGE' });
    t.is(error.gpa, 3n * GiB, 'the first byte of the hole');
    t.deepEqual(error.range, { start: 0n, end: 5n * GiB });
    t.is(error.cause?.code, 'ERR_NO_MAPPING');
    t.is(error.cause.message, 'no mapping for 0xc0000000-0x100000000');
  }
  // Before, the read allocated 5 GiB and copied 3 GiB before it met the gap.
  t.true(rssBytes() - before < 256 * 2 ** 20, `RSS grew by ${(rssBytes() - before) / 2 ** 20} MiB`);
  // A large read that fits still works, through the same path.
  memory.writeU64(3n * GiB - 8n, 0x0123_4567_89ab_cdefn);
  t.is((await memory.readAtAsync(3n * GiB - 0x100000n, 0x100000)).readBigUInt64LE(0x100000 - 8), 0x0123_4567_89ab_cdefn);
  t.is(memory.read(3n * GiB - 0x100000n, 0x100000).readBigUInt64LE(0x100000 - 8), 0x0123_4567_89ab_cdefn);
  await manager.close();
});

const overcommit = fs.readFileSync('/proc/sys/vm/overcommit_memory', 'utf8').trim();
const allocationTitle = `a buffer that cannot be allocated is ERR_ALLOCATION_FAILED with its size (${process.version})`;
if (overcommit === '1') {
  test.skip(`${allocationTitle} [skipped: vm.overcommit_memory is 1: the kernel grants any allocation]`, () => {});
} else if (BigInt(constants.MAX_LENGTH) < 2n * TiB) {
  test.skip(`${allocationTitle} [skipped: the largest Buffer here, 0x${constants.MAX_LENGTH.toString(16)} bytes, is refused before any allocation]`, () => {});
} else {
  test(allocationTitle, async (t) => {
    // 4 TiB of RAM (lazily mapped, nothing resident): a 2 TiB read passes the range check, and
    // its buffer is more than the host can commit.
    const manager = await new GuestMemoryBuilder().build(MemoryLayout.new(4n * TiB, [range(3n * GiB, 4n * GiB)]));
    const memory = await manager.client().guestMemory();
    for (const read of [async () => memory.read(4n * GiB, 2n * TiB), () => memory.readAtAsync(4n * GiB, 2n * TiB)]) {
      const error = await t.throwsAsync(read(), { instanceOf: mb.MembackingError, code: 'ERR_ALLOCATION_FAILED' });
      t.is(error.size, 2n * TiB);
      t.regex(error.message, /failed to allocate a 0x20000000000-byte buffer for the read: read it in smaller pieces/);
    }
    await manager.close();
  });
}
