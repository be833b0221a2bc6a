// Packaging: the committed package.json names no platform package (so `npm ci` accepts the lock),
// the npm/<platform> packages match package.json, and the packed root (as published, with the
// platform packages the publish step adds as optionalDependencies) and this platform's package
// (linux-x64-gnu here; the release workflow runs it for every target) install into an empty
// project without Rust and work there. Runs after `npm run build` (dist/, index.js and
// membacking.<platform>.node must exist at the repository root).
'use strict';
// Serial on purpose: these tests are synchronous (spawnSync), and ava reports concurrent tests of
// a file only once all of them have run, so on a loaded machine the whole file went past ava's
// 2-minute inactivity timeout with no result ("Timed out while running tests"). Serial tests are
// reported one by one.
const test = require('ava').serial;
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const { parseTriple } = require('@napi-rs/cli');

const ROOT = path.join(__dirname, '..');
const rootPackage = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
const targets = rootPackage.napi.targets.map((triple) => parseTriple(triple));
/** The MIT license text that `license: "MIT"` promises to ship with every copy. */
const LICENSE_TEXT = fs.readFileSync(path.join(ROOT, 'LICENSE'), 'utf8');

/** The C library of this process: `glibc` or `musl` (null off Linux). */
const LIBC = process.platform !== 'linux' ? null : process.report.getReport().header.glibcVersionRuntime ? 'glibc' : 'musl';
/** The napi-rs name of this platform, e.g. `linux-x64-gnu`. */
const PLATFORM = `${process.platform}-${process.arch}${LIBC === null ? '' : LIBC === 'glibc' ? '-gnu' : '-musl'}`;
const PLATFORM_PACKAGE = `membacking-${PLATFORM}`;
const BINARY = `membacking.${PLATFORM}.node`;

/** Why the install test cannot run here (no prebuilt package for this platform), or null. */
function unsupportedReason() {
  if (targets.some((target) => target.platformArchABI === PLATFORM)) return null;
  return `no prebuilt package is built for ${PLATFORM} (napi.targets: ${targets.map((target) => target.platformArchABI).join(', ')})`;
}

/** Runs a command; fails the test with its output when it exits non-zero. */
function run(t, command, args, options) {
  const result = spawnSync(command, args, { encoding: 'utf8', maxBuffer: 64 << 20, ...options });
  const output = `${command} ${args.join(' ')} (in ${options.cwd})\nexit ${result.status}\n${result.stdout}\n${result.stderr}`;
  if (result.error) throw result.error;
  if (result.status !== 0) t.fail(output);
  return result;
}

/** Files under dir, relative to it, depth first (symlinks are not followed). */
function listFiles(dir, prefix = '') {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const relative = path.join(prefix, entry.name);
    return entry.isDirectory() ? [`${relative}/`, ...listFiles(path.join(dir, entry.name), relative)] : [relative];
  });
}

/** Paths that mean Rust sources or build inputs were shipped. */
const isRustSource = (file) => /(^|\/)(src|crates|target)\/$|\.rs$|(^|\/)Cargo\.(toml|lock)$|(^|\/)build\.rs$/.test(file);

/** The where-is-it of an executable on a PATH string, or null. */
function findOnPath(name, pathValue) {
  for (const dir of pathValue.split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, name);
    try {
      fs.accessSync(candidate, fs.constants.X_OK);
      if (fs.statSync(candidate).isFile()) return candidate;
    } catch {
      // not here
    }
  }
  return null;
}

/**
 * The environment a user without Rust has: PATH without any directory holding `cargo` or
 * `rustc` (node and npm are linked into binDir if that removed them), no cargo/rustup
 * variables, no npm lifecycle variables of the outer `npm run`, and no napi-rs overrides.
 */
function environmentWithoutRust(binDir) {
  const env = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (/^(CARGO|RUSTUP|RUSTC|RUSTFLAGS|NAPI_RS_)/i.test(key) || /^npm_/i.test(key)) continue;
    env[key] = value;
  }
  const originalPath = process.env.PATH ?? '';
  const kept = originalPath.split(path.delimiter).filter((dir) => dir && !findOnPath('cargo', dir) && !findOnPath('rustc', dir));
  let newPath = kept.join(path.delimiter);
  if (findOnPath('node', newPath) === null || findOnPath('npm', newPath) === null) {
    fs.mkdirSync(binDir, { recursive: true });
    fs.symlinkSync(process.execPath, path.join(binDir, 'node'));
    const npm = findOnPath('npm', originalPath);
    if (npm === null) throw new Error('npm is not on PATH');
    fs.symlinkSync(fs.realpathSync(npm), path.join(binDir, 'npm'));
    newPath = [binDir, ...kept].join(path.delimiter);
  }
  env.PATH = newPath;
  return env;
}

