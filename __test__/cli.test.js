// The membacking CLI: layout formats, the SVG memory map's structure, help and exit codes.
'use strict';
// Serial on purpose: these tests are synchronous (spawnSync), and ava reports concurrent tests of
// a file only once all of them have run, so on a loaded machine the whole file went past ava's
// 2-minute inactivity timeout with no result ("Timed out while running tests"). Serial tests are
// reported one by one.
const test = require('ava').serial;
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const mb = require('../dist');
const fc = require('fast-check');
const { layoutSvg } = require('../dist/cli/svg');
const { parseSize, parseRange } = require('../dist/cli/format');
const { layoutFromInput } = require('../dist/cli/input');
const { NOBODY, readablePackageCopy, unprivilegedUnavailable } = require('./helpers/unprivileged');

const cli = path.join(__dirname, '..', 'dist', 'cli', 'main.js');
const run = (...args) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });

test('layout --format json prints MemoryLayout#toJSON', (t) => {
  const r = run('layout', '--ram', '4G', '--gap', '3G-4G', '--vtl2', '8G-0x204000000', '--format', 'json');
  t.is(r.status, 0, r.stderr);
  const json = JSON.parse(r.stdout);
  t.deepEqual(json.ram.map((x) => x.range), [{ start: '0x0', end: '0xc0000000' }, { start: '0x100000000', end: '0x140000000' }]);
  t.deepEqual(json.vtl2Range, { start: '0x200000000', end: '0x204000000' });
  t.is(json.ramSize, '0x100000000');
});

test('layout --format table and e820', (t) => {
  const table = run('layout', '--ram', '2G', '--gap', '0xc0000000-4G');
  t.is(table.status, 0);
  t.regex(table.stdout, /^kind\s+start\s+end\s+size\s+detail$/m, 'every column has a header');
  t.regex(table.stdout, /RAM\s+0x0000000000000000\s+0x0000000080000000\s+2 GiB\s+vnode 0/);
  t.regex(table.stdout, /MMIO\s+0x00000000c0000000\s+0x0000000100000000\s+1 GiB/);
  const e820 = run('layout', '--ram', '4G', '--gap', '3G-4G', '--format', 'e820');
  t.is(e820.status, 0);
  t.deepEqual(e820.stdout.trim().split('\n'), [
    'BIOS-e820: [mem 0x0000000000000000-0x00000000bfffffff] usable',
    'BIOS-e820: [mem 0x00000000c0000000-0x00000000ffffffff] reserved (MMIO)',
    'BIOS-e820: [mem 0x0000000100000000-0x000000013fffffff] usable',
  ]);
});

