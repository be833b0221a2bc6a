// Timing harness shared by the JavaScript benchmarks: calibrated loops, several runs, the median,
// and one JSON line per result in the format docs/design.md ("Benchmarks") fixes:
// {"name", "value", "unit", "baseline", "baselineValue", "ratio", "target"?, "met"?}.
'use strict';

/** Nanoseconds per call of `fn`, median of `runs` runs of a loop calibrated to ~`targetMs`. */
function measure(fn, { runs = 7, targetMs = 25 } = {}) {
  let iterations = 1;
  for (;;) {
    const start = process.hrtime.bigint();
    for (let i = 0; i < iterations; i++) fn(i);
    const elapsed = Number(process.hrtime.bigint() - start) / 1e6;
    if (elapsed >= targetMs / 4) {
      iterations = Math.max(1, Math.round((iterations * targetMs) / elapsed));
      break;
    }
    iterations *= 4;
  }
  for (let warm = 0; warm < 2; warm++) for (let i = 0; i < iterations; i++) fn(i);
  const samples = [];
  for (let run = 0; run < runs; run++) {
    const start = process.hrtime.bigint();
    for (let i = 0; i < iterations; i++) fn(i);
    samples.push(Number(process.hrtime.bigint() - start) / iterations);
  }
  samples.sort((a, b) => a - b);
  return samples[Math.floor(samples.length / 2)];
}

/**
 * Prints one result line. `kind` 'time': ratio = ours / baseline; 'rate': ratio = baseline /
 * ours (throughput). `target` like '<= 2' or '>= 0.9' adds `target` and `met`.
 */
function report({ name, value, unit, baseline, baselineValue, kind = 'time', target }) {
  const ratio = kind === 'time' ? value / baselineValue : baselineValue / value;
  const line = { name, value: round(value), unit, baseline, baselineValue: round(baselineValue), ratio: round(ratio) };
  if (target !== undefined) {
    const [op, bound] = target.split(/\s+/);
    line.target = target;
    line.met = op === '<=' ? ratio <= Number(bound) : ratio >= Number(bound);
  }
  console.log(JSON.stringify(line));
  return line;
}

function round(x) {
  return Number(x.toPrecision(4));
}

module.exports = { measure, report };
