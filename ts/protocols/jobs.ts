/**
 * A protocol's run as a job: the one code path that runs it, wherever it executes (this process, a
 * local worker process, or a queue worker on another machine). A job holds the sweep's options,
 * with every path absolute so that a worker started elsewhere finds the same files, and the run's
 * key; the worker builds the sweep's context (datasets, model on its own device) once and runs the
 * job with `executeRun`, which writes the run's folder on the storage all workers share and resumes
 * from the checkpoint found there.
 */
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs'
import { hostname } from 'node:os'
import { isAbsolute, join, resolve } from 'node:path'
import { BUILTIN_MODEL } from '../clip'
import { type ErrorCode, INPUT_ERROR_CODES, invalidArgument, PromptclipError, toPromptclipError } from '../errors'
import { writeFileAtomic } from '../report'
import type { ProtocolEvent, ProtocolOptions, RunKey, RunRecord } from './index'
import { runId } from './plan'
import { type Context, damageOf, executeRun, prepareProtocol } from './run'

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

/**
 * The start of a sweep spread over workers: the runs finished earlier, as their records (their
 * settings checked as the single-process runner checks them), and the runs left to do.
 */
export async function splitFinished(
  ctx: Context,
  runs: RunKey[],
  out: string,
): Promise<{ records: Map<number, RunRecord>; left: { index: number; run: RunKey }[] }> {
  const records = new Map<number, RunRecord>()
  const left: { index: number; run: RunKey }[] = []
  for (const [index, run] of runs.entries()) {
    const dir = runFolder(out, run)
    const files = { result: join(dir, 'result.json'), learner: join(dir, 'learner.safetensors') }
    // A damaged finished run goes back to the workers (executeRun would redo it here).
    if (existsSync(files.result) && (await damageOf(ctx, files, run)) !== null) {
      for (const f of ['result.json', 'learner.safetensors', 'train.json', 'checkpoint.safetensors']) {
        rmSync(join(dir, f), { force: true })
      }
    }
    if (existsSync(files.result)) {
      records.set(index, await executeRun(ctx, run, index, runs.length))
    } else {
      left.push({ index, run })
    }
  }
  return { records, left }
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

/**
 * Runs jobs on one device. The context of the latest sweep is kept, so a worker loads the model
 * and opens the datasets once per sweep, not once per run.
 */
export class JobRunner {
  private cached: { key: string; ctx: Promise<Context> } | null = null

  /** `device`: this worker's device, over the one the sweep was started with. */
  constructor(readonly device?: string) {}

  get executor(): Executor {
    return { host: hostname(), pid: process.pid, device: this.device ?? 'cpu' }
  }

  private context(options: SweepOptions): Promise<Context> {
    const own: ProtocolOptions = { ...options, device: this.device ?? options.device }
    const key = JSON.stringify(own)
    if (this.cached?.key !== key) {
      const ctx = prepareProtocol(own)
      // A context that failed to build is not kept: the next job tries again.
      ctx.catch(() => {
        if (this.cached?.ctx === ctx) this.cached = null
      })
      this.cached = { key, ctx }
    }
    return this.cached.ctx
  }

  /** Runs the job and returns its record; an error that ends it is also left in failed.json. */
  async run(job: RunJob, emit: (e: ProtocolEvent) => void, signal?: AbortSignal): Promise<RunRecord> {
    const failure = failurePath(job.options.out, job.run)
    try {
      const ctx = await this.context(job.options)
      // One job at a time per runner: the cached context takes this job's listeners.
      ctx.emit = emit
      ctx.signal = signal
      ctx.executor = this.executor
      const record = await executeRun(ctx, job.run, job.index, job.total)
      rmSync(failure, { force: true })
      return record
    } catch (e) {
      const err = toPromptclipError(e)
      if (err instanceof PromptclipError && err.code !== 'E_CANCELLED') {
        const record: RunFailure = {
          code: err.code,
          message: err.message,
          executedBy: this.executor,
          at: new Date().toISOString(),
        }
        mkdirSync(runFolder(job.options.out, job.run), { recursive: true })
        writeFileAtomic(failure, `${JSON.stringify(record, null, 2)}\n`)
      }
      throw err
    }
  }
}