test('layout --x86-legacy shows the regions guest memory with x86 legacy support has, the first megabyte named', (t) => {
  const args = ['layout', '--ram', '4G', '--gap', '3G-4G', '--vtl2', '8G-8G+64M', '--x86-legacy'];
  const layout = mb.MemoryLayout.new(4n * mb.GiB, [mb.range(3n * mb.GiB, 4n * mb.GiB)], mb.range(8n * mb.GiB, 8n * mb.GiB + 64n * mb.MiB));
  const regions = mb.x86LegacyRamRanges(layout);
  // Table: one row per region, with its file offset, then the gap; the first megabyte's areas named.
  const table = run(...args);
  t.is(table.status, 0, table.stderr);
  const rows = table.stdout.split('\n').filter((line) => /^(RAM|VTL2|MMIO) /.test(line));
  t.is(rows.length, regions.length + 1);
  t.regex(rows[0], /^RAM\s+0x0000000000000000\s+0x00000000000a0000\s+640 KiB\s+0x0\s+vnode 0, conventional memory$/);
  t.regex(rows[1], /^RAM\s+0x00000000000a0000\s+0x00000000000c0000\s+128 KiB\s+0xa0000\s+vnode 0, VGA window$/);
  t.regex(rows[2], /0x00000000000c0000\s+0x00000000000c4000\s+16 KiB\s+0xc0000\s+vnode 0, PAM1 low$/);
  t.regex(rows[13], /0x00000000000ec000\s+0x00000000000f0000\s+16 KiB\s+0xec000\s+vnode 0, PAM6 high$/);
  t.regex(rows[14], /0x00000000000f0000\s+0x0000000000100000\s+64 KiB\s+0xf0000\s+vnode 0, system BIOS$/);
  t.regex(rows[15], /^RAM\s+0x0000000000100000\s+0x00000000c0000000\s+3071 MiB\s+0x100000\s+vnode 0$/);
  t.regex(rows.at(-1), /^VTL2\s+0x0000000200000000\s+0x0000000204000000\s+64 MiB\s+0x100000000$/);
  // e820: conventional memory and the RAM above 1 MiB usable, the legacy areas above 640 KiB reserved.
  const e820 = run(...args, '--format', 'e820').stdout.trim().split('\n');
  t.is(e820[0], 'BIOS-e820: [mem 0x0000000000000000-0x000000000009ffff] usable');
  t.is(e820[1], 'BIOS-e820: [mem 0x00000000000a0000-0x00000000000bffff] reserved (VGA window)');
  t.is(e820[14], 'BIOS-e820: [mem 0x00000000000f0000-0x00000000000fffff] reserved (system BIOS)');
  t.is(e820[15], 'BIOS-e820: [mem 0x0000000000100000-0x00000000bfffffff] usable');
  t.is(e820.filter((line) => line.endsWith('reserved (PAM1 low)')).length, 1);
  // JSON: the layout's JSON plus the regions, which are exactly x86LegacyRamRanges; read back, they are ignored.
  const json = run(...args, '--format', 'json');
  t.is(json.status, 0, json.stderr);
  const parsed = JSON.parse(json.stdout);
  t.deepEqual(
    parsed.x86LegacyRam.map(({ range, fileOffset }) => ({ range, fileOffset })),
    JSON.parse(JSON.stringify(regions.map(({ range, fileOffset }) => ({ range, fileOffset: `0x${fileOffset.toString(16)}` })))),
  );
  t.deepEqual(parsed.x86LegacyRam[1], { range: { start: '0xa0000', end: '0xc0000' }, fileOffset: '0xa0000', kind: 'RAM', area: 'VGA window' });
  t.deepEqual(parsed.x86LegacyRam.at(-1), { range: { start: '0x200000000', end: '0x204000000' }, fileOffset: '0x100000000', kind: 'VTL2' });
  const file = tempFile('legacy.json', json.stdout);
  t.is(run('layout', '--input', file, '--x86-legacy', '--format', 'json').stdout, json.stdout);
  t.is(run('layout', '--input', file, '--format', 'json').stdout, run(...args.slice(0, -1), '--format', 'json').stdout);
  // plan and prefetch read the same file (they refused the regions as an unknown key).
  const plan = run('plan', '--input', file, '--x86-legacy', '--format', 'json');
  t.is(plan.status, 0, plan.stderr);
  const view = JSON.parse(plan.stdout).initialFlatView;
  t.deepEqual(view.filter((entry) => entry.region).map((entry) => entry.range.start), regions.map((region) => `0x${region.range.start.toString(16)}`));
  const prefetch = run('prefetch', '--input', file, '--no-kvm');
  t.is(prefetch.status, 0, prefetch.stderr);
  // SVG: a band per region.
  const svg = run(...args, '--format', 'svg');
  t.is(svg.status, 0, svg.stderr);
  t.is([...svg.stdout.matchAll(/data-kind="RAM"/g)].length, regions.length - 1);
  t.true(svg.stdout.includes('PAM6 high'));
});

test('layout --x86-legacy on RAM that does not start at 0 is bad input: the original message and which range breaks it, exit 2', (t) => {
  const file = tempFile('high.json', JSON.stringify({ ram: [{ range: '1M-1G', vnode: 0 }] }));
  const r = run('layout', '--input', file, '--x86-legacy');
  t.is(r.status, 2);
  t.regex(r.stderr, /^membacking: x86 support requires RAM to start at 0 and contain at least 1MB: the first RAM range 0x100000-0x40000000 starts at 0x100000, not 0: [^\n]*\n$/);
  t.is(r.stdout, '');
  t.is(run('layout', '--input', file).status, 0, 'without the flag the layout is fine');
});

