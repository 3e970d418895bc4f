import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { dirname } from 'node:path'
import { binding, type Native } from './binding'
import { failuresOf, type ImageFailure } from './clip'
import { requireTwoClasses } from './datasets/checks'
import { AbortError, invalidArgument, native, ProgressRelay, PromptclipError } from './errors'
import { checkFingerprint, dataFingerprint, type Fingerprint, modelFingerprint } from './fingerprint'
import { type ImageInput, toNativeImages, toNativeTrainOptions } from './options'
import { lockOutput } from './outputLock'
import type { PromptLearner } from './prompt'

/**
 * Labelled images. `labels[i]` indexes `classNames` when the dataset carries them (as
 * `loadImageFolder` and `loadSplitFile` do), else the learner's class names. A dataset whose class
 * names are the learner's in another order is mapped by name; one with a class the learner does
 * not have is refused.
 */
export interface Dataset {
  images: ImageInput[]
  labels: number[]
  classNames?: string[]
}

/** One training step. `epoch` and `step` count from 1; accuracies are percentages. */
export interface TrainProgress {
  epoch: number
  epochs: number
  step: number
  stepsPerEpoch: number
  globalStep: number
  loss: number
  /** Mean loss and accuracy (%) over the epoch so far. */
  epochLoss: number
  epochAccuracy: number
  lr: number
}

/** Each field left out takes the method's recipe, from the core's catalogue (`methodRecipe`):
 *  CoOp's is Dassl's SGD (lr 0.002, momentum 0.9, weight decay 5e-4, one warmup epoch at 1e-5,
 *  cosine per epoch), Tip-Adapter-F's AdamW; random resized crop + flip unless the model says
 *  otherwise. Methods fitted in one go (the linear probe, Tip-Adapter) take none of these. */
export interface TrainOptions {
  /** The protocol's shots per class and dataset (catalog name): the method's recipe follows them
   *  where its paper does (CoOp: 50 epochs at 1 shot, 100 at 2 and 4, 200 at 8 and 16; ImageNet 50). */
  shots?: number
  dataset?: string
  epochs?: number
  /** Optimiser steps instead of epochs: the run ends mid-epoch after the last, and a per-step
   *  cosine anneals over them. The default of a method whose recipe counts steps (CLIP-LoRA:
   *  500 x shots, the shots per class of the data when no protocol gives them); giving `epochs`
   *  instead trains whole epochs. */
  steps?: number
  /** Where the cosine ends (default the recipe's: 0, CLIP-LoRA's 1e-6). */
  minLr?: number
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
  /** Write a training checkpoint (atomically) every `checkpointEvery` epochs, and when the run is
   *  cancelled (its `signal` fires), at the step where it stopped: `resumeFrom` continues there,
   *  to the same result as an uninterrupted run. */
  checkpointPath?: string
  checkpointEvery?: number
  /** Images per forward pass of the image tower within a step (default 64). */
  encodeBatchSize?: number
  /** Leave out training images that cannot be read (missing, corrupt) instead of failing, and
   *  list them in the summary's `skipped` (default false: the first one fails the run, naming it). */
  skipUnreadable?: boolean
  /** A new order of the training images every epoch (default true). false: the data's own order
   *  every epoch, as the official code's loader without shuffling, so that a run can be compared
   *  step by step with the official code's. */
  shuffle?: boolean
  /** Start the learned tensors from this file instead of the method's initialisation: a learner
   *  file (`save()`), or safetensors under the official code's names (`importOfficial`'s). Its
   *  sha256 is kept in checkpoints; a resumed run continues from the checkpoint. */
  initFrom?: string
}

export interface FitOptions {
  /** Called after each step, in order. If it throws, training stops as if cancelled (writing a
   *  checkpoint when `checkpointPath` is set) and `fit` rejects with that error. */
  onProgress?: (p: TrainProgress) => void
  /** Cancels training at the next step boundary: `fit` rejects with an AbortError (E_CANCELLED)
   *  whose message names the checkpoint written there, if any. */
  signal?: AbortSignal
  /** Continue from a checkpoint written by an earlier run with the same options. */
  resumeFrom?: string
  /** A validation split: the linear probe searches C on it. */
  validation?: Dataset
}

