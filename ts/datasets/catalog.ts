/**
 * The papers' datasets in the folder layouts of the official code (KaiyangZhou/CoOp, DATASETS.md
 * and datasets/*.py): a user with those folders only names the dataset. The splits, labels and
 * class names are the ones the official readers produce; nothing is downloaded.
 */
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { invalidArgument, nativeSync } from '../errors'
import {
  brokenReason,
  checkExist,
  checkNoDuplicates,
  checkNotEmpty,
  escapeControls,
  fileNotFound,
  isDirectory,
  listEntries,
  listNoHidden,
  plural,
  quote,
  someOf,
} from './checks'
import { listClassImages } from './folder'
import { loadSplitFile } from './split'
import type { DatasetSplits, LabelledDataset, SkippedFile } from './types'

export type DatasetName =
  | 'imagenet'
  | 'caltech101'
  | 'oxford_pets'
  | 'stanford_cars'
  | 'oxford_flowers'
  | 'food101'
  | 'fgvc_aircraft'
  | 'sun397'
  | 'dtd'
  | 'eurosat'
  | 'ucf101'
  | 'imagenetv2'
  | 'imagenet_sketch'
  | 'imagenet_a'
  | 'imagenet_r'

/**
 * How a catalog dataset is read:
 * - `split-file`: the official `split_zhou_<Name>.json` (train/val/test), paths under `imageDir`;
 * - `imagenet`: `classnames.txt` (folder, then name) and `images/train`, `images/val` with one
 *   folder per class; labels follow the sorted train folders; the val images are the test split;
 * - `fgvc-aircraft`: `variants.txt` (the class list) and `images_variant_{train,val,test}.txt`
 *   (image id, then class name), images `images/<id>.jpg`;
 * - `imagenetv2`: folders `0` .. `N-1` under `imageDir`, folder i being the i-th line of
 *   `classnames.txt`;
 * - `imagenet-folders`: ImageNet-Sketch, -A, -R: the sorted class folders under `imageDir` are the
 *   labels (A and R hold a subset of 200 classes), named through `classnames.txt`.
 */
export type CatalogLayout = 'split-file' | 'imagenet' | 'fgvc-aircraft' | 'imagenetv2' | 'imagenet-folders'

export interface CatalogEntry {
  /** The official reader's name (CoOp's datasets/*.py class, and the key of its template). */
  title: string
  /** The dataset's folder under the data root. */
  dir: string
  /** Where the images are, relative to `dir` ('' for `dir` itself). */
  imageDir: string
  /** The official split file in `dir` (`split-file` datasets). */
  splitFile?: string
  layout: CatalogLayout
  /** The hand-made zero-shot template (the official CUSTOM_TEMPLATES). */
  template: string
  /** How many classes the full dataset has. */
  classes: number
  /** Evaluation only (ImageNet's shifted variants): train is the test data, as in the official
   *  readers, and is not meant for learning. */
  testOnly: boolean
}

const PHOTO = 'a photo of a {}.'

function splitDataset(
  title: string,
  dir: string,
  imageDir: string,
  splitName: string,
  template: string,
  classes: number,
): CatalogEntry {
  return {
    title,
    dir,
    imageDir,
    splitFile: `split_zhou_${splitName}.json`,
    layout: 'split-file',
    template,
    classes,
    testOnly: false,
  }
}

function variant(title: string, dir: string, imageDir: string, layout: CatalogLayout, classes: number): CatalogEntry {
  return { title, dir, imageDir, layout, template: PHOTO, classes, testOnly: true }
}

