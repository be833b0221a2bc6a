// SparseMapping and Mappable through the public API: reservation, placement, unmapping,
// protection, shared memory and file views, decommit, huge pages, names and guarded access, with
// /proc/self/maps checks, and bad input for every entry point.
'use strict';
const test = require('ava');
const fs = require('node:fs');
const mb = require('../dist');
const { checkU64 } = require('./helpers/bad_input');
const { P, MiB, locate, mapsLines } = require('./fixtures/memory');
const { pattern } = require('./helpers/data');

const { SparseMapping, Mappable, SparseMappingError, OsError } = mb;

/** Asserts a SparseMappingError ERR_MEMORY with the given offset, direction and fault. */
function assertMemoryFault(t, fn, { offset, isWrite, signal = 'SIGSEGV', siCode = 2 }) {
  const error = t.throws(fn, { instanceOf: SparseMappingError, code: 'ERR_MEMORY' });
  t.is(error.offset, BigInt(offset));
  t.is(error.isWrite, isWrite);
  t.is(error.fault.signal, signal);
  t.is(error.fault.siCode, siCode);
  if (signal === 'SIGSEGV') t.is(error.fault.trapno, 14);
  t.regex(error.message, isWrite ? /failed to write memory/ : /failed to read memory/);
  return error;
}

test('a zero-length mapping is InvalidInput (RangeError ERR_INVALID_INPUT)', (t) => {
  const error = t.throws(() => new SparseMapping(0), { instanceOf: RangeError, code: 'ERR_INVALID_INPUT' });
  t.is(error.message, 'length must be greater than 0');
  t.throws(() => new SparseMapping(0n), { instanceOf: RangeError, code: 'ERR_INVALID_INPUT' });
  // Creating a mapping installs the handler even when creation fails.
  t.is(mb.handlerStatus(), 'installed');
});

test('a length no address space holds is refused with the length and what to do in the detail', (t) => {
  const refused = t.throws(() => new SparseMapping(2n ** 62n), { code: 'ENOMEM' });
  t.regex(refused.detail, /0x4000000000000000 bytes/);
  t.regex(refused.detail, /ulimit -v/);
  const overflow = t.throws(() => new SparseMapping(2n ** 64n - 4097n), { instanceOf: RangeError, code: 'ERR_INVALID_INPUT' });
  t.is(overflow.message, 'length and alignment combination causes overflow');
  t.regex(overflow.detail, /0xffffffffffffefff/);
});

// Length rounding and base alignment.
test('lengths round up to 4 KiB, 2 MiB or 1 GiB and the base is aligned', (t) => {
  t.is(new SparseMapping(1).length, 4096n);
  t.is(new SparseMapping(P + 1).length, 8192n);
  t.is(new SparseMapping(2 * MiB - 1).length, 2n * 1024n * 1024n);
  const three = new SparseMapping(3 * MiB);
  t.is(three.length, 4n * 1024n * 1024n);
  const big = new SparseMapping(1024 ** 3 + P);
  t.is(big.length, 2n * 1024n ** 3n);
  // Alignment, seen from /proc/self/maps through a memfd placed at a known offset.
  const one = new SparseMapping(1);
  t.is(locate(mb, one, 0).base % 4096n, 0n);
  t.is(locate(mb, three, 0).base % (2n * 1024n * 1024n), 0n);
  t.is(locate(mb, big, 0).base % 1024n ** 3n, 0n);
});