test('--out FILE writes what layout and plan print to the file instead', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mb-cli-'));
  const layoutArgs = ['layout', '--ram', '4G', '--gap', '3G-4G', '--format', 'svg'];
  const svg = path.join(dir, 'map.svg');
  fs.writeFileSync(svg, 'old contents, replaced');
  const written = run(...layoutArgs, '--out', svg);
  t.is(written.status, 0, written.stderr);
  t.is(written.stdout, '');
  t.is(fs.readFileSync(svg, 'utf8'), run(...layoutArgs).stdout);
  const planArgs = ['plan', '--ram', '2G', '--gap', '2G-3G', '--x86-legacy', '--change', 'visibility 0xa0000-0xc0000 Unmapped', '--format', 'json'];
  const plan = path.join(dir, 'plan.json');
  t.is(run(...planArgs, '--out', plan).status, 0);
  t.deepEqual(JSON.parse(fs.readFileSync(plan, 'utf8')), JSON.parse(run(...planArgs).stdout));
  // A file that cannot be written is bad input: one line naming it, exit 2, nothing printed.
  const missing = path.join(dir, 'no-such-dir', 'map.svg');
  const refused = run(...layoutArgs, '--out', missing);
  t.is(refused.status, 2);
  t.is(refused.stdout, '');
  // The reason, not the name of the temporary file it failed to create (`.map.svg.123.4f2a….tmp`).
  t.is(refused.stderr, `membacking: --out ${missing}: cannot write it (ENOENT: no such file or directory)\n`);
  // An empty name is refused as such (it failed renaming a temporary file to '').
  const empty = run(...layoutArgs, '--out', '');
  t.is(empty.status, 2);
  t.is(empty.stderr, 'membacking: --out needs a file name (an empty one was given)\n');
  t.deepEqual(fs.readdirSync(process.cwd()).filter((name) => name.endsWith('.tmp')), []);
});

test('--out FILE: a write that fails part-way leaves the previous file intact and no temporary file', (t) => {
  // The file size limit (ulimit -f, in blocks of at least 512 bytes) stops the write after the
  // first kilobyte or so; node ignores SIGXFSZ, so the write fails with EFBIG. The file was
  // truncated and half written in place.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mb-cli-'));
  const out = path.join(dir, 'map.svg');
  fs.writeFileSync(out, 'the previous map');
  fs.chmodSync(out, 0o640);
  const args = ['layout', '--ram', '4G', '--gap', '3G-4G', '--x86-legacy', '--format', 'svg', '--out', out];
  const quoted = [process.execPath, cli, ...args].map((arg) => `'${arg.replace(/'/g, "'\\''")}'`).join(' ');
  const limited = spawnSync('/bin/sh', ['-c', `ulimit -f 2 && exec ${quoted}`], { encoding: 'utf8' });
  t.is(limited.status, 2, limited.stderr);
  t.regex(limited.stderr, /^membacking: --out .*: cannot write it \(EFBIG[^\n]*\)\n$/);
  t.is(fs.readFileSync(out, 'utf8'), 'the previous map');
  t.deepEqual(fs.readdirSync(dir), ['map.svg']);
  // Without the limit the file is replaced whole, keeping its mode.
  const written = run(...args);
  t.is(written.status, 0, written.stderr);
  t.true(fs.statSync(out).size > 4096, 'the output is larger than the limit above');
  t.is(fs.readFileSync(out, 'utf8'), run(...args.slice(0, -2)).stdout);
  t.is(fs.statSync(out).mode & 0o777, 0o640);
  t.deepEqual(fs.readdirSync(dir), ['map.svg']);
  // Through a symbolic link: the file it points to is replaced, the link stays.
  const link = path.join(dir, 'link.svg');
  fs.symlinkSync('map.svg', link);
  fs.writeFileSync(out, 'old');
  t.is(run(...args.slice(0, -1), link).status, 0);
  t.true(fs.lstatSync(link).isSymbolicLink());
  t.is(fs.readFileSync(out, 'utf8'), run(...args.slice(0, -2)).stdout);
  // Not a regular file: written directly.
  t.is(run(...args.slice(0, -1), '/dev/null').status, 0);
});

