import { binding } from './binding'
import { type Clip, DEFAULT_TEMPLATE, type ImageFailure, type ZeroShotPrediction } from './clip'
import { invalidArgument, nativeSync } from './errors'
import { PromptLearner } from './prompt'
import { type Dataset, validateDataset } from './train'

export interface EvaluateOptions {
  /** Classes the labels refer to (default: the learner's; required for zero-shot CLIP). */
  classNames?: string[]
  /** Zero-shot templates (ensembled); ignored for prompt learners. */
  templates?: string[]
  /** Top-k accuracies to report (default [1, 5], capped at the number of classes). */
  topK?: number[]
  batchSize?: number
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
    const classNames = o.classNames ?? (this.model instanceof PromptLearner ? this.model.info.classNames : undefined)
    if (!classNames) throw invalidArgument('classNames are required to evaluate zero-shot CLIP')
    validateDataset(data, classNames.length)
    const preds: ZeroShotPrediction[] =
      this.model instanceof PromptLearner
        ? await this.model.predict(data.images, { classNames: o.classNames, topK: 1, batchSize: o.batchSize })
        : await this.model.zeroShot(data.images, classNames, {
            templates: o.templates ?? [DEFAULT_TEMPLATE],
            topK: 1,
            batchSize: o.batchSize,
          })
    const ok = preds.filter((p): p is ZeroShotPrediction & { probabilities: Float32Array } => p.probabilities !== null)
    if (ok.length === 0) throw invalidArgument('no image of the dataset could be read')
    const k = classNames.length
    const scores = new Float32Array(ok.length * k)
    for (const [i, p] of ok.entries()) scores.set(p.probabilities, i * k)
    const ks = (o.topK ?? [1, 5]).filter((x) => x <= k)
    const m = nativeSync(() =>
      binding.computeMetrics(
        scores,
        k,
        ok.map((p) => data.labels[p.index]),
        ks,
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
