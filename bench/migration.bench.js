// Live migration (issue 12). The core's benchmark (`cargo bench -p membacking --bench
// migration`: the total time of an idle 1 GiB guest with 256 MiB touched against the same bytes
// raw through the same socketpair, and the downtime of a KVM guest dirtying ~1 MiB every 10 ms
// against sending the final round's bytes raw; docs/migration.md explains the figures) is run
// and its JSON lines forwarded.
//
// Then the same total time through the JavaScript API: `manager.migrate` and
// `GuestMemoryBuilder.migrateFrom` at the two ends of a Unix socket pair made by `net`, every
// byte passing through JavaScript streams, against sending the same 256 MiB raw through such a
// socket pair from JavaScript (target <= 1.3, the issue's), and against the core's own figure of
// the same migration over a socketpair in this run (what the binding adds).
//
// And the downtime through the JavaScript API: a JavaScript writer dirties 1 MiB every 10 ms
// (cycling through 32 MiB) while the guest migrates over such a socket pair; `pause` stops it.
// The downtime the source reports (pause resolved -> completion acknowledged) against sending
// the final round's page bytes raw through a fresh socket pair from JavaScript in the same run
// (target <= 2, the issue's).
//
// Before each measurement, ours and the floors alike, a child process touches and frees 1 GiB,
// so that no figure pays for memory the host handed back to the outer hypervisor (freed
// memory goes back to it, and the next first touch of such memory is slow).
//
// Run with `node bench/run.js migration` (after `npm run build`; `MIGRATION_BENCH=js-downtime`
// runs only the JavaScript downtime). Lines starting with `#` are notes.
'use strict';
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const mb = require('../dist');
const { report } = require('./harness');
const { socketPair } = require('../__test__/helpers/migration');

const { GuestMemoryBuilder, MemoryLayout, range, GiB, MiB } = mb;
const note = (text) => console.log(`# ${text}`);
const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
const ms = (start) => Number(process.hrtime.bigint() - start) / 1e6;
const TOUCHED = 256n * MiB;
const RUNS = 7;

/** Touches and frees 1 GiB in a child process (freed for certain when it exits). */
function warmHostMemory() {
  const child = spawnSync(process.execPath, ['-e', 'Buffer.alloc(1 << 30, 1)'], { stdio: 'ignore' });
  if (child.status !== 0) throw new Error(`the memory warm-up child exited with ${child.status}`);
}

/** Runs the core's migration benchmark, forwards its result lines, and returns them. */
function coreBenchmark() {
  const root = path.join(__dirname, '..');
  const child = spawnSync('cargo', ['bench', '--quiet', '-p', 'membacking', '--bench', 'migration'], { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 1 << 26 });
  if (child.error) throw new Error(`cargo bench could not be run: ${child.error.message}`);
  const lines = [];
  for (const line of child.stdout.split('\n')) {
    if (!line.startsWith('{')) continue;
    console.log(line);
    lines.push(JSON.parse(line));
  }
  for (const line of child.stderr.split('\n')) if (/skipped|SKIPPED/.test(line)) note(line.trim());
  if (child.status !== 0) throw new Error(`cargo bench exited with ${child.status}: ${child.stderr.slice(-2000)}`);
  return lines;
}

/** Milliseconds to send `bytes` raw from `a` to `b` in 1 MiB writes, honouring backpressure. */
async function rawMs(a, b, bytes) {
  const chunk = Buffer.alloc(Number(MiB), 0x5a);
  let received = 0;
  const done = new Promise((resolve) => {
    b.on('data', (data) => {
      received += data.length;
      if (received >= Number(bytes)) resolve();
    });
  });
  const start = process.hrtime.bigint();
  for (let sent = 0n; sent < bytes; sent += MiB) {
    const left = bytes - sent;
    if (!a.write(left < MiB ? chunk.subarray(0, Number(left)) : chunk)) await new Promise((resolve) => a.once('drain', resolve));
  }
  await done;
  return ms(start);
}

/** Milliseconds of a migration of `source` from `a` to `b`, until both ends resolved. */
async function migrationMs(source, a, b) {
  const start = process.hrtime.bigint();
  const [, destination] = await Promise.all([source.migrate(a, { pause: () => undefined }), GuestMemoryBuilder.migrateFrom(b)]);
  const elapsed = ms(start);
  await destination.close();
  return elapsed;
}