test('lengths too large to round: TypeError for unsafe numbers, InvalidInput for bigints', (t) => {
  t.throws(() => new SparseMapping(2 ** 53), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  t.throws(() => new SparseMapping(Number.MAX_VALUE), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  const error = t.throws(() => new SparseMapping((1n << 64n) - 10n), { instanceOf: RangeError, code: 'ERR_INVALID_INPUT' });
  t.is(error.message, 'length and alignment combination causes overflow');
  t.throws(() => new SparseMapping((1n << 64n) - (1n << 30n) + 1n), { instanceOf: RangeError, code: 'ERR_INVALID_INPUT' });
  // Large but representable: the kernel refuses the reservation with an OS error, not a crash.
  const huge = t.throws(() => new SparseMapping(1n << 62n), { instanceOf: OsError });
  t.is(huge.code, 'ENOMEM');
  t.is(huge.syscall, 'mmap');
});

test('reading reserved but unplaced VA is ERR_MEMORY (SEGV_ACCERR) and the process lives on', (t) => {
  const mapping = new SparseMapping(16 * P);
  t.is(mapping.length, BigInt(16 * P));
  const dest = Buffer.alloc(16, 0x77);
  assertMemoryFault(t, () => mapping.readAt(0, dest), { offset: 0, isWrite: false });
  assertMemoryFault(t, () => mapping.readAt(5 * P + 3, dest), { offset: 0, isWrite: false });
  assertMemoryFault(t, () => mapping.writeAt(P, dest), { offset: 0, isWrite: true });
  assertMemoryFault(t, () => mapping.fillAt(2 * P, 1, 10), { offset: 0, isWrite: true });
  // Still an inaccessible private mapping of the whole range (the last page locates it).
  const { linesOver } = locate(mb, mapping, 15 * P);
  const lines = linesOver(0, 15 * P);
  t.true(lines.length >= 1);
  for (const line of lines) t.is(line.perms, '---p');
  // And the process works on: a later placement and access succeed.
  mapping.alloc(0, P);
  mapping.writeAt(0, Buffer.from('alive'));
  const back = Buffer.alloc(5);
  mapping.readAt(0, back);
  t.is(back.toString(), 'alive');
});

test('alloc gives zeroed read-write memory; a page of 0xCC round-trips', (t) => {
  const mapping = new SparseMapping(4 * P);
  mapping.alloc(P, P);
  const fresh = Buffer.alloc(P, 0xee);
  mapping.readAt(P, fresh);
  t.true(fresh.every((b) => b === 0));
  mapping.writeAt(P, Buffer.alloc(P, 0xcc));
  const back = Buffer.alloc(P);
  mapping.readAt(P, back);
  t.true(back.every((b) => b === 0xcc));
  // Any typed array is raw bytes: a Uint32Array view works as well.
  const words = new Uint32Array(4);
  mapping.readAt(P, words);
  t.deepEqual(Array.from(words), [0xcccccccc, 0xcccccccc, 0xcccccccc, 0xcccccccc]);
});

test('placement range validation and zero lengths', (t) => {
  const mapping = new SparseMapping(4 * P);
  t.throws(() => mapping.alloc(100, P), { instanceOf: RangeError, code: 'ERR_INVALID_INPUT' });
  t.throws(() => mapping.alloc(0, 5 * P), { instanceOf: RangeError, code: 'ERR_INVALID_INPUT' });
  t.throws(() => mapping.alloc(0, P + 1), { instanceOf: RangeError, code: 'ERR_INVALID_INPUT' });
  t.throws(() => mapping.alloc((1n << 64n) - BigInt(P), 2 * P), { instanceOf: RangeError, code: 'ERR_INVALID_INPUT' });
  const einval = t.throws(() => mapping.alloc(0, 0), { instanceOf: OsError, code: 'EINVAL' });
  t.is(einval.errno, 22);
  t.is(einval.syscall, 'mmap');
  t.throws(() => mapping.mapZero(0, 0), { instanceOf: OsError, code: 'EINVAL' });
  t.throws(() => mapping.unmap(0, 0), { instanceOf: RangeError, code: 'ERR_INVALID_INPUT' });
  t.throws(() => mapping.unmap(0, 5 * P), { instanceOf: RangeError, code: 'ERR_INVALID_INPUT' });
  t.throws(() => mapping.unmap(1, P), { instanceOf: RangeError, code: 'ERR_INVALID_INPUT' });
  t.is(mapping.decommit(0, 0), undefined);
  t.is(mapping.commit(0, 0), undefined);
  t.is(mapping.setWritable(0, 0, false), undefined);
  t.is(mapping.madviseHugepage(0, 0), undefined);
  t.throws(() => mapping.commit(0, 5 * P), { instanceOf: RangeError, code: 'ERR_INVALID_INPUT' });
  t.throws(() => mapping.decommit(3, P), { instanceOf: RangeError, code: 'ERR_INVALID_INPUT' });
  t.throws(() => mapping.setWritable(0, 5 * P, true), { instanceOf: RangeError, code: 'ERR_INVALID_INPUT' });
  t.throws(() => mapping.madviseHugepage(P, 7), { instanceOf: RangeError, code: 'ERR_INVALID_INPUT' });
  // Unmapping a valid range that holds no placement succeeds (the VA mapper relies on it).
  t.is(mapping.unmap(0, 4 * P), undefined);
});

test('unmapping a page of an allocation: that page faults, the others keep data, VA stays reserved', (t) => {
  const mapping = new SparseMapping(5 * P);
  mapping.alloc(0, 4 * P);
  const data = pattern(4 * P, 3);
  mapping.writeAt(0, data);
  mapping.unmap(P, P);
  assertMemoryFault(t, () => mapping.readAt(P, Buffer.alloc(8)), { offset: 0, isWrite: false });
  // A read across the hole fails at the hole's first byte.
  assertMemoryFault(t, () => mapping.readAt(P - 16, Buffer.alloc(32)), { offset: 16, isWrite: false });
  for (const page of [0, 2, 3]) {
    const back = Buffer.alloc(P);
    mapping.readAt(page * P, back);
    t.true(back.equals(data.subarray(page * P, (page + 1) * P)), `page ${page}`);
  }
  const { linesOver } = locate(mb, mapping, 4 * P);
  const perms = (offset) => linesOver(offset, 1).map((l) => l.perms);
  t.deepEqual(perms(0), ['rw-p']);
  t.deepEqual(perms(P), ['---p']);
  t.deepEqual(perms(2 * P), ['rw-p']);
  t.deepEqual(perms(3 * P), ['rw-p']);
});

test('mapZero reads zeros; a write faults with the write direction and SEGV_ACCERR', (t) => {
  const mapping = new SparseMapping(2 * P);
  mapping.mapZero(0, P);
  const back = Buffer.alloc(64, 0x55);
  mapping.readAt(0, back);
  t.true(back.every((b) => b === 0));
  assertMemoryFault(t, () => mapping.writeAt(0, Buffer.from([1])), { offset: 0, isWrite: true });
  assertMemoryFault(t, () => mapping.fillAt(8, 0xff, 8), { offset: 0, isWrite: true });
  mapping.readAt(0, back);
  t.true(back.every((b) => b === 0));
});

test('setWritable(false) makes writes fault and keeps reads; setWritable(true) restores', (t) => {
  const mapping = new SparseMapping(P);
  mapping.alloc(0, P);
  mapping.writeAt(0, Buffer.from([1, 2, 3]));
  mapping.setWritable(0, P, false);
  assertMemoryFault(t, () => mapping.writeAt(1, Buffer.from([9])), { offset: 0, isWrite: true });
  const back = Buffer.alloc(3);
  mapping.readAt(0, back);
  t.deepEqual([...back], [1, 2, 3]);
  const { linesOver } = locate(mb, new SparseMapping(P), 0); // a locator elsewhere must not disturb
  t.true(linesOver(0, P).length >= 1);
  mapping.setWritable(0, P, true);
  mapping.writeAt(1, Buffer.from([9]));
  mapping.readAt(0, back);
  t.deepEqual([...back], [1, 9, 3]);
});

test('overlapping placements all succeed and the last one wins', (t) => {
  const mapping = new SparseMapping(16 * P);
  mapping.alloc(0, 8 * P);
  mapping.writeAt(0, Buffer.alloc(8 * P, 1));
  mapping.alloc(2 * P, 2 * P); // nested: replaced by fresh zero pages
  mapping.alloc(6 * P, 4 * P); // overlapping the end
  mapping.unmap(3 * P, P);
  const shared = Mappable.allocSharedMemory(4 * P, 'h7-s11');
  mapping.mapFile(8 * P, 4 * P, shared, 0, true);
  mapping.mapFile(10 * P, 4 * P, shared, 0, true); // overlaps the previous view
  mapping.mapFile(9 * P, 2 * P, shared, 2 * P, true);
  const byte = (offset) => {
    const b = Buffer.alloc(1);
    mapping.readAt(offset, b);
    return b[0];
  };
  t.is(byte(0), 1);
  t.is(byte(2 * P), 0);
  t.throws(() => byte(3 * P), { code: 'ERR_MEMORY' });
  t.is(byte(5 * P), 1);
  t.is(byte(6 * P), 0);
  // Pages 8..13 now show memfd pages 0, 2, 3 (third view), 1, 2, 3 (second view).
  mapping.writeAt(12 * P, Buffer.from([0xab])); // memfd page 2 through the second view
  t.is(byte(9 * P), 0xab); // memfd page 2 through the third view
  mapping.writeAt(10 * P, Buffer.from([0xcd])); // memfd page 3 through the third view
  t.is(byte(13 * P), 0xcd); // memfd page 3 through the second view
  mapping.writeAt(8 * P, Buffer.from([0xef])); // memfd page 0, only in the first view now
  t.is(byte(11 * P), 0); // memfd page 1
  shared.close();
  mapping.close();
  t.throws(() => mapping.length, { code: 'ERR_CLOSED' });
});

test('a memfd is shared between views, named, close-on-exec, and not sealed', (t) => {
  const memfd = Mappable.allocSharedMemory(4 * P, 't');
  const mapping = new SparseMapping(16 * P);
  mapping.mapFile(0, 4 * P, memfd, 0, true);
  mapping.mapFile(8 * P, 4 * P, memfd, 0, true);
  mapping.writeAt(P + 5, Buffer.from('shared'));
  const back = Buffer.alloc(6);
  mapping.readAt(9 * P + 5, back);
  t.is(back.toString(), 'shared');
  const fd = memfd.fd;
  t.is(typeof fd, 'number');
  t.is(fs.readlinkSync(`/proc/self/fd/${fd}`), '/memfd:t (deleted)');
  const flags = Number.parseInt(/flags:\s+(\d+)/.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))[1], 8);
  t.truthy(flags & 0o2000000, 'O_CLOEXEC');
  // No grow/shrink seals: the size can still be changed.
  t.is(fs.fstatSync(fd).size, 4 * P);
  fs.ftruncateSync(fd, 6 * P);
  t.is(fs.fstatSync(fd).size, 6 * P);
  t.true(mapsLines().some((l) => l.name === '/memfd:t (deleted)' && l.perms === 'rw-s'));
  // A duplicate made by fromFd is another descriptor of the same object.
  const dup = Mappable.fromFd(fd);
  t.not(dup.fd, fd);
  t.is(fs.readlinkSync(`/proc/self/fd/${dup.fd}`), '/memfd:t (deleted)');
  mapping.mapFile(4 * P, P, dup, P, false);
  const viaDup = Buffer.alloc(6);
  mapping.readAt(4 * P + 5, viaDup);
  t.is(viaDup.toString(), 'shared');
  dup.close();
  t.throws(() => dup.fd, { code: 'ERR_CLOSED' });
  memfd.close();
  // The views keep the object alive after the descriptors are closed.
  mapping.readAt(P + 5, back);
  t.is(back.toString(), 'shared');
});

