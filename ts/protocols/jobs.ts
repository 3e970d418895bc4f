/**
 * A protocol's run as a job: the one code path that runs it, wherever it executes (this process, a
 * local worker process, or a queue worker on another machine). A job holds the sweep's options,
 * with every path absolute so that a worker started elsewhere finds the same files, and the run's
 * key; the worker builds the sweep's context (datasets, model on its own device) once and runs the
 * job with `executeRun`, which writes the run's folder on the storage all workers share and resumes
 * from the checkpoint found there.
 */
import { existsSync, mkdirSync, rmSync } from 'node:fs'
import { hostname } from 'node:os'
import { join } from 'node:path'
import { PromptclipError, toPromptclipError } from '../errors'
import { writeFileAtomic } from '../writeAtomic'
import { type Context, damageOf, executeRun, prepareProtocol } from './context'
import { type Executor, failurePath, type RunFailure, type RunJob, runFolder, type SweepOptions } from './sweep'
import type { ProtocolEvent, ProtocolOptions, RunKey, RunRecord } from './types'

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
