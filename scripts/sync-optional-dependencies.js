#!/usr/bin/env node
/**
 * Sets the root package.json `optionalDependencies` to one `membacking-<platform>` entry per
 * `napi.targets` triple, each at the root version, so they move with `npm version` (the
 * `version` script runs `napi version` for npm/<platform>/package.json, then this).
 * `__test__/pack.test.js` checks the result: npm/, the targets and these entries agree.
 */
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { parseTriple } = require('@napi-rs/cli');

const file = path.join(__dirname, '..', 'package.json');
const pkg = JSON.parse(fs.readFileSync(file, 'utf8'));
const wanted = Object.fromEntries(
  pkg.napi.targets.map((triple) => [`${pkg.name}-${parseTriple(triple).platformArchABI}`, pkg.version]),
);
const others = Object.fromEntries(
  Object.entries(pkg.optionalDependencies ?? {}).filter(([name]) => !name.startsWith(`${pkg.name}-`)),
);
pkg.optionalDependencies = { ...others, ...wanted };
fs.writeFileSync(file, `${JSON.stringify(pkg, null, 2)}\n`);
process.stdout.write(`optionalDependencies: ${Object.keys(wanted).join(', ')} @ ${pkg.version}\n`);
