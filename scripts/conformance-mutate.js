'use strict'
// Mutated vectors for `npm run conformance:upstream -- --mutate N`: takes the committed cases'
// inputs (shaped by the recorder that wrote them, not by conformance/generator/), changes each
// one N times in small ways (a value moved by a page, a bit flipped, a boundary of 2 MiB /
// 1 GiB / the top of the address space, a list element repeated, dropped, swapped or added),
// has the original evaluate the new inputs (the generator's `evaluate` command) and writes
// vector files in the committed format, whose `expected` is the original's outcome. Nothing of
// the original is kept: the files go to the caller's temporary folder.

const fs = require('node:fs')
const path = require('node:path')
const { spawnSync } = require('node:child_process')

const U64 = (1n << 64n) - 1n
const MAX_ADDRESS = U64 & ~0xfffn
const PAGE = 0x1000n
// Registrar layouts whose RAM ends above this would make the original allocate gigabytes of
// chunk bitmap (one bit per 2 GiB chunk up to the end of RAM); they are left out.
const REGISTRAR_END_OF_RAM_LIMIT = 1n << 48n

/** SplitMix64, as the generator's (a different stream: seeded with `seed ^ 'mutate'`). */
function prng(seed) {
  let state = (BigInt(seed) ^ 0x6d75746174650000n) & U64
  const next = () => {
    state = (state + 0x9e3779b97f4a7c15n) & U64
    let z = state
    z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & U64
    z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & U64
    return z ^ (z >> 31n)
  }
  const below = (n) => Number(next() % BigInt(n))
  const pick = (items) => items[below(items.length)]
  return { next, below, pick }
}

const hex = (value) => `0x${value.toString(16)}`

