/** The official code's split files, `split_zhou_<Dataset>.json`. */
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { dirname, join, relative, sep } from 'node:path'
import { invalidArgument, nativeSync } from '../errors'
import { checkExist, checkNoDuplicates, checkNotEmpty, escapesRoot, fileNotFound, plural, quote } from './checks'
import type { DatasetSplits, LabelledDataset } from './types'

const PARTS = ['train', 'val', 'test'] as const
type Part = (typeof PARTS)[number]

/**
 * `{"train"|"val"|"test": [[relpath, label, classname], ...]}` with 0-based labels, paths relative
 * to `imageRoot`, read as the official reader reads it (the class names are the file's, already
 * cleaned by the code that wrote it). Checked at load time: every entry's shape, that each label
 * always carries the same name, that labels 0..K-1 all occur, that no path leaves the image root or
 * appears twice, and that every image exists.
 */
export function loadSplitFile(
  jsonPath: string,
  imageRoot: string,
): { train: LabelledDataset; val: LabelledDataset; test: LabelledDataset } {
  const text = nativeSync(() => readFileSync(jsonPath, 'utf8'))
  let raw: Record<string, unknown>
  try {
    raw = JSON.parse(text)
  } catch (e) {
    throw invalidArgument(`${jsonPath}: not a readable split file (${(e as Error).message})`)
  }
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) {
    throw invalidArgument(`${jsonPath}: a split file is an object with "train", "val" and "test" lists`)
  }
  const names = new Map<number, string>()
  /** The entry that first named each label, for a message about a later one that disagrees. */
  const where = new Map<number, string>()
  const entries: Record<Part, [string, number, string][]> = { train: [], val: [], test: [] }
  const lists = PARTS.map((part) => {
    const list = raw[part]
    if (list === undefined) throw invalidArgument(`${jsonPath}: missing the "${part}" list`)
    if (!Array.isArray(list)) {
      const got = list === null ? 'null' : typeof list === 'object' ? 'an object' : `a ${typeof list}`
      throw invalidArgument(`${jsonPath}: "${part}" is not a list of [relpath, label, classname] entries (got ${got})`)
    }
    return list as unknown[]
  })
  let [maxLabel, maxAt] = [-1, '']
  for (const [p, part] of PARTS.entries()) {
    for (const [i, item] of lists[p].entries()) {
      if (
        !Array.isArray(item) ||
        typeof item[0] !== 'string' ||
        item[0] === '' ||
        !Number.isInteger(item[1]) ||
        item[1] < 0 ||
        typeof item[2] !== 'string'
      ) {
        throw invalidArgument(
          `${jsonPath}: ${part}[${i}] is not [relpath, label, classname] (got ${JSON.stringify(item)})`,
        )
      }
      const [rel, label, name] = item as [string, number, string]
      if (escapesRoot(rel)) throw invalidArgument(`${jsonPath}: ${part}[${i}] path ${quote(rel)} leaves the image root`)
      if (label > maxLabel) [maxLabel, maxAt] = [label, `${part}[${i}]`]
      const known = names.get(label)
      if (known === undefined) {
        names.set(label, name)
        where.set(label, `${part}[${i}]`)
      } else if (known !== name) {
        throw invalidArgument(
          `${jsonPath}: ${part}[${i}] names label ${label} ${quote(name)}, elsewhere ${quote(known)} (${where.get(label)})`,
        )
      }
      entries[part].push([rel, label, name])
    }
  }
  checkNotEmpty(entries.train.length, `${jsonPath} (train)`)
  // Labels 0..K-1 must all occur. Missing ones are found by walking up from 0 only until a few
  // are listed, never by building a list K long: a label like 2e8 would size it (seconds and
  // gigabytes) before the check could say what is wrong.
  const k = maxLabel + 1
  const missing = k - names.size
  if (missing > 0) {
    const first: string[] = []
    for (let i = 0; first.length < 5 && i < k; i++) if (!names.has(i)) first.push(String(i))
    const more = missing > first.length ? ` and ${missing - first.length} more` : ''
    throw invalidArgument(
      `${jsonPath}: labels run to ${k - 1} (${maxAt}) but ${plural(missing, 'class', 'classes')} ${missing === 1 ? 'has' : 'have'} no images in any split: label${missing === 1 ? '' : 's'} ${first.join(', ')}${more}`,
    )
  }
  const classNames = Array.from({ length: k }, (_, i) => names.get(i) as string)
  const all = PARTS.flatMap((p) => entries[p].map(([rel], i) => ({ p, i, rel })))
  checkNoDuplicates(
    all.map((e) => e.rel),
    jsonPath,
    (j) => `${all[j].p}[${all[j].i}]`,
  )
  const absolute = all.map((e) => join(imageRoot, e.rel))
  // A wrong image root is the usual cause of missing images: say that rather than list them all.
  if (!existsSync(imageRoot)) throw fileNotFound(`${jsonPath}: the image root ${imageRoot} does not exist`)
  checkExist(absolute, `${jsonPath} (image root ${imageRoot})`)
  const part = (p: Part): LabelledDataset => ({
    images: entries[p].map(([rel]) => join(imageRoot, rel)),
    labels: entries[p].map(([, label]) => label),
    classNames,
  })
  return { train: part('train'), val: part('val'), test: part('test') }
}

/**
 * Writes `splits` as a split file that `loadSplitFile(path, imageRoot)` (and `--split` on the
 * command line) reads back: image paths relative to `imageRoot`, with `/` on every platform,
 * written atomically. Every image must be a file path under `imageRoot`.
 */
export function writeSplitFile(path: string, splits: DatasetSplits, imageRoot: string): void {
  const entries = (data: LabelledDataset | undefined, part: string) =>
    (data?.images ?? []).map((image, i) => {
      if (typeof image !== 'string') throw invalidArgument(`writeSplitFile: ${part}[${i}] is not a file path`)
      const rel = relative(imageRoot, image)
      if (rel === '' || escapesRoot(rel)) {
        throw invalidArgument(`writeSplitFile: ${part}[${i}] ${quote(image)} is not under the image root ${imageRoot}`)
      }
      const label = (data as LabelledDataset).labels[i]
      return [rel.split(sep).join('/'), label, splits.classNames[label]]
    })
  const body = {
    train: entries(splits.train, 'train'),
    val: entries(splits.val, 'val'),
    test: entries(splits.test, 'test'),
  }
  nativeSync(() => mkdirSync(dirname(path), { recursive: true }))
  const tmp = `${path}.${process.pid}.tmp`
  try {
    nativeSync(() => writeFileSync(tmp, `${JSON.stringify(body)}\n`))
    nativeSync(() => renameSync(tmp, path))
  } catch (err) {
    try {
      rmSync(tmp, { force: true })
    } catch {
      // Nothing was written there.
    }
    throw err
  }
}
