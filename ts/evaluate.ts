import { binding } from './binding'
import type { BatchProgress, Clip, ImageFailure, ZeroShotPrediction } from './clip'
import { invalidArgument, nativeSync } from './errors'
import { PromptLearner } from './prompt'
import { alignLabels, type Dataset } from './train'

export interface EvaluateOptions {
  /** Classes to score against (default: the learner's; for zero-shot CLIP, the dataset's).
   *  Labels are mapped onto them by name when the dataset carries class names. */
  classNames?: string[]
  /** Zero-shot templates (ensembled); ignored for prompt learners. */
  templates?: string[]
  /** Top-k accuracies to report (default [1, 5], capped at the number of classes). */
  topK?: number[]
  batchSize?: number
  /** Called after each batch of images, in order. If it throws, evaluation stops after the
   *  batch at hand and rejects with that error. */
  onProgress?: (p: EvaluateProgress) => void
  /** Cancels the evaluation after the batch at hand: it rejects with an AbortError (E_CANCELLED). */
  signal?: AbortSignal
}

/** How far an evaluation has got, with the rate measured since it started. */
export interface EvaluateProgress extends BatchProgress {
  imagesPerSecond: number
  /** Seconds left at the measured rate (0 when done). */
  etaSeconds: number
}

/** Per-batch progress with a rate and an ETA measured from `started` (ms). */
function withRate(
  onProgress: ((p: EvaluateProgress) => void) | undefined,
  started: number,
): ((p: BatchProgress) => void) | undefined {
  if (!onProgress) return undefined
  return ({ done, total }) => {
    const seconds = Math.max((performance.now() - started) / 1000, 1e-9)
    const imagesPerSecond = done / seconds
    const etaSeconds = done >= total ? 0 : imagesPerSecond > 0 ? (total - done) / imagesPerSecond : Infinity
    onProgress({ done, total, imagesPerSecond, etaSeconds })
  }
}

export interface ClassReport {
  index: number
  name: string
  /** Percent; null for classes without examples. */
  accuracy: number | null
  support: number
}

export interface Evaluation {
  total: number
  correct: number
  /** Percentages, as in the papers. */
  accuracy: number
  errorRate: number
  macroF1: number
  topK: { k: number; accuracy: number }[]
  perClass: ClassReport[]
  /** confusion[true][predicted] */
  confusion: number[][]
  /** Images that could not be read (excluded from the metrics). */
  failures: ImageFailure[]
}

/**
 * Measures a PromptLearner, or zero-shot CLIP with the same code: accuracy, error rate,
 * macro-F1, top-k, per-class accuracy and the confusion matrix (Dassl's definitions).
 */
export class Evaluator {
  readonly model: PromptLearner | Clip
  readonly options: EvaluateOptions

  constructor(model: PromptLearner | Clip, options: EvaluateOptions = {}) {
    this.model = model
    this.options = options
  }

  async evaluate(data: Dataset, options: EvaluateOptions = {}): Promise<Evaluation> {
    const o = { ...this.options, ...options }
    const classNames =
      o.classNames ?? (this.model instanceof PromptLearner ? this.model.info.classNames : data?.classNames)
    if (!classNames)
      throw invalidArgument('classNames are required to evaluate zero-shot CLIP on a dataset without them')
    const labels = alignLabels(data, classNames)
    // Training's data the core checks; evaluation's metrics are computed here, so here.
    if (labels.length === 0) throw invalidArgument('the dataset is empty')
    if (data.images.length !== labels.length)
      throw invalidArgument(`dataset: ${data.images.length} images but ${labels.length} labels`)
    const onProgress = withRate(o.onProgress, performance.now())
    // A learner bound to its own classes (the linear probe, class-specific context) scores a
    // subset of them (ImageNet-A's 200 of ImageNet's 1,000) through its own classes' columns.
    const columns =
      this.model instanceof PromptLearner && o.classNames && !this.model.scoresAnyClasses
        ? subsetColumns(this.model.info.classNames, o.classNames)
        : null
    const preds: ZeroShotPrediction[] =
      this.model instanceof PromptLearner
        ? await this.model.predict(data.images, {
            classNames: columns ? undefined : o.classNames,
            topK: 1,
            batchSize: o.batchSize,
            onProgress,
            signal: o.signal,
          })
        : await this.model.zeroShot(data.images, classNames, {
            templates: o.templates,
            topK: 1,
            batchSize: o.batchSize,
            onProgress,
            signal: o.signal,
          })
    const ok = preds.filter((p): p is ZeroShotPrediction & { probabilities: Float32Array } => p.probabilities !== null)
    if (ok.length === 0) throw invalidArgument('no image of the dataset could be read')
    const k = classNames.length
    const scores = new Float32Array(ok.length * k)
    for (const [i, p] of ok.entries()) {
      if (!columns) scores.set(p.probabilities, i * k)
      else for (const [j, c] of columns.entries()) scores[i * k + j] = p.probabilities[c]
    }
    const m = nativeSync(() =>
      binding.computeMetrics(
        scores,
        k,
        ok.map((p) => labels[p.index]),
        o.topK,
      ),
    )
    return {
      total: m.total,
      correct: m.correct,
      accuracy: m.accuracy,
      errorRate: m.errorRate,
      macroF1: m.macroF1,
      topK: m.topK.map(([kk, acc]) => ({ k: kk, accuracy: acc })),
      perClass: classNames.map((name, index) => ({
        index,
        name,
        accuracy: Number.isNaN(m.perClassAccuracy[index]) ? null : m.perClassAccuracy[index],
        support: m.confusion[index].reduce((a, b) => a + b, 0),
      })),
      confusion: m.confusion,
      failures: preds.flatMap((p) => (p.error ? [p.error] : [])),
    }
  }
}

/** Where each of `subset` sits in `own`; null when `subset` is `own` itself (nothing to select). */
function subsetColumns(own: string[], subset: string[]): number[] | null {
  if (subset.length === own.length && subset.every((n, i) => n === own[i])) return null
  const index = new Map(own.map((n, i) => [n, i]))
  const missing = subset.filter((n) => !index.has(n))
  if (missing.length > 0) {
    throw invalidArgument(
      `this learner scores only its own ${own.length} classes (or a subset of them); ` +
        `${missing
          .slice(0, 5)
          .map((n) => JSON.stringify(n))
          .join(', ')} ${missing.length === 1 ? 'is' : 'are'} not among them`,
    )
  }
  return subset.map((n) => index.get(n) as number)
}
