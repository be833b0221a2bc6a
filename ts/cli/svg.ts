/**
 * An SVG memory map of a layout: RAM ranges, MMIO gaps, the VTL2 range and device windows,
 * stacked by address (lowest at the bottom, as firmware maps are drawn). The map after a plan
 * (`flatViewSvg`) draws the rows of the flat view itself, the same rows its table prints, so a
 * hidden RAM region is a hole in the drawing as it is in the table.
 *
 * Guest address spaces span 13 orders of magnitude (a 16 KiB PAM piece next to a terabyte of
 * RAM), so the height of a band grows with the logarithm of its size: huge ranges are
 * compressed, small ones stay visible, and every band is labelled with its kind, bounds and
 * size. Unused address space between ranges is drawn as a thin hatched band.
 */
import { formatSize, layoutRows, type MapRow } from './format';
import type { MemoryLayout } from '../layout';
import type { FlatEntry } from '../planner';
import { subtractRanges, type MemoryRange } from '../range';

/** A device window or any extra labelled range to draw on the map. */
export interface MapWindow {
  range: MemoryRange;
  name: string;
}

/** One horizontal band of the drawing. */
interface Band {
  start: bigint;
  end: bigint;
  kind: string;
  detail?: string | undefined;
}

const colors: Record<string, { fill: string; stroke: string }> = {
  RAM: { fill: '#cfe8cf', stroke: '#2e7d32' },
  MMIO: { fill: '#ffe0b2', stroke: '#ef6c00' },
  VTL2: { fill: '#e1d5f0', stroke: '#6a1b9a' },
  DEVICE: { fill: '#cfe0f5', stroke: '#1565c0' },
  HOLE: { fill: 'url(#hole)', stroke: '#c62828' },
  UNUSED: { fill: 'url(#unused)', stroke: '#9e9e9e' },
};

/** The label of each band kind inside the bar and in the legend. */
const kindLabels: Record<string, [string, string]> = {
  RAM: ['RAM', 'guest RAM'],
  MMIO: ['MMIO', 'MMIO gap'],
  VTL2: ['VTL2', 'VTL2 range'],
  DEVICE: ['DEVICE', 'device window'],
  HOLE: ['unmapped', 'RAM hidden (unmapped)'],
  UNUSED: ['unused', 'unused address space'],
};

const escape = (text: string): string => text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

/** Band height in pixels for a range of `bytes`: logarithmic, at least 18 px. */
function bandHeight(bytes: bigint): number {
  if (bytes <= 0n) return 18;
  const log2 = bytes.toString(2).length - 1;
  return Math.max(18, Math.round(6 + log2 * 3.2));
}

const hexLabel = (value: bigint): string => `0x${value.toString(16)}`;

/** `rows` (sorted by address) as bands, with the unused space between them filled in. */
function withUnused(rows: MapRow[]): { bands: Band[]; top: bigint } {
  const bands: Band[] = [];
  let cursor = 0n;
  for (const row of rows) {
    if (row.range.start > cursor) bands.push({ start: cursor, end: row.range.start, kind: 'UNUSED' });
    bands.push({ start: row.range.start, end: row.range.end, kind: row.kind, detail: row.detail });
    if (row.range.end > cursor) cursor = row.range.end;
  }
  return { bands, top: cursor };
}

/**
 * Renders the map of a layout (`rows`, by default `layoutRows`: the x86 legacy rows draw the
 * builder's RAM regions instead). Device windows (placed inside MMIO gaps) are drawn as insets on
 * the gap band that holds them and listed in the legend.
 */
export function layoutSvg(layout: MemoryLayout, options: { title?: string; windows?: MapWindow[]; rows?: MapRow[] } = {}): string {
  const { bands, top } = withUnused(options.rows ?? layoutRows(layout));
  return drawMap(bands, top, options.title ?? layoutTitle(layout), options.windows ?? []);
}

/** The default title of a layout's map: its RAM size, MMIO gaps and VTL2 range. */
export function layoutTitle(layout: MemoryLayout): string {
  return `Guest memory map: ${formatSize(layout.ramSize)} RAM, ${layout.mmio.length} MMIO gap${layout.mmio.length === 1 ? '' : 's'}${layout.vtl2Range ? ', VTL2' : ''}`;
}

/**
 * The kind and label of a flat-view row: RAM (the manager's `ram` regions), DEVICE (any other
 * region) or HOLE (nothing mapped: a hidden region), and its detail as the table shows it.
 */
export function flatViewRow(entry: FlatEntry): MapRow {
  if (entry.region === null) {
    const hidden = entry.hidden.map((h) => `${h.name}#${h.id}`).join(' ');
    return { range: entry.range, kind: 'HOLE', detail: hidden ? `unmapped, hides ${hidden}` : 'unmapped' };
  }
  const perm = `${entry.writable ? 'w' : '-'}${entry.executable ? 'x' : '-'}`;
  return { range: entry.range, kind: entry.region.name === 'ram' ? 'RAM' : 'DEVICE', detail: `${entry.region.name}#${entry.region.id} ${perm}` };
}

/**
 * The map of a flat view: one band per row of the flat view (what its table prints, holes
 * included), and the layout's MMIO gaps and VTL2 range where the flat view has nothing.
 */
