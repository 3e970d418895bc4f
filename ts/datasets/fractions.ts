/**
 * A train/val/test split of a dataset that has only training images (a plain folder of classes):
 * seeded, stratified per class, and written as a split file so that the run can be reproduced.
 */
import { invalidArgument } from '../errors'
import { defaults } from '../options'
import { plural } from './checks'
import { rng } from './sampling'
import type { DatasetSplits, LabelledDataset } from './types'

export interface FractionOptions {
  /** The share of each class's images held out for testing, in [0, 1). */
  testFraction?: number
  /** The share of each class's images held out for validation, in [0, 1). */
  valFraction?: number
  /** The seed of the draw (default 1): the same seed gives the same split everywhere. */
  seed?: number
}

function checkFraction(value: number | undefined, name: string): number {
  if (value === undefined) return 0
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || value >= 1) {
    throw invalidArgument(`${name} must be a number from 0 up to (not including) 1, got ${String(value)}`)
  }
  return value
}

/**
 * How many of a class's `n` images go to test and to validation: round(n * fraction) each, at
 * least one where the fraction is above 0 and the class can spare it, never the class's last
 * training image.
 */
function counts(n: number, test: number, val: number): { test: number; val: number } {
  let t = test > 0 ? Math.max(1, Math.round(n * test)) : 0
  let v = val > 0 ? Math.max(1, Math.round(n * val)) : 0
  // One image stays for training; validation gives way first, then test.
  while (t + v > n - 1 && v > 0) v--
  while (t + v > n - 1 && t > 0) t--
  return { test: t, val: v }
}

/**
 * Holds out `testFraction` and `valFraction` of every class's training images (seeded,
 * stratified per class), for a dataset without a test or validation split of its own. A class
 * with too few images keeps one for training: it gets fewer held-out images, or none. A split the
 * dataset already has is refused rather than replaced.
 */
export function splitFractions(splits: DatasetSplits, options: FractionOptions): DatasetSplits {
  const test = checkFraction(options.testFraction, 'testFraction')
  const val = checkFraction(options.valFraction, 'valFraction')
  if (test + val >= 1) throw invalidArgument(`testFraction + valFraction must be below 1, got ${test + val}`)
  if (test > 0 && splits.test && splits.test.images.length > 0) {
    throw invalidArgument(
      `testFraction: dataset ${splits.name} already has a test split (${plural(splits.test.images.length, 'image')})`,
    )
  }
  if (val > 0 && splits.val && splits.val.images.length > 0) {
    throw invalidArgument(
      `valFraction: dataset ${splits.name} already has a validation split (${plural(splits.val.images.length, 'image')})`,
    )
  }
  const seed = options.seed ?? defaults().seed
  if (!Number.isInteger(seed) || seed < 0)
    throw invalidArgument(`seed must be a whole number of at least 0, got ${seed}`)
  const random = rng(seed)
  const { train } = splits
  const byClass = new Map<number, number[]>()
  for (let i = 0; i < train.labels.length; i++) {
    const members = byClass.get(train.labels[i])
    if (members) members.push(i)
    else byClass.set(train.labels[i], [i])
  }
  const part = { train: [] as number[], val: [] as number[], test: [] as number[] }
  for (const label of [...byClass.keys()].sort((a, b) => a - b)) {
    const idx = byClass.get(label) as number[]
    const c = counts(idx.length, test, val)
    // A partial Fisher–Yates over the class: the first c.test draws are its test images, the next
    // c.val its validation images; the rest train, in their original order.
    const held = c.test + c.val
    for (let i = 0; i < held; i++) {
      const j = i + Math.floor(random() * (idx.length - i))
      const t = idx[i]
      idx[i] = idx[j]
      idx[j] = t
    }
    part.test.push(...idx.slice(0, c.test))
    part.val.push(...idx.slice(c.test, held))
    part.train.push(...idx.slice(held))
  }
  const ordered = (keep: number[]): LabelledDataset => {
    keep.sort((a, b) => a - b)
    return {
      images: keep.map((i) => train.images[i]),
      labels: keep.map((i) => train.labels[i]),
      classNames: train.classNames,
    }
  }
  return {
    ...splits,
    train: ordered(part.train),
    ...(val > 0 ? { val: ordered(part.val) } : {}),
    ...(test > 0 ? { test: ordered(part.test) } : {}),
  }
}
