/**
 * `membacking snapshot-info DIR [--verify] [--format table|json]`: what a snapshot directory
 * holds — its id and chain of bases, the layout and build options, the RAM regions with their
 * visibility, the device windows, the extents and sizes — read with `readSnapshot` (every
 * manifest and index checked), or with `verifySnapshot` (every page of every snapshot of the
 * chain checked against its CRC-32C too).
 */
import { formatSize, table } from './format';
import { ProgressBar } from './progress';
import { readSnapshot, verifySnapshot, type SnapshotChain, type SnapshotManifest } from '../snapshot';
import { hex } from '../u64';

export const snapshotInfoUsage = `usage: membacking snapshot-info DIR [--verify] [--format table|json]

Prints what the snapshot in DIR holds: its id and its chain of bases (newest first), the
layout and build options it was taken with, the RAM regions with their visibility, the device
windows (placement and mappings: their data is not in a snapshot), the extents and the sizes of
its files. Every manifest and extent index of the chain is checked against its checksum.
--verify: also check every page of every snapshot of the chain against its checksum (a progress
  bar is drawn on stderr when it is a terminal); a corrupt page is reported with its file and
  offset and the exit code is 1.
--format json: the chain as JSON (addresses and sizes as "0x…" strings).
Exit codes: 0 the snapshot is readable (and, with --verify, intact); 2 bad input (no such
directory, an unknown flag); 1 a corrupt or unreadable snapshot.`;

/** The snapshot's description in `format`; with `verify`, after checking every page. */
export async function snapshotInfo(dir: string, options: { verify: boolean; format: string }): Promise<string> {
  let chain: SnapshotChain;
  if (options.verify) {
    const bar = new ProgressBar('verify');
    try {
      chain = await verifySnapshot(dir, { onProgress: (done, total) => bar.update(done, total) });
    } finally {
      bar.finish();
    }
  } else {
    chain = await readSnapshot(dir);
  }
  return options.format === 'json' ? JSON.stringify(chain, jsonValue, 2) : describe(chain);
}

/** JSON.stringify's replacer: bigints as `0x…` strings (ranges have their own toJSON). */
function jsonValue(_key: string, value: unknown): unknown {
  return typeof value === 'bigint' ? hex(value) : value;
}

function describe({ chain, pages }: SnapshotChain): string {
  const [top, ...bases] = chain;
  if (top === undefined) return '';
  const m = top.manifest;
  const lines: string[] = [];
  lines.push(`snapshot ${top.dir}`);
  lines.push(`  id ${m.id}, taken ${new Date(m.createdUnixMs).toISOString()}, ${m.base === null ? 'full' : `incremental on ${m.base.path}`}${m.trackingSession === null ? '' : ', dirty tracking was on'}`);
  lines.push('');
  lines.push(`chain (${chain.length} snapshot${chain.length === 1 ? '' : 's'}, newest first; restoring reads each page from the newest that has it):`);
  lines.push(
    indent(
      table(
        ['#', 'directory', 'id', 'data', 'zero pages', 'extents', 'files'],
        chain.map(({ dir, manifest }, i) => [String(i), dir, manifest.id.slice(0, 12), formatSize(manifest.memoryBytes), String(manifest.zeroPages), String(manifest.extents), formatSize(files(manifest))]),
      ),
    ),
  );
  lines.push('');
  lines.push(`layout: RAM ${m.layout.ram.map((r) => `${r.range} (vnode ${r.vnode})`).join(', ')}; MMIO ${m.layout.mmio.map(String).join(', ') || 'none'}${m.layout.vtl2Range === null ? '' : `; VTL2 ${m.layout.vtl2Range}`}`);
  lines.push(`options: ${Object.entries(m.options).map(([k, v]) => `${k} ${typeof v === 'bigint' ? hex(v) : String(v)}`).join(', ')}`);
  lines.push('');
  lines.push(`RAM regions (${formatSize(m.ramSize)} of RAM):`);
  lines.push(indent(table(['range', 'size', 'file offset', 'visibility'], m.ramRegions.map((r) => [String(r.range), formatSize(r.range.len), hex(r.fileOffset), r.visibility]))));
  lines.push('');
  if (m.deviceWindows.length === 0) {
    lines.push('device windows: none');
  } else {
    lines.push('device windows (placement and mappings; their data is the device\'s, not in the snapshot):');
    const rows = m.deviceWindows.flatMap((w) => [
      [w.name, `${hex(w.gpa)}-${hex(w.gpa + w.len)}`, formatSize(w.len), w.writable ? 'rw' : 'ro', w.mappings.length === 0 ? '(no mappings)' : ''],
      ...w.mappings.map((mapping) => ['', `  +${hex(mapping.offset)}`, formatSize(mapping.len), mapping.writable ? 'rw' : 'ro', `object offset ${hex(mapping.fileOffset)}`]),
    ]);
    lines.push(indent(table(['name', 'range', 'size', 'access', 'backing'], rows)));
  }
  lines.push('');
  const total = chain.reduce((sum, { manifest }) => sum + files(manifest), 0n);
  lines.push(`this snapshot: ${m.dataPages} data pages (${formatSize(m.memoryBytes)}), ${m.zeroPages} zero pages, ${m.extents} extents, ${formatSize(files(m))} in memory.bin and extents.bin`);
  if (bases.length > 0) lines.push(`whole chain: ${formatSize(total)} in memory.bin and extents.bin files`);
  if (pages !== null) lines.push(`verified: ${pages} pages of ${chain.length} snapshot${chain.length === 1 ? '' : 's'}, every checksum matches`);
  return lines.join('\n');
}

/** Bytes of a snapshot's memory and index files. */
function files(manifest: SnapshotManifest): bigint {
  return manifest.memoryBytes + manifest.indexBytes;
}

function indent(text: string): string {
  return text
    .split('\n')
    .map((line) => `  ${line}`)
    .join('\n');
}
