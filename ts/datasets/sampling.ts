/**
 * The papers' sampling protocols: K images per class with a seed (train K, validation min(K, 4)),
 * and the base-to-new split of the classes. Linear in the dataset's size, so that sampling
 * ImageNet's 1.28M images costs a pass over the labels, not a sort or a shuffle of each class.
 */
import { invalidArgument } from '../errors'
import type { ImageInput } from '../options'
import { plural } from './checks'
import type { DatasetSplits, LabelledDataset } from './types'

type Labelled = { images: ImageInput[]; labels: number[] }

/** @internal Seeded PRNG (mulberry32): the same stream on every platform and Node version, unlike
 *  Math.random, so a seed names one sample everywhere. */
export function rng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

function checkShots(shots: number): void {
  if (!Number.isInteger(shots) || shots < 1) throw invalidArgument(`shots must be a positive integer, got ${shots}`)
}

function checkLabelled(data: Labelled, what: string): void {
  if (!data || !Array.isArray(data.images) || !Array.isArray(data.labels)) {
    throw invalidArgument(`${what}: expected { images, labels } arrays`)
  }
  if (data.images.length !== data.labels.length) {
    throw invalidArgument(`${what}: ${plural(data.images.length, 'image')} but ${plural(data.labels.length, 'label')}`)
  }
}

/**
 * The indices of `shots` images per class drawn with `random` (all of a class with fewer, in their
 * order, drawing nothing), classes in ascending label order. One pass groups the indices by class;
 * then a partial Fisher–Yates makes K draws per class: O(n + classes * K), never a shuffle of a
 * whole class.
 */
function sampleIndices(labels: number[], shots: number, random: () => number): number[] {
  const byClass = new Map<number, number[]>()
  for (let i = 0; i < labels.length; i++) {
    const l = labels[i]
    const members = byClass.get(l)
    if (members) members.push(i)
    else byClass.set(l, [i])
  }
  const picked: number[] = []
  for (const l of [...byClass.keys()].sort((a, b) => a - b)) {
    const idx = byClass.get(l) as number[]
    const n = idx.length
    if (n <= shots) {
      for (const i of idx) picked.push(i)
      continue
    }
    for (let i = 0; i < shots; i++) {
      const j = i + Math.floor(random() * (n - i))
      const t = idx[i]
      idx[i] = idx[j]
      idx[j] = t
      picked.push(idx[i])
    }
  }
  return picked
}

function take<T extends Labelled>(data: T, keep: number[]): T {
  return { ...data, images: keep.map((i) => data.images[i]), labels: keep.map((i) => data.labels[i]) }
}

/** The few-shot protocol: `shots` random images per class (all of a class with fewer), seeded. */
export function fewShot<T extends Labelled>(data: T, shots: number, seed = 1): T {
  checkShots(shots)
  checkLabelled(data, 'fewShot')
  return take(data, sampleIndices(data.labels, shots, rng(seed)))
}

/** The images of `data` that are not in `picked` (by identity: the same path string, Buffer or raw
 *  image object), e.g. the pool a validation draw comes from. One pass over each. */
export function without<T extends Labelled>(data: T, picked: T): T {
  const taken = new Set(picked.images)
  const keep: number[] = []
  for (let i = 0; i < data.images.length; i++) if (!taken.has(data.images[i])) keep.push(i)
  return take(data, keep)
}

/**
 * The few-shot train and validation sets of one seed, as the official code draws them: train K
 * per class, then validation min(K, 4) per class from the source's val split, or, when it has none
 * or an empty one (ImageNet, a folder of classes), from the train images not picked, so the two never share an
 * image. One generator serves both draws, train first.
 */
export function fewShotSplits(
  splits: DatasetSplits,
  shots: number,
  seed: number,
): { train: LabelledDataset; val: LabelledDataset } {
  checkShots(shots)
  checkLabelled(splits?.train, 'fewShotSplits (train)')
  const random = rng(seed)
  const trainIdx = sampleIndices(splits.train.labels, shots, random)
  const train = take(splits.train, trainIdx)
  const valShots = Math.min(shots, 4)
  if (splits.val && splits.val.images.length > 0) {
    checkLabelled(splits.val, 'fewShotSplits (val)')
    return { train, val: take(splits.val, sampleIndices(splits.val.labels, valShots, random)) }
  }
  const taken = new Uint8Array(splits.train.labels.length)
  for (const i of trainIdx) taken[i] = 1
  const rest: number[] = []
  for (let i = 0; i < taken.length; i++) if (!taken[i]) rest.push(i)
  const restLabels = rest.map((i) => splits.train.labels[i])
  const valIdx = sampleIndices(restLabels, valShots, random).map((j) => rest[j])
  return { train, val: take(splits.train, valIdx) }
}

/** The base-to-new protocol: sorted labels, base = the first ceil(n / 2) classes, new = the rest,
 *  each relabelled from 0. */
export function baseToNew<T extends LabelledDataset>(data: T): { base: T; novel: T } {
  const k = data.classNames.length
  const cut = Math.ceil(k / 2)
  const part = (from: number, to: number): T => {
    const keep: number[] = []
    for (let i = 0; i < data.labels.length; i++) if (data.labels[i] >= from && data.labels[i] < to) keep.push(i)
    return {
      ...data,
      images: keep.map((i) => data.images[i]),
      labels: keep.map((i) => data.labels[i] - from),
      classNames: data.classNames.slice(from, to),
    }
  }
  return { base: part(0, cut), novel: part(cut, k) }
}