test('a file view beyond end of file faults with SIGBUS/BUS_ADRERR at the right offset', (t) => {
  const memfd = Mappable.allocSharedMemory(P, 'h7-s13');
  const mapping = new SparseMapping(2 * P);
  mapping.mapFile(0, 2 * P, memfd, 0, true);
  mapping.writeAt(0, Buffer.alloc(P, 7));
  const error = assertMemoryFault(t, () => mapping.readAt(0, Buffer.alloc(2 * P)), {
    offset: P,
    isWrite: false,
    signal: 'SIGBUS',
    siCode: 2,
  });
  t.is(error.fault.signal, 'SIGBUS');
  const page0 = Buffer.alloc(P);
  mapping.readAt(0, page0);
  t.true(page0.every((b) => b === 7));
});

test('mapFile errors: EACCES for a writable view of a read-only fd, EINVAL for an unaligned file offset', (t) => {
  const memfd = Mappable.allocSharedMemory(4 * P, 'h7-s14');
  const readOnlyFd = fs.openSync(`/proc/self/fd/${memfd.fd}`, 'r');
  const readOnly = Mappable.fromFd(readOnlyFd);
  fs.closeSync(readOnlyFd);
  const mapping = new SparseMapping(4 * P);
  const eacces = t.throws(() => mapping.mapFile(0, P, readOnly, 0, true), { instanceOf: OsError, code: 'EACCES' });
  t.is(eacces.errno, 13);
  mapping.mapFile(0, P, readOnly, 0, false); // read-only view is fine
  t.throws(() => mapping.mapFile(0, P, memfd, 100, true), { instanceOf: OsError, code: 'EINVAL' });
  t.throws(() => mapping.mapFile(0, 0, memfd, 0, true), { instanceOf: OsError, code: 'EINVAL' });
  t.throws(() => mapping.mapFile(1, P, memfd, 0, true), { instanceOf: RangeError, code: 'ERR_INVALID_INPUT' });
  // A descriptor that cannot be mapped (a pipe) is an OS error, not a crash.
  const pipeFds = fs.readdirSync('/proc/self/fd').map(Number);
  const stdio = pipeFds.find((fd) => fd <= 2 && /pipe|socket/.test(safeReadlink(fd)));
  if (stdio !== undefined) {
    const pipe = Mappable.fromFd(stdio);
    const error = t.throws(() => mapping.mapFile(0, P, pipe, 0, false), { instanceOf: OsError });
    t.true(['ENODEV', 'EACCES', 'EINVAL'].includes(error.code), error.code);
    pipe.close();
  }
  t.throws(() => Mappable.fromFd(1_000_000), { instanceOf: OsError, code: 'EBADF' });
});

