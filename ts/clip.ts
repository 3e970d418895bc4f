import { join } from 'node:path'
import { addon, binding, type Native, PACKAGE_ROOT } from './binding'
import { AbortError, type ErrorCode, invalidArgument, native, nativeSync, ProgressRelay } from './errors'
import type { HubOptions } from './hub/client'
import { resolveModelSource } from './hub/model'
import { defaults, type ImageInput, optionalString, positiveInt, toNativeImages, toNativeStrings } from './options'

export type { ImageInput, RawImage } from './options'

export type DeviceName = 'cpu' | 'cuda' | `cuda:${number}`

export type Precision = 'fp32' | 'fp16' | 'bf16'

/** `Clip.load`'s options; a hub id also takes `HubOptions` (revision, offline, token, cacheDir,
 *  onDownloadProgress, signal). */
export interface LoadOptions extends HubOptions {
  /** Where to run: "cpu" (default), "cuda" or "cuda:N" (needs the CUDA build, the package
   *  promptclip-linux-x64-gnu-cuda, and a GPU; the first load of the process picks the build). */
  device?: DeviceName
  /** Weights and activations: "fp32" (default; best on CPU), "fp16" or "bf16" (GPUs). Learned
   *  context stays fp32; training stops with E_NON_FINITE_LOSS if the loss overflows. */
  dtype?: Precision
}

export interface ModelInfo {
  embedDim: number
  imageSize: number
  /** Pixels per final grid cell: a ViT's patch size, 32 for a ResNet. */
  patchSize: number
  contextLength: number
  vocabSize: number
  textWidth: number
  /** OpenAI's `vision_width`: a ViT's token width, a ResNet's stem width (64 for RN50). */
  visionWidth: number
  textLayers: number
  /** A ViT's transformer blocks, or a ResNet's Bottleneck blocks over its four stages. */
  visionLayers: number
  /** The image tower: a ViT, or OpenAI's ModifiedResNet (RN50, RN101, RN50x4, ...). */
  visionArch: 'vit' | 'resnet'
  /** A ResNet's blocks per stage, [3, 4, 6, 3] for RN50; absent for a ViT. */
  resnetLayers?: number[]
  textActivation: string
  /** The multiplier of cosine similarities in the logits, exp(logit_scale): about 100 in real CLIPs. */
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

/** How far a batched call over images has got, reported after each batch. */
export interface BatchProgress {
  /** Images processed so far (read or failed); ends at `total`. */
  done: number
  total: number
}

export interface EncodeImagesOptions {
  /** Images per forward pass (default 32). */
  batchSize?: number
  /** Called after each batch, in order. If it throws, the call stops after the batch at hand and
   *  rejects with that error. */
  onProgress?: (p: BatchProgress) => void
  /** Cancels the call after the batch at hand: it rejects with an AbortError (E_CANCELLED). */
  signal?: AbortSignal
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

/**
 * The built-in CLIP that ships with the package (`models/builtin/`): small, pretrained by the
 * project on Fashion-MNIST and handwritten digits (see its model card). Load it with
 * `Clip.load(BUILTIN_MODEL)`.
 */
export const BUILTIN_MODEL: string = join(PACKAGE_ROOT, 'models', 'builtin')

/** @internal A model's name in output, tables and results: "built-in" for the built-in CLIP, else
 *  its path as given. */
export function modelName(path: string): string {
  return path === BUILTIN_MODEL ? 'built-in' : path
}

/** The hand-made template used when none is given ("a photo of a {}."). */
export const DEFAULT_TEMPLATE: string = defaults().template

/** @internal */
export function checkBatchSize(n: number | undefined): number | undefined {
  return positiveInt('batchSize', n)
}

/** @internal Run a batched native call (`progress` and `token` are the binding's last two
 *  arguments), relaying its progress to `onProgress`; every event is delivered before it resolves.
 *  `signal` stops the work after the batch at hand (an AbortError). */
export async function batched<T>(
  onProgress: ((p: BatchProgress) => void) | undefined,
  total: number,
  signal: AbortSignal | undefined,
  call: (progress?: (p: Native.NativeBatchProgress) => void, token?: Native.NativeCancelToken) => Promise<T>,
): Promise<T> {
  if (signal?.aborted) throw new AbortError('cancelled before the call started')
  if (!onProgress && !signal) return native(() => call())
  const token = new binding.NativeCancelToken()
  const cancel = () => token.cancel()
  signal?.addEventListener('abort', cancel, { once: true })
  try {
    if (!onProgress) return await native(() => call(undefined, token))
    let done = 0
    const relay = new ProgressRelay<Native.NativeBatchProgress>((p) => {
      done = p.done
      onProgress({ done: p.done, total: p.total })
    }, cancel)
    return await relay.run(
      () => call(relay.call, token),
      () => done >= total,
    )
  } finally {
    signal?.removeEventListener('abort', cancel)
  }
}

/** @internal */
export function rows(flat: Float32Array, dim: number, count: number): Float32Array[] {
  return Array.from({ length: count }, (_, r) => flat.slice(r * dim, (r + 1) * dim))
}

/** @internal */
export function failuresOf(list: Native.NativeImageFailure[]): ImageFailure[] {
  return list.map((f) => ({ index: f.index, code: f.code as ErrorCode, message: f.message }))
}

/** @internal Per-image predictions from the binding's flat probabilities and failures. Labels
 *  are the class names exactly as the caller gave them. */
export function toPredictions(count: number, out: Native.NativePredictions, k: number): ZeroShotPrediction[] {
  const preds: ZeroShotPrediction[] = Array.from({ length: count }, (_, index) => ({
    index,
    probabilities: null,
    top: [],
  }))
  const numClasses = out.classNames.length
  for (const [r, p] of rows(out.probs, numClasses, out.indices.length).entries()) {
    const pred = preds[out.indices[r]]
    pred.probabilities = p
    pred.top = topK(p, out.classNames, k)
  }
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
   * or vocab.json + merges.txt), a safetensors file with OpenAI's parameter names, or a hub id
   * (`openai/clip-vit-base-patch16`, `laion/CLIP-ViT-B-32-laion2B-s34B-b79K`): fetched once into
   * the Hugging Face cache (only the files CLIP needs), then loaded from there. A path that exists
   * wins over an id.
   */
  static async load(path: string, options: LoadOptions = {}): Promise<Clip> {
    if (typeof path !== 'string' || path.length === 0) throw invalidArgument('path must be a non-empty string')
    const device = optionalString('device', options?.device) ?? 'cpu'
    const dtype = optionalString('dtype', options?.dtype) ?? 'fp32'
    const { device: _, dtype: __, ...hub } = options ?? {}
    const local = await resolveModelSource(path, hub)
    // The first load picks the addon for the process: the CUDA build for a CUDA device.
    const nativeClip = await native(() => addon(device).loadClip(local, { device, dtype }))
    return new Clip(nativeClip)
  }

