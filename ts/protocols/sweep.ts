/**
 * A sweep's jobs as plain data, and where their files live: the options a job carries (every path
 * absolute, so that a worker started elsewhere finds the same files), a run's key, its folder and
 * failure record, which errors are not worth a retry, and the records of a spread sweep. Nothing
 * here runs a run (`jobs.ts` does).
 */
import { createHash } from 'node:crypto'
import { existsSync, readFileSync } from 'node:fs'
import { isAbsolute, join, resolve } from 'node:path'
import { BUILTIN_MODEL } from '../clip'
import { type ErrorCode, INPUT_ERROR_CODES, invalidArgument, PromptclipError } from '../errors'
import { runId } from './plan'
import type { ProtocolOptions, RunKey, RunRecord } from './types'

/** The options of a sweep as a job carries them: plain data, datasets by name or path. */
export type SweepOptions = Omit<ProtocolOptions, 'onEvent' | 'signal' | 'queue' | 'devices' | 'dataset' | 'targets'> & {
  dataset: string
  targets?: string[]
}

export interface RunJob {
  /** The sweep: a digest of its output folder's absolute path. */
  sweep: string
  options: SweepOptions
  run: RunKey
  index: number
  total: number
}

/** Which worker ran a run, as its record notes it. */
export interface Executor {
  host: string
  pid: number
  device: string
}

/**
 * Errors that running the job again cannot fix: the input is at fault, or the run is
 * deterministic and would fail the same way. The queue fails such a job at once, with its message.
 */
const NOT_RETRIED: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  // Input faults, but for a missing GPU, which another worker may have.
  ...[...INPUT_ERROR_CODES].filter((c) => c !== 'E_CUDA_UNAVAILABLE'),
  'E_NON_FINITE_LOSS',
  'E_NON_FINITE_PARAMS',
])

export function isPermanent(err: unknown): boolean {
  return err instanceof PromptclipError && NOT_RETRIED.has(err.code)
}

/** A path given relative to the caller's folder, made absolute (a catalog name stays a name). */
function absolute(path: string | undefined, pathLike = true): string | undefined {
  if (path === undefined || !pathLike || isAbsolute(path)) return path
  return resolve(path)
}

/** Whether a dataset source is a path (has a separator or a dot) rather than a catalog name. */
const isPath = (source: string) => /[/\\.]/.test(source)

/** The options a job carries: no callbacks, datasets by name or path, paths absolute. */
export function sweepOptions(options: ProtocolOptions): SweepOptions {
  const source = (what: string, s: unknown): string => {
    if (typeof s !== 'string') {
      throw invalidArgument(
        `${what}: a sweep spread over worker processes takes datasets by catalog name or path, not splits in memory`,
      )
    }
    return absolute(s, isPath(s)) as string
  }
  const { onEvent: _onEvent, signal: _signal, queue: _queue, devices: _devices, dataset, targets, ...rest } = options
  return {
    ...rest,
    // The built-in model by name, not by this installation's path: each worker loads its own.
    model: rest.model === undefined || rest.model === BUILTIN_MODEL ? undefined : absolute(rest.model),
    imageRoot: absolute(rest.imageRoot),
    dataRoot: absolute(rest.dataRoot ?? process.env.PROMPTCLIP_DATA ?? 'data'),
    out: absolute(rest.out) as string,
    dataset: source('dataset', dataset),
    targets: targets?.map((t, i) => source(`targets[${i}]`, t)),
  }
}

/** A short, stable name for the sweep writing to `out`. */
export function sweepId(out: string): string {
  return createHash('sha256').update(resolve(out)).digest('hex').slice(0, 12)
}

/** The job's id: one per run of a sweep, so that enqueueing a sweep again adds nothing twice. */
export function jobId(job: Pick<RunJob, 'sweep' | 'run'>): string {
  return `${job.sweep}-${runId(job.run)}`
}

export function runFolder(out: string, run: RunKey): string {
  return join(out, 'runs', runId(run))
}

/** Where a worker leaves the error that ended a run, for the coordinator and `--status`. */
export function failurePath(out: string, run: RunKey): string {
  return join(runFolder(out, run), 'failed.json')
}

export interface RunFailure {
  code: ErrorCode
  message: string
  executedBy: Executor
  at: string
}

export function readFailure(out: string, run: RunKey): RunFailure | null {
  const path = failurePath(out, run)
  if (!existsSync(path)) return null
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as RunFailure
  } catch {
    return null
  }
}

/** A run of a spread sweep that failed for good. */
export interface FailedRun {
  run: RunKey
  code: ErrorCode
  message: string
}

/** The end of a spread sweep: every run's record in plan order, or an error naming each failed run. */
export function sweepRecords(
  runs: RunKey[],
  records: Map<number, RunRecord>,
  failures: FailedRun[],
  out: string,
): RunRecord[] {
  if (failures.length > 0) {
    const list = failures.map((f) => `${runId(f.run)}: ${f.message}`).join('; ')
    throw new PromptclipError(
      failures[0].code,
      `${failures.length} of ${runs.length} runs failed (${list}); the other runs' results are in ${out}`,
    )
  }
  return runs.map((_, i) => records.get(i) as RunRecord)
}
