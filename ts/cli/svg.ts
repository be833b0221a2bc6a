/**
 * An SVG memory map of a layout: RAM ranges, MMIO gaps, the VTL2 range and device windows,
 * stacked by address (lowest at the bottom, as firmware maps are drawn).
 *
 * Guest address spaces span 13 orders of magnitude (a 16 KiB PAM piece next to a terabyte of
 * RAM), so the height of a band grows with the logarithm of its size: huge ranges are
 * compressed, small ones stay visible, and every band is labelled with its kind, bounds and
 * size. Unused address space between ranges is drawn as a thin hatched band.
 */
import { formatSize, layoutRows, type MapRow } from './format';
import type { MemoryLayout } from '../layout';
import type { MemoryRange } from '../range';

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
  UNUSED: { fill: 'url(#unused)', stroke: '#9e9e9e' },
};

const escape = (text: string): string => text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

/** Band height in pixels for a range of `bytes`: logarithmic, at least 18 px. */
function bandHeight(bytes: bigint): number {
  if (bytes <= 0n) return 18;
  const log2 = bytes.toString(2).length - 1;
  return Math.max(18, Math.round(6 + log2 * 3.2));
}

const hexLabel = (value: bigint): string => `0x${value.toString(16)}`;

/**
 * Renders the map. Device windows (placed inside MMIO gaps) are drawn as insets on the gap band
 * that holds them and listed in the legend.
 */
export function layoutSvg(layout: MemoryLayout, options: { title?: string; windows?: MapWindow[] } = {}): string {
  const rows: MapRow[] = layoutRows(layout);
  const windows = options.windows ?? [];
  // Fill the unused space between consecutive rows.
  const bands: Band[] = [];
  let cursor = 0n;
  for (const row of rows) {
    if (row.range.start > cursor) bands.push({ start: cursor, end: row.range.start, kind: 'UNUSED' });
    bands.push({ start: row.range.start, end: row.range.end, kind: row.kind, detail: row.detail });
    if (row.range.end > cursor) cursor = row.range.end;
  }
  const width = 760;
  const barX = 190;
  const barWidth = 170;
  const top = 56;
  const heights = bands.map((b) => bandHeight(b.end - b.start));
  const barHeight = heights.reduce((a, b) => a + b, 0);
  const legendTop = top + barHeight + 30;
  const height = legendTop + 26 + Math.max(windows.length, 1) * 18 + 20;
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="DejaVu Sans, Arial, sans-serif" font-size="12">`);
  out.push('<defs><pattern id="unused" width="8" height="8" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="8" height="8" fill="#f5f5f5"/><line x1="0" y1="0" x2="0" y2="8" stroke="#d0d0d0" stroke-width="3"/></pattern></defs>');
  out.push(`<rect width="${width}" height="${height}" fill="#ffffff"/>`);
  const title = options.title ?? `Guest memory map: ${formatSize(layout.ramSize)} RAM, ${layout.mmio.length} MMIO gap${layout.mmio.length === 1 ? '' : 's'}${layout.vtl2Range ? ', VTL2' : ''}`;
  out.push(`<text x="20" y="28" font-size="16" font-weight="bold" class="title">${escape(title)}</text>`);
  out.push(`<text x="20" y="46" fill="#616161" class="note">band heights grow with log2(size): large ranges are compressed, small ones stay visible</text>`);
  // Draw from the top (highest address) down.
  let y = top;
  for (let i = bands.length - 1; i >= 0; i--) {
    const band = bands[i]!;
    const h = heights[i]!;
    const color = colors[band.kind] ?? colors.RAM!;
    const { start, end } = band;
    out.push(`<g class="band" data-kind="${band.kind}" data-start="${hexLabel(start)}" data-end="${hexLabel(end)}">`);
    out.push(`<rect x="${barX}" y="${y}" width="${barWidth}" height="${h}" fill="${color.fill}" stroke="${color.stroke}" stroke-width="1"/>`);
    const label = band.kind === 'UNUSED' ? 'unused' : band.kind;
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
  out.push(`<text x="${barX - 8}" y="${top + 4}" text-anchor="end" class="address" fill="#424242">${escape(hexLabel(cursor))}</text>`);
  // Legend.
  let ly = legendTop;
  const legend: Array<[string, string]> = [
    ['RAM', 'guest RAM'],
    ['MMIO', 'MMIO gap'],
    ['VTL2', 'VTL2 range'],
    ['DEVICE', 'device window'],
    ['UNUSED', 'unused address space'],
  ];
  legend.forEach(([kind, text], i) => {
    const x = 20 + i * 145;
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