/**
 * The membacking-<platform> optionalDependencies of the root package.json as the release workflow
 * publishes it: those `scripts/sync-optional-dependencies.js` gives a copy of the committed one
 * (which also has a foreign optional dependency, to be kept, and nothing else may change).
 */
function publishedPlatformDependencies(t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'membacking-sync-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const copy = path.join(dir, 'package.json');
  fs.writeFileSync(copy, JSON.stringify({ ...rootPackage, optionalDependencies: { 'some-other-package': '^1.0.0' } }));
  const sync = spawnSync(process.execPath, [path.join(ROOT, 'scripts', 'sync-optional-dependencies.js'), copy], { encoding: 'utf8' });
  t.is(sync.status, 0, sync.stderr);
  const { optionalDependencies, ...published } = JSON.parse(fs.readFileSync(copy, 'utf8'));
  const committed = { ...rootPackage };
  delete committed.optionalDependencies;
  t.deepEqual(published, committed, 'the script changes nothing but optionalDependencies');
  const { 'some-other-package': kept, ...platforms } = optionalDependencies;
  t.is(kept, '^1.0.0', 'the script keeps other optional dependencies');
  return platforms;
}

test('the committed package.json declares no platform packages, so npm ci accepts its lock', (t) => {
  // An unpublished version's platform packages are on no registry: npm cannot lock them, and
  // `npm ci` fails with "Missing: membacking-linux-x64-gnu@ from lock file".
  const declared = (deps) => Object.keys(deps ?? {}).filter((name) => name.startsWith(`${rootPackage.name}-`));
  for (const field of ['dependencies', 'optionalDependencies', 'devDependencies', 'peerDependencies']) {
    t.deepEqual(declared(rootPackage[field]), [], `package.json ${field} names no ${rootPackage.name}-<platform> package`);
  }
  const lock = JSON.parse(fs.readFileSync(path.join(ROOT, 'package-lock.json'), 'utf8'));
  t.deepEqual(declared(lock.packages[''].optionalDependencies), [], 'package-lock.json names no platform package');
  t.false(/sync-optional-dependencies/.test(rootPackage.scripts.version ?? ''), '`npm version` does not add them back');
});

test('npm/<platform> packages match package.json, and the publish step adds them as optionalDependencies', (t) => {
  t.true(targets.length >= 4);
  for (const required of ['linux-x64-gnu', 'linux-x64-musl', 'linux-arm64-gnu', 'linux-arm64-musl']) {
    t.true(targets.some((target) => target.platformArchABI === required), `napi.targets has ${required}`);
  }
  const expectedDeps = {};
  for (const target of targets) {
    const dir = path.join(ROOT, 'npm', target.platformArchABI);
    const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'));
    const main = `membacking.${target.platformArchABI}.node`;
    t.is(pkg.name, `membacking-${target.platformArchABI}`);
    t.is(pkg.version, rootPackage.version, `${pkg.name} has the root version`);
    t.deepEqual(pkg.os, [target.platform]);
    t.deepEqual(pkg.cpu, [target.arch]);
    t.deepEqual(pkg.libc, [target.abi === 'musl' ? 'musl' : 'glibc']);
    t.is(pkg.main, main);
    t.deepEqual(pkg.files, [main]);
    t.is(pkg.license, rootPackage.license);
    t.deepEqual(pkg.engines, rootPackage.engines);
    t.true(fs.readFileSync(path.join(dir, 'README.md'), 'utf8').includes(pkg.name));
    t.is(fs.readFileSync(path.join(dir, 'LICENSE'), 'utf8'), LICENSE_TEXT, `${pkg.name} ships the root LICENSE`);
    expectedDeps[pkg.name] = rootPackage.version;
  }
  t.deepEqual(publishedPlatformDependencies(t), expectedDeps, 'the publish step declares one optional dependency per target');
  t.deepEqual(fs.readdirSync(path.join(ROOT, 'npm')).sort(), targets.map((target) => target.platformArchABI).sort(), 'npm/ holds exactly the targets');
  // Nothing may build from source at install time, and the root ships no binary of its own.
  t.deepEqual(Object.keys(rootPackage.scripts ?? {}).filter((name) => /^(pre|post)?install$/.test(name)), []);
  t.false(rootPackage.files.some((entry) => entry.includes('.node') || entry === '*'));
});

