// The published declarations as TypeScript users compile them: the package is resolved by name
// (through `exports`) from a scratch project, with skipLibCheck off, under each module setup
// (nodenext and node16 as ESM and CommonJS, bundler, commonjs/node10) and the strictest options a
// user may turn on. The consumers are __test__/fixtures/consumer/. Runs after `npm run build`
// (dist/*.d.ts and index.d.ts must exist).
'use strict';
const test = require('ava');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const ts = require('typescript');

const ROOT = path.join(__dirname, '..');
const FIXTURES = path.join(__dirname, 'fixtures', 'consumer');
const TYPES = path.join(ROOT, 'node_modules', '@types');

/** Options every consumer compile shares: strict, and the flags that make declarations fail. */
const STRICTEST = {
  strict: true,
  exactOptionalPropertyTypes: true,
  noUncheckedIndexedAccess: true,
  isolatedModules: true,
  verbatimModuleSyntax: true,
  skipLibCheck: false,
  noEmit: true,
  target: 'es2022',
  lib: ['es2022', 'esnext.disposable'],
  types: ['node'],
};

/**
 * A scratch project whose node_modules holds membacking (this repository) and @types/node (with
 * its dependency), as `npm install membacking @types/node` would; `patchTypes(dir)` may change
 * the project's own copy of @types/node. Returns the project's directory.
 */
function scratchProject(t, patchTypes = null) {
  for (const built of ['dist/index.d.ts', 'index.d.ts']) {
    if (!fs.existsSync(path.join(ROOT, built))) throw new Error(`${built} is missing: run \`npm run build\` first`);
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'membacking-consumer-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const modules = path.join(dir, 'node_modules');
  fs.mkdirSync(path.join(modules, '@types'), { recursive: true });
  fs.symlinkSync(ROOT, path.join(modules, 'membacking'), 'dir');
  const typesNode = path.join(modules, '@types', 'node');
  if (patchTypes === null) {
    fs.symlinkSync(path.join(TYPES, 'node'), typesNode, 'dir');
  } else {
    fs.cpSync(path.join(TYPES, 'node'), typesNode, { recursive: true, dereference: true });
    patchTypes(typesNode);
  }
  for (const dependency of Object.keys(JSON.parse(fs.readFileSync(path.join(typesNode, 'package.json'), 'utf8')).dependencies ?? {})) {
    fs.symlinkSync(path.join(ROOT, 'node_modules', dependency), path.join(modules, dependency), 'dir');
  }
  fs.writeFileSync(path.join(dir, 'package.json'), '{ "name": "consumer", "private": true }\n');
  for (const file of fs.readdirSync(FIXTURES)) fs.copyFileSync(path.join(FIXTURES, file), path.join(dir, file));
  return dir;
}

/** The diagnostics of compiling files (relative to dir) with options, formatted, and the program. */
function compile(dir, files, options) {
  // typeRoots: the project's own @types (by default TypeScript looks under the working directory).
  const parsed = ts.convertCompilerOptionsFromJson({ ...options, typeRoots: [path.join(dir, 'node_modules', '@types')] }, dir);
  if (parsed.errors.length > 0) throw new Error(ts.formatDiagnostics(parsed.errors, formatHost(dir)));
  const program = ts.createProgram(
    files.map((file) => path.join(dir, file)),
    parsed.options,
  );
  const diagnostics = ts.getPreEmitDiagnostics(program);
  return { text: ts.formatDiagnostics(diagnostics, formatHost(dir)), program };
}

function formatHost(dir) {
  return { getCanonicalFileName: (name) => name, getCurrentDirectory: () => dir, getNewLine: () => '\n' };
}

const SETUPS = [
  { module: 'nodenext', moduleResolution: 'nodenext', files: ['esm.mts', 'cjs.cts'] },
  { module: 'node16', moduleResolution: 'node16', files: ['esm.mts', 'cjs.cts'] },
  { module: 'esnext', moduleResolution: 'bundler', files: ['esm.mts'] },
  { module: 'preserve', moduleResolution: 'bundler', files: ['esm.mts'] },
  { module: 'commonjs', moduleResolution: 'node10', files: ['cjs.cts'] },
];

for (const setup of SETUPS) {
  test(`a consumer compiles with module ${setup.module}, moduleResolution ${setup.moduleResolution} and skipLibCheck off`, (t) => {
    const dir = scratchProject(t);
    const { text, program } = compile(dir, setup.files, { ...STRICTEST, module: setup.module, moduleResolution: setup.moduleResolution });
    t.is(text, '', 'no diagnostics');
    // The package resolved to its published declarations (not a source file of the repository).
    const declarations = program.getSourceFiles().map((file) => fs.realpathSync(file.fileName)).filter((file) => file.startsWith(`${ROOT}${path.sep}`));
    t.true(declarations.includes(path.join(ROOT, 'dist', 'index.d.ts')));
    t.deepEqual(declarations.filter((file) => !file.endsWith('.d.ts')), []);
  });
}

test('every shipped declaration file compiles on its own with skipLibCheck off, the raw binding index.d.ts included', (t) => {
  // index.d.ts is shipped (and reachable with moduleResolution node10, which ignores `exports`):
  // a name it uses without declaring is an error for a consumer that checks libraries.
  const dir = scratchProject(t);
  const walk = (relative) =>
    fs.readdirSync(path.join(ROOT, relative), { withFileTypes: true }).flatMap((entry) => {
      const child = path.join(relative, entry.name);
      return entry.isDirectory() ? walk(child) : entry.name.endsWith('.d.ts') ? [child] : [];
    });
  const shipped = ['index.d.ts', ...walk('dist')];
  t.true(shipped.length > 10);
  const files = shipped.map((file) => path.join('node_modules', 'membacking', file));
  const { text } = compile(dir, files, { ...STRICTEST, verbatimModuleSyntax: false, module: 'commonjs', moduleResolution: 'node10' });
  t.is(text, '', 'no diagnostics');
});

test("the declarations compile with an @types/node whose node:util has no InspectOptionsStylized (as @types/node 26)", (t) => {
  // @types/node 26 dropped `InspectOptionsStylized` (and `CustomInspectFunction`, which names
  // it); declarations importing it failed for every user of the current @types/node who checks
  // libraries. This copy of the repository's @types/node lacks them as the new one does.
  let declared = null;
  const dir = scratchProject(t, (typesNode) => {
    const util = path.join(typesNode, 'util.d.ts');
    const stripped = fs
      .readFileSync(util, 'utf8')
      .replace(/^\s*export type CustomInspectFunction = .*$/m, '')
      .replace(/^(\s*)export interface InspectOptionsStylized extends InspectOptions \{[\s\S]*?^\1\}$/m, '');
    declared = /\bInspectOptionsStylized\b/.test(stripped);
    fs.writeFileSync(util, stripped);
  });
  t.false(declared, 'the copy no longer declares InspectOptionsStylized');
  const { text } = compile(dir, ['esm.mts'], { ...STRICTEST, module: 'nodenext', moduleResolution: 'nodenext' });
  t.is(text, '', 'no diagnostics');
});
