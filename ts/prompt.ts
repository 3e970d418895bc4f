import { binding, type Native } from './binding'
import {
  type Clip,
  checkBatchSize,
  type ImageInput,
  toNativeImages,
  toPredictions,
  type ZeroShotPrediction,
} from './clip'
import { drainProgress, invalidArgument, native, nativeSync } from './errors'

export type ClassTokenPosition = 'end' | 'middle' | 'front'

/** CoOp options (defaults follow the paper: M = 16, unified context, class token at the end). */
export interface CoopOptions {
  classNames: string[]
  /** M, the number of learned context tokens (default 16; ignored with `ctxInit`). */
  nCtx?: number
  /** One context per class (K x M x d) instead of one shared context (M x d). */
  classSpecific?: boolean
  position?: ClassTokenPosition
  /** Initialise the context from these words, e.g. "a photo of a" (M = their token count). */
  ctxInit?: string
  /** Std of the random normal initialisation (default 0.02). */
  initStd?: number
  seed?: number
}

/** CoCoOp options: CoOp's, with the paper's defaults (context from "a photo of a", M = 4), plus
 *  the Meta-Net. Class-specific context is CoOp-only. */
export interface CocoopOptions extends Omit<CoopOptions, 'classSpecific'> {
  /** Meta-Net bottleneck: hidden = image feature size / ratio (default 16, as in the paper). */
  metaNetRatio?: number
  /** Activation memory (MiB) for B x K prompts at once; batches are chunked to fit (default 2048). */
  memoryBudgetMb?: number
}

export interface LearnerInfo {
  method: 'coop' | 'cocoop'
  nCtx: number
  classSpecific: boolean
  position: ClassTokenPosition
  classNames: string[]
  promptPrefix: string
  ctxDim: number
  /** CoCoOp: the Meta-Net's hidden size. */
  metaNetHidden?: number
}

export interface PredictOptions {
  /** Classes to score against (default: the learner's own). Unified context transfers to new
   *  class names; class-specific context does not. */
  classNames?: string[]
  topK?: number
  batchSize?: number
  /** Called after each batch of images (CoCoOp runs K text-encoder passes per image). */
  onProgress?: (p: { done: number; total: number }) => void
}

export interface InterpretRow {
  /** Context position, 0-based. */
  position: number
  /** With class-specific context: the class this row belongs to. */
  classIndex?: number
  /** Nearest vocabulary tokens, closest first, with their Euclidean distances. */
  tokens: { token: string; id: number; distance: number }[]
}

function checkPositiveInt(name: string, v: number | undefined): void {
  if (v !== undefined && (!Number.isInteger(v) || v < 1)) {
    throw invalidArgument(`${name} must be a positive integer, got ${v}`)
  }
}

/**
 * Learned prompt context on a frozen CLIP (CoOp). Train it with a `Trainer`, measure it with an
 * `Evaluator`, save it, load it elsewhere, and predict labels for new images.
 */
export class PromptLearner {
  /** @internal */
  readonly native: Native.NativePromptLearner
  readonly clip: Clip

  private constructor(clip: Clip, nativeLearner: Native.NativePromptLearner) {
    this.clip = clip
    this.native = nativeLearner
  }

  /** A new CoOp learner for `classNames`. */
  static coop(clip: Clip, options: CoopOptions): PromptLearner {
    if (!options || !Array.isArray(options.classNames)) {
      throw invalidArgument('classNames must be an array of class names')
    }
    checkPositiveInt('nCtx', options.nCtx)
    if (options.position !== undefined && !['end', 'middle', 'front'].includes(options.position)) {
      throw invalidArgument(`position must be "end", "middle" or "front", got ${JSON.stringify(options.position)}`)
    }
    if (options.seed !== undefined && (!Number.isInteger(options.seed) || options.seed < 0)) {
      throw invalidArgument(`seed must be a non-negative integer, got ${options.seed}`)
    }
    return new PromptLearner(
      clip,
      nativeSync(() => binding.createCoop(clip.native, options)),
    )
  }

  /** A new CoCoOp learner: CoOp's context plus a Meta-Net that conditions it on each image. */
  static cocoop(clip: Clip, options: CocoopOptions): PromptLearner {
    if (!options || !Array.isArray(options.classNames)) {
      throw invalidArgument('classNames must be an array of class names')
    }
    if ((options as CoopOptions).classSpecific) {
      throw invalidArgument('classSpecific context is CoOp-only; CoCoOp learns one context')
    }
    checkPositiveInt('nCtx', options.nCtx)
    checkPositiveInt('metaNetRatio', options.metaNetRatio)
    checkPositiveInt('memoryBudgetMb', options.memoryBudgetMb)
    return new PromptLearner(
      clip,
      nativeSync(() => binding.createCocoop(clip.native, options)),
    )
  }

  /** Load a prompt saved with `save()` (CoOp or CoCoOp), onto a CLIP of the same text width. */
  static async load(clip: Clip, path: string): Promise<PromptLearner> {
    return new PromptLearner(clip, await native(() => binding.loadPromptLearner(clip.native, path)))
  }

  get info(): LearnerInfo {
    return nativeSync(() => this.native.info) as LearnerInfo
  }

  /** The learned context vectors, row-major: (nCtx, ctxDim) or (K, nCtx, ctxDim). */
  context(): Float32Array {
    return nativeSync(() => this.native.context())
  }

  /** Save as safetensors with JSON metadata (written atomically). */
  async save(path: string): Promise<void> {
    await native(() => this.native.save(path))
  }

  /** Labels and probabilities for new images, with the learned classes or other class names. */
  async predict(images: ImageInput[], options: PredictOptions = {}): Promise<ZeroShotPrediction[]> {
    const k = options.topK ?? 5
    checkPositiveInt('topK', k)
    let done = 0
    const onProgress = options.onProgress
    const progress = onProgress
      ? (p: Native.NativePredictProgress) => {
          done = p.done
          onProgress({ done: p.done, total: p.total })
        }
      : undefined
    const out = await native(() =>
      this.native.predict(toNativeImages(images), options.classNames, checkBatchSize(options.batchSize), progress),
    )
    if (progress) await drainProgress(() => done >= images.length)
    return toPredictions(images.length, out, options.classNames ?? this.info.classNames, k)
  }

  /** Nearest vocabulary words of each learned context vector (CoOp's Table 4). */
  async interpret(options: { topK?: number } = {}): Promise<InterpretRow[]> {
    checkPositiveInt('topK', options.topK)
    const rowsOut = await native(() => this.native.interpret(options.topK))
    return rowsOut.map((r) => ({
      position: r.position,
      ...(r.classIndex != null ? { classIndex: r.classIndex } : {}),
      tokens: r.tokens.map((token, i) => ({ token, id: r.tokenIds[i], distance: r.distances[i] })),
    }))
  }
}
