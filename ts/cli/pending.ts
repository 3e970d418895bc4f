/**
 * Stand-ins for APIs that other branches are adding, each marked TODO(merge) with what replaces
 * it. Nothing else in ts/cli/ depends on how these are done.
 */
import { existsSync, statSync } from 'node:fs'
import { basename, dirname, extname, join } from 'node:path'
import type { EncodeImagesOptions, ZeroShotOptions } from '../clip'
import { fewShot, type LabelledDataset, loadImageFolder as loadClassFolders, loadSplitFile, without } from '../datasets'
import { PromptclipError } from '../errors'
import type { EvaluateOptions } from '../evaluate'
import type { TrainOptions, TrainSummary } from '../train'
import type { ImageProgress } from './progress'

// ---------------------------------------------------------------------------------------------
// TODO(merge): ts/datasets/ (in progress on another branch) exports `openDataset`,
// `fewShotSplits` and `DatasetSplits` with exactly these signatures. On merge, delete this block
// and import them: `import { type DatasetSplits, fewShotSplits, openDataset } from '../datasets'`.
// This stand-in covers image folders (class sub-folders, or train/ test/ [val/] of class
// sub-folders) and split_zhou_*.json files; catalog names and CSV files come with the real one.
// (`skipped` is always empty here.)

export interface DatasetSplits {
  name: string
  classNames: string[]
  train: LabelledDataset
  val?: LabelledDataset
  test?: LabelledDataset
  template?: string
  skipped: { path: string; reason: string }[]
}

export function openDataset(source: string, options: { imageRoot?: string; root?: string } = {}): DatasetSplits {
  if (!existsSync(source)) {
    throw new PromptclipError(
      'E_FILE_NOT_FOUND',
      `dataset ${source}: no such folder or file (catalog names need ts/datasets)`,
    )
  }
  const name = basename(source).replace(/\.[^.]*$/, '')
  if (statSync(source).isDirectory()) {
    const splitDirs = ['train', 'val', 'test'].filter((s) => existsSync(join(source, s)))
    if (splitDirs.includes('train') && splitDirs.includes('test')) {
      const part = (s: string) => (splitDirs.includes(s) ? loadClassFolders(join(source, s)) : undefined)
      const train = part('train') as LabelledDataset
      return { name, classNames: train.classNames, train, val: part('val'), test: part('test'), skipped: [] }
    }
    const train = loadClassFolders(source)
    return { name, classNames: train.classNames, train, skipped: [] }
  }
  if (extname(source).toLowerCase() === '.json') {
    const s = loadSplitFile(source, options.imageRoot ?? dirname(source))
    return { name, classNames: s.train.classNames, ...s, skipped: [] }
  }
  throw new PromptclipError('E_UNSUPPORTED', `dataset ${source}: CSV files need ts/datasets`)
}

export function fewShotSplits(
  splits: DatasetSplits,
  shots: number,
  seed: number,
): { train: LabelledDataset; val?: LabelledDataset } {
  const train = fewShot(splits.train, shots, seed)
  const pool = splits.val ?? without(splits.train, train)
  const val = pool.images.length > 0 ? fewShot(pool, Math.min(shots, 4), seed) : undefined
  return { train, val }
}
// end TODO(merge)
// ---------------------------------------------------------------------------------------------

// TODO(merge): `onProgress` ({ done, total, imagesPerSecond?, etaSeconds? }) joins ZeroShotOptions,
// EncodeImagesOptions and EvaluateOptions on the core branch. On merge, pass it directly
// (`{ ...options, onProgress }`) and delete this cast; until then those calls draw no bar.
export function withImageProgress<T extends ZeroShotOptions | EncodeImagesOptions | EvaluateOptions>(
  options: T,
  onProgress: (p: ImageProgress) => void,
): T {
  return { ...options, onProgress } as T
}

// TODO(merge): `skipUnreadable` joins TrainOptions and `skipped` TrainSummary on the core branch.
// On merge, use them directly and delete these two.
export function withSkipUnreadable(options: TrainOptions, skipUnreadable: boolean | undefined): TrainOptions {
  return skipUnreadable === undefined ? options : ({ ...options, skipUnreadable } as TrainOptions)
}
export function skippedOf(summary: TrainSummary): unknown {
  return (summary as { skipped?: unknown }).skipped
}
