/**
 * The protocols' types: what a caller asks for (options), what a run is (its key) and what it
 * leaves (records, events, results). Every file of the protocols imports them from here; this
 * file imports none of them.
 */
import type { Precision } from '../clip'
import type { DatasetSplits } from '../datasets'
import type { Method, MethodFields } from '../generated/methods'
import type { TrainOptions } from '../train'

/** The papers' seeds: CoOp's scripts run 1, 2 and 3 and report the mean. */
export const DEFAULT_SEEDS: readonly number[] = [1, 2, 3]
/** The papers' shots: few-shot sweeps 1 to 16, the other protocols train on 16. */
export const FEW_SHOT_SHOTS: readonly number[] = [1, 2, 4, 8, 16]
export const DEFAULT_SHOTS = 16

export type ProtocolName = 'few-shot' | 'base-to-new' | 'cross-dataset' | 'domain-generalization'

/** Zero-shot CLIP (one template), prompt ensembling, and every learner of the core's catalogue
 *  (the linear probe, the prompt learners). */
export type ProtocolMethod = 'zero-shot' | 'ensemble' | Method

export interface ProtocolOptions {
  protocol: ProtocolName
  /** A CLIP checkpoint folder or file, or a hub id (default: the built-in model). */
  model?: string
  /** For a hub id: a branch, tag or commit (default main). */
  revision?: string
  device?: string
  dtype?: Precision
  /** The dataset learned on: a catalog name, an image folder, a split file or a CSV (see
   *  `openDataset`), or splits in memory (`{ name, classNames, train, test, ... }`). It needs a
   *  test split. */
  dataset: string | DatasetSplits
  /** Image root for a split file or CSV whose paths are relative to somewhere else. */
  imageRoot?: string
  /** Where catalog datasets live (default: $PROMPTCLIP_DATA, else ./data). */
  dataRoot?: string
  /** cross-dataset / domain-generalization: the datasets evaluated on (same forms as `dataset`;
   *  default for an ImageNet source: the papers' ten datasets / ImageNet's four variants). */
  targets?: (string | DatasetSplits)[]
  /** Default: every method. */
  methods?: ProtocolMethod[]
  /** Default: [1, 2, 4, 8, 16] for few-shot, [16] otherwise (`FEW_SHOT_SHOTS`, `DEFAULT_SHOTS`). */
  shots?: number[]
  /** Default: [1, 2, 3] (`DEFAULT_SEEDS`). */
  seeds?: number[]
  /** Where runs, checkpoints and results go. Rerunning with the same folder skips finished runs
   *  and resumes an interrupted one from its checkpoint. */
  out: string
  /** Per-method training options over each method's paper recipe (CoOp: 50 / 100 / 200 epochs by
   *  shots, as the official scripts; CoCoOp: 10 epochs at batch 1; KgCoOp: the core's recipe). */
  train?: Partial<Record<ProtocolMethod, TrainOptions>>
  /** Per-method learner options (e.g. `{ coop: { nCtx: 4, ctxInit: 'a photo of a' } }`). */
  learners?: { [M in Method]?: MethodFields[M] }
  /** Images per forward pass at evaluation. */
  batchSize?: number
  /** Skip images that cannot be read (and count them) instead of failing. */
  skipUnreadable?: boolean
  /** Spread the runs over a job queue: a Redis URL (`redis://host:port`). Each run becomes one
   *  BullMQ job, processed by `startWorker` / `promptclip worker` processes on any machine that
   *  sees `out` and the datasets at the same paths; this call waits for them and writes the
   *  results as without a queue. */
  queue?: string
  /** Without a queue: one local worker process per device (e.g. `['cuda:0', 'cuda:1']`). With one
   *  device or none, the runs execute in this process. */
  devices?: string[]
  onEvent?: (event: ProtocolEvent) => void
  signal?: AbortSignal
}

/** One run: a method on a dataset at a shot count and seed (0 and 0 for the zero-shot baselines). */
export interface RunKey {
  method: ProtocolMethod
  dataset: string
  shots: number
  seed: number
}

export type ProtocolEvent =
  | { type: 'plan'; runs: RunKey[] }
  | { type: 'run-start'; run: RunKey; index: number; total: number; resumed: boolean }
  | { type: 'run-skipped'; run: RunKey; index: number; total: number; reason: 'finished' }
  | {
      type: 'train-progress'
      run: RunKey
      epoch: number
      epochs: number
      step: number
      stepsPerEpoch: number
      loss: number
    }
  | {
      type: 'eval-progress'
      run: RunKey
      split: string
      done: number
      total: number
      imagesPerSecond: number
      etaSeconds: number
    }
  | { type: 'run-done'; run: RunKey; index: number; total: number; metrics: Record<string, number> }
  | { type: 'log'; message: string }

export interface ProtocolResults {
  protocol: ProtocolName
  /** results.json, results.md and report.html in `out`. */
  files: { json: string; markdown: string; report: string }
  /** The markdown table (mean ± std over seeds). */
  table: string
  /** Every run's record, as in results.json. */
  runs: RunRecord[]
}

/** One evaluation of a run: a split of the source dataset, or a target dataset. */
export interface EvalRecord {
  /** 'test', 'base', 'new', or a target dataset's name. */
  split: string
  dataset: string
  classNames: string[]
  total: number
  correct: number
  /** Percentages. */
  accuracy: number
  errorRate: number
  macroF1: number
  topK: { k: number; accuracy: number }[]
  perClass: { name: string; accuracy: number | null; support: number }[]
  /** Non-zero cells of confusion[true][predicted], as [true, predicted, count]. */
  confusion: [number, number, number][]
  /** Images that could not be read and were left out (with `skipUnreadable`). */
  skipped: number
  seconds: number
}

export interface RunRecord {
  run: RunKey
  /** Everything the run depends on; a rerun with another config refuses to mix results. */
  config: Record<string, unknown>
  evaluations: EvalRecord[]
  /** Splits this method cannot score (e.g. the linear probe on classes it has not seen). */
  unsupported: string[]
  train: {
    seconds: number
    epochs: number
    resumedAfterEpoch: number
    epochLoss: number[]
    epochAccuracy: number[]
    trainImages: number
    skipped: number
    details?: Record<string, unknown>
  } | null
  timings: { trainSeconds: number; evalSeconds: number; totalSeconds: number }
  versions: Record<string, string>
  /** The worker that ran it: host, process and device. */
  executedBy: { host: string; pid: number; device: string }
  finishedAt: string
}
