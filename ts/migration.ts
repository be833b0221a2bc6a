/**
 * Live migration over a Node `Duplex` (`docs/migration.md`): the types `manager.migrate()` and
 * `GuestMemoryBuilder.migrateFrom()` take and return, the checks of their options, and the
 * pump that joins a stream to the native channel. The methods themselves are in `manager.ts`.
 *
 * The pump reads the stream only while the migration has room (`offer`, else `pause()` the
 * stream until `push` resolves) and writes what the migration sends, honouring `write()`'s
 * backpressure. A stream error, an early close or an abort signal fails the migration with
 * that value as the `cause` of its ERR_MIGRATION_ABORTED; so does the peer ending its side
 * early, also while this side waits to write (what it still sends is then dropped: a peer
 * that stopped reads nothing more, so `drain` never comes). When the migration succeeds, the
 * stream is left open and paused with whatever the migration did not read put back
 * (`unshift`): it is the caller's. When it fails, the stream's writable side is ended (the
 * protocol cannot go on; a peer that reported a failure waits for that end), never destroyed;
 * a call refused before it wrote or read anything leaves the stream as it was.
 */
import { Duplex } from 'node:stream';
import { storeCause, takeCause } from './causes';
import { call, invalidArgType, MigrationError, settle } from './errors';
import { native } from './native';
import { toOptions } from './snapshot';
import { checkOptionKeys, describeType, toU64, type U64 } from './u64';

type NativeChannel = InstanceType<typeof native.NativeMigrationChannel>;

/** A byte stream both ways: a `net.Socket`, one end of a socketpair, a TLS or SSH channel. */
export type MigrationStream = import('node:stream').Duplex;

/** `(round, bytes)`: page bytes sent (source) or received (destination) in `round` so far; fire-and-forget, on this thread (what it throws is an uncaught exception; the migration goes on). */
export type MigrationProgressCallback = (round: number, bytes: bigint) => void;

/** Options of `manager.migrate()`. */
export interface MigrateOptions {
  /**
   * Stops every writer of guest memory (the vCPUs, device threads) before the final round;
   * called once. What it returns (or resolves to) as bytes travels in the final round and is
   * `migratedFrom.payload` at the destination (e.g. the vCPU registers; at most 16 MiB).
   * If it throws, the migration fails with ERR_MIGRATION_ABORTED and that value as `cause`.
   */
  pause: () => void | Uint8Array | Promise<void | Uint8Array>;
  /** Pre-copy rounds at most while the guest runs (round 0 included; default 16, 1 ..= 10000). */
  maxRounds?: U64 | undefined;
  /**
   * The downtime accepted, in milliseconds. Given, it is binding: when what is still dirty
   * after `maxRounds` would take longer at the measured bandwidth, the migration fails with
   * ERR_MIGRATION_DOWNTIME before pausing. Not given, the budget is 300 ms and the guest is
   * paused after `maxRounds` anyway (`converged: false`).
   */
  maxDowntimeMs?: U64 | undefined;
  /** Progress of each round. */
  onProgress?: MigrationProgressCallback | undefined;
  /** Aborting fails the migration (ERR_MIGRATION_ABORTED, `cause` the signal's reason); the source keeps running. */
  signal?: AbortSignal | undefined;
}

/** What a migration did (source). Bytes are page bytes of data (zero pages carry none). */
export interface MigrationInfo {
  /** Rounds sent, the final one included. */
  rounds: number;
  bytesPerRound: bigint[];
  /** The sum of `bytesPerRound`. */
  bytes: bigint;
  /** Every byte written to the stream (frames, manifests, the payload). */
  streamBytes: bigint;
  /** From `pause` resolving to the destination's acknowledgement that it holds and applied everything. */
  downtimeMs: number;
  /** Whether what was left fitted the downtime budget when the guest was paused (false: the rounds ran out first). */
  converged: boolean;
  /** The bandwidth measured over the pre-copy rounds, which the decision used. */
  bandwidthBytesPerSec: number;
}