export const DATASETS: Record<DatasetName, CatalogEntry> = {
  imagenet: {
    title: 'ImageNet',
    dir: 'imagenet',
    imageDir: 'images',
    layout: 'imagenet',
    template: PHOTO,
    classes: 1000,
    testOnly: false,
  },
  caltech101: splitDataset('Caltech101', 'caltech-101', '101_ObjectCategories', 'Caltech101', PHOTO, 100),
  oxford_pets: splitDataset('OxfordPets', 'oxford_pets', 'images', 'OxfordPets', 'a photo of a {}, a type of pet.', 37),
  // The split file's paths start with cars_train/ or cars_test/: its image root is the dataset folder.
  stanford_cars: splitDataset('StanfordCars', 'stanford_cars', '', 'StanfordCars', PHOTO, 196),
  oxford_flowers: splitDataset(
    'OxfordFlowers',
    'oxford_flowers',
    'jpg',
    'OxfordFlowers',
    'a photo of a {}, a type of flower.',
    102,
  ),
  food101: splitDataset('Food101', 'food-101', 'images', 'Food101', 'a photo of {}, a type of food.', 101),
  fgvc_aircraft: {
    title: 'FGVCAircraft',
    dir: 'fgvc_aircraft',
    imageDir: 'images',
    layout: 'fgvc-aircraft',
    template: 'a photo of a {}, a type of aircraft.',
    classes: 100,
    testOnly: false,
  },
  sun397: splitDataset('SUN397', 'sun397', 'SUN397', 'SUN397', PHOTO, 397),
  dtd: splitDataset('DescribableTextures', 'dtd', 'images', 'DescribableTextures', '{} texture.', 47),
  eurosat: splitDataset('EuroSAT', 'eurosat', '2750', 'EuroSAT', 'a centered satellite photo of {}.', 10),
  ucf101: splitDataset('UCF101', 'ucf101', 'UCF-101-midframes', 'UCF101', 'a photo of a person doing {}.', 101),
  imagenetv2: variant('ImageNetV2', 'imagenetv2', 'imagenetv2-matched-frequency-format-val', 'imagenetv2', 1000),
  imagenet_sketch: variant('ImageNetSketch', 'imagenet-sketch', 'images', 'imagenet-folders', 1000),
  imagenet_a: variant('ImageNetA', 'imagenet-adversarial', 'imagenet-a', 'imagenet-folders', 200),
  imagenet_r: variant('ImageNetR', 'imagenet-rendition', 'imagenet-r', 'imagenet-folders', 200),
}

const squash = (s: string) => s.toLowerCase().replace(/[-_\s]/g, '')

/** The catalog name `name` stands for: a key (`oxford_pets`), the official reader's name
 *  (`OxfordPets`) or the folder (`caltech-101`), in any case, with or without - and _. */
export function catalogName(name: string): DatasetName | undefined {
  if (typeof name !== 'string') return undefined
  if (name in DATASETS) return name as DatasetName
  const s = squash(name)
  for (const [key, e] of Object.entries(DATASETS)) {
    if (squash(key) === s || squash(e.title) === s || squash(e.dir) === s) return key as DatasetName
  }
  return undefined
}

/** `classnames.txt`: one `<folder> <class name>` a line, in ImageNet's label order (the names
 *  CLIP's authors cleaned, which the official code copies). */
export function readClassnames(path: string): Map<string, string> {
  if (!existsSync(path)) {
    throw fileNotFound(
      `${path} does not exist (ImageNet's class names; CoOp's DATASETS.md links it, and each variant needs a copy)`,
    )
  }
  const names = new Map<string, string>()
  for (const [i, raw] of nativeSync(() => readFileSync(path, 'utf8'))
    .split(/\r?\n/)
    .entries()) {
    const line = raw.trim()
    if (line === '') continue
    const sp = line.indexOf(' ')
    if (sp < 0) throw invalidArgument(`${path}:${i + 1}: expected "<folder> <class name>", got ${quote(line)}`)
    const folder = line.slice(0, sp)
    if (names.has(folder)) throw invalidArgument(`${path}:${i + 1}: folder ${folder} is listed twice`)
    names.set(folder, line.slice(sp + 1).trim())
  }
  if (names.size === 0) throw invalidArgument(`${path}: no class names`)
  return names
}

/** The class folders of `dir` in sorted order (files beside them are reported in `skipped`). */
function classFolders(dir: string, skipped: SkippedFile[]): string[] {
  if (!isDirectory(dir)) throw fileNotFound(`${dir} does not exist or is not a folder`)
  return listEntries(dir).flatMap(({ name, path, isDir, broken }) => {
    if (!isDir) skipped.push({ path, reason: broken ? brokenReason(path) : 'a file beside the class folders' })
    return isDir ? [name] : []
  })
}

/** The images of the folders `folders[label]` under `dir`. A class folder without images is an
 *  error here: the class list is the dataset's, and a class the data lacks means broken data. */