function mutator(rng) {
  const { next, below, pick } = rng
  const boundaries = [0x20_0000n, 0x4000_0000n, 0x8000_0000n, 0x1_0000_0000n]
  const edges = [
    0n, 1n, 0xfffn, PAGE, 0xa0000n, 0x10_0000n, 0x20_0000n, 0x4000_0000n, 0x8000_0000n,
    0xc000_0000n, 0x1_0000_0000n, 1n << 40n, 1n << 63n, MAX_ADDRESS, MAX_ADDRESS - PAGE,
    MAX_ADDRESS - 0x20_0000n, U64, U64 - PAGE, U64 - 0x1001n,
    (U64 + 1n - 0x20_0000n) & U64, (U64 + 1n - 0x4000_0000n) & U64, (U64 + 1n - 0x8000_0000n) & U64,
  ]
  /** Any u64 near `value` or at an interesting place. */
  const value = (v) => {
    switch (below(12)) {
      case 0: return (v + BigInt(below(7) - 3) * PAGE) & U64
      case 1: return (v + BigInt(below(3) - 1)) & U64
      case 2: return v ^ (1n << BigInt(below(64)))
      case 3:
      case 4: return pick(edges)
      case 5: return next()
      case 6: return (v * 2n) & U64
      case 7: return v / 2n
      case 8: {
        const size = pick(boundaries)
        return ((v & ~(size - 1n)) + (below(2) ? size : 0n) + BigInt(below(3) - 1) * PAGE) & U64
      }
      case 9: return (U64 + 1n - v) & U64
      case 10: return (v + pick(boundaries)) & U64
      default: return BigInt(below(64)) * PAGE
    }
  }
  const aligned = (v) => value(v) & ~0xfffn
  /** A valid range (aligned, ordered, at most MAX_ADDRESS) near `range`. */
  const range = (r) => {
    let start = BigInt(r.start)
    let end = BigInt(r.end)
    switch (below(4)) {
      case 0: start = aligned(start); break
      case 1: end = aligned(end); break
      case 2: start = aligned(start); end = aligned(end); break
      default: end = start
    }
    if (start > end) [start, end] = [end, start]
    if (start > MAX_ADDRESS) start = MAX_ADDRESS
    if (end > MAX_ADDRESS) end = MAX_ADDRESS
    return { start: hex(start), end: hex(end) }
  }
  const freshRange = () => range({ start: '0x0', end: '0x0' })
  /** Any two u64 values (the raw constructors' and the registrar's failing ranges). */
  const rawRange = (r) => ({ start: below(2) ? hex(value(BigInt(r.start))) : r.start, end: hex(value(BigInt(r.end))) })
  /** A list edit; `element` changes one element, `fresh` makes a new one. */
  const list = (items, element, fresh) => {
    const out = items.slice()
    // Elements are ranges, or objects holding one in `range` (tagged ranges, RAM entries).
    const get = (e) => ('range' in e ? e.range : e)
    const put = (e, r) => ('range' in e ? { ...e, range: r } : r)
    // The range edits (4 to 7) only apply to lists of ranges, not to the registrar's calls.
    const ranged = out.length > 0 && 'start' in get(out[0])
    const k = below(ranged ? 11 : 5)
    if (k === 0 && out.length) {
      const i = below(out.length)
      out.splice(i, 0, structuredClone(out[i]))
    } else if (k === 1 && out.length) out.splice(below(out.length), 1)
    else if (k === 2 && out.length > 1) {
      const i = below(out.length - 1)
      ;[out[i], out[i + 1]] = [out[i + 1], out[i]]
    } else if (k === 3 || (k === 4 && !ranged)) out.splice(below(out.length + 1), 0, fresh())
    else if (k === 4) {
      // An empty range inside (or at the end of) an element, right after it.
      const i = below(out.length)
      const r = get(out[i])
      const pages = (BigInt(r.end) - BigInt(r.start)) / PAGE
      const at = hex(BigInt(r.start) + (pages > 0n ? (next() % pages) + 1n : 0n) * PAGE)
      out.splice(i + 1, 0, put(structuredClone(out[i]), { start: at, end: at }))
    } else if (k === 5 && out.length > 1) {
      // An element's end moved into (or past) the next one.
      const i = below(out.length - 1)
      const r = get(out[i])
      const n = get(out[i + 1])
      const end = BigInt(n.end) > BigInt(n.start) ? BigInt(n.start) + PAGE : BigInt(n.end)
      if (end >= BigInt(r.start)) out[i] = put(out[i], { start: r.start, end: hex(end) })
    } else if (k === 6 && out.length > 1) {
      // The lowest element moved last.
      out.push(out.shift())
    } else if (k === 7 && out.length) {
      // An empty range at the start of an element, placed after a later one.
      const i = below(out.length)
      const r = get(out[i])
      out.splice(below(out.length - i) + i + 1, 0, put(structuredClone(out[i]), { start: r.start, end: r.start }))
    } else if (out.length) {
      const i = below(out.length)
      out[i] = element(out[i])
    }
    return out
  }
  const layout = (input) => {
    const x = structuredClone(input)
    const k = below(5)
    if (x.ctor === 'new') {
      if (k === 0) x.ram_size = hex(below(4) ? aligned(BigInt(x.ram_size)) : value(BigInt(x.ram_size)))
      else if (k === 1) x.vtl2_range = x.vtl2_range && below(3) ? range(x.vtl2_range) : below(2) ? null : freshRange()
      else x.gaps = list(x.gaps, range, freshRange)
    } else if (k <= 1) x.gaps = list(x.gaps, range, freshRange)
    else {
      const entry = (e) => ({ range: range(e.range), vnode: below(4) ? e.vnode : below(5) })
      x.memory = list(x.memory, entry, () => ({ range: freshRange(), vnode: below(3) }))
    }
    return x
  }
  const tagged = (e) => ({ range: range(e.range), tag: below(3) ? e.tag : below(3) })
  const freshTagged = () => ({ range: freshRange(), tag: below(3) })

  /** One mutation of a case input of `area`. */
  const once = (area, op, x) => {
    switch (area) {
      case 'memory_range_ops':
        if ('range' in x && below(2)) x.range = range(x.range)
        else if ('a' in x) {
          if (below(2)) x.a = range(x.a)
          else x.b = range(x.b)
        } else if ('start' in x) Object.assign(x, rawRange(x))
        for (const key of ['base', 'addr', 'offset', 'alignment']) {
          if (!(key in x) || !below(2)) continue
          const old = BigInt(x[key])
          if (key === 'alignment') x[key] = hex(below(2) ? 1n << BigInt(below(64)) : value(old))
          else if (key === 'offset') x[key] = hex(below(2) ? aligned(old) : value(old))
          else x[key] = hex(value(old))
        }
        return x
      case 'memory_range_algorithms':
        for (const key of ['left', 'right', 'ranges']) {
          if (!(key in x) || !below(2)) continue
          const isTagged = op === 'walk_ranges' || op === 'merge_adjacent_ranges'
          x[key] = isTagged ? list(x[key], tagged, freshTagged) : list(x[key], range, freshRange)
        }
        if (op === 'aligned_subranges') {
          if (below(2)) x.range = range(x.range)
          if (below(3) === 0) {
            if ('offset' in x) delete x.offset
            else x.offset = hex(aligned(0n))
          } else if ('offset' in x && below(2)) x.offset = hex(below(4) ? aligned(BigInt(x.offset)) : value(BigInt(x.offset)))
          if (below(3) === 0) {
            if ('max_len' in x) delete x.max_len
            else x.max_len = hex(pick([PAGE, 0x3000n, 0x20_0000n, 0x20_1000n, 0x4000_0000n]))
          } else if ('max_len' in x && below(2)) x.max_len = hex(below(4) ? aligned(BigInt(x.max_len)) || PAGE : value(BigInt(x.max_len)))
        }
        return x
      case 'memory_layout':
        return layout(x)
      case 'registrar': {
        const k = below(5)
        if (k === 0) x.registration_offset = hex(below(3) ? aligned(BigInt(x.registration_offset)) : value(BigInt(x.registration_offset)))
        else if (k === 1) x.fail_ranges = list(x.fail_ranges, rawRange, () => rawRange({ start: '0x0', end: '0x1000' }))
        else if (k === 2) x.layout = layout(x.layout) // its RAM is filled in from the original
        else {
          const call = (c) => ({ address: below(2) ? hex(value(BigInt(c.address))) : c.address, len: below(2) ? hex(value(BigInt(c.len))) : c.len })
          x.calls = list(x.calls, call, () => ({ address: hex(value(0n)), len: hex(value(PAGE)) }))
        }
        return x
      }
      case 'x86_legacy_ram_split':
        if (below(4) === 0) x.x86_legacy_support = !x.x86_legacy_support
        else x.layout = layout(x.layout) // its RAM is filled in from the original
        return x
      default:
        throw new Error(`no mutations for area ${area}`)
    }
  }
  return (area, op, input) => {
    let x = structuredClone(input)
    for (let times = 1 + below(3); times > 0; times--) x = once(area, op, x)
    return x
  }
}