test('npm pack refuses a clone that was not built, naming what is missing', (t) => {
  // The package.json and prepack check of this repository, without any build output.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'membacking-unbuilt-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.copyFileSync(path.join(ROOT, 'package.json'), path.join(dir, 'package.json'));
  fs.cpSync(path.join(ROOT, 'scripts'), path.join(dir, 'scripts'), { recursive: true });
  fs.copyFileSync(path.join(ROOT, 'README.md'), path.join(dir, 'README.md'));
  const env = Object.fromEntries(Object.entries(process.env).filter(([key]) => !/^npm_/i.test(key)));
  const pack = () => spawnSync('npm', ['pack', '--dry-run', '--json'], { cwd: dir, env, encoding: 'utf8' });
  const unbuilt = pack();
  t.not(unbuilt.status, 0, 'npm pack fails');
  t.regex(unbuilt.stderr, /index\.js, index\.d\.ts, dist\/index\.js, dist\/index\.d\.ts, dist\/cli\/main\.js: run `npm run build` first/);

  for (const file of ['index.js', 'index.d.ts', 'dist/index.js', 'dist/index.d.ts', 'dist/cli/main.js']) {
    fs.mkdirSync(path.dirname(path.join(dir, file)), { recursive: true });
    fs.writeFileSync(path.join(dir, file), '');
  }
  const built = pack();
  t.is(built.status, 0, built.stderr);
  t.true(JSON.parse(built.stdout)[0].files.some((file) => file.path === 'dist/cli/main.js'));
});

