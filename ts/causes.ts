/**
 * Values thrown by user callbacks (registration callbacks, guest-memory hooks), kept until the
 * error they caused is reported.
 *
 * A callback wrapper never lets an exception cross into native code: it stores the thrown value
 * here and hands the native side a token instead. The native error later names the token
 * (`causeToken`), and `fromNative` puts the value back as the error's `cause`. Tokens are per
 * thread, like the native side's bookkeeping.
 */

const causes = new Map<number, unknown>();
let nextToken = 1;

/** Keeps `value` and returns its token (a positive 31-bit integer). */
export function storeCause(value: unknown): number {
  const token = nextToken;
  nextToken = nextToken >= 0x7fff_ffff ? 1 : nextToken + 1;
  causes.set(token, value);
  return token;
}

/** Takes the value of `token` back (undefined when unknown or already taken). */
export function takeCause(token: number): unknown {
  const value = causes.get(token);
  causes.delete(token);
  return value;
}

/** A token for a pending registration (no value yet). */
export function allocateToken(): number {
  const token = nextToken;
  nextToken = nextToken >= 0x7fff_ffff ? 1 : nextToken + 1;
  return token;
}

/** Stores a value under a token allocated earlier. */
export function storeCauseAt(token: number, value: unknown): void {
  causes.set(token, value);
}
