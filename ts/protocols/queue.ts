/**
 * Sweeps on a job queue: BullMQ on Redis. The coordinator (`runProtocol({ queue })`, `promptclip
 * run --queue`) enqueues one job per unfinished run and waits; workers (`startWorker`, `promptclip
 * worker`), one per GPU on any number of machines, take jobs and run them through the same job
 * code as a single-process run (jobs.ts). Results land in the run folders under `out`, which every
 * worker must see at the same path (a shared file system), so the coordinator builds the same
 * results and report as without a queue.
 *
 * Reliability is BullMQ's: a worker holds a lock on its job and renews it while it runs; when the
 * worker dies (kill -9, a lost machine) the lock expires, another worker's stalled-job check puts
 * the job back, and the run resumes from the checkpoint its epoch left in the run folder. A run that
 * fails for bad input fails at once with its message (`UnrecoverableError`), other failures are
 * retried up to `ATTEMPTS` times.
 */

import { readdirSync, readFileSync, rmdirSync } from 'node:fs'
import { join } from 'node:path'
import type { Job, Queue } from 'bullmq'
import { AbortError, invalidArgument, PromptclipError, toPromptclipError } from '../errors'
import { type Context, firstDifference, metricsOf } from './context'
import { JobRunner, splitFinished } from './jobs'
import { runId } from './plan'
import {
  type FailedRun,
  isPermanent,
  jobId,
  type RunJob,
  readFailure,
  runFolder,
  sweepId,
  sweepOptions,
  sweepRecords,
} from './sweep'
import type { ProtocolEvent, RunKey, RunRecord } from './types'

/** The queue every promptclip worker listens on. */
export const QUEUE_NAME = 'promptclip-runs'
/** Tries per job for failures that are not the input's fault (a lost worker does not count). */
export const ATTEMPTS = 3
/** How long a dead worker's job waits before another worker takes it (BullMQ's lock duration). */
export const DEFAULT_LOCK_MS = 30_000

/** A run's progress as a job carries it: the latest event, for the coordinator and --status. */
type JobProgress = Extract<ProtocolEvent, { type: 'train-progress' | 'eval-progress' }> | { type: 'started' }

export function checkQueueUrl(url: unknown): string {
  if (typeof url !== 'string' || !/^rediss?:\/\/[^\s]+$/.test(url)) {
    throw invalidArgument(`queue: ${JSON.stringify(url)} is not a Redis URL (redis://host:port or rediss://...)`)
  }
  return url
}

function connection(url: string) {
  // Workers block on Redis between jobs: BullMQ needs commands to wait for a reconnection
  // instead of failing after a few retries.
  return { url, maxRetriesPerRequest: null }
}

type BullMQ = typeof import('bullmq')
let bullmq: Promise<BullMQ> | undefined

/** BullMQ (and through it ioredis), loaded when a queue is first asked for: they are optional
 *  peer dependencies, and nothing else needs them. */
export function loadBullMQ(): Promise<BullMQ> {
  // BullMQ loads ioredis itself only when a connection is made: ask for both now.
  bullmq ??= Promise.all([import('bullmq'), import('ioredis')])
    .then(([m]) => m)
    .catch((e: unknown) => {
      bullmq = undefined
      throw new PromptclipError(
        'E_MISSING_DEPENDENCY',
        'the job queue needs the packages bullmq and ioredis: npm install bullmq@6.7.0 ioredis@5.11.1',
        { cause: e },
      )
    })
  return bullmq
}

/** How long a queue may take to answer before the sweep or worker gives up. */
export const CONNECT_MS = 2000
/** Connection errors that no retry mends: fail at once rather than wait out CONNECT_MS. */
const FATAL = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'ECONNRESET'])

/** Connects, or fails within `ms` with E_NETWORK and a message that names the URL (no endless
 *  retries): at once when Redis refuses the connection or its host does not resolve. */
