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

/** "1 class", "3 classes": a count and its noun, singular for one. */
export function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`
}

/** Characters a message must not echo raw: C0 and C1 controls (ESC starts a terminal's escape
 *  sequences), DEL, the line and paragraph separators and the bidirectional overrides. */
// biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g

/** `s` with its control characters written as `\uXXXX`, for a path in a message. */
export function escapeControls(s: string): string {
  return String(s).replace(CONTROL, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)
}

/** A name for a message: in double quotes, JSON-style, control characters escaped ("a\u001b[31m"). */
export function quote(s: string): string {
  return `"${escapeControls(String(s).replace(/\\/g, '\\\\').replace(/"/g, '\\"'))}"`
}

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

/** Why `path` cannot be opened: it does not exist, or it is a symbolic link that leads back to
 *  itself (ELOOP; existsSync reports that as missing, which sends the user looking for a file that
 *  is there). Undefined when it can be. */
export function unreachable(path: string): 'missing' | 'loop' | undefined {
  try {
    statSync(path)
    return undefined
  } catch (e) {
    return (e as { code?: string }).code === 'ELOOP' ? 'loop' : 'missing'
  }
}

/** `path` must exist: "<what> <path> does not exist" (E_FILE_NOT_FOUND), or for a symbolic link
 *  loop "... is a symbolic link loop (ELOOP)" (E_INVALID_ARGUMENT). */
export function requireExists(path: string, what: string, hint = ''): void {
  const why = unreachable(path)
  const subject = `${what ? `${what} ` : ''}${escapeControls(path)}`
  if (why === 'loop') {
    throw invalidArgument(`${subject} is a symbolic link loop (ELOOP: following it leads back to itself)`)
  }
  if (why === 'missing') throw fileNotFound(`${subject} does not exist${hint}`)
}

export function requireDirectory(path: string, what: string): void {
  requireExists(path, what)
  if (!isDirectory(path)) throw invalidArgument(`${what} ${escapeControls(path)} is not a folder`)
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

/** The reason a symbolic link that leads back to itself is skipped. */
export const LINK_LOOP = 'a symbolic link loop (ELOOP: following it leads back to itself)'

/** Why a broken entry of `listEntries` was skipped: a loop or a missing target. */
export function brokenReason(path: string): string {
  return unreachable(path) === 'loop' ? LINK_LOOP : BROKEN_LINK
}

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
    const verb = missing.length === 1 ? 'does' : 'do'
    throw fileNotFound(
      `${source}: ${missing.length} of ${plural(paths.length, 'image')} ${verb} not exist: ${someOf(missing.map(escapeControls))}`,
    )
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
    const verb = empty.length === 1 ? 'has' : 'have'
    throw invalidArgument(
      `${source}: ${plural(empty.length, 'class', 'classes')} ${verb} no images: ${someOf(empty.map(quote))}`,
    )
  }
}

/**
 * A classifier needs at least two classes: with one, every image is that class, training reaches
 * loss 0 at once and accuracy reads 100%, which says nothing. Counts the classes that have images
 * in `data` (a class list of two whose images are all of one class is one class too) and names
 * those found: `photos/: found 1 class ("cats"); a classifier needs at least two classes`.
 * Call it on the data a learner trains on.
 */
export function requireTwoClasses(data: { labels: number[]; classNames: string[] }, source: string): void {
  if (!data || !Array.isArray(data.classNames)) throw invalidArgument(`${source}: expected a dataset with classNames`)
  const labels = Array.isArray(data.labels) ? data.labels : []
  const present = [...new Set(labels)].sort((a, b) => a - b)
  const found = labels.length > 0 ? present.map((l) => data.classNames[l] ?? String(l)) : data.classNames
  if (found.length >= 2) return
  const what = found.length === 0 ? 'found no class' : `found 1 class (${quote(found[0])})`
  const listed =
    found.length < data.classNames.length
      ? ` (the class list has ${plural(data.classNames.length, 'class', 'classes')}, but the images are of ${found.length === 0 ? 'none' : 'one'})`
      : ''
  throw invalidArgument(`${escapeControls(source)}: ${what}${listed}; a classifier needs at least two classes`)
}

export function checkNotEmpty(n: number, source: string): void {
  if (n === 0) throw invalidArgument(`${source}: the dataset is empty (no images)`)
}

/** Class names must be unique: two classes with one name get the same text prompt. */
export function checkUniqueNames(classNames: string[], source: string): void {
  const seen = new Set<string>()
  for (const c of classNames) {
    if (seen.has(c)) throw invalidArgument(`${source}: class name ${quote(c)} appears twice in the class list`)
    seen.add(c)
  }
}