const reason = unsupportedReason();
const installTest = reason === null ? test : test.skip;
installTest(`packed root + ${PLATFORM} tarballs install offline without cargo and run${reason ? ` [skipped: ${reason}]` : ''}`, (t) => {
  for (const built of [BINARY, 'index.js', 'index.d.ts', 'dist/index.js', 'dist/native.js']) {
    t.true(fs.existsSync(path.join(ROOT, built)), `${built} exists (run \`npm run build\` first)`);
  }
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'membacking-pack-'));
  t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const tarballs = path.join(tmp, 'tarballs');
  const stage = path.join(tmp, 'stage', PLATFORM);
  const app = path.join(tmp, 'app');
  fs.mkdirSync(tarballs);
  fs.mkdirSync(app);
  const env = environmentWithoutRust(path.join(tmp, 'bin'));
  t.is(findOnPath('cargo', env.PATH), null, 'cargo is not on PATH');
  t.is(findOnPath('rustc', env.PATH), null, 'rustc is not on PATH');
  t.not(spawnSync('/bin/sh', ['-c', 'command -v cargo'], { env }).status, 0, 'the shell finds no cargo');

  // The platform package as `napi artifacts` would fill it: its package.json, README and binary.
  fs.cpSync(path.join(ROOT, 'npm', PLATFORM), stage, { recursive: true });
  fs.copyFileSync(path.join(ROOT, BINARY), path.join(stage, BINARY));

  const pack = (cwd, extraArgs = []) => {
    const result = run(t, 'npm', ['pack', '--json', '--pack-destination', tarballs, ...extraArgs], { cwd, env });
    const [info] = JSON.parse(result.stdout);
    return { tarball: path.join(tarballs, info.filename), files: info.files.map((file) => file.path) };
  };
  // The root as published: packed, then its package.json given the platform packages by the
  // publish step, then packed again.
  const committedRoot = pack(ROOT);
  const unpacked = path.join(tmp, 'stage', 'root');
  fs.mkdirSync(unpacked, { recursive: true });
  run(t, 'tar', ['-xzf', committedRoot.tarball, '-C', unpacked], { cwd: tmp, env }); // into package/
  const rootStage = path.join(unpacked, 'package');
  fs.rmSync(committedRoot.tarball);
  run(t, 'node', [path.join(ROOT, 'scripts', 'sync-optional-dependencies.js'), path.join(rootStage, 'package.json')], { cwd: tmp, env });
  const stagedPackage = JSON.parse(fs.readFileSync(path.join(rootStage, 'package.json'), 'utf8'));
  t.deepEqual(Object.keys(stagedPackage.optionalDependencies).sort(), targets.map((target) => `membacking-${target.platformArchABI}`).sort());
  const root = pack(rootStage, ['--ignore-scripts']); // its prepack check ran on the first pack; scripts/ is not shipped
  t.deepEqual(root.files.sort(), committedRoot.files.sort(), 'the publish step adds or drops no file');
  const platform = pack(stage);

  t.true(root.files.includes('dist/index.js') && root.files.includes('index.js') && root.files.includes('package.json'));
  for (const shipped of ['LICENSE', 'README.md', 'CHANGELOG.md', 'index.d.ts', 'dist/index.d.ts', 'dist/cli/main.js']) {
    t.true(root.files.includes(shipped), `the root tarball has ${shipped}`);
  }
  t.deepEqual(root.files.filter((file) => /(^|\/)__test__\/|\.test\.js$|^(examples|bench|ts|conformance|fuzz|docs|scripts)\//.test(file)), [], 'the root tarball has no tests, sources or tooling');
  t.deepEqual(root.files.filter(isRustSource), [], 'the root tarball has no Rust sources');
  t.deepEqual(root.files.filter((file) => file.endsWith('.node')), [], 'the root tarball has no binary');
  t.deepEqual(platform.files.sort(), [BINARY, 'LICENSE', 'README.md', 'package.json'].sort());

  fs.writeFileSync(path.join(app, 'package.json'), `${JSON.stringify({ name: 'membacking-pack-smoke', version: '1.0.0', private: true }, null, 2)}\n`);
  // --offline: nothing comes from a registry. The root's other optional dependencies (musl,
  // arm64) do not fit this machine, so npm skips them; this one is given as a tarball.
  run(t, 'npm', ['install', '--offline', '--no-audit', '--no-fund', root.tarball, platform.tarball], { cwd: app, env });

  const modules = path.join(app, 'node_modules');
  t.deepEqual(fs.readdirSync(modules).filter((name) => !name.startsWith('.')).sort(), ['membacking', PLATFORM_PACKAGE]);
  const installedRoot = listFiles(path.join(modules, 'membacking'));
  const installedPlatform = listFiles(path.join(modules, PLATFORM_PACKAGE));
  t.deepEqual([...installedRoot, ...installedPlatform].filter(isRustSource), [], 'no Rust sources are installed');
  t.deepEqual(installedRoot.filter((file) => file.endsWith('.node')), [], 'membacking itself holds no binary');
  t.deepEqual(installedPlatform.sort(), [BINARY, 'LICENSE', 'README.md', 'package.json'].sort());

  fs.copyFileSync(path.join(ROOT, 'scripts', 'pack-smoke.js'), path.join(app, 'smoke.js'));
  const smoke = spawnSync('node', ['smoke.js', PLATFORM_PACKAGE], { cwd: app, env, encoding: 'utf8' });
  let report;
  try {
    report = JSON.parse(smoke.stdout);
  } catch {
    t.fail(`smoke.js printed no report (exit ${smoke.status}):\n${smoke.stdout}\n${smoke.stderr}`);
    return;
  }
  for (const result of report.results) t.true(result.ok, `${result.name}\n${result.error ?? ''}`);
  t.true(report.results.length >= 5);
  t.is(smoke.status, 0);
  t.deepEqual(report.binaries, [fs.realpathSync(path.join(modules, PLATFORM_PACKAGE, BINARY))]);
  t.log(`smoke checks passed: ${report.results.map((result) => result.name).join('; ')}`);

  // Without a fitting binary, require() throws one actionable error that keeps the cause.
  const probe = `try { require('membacking'); console.log('{"loaded":true}') } catch (e) {
    console.log(JSON.stringify({ message: e.message, code: e.code, causeIsError: e.cause instanceof Error, expectedPackage: e.expectedPackage })) }`;
  const requireError = () => JSON.parse(run(t, 'node', ['-e', probe], { cwd: app, env }).stdout);

  const hidden = path.join(tmp, 'hidden');
  fs.renameSync(path.join(modules, PLATFORM_PACKAGE), hidden);
  const missing = requireError();
  t.is(missing.code, 'ERR_NATIVE_BINDING_LOAD_FAILED');
  t.is(missing.expectedPackage, PLATFORM_PACKAGE);
  t.true(missing.causeIsError);
  for (const part of [`${process.platform}-${process.arch} (libc: ${LIBC})`, `\`${PLATFORM_PACKAGE}\``, 'optional dependencies', 'npm run build', 'Rust']) {
    t.true(missing.message.includes(part), `the missing-binary message mentions ${part}:\n${missing.message}`);
  }

  fs.renameSync(hidden, path.join(modules, PLATFORM_PACKAGE));
  fs.writeFileSync(path.join(modules, PLATFORM_PACKAGE, BINARY), 'not an ELF file');
  const broken = requireError();
  t.is(broken.code, 'ERR_NATIVE_BINDING_LOAD_FAILED');
  t.regex(broken.message, /A binary was found but failed to load: .*(invalid ELF header|too short)/);
});
