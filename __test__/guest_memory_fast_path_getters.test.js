// The raw vectored fast paths (`readv`/`writev` of `guestMemoryFastPaths()`) read their buffers
// and GPAs from JavaScript arrays, whose element getters run JavaScript: a getter may detach a
// buffer (or the GPAs' Float64Array) that the native side already looked at. Each scenario runs
// in a child process, because reading the data pointer before the getters ran made the copy
// touch freed memory (the buffers are large enough that the allocator returns them to the OS,
// so that shows as a SIGSEGV rather than as silent heap corruption).
'use strict';
const test = require('ava');
const { spawnSync } = require('node:child_process');
const path = require('node:path');

const NATIVE = path.join(__dirname, '..', 'dist', 'native');

/** Runs `body` (the source of a function of `(f, id, detach, big)`) in a child; its output. */
function runChild(t, body) {
  const script = `
    'use strict';
    const v8 = require('node:v8');
    const vm = require('node:vm');
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc');
    const { native } = require(${JSON.stringify(NATIVE)});
    // Above glibc's largest mmap threshold: freed at once with munmap.
    const big = 64 * 1024 * 1024;
    const memory = native.NativeGuestMemory.allocate(big);
    const f = native.guestMemoryFastPaths();
    const id = memory.fastPathId();
    f.writeAt(id, 0, new Uint8Array(big).fill(0x41));
    function detach(view) {
      structuredClone(view.buffer, { transfer: [view.buffer] });
      gc();
      gc();
    }
    const out = (${body})(f, id, detach, big);
    process.stdout.write(JSON.stringify(out));
  `;
  const child = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 120_000 });
  t.is(child.signal, null, `the child died by ${child.signal}: ${child.stderr}`);
  t.is(child.status, 0, child.stderr);
  return child.status === 0 ? JSON.parse(child.stdout) : undefined;
}

test('readv: a getter of the buffer list that detaches an earlier buffer leaves it empty instead of writing into freed memory', (t) => {
  const out = runChild(t, `(f, id, detach, big) => {
    const first = new Uint8Array(big);
    const buffers = [first];
    const last = new Uint8Array(16);
    Object.defineProperty(buffers, 1, { enumerable: true, get() { detach(first); return last; } });
    f.readv(id, new Float64Array([0, 0]), buffers);
    return { first: first.byteLength, last: [...last] };
  }`);
  t.deepEqual(out, { first: 0, last: Array(16).fill(0x41) });
});

test('writev: a getter of the buffer list that detaches an earlier buffer writes nothing from freed memory', (t) => {
  const out = runChild(t, `(f, id, detach, big) => {
    const first = new Uint8Array(big).fill(0x42);
    const buffers = [first];
    Object.defineProperty(buffers, 1, { enumerable: true, get() { detach(first); return new Uint8Array(1).fill(0x43); } });
    f.writev(id, new Float64Array([0, 8]), buffers);
    const back = new Uint8Array(16);
    f.readAt(id, 0, back);
    return [...back];
  }`);
  // The detached buffer is empty when its bytes are read; only the second entry is written.
  t.deepEqual(out, [...Array(8).fill(0x41), 0x43, ...Array(7).fill(0x41)]);
});

test('readv: a getter of the GPA array that detaches a buffer of the call leaves it empty', (t) => {
  const out = runChild(t, `(f, id, detach, big) => {
    const first = new Uint8Array(big);
    const last = new Uint8Array(16);
    const gpas = [0];
    Object.defineProperty(gpas, 1, { enumerable: true, get() { detach(first); return 0; } });
    f.readv(id, gpas, first, last);
    return { first: first.byteLength, last: [...last] };
  }`);
  t.deepEqual(out, { first: 0, last: Array(16).fill(0x41) });
});

test('readv: a getter of the buffer list that detaches the GPAs\' Float64Array makes the GPAs refused, not read from freed memory', (t) => {
  const out = runChild(t, `(f, id, detach, big) => {
    const gpas = new Float64Array(big / 8);
    const buffers = [new Uint8Array(16)];
    Object.defineProperty(buffers, 1, { enumerable: true, get() { detach(gpas); return new Uint8Array(16); } });
    try {
      f.readv(id, gpas, buffers);
      return 'copied';
    } catch (error) {
      return error.message;
    }
  }`);
  t.regex(out, /the GPAs must be a Float64Array of at least 2 numbers/);
});

test('readv: a list of 2^32 - 1 buffers with holes is refused at its first bad entry, before anything is allocated for the entries', (t) => {
  const out = runChild(t, `(f, id) => {
    const list = new Array(2 ** 32 - 1);
    list[0] = new Uint8Array(1);
    return [[0], new Float64Array(1)].map((gpas) => {
      try {
        f.readv(id, gpas, list);
        return 'copied';
      } catch (error) {
        return error.message;
      }
    });
  }`);
  t.is(out.length, 2);
  // A GPA array is read (and checked) entry by entry: its second entry is missing.
  t.regex(out[0], /list\[1\]\.gpa/);
  // A Float64Array too short for the list is refused as a whole.
  t.regex(out[1], /the GPAs must be a Float64Array of at least 4294967295 numbers/);
});