  get info(): ModelInfo {
    return this.native.info as ModelInfo
  }

  /** CLIP token ids, `[SOS] ... [EOT]`, truncated to the context length. */
  tokenize(texts: string[]): number[][] {
    toNativeStrings(texts, 'texts', { required: true })
    return nativeSync(() => this.native.tokenize(texts))
  }

  async encodeImages(images: ImageInput[], options: EncodeImagesOptions = {}): Promise<EncodedImages> {
    const nativeImages = toNativeImages(images)
    const batchSize = checkBatchSize(options.batchSize)
    const out = await batched(options.onProgress, images.length, options.signal, (progress, token) =>
      this.native.encodeImages(nativeImages, batchSize, progress, token),
    )
    const embeddings: (Float32Array | null)[] = new Array(images.length).fill(null)
    for (const [r, row] of rows(out.embeddings, out.dim, out.indices.length).entries()) embeddings[out.indices[r]] = row
    return { embeddings, failures: failuresOf(out.failures) }
  }

  /** Text features (not normalised), one per text. */
  async encodeTexts(texts: string[]): Promise<Float32Array[]> {
    if (!Array.isArray(texts) || texts.length === 0) throw invalidArgument('texts must be a non-empty array of strings')
    toNativeStrings(texts, 'texts')
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
    const k = positiveInt('topK', options.topK) ?? defaults().topK
    const nativeImages = toNativeImages(images)
    const batchSize = checkBatchSize(options.batchSize)
    const names = toNativeStrings(classNames, 'classNames', { required: true }) as string[]
    const templates = toNativeStrings(options.templates, 'templates')
    const out = await batched(options.onProgress, images.length, options.signal, (progress, token) =>
      this.native.zeroShot(nativeImages, names, templates, batchSize, progress, token),
    )
    return toPredictions(images.length, out, k)
  }
}

/** Whether this build of the native addon includes CUDA support. */
export function cudaCompiled(): boolean {
  return binding.cudaCompiled()
}
