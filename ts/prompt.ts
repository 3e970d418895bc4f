import { binding, type Native } from './binding'
import { type BatchProgress, batched, type Clip, checkBatchSize, toPredictions, type ZeroShotPrediction } from './clip'
import { AbortError, invalidArgument, native, nativeSync, PromptclipError } from './errors'
import type {
  CocoopFields,
  CoopFields,
  KgcoopFields,
  LinearProbeFields,
  Method,
  MethodFields,
} from './generated/methods'
import {
  defaults,
  finiteNumbers,
  type ImageInput,
  positiveInt,
  toNativeImages,
  toNativeLearnerOptions,
  toNativeRuntime,
  toNativeStrings,
} from './options'

export type { Method } from './generated/methods'

export type ClassTokenPosition = NonNullable<CoopFields['position']>

/** Runtime settings: how a learner runs, not what it is (not saved with it). */
export interface RuntimeOptions {
  /** Activation memory (MiB) a training step keeps at once: CoCoOp's B x K prompts, or the image
   *  tower's tape for the methods with prompts inside it (VPT, IVLP, MaPLe, PromptSRC); batches
   *  are chunked to fit (default 2048). */
  memoryBudgetMb?: number
}

/** A new learner's options: the class names it scores, its method's own options (types, ranges,
 *  defaults and docs generated from the core's catalogue, ts/generated/methods.ts) and the
 *  runtime settings. */
export type LearnerOptions<M extends Method> = MethodFields[M] & RuntimeOptions & { classNames: string[] }

/** CoOp's learned context (the paper's defaults: 16 random vectors, std 0.02, shared by all
 *  classes, the class token at the end). */
export type CoopOptions = CoopFields & RuntimeOptions & { classNames: string[] }
/** CoCoOp: CoOp's context (from "a photo of a" by default; shared only) and a Meta-Net that
 *  shifts it per image. */
export type CocoopOptions = CocoopFields & RuntimeOptions & { classNames: string[] }
/** KgCoOp: CoOp plus w * (1 - mean cosine) to the hand-made prompt's text features. */
export type KgcoopOptions = KgcoopFields & RuntimeOptions & { classNames: string[] }
/** The linear probe: logistic regression on image features (CoOp's baseline). */
export type LinearProbeOptions = LinearProbeFields & { classNames: string[] }

/** What `PromptLearner.importOfficial` is told: the method (inferred from the tensors' names when
 *  left out: CoOp for a lone `ctx`, IVLP for IVLP's and PromptSRC's names, ...), the class names
 *  the prompts score (a file promptclip exported records its own), and the method's options
 *  beyond what the tensors' shapes decide (`ctxInit`, whose words after the learned tokens stay
 *  fixed text; a loss weight). */
export interface ImportOfficialOptions<M extends Method = Method> extends RuntimeOptions {
  method?: M
  classNames?: string[]
  options?: MethodFields[M]
}

/** Every method's learner options, by method. */
export type MethodOptions = { [M in Method]: LearnerOptions<M> }

/** What a learner is: written into its file, checked when resuming, shown as `info`. */
export interface LearnerInfo {
  method: Method
  /** The class names as given (labels echo these; prompts use them with `_` read as a space). */
  classNames: string[]
  /** The method's options, resolved: defaults filled in, `nCtx` as built. */
  options: Record<string, unknown>
  /** [name, shape] of each learned tensor. */
  params: [string, number[]][]
}

export interface PredictOptions {
  /** Classes to score against (default: the learner's own). Unified context transfers to new
   *  class names; class-specific context and the linear probe do not. */
  classNames?: string[]
  /** How many labels to list per image (default 5, at most the number of classes). */
  topK?: number
  batchSize?: number
  /** Called after each batch of images, in order. If it throws, prediction stops after the batch
   *  at hand and rejects with that error. */
  onProgress?: (p: BatchProgress) => void
  /** Cancels the call: while it waits for the learner, at once; while it runs, after the batch at
   *  hand. It rejects with an AbortError (E_CANCELLED) and the learner stays usable. */
  signal?: AbortSignal
}

export interface InterpretRow {
  /** Context position, 0-based. */
  position: number
  /** With class-specific context: the class this row belongs to. */
  classIndex?: number
  /** Nearest vocabulary tokens, closest first, with their Euclidean distances. */
  tokens: { token: string; id: number; distance: number }[]
}

/**
 * A learner on a frozen CLIP, of any method of the catalogue (`methodCatalogue()`): learned prompts
 * (CoOp, CoCoOp, KgCoOp, VPT, IVLP, MaPLe, PromptSRC), adapters, low-rank updates (CLIP-LoRA) or
 * a linear probe.
 * Train it with a `Trainer`, measure it with an `Evaluator`, save it, load it elsewhere, and
 * predict labels for new images.
 */
