/** Datasets built from lists in memory, and the label rules CSV files share with them. */
import { invalidArgument } from '../errors'
import type { ImageInput } from '../options'
import {
  checkEveryClassHasImages,
  checkExist,
  checkNoDuplicates,
  checkNotEmpty,
  checkUniqueNames,
  plural,
} from './checks'
import type { LabelledDataset } from './types'

const INDEX = /^\d+$/

/**
 * Labels given as class names or as indices. With `classNames` a label is looked up by name first
 * (a class may be called "7"), then read as an index into the list; without it the sorted distinct
 * names become the classes (as a folder of classes sorts its sub-folders), and an index is refused:
 * it says nothing of what the class is called, and CLIP needs the names. Every class of the list
 * must have an image. `where(i)` names entry i for the message.
 */
export function labelsFor(
  raw: (string | number)[],
  classNames: string[] | undefined,
  source: string,
  where: (i: number) => string,
): { labels: number[]; classNames: string[] } {
  let names: string[]
  if (classNames) {
    if (!Array.isArray(classNames) || classNames.some((c) => typeof c !== 'string' || c === '')) {
      throw invalidArgument(`${source}: classNames must be a list of non-empty strings`)
    }
    checkUniqueNames(classNames, source)
    names = classNames
  } else {
    const i = raw.findIndex((l) => typeof l === 'number' || INDEX.test(l))
    if (i >= 0 && raw.every((l) => typeof l === 'number' || INDEX.test(l))) {
      throw invalidArgument(
        `${source}: the labels are class indices (${where(i)}: ${raw[i]}); give classNames, the names in label order`,
      )
    }
    const j = raw.findIndex((l) => typeof l === 'number')
    if (j >= 0) throw invalidArgument(`${where(j)}: label ${raw[j]} is an index, but no classNames were given`)
    names = [...new Set(raw as string[])].sort()
  }
  const index = new Map(names.map((c, i) => [c, i]))
  const labels = raw.map((l, i) => {
    if (typeof l === 'string') {
      const byName = index.get(l)
      if (byName !== undefined) return byName
      if (!INDEX.test(l)) {
        throw invalidArgument(
          `${where(i)}: label "${l}" is not in the class list (${plural(names.length, 'class', 'classes')})`,
        )
      }
    } else if (!Number.isInteger(l) || l < 0) {
      throw invalidArgument(`${where(i)}: label ${l} is not a class name or a non-negative integer index`)
    }
    const n = Number(l)
    if (n >= names.length) {
      throw invalidArgument(
        `${where(i)}: label ${l} is outside the class list (${plural(names.length, 'class', 'classes')}, indices 0..${names.length - 1})`,
      )
    }
    return n
  })
  checkEveryClassHasImages({ images: [], labels, classNames: names }, source)
  return { labels, classNames: names }
}

/**
 * A dataset from `{ image, label }` items: paths, encoded bytes or raw pixels, labelled by class
 * name or (with `classNames`) by index. Paths must exist and appear once.
 */
export function fromList(
  items: { image: ImageInput; label: string | number }[],
  classNames?: string[],
): LabelledDataset {
  if (!Array.isArray(items)) throw invalidArgument('fromList: items must be an array of { image, label }')
  for (const [i, item] of items.entries()) {
    if (!item || typeof item !== 'object' || item.image === undefined || item.image === null) {
      throw invalidArgument(`fromList: items[${i}] is not { image, label }`)
    }
    if (typeof item.label !== 'string' && typeof item.label !== 'number') {
      throw invalidArgument(`fromList: items[${i}].label must be a class name or an index, got ${typeof item.label}`)
    }
  }
  checkNotEmpty(items.length, 'fromList')
  const images = items.map((it) => it.image)
  const paths = images.flatMap((img, i) => (typeof img === 'string' ? [{ img, i }] : []))
  checkNoDuplicates(
    paths.map((p) => p.img),
    'fromList',
    (j) => `items[${paths[j].i}]`,
  )
  const { labels, classNames: names } = labelsFor(
    items.map((it) => it.label),
    classNames,
    'fromList',
    (i) => `fromList: items[${i}]`,
  )
  checkExist(
    paths.map((p) => p.img),
    'fromList',
  )
  return { images, labels, classNames: names }
}
