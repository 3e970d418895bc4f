/**
 * The checks every loader shares, so that bad data fails at load time with one message naming the
 * file, the entry and the value, instead of deep inside training (a missing image found after an
 * hour of feature extraction, a label that silently indexes the wrong class).
 */
import { existsSync, readdirSync, statSync } from 'node:fs'
import { isAbsolute, join, normalize, sep } from 'node:path'
import { invalidArgument, nativeSync, PromptclipError } from '../errors'
import type { LabelledDataset } from './types'

export { IMAGE_EXT } from './extensions'

/** How many offending entries a message lists before it only counts them. */
const EXAMPLES = 5

export function fileNotFound(message: string): PromptclipError {
  return new PromptclipError('E_FILE_NOT_FOUND', message)
}

/** A list for a message: the first few values and how many more there are. */
export function someOf(values: string[]): string {
  const shown = values.slice(0, EXAMPLES).join(', ')
  return values.length > EXAMPLES ? `${shown} and ${values.length - EXAMPLES} more` : shown
}

export function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory()
  } catch {
    return false
  }
}

export function requireDirectory(path: string, what: string): void {
  if (!existsSync(path)) throw fileNotFound(`${what} ${path} does not exist`)
  if (!isDirectory(path)) throw invalidArgument(`${what} ${path} is not a folder`)
}

/** A folder's entries without hidden files (dotfiles: .DS_Store, ._* from macOS archives), sorted
 *  by code unit as Python's sorted() sorts the official readers' listings. */
export function listNoHidden(dir: string): string[] {
  return nativeSync(() => readdirSync(dir))
    .filter((f) => !f.startsWith('.'))
    .sort()
}

/** A folder's non-hidden entries, sorted, each with whether it is a folder. The directory entry's
 *  own type saves a stat per file (ImageNet's train split is 1.28M files); a symbolic link, which
 *  DATASETS.md suggests for datasets kept elsewhere, is followed, and one whose target is gone is
 *  marked `broken` (callers skip and report it: listed as an image, it would fail only when read,
 *  deep inside training). */
export function listEntries(dir: string): { name: string; path: string; isDir: boolean; broken?: true }[] {
  return nativeSync(() => readdirSync(dir, { withFileTypes: true }))
    .filter((e) => !e.name.startsWith('.'))
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
    .map((e) => {
      const path = join(dir, e.name)
      if (!e.isSymbolicLink()) return { name: e.name, path, isDir: e.isDirectory() }
      const target = targetOf(path)
      return target
        ? { name: e.name, path, isDir: target.isDirectory() }
        : { name: e.name, path, isDir: false, broken: true }
    })
}

/** What a symbolic link points to, or undefined when that does not exist (or loops). */
function targetOf(path: string): { isDirectory(): boolean } | undefined {
  try {
    return statSync(path)
  } catch {
    return undefined
  }
}

/** The reason a broken symbolic link is skipped. */
export const BROKEN_LINK = 'a broken symbolic link (its target does not exist)'

/**
 * A split file's relative path may not leave its image root: `../x` or an absolute path would read
 * images from anywhere, and a path like that in a downloaded split file is a mistake or worse.
 */
export function escapesRoot(rel: string): boolean {
  if (isAbsolute(rel) || /^[a-zA-Z]:/.test(rel) || rel.startsWith('\\')) return true
  const n = normalize(rel)
  return n === '..' || n.startsWith(`..${sep}`) || n.startsWith('../')
}

/** Every path must exist (checked once, at load time); the error says which and how many. */
export function checkExist(paths: string[], source: string): void {
  const missing = paths.filter((p) => !existsSync(p))
  if (missing.length > 0) {
    throw fileNotFound(`${source}: ${missing.length} of ${paths.length} images do not exist: ${someOf(missing)}`)
  }
}

/** The same path twice (in one split or across splits) would count one image twice, or test on a
 *  training image. `where(i)` names entry i for the message. */
export function checkNoDuplicates(paths: string[], source: string, where: (i: number) => string): void {
  const first = new Map<string, number>()
  for (const [i, p] of paths.entries()) {
    const j = first.get(p)
    if (j !== undefined) throw invalidArgument(`${source}: ${where(i)} repeats ${where(j)} (${p})`)
    first.set(p, i)
  }
}

/** Every class of the list must have at least one image: a class without any cannot be learned and
 *  usually means the class list and the data disagree. */
export function checkEveryClassHasImages(data: LabelledDataset, source: string): void {
  const count = new Array<number>(data.classNames.length).fill(0)
  for (const l of data.labels) count[l]++
  const empty = data.classNames.filter((_, i) => count[i] === 0)
  if (empty.length > 0) {
    throw invalidArgument(`${source}: ${empty.length} classes have no images: ${someOf(empty.map((c) => `"${c}"`))}`)
  }
}

export function checkNotEmpty(n: number, source: string): void {
  if (n === 0) throw invalidArgument(`${source}: the dataset is empty (no images)`)
}

/** Class names must be unique: two classes with one name get the same text prompt. */
export function checkUniqueNames(classNames: string[], source: string): void {
  const seen = new Set<string>()
  for (const c of classNames) {
    if (seen.has(c)) throw invalidArgument(`${source}: class name "${c}" appears twice in the class list`)
    seen.add(c)
  }
}
