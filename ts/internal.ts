/**
 * Not public API: hooks for the package's own tests and benchmarks, and the raw binding. The
 * library entry (`index`) never exports these; `require('membacking/dist/internal')` reaches
 * them.
 *
 * - `__test.faultOutsideGuardedRegion()` reads an inaccessible page outside every guarded
 *   routine: the process dies with SIGSEGV (run it in a child process).
 * - `__test.openHandleCount()`: transfer handles neither opened nor closed (leak checks).
 * - `__bench`: native functions with the argument and result types of the entry points they are
 *   compared with, doing nothing, and the raw KVM slot churn. They exist only in an addon built
 *   with the `bench` feature (`npm run build:bench`); elsewhere each throws and says so.
 */
import type { U64 } from './u64';
import { native } from './native';

export { native } from './native';
export { ERROR_CODES } from './errors';

/** Hooks for tests. */
export const __test = {
  /** A plain read of an inaccessible page outside the guarded routines: the process dies with SIGSEGV. */
  faultOutsideGuardedRegion(): number {
    return native.testFaultOutsideGuardedRegion();
  },
  /** How many transfer handles of this process are neither opened nor closed. */
  openHandleCount(): number {
    return native.testOpenHandleCount();
  },
};

type BenchBinding = {
  benchNoop(): void;
  benchNoopBigints(a: U64, b: U64): number | null;
  benchNoopU32(gpa: U64): number;
  benchNoopReadU64(gpa: U64): bigint;
  benchNoopWriteU64(gpa: U64, value: U64): void;
  benchNoopReadAt(gpa: U64, dest: Uint8Array): void;
  benchKvmRawSlotChurn(size: U64, pairs: number): number;
  benchCopyFloors(): CopyFloors;
};

/** The floors of the copy fast paths: plain N-API functions that read the same arguments and only memcpy. */
export interface CopyFloors {
  readAt(gpa: U64, dest: Uint8Array): void;
  readv(gpas: Float64Array, ...buffers: ArrayBufferView[]): void;
}

/** The baselines of an addon built with the `bench` feature. */
function bench(): BenchBinding {
  const raw = native as unknown as Partial<BenchBinding>;
  if (typeof raw.benchNoop !== 'function') {
    throw new Error('the benchmark baselines are not in this build of the addon: run `npm run build:bench`');
  }
  return raw as BenchBinding;
}

/** Same-signature baselines for the benchmarks. */
export const __bench = {
  /** No arguments, no result. */
  noop: (): void => bench().benchNoop(),
  /** The types of `MemoryRegistrar#register`'s native call: two u64 in, null out. */
  noopBigints: (a: U64, b: U64): number | null => bench().benchNoopBigints(a, b),
  /** The types of `GuestMemory#readU32`. */
  noopU32: (gpa: U64): number => bench().benchNoopU32(gpa),
  /** The types of `GuestMemory#readU64`. */
  noopReadU64: (gpa: U64): bigint => bench().benchNoopReadU64(gpa),
  /** The types of `GuestMemory#writeU64`. */
  noopWriteU64: (gpa: U64, value: U64): void => bench().benchNoopWriteU64(gpa, value),
  /** The types of `GuestMemory#readAt`; touches nothing. */
  noopReadAt: (gpa: U64, dest: Uint8Array): void => bench().benchNoopReadAt(gpa, dest),
  /** The floors of `readAt` and `readv` (the raw calls, not the TypeScript wrappers). */
  copyFloors: (): CopyFloors => bench().benchCopyFloors(),
  /** Nanoseconds per raw KVM_SET_USER_MEMORY_REGION delete+create pair of a `size`-byte slot. */
  kvmRawSlotChurn: (size: U64, pairs: number): number => bench().benchKvmRawSlotChurn(size, pairs),
};
