// Test data shared by the test files.
'use strict';

/** `len` bytes that differ between neighbouring offsets and between seeds. */
function pattern(len, seed) {
  return Buffer.from(Array.from({ length: len }, (_, i) => (i * 7 + seed) & 0xff));
}

/** xorshift32: a small seeded generator (deterministic per seed); `below(n)` is in [0, n). */
function generator(seed) {
  let state = seed >>> 0 || 0x9e3779b9;
  const next = () => {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state;
  };
  const fill = (buffer) => {
    for (let i = 0; i < buffer.length; i++) buffer[i] = next() & 0xff;
    return buffer;
  };
  return { next, below: (n) => next() % n, fill, bytes: (len) => fill(Buffer.alloc(len)) };
}

module.exports = { pattern, generator };
