/**
 * A terminal progress bar for long work (prefetching guest RAM): drawn on stderr with carriage
 * returns, only when stderr is a TTY; elsewhere nothing is drawn and only the final summary the
 * caller prints remains.
 */
import { formatSize } from './format';

/** A progress bar for `done / total` bytes. */
export class ProgressBar {
  readonly #label: string;
  readonly #stream: NodeJS.WriteStream;
  readonly #enabled: boolean;
  #last = '';

  constructor(label: string, stream: NodeJS.WriteStream = process.stderr) {
    this.#label = label;
    this.#stream = stream;
    this.#enabled = stream.isTTY === true;
  }

  /** Whether the bar is drawn (stderr is a terminal). */
  get enabled(): boolean {
    return this.#enabled;
  }

  /** The bar's text for `done / total` bytes, `width` cells wide. */
  static render(label: string, done: bigint, total: bigint, width = 30): string {
    const fraction = total === 0n ? 1 : Number((done * 10_000n) / total) / 10_000;
    const filled = Math.min(width, Math.round(fraction * width));
    const percent = (fraction * 100).toFixed(0).padStart(3);
    return `${label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${percent}% ${formatSize(done)} / ${formatSize(total)}`;
  }

  /** Redraws the bar. */
  update(done: bigint, total: bigint): void {
    if (!this.#enabled) return;
    const text = ProgressBar.render(this.#label, done, total);
    if (text === this.#last) return;
    this.#last = text;
    this.#stream.write(`\r${text}`);
  }

  /** Ends the bar's line. */
  finish(): void {
    if (this.#enabled && this.#last !== '') this.#stream.write('\n');
  }
}