function safeReadlink(fd) {
  try {
    return fs.readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return '';
  }
}

test('decommit zeroes private pages; decommit of a memfd view punches a hole seen by every view', (t) => {
  const mapping = new SparseMapping(4 * P);
  mapping.alloc(0, 4 * P);
  mapping.writeAt(0, Buffer.alloc(2 * P, 0xab));
  mapping.decommit(0, P);
  const page = Buffer.alloc(P);
  mapping.readAt(0, page);
  t.true(page.every((b) => b === 0));
  mapping.readAt(P, page);
  t.true(page.every((b) => b === 0xab));
  mapping.commit(0, P);
  mapping.commit(0, P);
  mapping.readAt(0, page);
  t.true(page.every((b) => b === 0));
  mapping.writeAt(0, Buffer.from([5]));

  const memfd = Mappable.allocSharedMemory(2 * P, 'h7-s15');
  const views = new SparseMapping(8 * P);
  views.mapFile(0, 2 * P, memfd, 0, true);
  views.mapFile(4 * P, 2 * P, memfd, 0, true);
  views.writeAt(0, Buffer.alloc(2 * P, 0x3c));
  views.decommit(0, P);
  for (const offset of [0, 4 * P]) {
    views.readAt(offset, page);
    t.true(page.every((b) => b === 0), `view at ${offset}`);
    views.readAt(offset + P, page);
    t.true(page.every((b) => b === 0x3c), `second page of view at ${offset}`);
  }
  // The memfd's own contents are zero there too (read through a fresh file read).
  const viaFile = Buffer.alloc(4);
  fs.readSync(memfd.fd, viaFile, 0, 4, 0);
  t.deepEqual([...viaFile], [0, 0, 0, 0]);
});