function readFolders(dir: string, folders: string[], skipped: SkippedFile[], classNames: string[]): LabelledDataset {
  const images: string[] = []
  const labels: number[] = []
  const empty: string[] = []
  for (const [label, folder] of folders.entries()) {
    const files = listClassImages(join(dir, folder), skipped)
    if (files.length === 0) empty.push(folder)
    for (const f of files) {
      images.push(f)
      labels.push(label)
    }
  }
  if (empty.length > 0)
    throw invalidArgument(
      `${dir}: ${plural(empty.length, 'class folder')} ${empty.length === 1 ? 'has' : 'have'} no images: ${someOf(empty.map(escapeControls))}`,
    )
  checkNotEmpty(images.length, dir)
  return { images, labels, classNames }
}

function nameFolders(folders: string[], names: Map<string, string>, dir: string, file: string): string[] {
  const unknown = folders.filter((f) => !names.has(f))
  if (unknown.length > 0) {
    throw invalidArgument(
      `${dir}: ${plural(unknown.length, 'class folder')} ${unknown.length === 1 ? 'is' : 'are'} not in ${file}: ${someOf(unknown.map(escapeControls))}`,
    )
  }
  return folders.map((f) => names.get(f) as string)
}

function loadImagenet(dir: string, e: CatalogEntry): Omit<DatasetSplits, 'name' | 'template'> {
  const classnamesFile = join(dir, 'classnames.txt')
  const names = readClassnames(classnamesFile)
  const skipped: SkippedFile[] = []
  const trainDir = join(dir, e.imageDir, 'train')
  const testDir = join(dir, e.imageDir, 'val')
  const folders = classFolders(trainDir, skipped)
  const classNames = nameFolders(folders, names, trainDir, classnamesFile)
  const train = readFolders(trainDir, folders, skipped, classNames)
  // The official reader labels val by its own sorted folders, the same as train's when both are
  // complete; labelling by train's folders keeps the two consistent when val lacks a class.
  const testFolders = classFolders(testDir, skipped)
  const index = new Map(folders.map((f, i) => [f, i]))
  const extra = testFolders.filter((f) => !index.has(f))
  if (extra.length > 0)
    throw invalidArgument(
      `${testDir}: ${extra.length === 1 ? 'a class folder' : 'class folders'} not in ${trainDir}: ${someOf(extra.map(escapeControls))}`,
    )
  const byFolder = readFolders(testDir, testFolders, skipped, classNames)
  const test = { ...byFolder, labels: byFolder.labels.map((l) => index.get(testFolders[l]) as number) }
  // No val split: the official code evaluates on val as its test set; few-shot validation draws
  // from the train images left over (see fewShotSplits).
  return { classNames, train, test, skipped }
}

/** One of FGVCAircraft's `images_variant_<part>.txt`: `<image id> <variant name>` a line. */
function readAircraftPart(
  dir: string,
  e: CatalogEntry,
  part: string,
  index: Map<string, number>,
  classNames: string[],
) {
  const file = join(dir, `images_variant_${part}.txt`)
  if (!existsSync(file)) throw fileNotFound(`${file} does not exist (FGVCAircraft's ${part} list)`)
  const images: string[] = []
  const labels: number[] = []
  const lines: number[] = []
  for (const [i, raw] of nativeSync(() => readFileSync(file, 'utf8'))
    .split(/\r?\n/)
    .entries()) {
    const line = raw.trim()
    if (line === '') continue
    const sp = line.indexOf(' ')
    if (sp < 0) throw invalidArgument(`${file}:${i + 1}: expected "<image id> <variant>", got ${quote(line)}`)
    const name = line.slice(sp + 1)
    const label = index.get(name)
    if (label === undefined) throw invalidArgument(`${file}:${i + 1}: variant ${quote(name)} is not in variants.txt`)
    images.push(join(dir, e.imageDir, `${line.slice(0, sp)}.jpg`))
    labels.push(label)
    lines.push(i + 1)
  }
  checkNotEmpty(images.length, file)
  checkNoDuplicates(images, file, (j) => `line ${lines[j]}`)
  checkExist(images, file)
  return { images, labels, classNames }
}

function loadAircraft(dir: string, e: CatalogEntry): Omit<DatasetSplits, 'name' | 'template'> {
  const variantsFile = join(dir, 'variants.txt')
  if (!existsSync(variantsFile)) throw fileNotFound(`${variantsFile} does not exist (FGVCAircraft's class list)`)
  const classNames = nativeSync(() => readFileSync(variantsFile, 'utf8'))
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l !== '')
  checkNotEmpty(classNames.length, variantsFile)
  const index = new Map(classNames.map((c, i) => [c, i]))
  const [train, val, test] = ['train', 'val', 'test'].map((p) => readAircraftPart(dir, e, p, index, classNames))
  const seen = new Set([...train.labels, ...val.labels, ...test.labels])
  const empty = classNames.filter((_, i) => !seen.has(i))
  if (empty.length > 0)
    throw invalidArgument(
      `${variantsFile}: ${plural(empty.length, 'variant')} ${empty.length === 1 ? 'has' : 'have'} no images: ${someOf(empty.map(escapeControls))}`,
    )
  return { classNames, train, val, test, skipped: [] }
}

