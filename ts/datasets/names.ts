/**
 * Class names as users give them: a file mapping folder names to class names (`classNamesFile`),
 * and the choice of classes by name (`--classes`), matched regardless of case, with the nearest
 * name suggested for one that matches nothing.
 */
import { readFileSync } from 'node:fs'
import { extname } from 'node:path'
import { invalidArgument, nativeSync } from '../errors'
import { escapeControls, plural, quote, requireExists, someOf } from './checks'
import { parseCsv } from './csv'
import type { DatasetSplits, LabelledDataset } from './types'

/** A folder's class name and where the file gives it ("line 3", or "key \"cats\""). */
export type ClassNameMap = Map<string, { name: string; where: string }>

/**
 * A `classNamesFile`: folder name -> class name, either a JSON object (`{ "golden_retriever":
 * "golden retriever" }`) or, any other extension, `folder,name` lines (CSV: a name with a comma is
 * quoted; blank lines and lines starting with `#` are skipped; a `folder,name` header is allowed).
 * Errors name the file and the line or key.
 */
export function readClassNamesFile(file: string): ClassNameMap {
  requireExists(file, 'classNamesFile')
  const text = nativeSync(() => readFileSync(file, 'utf8'))
  const map: ClassNameMap = new Map()
  const add = (folder: string, name: string, where: string) => {
    if (folder === '') throw invalidArgument(`${file}: ${where}: empty folder name`)
    if (name === '') throw invalidArgument(`${file}: ${where}: empty class name for folder ${quote(folder)}`)
    const before = map.get(folder)
    if (before) throw invalidArgument(`${file}: ${where}: folder ${quote(folder)} is already named (${before.where})`)
    map.set(folder, { name, where })
  }
  if (extname(file).toLowerCase() === '.json') {
    let raw: unknown
    try {
      raw = JSON.parse(text)
    } catch (e) {
      throw invalidArgument(`${file}: not readable JSON (${(e as Error).message})`)
    }
    if (!raw || typeof raw !== 'object' || Array.isArray(raw)) {
      throw invalidArgument(`${file}: expected a JSON object { "folder": "class name", ... }`)
    }
    for (const [folder, name] of Object.entries(raw as Record<string, unknown>)) {
      const where = `key ${quote(folder)}`
      if (typeof name !== 'string') {
        throw invalidArgument(`${file}: ${where}: the class name must be a string, got ${JSON.stringify(name)}`)
      }
      add(folder, name.trim(), where)
    }
  } else {
    const records = parseCsv(text, file)
    for (const [i, { line, fields }] of records.entries()) {
      if (fields[0].trimStart().startsWith('#')) continue
      if (fields.length !== 2) {
        throw invalidArgument(`${file}:${line}: expected 2 columns folder,name, found ${fields.length}`)
      }
      const [folder, name] = fields.map((f) => f.trim())
      if (i === 0 && folder.toLowerCase() === 'folder' && /^(class_?)?name$/i.test(name)) continue
      add(folder, name, `line ${line}`)
    }
  }
  if (map.size === 0) throw invalidArgument(`${file}: no folder names class names`)
  return map
}

/** The class names of `folders` through `map` (a folder the map does not name keeps its name).
 *  With `known`, every folder the map names must be one of them: a key that names no folder is a
 *  typo, reported with the nearest folder. Two folders may not end up with one name. */
export function applyClassNames(
  folders: string[],
  map: ClassNameMap,
  file: string,
  dir: string,
  known?: string[],
): string[] {
  if (known) {
    const have = new Set(known)
    const unknown = [...map.entries()].filter(([f]) => !have.has(f))
    if (unknown.length > 0) {
      const [folder, { where }] = unknown[0]
      const more =
        unknown.length > 1
          ? ` (and ${plural(unknown.length - 1, 'other')}: ${someOf(unknown.slice(1).map(([f]) => quote(f)))})`
          : ''
      throw invalidArgument(
        `${file}: ${where}: ${escapeControls(dir)} has no class folder ${quote(folder)}${didYouMean(folder, known)}${more}`,
      )
    }
  }
  const names = folders.map((f) => map.get(f)?.name ?? f)
  const first = new Map<string, number>()
  for (const [i, n] of names.entries()) {
    const j = first.get(n)
    if (j !== undefined) {
      throw invalidArgument(
        `${file}: folders ${quote(folders[j])} and ${quote(folders[i])} of ${escapeControls(dir)} both get the class name ${quote(n)}`,
      )
    }
    first.set(n, i)
  }
  return names
}