const unprivileged = unprivilegedUnavailable();
(unprivileged === null ? test : test.skip)(
  `--out FILE in a directory the user may not create files in: the writable FILE is written in place${unprivileged === null ? '' : ` [skipped: ${unprivileged}]`}`,
  (t) => {
    // The CLI runs as an unprivileged user (root creates files anywhere), from a copy of the
    // package it can read; the file is writable, its directory only root's.
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'mb-cli-'));
    const copy = readablePackageCopy(root);
    const dir = path.join(root, 'out');
    fs.mkdirSync(dir, { mode: 0o755 });
    const out = path.join(dir, 'map.txt');
    fs.writeFileSync(out, 'the previous map');
    fs.chmodSync(out, 0o666);
    const args = [path.join(copy, 'dist', 'cli', 'main.js'), 'layout', '--ram', '4G', '--gap', '3G-4G', '--out'];
    const asNobody = (file) => spawnSync(process.execPath, [...args, file], { encoding: 'utf8', uid: NOBODY, gid: NOBODY });
    const inPlace = asNobody(out);
    t.is(inPlace.status, 0, inPlace.stderr);
    t.is(fs.readFileSync(out, 'utf8'), run('layout', '--ram', '4G', '--gap', '3G-4G').stdout);
    t.deepEqual(fs.readdirSync(dir), ['map.txt']);
    // A new file there cannot be made: refused, with the reason.
    const refused = asNobody(path.join(dir, 'new.txt'));
    t.is(refused.status, 2);
    t.regex(refused.stderr, /^membacking: --out .*new\.txt: cannot write it \(EACCES[^\n]*\)\n$/);
    t.deepEqual(fs.readdirSync(dir), ['map.txt']);
    // A write in place that fails part-way (the file size limit, ulimit -f 1: 512 bytes or more,
    // and the SVG is larger) puts the previous contents back and says so.
    fs.writeFileSync(out, 'the previous map');
    const quoted = [process.execPath, ...args.slice(0, -1), '--format', 'svg', '--out', out].map((arg) => `'${arg.replace(/'/g, "'\\''")}'`).join(' ');
    const limited = spawnSync('/bin/sh', ['-c', `ulimit -f 1 && exec ${quoted}`], { encoding: 'utf8', uid: NOBODY, gid: NOBODY });
    t.is(limited.status, 2, limited.stderr);
    t.regex(limited.stderr, /^membacking: --out .*map\.txt: cannot write it \(EFBIG[^\n]*; it was written in place, as no temporary file can be created in its directory, and its previous contents were put back\)\n$/);
    t.is(fs.readFileSync(out, 'utf8'), 'the previous map');
    t.deepEqual(fs.readdirSync(dir), ['map.txt']);
  },
);

test('layout --input reads a JSON file', (t) => {
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'mb-cli-')), 'layout.json');
  fs.writeFileSync(file, JSON.stringify({ ram: [{ range: '0-1G', vnode: 0 }, { range: { start: '4G', end: '6G' }, vnode: 1 }], gaps: ['1G-2G'] }));
  const r = run('layout', '--input', file, '--format', 'json');
  t.is(r.status, 0, r.stderr);
  t.deepEqual(JSON.parse(r.stdout).ram, [
    { range: { start: '0x0', end: '0x40000000' }, vnode: 0 },
    { range: { start: '0x100000000', end: '0x180000000' }, vnode: 1 },
  ]);
});

/** A temporary file holding `text`. */
function tempFile(name, text) {
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'mb-cli-')), name);
  fs.writeFileSync(file, text);
  return file;
}

test('layout --format json reads back with --input to the same layout (gaps and the VTL2 range included)', (t) => {
  const first = run('layout', '--ram', '4G', '--gap', '3G-4G', '--gap', '0x140000000-6G', '--vtl2', '8G-8G+64M', '--format', 'json');
  t.is(first.status, 0, first.stderr);
  const file = tempFile('l.json', first.stdout);
  const second = run('layout', '--input', file, '--format', 'json');
  t.is(second.status, 0, second.stderr);
  t.is(second.stdout, first.stdout);
  const json = JSON.parse(second.stdout);
  t.deepEqual(json.mmio, [{ start: '0xc0000000', end: '0x100000000' }, { start: '0x140000000', end: '0x180000000' }]);
  t.deepEqual(json.vtl2Range, { start: '0x200000000', end: '0x204000000' });
  // plan takes the same file (its own key "changes" besides).
  const plan = run('plan', '--input', file, '--format', 'json');
  t.is(plan.status, 0, plan.stderr);
});

/** Layouts MemoryLayout.new accepts: RAM size, sorted disjoint gaps, maybe a VTL2 range above everything. */
const layoutArb = fc
  .record({
    ramPages: fc.integer({ min: 1, max: 1 << 20 }),
    gaps: fc.array(fc.record({ skip: fc.integer({ min: 1, max: 1 << 18 }), len: fc.integer({ min: 1, max: 1 << 18 }) }), { maxLength: 4 }),
    vtl2: fc.option(fc.record({ skip: fc.integer({ min: 0, max: 1 << 18 }), len: fc.integer({ min: 1, max: 1 << 12 }) })),
  })
  .map(({ ramPages, gaps, vtl2 }) => {
    const page = 4096n;
    let cursor = 0n;
    const ranges = gaps.map(({ skip, len }) => {
      const start = cursor + BigInt(skip) * page;
      cursor = start + BigInt(len) * page;
      return mb.range(start, cursor);
    });
    const layout = mb.MemoryLayout.new(BigInt(ramPages) * page, ranges);
    const top = layout.endOfRam > cursor ? layout.endOfRam : cursor;
    const vtl2Range = vtl2 === null ? null : mb.range(top + BigInt(vtl2.skip) * page, top + BigInt(vtl2.skip + vtl2.len) * page);
    return mb.MemoryLayout.new(BigInt(ramPages) * page, ranges, vtl2Range);
  });