async function openQueue(url: string, ms = CONNECT_MS): Promise<Queue> {
  const { Queue } = await loadBullMQ()
  const queue = new Queue(QUEUE_NAME, { connection: connection(url) })
  let timer: NodeJS.Timeout | undefined
  let onError: (e: Error) => void = () => {}
  queue.on('error', (e) => onError(e)) // connection errors surface through the race below
  try {
    await Promise.race([
      queue.waitUntilReady(),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer within ${ms / 1000} s`)), ms)
        onError = (e) => {
          const code = (e as NodeJS.ErrnoException).code
          if (code !== undefined && FATAL.has(code)) reject(e)
        }
      }),
    ])
    return queue
  } catch (e) {
    await queue.close().catch(() => {})
    const err = e as NodeJS.ErrnoException
    const why =
      err.code === 'ECONNREFUSED'
        ? 'the connection was refused'
        : err.code === 'ENOTFOUND' || err.code === 'EAI_AGAIN'
          ? 'its host name does not resolve'
          : err.message
    throw new PromptclipError(
      'E_NETWORK',
      `cannot reach the queue's Redis at ${url}: ${why}. Check that redis-server runs there and that the URL is right.`,
      { cause: e },
    )
  } finally {
    clearTimeout(timer)
    onError = () => {}
  }
}

/** Fails as `openQueue` does when the queue cannot be reached; checked before a sweep loads anything. */
export async function checkQueueReachable(url: string): Promise<void> {
  await (await openQueue(checkQueueUrl(url))).close()
}

/** Removes a folder the sweep made and left empty (a queue that could not be reached). */
function removeIfEmpty(dir: string): void {
  try {
    if (readdirSync(dir).length === 0) rmdirSync(dir)
  } catch {}
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/**
 * The coordinator: enqueues the runs that are not finished, follows them until each is done or
 * failed, and returns every run's record in plan order. Finished runs are skipped as without a
 * queue (their settings are checked against these).
 */
export async function sweepOnQueue(ctx: Context, runs: RunKey[], url: string): Promise<RunRecord[]> {
  const options = sweepOptions(ctx.options)
  const sweep = sweepId(options.out)
  let queue: Queue
  try {
    queue = await openQueue(checkQueueUrl(url))
  } catch (e) {
    removeIfEmpty(join(options.out, 'runs'))
    removeIfEmpty(options.out)
    throw e
  }
  try {
    const { records, left } = await splitFinished(ctx, runs, options.out)
    const pending = new Map<string, { index: number; run: RunKey; started: boolean }>()
    for (const { index, run } of left) {
      const job: RunJob = { sweep, options, run, index, total: runs.length }
      const id = jobId(job)
      const existing = await queue.getJob(id)
      const state = existing ? await existing.getState() : 'unknown'
      if (existing && (state === 'completed' || state === 'failed')) {
        // Left by an earlier sweep: a completed job whose result is gone, or a failed one. This
        // sweep runs it again, with these options.
        await existing.remove()
      }
      if (existing && state !== 'completed' && state !== 'failed' && state !== 'unknown') {
        // Queued earlier and not finished: it must be this sweep's run, not one of other settings.
        const diff = firstDifference(
          (existing.data as RunJob).options as Record<string, unknown>,
          options as Record<string, unknown>,
        )
        if (diff !== null) {
          throw invalidArgument(
            `${runId(run)} of ${options.out} is already queued (${state}) with a different ${diff}; ` +
              'wait for it to finish, or use another output folder',
          )
        }
      }
      if (!existing || state === 'completed' || state === 'failed' || state === 'unknown') {
        await queue.add('run', job, {
          jobId: id,
          attempts: ATTEMPTS,
          backoff: { type: 'fixed', delay: 1000 },
          removeOnComplete: { count: 10_000 },
          removeOnFail: { count: 10_000 },
        })
      }
      pending.set(id, { index, run, started: false })
    }
    ctx.emit({ type: 'log', message: `${pending.size} runs queued on ${url}; waiting for workers` })
    const failures: FailedRun[] = []
    while (pending.size > 0) {
      if (ctx.signal?.aborted) {
        throw new AbortError(
          `stopped waiting; the ${pending.size} queued runs go on on the workers (promptclip run --status shows them)`,
        )
      }
      for (const [id, p] of pending) {
        const job = await queue.getJob(id)
        const state = job ? await job.getState() : 'unknown'
        if (state === 'active' && job) {
          if (!p.started) {
            p.started = true
            ctx.emit({ type: 'run-start', run: p.run, index: p.index, total: runs.length, resumed: false })
          }
          const progress = job.progress as JobProgress | number
          if (typeof progress === 'object' && progress.type !== 'started') ctx.emit(progress)
        } else if (state === 'completed') {
          const record = JSON.parse(
            readFileSync(join(runFolder(options.out, p.run), 'result.json'), 'utf8'),
          ) as RunRecord
          records.set(p.index, record)
          ctx.emit({ type: 'run-done', run: p.run, index: p.index, total: runs.length, metrics: metricsOf(record) })
          pending.delete(id)
        } else if (state === 'failed' || state === 'unknown') {
          const failure = readFailure(options.out, p.run)
          const message = failure?.message ?? job?.failedReason ?? 'the job was removed from the queue'
          failures.push({ run: p.run, code: failure?.code ?? 'E_INTERNAL', message })
          ctx.emit({ type: 'log', message: `${runId(p.run)} failed: ${message}` })
          pending.delete(id)
        }
      }
      if (pending.size > 0) await sleep(500)
    }
    return sweepRecords(runs, records, failures, options.out)
  } finally {
    await queue.close()
  }
}

export interface WorkerOptions {
  /** The Redis URL the coordinator enqueued to. */
  queue: string
  /** This worker's device: "cpu", "cuda" or "cuda:N" (default: the one the sweep was run with). */
  device?: string
  /** How long a job waits after this worker dies before another takes it (default 30 s). */
  lockMs?: number
  /** What the worker does: a job taken, its progress, its end. */
  onEvent?: (e: WorkerEvent) => void
}

export type WorkerEvent =
  | { type: 'job-start'; job: string; run: RunKey; out: string; attempt: number }
  | { type: 'progress'; job: string; event: ProtocolEvent }
  | { type: 'job-done'; job: string; run: RunKey }
  | { type: 'job-failed'; job: string; run: RunKey; code: string; message: string; retried: boolean }

export interface QueueWorker {
  /** Stops taking jobs. A run in progress stops at a checkpoint and goes back to the queue. */
  close(): Promise<void>
}

/** A worker: takes the queue's jobs one at a time and runs them on its device. */
export async function startWorker(options: WorkerOptions): Promise<QueueWorker> {
  const url = checkQueueUrl(options.queue)
  const lockMs = options.lockMs ?? DEFAULT_LOCK_MS
  if (!Number.isSafeInteger(lockMs) || lockMs < 500) {
    throw invalidArgument(`lockMs: ${lockMs} is not a whole number of milliseconds of at least 500`)
  }
  // Fail fast on a wrong URL instead of retrying forever in the background.
  await (await openQueue(url)).close()
  const { UnrecoverableError, WaitingError, Worker } = await loadBullMQ()
  const runner = new JobRunner(options.device)
  const emit = options.onEvent ?? (() => {})
  const stop = new AbortController()
  const processor = async (job: Job<RunJob>, token?: string) => {
    const { run } = job.data
    const id = job.id as string
    emit({ type: 'job-start', job: id, run, out: job.data.options.out, attempt: job.attemptsMade + 1 })
    await job.updateProgress({ type: 'started' } satisfies JobProgress)
    let last = 0
    try {
      await runner.run(
        job.data,
        (e) => {
          emit({ type: 'progress', job: id, event: e })
          // Progress goes to Redis at most twice a second, for the coordinator and --status.
          if ((e.type === 'train-progress' || e.type === 'eval-progress') && Date.now() - last > 500) {
            last = Date.now()
            job.updateProgress(e).catch(() => {})
          }
        },
        stop.signal,
      )
      emit({ type: 'job-done', job: id, run })
      return { run: runId(run) }
    } catch (e) {
      const err = toPromptclipError(e)
      if (err instanceof PromptclipError && err.code === 'E_CANCELLED' && stop.signal.aborted) {
        // This worker is closing: the run's checkpoint is written; hand the job back.
        await job.moveToWait(token)
        throw new WaitingError()
      }
      const permanent = isPermanent(err)
      const code = err instanceof PromptclipError ? err.code : 'E_INTERNAL'
      const message = err instanceof Error ? err.message : String(err)
      emit({
        type: 'job-failed',
        job: id,
        run,
        code,
        message,
        retried: !permanent && job.attemptsMade + 1 < (job.opts.attempts ?? 1),
      })
      throw permanent ? new UnrecoverableError(message) : err
    }
  }
  const worker = new Worker<RunJob>(QUEUE_NAME, processor, {
    connection: connection(url),
    concurrency: 1,
    lockDuration: lockMs,
    stalledInterval: lockMs,
    // A job whose worker died is put back this many times before it counts as failed.
    maxStalledCount: 10,
  })
  worker.on('error', () => {}) // reconnections are BullMQ's; a job's errors go through `processor`
  await worker.waitUntilReady()
  return {
    async close() {
      stop.abort()
      await worker.close()
    },
  }
}

export interface RunStatus {
  sweep: string
  out: string
  run: string
  state: string
  attempts: number
  progress: JobProgress | null
  failedReason?: string
  worker?: string
}

/** Every queued run (of the sweep writing to `out`, when given): state, attempts and progress. */
export async function sweepStatus(url: string, out?: string): Promise<RunStatus[]> {
  const queue = await openQueue(checkQueueUrl(url))
  try {
    const sweep = out === undefined ? undefined : sweepId(out)
    const jobs = await queue.getJobs(['active', 'waiting', 'delayed', 'prioritized', 'completed', 'failed'])
    const rows: RunStatus[] = []
    for (const job of jobs) {
      const data = job.data as RunJob
      if (!data?.run || (sweep !== undefined && data.sweep !== sweep)) continue
      rows.push({
        sweep: data.sweep,
        out: data.options.out,
        run: runId(data.run),
        state: await job.getState(),
        attempts: job.attemptsMade,
        progress: typeof job.progress === 'object' ? (job.progress as JobProgress) : null,
        ...(job.failedReason ? { failedReason: job.failedReason } : {}),
        ...(job.processedBy ? { worker: job.processedBy } : {}),
      })
    }
    return rows.sort((a, b) => a.out.localeCompare(b.out) || a.run.localeCompare(b.run))
  } finally {
    await queue.close()
  }
}