export interface TrainSummary {
  epochs: number
  /** Epochs already done when this run started (0 unless resumed from a checkpoint). */
  resumedAfterEpoch: number
  /** Steps of the next epoch already done when this run started (more than 0 only when resumed
   *  from the checkpoint of a run cancelled mid-epoch). */
  resumedAtStep: number
  /** Training images left out as unreadable (`skipUnreadable`), by index; empty when none. */
  skipped: ImageFailure[]
  globalStep: number
  epochLoss: number[]
  /** Percentages. */
  epochAccuracy: number[]
  seconds: number
  /** What a method's preparation and closing search report (the linear probe's C search,
   *  Tip-Adapter's alpha and beta). */
  details?: Record<string, unknown>
  /** Their one-line accounts in words ("alpha 2.71 and beta 1.48, searched on the validation
   *  split: accuracy 55.6%"); empty for methods that only train. */
  fitted: string[]
}

/** Labels indexing `classNames` (the learner's), with a dataset's own class names mapped onto them
 *  by name. Each label must index its class list (the dataset's own when it has one): the mapping
 *  and the two-class check here name classes by it, and napi's u32 would garble a negative one.
 *  The core checks the rest (an empty dataset, as many labels as images). */
export function alignLabels(data: Dataset, classNames: string[], what = 'dataset'): number[] {
  if (!data || !Array.isArray(data.images) || !Array.isArray(data.labels)) {
    throw invalidArgument(`${what} must be { images: [...], labels: [...] }`)
  }
  const own = data.classNames ?? classNames
  const mapped = data.classNames !== undefined && !data.classNames.every((n, i) => n === classNames[i])
  for (const [i, l] of data.labels.entries()) {
    if (!Number.isInteger(l) || l < 0 || l >= own.length) {
      throw invalidArgument(`${what}: labels[${i}] = ${l} is out of range for ${own.length} classes`)
    }
  }
  if (!mapped || !data.classNames) return data.labels
  const index = new Map(classNames.map((n, i) => [n, i]))
  const unknown = data.classNames.filter((n) => !index.has(n))
  if (unknown.length > 0) {
    const list = unknown.slice(0, 5).map((n) => JSON.stringify(n))
    throw invalidArgument(
      `${what}: class ${list.join(', ')}${unknown.length > 5 ? ', ...' : ''} ` +
        `is not among the learner's ${classNames.length} classes (${classNames.slice(0, 5).join(', ')}, ...)`,
    )
  }
  const map = data.classNames.map((n) => index.get(n) as number)
  return data.labels.map((l) => map[l])
}

function toNativeDataset(data: Dataset, classNames: string[], what: string): Native.NativeDataset {
  return { images: toNativeImages(data.images, `${what}.images`), labels: alignLabels(data, classNames, what) }
}

/** Trains a learner (CLIP stays frozen). Training runs off the main thread. */
export class Trainer {
  readonly learner: PromptLearner
  readonly options: TrainOptions

  constructor(learner: PromptLearner, options: TrainOptions = {}) {
    this.learner = learner
    this.options = { ...options }
  }

  /**
   * Train. From this call until it settles, `context()` and another `fit` on the learner throw
   * E_BUSY; its `predict`, `interpret` and `save` wait for it (the learner runs one call at a
   * time, in call order), and `fit` waits for those made before it.
   */
  async fit(data: Dataset, fitOptions: FitOptions = {}): Promise<TrainSummary> {
    const { signal, onProgress, resumeFrom, validation } = fitOptions
    const learner = this.learner
    if (learner.training) throw new PromptclipError('E_BUSY', 'the learner is already training; one fit at a time')
    const classNames = learner.info.classNames
    const train = toNativeDataset(data, classNames, 'dataset')
    // One class trains to loss 0 and scores 100%: refused, naming the class the images are of.
    requireTwoClasses({ labels: train.labels, classNames }, 'the training data')
    // An empty validation split (--shots K on classes of K images or fewer) is no validation: the
    // methods that need one (the linear probe's C search) say so, the others do not use it.
    const validationGiven = Array.isArray(validation?.images) && validation.images.length > 0 ? validation : undefined
    const val = validationGiven ? toNativeDataset(validationGiven, classNames, 'validation') : undefined
    if (signal?.aborted) throw new AbortError('cancelled before training started')
    const options = toNativeTrainOptions(this.options, resumeFrom)
    const checkpoint = this.options.checkpointPath
    learner.training = true
    let unlock: (() => void) | undefined
    try {
      if (checkpoint !== undefined) {
        try {
          mkdirSync(dirname(checkpoint), { recursive: true })
        } catch {
          // The core names a checkpoint path it cannot write, before any work.
        }
        unlock = lockOutput(checkpoint)
        await this.checkAndRecordFingerprint(checkpoint, data, validationGiven, resumeFrom)
      }
      return await learner.exclusive(async () => {
        try {
          return await this.run(train, val, options, onProgress, signal)
        } finally {
          // A fit may have allocated state whose shapes the data decide (a cache). A learner
          // whose state a failure poisoned keeps its last description (the failure is the error).
          try {
            learner.refreshInfo()
          } catch {}
        }
      }, signal)
    } finally {
      unlock?.()
      learner.training = false
    }
  }

