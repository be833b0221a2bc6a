'use strict'
// Small helpers that read Rust source text without a parser: find the brace that closes an
// opening one (skipping strings, character literals, lifetimes and comments), and split a
// module body into its items. Used by scripts/upstream-tests.js to lift a `#[cfg(test)]`
// module out of a source file and to switch single items off.

/** The index just past the end of the string/char/comment starting at `i`, or -1. */
function skipNonCode(text, i) {
  const c = text[i]
  const next = text[i + 1]
  if (c === '/' && next === '/') {
    const end = text.indexOf('\n', i)
    return end === -1 ? text.length : end + 1
  }
  if (c === '/' && next === '*') {
    let depth = 1
    let j = i + 2
    while (j < text.length && depth > 0) {
      if (text[j] === '/' && text[j + 1] === '*') {
        depth++
        j += 2
      } else if (text[j] === '*' && text[j + 1] === '/') {
        depth--
        j += 2
      } else {
        j++
      }
    }
    return j
  }
  if (c === 'r' && (next === '"' || next === '#') && !/[A-Za-z0-9_]/.test(text[i - 1] || '')) {
    const match = /^r(#*)"/.exec(text.slice(i, i + 64))
    if (match) {
      const close = '"' + match[1]
      const end = text.indexOf(close, i + match[0].length)
      return end === -1 ? text.length : end + close.length
    }
  }
  if (c === '"') {
    let j = i + 1
    while (j < text.length && text[j] !== '"') j += text[j] === '\\' ? 2 : 1
    return j + 1
  }
  if (c === "'") {
    // A character literal ('a', '\n', '\u{..}', '{') or a lifetime/label ('a).
    const literal = /^'(\\(u\{[0-9a-fA-F]+\}|x[0-9a-fA-F]{2}|.)|[^\\'])'/u.exec(text.slice(i, i + 16))
    if (literal) return i + literal[0].length
    return -1
  }
  return -1
}

/** The index of the `}` matching the `{` at `open`. */
function matchingBrace(text, open) {
  let depth = 0
  let i = open
  while (i < text.length) {
    const skipped = skipNonCode(text, i)
    if (skipped !== -1) {
      i = skipped
      continue
    }
    if (text[i] === '{') depth++
    else if (text[i] === '}') {
      depth--
      if (depth === 0) return i
    }
    i++
  }
  throw new Error(`no closing brace for the one at offset ${open}`)
}

/**
 * The `#[cfg(test)] mod tests { ... }` module of a source file: `{start, end}` offsets (the
 * attributes included, `end` just past the closing brace), or null.
 */
function findTestModule(text) {
  const pattern = /^#\[cfg\(test\)\]\n(?:#!?\[[^\n]*\]\n)*mod tests \{/gm
  const match = pattern.exec(text)
  if (!match) return null
  const open = match.index + match[0].length - 1
  return { start: match.index, end: matchingBrace(text, open) + 1 }
}

/**
 * The items of a module body `text` (the text between its braces): `{start, end, head}` with
 * offsets into `text`, attributes included; `head` is the item's text without attributes,
 * trimmed to its first line. Inner attributes (`#![...]`) are skipped.
 */
function moduleItems(text) {
  const items = []
  let i = 0
  let itemStart = -1
  let depth = 0
  while (i < text.length) {
    const skipped = skipNonCode(text, i)
    if (skipped !== -1) {
      i = skipped
      continue
    }
    const c = text[i]
    if (depth === 0 && itemStart === -1) {
      if (/\s/.test(c)) {
        i++
        continue
      }
      if (c === '#' && text[i + 1] === '!') {
        const close = text.indexOf(']', i)
        i = close + 1
        continue
      }
      itemStart = i
    }
    if (c === '{' || c === '(' || c === '[') depth++
    else if (c === '}' || c === ')' || c === ']') {
      depth--
      if (depth === 0 && c === '}') {
        // `struct X { .. }`, `fn f() { .. }`, `impl .. { .. }`, `mod m { .. }` end here; a
        // `let`-free module body has no other `}` at depth 0.
        const afterBrace = /^\s*;/.exec(text.slice(i + 1))
        const end = i + 1 + (afterBrace ? afterBrace[0].length : 0)
        items.push(makeItem(text, itemStart, end))
        itemStart = -1
        i = end
        continue
      }
    } else if (c === ';' && depth === 0) {
      items.push(makeItem(text, itemStart, i + 1))
      itemStart = -1
    }
    i++
  }
  return items
}

function makeItem(text, start, end) {
  const body = text.slice(start, end)
  const withoutAttributes = body.replace(/^(\s*#\[[^\n]*\]\s*)+/, '')
  const attributes = body.slice(0, body.length - withoutAttributes.length)
  return {
    start,
    end,
    head: withoutAttributes.split('\n')[0].trim(),
    isTest: /#\[test\]/.test(attributes),
  }
}

module.exports = { matchingBrace, findTestModule, moduleItems }
