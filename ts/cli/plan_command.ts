/**
 * `membacking plan`: builds guest memory for a layout with a RecordingPartition attached, then,
 * for each change in order, prints the dry-run plan (the flat view it leaves and the ordered
 * operations with their reasons), applies the change, and checks that the partition calls
 * recorded while applying are exactly the planned ones.
 *
 * Changes (`--change`, repeatable, or `"changes"` in the JSON input):
 *   visibility START-END Unmapped|ReadOnly|ReadWrite   a RAM region's visibility
 *   device NAME START-END                               place a device window there
 *   unplace NAME                                        remove a placed window
 */
import { formatSize, parseRange, table } from './format';
import { errorText, readInputFile, withContext } from './input';
import type { MemoryLayout } from '../layout';
import { GuestMemoryBuilder, RamVisibility, Vtl, type DeviceMemoryControl } from '../manager';
import { RecordingPartition, type RecordedCall } from '../partition';
import type { FlatEntry, PlanChange, PlannedOp } from '../planner';
import { flatViewSvg } from './svg';

/** A change as the user wrote it, parsed. */
type ChangeSpec =
  | { kind: 'visibility'; text: string; range: ReturnType<typeof parseRange>; visibility: RamVisibility }
  | { kind: 'device'; text: string; name: string; range: ReturnType<typeof parseRange> }
  | { kind: 'unplace'; text: string; name: string };

/** An input error (exit code 2). */
export class PlanInputError extends Error {}

/** Parses one change (`where` names it in errors: the `--change` flag or the input file's entry). */
export function parseChange(text: string, where = '--change'): ChangeSpec {
  const words = text.trim().split(/\s+/);
  const [verb, ...rest] = words;
  const range = (value: string): ReturnType<typeof parseRange> => {
    try {
      return parseRange(value);
    } catch (error) {
      throw new PlanInputError(`${where} '${text}': ${errorText(error)}`);
    }
  };
  if (verb === 'visibility' && rest.length === 2) {
    const visibility = rest[1] as RamVisibility;
    if (!Object.values(RamVisibility).includes(visibility)) throw new PlanInputError(`${where} '${text}': unknown visibility '${rest[1]}' (Unmapped, ReadOnly, ReadWrite)`);
    return { kind: 'visibility', text, range: range(rest[0]!), visibility };
  }
  if (verb === 'device' && rest.length === 2) return { kind: 'device', text, name: rest[0]!, range: range(rest[1]!) };
  if (verb === 'unplace' && rest.length === 1) return { kind: 'unplace', text, name: rest[0]! };
  throw new PlanInputError(`${where} '${text}': cannot read it (visibility START-END Unmapped|ReadOnly|ReadWrite, device NAME START-END, unplace NAME)`);
}

/** Reads `{"changes": ["…", …]}` from a JSON input file, if present. */
export function changesFromFile(file: string): ChangeSpec[] {
  const parsed = readInputFile(file) as { changes?: unknown };
  if (parsed.changes === undefined) return [];
  if (!Array.isArray(parsed.changes) || !parsed.changes.every((c) => typeof c === 'string')) {
    throw new PlanInputError(`${file}: "changes" must be an array of strings`);
  }
  return parsed.changes.map((change: string, i: number) => parseChange(change, `${file}: changes[${i}]`));
}

/** The result of one change. */
export interface StepResult {
  change: string;
  ops: PlannedOp[];
  flatView: FlatEntry[];
  applied: RecordedCall[];
  matches: boolean;
}

const samePartitionCalls = (ops: PlannedOp[], log: RecordedCall[]): boolean => {
  const planned = ops.filter((o) => o.op !== 'invalidate');
  return (
    planned.length === log.length &&
    planned.every((o, i) => {
      const c = log[i]!;
      return o.op === c.op && o.gpa === c.gpa && o.size === c.size && (o.op !== 'map' || (o.writable === c.writable && o.exec === c.exec));
    })
  );
};