  /**
   * A checkpoint is resumed only for the data and options it was trained on: its fingerprint
   * (`<checkpoint>.fingerprint.json`, written before training starts) must match this fit's.
   * Checkpoints written before fingerprints were kept are checked by the core's recipe alone.
   */
  private async checkAndRecordFingerprint(
    checkpoint: string,
    data: Dataset,
    validation: Dataset | undefined,
    resumeFrom: string | undefined,
  ): Promise<void> {
    const { checkpointPath: _, checkpointEvery: __, encodeBatchSize: ___, ...recipe } = this.options
    const info = this.learner.info
    const now: Fingerprint = {
      version: 1,
      model: await modelFingerprint(this.learner.clip.info.source),
      classNames: info.classNames,
      train: await dataFingerprint(data.images, alignLabels(data, info.classNames)),
      ...(validation
        ? {
            validation: await dataFingerprint(
              validation.images,
              alignLabels(validation, info.classNames, 'validation'),
            ),
          }
        : {}),
      options: { method: info.method, ...info.options, ...recipe },
    }
    if (resumeFrom !== undefined && existsSync(`${resumeFrom}.fingerprint.json`)) {
      let was: Fingerprint
      try {
        was = JSON.parse(readFileSync(`${resumeFrom}.fingerprint.json`, 'utf8')) as Fingerprint
      } catch {
        throw invalidArgument(`${resumeFrom}.fingerprint.json is damaged; delete it and the checkpoint to start afresh`)
      }
      checkFingerprint(
        `the checkpoint ${resumeFrom}`,
        was,
        now,
        'To start afresh, fit without resumeFrom (on the command line: --no-resume), or write to another checkpoint (--out)',
      )
    }
    const file = `${checkpoint}.fingerprint.json`
    try {
      writeFileSync(`${file}.tmp`, `${JSON.stringify(now)}\n`)
      renameSync(`${file}.tmp`, file)
    } catch {
      // A checkpoint path that cannot be written (or a full disk): the core refuses it by name.
      // `force` ignores only ENOENT; a parent that is a file (ENOTDIR) must not escape either.
      try {
        rmSync(`${file}.tmp`, { force: true })
      } catch {
        // Nothing was written there.
      }
    }
  }

  /** The native training call, its progress relayed and its signal tied to a cancel token. */
  private async run(
    train: Native.NativeDataset,
    val: Native.NativeDataset | undefined,
    options: Record<string, unknown>,
    onProgress: FitOptions['onProgress'],
    signal: AbortSignal | undefined,
  ): Promise<TrainSummary> {
    const token = new binding.NativeCancelToken()
    const abort = () => token.cancel()
    signal?.addEventListener('abort', abort, { once: true })
    try {
      let lastStep = -1
      const relay = onProgress
        ? new ProgressRelay<Native.NativeProgress>((p) => {
            lastStep = p.globalStep
            onProgress({ ...p })
          }, abort)
        : undefined
      const run = () => this.learner.native.train(train, val, options, relay?.call, token)
      // A fit on features (the linear probe, epochs 0) reports no steps.
      const summary = relay
        ? await relay.run(run, (s) => s.epochs === 0 || lastStep >= s.globalStep)
        : await native(run)
      const { details, skipped, ...rest } = summary
      const out = { ...rest, skipped: failuresOf(skipped) }
      return details == null ? out : { ...out, details: details as Record<string, unknown> }
    } finally {
      signal?.removeEventListener('abort', abort)
    }
  }
}