test('madviseHugepage on a 2 MiB allocation; data and decommit still work', (t) => {
  const mapping = new SparseMapping(2 * MiB);
  mapping.alloc(0, 2 * MiB);
  try {
    mapping.madviseHugepage(0, 2 * MiB);
  } catch (error) {
    t.is(error.code, 'EINVAL', 'only a kernel without THP may refuse');
  }
  mapping.writeAt(MiB, Buffer.from('huge'));
  const back = Buffer.alloc(4);
  mapping.readAt(MiB, back);
  t.is(back.toString(), 'huge');
  mapping.decommit(0, 2 * MiB);
  mapping.readAt(MiB, back);
  t.deepEqual([...back], [0, 0, 0, 0]);
});

test('setName never throws; it names the VMAs where the kernel supports it', (t) => {
  const mapping = new SparseMapping(8 * P);
  mapping.alloc(0, 8 * P);
  const name = `h7-named-${process.pid}`;
  t.is(mapping.setName(0, 8 * P, name), undefined);
  t.is(mapping.setName(0, 8 * P, 'bad\0name'), undefined);
  t.is(mapping.setName(3, 8 * P, 'unaligned'), undefined);
  t.is(mapping.setName(0, 100 * P, 'too long a range'), undefined);
  t.is(mapping.setName(0, 0, 'empty'), undefined);
  t.is(mapping.setName(0, P, 'x'.repeat(1000)), undefined);
  const named = () => mapsLines().filter((l) => l.name === `[anon:${name}]`);
  const supported = named().length > 0;
  if (supported) {
    t.is(named().reduce((sum, l) => sum + (l.end - l.start), 0n), BigInt(8 * P));
    mapping.alloc(2 * P, 2 * P);
    t.is(named().reduce((sum, l) => sum + (l.end - l.start), 0n), BigInt(6 * P));
    mapping.setName(2 * P, 2 * P, name);
    t.is(named().reduce((sum, l) => sum + (l.end - l.start), 0n), BigInt(8 * P));
  } else {
    t.log('this kernel does not support anonymous VMA names (CONFIG_ANON_VMA_NAME): only "never throws" was checked');
    t.false(mapsLines().some((l) => l.name.startsWith('[anon:')));
  }
});

