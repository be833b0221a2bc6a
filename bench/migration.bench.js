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
// Run with `node bench/run.js migration` (after `npm run build`). Lines starting with `#` are
// notes.
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
    if (!a.write(chunk)) await new Promise((resolve) => a.once('drain', resolve));
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

async function main() {
  const core = coreBenchmark();
  await fromJs(core);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
