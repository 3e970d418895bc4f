import { binding, type Native } from './binding'
import { type ErrorCode, invalidArgument, native, nativeSync } from './errors'

/** Decoded 8-bit pixels, row-major: 1 (grey), 3 (RGB) or 4 (RGBA) channels. */
export interface RawImage {
  width: number
  height: number
  channels: 1 | 3 | 4
  data: Uint8Array
}

/** An image: a file path, encoded JPEG / PNG / WebP bytes, or raw pixels. */
export type ImageInput = string | Uint8Array | RawImage

export type DeviceName = 'cpu' | 'cuda' | `cuda:${number}`

export type Precision = 'fp32' | 'fp16' | 'bf16'

export interface LoadOptions {
  /** Where to run: "cpu" (default), "cuda" or "cuda:N" (needs a CUDA build and a GPU). */
  device?: DeviceName
  /** Weights and activations: "fp32" (default; best on CPU), "fp16" or "bf16" (GPUs). Learned
   *  context stays fp32; training stops with E_NON_FINITE_LOSS if the loss overflows. */
  dtype?: Precision
}

export interface ModelInfo {
  embedDim: number
  imageSize: number
  patchSize: number
  contextLength: number
  vocabSize: number
  textWidth: number
  visionWidth: number
  textLayers: number
  visionLayers: number
  textActivation: string
  logitScale: number
  naming: 'huggingface' | 'openai'
  source: string
  device: string
  dtype: Precision
}

/** An input that could not be used, by its position in the call's `images` array. */
export interface ImageFailure {
  index: number
  code: ErrorCode
  message: string
}

export interface EncodeImagesOptions {
  /** Images per forward pass (default 32). */
  batchSize?: number
}

export interface EncodedImages {
  /** One embedding per input (not normalised), `null` where the input failed. */
  embeddings: (Float32Array | null)[]
  failures: ImageFailure[]
}

export interface ZeroShotOptions extends EncodeImagesOptions {
  /**
   * Prompt templates with `{}` for the class name. Several templates are ensembled by averaging
   * their normalised text features (CLIP's prompt ensembling). Default: ["a photo of a {}."].
   */
  templates?: string[]
  /** How many labels to return per image (default 5, at most the number of classes). */
  topK?: number
}

export interface LabelScore {
  label: string
  index: number
  probability: number
}

export interface ZeroShotPrediction {
  /** Position of the image in the input array. */
  index: number
  /** Class probabilities in `classNames` order; `null` when the image failed. */
  probabilities: Float32Array | null
  /** Best labels first; empty when the image failed. */
  top: LabelScore[]
  error?: ImageFailure
}

export const DEFAULT_TEMPLATE = 'a photo of a {}.'

/** @internal */
const asBuffer = (b: Uint8Array): Buffer => (Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength))

export function toNativeImages(images: ImageInput[]): (string | Buffer | Native.NativeRawImage)[] {
  if (!Array.isArray(images)) throw invalidArgument('images must be an array of file paths, Buffers or raw images')
  return images.map((img, i) => {
    if (typeof img === 'string') return img
    if (img instanceof Uint8Array) return asBuffer(img)
    if (img && typeof img === 'object' && img.data instanceof Uint8Array) {
      const { width, height, channels } = img
      if (![width, height].every((v) => Number.isInteger(v) && v > 0) || ![1, 3, 4].includes(channels)) {
        throw invalidArgument(`images[${i}]: raw images need positive integer width/height and 1, 3 or 4 channels`)
      }
      return { width, height, channels, data: asBuffer(img.data) }
    }
    throw invalidArgument(
      `images[${i}] must be a file path (string), a Buffer/Uint8Array or { width, height, channels, data }`,
    )
  })
}

/** @internal */
export function checkBatchSize(n: number | undefined): number | undefined {
  if (n !== undefined && (!Number.isInteger(n) || n < 1)) {
    throw invalidArgument(`batchSize must be a positive integer, got ${n}`)
  }
  return n
}

/** @internal */
export function rows(flat: Float32Array, dim: number, count: number): Float32Array[] {
  return Array.from({ length: count }, (_, r) => flat.slice(r * dim, (r + 1) * dim))
}