/** Options of `GuestMemoryBuilder.migrateFrom()`. */
export interface MigrateFromOptions {
  /** Progress of each round received. */
  onProgress?: MigrationProgressCallback | undefined;
  /** The layout the source must have (ERR_SNAPSHOT_LAYOUT otherwise). */
  layout?: import('./layout').MemoryLayout | undefined;
  /** Objects behind the device windows' mappings (the stream carries where windows are, not their contents), as for a restore. */
  windowBackings?: import('./snapshot').RestoreOptions['windowBackings'];
  /** Aborting fails the migration (ERR_MIGRATION_ABORTED, `cause` the signal's reason); nothing is left built. */
  signal?: AbortSignal | undefined;
}

/** What a manager built by `migrateFrom()` received (`manager.migratedFrom`). */
export interface MigratedFrom {
  /** The source machine's id (as a snapshot's). */
  id: string;
  /** Rounds received, the final one included. */
  rounds: number;
  bytesPerRound: bigint[];
  bytes: bigint;
  /** What the source's `pause` returned; null when it returned nothing. */
  payload: Uint8Array | null;
}

/** A Duplex argument (a `stream.Duplex`: sockets, TLS sockets, SSH channels, duplex pairs). */
function toStream(value: unknown): MigrationStream {
  if (!(value instanceof Duplex)) throw invalidArgType(`stream must be a Duplex stream (a net.Socket, one end of a socket pair), got ${describeType(value)}`);
  return value;
}

function toSignal(value: unknown, name: string): AbortSignal | undefined {
  if (value === undefined) return undefined;
  if (!(value instanceof AbortSignal)) throw invalidArgType(`${name} must be an AbortSignal, got ${describeType(value)}`);
  return value;
}

function toMigrationProgress(value: unknown): ((round: bigint, bytes: bigint) => void) | null {
  if (value === undefined) return null;
  if (typeof value !== 'function') throw invalidArgType(`options.onProgress must be a function, got ${describeType(value)}`);
  const report = value as MigrationProgressCallback;
  return (round, bytes) => report(Number(round), bytes);
}

/** The checked arguments of `manager.migrate()`. @internal */
export function migrateArgs(
  stream: unknown,
  options: unknown,
): { stream: MigrationStream; pause: () => unknown; maxRounds: bigint | null; maxDowntimeMs: bigint | null; onProgress: ((round: bigint, bytes: bigint) => void) | null; signal: AbortSignal | undefined } {
  const s = toStream(stream);
  if (typeof options !== 'object' || options === null) throw invalidArgType(`options must be an object with a pause function, got ${describeType(options)}`);
  checkOptionKeys(options, ['pause', 'maxRounds', 'maxDowntimeMs', 'onProgress', 'signal'], 'migrate()');
  const o = options as Record<string, unknown>;
  // Read once: a getter may answer differently each time, and what is used is what was checked.
  const pause = o.pause;
  if (typeof pause !== 'function') throw invalidArgType(`options.pause must be a function that stops the guest's vCPUs, got ${describeType(pause)}`);
  return {
    stream: s,
    pause: pause as () => unknown,
    maxRounds: o.maxRounds === undefined ? null : toU64(o.maxRounds, 'options.maxRounds'),
    maxDowntimeMs: o.maxDowntimeMs === undefined ? null : toU64(o.maxDowntimeMs, 'options.maxDowntimeMs'),
    onProgress: toMigrationProgress(o.onProgress),
    signal: toSignal(o.signal, 'options.signal'),
  };
}

/** The checked arguments of `GuestMemoryBuilder.migrateFrom()` (the options bag stays for `machineOptions`). @internal */
export function migrateFromArgs(
  stream: unknown,
  options: unknown,
): { stream: MigrationStream; options: Record<string, unknown>; onProgress: ((round: bigint, bytes: bigint) => void) | null; signal: AbortSignal | undefined } {
  const s = toStream(stream);
  const o = toOptions(options, ['onProgress', 'layout', 'windowBackings', 'signal'], 'GuestMemoryBuilder.migrateFrom()');
  return { stream: s, options: o, onProgress: toMigrationProgress(o.onProgress), signal: toSignal(o.signal, 'options.signal') };
}

