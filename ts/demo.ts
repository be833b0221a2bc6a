/**
 * The README's main job, as a function the CLI runs: builds a worked example layout (4 GiB of
 * RAM around the x86 MMIO gap, a VTL2 range), prints its memory map, the RAM regions the x86
 * legacy split creates, and registers RAM in 2 GiB chunks with a callback that logs each piece.
 */
import { formatSize, layoutTable, table } from './format';
import { MemoryLayout, x86LegacyRamRanges } from './layout';
import { range } from './range';
import { MemoryRegistrar } from './registrar';
import { GiB, MiB, hex } from './u64';

/** Runs the demo, writing its report line by line. */
export async function runDemo(print: (line: string) => void): Promise<void> {
  const gaps = [range(3n * GiB, 4n * GiB)];
  const layout = MemoryLayout.new(4n * GiB, gaps, range(8n * GiB, 8n * GiB + 64n * MiB));
  print('== Layout: 4 GiB of RAM around the x86 MMIO gap 3G-4G, VTL2 range at 8 GiB ==');
  print(layoutTable(layout));
  print('');
  print(`probeAddress(0xa0000) = ${layout.probeAddress(0xa0000)}, probeAddress(0xfee00000) = ${layout.probeAddress(0xfee0_0000)}, probeAddress(8G) = ${layout.probeAddress(8n * GiB)}`);

  print('');
  print('== RAM regions with x86 legacy support (VGA window, PAM ranges, BIOS) ==');
  const regions = x86LegacyRamRanges(layout, true);
  print(
    table(
      ['#', 'range', 'size', 'file offset'],
      regions.map((r, i) => [String(i), r.range.toString(), formatSize(r.range.len), hex(r.fileOffset)]),
    ),
  );

  print('');
  print('== MemoryRegistrar: 2 GiB chunks registered on first use (offset 1 TiB) ==');
  const offset = 1n << 40n;
  const registrar = new MemoryRegistrar(layout, offset, async (piece) => {
    print(`  register ${piece} (${formatSize(piece.len)})`);
  });
  for (const [address, len] of [
    [0x1000n, 0x1000n],
    [0x2000n, 0x100000n],
    [2n * GiB + 5n, 1n],
    [4n * GiB, 1n * GiB],
  ] as const) {
    print(`register(${hex(address)}, ${hex(len)}):`);
    const pending = registrar.register(address, len);
    if (pending === undefined) print('  already registered (lock-free fast path)');
    else await pending;
  }
  const state = registrar.inspect();
  print(`inspect: ${state.chunksRegistered} of ${state.chunkCount} chunks registered, registration offset ${hex(state.registrationOffset)}`);
}
