/**
 * Structured values from the native binding: JSON in which a u64 is `{"$bigint":"0x…"}` and a
 * memory range `{"$range":["0x…","0x…"]}` (the Rust side is `crates/js_api/src/json.rs`). The
 * reviver turns exactly these two shapes into a `bigint` and a range and leaves everything else
 * as it is; nothing is guessed from the look of a string.
 */

type RangeMaker = (start: bigint, end: bigint) => unknown;

function isTagged(value: unknown, tag: string): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && Object.keys(value).length === 1 && tag in value;
}

/** Parses native JSON; `$range` values become `range(start, end)` (plain `{start, end}` when not given). */
export function parseNativeJson<T>(text: string, range?: RangeMaker): T {
  return JSON.parse(text, (_key, value: unknown) => {
    if (isTagged(value, '$bigint')) return BigInt(value.$bigint as string);
    if (isTagged(value, '$range')) {
      const [start, end] = (value.$range as string[]).map((bound) => BigInt(bound)) as [bigint, bigint];
      return range ? range(start, end) : { start, end };
    }
    return value;
  }) as T;
}