/** Plans and applies `changes` on guest memory built for `layout`. */
export async function runPlan(layout: MemoryLayout, changes: ChangeSpec[], options: { x86Legacy: boolean }): Promise<{ initial: FlatEntry[]; steps: StepResult[] }> {
  const manager = await new GuestMemoryBuilder().x86LegacySupport(options.x86Legacy).build(layout);
  const partition = new RecordingPartition();
  const windows = new Map<string, DeviceMemoryControl>();
  try {
    await manager.attachPartition(Vtl.Vtl0, partition);
    partition.clearLog();
    const initial = await manager.flatView();
    const steps: StepResult[] = [];
    for (const spec of changes) {
      let change: PlanChange;
      let apply: () => Promise<void>;
      if (spec.kind === 'visibility') {
        change = { kind: 'ramVisibility', range: spec.range, visibility: spec.visibility };
        apply = () => manager.ramVisibilityControl().setRamVisibility(spec.range, spec.visibility);
      } else if (spec.kind === 'device') {
        let control = windows.get(spec.name);
        if (control === undefined) {
          control = manager.deviceMemoryMapper().newRegion(spec.range.len, spec.name).control;
          windows.set(spec.name, control);
        } else if (control.len !== spec.range.len) {
          // A placement moves the window made by the first change naming it; it keeps its length.
          throw new PlanInputError(
            `change '${spec.text}': device window ${spec.name} is ${formatSize(control.len)} (${hexOf(control.len)} bytes) long, not ${formatSize(spec.range.len)}: place it at START-START+${hexOf(control.len)}, or give another window another name`,
          );
        }
        const window = control;
        change = { kind: 'deviceMapToGuest', window, gpa: spec.range.start, writable: true };
        apply = () => window.mapToGuest(spec.range.start, true);
      } else {
        const window = windows.get(spec.name);
        if (window === undefined) throw new PlanInputError(`change '${spec.text}': no device window named ${spec.name}`);
        change = { kind: 'deviceUnmapFromGuest', window };
        apply = () => window.unmapFromGuest();
      }
      let plan: Awaited<ReturnType<typeof manager.plan>>;
      try {
        plan = await manager.plan(change);
        await apply();
      } catch (error) {
        // Name the change that was refused (several may be given, from flags and a file).
        const code = (error as { code?: unknown }).code;
        const regions = code === 'ERR_INVALID_RAM_REGION' ? ` (the RAM regions: ${manager.ramRegions().map((r) => r.range.toString()).join(', ')})` : '';
        throw withContext(error, `change '${spec.text}'`, regions);
      }
      const applied = partition.takeLog();
      steps.push({ change: spec.text, ops: plan.ops, flatView: plan.flatView, applied, matches: samePartitionCalls(plan.ops, applied) });
    }
    return { initial, steps };
  } finally {
    await manager.close();
  }
}

const hexOf = (value: bigint): string => `0x${value.toString(16)}`;

/** The flat view as a table. */
export function flatViewTable(view: FlatEntry[]): string {
  return table(
    ['range', 'size', 'region', 'backing', 'perm', 'hidden'],
    view.map((e) => [
      e.range.toString(),
      formatSize(e.range.len),
      e.region ? `${e.region.name}#${e.region.id}` : '-',
      e.backing ? `${e.backing.object}+${hexOf(e.backing.fileOffset)}` : '-',
      e.region ? `${e.writable ? 'w' : '-'}${e.executable ? 'x' : '-'}` : '',
      e.hidden.map((h) => `${h.name}#${h.id}`).join(' '),
    ]),
  );
}

/** The operations of a plan as a table. */
export function opsTable(ops: PlannedOp[]): string {
  if (ops.length === 0) return '(no operations)';
  return table(
    ['#', 'op', 'partition', 'gpa', 'size', 'perm', 'reason'],
    ops.map((o, i) => [
      String(i + 1),
      o.op,
      o.partition === undefined ? '-' : String(o.partition),
      hexOf(o.gpa),
      formatSize(o.size),
      o.op === 'map' ? `${o.writable ? 'w' : '-'}${o.exec ? 'x' : '-'}` : '',
      o.reason,
    ]),
  );
}

/** Renders the plan result in the chosen format. */
export function renderPlan(layout: MemoryLayout, result: { initial: FlatEntry[]; steps: StepResult[] }, format: string): string {
  if (format === 'json') {
    const json = (value: unknown): unknown =>
      JSON.parse(JSON.stringify(value, (_key, v: unknown) => (typeof v === 'bigint' ? hexOf(v) : v)));
    return JSON.stringify(json({ initialFlatView: result.initial, steps: result.steps }), null, 2);
  }
  const final = result.steps.length > 0 ? result.steps[result.steps.length - 1]!.flatView : result.initial;
  if (format === 'svg') {
    // The same rows as the flat-view table below: one band each, holes included.
    return flatViewSvg(layout, final, { title: result.steps.length > 0 ? 'Guest memory map after the planned changes' : 'Guest memory map' });
  }
  const lines = ['== Flat view before the changes ==', flatViewTable(result.initial)];
  for (const step of result.steps) {
    lines.push('', `== ${step.change} ==`, opsTable(step.ops));
    lines.push(step.matches ? `applied: ${step.applied.length} partition call(s), exactly as planned` : `applied: ${step.applied.length} partition call(s) DIFFERENT from the plan`);
  }
  if (result.steps.length > 0) lines.push('', '== Flat view after the changes ==', flatViewTable(final));
  return lines.join('\n');
}
