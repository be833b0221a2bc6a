// Test data shared by the test files.
'use strict';

/** `len` bytes that differ between neighbouring offsets and between seeds. */
function pattern(len, seed) {
  return Buffer.from(Array.from({ length: len }, (_, i) => (i * 7 + seed) & 0xff));
}

module.exports = { pattern };
