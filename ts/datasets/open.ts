/** One entry point for every source a user may name: what the CLI and the protocols take. */
import { existsSync, readdirSync } from 'node:fs'
import { basename, dirname, extname, join } from 'node:path'
import { invalidArgument, nativeSync, PromptclipError } from '../errors'
import { cachedHubDataset, isHubDatasetUri } from '../hub/dataset'
import { catalogName, DATASETS, type DatasetName, loadDataset, nonEmpty } from './catalog'
import { isDirectory, requireExists } from './checks'
import { loadCsv } from './csv'
import { type FolderOptions, loadImageFolder, loadSplitFolders, splitFoldersOf } from './folder'
import { selectClasses } from './names'
import { loadSplitFile } from './split'
import type { DatasetSplits } from './types'

/** The data root of catalog names: `options.root`, else `$PROMPTCLIP_DATA`, else ./data. */
export function dataRoot(root?: string): string {
  return root ?? process.env.PROMPTCLIP_DATA ?? './data'
}

/** The catalog dataset whose official split file is called `file`. */
function bySplitFile(file: string): DatasetName | undefined {
  return (Object.keys(DATASETS) as DatasetName[]).find((k) => DATASETS[k].splitFile === file)
}

/**
 * The catalog dataset whose folder `dir` is: named as the catalog names it and holding that
 * dataset's split file or class list, or its image folder (then loading says what is missing,
 * rather than making classes of images/ and annotations/).
 */
function byCatalogFolder(dir: string): DatasetName | undefined {
  const name = basename(dir)
  return (Object.keys(DATASETS) as DatasetName[]).find((k) => {
    const e = DATASETS[k]
    if (e.dir !== name) return false
    const marker = e.splitFile ?? (e.layout === 'fgvc-aircraft' ? 'variants.txt' : 'classnames.txt')
    return existsSync(join(dir, marker)) || (e.imageDir !== '' && isDirectory(join(dir, e.imageDir)))
  })
}

function fromSplitFile(json: string, imageRoot?: string): DatasetSplits {
  const known = bySplitFile(basename(json))
  const root = imageRoot ?? (known ? join(dirname(json), DATASETS[known].imageDir) : dirname(json))
  const s = loadSplitFile(json, root)
  return {
    name: json,
    classNames: s.train.classNames,
    ...nonEmpty(s),
    ...(known ? { template: DATASETS[known].template } : {}),
    skipped: [],
  }
}

/**
 * A dataset from whatever `source` names:
 * - a catalog name (`oxford_pets`, `OxfordPets`, ...; see `DATASETS`), under the data root
 *   `options.root`, else `$PROMPTCLIP_DATA`, else ./data;
 * - a catalog dataset's own folder (`/data/oxford_pets`);
 * - a folder with train/ and val/ or test/ split folders (each one sub-folder per class);
 * - a folder holding one `split_zhou_*.json`: that split file;
 * - a folder with one sub-folder per class: train only;
 * - a split file `split_zhou_<Name>.json`, its images under `options.imageRoot`, else the catalog's
 *   image folder beside it when the name is a catalog dataset's (`images/` for OxfordPets), else
 *   its own folder;
 * - a `.csv` of path,label (paths relative to `options.imageRoot`, else to the CSV's folder):
 *   train only;
 * - `hf://datasets/<org>/<name>[@<revision>][/<sub-folder>]`, a hub dataset that `fetchDataset`
 *   put in the Hugging Face cache, read as any of the forms above.
 * Paths win over catalog names only when no catalog name matches, so `dtd` is the catalog dataset
 * even if ./dtd exists (name its path, `./dtd`, to read the folder).
 *
 * `options.classNamesFile` names the classes of an image folder's (or split folders') class folders
 * (see `loadImageFolder`); other sources carry their class names and refuse it. `options.classes`
 * keeps only the classes it names (matched ignoring case, the nearest name suggested for one that
 * matches nothing; see `selectClasses`), relabelled in the dataset's order.
 */
export function openDataset(
  source: string,
  options: { imageRoot?: string; root?: string; classes?: string[] } & FolderOptions = {},
): DatasetSplits {
  const splits = openSource(source, options ?? {})
  return options?.classes === undefined ? splits : selectClasses(splits, options.classes)
}

function openSource(source: string, options: { imageRoot?: string; root?: string } & FolderOptions): DatasetSplits {
  if (typeof source !== 'string' || source === '')
    throw invalidArgument('openDataset: source must be a non-empty string')
  const naming = options.classNamesFile
  const notHere = (what: string) => {
    if (naming !== undefined) {
      throw invalidArgument(
        `classNamesFile ${naming}: dataset ${source} is ${what}, which names its own classes; classNamesFile is for image folders`,
      )
    }
  }
  if (isHubDatasetUri(source)) {
    // Opened from the cache; fetching is asynchronous (`fetchDataset`, which the CLI and the
    // protocols call first).
    const local = cachedHubDataset(source)
    if (local === undefined) {
      throw new PromptclipError(
        'E_FILE_NOT_FOUND',
        `${source} is not in the Hugging Face cache yet: \`await fetchDataset('${source}')\` first (the CLI and runProtocol do)`,
      )
    }
    return { ...openSource(local, options), name: source }
  }
  const name = /[/\\]/.test(source) ? undefined : catalogName(source)
  if (name) {
    notHere('a catalog dataset')
    return loadDataset(name, dataRoot(options.root))
  }
  requireExists(
    source,
    'dataset',
    ` (a folder, a split_zhou_*.json, a .csv, or a catalog name: ${Object.keys(DATASETS).join(', ')})`,
  )
  if (isDirectory(source)) {
    const catalog = byCatalogFolder(source)
    if (catalog) {
      notHere('a catalog dataset')
      return { ...loadDataset(catalog, dirname(source)), name: source }
    }
    if (splitFoldersOf(source)) return loadSplitFolders(source, { classNamesFile: naming })
    const jsons = nativeSync(() => readdirSync(source)).filter((f) => /^split_zhou_.*\.json$/.test(f))
    if (jsons.length === 1) {
      notHere('a split file')
      return fromSplitFile(join(source, jsons[0]), options.imageRoot)
    }
    if (jsons.length > 1) throw invalidArgument(`${source} holds several split files (${jsons.join(', ')}): name one`)
    const { skipped, ...train } = loadImageFolder(source, { classNamesFile: naming })
    return { name: source, classNames: train.classNames, train, skipped }
  }
  const ext = extname(source).toLowerCase()
  if (ext === '.json') {
    notHere('a split file')
    return fromSplitFile(source, options.imageRoot)
  }
  if (ext === '.csv') {
    notHere('a CSV of path,label')
    const train = loadCsv(source, { imageRoot: options.imageRoot })
    return { name: source, classNames: train.classNames, train, skipped: [] }
  }
  throw invalidArgument(`dataset ${source}: expected a folder, a split_zhou_*.json or a .csv file`)
}