async function fromJs(core) {
  const source = await new GuestMemoryBuilder().build(MemoryLayout.new(GiB, [range(3n * GiB, 4n * GiB)]));
  try {
    const memory = await source.client().guestMemory();
    memory.fillAt(128n * MiB, 0x5a, TOUCHED);
    memory.close();
    const times = { migration: [], raw: [] };
    // One warm-up of each, then interleaved runs in alternating order.
    for (let run = -1; run < RUNS; run++) {
      const order = run % 2 === 0 ? ['migration', 'raw'] : ['raw', 'migration'];
      for (const which of order) {
        warmHostMemory();
        const [a, b] = await socketPair();
        const elapsed = which === 'raw' ? await rawMs(a, b, TOUCHED) : await migrationMs(source, a, b);
        a.destroy();
        b.destroy();
        if (run >= 0) times[which].push(elapsed);
      }
    }
    const [migration, raw] = [median(times.migration), median(times.raw)];
    note(`JavaScript migration of 256 MiB: ${times.migration.map((t) => t.toFixed(0)).join(', ')} ms; raw: ${times.raw.map((t) => t.toFixed(0)).join(', ')} ms`);
    report({ name: 'migration total time through JS streams, idle 1 GiB guest with 256 MiB touched', value: migration, unit: 'ms', baseline: 'the same 256 MiB raw through a net socket pair from JS (same run)', baselineValue: raw, target: '<= 1.3' });
    const coreTotal = core.find((line) => line.name === 'migration_total_idle_1gib_256mib');
    if (coreTotal !== undefined) {
      report({ name: 'migration total time through JS streams vs the core over a socketpair', value: migration, unit: 'ms', baseline: 'the core migration of the same guest over a Unix socketpair (same run, its median)', baselineValue: coreTotal.value });
    } else {
      note('the core benchmark reported no total-time line: the JS-vs-core ratio is not printed');
    }
  } finally {
    await source.close();
  }
}

const DIRTY_BASE = 16n * MiB;

/**
 * Dirties 1 MiB every 10 ms from JavaScript, cycling through 32 MiB at `DIRTY_BASE`, until
 * `stop()` (the migration's pause).
 */
function startWriter(memory) {
  let pass = 0;
  const timer = setInterval(() => {
    memory.fillAt(DIRTY_BASE + BigInt(pass % 32) * MiB, (pass % 255) + 1, MiB);
    pass++;
  }, 10);
  return { stop: () => clearInterval(timer) };
}

async function downtimeFromJs() {
  const source = await new GuestMemoryBuilder().build(MemoryLayout.new(GiB, [range(3n * GiB, 4n * GiB)]));
  try {
    const memory = await source.client().guestMemory();
    memory.fillAt(128n * MiB, 0x5a, 64n * MiB);
    const runs = { downtime: [], raw: [], remainder: [], rounds: [] };
    for (let run = -1; run < RUNS; run++) {
      warmHostMemory();
      const writer = startWriter(memory);
      // Let the writer run a while first, as a running guest would.
      await new Promise((resolve) => setTimeout(resolve, 50));
      const [a, b] = await socketPair();
      const [info, destination] = await Promise.all([source.migrate(a, { pause: () => writer.stop() }), GuestMemoryBuilder.migrateFrom(b)]);
      await destination.close();
      a.destroy();
      b.destroy();
      const remainder = info.bytesPerRound[info.bytesPerRound.length - 1];
      const bytes = remainder > 4096n ? remainder : 4096n;
      warmHostMemory();
      const [c, d] = await socketPair();
      const raw = await rawMs(c, d, bytes);
      c.destroy();
      d.destroy();
      if (run < 0) continue;
      runs.downtime.push(info.downtimeMs);
      runs.raw.push(raw);
      runs.remainder.push(Number(remainder));
      runs.rounds.push(info.rounds);
    }
    memory.close();
    const ratios = runs.downtime.map((d, i) => d / runs.raw[i]);
    note(
      `JavaScript downtime: ${runs.downtime.map((t) => t.toFixed(1)).join(', ')} ms; raw remainder: ${runs.raw.map((t) => t.toFixed(1)).join(', ')} ms; remainders ${runs.remainder.map((b) => (b / Number(MiB)).toFixed(1)).join(', ')} MiB; rounds ${runs.rounds.join(', ')}; per-run ratios ${ratios.map((r) => r.toFixed(2)).join(', ')}`,
    );
    const line = {
      name: 'migration downtime through JS streams, JS writer dirtying 1 MiB every 10 ms',
      value: median(runs.downtime),
      unit: 'ms',
      baseline: "the final round's page bytes raw through a net socket pair from JS (same run)",
      baselineValue: median(runs.raw),
    };
    // The ratio is the median of the per-run ratios (each run's remainder has its own floor).
    const ratio = median(ratios);
    console.log(JSON.stringify({ ...roundAll(line), ratio: Number(ratio.toFixed(3)), target: '<= 2', met: ratio <= 2 }));
  } finally {
    await source.close();
  }
}

const roundAll = (line) => ({ ...line, value: Number(line.value.toFixed(3)), baselineValue: Number(line.baselineValue.toFixed(3)) });

async function main() {
  const only = process.env.MIGRATION_BENCH;
  const core = only === 'js-downtime' ? [] : coreBenchmark();
  if (only !== 'js-downtime') await fromJs(core);
  await downtimeFromJs();
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