export function flatViewSvg(layout: MemoryLayout, view: FlatEntry[], options: { title?: string } = {}): string {
  const rows = view.map(flatViewRow);
  const covered = view.map((entry) => entry.range);
  for (const row of layoutRows(layout)) {
    if (row.kind === 'RAM') continue;
    for (const rest of subtractRanges([row.range], covered)) rows.push({ range: rest, kind: row.kind, detail: row.detail });
  }
  rows.sort((a, b) => (a.range.start < b.range.start ? -1 : a.range.start > b.range.start ? 1 : 0));
  const { bands, top } = withUnused(rows);
  return drawMap(bands, top, options.title ?? 'Guest memory map: the flat view', []);
}

/** Draws `bands` (sorted by address, `top` the highest end) with a title, legend and windows. */
function drawMap(bands: Band[], top: bigint, title: string, windows: MapWindow[]): string {
  const width = 760;
  const barX = 190;
  const barWidth = 170;
  const barTop = 56;
  const heights = bands.map((b) => bandHeight(b.end - b.start));
  const barHeight = heights.reduce((a, b) => a + b, 0);
  const legendTop = barTop + barHeight + 30;
  const height = legendTop + 26 + Math.max(windows.length, 1) * 18 + 20;
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="DejaVu Sans, Arial, sans-serif" font-size="12">`);
  out.push(
    '<defs><pattern id="unused" width="8" height="8" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="8" height="8" fill="#f5f5f5"/><line x1="0" y1="0" x2="0" y2="8" stroke="#d0d0d0" stroke-width="3"/></pattern>' +
      '<pattern id="hole" width="8" height="8" patternUnits="userSpaceOnUse" patternTransform="rotate(-45)"><rect width="8" height="8" fill="#ffebee"/><line x1="0" y1="0" x2="0" y2="8" stroke="#ef9a9a" stroke-width="3"/></pattern></defs>',
  );
  out.push(`<rect width="${width}" height="${height}" fill="#ffffff"/>`);
  out.push(`<text x="20" y="28" font-size="16" font-weight="bold" class="title">${escape(title)}</text>`);
  out.push(`<text x="20" y="46" fill="#616161" class="note">band heights grow with log2(size): large ranges are compressed, small ones stay visible</text>`);
  // Draw from the top (highest address) down.
  let y = barTop;
  for (let i = bands.length - 1; i >= 0; i--) {
    const band = bands[i]!;
    const h = heights[i]!;
    const color = colors[band.kind] ?? colors.RAM!;
    const { start, end } = band;
    out.push(`<g class="band" data-kind="${band.kind}" data-start="${hexLabel(start)}" data-end="${hexLabel(end)}">`);
    out.push(`<rect x="${barX}" y="${y}" width="${barWidth}" height="${h}" fill="${color.fill}" stroke="${color.stroke}" stroke-width="1"/>`);
    const label = kindLabels[band.kind]?.[0] ?? band.kind;
    out.push(`<text x="${barX + 8}" y="${y + h / 2 + 4}" class="kind" fill="${band.kind === 'UNUSED' ? '#757575' : color.stroke}" font-weight="bold">${escape(label)}</text>`);
    out.push(`<text x="${barX + barWidth + 12}" y="${y + h / 2 + 4}" class="label">${escape(`${hexLabel(start)}-${hexLabel(end)}  (${formatSize(end - start)})${band.detail && band.detail !== 'vnode 0' ? `  ${band.detail}` : ''}`)}</text>`);
    out.push(`<text x="${barX - 8}" y="${y + h}" text-anchor="end" class="address" fill="#424242">${escape(hexLabel(start))}</text>`);
    // Device windows inside this band.
    for (const window of windows) {
      if (window.range.start >= start && window.range.end <= end && band.kind !== 'UNUSED') {
        const inset = Math.max(6, Math.min(h - 4, bandHeight(window.range.end - window.range.start) / 2));
        out.push(`<rect class="window" x="${barX + barWidth - 46}" y="${y + (h - inset) / 2}" width="40" height="${inset}" fill="${colors.DEVICE!.fill}" stroke="${colors.DEVICE!.stroke}"/>`);
      }
    }
    out.push('</g>');
    y += h;
  }
  out.push(`<text x="${barX - 8}" y="${barTop + 4}" text-anchor="end" class="address" fill="#424242">${escape(hexLabel(top))}</text>`);
  // Legend: the kinds drawn, in a fixed order.
  let ly = legendTop;
  const drawn = new Set(bands.map((band) => band.kind));
  const legend = Object.entries(kindLabels).filter(([kind]) => drawn.has(kind) || (kind === 'DEVICE' && windows.length > 0) || ['RAM', 'MMIO'].includes(kind));
  legend.forEach(([kind, [, text]], i) => {
    const x = 20 + i * 125;
    out.push(`<rect x="${x}" y="${ly - 11}" width="14" height="14" fill="${colors[kind]!.fill}" stroke="${colors[kind]!.stroke}"/>`);
    out.push(`<text x="${x + 20}" y="${ly}" class="legend">${escape(text)}</text>`);
  });
  ly += 26;
  for (const window of windows) {
    out.push(`<text x="20" y="${ly}" class="device">${escape(`device window ${window.name}: ${hexLabel(window.range.start)}-${hexLabel(window.range.end)} (${formatSize(window.range.end - window.range.start)})`)}</text>`);
    ly += 18;
  }
  out.push('</svg>');
  return out.join('\n');
}
