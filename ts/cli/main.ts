#!/usr/bin/env node
/**
 * The `membacking` command line: `layout` prints a layout built from flags or a JSON file as a
 * table, JSON or an e820-style map; `prefetch` and `plan` build guest memory and show what it
 * does; `snapshot-info` describes (and with `--verify` checks) a snapshot directory; `demo`
 * runs the README's main job. Bad input prints one
 * line to stderr and exits with code 2; other failures exit with 1.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, fchmodSync, fstatSync, fsyncSync, openSync, readFileSync, realpathSync, renameSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { runDemo } from './demo';
import { formatSize, layoutE820, layoutRows, layoutTable, x86LegacyJson, x86LegacyRows } from './format';
import { errorText, layoutFromFlags, UsageError } from './input';
import { GuestMemoryBuilder, Vtl } from '../manager';
import { KvmPartition, RecordingPartition } from '../partition';
import { ProgressBar } from './progress';
import { changesFromFile, parseChange, PlanInputError, renderPlan, runPlan } from './plan_command';
import { migrateDemo, migrateDemoChild } from './migrate_demo';
import { snapshotInfo, snapshotInfoUsage } from './snapshot_command';
import { OsError, SnapshotError } from '../errors';
import { layoutSvg, layoutTitle } from './svg';

const version = (require('../../package.json') as { version: string }).version;

const usage = {
  main: `usage: membacking <command> [options]

commands:
  layout         build a guest memory layout and print it
  prefetch       build guest memory with prefetchRam and attach a partition, with a progress bar
  plan           dry-run changes (visibility, device windows): flat view and ordered partition calls
  snapshot-info  describe a snapshot directory (chain, layout, regions, windows); --verify checks every page
  demo           run the demo: guest memory, a KVM guest, device window, VGA toggle
  migrate-demo   live-migrate a running KVM guest's memory to a child process over a socket pair

options:
  --help, -h  show help (also: membacking <command> --help)
  --version   print the version`,
  layout: `usage: membacking layout [--ram SIZE] [--gap START-END]... [--vtl2 START-END]
                         [--x86-legacy] [--input FILE.json] [--format table|json|e820|svg]
                         [--out FILE]

Build a layout from flags or from a JSON file and print it (default format: table;
svg draws a memory map to a readable scale).
--x86-legacy: show RAM as the regions guest memory with x86 legacy support has: the first
  megabyte split into conventional memory, the VGA window, the twelve PAM pieces and the
  system BIOS, each region with its offset in the guest-RAM file; e820 reports the areas above
  640 KiB as reserved; json adds them as "x86LegacyRam". RAM must start at 0 and hold 1 MiB.
SIZE / START / END: decimal or 0x-hex bytes, or a number with K, M, G or T (powers of
1024); END may be START+SIZE (8G-8G+64M); ranges are half-open; --gap repeats.
--input FILE.json: what --format json prints (MemoryLayout#toJSON, read back exactly), or
  {"ramSize": "4G", "gaps": ["3G-4G"], "vtl2Range": "8G-8G+64M"} or
  {"ram": [{"range": "0-1G", "vnode": 0}], "gaps": [...]}; ranges are "START-END"
  strings or {"start", "end"} objects of sizes. Unknown keys are errors.
--out FILE: write the output to FILE instead of standard output (FILE is replaced only once
  the whole output is written).`,
  prefetch: `usage: membacking prefetch [--ram SIZE] [--gap START-END]... [--vtl2 START-END]
                           [--input FILE.json] [--no-kvm]

Builds guest memory for the layout with prefetchRam and attaches a KvmPartition (a
RecordingPartition with --no-kvm or without /dev/kvm), which populates every RAM page; a
progress bar is drawn on stderr when it is a terminal. Prints what was prefetched and how long
it took.`,
  plan: `usage: membacking plan [--ram SIZE] [--gap START-END]... [--vtl2 START-END] [--input FILE.json]
                       [--x86-legacy] [--change CHANGE]... [--format table|json|svg]
                       [--out FILE]

Builds guest memory for the layout with a recording partition attached, then for each change,
in order: prints its plan (the ordered mapper invalidations and partition calls, with reasons),
applies it, and checks the recorded partition calls equal the plan. Ends with the flat view.
CHANGE: 'visibility START-END Unmapped|ReadOnly|ReadWrite' (a RAM region; with --x86-legacy
the VGA window 0xa0000-0xc0000 and the PAM pieces are regions), 'device NAME START-END' (place a
device window), 'unplace NAME'. --input may also hold {"changes": [CHANGE, ...]}.
--out FILE: write the output to FILE instead of standard output (FILE is replaced only once
the whole output is written).`,
  'snapshot-info': snapshotInfoUsage,
  demo: `usage: membacking demo [--no-kvm]

Builds 4 GiB of guest RAM around the x86 MMIO gap with x86 legacy support, attaches a
KvmPartition when /dev/kvm opens (a RecordingPartition otherwise, saying why), places a
memfd device window in the MMIO gap, runs guest code that writes RAM and reads the window,
toggles the VGA window showing the partition calls, and prints the region table, a compact
inspect tree and registrar chunks; last, it snapshots the guest, restores it lazily (by copying
where userfaultfd is unavailable) into a new manager and a new KVM partition, and the guest's
code reads its data back.
--no-kvm: use the RecordingPartition even where /dev/kvm opens.`,
  migrateDemo: `usage: membacking migrate-demo [--no-kvm]

Live migration between two processes joined by a socket pair: a KVM guest in this process
keeps writing a counter into RAM above the MMIO gap while its memory (128 MiB around the gap)
migrates to a child process; pause() stops the vCPU and sends its registers with the final
round. The child builds a KVM partition on the migrated memory, sets the registers, runs the
guest on, and checks the area holds exactly what the guest had written when paused, that the
counter goes on, and a checksum of data below the gap. Prints rounds, bytes and downtime;
exits with the child's status (1 when a check failed).
--no-kvm: this program writes the counter between the migration's frames instead of a guest
  (also what happens without /dev/kvm, saying why).`,
};

/** The flags that name a layout, shared by the commands that take one. */
const LAYOUT_FLAGS = {
  ram: { type: 'string' },
  gap: { type: 'string', multiple: true },
  vtl2: { type: 'string' },
  input: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

/**
 * Prints a command's output: to standard output, or to the file `--out` names (a file that
 * cannot be written is bad input: one line naming it and the reason).
 */
function emit(text: string, out: string | undefined): void {
  if (out === undefined) {
    console.log(text);
    return;
  }
  if (out === '') throw new UsageError('--out needs a file name (an empty one was given)');
  try {
    replaceFile(out, `${text}\n`);
  } catch (error) {
    throw new UsageError(`--out ${out}: cannot write it (${(error as Error).message})`);
  }
}

/**
 * Writes `data` to `file` so that a failure part-way (a full disk, `ulimit -f`) leaves the
 * previous file as it was: the data goes to a new file in the same directory, which is renamed
 * over `file` once complete (and removed on failure). An existing file keeps its mode, and a
 * symbolic link the file it points to. Something other than a regular file (a terminal, a pipe,
 * `/dev/null`), or an existing file in a directory where no file can be created, is written
 * directly (such a file's previous contents are put back when the write fails).
 */
function replaceFile(file: string, data: string): void {
  let target = file;
  let mode: number | undefined;
  try {
    const stat = statSync(file);
    if (!stat.isFile()) {
      writeFileSync(file, data);
      return;
    }
    target = realpathSync(file);
    mode = stat.mode & 0o7777;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
  const temporary = join(dirname(target), `.${basename(target)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  let fd: number;
  try {
    fd = openSync(temporary, 'wx', mode ?? 0o666);
  } catch (error) {
    // A directory we may not create files in (permissions, a read-only mount) can still hold a
    // file we may write: write that one in place, as without a temporary file.
    const code = (error as NodeJS.ErrnoException).code;
    if (mode === undefined || !['EACCES', 'EPERM', 'EROFS'].includes(code ?? '')) throw aboutTarget(error, temporary, target);
    writeInPlace(target, data);
    return;
  }
  try {
    try {
      writeFileSync(fd, data);
      if (mode !== undefined) fchmodSync(fd, mode);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(temporary, target);
  } catch (error) {
    try {
      unlinkSync(temporary);
    } catch {
      // Already gone; the first error is the one to report.
    }
    throw aboutTarget(error, temporary, target);
  }
}

/**
 * `error` of a step on the temporary file without the temporary file's name (`.out.123.4f2a….tmp`
 * is ours and means nothing to the user, who named `target`): Node's `CODE: reason, syscall
 * 'path'` keeps `CODE: reason`.
 */
function aboutTarget(error: unknown, temporary: string, target: string): unknown {
  if (!(error instanceof Error) || !error.message.includes(temporary)) return error;
  const syscall = error.message.indexOf(', ');
  error.message = syscall > 0 ? error.message.slice(0, syscall) : error.message.split(temporary).join(target);
  return error;
}

/**
 * Writes `data` over the regular file `file` itself (no file can be created beside it). A write
 * failing part-way has truncated the file, so its previous contents are put back (they fitted
 * before); the error says whether that worked.
 */
function writeInPlace(file: string, data: string): void {
  let previous: Buffer | null;
  try {
    previous = readFileSync(file);
  } catch {
    previous = null; // write-only: it cannot be kept
  }
  try {
    writeFileSync(file, data);
  } catch (error) {
    let putBack = false;
    if (previous !== null) {
      try {
        writeFileSync(file, previous);
        putBack = true;
      } catch {
        // Reported below.
      }
    }
    const what = putBack
      ? 'its previous contents were put back'
      : 'it now holds part of the output: its previous contents could not be put back';
    (error as Error).message += `; it was written in place, as no temporary file can be created in its directory, and ${what}`;
    throw error;
  }
}

/** Whether descriptor `fd` is open and a socket. */
function isSocket(fd: number): boolean {
  try {
    return fstatSync(fd).isSocket();
  } catch {
    return false;
  }
}

/** `--format`, one of `allowed` (the first is the default). */
function formatFlag(value: string | undefined, allowed: readonly string[]): string {
  const format = value ?? allowed[0]!;
  if (!allowed.includes(format)) throw new UsageError(`--format: unknown format '${format}' (${allowed.join(', ')})`);
  return format;
}

async function prefetchCommand(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: { ...LAYOUT_FLAGS, 'no-kvm': { type: 'boolean', default: false } },
    strict: true,
  });
  if (values.help) {
    console.log(usage.prefetch);
    return;
  }
  const layout = layoutFromFlags(values);
  const bar = new ProgressBar('prefetch');
  let last = { done: 0n, total: 0n };
  const manager = await new GuestMemoryBuilder()
    .prefetchRam(true, {
      onProgress: (done, total) => {
        last = { done, total };
        bar.update(done, total);
      },
    })
    .build(layout);
  let partition: KvmPartition | RecordingPartition;
  let kind = 'KvmPartition';
  if (values['no-kvm']) {
    partition = new RecordingPartition();
    kind = 'RecordingPartition (--no-kvm: it records the prefetch calls, nothing is populated)';
  } else {
    try {
      partition = await KvmPartition.create();
    } catch (error) {
      if ((error as { code?: unknown }).code !== 'ERR_KVM_UNAVAILABLE') throw error;
      partition = new RecordingPartition();
      kind = `RecordingPartition (/dev/kvm unavailable: ${(error as Error).message})`;
    }
  }
  const start = process.hrtime.bigint();
  try {
    await manager.attachPartition(Vtl.Vtl0, partition);
    // Progress reports are fire-and-forget: let the last ones arrive.
    await new Promise((resolve) => setImmediate(resolve));
  } finally {
    bar.finish();
    await manager.close();
    partition.close();
  }
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  console.log(`prefetched ${formatSize(last.done)} of ${formatSize(last.total)} into ${kind} in ${ms.toFixed(0)} ms`);
}

async function planCommand(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: { ...LAYOUT_FLAGS, 'x86-legacy': { type: 'boolean', default: false }, change: { type: 'string', multiple: true }, format: { type: 'string' }, out: { type: 'string' } },
    strict: true,
  });
  if (values.help) {
    console.log(usage.plan);
    return;
  }
  const format = formatFlag(values.format, ['table', 'json', 'svg']);
  const layout = layoutFromFlags(values, ['changes']);
  try {
    const changes = [...(values.input ? changesFromFile(values.input) : []), ...(values.change ?? []).map((change) => parseChange(change))];
    const result = await runPlan(layout, changes, { x86Legacy: values['x86-legacy'] ?? false });
    emit(renderPlan(layout, result, format), values.out);
  } catch (error) {
    if (error instanceof PlanInputError) throw new UsageError(error.message);
    throw error;
  }
}

async function snapshotInfoCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    options: { verify: { type: 'boolean', default: false }, format: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
    allowPositionals: true,
    strict: true,
  });
  if (values.help) {
    console.log(usage['snapshot-info']);
    return 0;
  }
  const format = formatFlag(values.format, ['table', 'json']);
  if (positionals.length !== 1) throw new UsageError(`snapshot-info takes one snapshot directory, got ${positionals.length}`);
  const dir = positionals[0]!;
  if (!existsSync(dir)) throw new UsageError(`no such snapshot directory: ${dir}`);
  try {
    console.log(await snapshotInfo(dir, { verify: values.verify === true, format }));
    return 0;
  } catch (error) {
    // A damaged or unreadable snapshot is the answer, not a crash: one line naming the file (and the offset).
    if (!(error instanceof SnapshotError || error instanceof OsError)) throw error;
    process.stderr.write(`membacking: ${error.code}: ${error.message}\n`);
    return 1;
  }
}

function layoutCommand(args: string[]): void {
  const { values } = parseArgs({
    args,
    options: { ...LAYOUT_FLAGS, 'x86-legacy': { type: 'boolean', default: false }, format: { type: 'string' }, out: { type: 'string' } },
    strict: true,
  });
  if (values.help) {
    console.log(usage.layout);
    return;
  }
  const format = formatFlag(values.format, ['table', 'json', 'e820', 'svg']);
  // The regions --x86-legacy adds to the JSON are derived: reading that JSON back (with any
  // command) ignores them.
  const layout = layoutFromFlags(values);
  const legacy = values['x86-legacy'] === true;
  const rows = legacy ? x86LegacyRows(layout) : layoutRows(layout);
  let text: string;
  if (format === 'json') text = JSON.stringify(legacy ? x86LegacyJson(layout) : layout, null, 2);
  else if (format === 'e820') text = layoutE820(layout, rows);
  else if (format === 'svg') text = layoutSvg(layout, legacy ? { rows, title: `${layoutTitle(layout)}, x86 legacy RAM regions` } : {});
  else text = layoutTable(layout, rows);
  emit(text, values.out);
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined) {
    // Bad input: one line on stderr, as for every other.
    process.stderr.write(`membacking: a command is missing: run membacking --help for the commands\n`);
    return 2;
  }
  if (command === '--help' || command === '-h' || command === 'help') {
    // `membacking help plan` is `membacking plan --help`.
    const topic = rest[0];
    if (topic === undefined) {
      console.log(usage.main);
      return 0;
    }
    const text = topic === 'migrate-demo' ? usage.migrateDemo : Object.hasOwn(usage, topic) && topic !== 'main' && topic !== 'migrateDemo' ? usage[topic as keyof typeof usage] : undefined;
    if (text === undefined) throw new UsageError(`help: unknown command '${topic}' (see membacking --help)`);
    console.log(text);
    return 0;
  }
  if (command === '--version') {
    console.log(version);
    return 0;
  }
  if (command === 'layout') {
    layoutCommand(rest);
    return 0;
  }
  if (command === 'prefetch') {
    await prefetchCommand(rest);
    return 0;
  }
  if (command === 'plan') {
    await planCommand(rest);
    return 0;
  }
  if (command === 'snapshot-info') {
    return snapshotInfoCommand(rest);
  }
  if (command === 'migrate-demo') {
    const { values } = parseArgs({ args: rest, options: { help: { type: 'boolean', short: 'h' }, 'no-kvm': { type: 'boolean' }, child: { type: 'boolean' } }, strict: true });
    if (values.help) {
      console.log(usage.migrateDemo);
      return 0;
    }
    if (values.child) {
      // The child's end of the socket pair is descriptor 3, which the parent passes it.
      if (!isSocket(3)) throw new UsageError('migrate-demo --child is the destination process migrate-demo starts itself (it reads descriptor 3, its socket): run membacking migrate-demo');
      return migrateDemoChild((line) => console.log(line));
    }
    return migrateDemo((line) => console.log(line), __filename, { noKvm: values['no-kvm'] === true });
  }
  if (command === 'demo') {
    const { values } = parseArgs({ args: rest, options: { help: { type: 'boolean', short: 'h' }, 'no-kvm': { type: 'boolean' } }, strict: true });
    if (values.help) {
      console.log(usage.demo);
      return 0;
    }
    await runDemo((line) => console.log(line), { noKvm: values['no-kvm'] === true });
    return 0;
  }
  throw new UsageError(`unknown command '${command}' (see membacking --help)`);
}

/** Input errors: our UsageError, argument errors of the library, and parseArgs errors. */
function isInputError(error: unknown): boolean {
  if (error instanceof UsageError) return true;
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code !== 'string') return false;
  return (
    code.startsWith('ERR_PARSE_ARGS') ||
    code.startsWith('ERR_INVALID_ARG') ||
    code.startsWith('ERR_BAD_') ||
    code.startsWith('ERR_VTL2') ||
    ['ERR_INVALID_RAM_FOR_X86', 'ERR_INVALID_LAYOUT', 'ERR_INVALID_RAM_REGION', 'ERR_OVERLAP_ERROR', 'ERR_REGION_OUT_OF_RANGE', 'ERR_INVALID_INPUT', 'ERR_INVALID_MEMORY_RANGE'].includes(code)
  );
}

/**
 * A reader that goes away (`membacking demo | head -c 10`) is not a failure of the command:
 * stop quietly, as a program killed by SIGPIPE would, instead of dying on the unhandled 'error'
 * event of standard output with a stack trace.
 */
function stopQuietlyOnClosedPipe(stream: NodeJS.WriteStream): void {
  stream.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw error;
  });
}
stopQuietlyOnClosedPipe(process.stdout);
stopQuietlyOnClosedPipe(process.stderr);

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    const message = errorText(error);
    if (isInputError(error)) {
      // One line: some parseArgs messages span several ("… is ambiguous.\nDid you forget …").
      process.stderr.write(`membacking: ${message.split('\n').join(' ')}\n`);
      process.exitCode = 2;
    } else {
      process.stderr.write(`membacking: ${error instanceof Error && error.stack ? error.stack : message}\n`);
      process.exitCode = 1;
    }
  },
);