function messageOf(value: unknown): string {
  if (value instanceof Error) return value.message;
  return String(value);
}

/** The payload `pause` returned, as bytes (or null). */
function toPayload(value: unknown): Uint8Array | null {
  if (value === undefined || value === null) return null;
  if (value instanceof Uint8Array) return value;
  throw invalidArgType(`options.pause must return (or resolve to) nothing or a Uint8Array payload, got ${describeType(value)}`);
}

/**
 * A pause function for the native side: calls the caller's `pause` and answers through the
 * channel (a thrown value is kept as the migration error's cause). @internal
 */
export function pauseThrough(channel: NativeChannel, pause: () => unknown): () => void {
  return () => {
    void (async () => {
      try {
        const payload = toPayload(await pause());
        channel.resolvePause(payload === null ? null : Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength));
      } catch (error) {
        channel.rejectPause(messageOf(error), storeCause(error));
      }
    })();
  };
}

/**
 * The streams a migration (either end) is running over. A second migration over one of them
 * would take the same chunks and, when refused, pause the stream under the first, which then
 * never read again: it is refused before it touches the stream.
 */
const streamsInUse = new WeakSet<MigrationStream>();

/**
 * Runs `migration` over a new channel joined to `stream`; when it settles, the stream is
 * released (see the module comment) and everything the migration wrote has been handed to
 * `stream.write` and flushed (or failed). One migration per stream at a time:
 * ERR_MIGRATION_IN_PROGRESS, with the stream left as it was, while one runs over it. @internal
 */
export async function overStream<T>(stream: MigrationStream, signal: AbortSignal | undefined, migration: (channel: NativeChannel) => Promise<T>): Promise<T> {
  if (streamsInUse.has(stream)) {
    throw new MigrationError(
      'ERR_MIGRATION_IN_PROGRESS',
      'a migration is already running over this stream (one migration per stream at a time): wait for it to settle, or use another stream',
    );
  }
  streamsInUse.add(stream);
  try {
    return await joined(stream, signal, migration);
  } finally {
    streamsInUse.delete(stream);
  }
}

