/**
 * The raw native binding (the loader `index.js` that `napi build` generates, and its typings).
 *
 * Only the TypeScript layer talks to it: its functions take bigints and flat arrays, and throw
 * errors whose `code` the layer translates (see `errors.ts`). Users import the layer instead.
 */
// eslint-disable-next-line @typescript-eslint/no-require-imports
export const native: typeof import('../index') = require('../index.js');
