/**
 * The papers' evaluation protocols (few-shot, base-to-new, cross-dataset transfer, domain
 * generalisation) over every method the core offers, with resumable runs and results on disk
 * (JSON, a markdown table and an HTML report).
 *
 * CONTRACT STUB: the types are the agreed interface; the runner lands in the next commits.
 */
import { PromptclipError } from '../errors'
import type { TrainOptions } from '../train'

export type ProtocolName = 'few-shot' | 'base-to-new' | 'cross-dataset' | 'domain-generalization'

/** Zero-shot CLIP (one template), prompt ensembling, the linear probe and the prompt learners. */
export type ProtocolMethod = 'zero-shot' | 'ensemble' | 'linear-probe' | 'coop' | 'cocoop' | 'kgcoop'

export interface ProtocolOptions {
  protocol: ProtocolName
  /** A CLIP checkpoint folder or file (default: the built-in model). */
  model?: string
  device?: string
  dtype?: 'fp32' | 'fp16' | 'bf16'
  /** The dataset learned on: a catalog name, an image folder, a split file, or a CSV
   *  (see `openDataset`). */
  dataset: string
  /** Image root for a split file or CSV whose paths are relative to somewhere else. */
  imageRoot?: string
  /** cross-dataset / domain-generalization: the datasets evaluated on (same forms as `dataset`). */
  targets?: string[]
  /** Default: every method. */
  methods?: ProtocolMethod[]
  /** Default: [1, 2, 4, 8, 16] for few-shot, [16] otherwise. */
  shots?: number[]
  /** Default: [1, 2, 3]. */
  seeds?: number[]
  /** Where runs, checkpoints and results go. Rerunning with the same folder skips finished runs
   *  and resumes an interrupted one from its checkpoint. */
  out: string
  /** Per-method training options over each method's paper recipe. */
  train?: Partial<Record<ProtocolMethod, TrainOptions>>
  /** Images per forward pass at evaluation. */
  batchSize?: number
  /** Skip images that cannot be read (and count them) instead of failing. */
  skipUnreadable?: boolean
  onEvent?: (event: ProtocolEvent) => void
  signal?: AbortSignal
}

/** One run: a method on a dataset at a shot count and seed. */
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
}

export async function runProtocol(_options: ProtocolOptions): Promise<ProtocolResults> {
  throw new PromptclipError('E_UNSUPPORTED', 'runProtocol is not implemented yet')
}