function loadImagenetV2(dir: string, e: CatalogEntry): Omit<DatasetSplits, 'name' | 'template'> {
  const names = readClassnames(join(dir, 'classnames.txt'))
  const classNames = [...names.values()]
  const imageDir = join(dir, e.imageDir)
  if (!isDirectory(imageDir)) throw fileNotFound(`${imageDir} does not exist or is not a folder`)
  const folders = classNames.map((_, i) => String(i))
  const missing = folders.filter((f) => !isDirectory(join(imageDir, f)))
  if (missing.length > 0)
    throw fileNotFound(
      `${imageDir}: ${plural(missing.length, 'class folder')} ${missing.length === 1 ? 'is' : 'are'} missing: ${someOf(missing)}`,
    )
  const skipped: SkippedFile[] = []
  const known = new Set(folders)
  for (const f of listNoHidden(imageDir)) {
    if (!known.has(f))
      skipped.push({ path: join(imageDir, f), reason: 'not a class folder (0 .. N-1 of classnames.txt)' })
  }
  const test = readFolders(imageDir, folders, skipped, classNames)
  return { classNames, train: test, test, skipped }
}

function loadImagenetFolders(dir: string, e: CatalogEntry): Omit<DatasetSplits, 'name' | 'template'> {
  const classnamesFile = join(dir, 'classnames.txt')
  const names = readClassnames(classnamesFile)
  const imageDir = join(dir, e.imageDir)
  const skipped: SkippedFile[] = []
  const folders = classFolders(imageDir, skipped)
  const classNames = nameFolders(folders, names, imageDir, classnamesFile)
  const test = readFolders(imageDir, folders, skipped, classNames)
  return { classNames, train: test, test, skipped }
}

/** A split file's parts without the empty ones: `val` and `test` are there when the source has them. */
export function nonEmpty(s: { train: LabelledDataset; val: LabelledDataset; test: LabelledDataset }): {
  train: LabelledDataset
  val?: LabelledDataset
  test?: LabelledDataset
} {
  return {
    train: s.train,
    ...(s.val.images.length > 0 ? { val: s.val } : {}),
    ...(s.test.images.length > 0 ? { test: s.test } : {}),
  }
}

/**
 * A catalog dataset under the data root `root` (the official code's `$DATA`), e.g.
 * `loadDataset('oxford_pets', '/data')` reads `/data/oxford_pets/split_zhou_OxfordPets.json` and the
 * images under `/data/oxford_pets/images`. The layouts are CoOp's DATASETS.md; see `DATASETS`.
 */
export function loadDataset(name: DatasetName, root: string): DatasetSplits {
  const key = catalogName(name)
  if (!key) {
    throw invalidArgument(`unknown dataset "${name}": the catalog has ${Object.keys(DATASETS).join(', ')}`)
  }
  const e = DATASETS[key]
  const dir = join(root, e.dir)
  if (!existsSync(dir)) {
    throw fileNotFound(
      `${key}: ${dir} does not exist (the ${e.title} folder under the data root ${root}, as in CoOp's DATASETS.md)`,
    )
  }
  let splits: Omit<DatasetSplits, 'name' | 'template'>
  if (e.layout === 'split-file') {
    const json = join(dir, e.splitFile as string)
    if (!existsSync(json)) {
      throw fileNotFound(`${key}: ${json} does not exist (the official split file, linked from CoOp's DATASETS.md)`)
    }
    const s = loadSplitFile(json, join(dir, e.imageDir))
    splits = { classNames: s.train.classNames, ...nonEmpty(s), skipped: [] }
  } else if (e.layout === 'imagenet') splits = loadImagenet(dir, e)
  else if (e.layout === 'fgvc-aircraft') splits = loadAircraft(dir, e)
  else if (e.layout === 'imagenetv2') splits = loadImagenetV2(dir, e)
  else splits = loadImagenetFolders(dir, e)
  return { name: key, template: e.template, ...splits }
}
