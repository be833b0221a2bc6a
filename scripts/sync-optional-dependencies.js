#!/usr/bin/env node
/**
 * Publish-time step: sets a package.json's `optionalDependencies` to one `membacking-<platform>`
 * entry per `napi.targets` triple, each at that package.json's version, keeping any other
 * optional dependency. The committed package.json has none of these entries, because the
 * platform packages of an unpublished version are on no registry, so npm cannot record them in
 * package-lock.json and `npm ci` would refuse the lock. The release workflow runs this on the
 * checkout just before `npm publish`.
 *
 * Usage: node scripts/sync-optional-dependencies.js [PACKAGE_JSON]  (default: the repository's)
 */
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { parseTriple } = require('@napi-rs/cli');

const file = path.resolve(process.argv[2] ?? path.join(__dirname, '..', 'package.json'));
const pkg = JSON.parse(fs.readFileSync(file, 'utf8'));
const wanted = Object.fromEntries(
  pkg.napi.targets.map((triple) => [`${pkg.name}-${parseTriple(triple).platformArchABI}`, pkg.version]),
);
const others = Object.fromEntries(
  Object.entries(pkg.optionalDependencies ?? {}).filter(([name]) => !name.startsWith(`${pkg.name}-`)),
);
pkg.optionalDependencies = { ...others, ...wanted };
fs.writeFileSync(file, `${JSON.stringify(pkg, null, 2)}\n`);
process.stdout.write(`${file}: optionalDependencies ${Object.keys(wanted).join(', ')} @ ${pkg.version}\n`);
