import { binding, type Native } from './binding'
import { type ImageInput, toNativeImages } from './clip'
import { drainProgress, invalidArgument, native, PromptclipError } from './errors'
import type { PromptLearner } from './prompt'

/** Labelled images: `labels[i]` indexes the learner's `classNames`. */
export interface Dataset {
  images: ImageInput[]
  labels: number[]
}

export interface TrainProgress {
  epoch: number
  epochs: number
  step: number
  stepsPerEpoch: number
  globalStep: number
  loss: number
  /** Mean loss and accuracy (0..1) over the epoch so far. */
  epochLoss: number
  epochAccuracy: number
  lr: number
}

/** Each paper's recipe by default: SGD lr 0.002, momentum 0.9, weight decay 5e-4, one warmup
 *  epoch at 1e-5, cosine per epoch, random resized crop + flip; CoOp 50 epochs at batch 32,
 *  CoCoOp 10 epochs at batch 1 (larger batches work: prompts are chunked to a memory budget). */
export interface TrainOptions {
  epochs?: number
  batchSize?: number
  lr?: number
  momentum?: number
  weightDecay?: number
  schedule?: 'cosine' | 'constant'
  warmupEpochs?: number
  warmupLr?: number
  seed?: number
  /** Random resized crop + flip (default true). Off: features are computed once and reused. */
  augment?: boolean
  /** Write a training checkpoint (atomically) every `checkpointEvery` epochs. */
  checkpointPath?: string
  checkpointEvery?: number
}

export interface FitOptions {
  onProgress?: (p: TrainProgress) => void
  signal?: AbortSignal
  /** Continue from a checkpoint written by an earlier run with the same options. */
  resumeFrom?: string
}

export interface TrainSummary {
  epochs: number
  startEpoch: number
  globalStep: number
  epochLoss: number[]
  epochAccuracy: number[]
  seconds: number
}

export function validateDataset(data: Dataset, numClasses: number): void {
  if (!data || !Array.isArray(data.images) || !Array.isArray(data.labels)) {
    throw invalidArgument('dataset must be { images: [...], labels: [...] }')
  }
  if (data.images.length === 0) throw invalidArgument('the dataset is empty')
  if (data.images.length !== data.labels.length) {
    throw invalidArgument(`${data.images.length} images but ${data.labels.length} labels`)
  }
  data.labels.forEach((l, i) => {
    if (!Number.isInteger(l) || l < 0 || l >= numClasses) {
      throw invalidArgument(`labels[${i}] = ${l} is out of range for ${numClasses} classes`)
    }
  })
}

/** Trains a PromptLearner's context (CLIP stays frozen). Training runs off the main thread. */
export class Trainer {
  readonly learner: PromptLearner
  readonly options: TrainOptions

  constructor(learner: PromptLearner, options: TrainOptions = {}) {
    for (const k of ['epochs', 'batchSize', 'warmupEpochs', 'checkpointEvery'] as const) {
      const v = options[k]
      if (v !== undefined && (!Number.isInteger(v) || v < (k === 'warmupEpochs' ? 0 : 1))) {
        throw invalidArgument(`${k} must be a ${k === 'warmupEpochs' ? 'non-negative' : 'positive'} integer, got ${v}`)
      }
    }
    this.learner = learner
    this.options = { ...options }
  }

  /** Train. While it runs, the learner's synchronous reads (`info`, `context()`) throw E_BUSY. */
  async fit(data: Dataset, fitOptions: FitOptions = {}): Promise<TrainSummary> {
    validateDataset(data, this.learner.info.classNames.length)
    const { signal, onProgress, resumeFrom } = fitOptions
    if (signal?.aborted) throw new PromptclipError('E_CANCELLED', 'cancelled before training started')
    const token = new binding.NativeCancelToken()
    const abort = () => token.cancel()
    signal?.addEventListener('abort', abort, { once: true })
    try {
      let lastStep = -1
      const progress = onProgress
        ? (p: Native.NativeProgress) => {
            lastStep = p.globalStep
            onProgress({ ...p })
          }
        : undefined
      const summary = await native(() =>
        this.learner.native.train(
          toNativeImages(data.images),
          data.labels,
          { ...this.options, resumeFrom },
          progress,
          token,
        ),
      )
      if (onProgress) await drainProgress(() => lastStep >= summary.globalStep)
      return summary
    } finally {
      signal?.removeEventListener('abort', abort)
    }
  }

  /** Alias of `fit`. */
  train(data: Dataset, fitOptions: FitOptions = {}): Promise<TrainSummary> {
    return this.fit(data, fitOptions)
  }
}