/** The edit distance of `a` and `b` (insertions, deletions, substitutions), two rows of the table. */
export function levenshtein(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const row = [i]
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1))
    }
    prev = row
  }
  return prev[b.length]
}

/** The name of `names` nearest to `name` (ignoring case), when it is near enough to be a typo. */
export function nearest(name: string, names: string[]): string | undefined {
  const key = name.toLowerCase()
  let best: { name: string; d: number } | undefined
  for (const n of names) {
    const d = levenshtein(key, n.toLowerCase())
    if (!best || d < best.d) best = { name: n, d }
  }
  return best && best.d <= Math.max(2, Math.floor(key.length / 3)) ? best.name : undefined
}

function didYouMean(name: string, names: string[]): string {
  const n = nearest(name, names)
  return n === undefined ? '' : `; did you mean ${quote(n)}?`
}

/** How a requested name is compared: case ignored, `_` read as a space (as prompts read it). */
const fold = (s: string) => s.toLowerCase().replace(/_/g, ' ').replace(/\s+/g, ' ').trim()

/**
 * The labels of the classes `wanted` names in `classNames`: a name as given first, else the one
 * that matches ignoring case (and `_` against a space). A name that matches nothing, or matches
 * several, is refused: `no class "gloden_retriever"; did you mean "golden_retriever"?`.
 */
export function classIndices(wanted: string[], classNames: string[], source: string): number[] {
  if (!Array.isArray(wanted) || wanted.length === 0 || wanted.some((w) => typeof w !== 'string' || w.trim() === '')) {
    throw invalidArgument(`${escapeControls(source)}: classes must be a non-empty list of class names`)
  }
  const exact = new Map(classNames.map((c, i) => [c, i]))
  const folded = new Map<string, number[]>()
  for (const [i, c] of classNames.entries()) folded.set(fold(c), [...(folded.get(fold(c)) ?? []), i])
  const picked: number[] = []
  for (const w of wanted) {
    const name = w.trim()
    let i = exact.get(name)
    if (i === undefined) {
      const all = folded.get(fold(name)) ?? []
      if (all.length > 1) {
        throw invalidArgument(
          `${escapeControls(source)}: class ${quote(name)} matches ${all.map((j) => quote(classNames[j])).join(' and ')}; give it as written`,
        )
      }
      i = all[0]
    }
    if (i === undefined) {
      const hint = didYouMean(name, classNames)
      const list = hint || ` (the ${plural(classNames.length, 'class', 'classes')}: ${someOf(classNames.map(quote))})`
      throw invalidArgument(`${escapeControls(source)}: no class ${quote(name)}${list}`)
    }
    if (picked.includes(i)) throw invalidArgument(`${escapeControls(source)}: class ${quote(name)} is asked for twice`)
    picked.push(i)
  }
  return picked
}

/** The images of `data` whose labels are in `keep` (old labels, in the new order), relabelled. */
function subset(data: LabelledDataset, keep: number[], classNames: string[]): LabelledDataset {
  const to = new Map(keep.map((old, i) => [old, i]))
  const images: LabelledDataset['images'] = []
  const labels: number[] = []
  for (let i = 0; i < data.labels.length; i++) {
    const l = to.get(data.labels[i])
    if (l !== undefined) {
      images.push(data.images[i])
      labels.push(l)
    }
  }
  return { ...data, images, labels, classNames }
}

/**
 * The classes of `splits` that `wanted` names (see `classIndices`), every split cut to them and
 * relabelled 0..n-1 in the dataset's own order (so that the same choice in any order is the same
 * dataset). Names are matched to the dataset's class names (the folder names of an image folder,
 * or the names its classNamesFile gives).
 */
export function selectClasses(splits: DatasetSplits, wanted: string[]): DatasetSplits {
  const keep = classIndices(wanted, splits.classNames, splits.name).sort((a, b) => a - b)
  const classNames = keep.map((i) => splits.classNames[i])
  return {
    ...splits,
    classNames,
    train: subset(splits.train, keep, classNames),
    ...(splits.val ? { val: subset(splits.val, keep, classNames) } : {}),
    ...(splits.test ? { test: subset(splits.test, keep, classNames) } : {}),
  }
}