test('property: the JSON the layout command prints reads back to the same layout', (t) => {
  fc.assert(
    fc.property(layoutArb, (layout) => {
      const printed = JSON.stringify(layout, null, 2);
      const back = layoutFromInput(JSON.parse(printed), 'l.json');
      return JSON.stringify(back, null, 2) === printed;
    }),
    { numRuns: 300 },
  );
  t.pass();
});

test('an input file with an unknown key is refused: exit 2, one line naming the key and the accepted ones', (t) => {
  const cases = [
    [{ ramSize: '4G', gapz: ['3G-4G'] }, /unknown key 'gapz' \(accepted: ramSize, ram, gaps, vtl2Range/],
    [{ ...JSON.parse(JSON.stringify(mb.MemoryLayout.new(mb.GiB, []))), extra: 1 }, /unknown key 'extra' \(accepted: ram, mmio, vtl2Range, ramSize/],
    [{ ram: [{ range: '0-1G', vnode: 0, numa: 1 }], gaps: [] }, /ram\[0\]: unknown key 'numa' \(accepted: range, vnode\)/],
    [{ ram: [{ range: '0-1G' }], vtl2Range: '8G-8G+64M' }, /"vtl2Range" needs "ramSize"/],
    [{ ramSize: '4G', gaps: [{ start: '3G', end: '4G', len: '1G' }] }, /gaps\[0\]: unknown key 'len'/],
  ];
  for (const [input, message] of cases) {
    const r = run('layout', '--input', tempFile('bad.json', JSON.stringify(input)));
    t.is(r.status, 2, `${JSON.stringify(input)}: ${r.stderr}`);
    t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
    t.regex(r.stderr, message);
  }
});

test('--vtl2 takes START-END with END written START+SIZE, as the help shows', (t) => {
  const r = run('layout', '--ram', '4G', '--gap', '3G-4G', '--vtl2', '8G-8G+64M', '--format', 'json');
  t.is(r.status, 0, r.stderr);
  t.deepEqual(JSON.parse(r.stdout).vtl2Range, { start: '0x200000000', end: '0x204000000' });
  t.deepEqual(parseRange('0x1000-0x1000+4K').toJSON(), { start: '0x1000', end: '0x2000' });
  t.deepEqual(parseRange('1G+4K-2G').toJSON(), { start: '0x40001000', end: '0x80000000' });
  t.throws(() => parseRange('8G-8G+'), { instanceOf: RangeError, message: /not an address: '8G\+'/ });
  t.throws(() => parseRange('8G-4G'), { instanceOf: RangeError, message: /ends \(0x100000000\) before it starts \(0x200000000\)/ });
});

test('range errors name the flag and the value', (t) => {
  for (const [args, message] of [
    [['layout', '--ram', '4G', '--gap', '3G'], /^membacking: --gap 3G: not a range/],
    [['layout', '--ram', '4G', '--vtl2', '8G-8G+1'], /^membacking: --vtl2 8G-8G\+1: .*aligned/],
    [['layout', '--ram', '4X'], /^membacking: --ram 4X: not a size/],
    [['layout', '--ram', '4G', '--format', 'png'], /^membacking: --format: unknown format 'png'/],
    [['plan', '--ram', '4G', '--change', 'visibility 0xa0000 Unmapped'], /^membacking: --change 'visibility 0xa0000 Unmapped': not a range/],
  ]) {
    const r = run(...args);
    t.is(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
    t.regex(r.stderr, message);
  }
});

test('bad input gives one line on stderr and exit code 2', (t) => {
  for (const args of [
    ['layout', '--ram', '4X'],
    ['layout', '--ram', '4G', '--gap', '0-4G'],
    ['layout', '--ram', '4G', '--gap', '3G'],
    ['layout', '--ram', '4G', '--format', 'png'],
    ['layout', '--bogus'],
    ['layout'],
    ['frobnicate'],
    ['layout', '--input', '/nonexistent/file.json'],
    [],
    // parseArgs says this one in three lines.
    ['layout', '--ram', '-1'],
    // The migration demo's child, run by hand (no socket on descriptor 3).
    ['migrate-demo', '--child'],
  ]) {
    const r = run(...args);
    t.is(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
    t.is(r.stderr.trim().split('\n').length, 1, `${args.join(' ')}: ${r.stderr}`);
    t.regex(r.stderr, /^membacking: /);
  }
});

test('--help on every command and --version', (t) => {
  for (const args of [['--help'], ['layout', '--help'], ['demo', '--help']]) {
    const r = run(...args);
    t.is(r.status, 0);
    t.regex(r.stdout, /usage: membacking/);
  }
  t.is(run('--version').stdout.trim(), require('../package.json').version);
});

test('help COMMAND prints what COMMAND --help prints, for every command the main help lists', (t) => {
  const main = run('--help');
  const commands = [...main.stdout.matchAll(/^ {2}([a-z][a-z-]+) {2,}/gm)].map((m) => m[1]);
  t.true(commands.includes('migrate-demo') && commands.includes('snapshot-info'), main.stdout);
  for (const command of commands) {
    const own = run(command, '--help');
    t.is(own.status, 0, command);
    t.regex(own.stdout, new RegExp(`^usage: membacking ${command} `), command);
    // `-h` as well as `--help` after the command (it was an unknown option there).
    for (const help of [['help', command], ['--help', command], [command, '-h']]) t.is(run(...help).stdout, own.stdout, help.join(' '));
  }
  const unknown = run('help', 'frobnicate');
  t.is(unknown.status, 2);
  t.is(unknown.stderr, "membacking: help: unknown command 'frobnicate' (see membacking --help)\n");
});

test('sizes parse with K/M/G/T suffixes, hex and decimal', (t) => {
  t.is(parseSize('4G'), 4n << 30n);
  t.is(parseSize('1.5G'), 3n << 29n);
  t.is(parseSize('512MiB'), 512n << 20n);
  t.is(parseSize('0x1000'), 0x1000n);
  t.is(parseSize('4096'), 4096n);
  t.is(parseSize('2T'), 2n << 40n);
  t.throws(() => parseSize('1.3K'), { instanceOf: RangeError });
  t.throws(() => parseSize('-4G'), { instanceOf: RangeError });
});

test('the SVG map has a labelled band per range, in address order, and lists device windows', (t) => {
  const layout = mb.MemoryLayout.new(4n * mb.GiB, [mb.range(3n * mb.GiB, 4n * mb.GiB)], mb.range(8n * mb.GiB, 8n * mb.GiB + 64n * mb.MiB));
  const svg = layoutSvg(layout, { windows: [{ name: 'vga', range: mb.range(0xc000_0000n, 0xc000_0000n + 0x20000n) }] });
  t.regex(svg, /^<svg xmlns="http:\/\/www.w3.org\/2000\/svg"/);
  t.regex(svg, /<\/svg>$/);
  const bands = [...svg.matchAll(/<g class="band" data-kind="(\w+)" data-start="(0x[0-9a-f]+)" data-end="(0x[0-9a-f]+)">/g)].map((m) => [m[1], m[2], m[3]]);
  // Drawn from the highest address down.
  t.deepEqual(bands.reverse(), [
    ['RAM', '0x0', '0xc0000000'],
    ['MMIO', '0xc0000000', '0x100000000'],
    ['RAM', '0x100000000', '0x140000000'],
    ['UNUSED', '0x140000000', '0x200000000'],
    ['VTL2', '0x200000000', '0x204000000'],
  ]);
  t.true(svg.includes('0x0-0xc0000000  (3 GiB)'));
  t.true(svg.includes('0x200000000-0x204000000  (64 MiB)'));
  t.true(svg.includes('device window vga: 0xc0000000-0xc0020000 (128 KiB)'));
  t.is((svg.match(/class="window"/g) || []).length, 1);
  // Small ranges stay visible: every band is at least 18 px high.
  const heights = [...svg.matchAll(/<rect x="190" y="[0-9.]+" width="170" height="([0-9.]+)"/g)].map((m) => Number(m[1]));
  t.is(heights.length, 5);
  t.true(heights.every((h) => h >= 18));
  // The 3 GiB band is taller than the 64 MiB one, but by far less than 48×.
  t.true(heights[4] > heights[0] && heights[4] < heights[0] * 3);
});

/** The bands of an SVG map, lowest address first: [kind, start, end]. */
const svgBands = (svg) => [...svg.matchAll(/<g class="band" data-kind="(\w+)" data-start="(0x[0-9a-f]+)" data-end="(0x[0-9a-f]+)">/g)].map((m) => [m[1], m[2], m[3]]).reverse();

test('plan --format svg draws every row of the flat-view table, holes included', (t) => {
  const args = ['plan', '--ram', '4G', '--gap', '3G-4G', '--x86-legacy', '--change', 'visibility 0xc0000-0xc4000 Unmapped', '--change', 'device vga 0xc0000000-0xc0020000'];
  const svg = run(...args, '--format', 'svg');
  t.is(svg.status, 0, svg.stderr);
  const json = run(...args, '--format', 'json');
  t.is(json.status, 0, json.stderr);
  const steps = JSON.parse(json.stdout).steps;
  const final = steps[steps.length - 1].flatView;
  const bands = svgBands(svg.stdout);
  // The hole the table shows is in the drawing.
  t.true(final.some((row) => row.region === null && row.range.start === '0xc0000'), 'the table shows the hole');
  t.deepEqual(bands.find((b) => b[1] === '0xc0000'), ['HOLE', '0xc0000', '0xc4000']);
  // Every table row is a band of the same bounds and kind.
  for (const row of final) {
    const kind = row.region === null ? 'HOLE' : row.region.name === 'ram' ? 'RAM' : 'DEVICE';
    t.true(
      bands.some(([k, start, end]) => k === kind && start === row.range.start && end === row.range.end),
      `row ${row.range.start}-${row.range.end} (${kind}) is not drawn`,
    );
  }
  // The rest is the layout's MMIO gap around the device window; the bands tile the space.
  t.deepEqual(bands.filter(([k]) => k === 'MMIO'), [['MMIO', '0xc0020000', '0x100000000']]);
  for (let i = 1; i < bands.length; i++) t.is(bands[i][1], bands[i - 1][2], `band ${i} starts where band ${i - 1} ends`);
});

test('layout --format svg prints the same map', (t) => {
  const r = run('layout', '--ram', '4G', '--gap', '3G-4G', '--format', 'svg');
  t.is(r.status, 0);
  t.regex(r.stdout, /<svg /);
  t.true(r.stdout.includes('data-kind="MMIO" data-start="0xc0000000" data-end="0x100000000"'));
});

test('a reader that closes the pipe early stops the command quietly (no EPIPE stack trace)', async (t) => {
  // `membacking demo | head -c 10`: the demo goes on printing after the reader has gone.
  const { spawn } = require('node:child_process');
  for (const args of [['demo', '--no-kvm'], ['migrate-demo', '--no-kvm']]) {
    const child = spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (chunk) => (stderr += chunk));
    // Close our end at the first output, as `head -c 10` does.
    child.stdout.once('data', () => child.stdout.destroy());
    const status = await new Promise((resolve) => child.on('close', (code) => resolve(code)));
    t.is(stderr, '', args.join(' '));
    t.is(status, 0, args.join(' '));
  }
});

test('an error whose explanation is in detail prints it; a refused change is named, with what would be accepted', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mb-cli-detail-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const input = path.join(dir, 'plan.json');
  fs.writeFileSync(input, JSON.stringify({ ramSize: '4G', gaps: ['3G-4G'], changes: ['visibility 0-1G ReadOnly'] }));
  for (const [args, message] of [
    // The contract's message is `invalid memory size`; why is in `detail`.
    [['layout', '--ram', '4097'], /^membacking: layout of --ram 4097: invalid memory size: the RAM size 0x1001 is not a positive multiple of 4 KiB/],
    [['layout', '--ram', '4G', '--gap', '3G-4G', '--gap', '3G-4G'], /invalid memory or MMIO ranges: gaps\[0\] 0xc0000000-0x100000000 overlaps gaps\[1\]/],
    // Which change of the file was refused, and the regions a visibility change can name.
    [['plan', '--input', input], /^membacking: change 'visibility 0-1G ReadOnly': 0x0-0x40000000 is not a controllable RAM range: setRamVisibility .* give such a range \(the RAM regions: 0x0-0xc0000000, 0x100000000-0x140000000\)$/m],
    // A second placement of a window cannot change its length (it used to be placed 4 KiB long, silently).
    [['plan', '--ram', '4G', '--gap', '3G-4G', '--change', 'device w 2G-2G+4K', '--change', 'device w 3G-3G+8K'], /^membacking: change 'device w 3G-3G\+8K': device window w is 4 KiB \(0x1000 bytes\) long, not 8 KiB/],
    // The original's x86 message, and which RAM range breaks it.
    [['layout', '--ram', '512K', '--x86-legacy'], /^membacking: x86 support requires RAM to start at 0 and contain at least 1MB: the first RAM range 0x0-0x80000 holds 0x80000 bytes, less than 1 MiB/],
    // A range the core refuses with its bare panic text names the value (flags and changes alike).
    [['layout', '--ram', '4G', '--gap', '3G+1-4G'], /^membacking: --gap 3G\+1-4G: start must be page aligned: start 0xc0000001 is not a multiple of the 4 KiB page size/],
    [['plan', '--ram', '4G', '--gap', '3G-4G', '--change', 'visibility 0-0x1001 ReadOnly'], /^membacking: --change 'visibility 0-0x1001 ReadOnly': end must be page aligned: end 0x1001 is not a multiple/],
  ]) {
    const r = run(...args);
    t.is(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
    t.is(r.stdout, '', args.join(' '));
    t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
    t.regex(r.stderr, message);
  }
  // Moving a window keeps working.
  const moved = run('plan', '--ram', '4G', '--gap', '3G-4G', '--change', 'device w 3G-3G+4K', '--change', 'device w 3G+8K-3G+12K', '--change', 'unplace w');
  t.is(moved.status, 0, moved.stderr);
});

test('--input reads a pipe, and refuses a file that never ends instead of reading it to the end', (t) => {
  // /dev/zero used to be read whole: the process grew until it was killed (or aborted with bad_alloc).
  const zero = run('layout', '--input', '/dev/zero');
  t.is(zero.status, 2, zero.stderr);
  t.is(zero.stderr, 'membacking: cannot read /dev/zero: it holds more than 16 MiB, which no layout file does\n');
  // A pipe (`--input <(…)`, /dev/stdin) is read to its end.
  // (A shell pipe: the stdin spawnSync gives a child is a socket, which /dev/stdin cannot open.)
  const piped = spawnSync('sh', ['-c', 'printf %s "$2" | "$0" "$1" layout --input /dev/stdin --format json', process.execPath, cli, JSON.stringify({ ramSize: '4G', gaps: ['3G-4G'] })], {
    encoding: 'utf8',
  });
  t.is(piped.status, 0, piped.stderr);
  t.is(JSON.parse(piped.stdout).ramSize, '0x100000000');
});

test('layout prints a layout of 70,000 gaps (140,000 rows), with and without --x86-legacy, each region with its vnode', (t) => {
  // Laying out the table spread one length per row into Math.max (more arguments than a call
  // takes: "Maximum call stack size exceeded"), and --x86-legacy searched the RAM ranges from
  // the start for every region (minutes at this size).
  const count = 70_000;
  const MiB = 1024 * 1024;
  const hex = (n) => `0x${n.toString(16)}`;
  const ram = Array.from({ length: count }, (_, i) => ({ range: `${hex(i * 4 * MiB)}-${hex(i * 4 * MiB + 2 * MiB)}`, vnode: i % 7 }));
  const gaps = Array.from({ length: count }, (_, i) => `${hex(i * 4 * MiB + 2 * MiB)}-${hex(i * 4 * MiB + 3 * MiB)}`);
  const file = tempFile('many-gaps.json', JSON.stringify({ ram, gaps }));
  for (const extra of [[], ['--x86-legacy']]) {
    const r = spawnSync(process.execPath, [cli, 'layout', '--input', file, ...extra], { encoding: 'utf8', maxBuffer: 256 * MiB });
    t.is(r.status, 0, r.stderr);
    const lines = r.stdout.split('\n');
    const ramRows = lines.filter((line) => line.startsWith('RAM '));
    t.is(lines.filter((line) => line.startsWith('MMIO ')).length, count, `${extra}`);
    // x86 legacy support splits the first megabyte into 15 regions and the rest of the first range into one.
    t.is(ramRows.length, extra.length === 0 ? count : count + 15, `${extra}`);
    const vnodes = ramRows.slice(-count + 1).map((line) => Number(/vnode (\d+)/.exec(line)?.[1]));
    t.true(vnodes.every((vnode, i) => vnode === (i + 1) % 7), `${extra}: every range's vnode`);
  }
});
