/**
 * `MemoryRegistrar`: registers guest RAM lazily in 2 GiB chunks through a JavaScript callback.
 *
 * The chunk bookkeeping and the coordination of concurrent asynchronous registrations live in
 * the Rust core (`underhill_mem`). This class adapts the user's callback: a synchronous return
 * or throw is reported at once, a returned Promise is reported when it settles; `register()`
 * returns `undefined` when everything finished synchronously and a Promise otherwise.
 */
import { allocateToken, storeCause, storeCauseAt } from './causes';
import { call, errorFromNative, invalidArgType } from './errors';
import { nativeLayout, type MemoryLayout } from './layout';
import { native } from './native';
import { nativeJson, trusted, type MemoryRange } from './range';
import { describeType, toU64, type U64 } from './u64';

/** Registration callback: receives chunk ∩ RAM shifted by the offset; throw/reject = failure. */
export type RegisterMemory = (range: MemoryRange) => void | Promise<void>;

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return (
    (typeof value === 'object' || typeof value === 'function') &&
    value !== null &&
    typeof (value as { then?: unknown }).then === 'function'
  );
}

/** A finished registration: `null` when it succeeded, else the native error text. */
type Settled = string | null;

/** The wrapper's answer to the native side (`crates/js_api/src/hooks.rs`, `RegistrationAnswer`). */
type RegistrationAnswer = { answer: 'done' } | { answer: 'pending'; token: number } | { answer: 'failed'; causeToken: number };

/** Registers RAM lazily in 2 GiB chunks; sticky failure per chunk. */
export class MemoryRegistrar {
  readonly #native: InstanceType<typeof native.NativeRegistrar>;
  readonly #waiting = new Map<number, { resolve: () => void; reject: (error: unknown) => void }>();
  /** Outcomes reported before `register()` handed out the Promise. */
  readonly #early = new Map<number, Settled>();

  /** Chunk count = ceil(end of last RAM range / 2 GiB); registers nothing yet. */
  constructor(layout: MemoryLayout, registrationOffset: U64, register: RegisterMemory) {
    const handle = nativeLayout(layout);
    const offset = toU64(registrationOffset, 'registrationOffset');
    if (typeof register !== 'function') {
      throw invalidArgType(`register must be a function, got ${describeType(register)}`);
    }
    // Never throws: a thrown value is kept under a token that the error names.
    const answer = (reply: RegistrationAnswer): string => JSON.stringify(reply);
    const adapter = (start: bigint, end: bigint): string => {
      let result: unknown;
      let thenable: boolean;
      try {
        result = register(trusted(start, end));
        // Reading `then` runs user code too (a getter, a Proxy): what it throws is the cause.
        thenable = isThenable(result);
      } catch (error) {
        return answer({ answer: 'failed', causeToken: storeCause(error) });
      }
      if (!thenable) return answer({ answer: 'done' });
      const token = allocateToken();
      Promise.resolve(result).then(
        () => native.settleRegistrationCallback(token, false),
        (error: unknown) => {
          storeCauseAt(token, error);
          native.settleRegistrationCallback(token, true);
        },
      );
      return answer({ answer: 'pending', token });
    };
    const onSettled = (taskId: number, error?: string | null): void => {
      const settled = error ?? null;
      const waiter = this.#waiting.get(taskId);
      if (waiter === undefined) {
        this.#early.set(taskId, settled);
        return;
      }
      this.#waiting.delete(taskId);
      this.#settle(settled, waiter.resolve, waiter.reject);
    };
    this.#native = call(() => new native.NativeRegistrar(handle, offset, adapter, onSettled));
  }

  #settle(settled: Settled, resolve: () => void, reject: (error: unknown) => void): void {
    if (settled === null) resolve();
    else reject(errorFromNative(settled));
  }

  /**
   * Ensure [address, address+len) (bytes) is registered. Returns undefined when no callback
   * ran or all were synchronous; a Promise when a callback it ran or waited for is async.
   * Failure: RegistrarError `ERR_REGISTRATION_FAILED` with `address` (the original's Err value).
   */
  register(address: U64, len: U64): void | Promise<void> {
    const a = toU64(address, 'address');
    const l = toU64(len, 'len');
    const taskId = call(() => this.#native.register(a, l));
    if (taskId === null || taskId === undefined) return undefined;
    const id = taskId;
    return new Promise<void>((resolve, reject) => {
      const early = this.#early.get(id);
      if (early !== undefined) {
        this.#early.delete(id);
        this.#settle(early, resolve, reject);
      } else {
        this.#waiting.set(id, { resolve, reject });
      }
    });
  }

  /** {chunksRegistered, chunkCount, registrationOffset (bytes, bigint)}. */
  inspect(): { chunksRegistered: number; chunkCount: number; registrationOffset: bigint } {
    return nativeJson(call(() => this.#native.inspect()));
  }
}