/** Runs the original on `cases` of `area`; returns them with `expected` filled in. */
function evaluate(binary, dir, area, cases) {
  // The generator takes the area from the file name.
  const input = path.join(dir, 'in', `${area}.json`)
  const output = path.join(dir, `${area}.out.jsonl`)
  fs.mkdirSync(path.dirname(input), { recursive: true })
  fs.writeFileSync(input, JSON.stringify({ case_count: cases.length, cases }))
  const result = spawnSync(binary, ['evaluate', '--in', input, '--out', output], { encoding: 'utf8', maxBuffer: 64 << 20 })
  if (result.status !== 0) throw new Error(`the original could not evaluate the mutated ${area} cases:\n${(result.stderr || String(result.signal)).slice(-2000)}`)
  const outcomes = new Map(
    fs.readFileSync(output, 'utf8').trim().split('\n').filter(Boolean).map((line) => {
      const value = JSON.parse(line)
      return [value.id, value.expected]
    }),
  )
  fs.rmSync(input)
  fs.rmSync(output)
  return cases.map((c) => ({ ...c, expected: outcomes.get(c.id) }))
}

/** The RAM (and VTL2 range) the original gives each layout, or null where it refuses it. */
function layoutsOf(binary, dir, layouts) {
  const cases = layouts.map((input, id) => ({ id, op: 'memory_layout', category: 'mutated', input, expected: null }))
  return evaluate(binary, dir, 'memory_layout', cases).map((c) => (c.expected && c.expected.ok ? c.expected.ok : null))
}

/**
 * Writes `<area>.json` for each of `areas` into `outDir`, each case of the committed file in
 * `vectorsDir` mutated `rounds` times. Returns `{ area: case count }`.
 */
function mutateVectors({ binary, vectorsDir, outDir, seed, rounds, areas }) {
  const rng = prng(seed)
  const mutate = mutator(rng)
  const work = path.join(outDir, 'work')
  fs.mkdirSync(work, { recursive: true })
  const counts = {}
  for (const area of areas) {
    const file = JSON.parse(fs.readFileSync(path.join(vectorsDir, `${area}.json`), 'utf8'))
    let cases = []
    for (let round = 0; round < rounds; round++) {
      for (const c of file.cases) {
        cases.push({ id: cases.length, op: c.op, category: `mutated:${c.category}`, input: mutate(area, c.op, c.input), expected: null })
      }
    }
    if (area === 'registrar' || area === 'x86_legacy_ram_split') {
      // A changed layout needs its RAM from the original; cases whose layout it refuses (or,
      // for the registrar, whose RAM ends too high) are dropped.
      const built = layoutsOf(binary, work, cases.map((c) => c.input.layout))
      cases = cases.filter((c, i) => {
        const ok = built[i]
        if (!ok || (area === 'registrar' && BigInt(ok.end_of_ram) > REGISTRAR_END_OF_RAM_LIMIT)) return false
        c.input.layout_ram = ok.ram.map((entry) => entry.range)
        if (area === 'x86_legacy_ram_split') c.input.layout_vtl2_range = ok.vtl2_range
        return true
      })
      cases.forEach((c, id) => {
        c.id = id
      })
    }
    const done = evaluate(binary, work, area, cases)
    if (area === 'x86_legacy_ram_split') {
      // Deviation D1 (docs/deviations.md): this project omits the empty region at 1 MiB.
      for (const c of done) {
        const regions = c.expected.ok
        const kept = regions && regions.filter((region) => region.range.start !== region.range.end)
        if (kept && kept.length !== regions.length) c.expected_project = { ok: kept }
      }
    }
    const header = { ...file, set: 'mutated', prng_seed: hex(BigInt(seed)), case_count: done.length }
    delete header.cases
    const head = JSON.stringify(header).slice(0, -1)
    fs.writeFileSync(path.join(outDir, `${area}.json`), `${head},"cases":[\n${done.map((c) => JSON.stringify(c)).join(',\n')}\n]}\n`)
    counts[area] = done.length
  }
  fs.rmSync(work, { recursive: true, force: true })
  return counts
}

module.exports = { mutateVectors }
