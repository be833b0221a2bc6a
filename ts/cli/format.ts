/**
 * Text forms of sizes, ranges and layouts for the CLI and the demo: size parsing with K/M/G/T
 * suffixes, human-readable sizes, and the table and e820-style renderings of a layout.
 */
import { invalidArgValue } from '../errors';
import type { MemoryLayout } from '../layout';
import { MemoryRange } from '../range';
import { hex } from '../u64';

const suffixes: Record<string, bigint> = { K: 1n << 10n, M: 1n << 20n, G: 1n << 30n, T: 1n << 40n };

/**
 * Parses a size or address: decimal or `0x` hex bytes, or a number with a K/M/G/T suffix
 * (powers of 1024, optional `B`/`iB`), e.g. `4G`, `1.5G`, `0x100000`, `512MiB`.
 * @throws RangeError `ERR_INVALID_ARG_VALUE` for anything else.
 */
export function parseSize(text: string): bigint {
  const trimmed = text.trim();
  if (/^0x[0-9a-f]+$/i.test(trimmed)) return BigInt(trimmed);
  if (/^[0-9]+$/.test(trimmed)) return BigInt(trimmed);
  const match = /^([0-9]+)(?:\.([0-9]+))?\s*([KMGT])(?:i?B)?$/i.exec(trimmed);
  if (!match) throw invalidArgValue(`not a size: '${text}' (use bytes, 0x-hex, or a number with K, M, G or T)`);
  const unit = suffixes[match[3]!.toUpperCase()]!;
  const whole = BigInt(match[1]!) * unit;
  const fraction = match[2] ?? '';
  if (fraction === '') return whole;
  const scale = 10n ** BigInt(fraction.length);
  const part = BigInt(fraction) * unit;
  if (part % scale !== 0n) throw invalidArgValue(`size '${text}' is not a whole number of bytes`);
  return whole + part / scale;
}

/** Parses an address: a size (as `parseSize`) or a sum of sizes such as `8G+64M`. */
export function parseAddress(text: string): bigint {
  const terms = text.split('+');
  if (terms.some((term) => term.trim() === '')) throw invalidArgValue(`not an address: '${text}' (use a size, or a sum such as 8G+64M)`);
  return terms.reduce((sum, term) => sum + parseSize(term), 0n);
}

/**
 * Parses `START-END` into a range: START and END are addresses (`parseAddress`), so END may be
 * written `START+SIZE` (`8G-8G+64M`). RangeError when malformed, unaligned or reversed.
 */
export function parseRange(text: string): MemoryRange {
  const parts = text.split('-');
  if (parts.length !== 2) throw invalidArgValue(`not a range: '${text}' (use START-END, where END may be START+SIZE: 3G-4G, 8G-8G+64M)`);
  const [start, end] = [parseAddress(parts[0]!), parseAddress(parts[1]!)];
  if (start > end) throw invalidArgValue(`range '${text}' ends (0x${end.toString(16)}) before it starts (0x${start.toString(16)})`);
  return MemoryRange.new(start, end);
}

/**
 * A byte count for people: exact in the largest unit that divides it with fewer than 10,000 of
 * them (`4 GiB`, `640 KiB`, `3583 MiB`), else two decimals of the largest unit (`1020.51 GiB`).
 */
export function formatSize(bytes: bigint): string {
  const units: Array<[string, bigint]> = [
    ['TiB', 1n << 40n],
    ['GiB', 1n << 30n],
    ['MiB', 1n << 20n],
    ['KiB', 1n << 10n],
    ['B', 1n],
  ];
  for (const [name, unit] of units) {
    if (bytes >= unit && bytes % unit === 0n && bytes / unit < 10000n) return `${bytes / unit} ${name}`;
  }
  for (const [name, unit] of units) {
    if (bytes >= unit) return `${(Number(bytes) / Number(unit)).toFixed(2)} ${name}`;
  }
  return `${bytes} B`;
}

/** One row of a memory map. */
export interface MapRow {
  range: MemoryRange;
  kind: string;
  detail?: string;
}

/** The rows of a layout's map, in address order: RAM, MMIO gaps and the VTL2 range. */
export function layoutRows(layout: MemoryLayout): MapRow[] {
  const rows: MapRow[] = [
    ...layout.ram.map(({ range, vnode }) => ({ range, kind: 'RAM', detail: `vnode ${vnode}` })),
    ...layout.mmio.map((range) => ({ range, kind: 'MMIO' })),
  ];
  if (layout.vtl2Range) rows.push({ range: layout.vtl2Range, kind: 'VTL2' });
  return rows.sort((a, b) => MemoryRange.compare(a.range, b.range));
}

/** Pads the columns of `rows` to a plain-text table. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

const pad16 = (value: bigint): string => `0x${value.toString(16).padStart(16, '0')}`;

/** The layout as a table of ranges followed by its summary figures. */
export function layoutTable(layout: MemoryLayout): string {
  const rows = layoutRows(layout).map((r) => [r.kind, pad16(r.range.start), pad16(r.range.end), formatSize(r.range.len), r.detail ?? '']);
  const summary: Array<[string, bigint | null]> = [
    ['ram size', layout.ramSize],
    ['end of ram', layout.endOfRam],
    ['ram below 4 GiB', layout.ramBelow4gb],
    ['ram above 4 GiB', layout.ramAbove4gb],
    ['ram above high mmio', layout.ramAboveHighMmio],
    ['max ram below 4 GiB', layout.maxRamBelow4gb],
    ['end of ram or mmio', layout.mmio.length > 0 ? layout.endOfRamOrMmio : null],
  ];
  const figures = summary.map(([name, value]) => `${name.padEnd(20)} ${value === null ? '-' : `${hex(value)} (${formatSize(value)})`}`);
  return `${table(['kind', 'start', 'end', 'size', ''], rows)}\n\n${figures.join('\n')}`;
}

/** The layout as an e820-style map: RAM is usable, MMIO gaps and VTL2 reserved. */
export function layoutE820(layout: MemoryLayout): string {
  return layoutRows(layout)
    .map((r) => {
      const type = r.kind === 'RAM' ? 'usable' : 'reserved';
      const end = r.range.end === 0n ? 0n : r.range.end - 1n;
      return `BIOS-e820: [mem ${pad16(r.range.start)}-${pad16(end)}] ${type}${r.kind === 'RAM' ? '' : ` (${r.kind})`}`;
    })
    .join('\n');
}
