/**
 * The raw native binding (the loader `index.js` that `napi build` generates, and its typings).
 *
 * Only the TypeScript layer talks to it: its functions take bigints and flat arrays, and throw
 * errors whose `code` the layer translates (see `errors.ts`). Users import the layer instead.
 *
 * The generated loader tries a local build (`membacking.<platform>.node` beside it, what
 * `npm run build` makes) and then the prebuilt platform package (`membacking-<platform>`, an
 * optional dependency). When neither loads, {@link loadNativeBinding} replaces its generic
 * message with one that names the platform detected, the package expected and what to do.
 */
import { readFileSync } from 'node:fs';

/** The `code` of the error thrown when no native binary fits or loads. */
export const NATIVE_BINDING_ERROR_CODE = 'ERR_NATIVE_BINDING_LOAD_FAILED';

/** The platforms a prebuilt package is published for (`napi.targets` in package.json). */
export const PREBUILT_PLATFORMS: readonly string[] = [
  'linux-x64-gnu',
  'linux-x64-musl',
  'linux-arm64-gnu',
  'linux-arm64-musl',
];

/** The C library of the running process: what decides between the `-gnu` and `-musl` packages. */
export type Libc = 'glibc' | 'musl' | 'unknown';

/** What the loader knows about the machine it runs on. */
export interface PlatformInfo {
  /** `process.platform`, e.g. `linux`. */
  readonly platform: string;
  /** `process.arch`, e.g. `x64`. */
  readonly arch: string;
  /** The C library; `unknown` off Linux or when neither check answers. */
  readonly libc: Libc;
  /** The napi-rs platform name, e.g. `linux-x64-gnu`. */
  readonly name: string;
  /** The prebuilt package for it (`membacking-linux-x64-gnu`), or null when none is published. */
  readonly packageName: string | null;
}

/** Detects the C library the way the generated loader does: the process report, then ldd. */
function detectLibc(): Libc {
  if (process.platform !== 'linux') return 'unknown';
  try {
    const report = process.report?.getReport() as { header?: { glibcVersionRuntime?: string }; sharedObjects?: string[] } | undefined;
    if (report?.header?.glibcVersionRuntime) return 'glibc';
    if (report?.sharedObjects?.some((file) => file.includes('libc.musl-') || file.includes('ld-musl-'))) return 'musl';
  } catch {
    // fall through to the ldd check
  }
  try {
    return readFileSync('/usr/bin/ldd', 'utf8').includes('musl') ? 'musl' : 'glibc';
  } catch {
    return 'unknown';
  }
}

/** The platform the running process is on, and the prebuilt package that would fit it. */
export function detectPlatform(): PlatformInfo {
  const { platform, arch } = process;
  const libc = detectLibc();
  const abi = platform === 'linux' ? (libc === 'musl' ? '-musl' : '-gnu') : '';
  const name = `${platform}-${arch}${abi}`;
  return { platform, arch, libc, name, packageName: PREBUILT_PLATFORMS.includes(name) ? `membacking-${name}` : null };
}

/** The messages of an error and its `cause` chain (the generated loader chains one per attempt). */
function causeMessages(error: unknown): string[] {
  const messages: string[] = [];
  const seen = new Set<unknown>();
  for (let current = error; current !== null && current !== undefined && !seen.has(current); ) {
    seen.add(current);
    messages.push(current instanceof Error ? current.message : String(current));
    current = current instanceof Error ? current.cause : undefined;
  }
  return messages;
}

/** The one error thrown when no native binary loads: what was detected, expected, and what to do. */
export function nativeBindingError(cause: unknown, info: PlatformInfo = detectPlatform()): Error {
  const detected = `${info.platform}-${info.arch}${info.platform === 'linux' ? ` (libc: ${info.libc})` : ''}`;
  const lines: string[] = [`membacking: could not load its native addon on ${detected}.`];
  if (info.packageName === null) {
    lines.push(
      `No prebuilt binary is published for ${info.name}: prebuilt packages exist for ${PREBUILT_PLATFORMS.join(', ')}.`,
      info.platform === 'linux'
        ? `To run here, build from source with Rust (cargo) in a clone of membacking: \`npm install && npm run build\`.`
        : `membacking runs on Linux only: it relies on memfd, KVM, Linux mmap behaviour and SIGSEGV-recovering copies.`,
    );
  } else {
    // A message that is not "module not found" means a binary was there but failed to load
    // (for example a glibc too old for it): that is the useful part of the cause chain.
    const loadFailure = causeMessages(cause)
      .slice(1)
      .find((message) => !/Cannot find module|Cannot find native binding/.test(message));
    lines.push(
      `Expected the prebuilt package \`${info.packageName}\` (an optional dependency of membacking) or a local build \`membacking.${info.name}.node\`.`,
    );
    if (loadFailure !== undefined) lines.push(`A binary was found but failed to load: ${loadFailure}`);
    lines.push(
      `Fix: reinstall with optional dependencies enabled (no \`--omit=optional\` / \`--no-optional\`; ` +
        `if node_modules or package-lock.json came from another platform, delete both and run \`npm install\` again), ` +
        `or \`npm install ${info.packageName}\` explicitly; ` +
        `or build from source with Rust (cargo) in a clone of membacking: \`npm install && npm run build\`.`,
    );
  }
  const error = new Error(lines.join('\n'), { cause });
  return Object.assign(error, { code: NATIVE_BINDING_ERROR_CODE, platform: info.name, expectedPackage: info.packageName });
}

/** Loads the generated loader; a failure becomes {@link nativeBindingError}, the original as `cause`. */
export function loadNativeBinding(): typeof import('../index') {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return require('../index.js');
  } catch (cause) {
    throw nativeBindingError(cause);
  }
}

export const native: typeof import('../index') = loadNativeBinding();
