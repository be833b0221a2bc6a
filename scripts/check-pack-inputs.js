#!/usr/bin/env node
/**
 * The `prepack` script: refuses to pack (`npm pack`, `npm publish`) membacking without its build
 * outputs, the loader napi-rs generates (index.js, index.d.ts) and the compiled TypeScript layer
 * (dist/). None of them is committed, so on a fresh clone npm would otherwise pack, without a
 * word, a tarball of package.json, README, CHANGELOG and LICENSE that cannot load.
 */
'use strict';
const fs = require('node:fs');
const path = require('node:path');

/** The files every packed membacking needs, relative to the package root (npm's working directory). */
const BUILD_OUTPUTS = ['index.js', 'index.d.ts', 'dist/index.js', 'dist/index.d.ts', 'dist/cli/main.js'];

const missing = BUILD_OUTPUTS.filter((file) => !fs.existsSync(path.join(process.cwd(), file)));
if (missing.length > 0) {
  process.stderr.write(
    `membacking: nothing to pack without the build outputs ${missing.join(', ')}: run \`npm run build\` first ` +
      '(or `npm run build:ts` with index.js and index.d.ts from a native build)\n',
  );
  process.exit(1);
}