test('guarded access bounds against length', (t) => {
  const mapping = new SparseMapping(P);
  mapping.alloc(0, P);
  t.is(mapping.readAt(P, new Uint8Array(0)), undefined);
  t.is(mapping.writeAt(P, new Uint8Array(0)), undefined);
  t.is(mapping.fillAt(P, 0, 0), undefined);
  const oob = t.throws(() => mapping.readAt(P + 1, new Uint8Array(0)), { instanceOf: SparseMappingError, code: 'ERR_OUT_OF_BOUNDS' });
  t.is(oob.isWrite, false);
  t.is(oob.offset, 0n);
  t.is(oob.fault, undefined);
  t.throws(() => mapping.readAt(P - 1, new Uint8Array(2)), { instanceOf: SparseMappingError, code: 'ERR_OUT_OF_BOUNDS' });
  const w = t.throws(() => mapping.writeAt(P - 1, new Uint8Array(2)), { instanceOf: SparseMappingError, code: 'ERR_OUT_OF_BOUNDS' });
  t.is(w.isWrite, true);
  t.throws(() => mapping.fillAt(P - 1, 0, 2), { instanceOf: SparseMappingError, code: 'ERR_OUT_OF_BOUNDS' });
  t.throws(() => mapping.readAt((1n << 64n) - 1n, new Uint8Array(2)), { instanceOf: SparseMappingError, code: 'ERR_OUT_OF_BOUNDS' });
});

test('a read crossing from a placed page into an unplaced one faults at the boundary', (t) => {
  const mapping = new SparseMapping(4 * P);
  mapping.alloc(0, P);
  const data = Buffer.alloc(8);
  data.writeBigUInt64LE(0x0123456789abcdefn);
  mapping.writeAt(P - 8, data);
  const dest = Buffer.alloc(16, 0xee);
  assertMemoryFault(t, () => mapping.readAt(P - 8, dest), { offset: 8, isWrite: false });
  const u64 = new BigUint64Array(1);
  mapping.readAt(P - 8, u64);
  t.is(u64[0], 0x0123456789abcdefn);
  mapping.readAt(0, u64);
  t.is(u64[0], 0n);
  // A write across the boundary faults at the same place (bytes before it may be written).
  assertMemoryFault(t, () => mapping.writeAt(P - 8, Buffer.alloc(16, 0x11)), { offset: 8, isWrite: true });
});

test('fault direction: an inaccessible source is a read, a read-only destination a write', (t) => {
  const mapping = new SparseMapping(4 * P);
  mapping.alloc(0, P);
  mapping.mapZero(P, P);
  // Source inaccessible (page 2), valid destination buffer: read direction, offset from the source.
  assertMemoryFault(t, () => mapping.readAt(2 * P - 4, Buffer.alloc(12)), { offset: 4, isWrite: false });
  // Valid source buffer, read-only destination page: write direction, offset from the destination.
  assertMemoryFault(t, () => mapping.writeAt(P - 4, Buffer.alloc(12, 1)), { offset: 4, isWrite: true });
});

test('SparseMapping.pageSize is the OS page size', (t) => {
  t.is(SparseMapping.pageSize, 4096n);
});

test('a SparseMappingError is a MembackingError with a stable shape', (t) => {
  const mapping = new SparseMapping(P);
  const error = t.throws(() => mapping.readAt(0, Buffer.alloc(1)));
  t.true(error instanceof mb.MembackingError);
  t.true(error instanceof Error);
  t.is(error.name, 'SparseMappingError');
  t.deepEqual(Object.keys(error.fault).sort(), ['siCode', 'signal', 'trapno']);
});

// ─── Bad input for every entry point ──────────────────────────────────────────────────────────

