/**
 * Text forms of sizes, ranges and layouts for the CLI and the demo: size parsing with K/M/G/T
 * suffixes, human-readable sizes, and the table and e820-style renderings of a layout (its RAM
 * ranges, or with x86 legacy support the RAM regions a guest-memory builder makes of them).
 */
import { invalidArgValue } from '../errors';
import { x86LegacyRamRanges, type MemoryLayout } from '../layout';
import { native } from '../native';
import { MemoryRange, nativeJson } from '../range';
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
  /** The offset of the region's backing in the guest-RAM file (x86 legacy rows only). */
  fileOffset?: bigint;
  /** The named legacy area of the first megabyte the row is (x86 legacy rows only). */
  area?: string;
  /** False for RAM that firmware reports as reserved (the legacy areas above 640 KiB). */
  usable?: boolean;
}

/** The rows of a layout's map, in address order: RAM, MMIO gaps and the VTL2 range. */
export function layoutRows(layout: MemoryLayout): MapRow[] {
  const rows: MapRow[] = [
    ...layout.ram.map(({ range, vnode }) => ({ range, kind: 'RAM', detail: `vnode ${vnode}` })),
    ...layout.mmio.map((range) => ({ range, kind: 'MMIO' })),
  ];
  if (layout.vtl2Range) rows.push({ range: layout.vtl2Range, kind: 'VTL2' });
  return sortRows(rows);
}

const sortRows = (rows: MapRow[]): MapRow[] => rows.sort((a, b) => MemoryRange.compare(a.range, b.range));

/** A named area of the first megabyte that x86 legacy support makes a RAM region of its own. */
interface X86LegacyArea {
  name: string;
  range: MemoryRange;
  usable: boolean;
}

/**
 * The rows of a layout's map with x86 legacy support: the RAM regions a guest-memory builder
 * makes (`x86LegacyRamRanges`), each with its file offset and vnode, the first megabyte's
 * pieces named (VGA window, PAM1 low, …, system BIOS); then the MMIO gaps.
 * @throws MemoryLayoutError `ERR_INVALID_RAM_FOR_X86` when RAM does not start at 0 or is
 * smaller than 1 MiB.
 */
export function x86LegacyRows(layout: MemoryLayout): MapRow[] {
  const areas = nativeJson<X86LegacyArea[]>(native.x86LegacyAreas());
  // The regions come in address order, as the RAM ranges do: one walk finds each region's
  // range (a search from the start for every region took seconds with thousands of gaps).
  const ram = layout.ram;
  let next = 0;
  const rows: MapRow[] = x86LegacyRamRanges(layout).map(({ range, fileOffset }) => {
    if (layout.vtl2Range?.equals(range)) return { range, kind: 'VTL2', fileOffset };
    const area = areas.find((candidate) => candidate.range.equals(range));
    while (next < ram.length && ram[next]!.range.end <= range.start) next++;
    const vnode = (ram[next]?.range.contains(range) ? ram[next]?.vnode : undefined) ?? 0;
    if (!area) return { range, kind: 'RAM', detail: `vnode ${vnode}`, fileOffset };
    return { range, kind: 'RAM', detail: `vnode ${vnode}, ${area.name}`, fileOffset, area: area.name, usable: area.usable };
  });
  for (const range of layout.mmio) rows.push({ range, kind: 'MMIO' });
  return sortRows(rows);
}

/** `layout --format json --x86-legacy`: the layout's JSON plus its RAM regions, named. */
export function x86LegacyJson(layout: MemoryLayout): object {
  const regions = x86LegacyRows(layout)
    .filter((row) => row.fileOffset !== undefined)
    .map((row) => ({ range: row.range, fileOffset: hex(row.fileOffset ?? 0n), kind: row.kind, ...(row.area === undefined ? {} : { area: row.area }) }));
  return { ...layout.toJSON(), x86LegacyRam: regions };
}

/** Pads the columns of `rows` to a plain-text table. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => rows.reduce((width, r) => Math.max(width, (r[i] ?? '').length), h.length));
  const line = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

const pad16 = (value: bigint): string => `0x${value.toString(16).padStart(16, '0')}`;

/**
 * The layout as a table of ranges (`rows`, by default its RAM ranges, MMIO gaps and VTL2 range;
 * with a file-offset column when the rows have one) followed by its summary figures.
 */
export function layoutTable(layout: MemoryLayout, rows: MapRow[] = layoutRows(layout)): string {
  const offsets = rows.some((r) => r.fileOffset !== undefined);
  const cells = rows.map((r) => [
    r.kind,
    pad16(r.range.start),
    pad16(r.range.end),
    formatSize(r.range.len),
    ...(offsets ? [r.fileOffset === undefined ? '' : hex(r.fileOffset)] : []),
    r.detail ?? '',
  ]);
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
  const header = ['kind', 'start', 'end', 'size', ...(offsets ? ['file offset'] : []), 'detail'];
  return `${table(header, cells)}\n\n${figures.join('\n')}`;
}

/**
 * The layout as an e820-style map (`rows` as for `layoutTable`): RAM is usable except where a
 * row says otherwise (the legacy areas above 640 KiB, named), MMIO gaps and VTL2 reserved.
 */
export function layoutE820(layout: MemoryLayout, rows: MapRow[] = layoutRows(layout)): string {
  return rows
    .map((r) => {
      const usable = r.kind === 'RAM' && r.usable !== false;
      const end = r.range.end === 0n ? 0n : r.range.end - 1n;
      const note = usable ? '' : ` (${r.area ?? r.kind})`;
      return `BIOS-e820: [mem ${pad16(r.range.start)}-${pad16(end)}] ${usable ? 'usable' : 'reserved'}${note}`;
    })
    .join('\n');
}
