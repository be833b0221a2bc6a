/**
 * Structured values from the native binding: JSON in which a u64 is `{"$bigint":"0x…"}` and a
 * memory range `{"$range":["0x…","0x…"]}` (the Rust side is `crates/js_api/src/json.rs`). The
 * parse turns exactly these two shapes into a `bigint` and a range and leaves everything else
 * as it is; nothing is guessed from the look of a string.
 */

type RangeMaker = (start: bigint, end: bigint) => unknown;

/** Called for every object and array of the result that stays one (not a tagged value). */
type ContainerHook = (container: object) => void;

/** The member of `value` under `tag` when `tag` is its only key. */
function tagged(value: Record<string, unknown>, tag: string): unknown {
  const member = value[tag];
  return member !== undefined && Object.keys(value).length === 1 ? member : undefined;
}

/**
 * Replaces the tagged values inside `value` (parsed JSON), depth first, and hands every other
 * object and array to `hook`; returns the replacement of `value` itself. One walk after a plain
 * `JSON.parse`: a reviver function makes V8 parse several times slower.
 */
function revive(value: unknown, range: RangeMaker | undefined, hook: ContainerHook | undefined): unknown {
  if (typeof value !== 'object' || value === null) return value;
  if (Array.isArray(value)) {
    for (let index = 0; index < value.length; index++) value[index] = revive(value[index], range, hook);
  } else {
    const object = value as Record<string, unknown>;
    const bigint = tagged(object, '$bigint');
    if (bigint !== undefined) return BigInt(bigint as string);
    const bounds = tagged(object, '$range');
    if (bounds !== undefined) {
      const [start, end] = (bounds as string[]).map((bound) => BigInt(bound)) as [bigint, bigint];
      return range ? range(start, end) : { start, end };
    }
    for (const key of Object.keys(object)) object[key] = revive(object[key], range, hook);
  }
  hook?.(value);
  return value;
}

/**
 * Parses native JSON; `$range` values become `range(start, end)` (plain `{start, end}` when not
 * given), and every object and array that remains is handed to `hook`.
 */
export function parseNativeJson<T>(text: string, range?: RangeMaker, hook?: ContainerHook): T {
  return revive(JSON.parse(text), range, hook) as T;
}