test('bad input: every SparseMapping entry point checks its arguments', (t) => {
  const mapping = new SparseMapping(4 * P);
  mapping.alloc(0, 4 * P);
  const memfd = Mappable.allocSharedMemory(P, 'h7-bad');
  checkU64(t, 'constructor', (v) => new SparseMapping(v));
  for (const method of ['alloc', 'mapZero', 'unmap', 'commit', 'decommit', 'madviseHugepage']) {
    checkU64(t, `${method} offset`, (v) => mapping[method](v, P));
    checkU64(t, `${method} len`, (v) => mapping[method](0, v));
  }
  checkU64(t, 'setWritable offset', (v) => mapping.setWritable(v, P, true));
  checkU64(t, 'setWritable len', (v) => mapping.setWritable(0, v, true));
  for (const allow of [1, 'true', null, undefined]) {
    t.throws(() => mapping.setWritable(0, P, allow), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  }
  checkU64(t, 'mapFile offset', (v) => mapping.mapFile(v, P, memfd, 0, true));
  checkU64(t, 'mapFile len', (v) => mapping.mapFile(0, v, memfd, 0, true));
  checkU64(t, 'mapFile fileOffset', (v) => mapping.mapFile(0, P, memfd, v, true));
  for (const notMappable of [3, null, {}, mapping, { fd: 3 }]) {
    t.throws(() => mapping.mapFile(0, P, notMappable, 0, true), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  }
  t.throws(() => mapping.mapFile(0, P, memfd, 0, 'yes'), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  // mmap refuses a file offset that is not page-aligned: the detail says it is fileOffset.
  const unaligned = t.throws(() => mapping.mapFile(0, P, memfd, 1, true), { instanceOf: OsError, code: 'EINVAL' });
  t.regex(unaligned.detail, /^fileOffset 0x1 is not a multiple of the page size \(0x1000 bytes\).*pass a page-aligned fileOffset$/);
  const buf = Buffer.alloc(4);
  mapping.readAt(0, buf); // the refused mapFile left the private memory there
  checkU64(t, 'setName offset', (v) => mapping.setName(v, P, 'n'));
  checkU64(t, 'setName len', (v) => mapping.setName(0, v, 'n'));
  for (const name of [1, null, undefined, {}]) {
    t.throws(() => mapping.setName(0, P, name), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  }
  checkU64(t, 'readAt offset', (v) => mapping.readAt(v, Buffer.alloc(1)));
  checkU64(t, 'writeAt offset', (v) => mapping.writeAt(v, Buffer.alloc(1)));
  checkU64(t, 'fillAt offset', (v) => mapping.fillAt(v, 0, 1));
  checkU64(t, 'fillAt len', (v) => mapping.fillAt(0, 0, v));
  for (const buffer of [[1, 2], 'ab', null, undefined, 5, new ArrayBuffer(4), {}]) {
    t.throws(() => mapping.readAt(0, buffer), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
    t.throws(() => mapping.writeAt(0, buffer), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  }
  for (const [byte, Class, code] of [
    [256, RangeError, 'ERR_INVALID_ARG_VALUE'],
    [-1, RangeError, 'ERR_INVALID_ARG_VALUE'],
    [1.5, TypeError, 'ERR_INVALID_ARG_TYPE'],
    ['1', TypeError, 'ERR_INVALID_ARG_TYPE'],
    [1n, TypeError, 'ERR_INVALID_ARG_TYPE'],
  ]) {
    t.throws(() => mapping.fillAt(0, byte, 1), { instanceOf: Class, code }, `fillAt byte ${String(byte)}`);
  }
  // A DataView is a typed view too: raw bytes.
  mapping.writeAt(0, new DataView(new ArrayBuffer(4), 0, 4));
  for (const handle of [null, 1, {}, { kind: 'GuestMemory', id: 1n }, { kind: 'SparseMapping', id: -1 }]) {
    t.throws(() => SparseMapping.fromHandle(handle), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  }
  t.throws(() => SparseMapping.fromHandle({ kind: 'SparseMapping', id: 1n << 60n }), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE' });
  // Nothing above changed the mapping.
  const back = Buffer.alloc(1, 9);
  mapping.readAt(P, back);
  t.is(back[0], 0);
});

test('bad input: Mappable entry points', (t) => {
  checkU64(t, 'allocSharedMemory size', (v) => Mappable.allocSharedMemory(v, 'n'));
  for (const name of [1, null, undefined, {}]) {
    t.throws(() => Mappable.allocSharedMemory(P, name), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  }
  t.throws(() => Mappable.allocSharedMemory(P, 'bad\0name'), { instanceOf: RangeError, code: 'ERR_INVALID_INPUT' });
  const tooLong = t.throws(() => Mappable.allocSharedMemory(P, 'n'.repeat(300)), { instanceOf: OsError, code: 'EINVAL' });
  t.regex(tooLong.detail, /^the name \("n{24}"…\) is 300 bytes long, and a shared memory object's name is at most 249 bytes .*use a shorter name$/);
  Mappable.allocSharedMemory(P, 'n'.repeat(249)).close();
  // Sizing the object is ftruncate's failure, named with the size (it was labelled memfd_create).
  const tooLarge = t.throws(() => Mappable.allocSharedMemory(2n ** 63n, 'n'), { instanceOf: OsError, code: 'EFBIG' });
  t.is(tooLarge.syscall, 'ftruncate');
  t.regex(tooLarge.message, /^ftruncate to 0x8000000000000000 bytes: /);
  t.regex(tooLarge.detail, /ulimit -f/);
  const badName = t.throws(() => Mappable.allocSharedMemory(P, 'n'.repeat(300)), { instanceOf: OsError, code: 'EINVAL' });
  t.is(badName.syscall, 'memfd_create');
  // Not a non-negative integer: a type error, as for every integer argument; too large
  // for a descriptor: a value error.
  for (const fd of ['3', null, 1.5, 3n, -1]) {
    t.throws(() => Mappable.fromFd(fd), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
  }
  t.throws(() => Mappable.fromFd(2 ** 31), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE' });
  const memfd = Mappable.allocSharedMemory(0, 'h7-empty');
  t.is(fs.fstatSync(memfd.fd).size, 0);
  memfd[Symbol.dispose]();
  t.throws(() => memfd.fd, { instanceOf: mb.MembackingError, code: 'ERR_CLOSED' });
  const mapping = new SparseMapping(P);
  t.throws(() => mapping.mapFile(0, P, memfd, 0, true), { instanceOf: mb.MembackingError, code: 'ERR_CLOSED' });
  memfd.close(); // idempotent
});

test('bad input: use after close is ERR_CLOSED for every SparseMapping method', (t) => {
  const mapping = new SparseMapping(P);
  const handle = mapping.toHandle();
  mapping[Symbol.dispose]();
  const calls = {
    length: () => mapping.length,
    alloc: () => mapping.alloc(0, P),
    mapZero: () => mapping.mapZero(0, P),
    unmap: () => mapping.unmap(0, P),
    commit: () => mapping.commit(0, P),
    decommit: () => mapping.decommit(0, P),
    setWritable: () => mapping.setWritable(0, P, true),
    madviseHugepage: () => mapping.madviseHugepage(0, P),
    setName: () => mapping.setName(0, P, 'n'),
    readAt: () => mapping.readAt(0, Buffer.alloc(1)),
    writeAt: () => mapping.writeAt(0, Buffer.alloc(1)),
    fillAt: () => mapping.fillAt(0, 0, 1),
    toHandle: () => mapping.toHandle(),
    fromSparseMapping: () => mb.GuestMemory.fromSparseMapping(mapping),
  };
  for (const [name, call] of Object.entries(calls)) {
    t.throws(call, { instanceOf: mb.MembackingError, code: 'ERR_CLOSED' }, name);
  }
  mapping.close();
  // A handle keeps the reservation alive until it is opened (once).
  const again = SparseMapping.fromHandle(handle);
  t.is(again.length, BigInt(P));
  again.close();
  t.throws(() => SparseMapping.fromHandle(handle), { instanceOf: RangeError, code: 'ERR_INVALID_ARG_VALUE', message: /already opened or closed/ });
});

test('a SparseMapping handle reopens the same reservation in this thread', (t) => {
  const mapping = new SparseMapping(2 * P);
  mapping.alloc(0, P);
  mapping.writeAt(0, Buffer.from('handle'));
  const handle = mapping.toHandle();
  t.is(handle.kind, 'SparseMapping');
  t.is(typeof handle.id, 'bigint');
  const again = SparseMapping.fromHandle(handle);
  t.is(again.length, mapping.length);
  const back = Buffer.alloc(6);
  again.readAt(0, back);
  t.is(back.toString(), 'handle');
  // Closing one reference keeps the reservation alive for the other.
  mapping.close();
  again.readAt(0, back);
  t.is(back.toString(), 'handle');
  t.throws(() => mb.GuestMemory.fromHandle(handle), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' });
});
