// Bad arguments shared by the bad-input tests of several files, and `caught` for the errors they
// give.
'use strict';

/** Values that are not U64s: [value, error class, code]. */
const badU64 = [
  ['1', TypeError, 'ERR_INVALID_ARG_TYPE'],
  [null, TypeError, 'ERR_INVALID_ARG_TYPE'],
  [undefined, TypeError, 'ERR_INVALID_ARG_TYPE'],
  [{}, TypeError, 'ERR_INVALID_ARG_TYPE'],
  [-1, TypeError, 'ERR_INVALID_ARG_TYPE'],
  [0.5, TypeError, 'ERR_INVALID_ARG_TYPE'],
  [1.5, TypeError, 'ERR_INVALID_ARG_TYPE'],
  [Number.NaN, TypeError, 'ERR_INVALID_ARG_TYPE'],
  [Infinity, TypeError, 'ERR_INVALID_ARG_TYPE'],
  [-Infinity, TypeError, 'ERR_INVALID_ARG_TYPE'],
  [2 ** 53, TypeError, 'ERR_INVALID_ARG_TYPE'],
  [-1n, RangeError, 'ERR_INVALID_ARG_VALUE'],
  [1n << 64n, RangeError, 'ERR_INVALID_ARG_VALUE'],
  [(1n << 64n) + 5n, RangeError, 'ERR_INVALID_ARG_VALUE'],
];

/** Asserts that `call(value)` throws the listed class and code for every bad U64. */
function checkU64(t, label, call) {
  for (const [value, Class, code] of badU64) {
    const error = t.throws(() => call(value), { instanceOf: Class }, `${label} with ${String(value)}`);
    t.is(error.code, code, `${label} with ${String(value)}`);
  }
}

/** The error `fn` throws or rejects with (a test failure when it returns). */
async function caught(fn) {
  try {
    await fn();
  } catch (error) {
    return error;
  }
  throw new Error('expected an error');
}

module.exports = { badU64, checkU64, caught };
