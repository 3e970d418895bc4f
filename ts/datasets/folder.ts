/** Image folders: one sub-folder per class, optionally under train/ val/ test/ split folders. */
import { join } from 'node:path'
import { invalidArgument } from '../errors'
import type { ImageInput } from '../options'
import { brokenReason, checkNotEmpty, isDirectory, listEntries, quote, requireDirectory } from './checks'
import { IMAGE_EXT, IMAGE_TYPES } from './extensions'
import { applyClassNames, type ClassNameMap, readClassNamesFile } from './names'
import type { DatasetSplits, LabelledDataset, SkippedFile } from './types'

/** Options of the image-folder loaders. */
export interface FolderOptions {
  /** A file naming the classes of the folders: a JSON object `{ "folder": "class name" }` or
   *  `folder,name` lines. A folder it does not name keeps its folder name; a folder it names that
   *  is not there is refused, with the nearest folder name. */
  classNamesFile?: string
}

/** A read classNamesFile and whether its folders must all be class folders of this one. */
interface Naming {
  file: string
  map: ClassNameMap
  checkKeys: boolean
}

/** Names of split folders: a dataset root holding these is not a folder of classes. */
export const SPLIT_FOLDERS = { train: 'train', val: ['val', 'validation', 'valid'], test: 'test' } as const

/** The split sub-folders of `dir`, when it is a dataset root with train/ and val/ or test/. */
export function splitFoldersOf(dir: string): { train: string; val?: string; test?: string } | undefined {
  const has = (n: string) => isDirectory(join(dir, n))
  if (!has(SPLIT_FOLDERS.train)) return undefined
  const val = SPLIT_FOLDERS.val.find(has)
  const test = has(SPLIT_FOLDERS.test) ? SPLIT_FOLDERS.test : undefined
  if (!val && !test) return undefined
  return {
    train: join(dir, SPLIT_FOLDERS.train),
    ...(val ? { val: join(dir, val) } : {}),
    ...(test ? { test: join(dir, test) } : {}),
  }
}

/**
 * The images of one class folder: the types the core decodes, in sorted order; anything else is
 * reported in `skipped` (not an error: archives often carry a README or a thumbnail index).
 */
export function listClassImages(classDir: string, skipped: SkippedFile[]): string[] {
  const images: string[] = []
  for (const { name, path, isDir, broken } of listEntries(classDir)) {
    if (broken) skipped.push({ path, reason: brokenReason(path) })
    else if (isDir) skipped.push({ path, reason: 'a folder inside a class folder (not searched)' })
    else if (IMAGE_EXT.test(name)) images.push(path)
    else {
      const ext = name.includes('.') ? name.slice(name.lastIndexOf('.')) : 'no extension'
      skipped.push({
        path,
        reason: `unsupported file type (${ext}); images are ${IMAGE_TYPES}`,
      })
    }
  }
  return images
}

/**
 * One sub-folder per class: the sorted folder names become labels 0..K-1. Files of other types,
 * files beside the class folders and class folders without images are left out and listed in
 * `skipped`; hidden files are ignored. A dataset root with train/ and test/ is refused (those are
 * splits, not classes): `openDataset` reads it. With `options.classNamesFile`, the class names are
 * the file's for the folders it names (folder names are not always class names: `n02099601`,
 * `golden_retriever` is prompted as "golden retriever" either way).
 */
export function loadImageFolder(
  dir: string,
  options: FolderOptions = {},
): LabelledDataset & { skipped: SkippedFile[] } {
  const file = options?.classNamesFile
  return readImageFolder(dir, file === undefined ? undefined : { file, map: readClassNamesFile(file), checkKeys: true })
}

function readImageFolder(dir: string, naming: Naming | undefined): LabelledDataset & { skipped: SkippedFile[] } {
  requireDirectory(dir, 'dataset folder')
  if (splitFoldersOf(dir)) {
    throw invalidArgument(
      `${dir} holds split folders (train/ and val/ or test/), not one folder per class; ` +
        'read it with openDataset(dir), which loads each split',
    )
  }
  const skipped: SkippedFile[] = []
  const classNames: string[] = []
  const images: ImageInput[] = []
  const labels: number[] = []
  const folders: string[] = []
  for (const { name, path, isDir, broken } of listEntries(dir)) {
    if (isDir) folders.push(name)
    if (broken) {
      skipped.push({ path, reason: brokenReason(path) })
      continue
    }
    if (!isDir) {
      skipped.push({ path, reason: 'a file beside the class folders (classes are sub-folders)' })
      continue
    }
    const files = listClassImages(path, skipped)
    if (files.length === 0) {
      skipped.push({ path, reason: 'a class folder without images (not made a class)' })
      continue
    }
    for (const f of files) {
      images.push(f)
      labels.push(classNames.length)
    }
    classNames.push(name)
  }
  if (classNames.length === 0) {
    throw invalidArgument(`${dir}: the dataset is empty (no class sub-folder holds an image of a supported type)`)
  }
  if (!naming) return { images, labels, classNames, skipped }
  const named = applyClassNames(classNames, naming.map, naming.file, dir, naming.checkKeys ? folders : undefined)
  return { images, labels, classNames: named, skipped }
}

/**
 * A dataset root with train/, val/ (or validation/) and test/ folders, each one sub-folder per class.
 * The class list is train's; val and test are labelled by class name, so a split may lack a class
 * but may not add one train does not have.
 */
export function loadSplitFolders(dir: string, options: FolderOptions = {}): DatasetSplits {
  const parts = splitFoldersOf(dir)
  if (!parts) throw invalidArgument(`${dir} has no train/ with val/ or test/ split folders`)
  const file = options?.classNamesFile
  const map = file === undefined ? undefined : readClassNamesFile(file)
  const naming = (checkKeys: boolean) => (file && map ? { file, map, checkKeys } : undefined)
  // The file's folders must be train's; val and test may lack a class.
  const train = readImageFolder(parts.train, naming(true))
  const skipped = [...train.skipped]
  const index = new Map(train.classNames.map((c, i) => [c, i]))
  const relabel = (splitDir: string): LabelledDataset => {
    const d = readImageFolder(splitDir, naming(false))
    skipped.push(...d.skipped)
    const extra = d.classNames.filter((c) => !index.has(c))
    if (extra.length > 0) {
      throw invalidArgument(
        `${splitDir}: ${extra.length === 1 ? 'a class' : 'classes'} not in ${parts.train}: ${extra.map(quote).join(', ')}`,
      )
    }
    const labels = d.labels.map((l) => index.get(d.classNames[l]) as number)
    checkNotEmpty(labels.length, splitDir)
    return { images: d.images, labels, classNames: train.classNames }
  }
  const { skipped: _, ...trainData } = train
  return {
    name: dir,
    classNames: train.classNames,
    train: trainData,
    ...(parts.val ? { val: relabel(parts.val) } : {}),
    ...(parts.test ? { test: relabel(parts.test) } : {}),
    skipped,
  }
}