/** `overStream`'s work, once the stream is known to be free. */
async function joined<T>(stream: MigrationStream, signal: AbortSignal | undefined, migration: (channel: NativeChannel) => Promise<T>): Promise<T> {
  const channel = new native.NativeMigrationChannel();
  const tokens: number[] = [];
  /** Whether the stream (or the signal) failed the migration, or it read anything. */
  let streamInvolved = false;
  const fail = (reason: unknown): void => {
    streamInvolved = true;
    const token = storeCause(reason);
    tokens.push(token);
    channel.fail(messageOf(reason), token);
  };
  let stopped = false;
  /** Chunks that arrived after the migration stopped reading: handed back to the stream. */
  const leftover: Buffer[] = [];
  const onData = (chunk: Buffer | string): void => {
    const bytes = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    streamInvolved = true;
    if (stopped) {
      leftover.push(bytes);
      return;
    }
    let queued: boolean;
    try {
      queued = channel.offer(bytes);
    } catch {
      leftover.push(bytes);
      return;
    }
    if (queued) return;
    stream.pause();
    channel.push(bytes).then(
      () => {
        if (!stopped) stream.resume();
      },
      () => leftover.push(bytes),
    );
  };
  const onEnd = (): void => {
    streamInvolved = true;
    channel.end();
  };
  const onError = (error: unknown): void => fail(error);
  const onClose = (): void => fail(new Error('the stream closed before the migration finished'));
  const onAbort = (): void => fail(signal?.reason);
  // A stream that is of no use from the start says so (it would read as the peer leaving).
  if (stream.destroyed) fail(new Error('the stream was already destroyed when the migration started: pass an open stream'));
  else if (stream.readableEnded) fail(new Error('the stream had already ended (nothing more can be read from it) when the migration started: pass an open stream'));
  stream.on('data', onData);
  stream.on('end', onEnd);
  stream.on('error', onError);
  stream.on('close', onClose);
  // A 'data' listener starts the flow only of a stream never paused: one the caller paused (or
  // an earlier migration left paused) would never be read and the migration would wait forever.
  stream.resume();
  if (signal !== undefined) {
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
  }
  const written = writeOut(stream, channel);
  // The migration's threads settle its Promise from outside the event loop, which nothing
  // else may keep alive meanwhile (an in-process stream has no handle): hold it open.
  const keepAlive = setInterval(() => undefined, 0x7fff_ffff);
  let failed = true;
  try {
    const result = await migration(channel);
    failed = false;
    return result;
  } finally {
    stopped = true;
    stream.pause();
    stream.off('data', onData);
    stream.off('end', onEnd);
    stream.off('error', onError);
    stream.off('close', onClose);
    signal?.removeEventListener('abort', onAbort);
    channel.close();
    const wroteAny = await written;
    // Mid-protocol the stream is of no further use, and a peer that reported its own failure
    // waits for the end of the stream before it settles. A call refused before the migration
    // wrote or read anything (a second migration of the manager, an option out of range) leaves
    // the stream as it was given: the caller may retry over it.
    if (failed && (wroteAny || streamInvolved) && !stream.destroyed && !stream.writableEnded) stream.end();
    const unread = Buffer.concat([call(() => channel.unread()), ...leftover]);
    if (unread.length > 0 && !stream.destroyed && !stream.readableEnded) stream.unshift(unread);
    for (const token of tokens) takeCause(token);
    clearInterval(keepAlive);
  }
}

/**
 * Writes what the migration sends until it is done; resolves (with whether it had anything to
 * send) when the last write is flushed, the stream closed, or the peer is gone. The peer is gone once the stream's readable side
 * ended or the stream failed: mid-migration that only happens when the peer stopped (it
 * aborted, failed or was cut off), and a peer that stopped reads nothing more, so neither
 * `drain` nor a write's callback may ever come. From then on what the migration still sends
 * is dropped, so it is never held up writing: it learns of the end or the error through the
 * incoming side (`overStream` feeds it both) and stops.
 */
async function writeOut(stream: MigrationStream, channel: NativeChannel): Promise<boolean> {
  let peerGone = false;
  let wroteAny = false;
  let onGone = (): void => undefined;
  const gone = new Promise<void>((resolve) => {
    onGone = () => {
      peerGone = true;
      resolve();
    };
  });
  const goneEvents = ['close', 'end', 'error'] as const;
  for (const event of goneEvents) stream.on(event, onGone);
  if (stream.destroyed || stream.readableEnded || stream.errored !== null) onGone();
  try {
    let last: Promise<void> = Promise.resolve();
    for (;;) {
      const chunk = channel.tryNext() ?? (await settle(call(() => channel.next())));
      if (chunk === null) break;
      wroteAny = true;
      if (peerGone) continue;
      let accepted = false;
      last = new Promise<void>((resolve) => {
        accepted = stream.write(chunk, () => resolve());
      });
      if (!accepted) await drainedOrGone(stream, gone);
    }
    // A destroyed stream, or one whose peer stopped reading, may never call back the last write.
    await Promise.race([last, gone]);
    return wroteAny;
  } finally {
    for (const event of goneEvents) stream.off(event, onGone);
  }
}

/** Resolves on the next `drain` of `stream` or when `gone` resolves, leaving no listener behind. */
function drainedOrGone(stream: MigrationStream, gone: Promise<void>): Promise<void> {
  let onDrain = (): void => undefined;
  const drained = new Promise<void>((resolve) => {
    onDrain = resolve;
    stream.once('drain', onDrain);
  });
  return Promise.race([drained, gone]).finally(() => stream.off('drain', onDrain));
}