export class PromptLearner {
  /** @internal */
  readonly native: Native.NativeLearner
  readonly clip: Clip
  /** @internal Set by `Trainer.fit` from its call until it settles: `context()` and another
   *  `fit` fail fast with E_BUSY. */
  training = false
  /** What the learner is, read when it is made and again after each fit (a fit may allocate
   *  state whose shapes the data decide: Tip-Adapter's cache), so that `info` answers at any time,
   *  also while the learner trains. */
  private meta: LearnerInfo
  private caps?: Native.NativeCapabilities
  /** Settles when the last native task queued on this learner has settled; it never rejects. */
  private tail: Promise<void> = Promise.resolve()

  private constructor(clip: Clip, nativeLearner: Native.NativeLearner) {
    this.clip = clip
    this.native = nativeLearner
    this.meta = nativeSync(() => nativeLearner.info) as LearnerInfo
  }

  /** @internal Read `info` again from the core (by `Trainer.fit`, once its native task settled). */
  refreshInfo(): void {
    this.meta = nativeSync(() => this.native.info) as LearnerInfo
  }

  /**
   * @internal Run a native task on this learner after every one queued before it. A task waiting
   * in the binding for the learner's lock would hold one of libuv's few pool threads (four by
   * default) for as long as the training it waits for, and every `fs`, `zlib` or `dns` call in the
   * process would wait with it; queued here, at most one task per learner is on the pool and the
   * rest wait as promises. A `signal` that fires before the task's turn rejects it at once (the
   * task never runs); once it runs, the task handles its signal itself.
   */
  exclusive<T>(task: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    let started = false
    const run = this.tail.then(() => {
      if (signal?.aborted) throw new AbortError('cancelled while waiting for the learner')
      started = true
      return task()
    })
    const settled = () => undefined
    this.tail = run.then(settled, settled)
    if (!signal) return run
    return new Promise<T>((resolve, reject) => {
      const onAbort = () => {
        if (!started) reject(new AbortError('cancelled while waiting for the learner'))
      }
      signal.addEventListener('abort', onAbort, { once: true })
      run.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort))
    })
  }

  /** A new learner of `method` (any name of the core's catalogue, `methodCatalogue()`) for
   *  `options.classNames`. */
  static create<M extends Method>(clip: Clip, method: M, options: LearnerOptions<M>): PromptLearner {
    const o = toNativeLearnerOptions(options)
    return new PromptLearner(
      clip,
      nativeSync(() => binding.createLearner(clip.native, method, o.classNames, o.options, o.runtime)),
    )
  }

  /** CoOp (Zhou et al., IJCV 2022). */
  static coop(clip: Clip, options: CoopOptions): PromptLearner {
    return PromptLearner.create(clip, 'coop', options)
  }

  /** CoCoOp (Zhou et al., CVPR 2022). */
  static cocoop(clip: Clip, options: CocoopOptions): PromptLearner {
    return PromptLearner.create(clip, 'cocoop', options)
  }

  /** KgCoOp (Yao et al., CVPR 2023). */
  static kgcoop(clip: Clip, options: KgcoopOptions): PromptLearner {
    return PromptLearner.create(clip, 'kgcoop', options)
  }

  /** The linear probe. */
  static linearProbe(clip: Clip, options: LinearProbeOptions): PromptLearner {
    return PromptLearner.create(clip, 'linear-probe', options)
  }

  /** Load a learner saved with `save()` (any method) onto a CLIP of the same shapes. */
  static async load(clip: Clip, path: string, options: RuntimeOptions = {}): Promise<PromptLearner> {
    const runtime = toNativeRuntime(options)
    return new PromptLearner(clip, await native(() => binding.loadLearner(clip.native, path, runtime)))
  }

  /**
   * Prompts trained by the official code, from safetensors under its state-dict names
   * (`prompt_learner.ctx`, `prompt_learner.compound_prompts_text.0`, `image_encoder.VPT`,
   * `text_encoder.transformer.resblocks.1.VPT_shallow`, ...: CoOp's, CoCoOp's, KgCoOp's, and
   * multimodal-prompt-learning's VPT, IVLP and MaPLe, PromptSRC's). A Dassl checkpoint
   * (`model.pth.tar-N`, a pickle) becomes such a file with `scripts/dassl_to_safetensors.py`.
   * The tensors' shapes decide the tokens and depths; buffers and frozen CLIP weights in the
   * file are left out.
   */
  static async importOfficial<M extends Method>(
    clip: Clip,
    path: string,
    options: ImportOfficialOptions<M> = {},
  ): Promise<PromptLearner> {
    if (typeof path !== 'string' || path === '') throw invalidArgument('path must be a non-empty string')
    const classNames = toNativeStrings(options.classNames, 'classNames')
    const methodOptions =
      options.options === undefined ? undefined : (finiteNumbers('learner', options.options) as Record<string, unknown>)
    const runtime = toNativeRuntime(options)
    return new PromptLearner(
      clip,
      await native(() =>
        binding.importOfficialLearner(clip.native, path, options.method, classNames, methodOptions, runtime),
      ),
    )
  }

  /** Write the learned tensors under the official code's state-dict names (safetensors, fp32,
   *  atomically), with the method, options and class names in its metadata:
   *  `scripts/dassl_to_safetensors.py --to-dassl` makes a checkpoint the official code loads. */
  async exportOfficial(path: string): Promise<void> {
    if (typeof path !== 'string' || path === '') throw invalidArgument('path must be a non-empty string')
    await this.exclusive(() => native(() => binding.exportOfficial(this.native, path)))
  }

  /** What the learner is (a copy: changing it changes nothing). Readable at any time. */
  get info(): LearnerInfo {
    return structuredClone(this.meta)
  }

  /** Whether the learner can score class names it was not trained on (zero-shot style): unified
   *  context can; class-specific context and the linear probe score their own classes only. The
   *  learner says so itself (its capabilities), not its method's name. */
  get scoresAnyClasses(): boolean {
    return this.capabilities.scoresAnyClasses
  }

  /** What the learner can be asked: new class names (`scoresAnyClasses`), its learned text
   *  context (`hasContext`: `context()` and `interpret()`). */
  get capabilities(): { scoresAnyClasses: boolean; hasContext: boolean } {
    this.caps ??= nativeSync(() => this.native.capabilities)
    return { ...this.caps }
  }

  /** The learned context vectors, row-major: (nCtx, ctxDim) or (K, nCtx, ctxDim). Throws E_BUSY
   *  while the learner trains, and E_UNSUPPORTED for the linear probe. */
  context(): Float32Array {
    this.checkIdle()
    return nativeSync(() => this.native.context())
  }

  /** @internal */
  checkIdle(): void {
    if (this.training) throw new PromptclipError('E_BUSY', 'the learner is training; read it after fit() resolves')
  }

  /** Save as safetensors with the learner's metadata (written atomically). Waits for the
   *  learner's earlier calls (a running `fit`: the trained learner is saved). */
  async save(path: string): Promise<void> {
    if (typeof path !== 'string' || path === '') throw invalidArgument('path must be a non-empty string')
    await this.exclusive(() => native(() => this.native.save(path)))
  }

  /**
   * Labels and probabilities for new images, with the learned classes or other class names. Calls
   * on one learner run one at a time, in call order: a `predict` made while the learner trains
   * waits for `fit` to settle and predicts with the trained learner.
   */
  async predict(images: ImageInput[], options: PredictOptions = {}): Promise<ZeroShotPrediction[]> {
    const k = positiveInt('topK', options.topK) ?? defaults().topK
    const nativeImages = toNativeImages(images)
    const batchSize = checkBatchSize(options.batchSize)
    const classNames = toNativeStrings(options.classNames, 'classNames')
    const { onProgress, signal } = options
    if (signal?.aborted) throw new AbortError('cancelled before prediction started')
    const out = await this.exclusive(
      () =>
        batched(onProgress, images.length, signal, (progress, token) =>
          this.native.predict(nativeImages, classNames, batchSize, progress, token),
        ),
      signal,
    )
    return toPredictions(images.length, out, k)
  }

  /**
   * Nearest vocabulary words of each learned context vector (CoOp's Table 4). Byte-level BPE
   * tokens that are not text on their own (a piece of a multi-byte character, which would print
   * as "\uFFFD") are passed over for the next nearest that is.
   */
  async interpret(options: { topK?: number } = {}): Promise<InterpretRow[]> {
    const topK = positiveInt('topK', options.topK) ?? defaults().topK
    // Enough candidates that topK of them are words (byte pieces are a few percent of the vocabulary).
    const ask = Math.min(topK * 4 + 16, 2 ** 32 - 1)
    const rowsOut = await this.exclusive(() => native(() => this.native.interpret(ask)))
    const isWord = (t: string) => t.trim().length > 0 && !t.includes('\uFFFD')
    return rowsOut.map((r) => ({
      position: r.position,
      ...(r.classIndex != null ? { classIndex: r.classIndex } : {}),
      tokens: r.tokens
        .map((token, i) => ({ token, id: r.tokenIds[i], distance: r.distances[i] }))
        .filter((t) => isWord(t.token))
        .slice(0, topK),
    }))
  }
}