/** @internal */
export function failuresOf(list: Native.NativeImageFailure[]): ImageFailure[] {
  return list.map((f) => ({ index: f.index, code: f.code as ErrorCode, message: f.message }))
}

/** @internal Per-image predictions from the binding's flat probabilities and failures. */
export function toPredictions(
  count: number,
  out: Native.NativeZeroShot,
  classNames: string[],
  k: number,
): ZeroShotPrediction[] {
  const labels = classNames.map((n) => n.replace(/_/g, ' ').trim())
  const preds: ZeroShotPrediction[] = Array.from({ length: count }, (_, index) => ({
    index,
    probabilities: null,
    top: [],
  }))
  rows(out.probs, out.numClasses, out.indices.length).forEach((p, r) => {
    const pred = preds[out.indices[r]]
    pred.probabilities = p
    pred.top = topK(p, labels, k)
  })
  for (const f of failuresOf(out.failures)) preds[f.index].error = f
  return preds
}

/** Top-k labels of one probability row, best first. */
export function topK(probabilities: ArrayLike<number>, labels: string[], k: number): LabelScore[] {
  const order = Array.from({ length: probabilities.length }, (_, i) => i)
  order.sort((a, b) => probabilities[b] - probabilities[a] || a - b)
  return order
    .slice(0, Math.min(k, order.length))
    .map((i) => ({ label: labels[i], index: i, probability: probabilities[i] }))
}

/** A frozen CLIP model: image and text encoders, tokenizer and preprocessing. */
export class Clip {
  /** @internal */
  readonly native: Native.NativeClip

  private constructor(nativeClip: Native.NativeClip) {
    this.native = nativeClip
  }

  /**
   * Load a CLIP checkpoint: a Hugging Face folder (config.json, model.safetensors, tokenizer.json
   * or vocab.json + merges.txt) or a safetensors file with OpenAI's parameter names.
   */
  static async load(path: string, options: LoadOptions = {}): Promise<Clip> {
    if (typeof path !== 'string' || path.length === 0) throw invalidArgument('path must be a non-empty string')
    const nativeClip = await native(() =>
      binding.loadClip(path, { device: options.device ?? 'cpu', dtype: options.dtype ?? 'fp32' }),
    )
    return new Clip(nativeClip)
  }

  get info(): ModelInfo {
    return this.native.info as ModelInfo
  }

  /** CLIP token ids, `[SOS] ... [EOT]`, truncated to the context length. */
  tokenize(texts: string[]): number[][] {
    return nativeSync(() => this.native.tokenize(texts))
  }

  async encodeImages(images: ImageInput[], options: EncodeImagesOptions = {}): Promise<EncodedImages> {
    const out = await native(() => this.native.encodeImages(toNativeImages(images), checkBatchSize(options.batchSize)))
    const embeddings: (Float32Array | null)[] = new Array(images.length).fill(null)
    for (const [r, row] of rows(out.embeddings, out.dim, out.indices.length).entries()) embeddings[out.indices[r]] = row
    return { embeddings, failures: failuresOf(out.failures) }
  }

  /** Text features (not normalised), one per text. */
  async encodeTexts(texts: string[]): Promise<Float32Array[]> {
    if (!Array.isArray(texts) || texts.length === 0) throw invalidArgument('texts must be a non-empty array of strings')
    const out = await native(() => this.native.encodeTexts(texts))
    return rows(out.embeddings, out.dim, texts.length)
  }

  /**
   * Zero-shot classification: each image against `classNames` through the templates. Images that
   * cannot be read are reported in their prediction's `error` instead of failing the batch.
   */
  async zeroShot(
    images: ImageInput[],
    classNames: string[],
    options: ZeroShotOptions = {},
  ): Promise<ZeroShotPrediction[]> {
    const templates = options.templates ?? [DEFAULT_TEMPLATE]
    const k = options.topK ?? 5
    if (!Number.isInteger(k) || k < 1) throw invalidArgument(`topK must be a positive integer, got ${k}`)
    const out = await native(() =>
      this.native.zeroShot(toNativeImages(images), classNames, templates, checkBatchSize(options.batchSize)),
    )
    return toPredictions(images.length, out, classNames, k)
  }
}

/** Whether this build of the native addon includes CUDA support. */
export function cudaCompiled(): boolean {
  return binding.cudaCompiled()
}
