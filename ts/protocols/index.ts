/**
 * The papers' evaluation protocols (few-shot, base-to-new, cross-dataset transfer, domain
 * generalisation) over every method the core offers, with resumable runs and results on disk
 * (JSON, a markdown table and an HTML report).
 *
 * Layout of `out`:
 *   runs/<run>/result.json        one finished run: its full config, metrics, timings, versions
 *   runs/<run>/learner.safetensors the trained learner (reusable with PromptLearner.load)
 *   runs/<run>/train.json         its training summary (so evaluation can resume without training)
 *   runs/<run>/checkpoint.safetensors  while a run trains (removed when it is finished)
 *   runs/<run>/failed.json        the error that ended a run on a worker (removed when it finishes)
 *   results.json, results.md, report.html
 */

import { executeProtocol } from './run'
import type { ProtocolOptions, ProtocolResults } from './types'

export type { QueueWorker, RunStatus, WorkerEvent, WorkerOptions } from './queue'
export { startWorker, sweepStatus } from './queue'
export type {
  EvalRecord,
  ProtocolEvent,
  ProtocolMethod,
  ProtocolName,
  ProtocolOptions,
  ProtocolResults,
  RunKey,
  RunRecord,
} from './types'

/**
 * Runs a protocol: every method at every shot count and seed, each run's results written to
 * `out` as soon as it finishes; then the table, results.json and the HTML report. Options are
 * checked before anything is loaded. Rerunning the same call skips finished runs and resumes an
 * interrupted one from its checkpoint.
 */
export async function runProtocol(options: ProtocolOptions): Promise<ProtocolResults> {
  return executeProtocol(options)
}
