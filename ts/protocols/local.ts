/**
 * Sweeps over the devices of one machine without a queue server: one worker process per device
 * (`promptclip worker --local`, forked with an IPC channel), each running the jobs it is handed
 * through the same job code as a queue worker (jobs.ts). A worker that dies mid-run is replaced
 * and its run handed out again, resuming from the run's checkpoint, as a queue would; a run that
 * fails for bad input is not retried.
 */
import { type ChildProcess, fork } from 'node:child_process'
import { join } from 'node:path'
import { PACKAGE_ROOT } from '../binding'
import { AbortError, type ErrorCode, invalidArgument, PromptclipError } from '../errors'
import { type Context, metricsOf } from './context'
import { splitFinished } from './jobs'
import { runId } from './plan'
import { ATTEMPTS } from './queue'
import { type FailedRun, type RunJob, sweepId, sweepOptions, sweepRecords } from './sweep'
import type { ProtocolEvent, RunKey, RunRecord } from './types'

/** Parent -> worker. */
export type ToWorker = { type: 'job'; job: RunJob } | { type: 'stop' }
/** Worker -> parent. */
export type FromWorker =
  | { type: 'ready' }
  | { type: 'event'; event: ProtocolEvent }
  | { type: 'done'; record: RunRecord }
  | { type: 'failed'; code: ErrorCode; message: string; permanent: boolean }

/** The command-line entry that `fork` starts (the package's own CLI). */
const CLI = join(PACKAGE_ROOT, 'dist', 'cli.js')

export function checkDevices(devices: unknown): string[] {
  if (!Array.isArray(devices) || devices.length === 0 || devices.some((d) => typeof d !== 'string' || d === '')) {
    throw invalidArgument(`devices: ${JSON.stringify(devices)} is not a non-empty list of device names`)
  }
  return devices as string[]
}

interface Slot {
  device: string
  child: ChildProcess | null
  job: { entry: Entry } | null
  /** Exits without a finished run since the last one: a worker that cannot start stops here. */
  crashes: number
}

interface Entry {
  index: number
  run: RunKey
  /** Failures that may be retried (as a queue's attempts). */
  attempts: number
  /** Workers that died while running it (as a queue's stalls). */
  losses: number
}

/** Deaths of a run's worker before the run counts as failed (BullMQ's maxStalledCount here). */
const MAX_LOSSES = 10
/** Exits in a row after which a worker slot is given up. */
const MAX_CRASHES = 3

export async function sweepOnLocalWorkers(ctx: Context, runs: RunKey[], devices: string[]): Promise<RunRecord[]> {
  checkDevices(devices)
  const options = sweepOptions(ctx.options)
  const sweep = sweepId(options.out)
  const { records, left } = await splitFinished(ctx, runs, options.out)
  const todo: Entry[] = left.map(({ index, run }) => ({ index, run, attempts: 0, losses: 0 }))
  const failures: FailedRun[] = []
  const slots: Slot[] = devices.map((device) => ({ device, child: null, job: null, crashes: 0 }))
  let stopping = false

  await new Promise<void>((resolveAll, rejectAll) => {
    const finished = () => todo.length === 0 && slots.every((s) => s.job === null)
    const settle = () => {
      if (!finished()) return
      for (const s of slots) s.child?.send({ type: 'stop' } satisfies ToWorker)
      resolveAll()
    }
    const dispatch = (slot: Slot) => {
      if (stopping || slot.job || !slot.child?.connected) return
      const entry = todo.shift()
      if (!entry) return settle()
      slot.job = { entry }
      const job: RunJob = { sweep, options, run: entry.run, index: entry.index, total: runs.length }
      ctx.emit({
        type: 'run-start',
        run: entry.run,
        index: entry.index,
        total: runs.length,
        resumed: entry.attempts + entry.losses > 0,
      })
      slot.child.send({ type: 'job', job } satisfies ToWorker)
    }
    const start = (slot: Slot) => {
      const child = fork(CLI, ['worker', '--local', '--device', slot.device], {
        stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
        serialization: 'advanced',
      })
      slot.child = child
      child.on('message', (m: FromWorker) => {
        if (m.type === 'ready') dispatch(slot)
        else if (m.type === 'event') {
          // Starts and ends of runs are this side's to report (it knows the retries).
          if (m.event.type !== 'run-start' && m.event.type !== 'run-done' && m.event.type !== 'run-skipped')
            ctx.emit(m.event)
        } else if (m.type === 'done' && slot.job) {
          const { entry } = slot.job
          records.set(entry.index, m.record)
          slot.crashes = 0
          ctx.emit({
            type: 'run-done',
            run: entry.run,
            index: entry.index,
            total: runs.length,
            metrics: metricsOf(m.record),
          })
          slot.job = null
          dispatch(slot)
        } else if (m.type === 'failed' && slot.job) {
          const { entry } = slot.job
          slot.job = null
          entry.attempts++
          if (!m.permanent && entry.attempts < ATTEMPTS && m.code !== 'E_CANCELLED') {
            ctx.emit({ type: 'log', message: `${runId(entry.run)} failed (${m.message}); trying again` })
            todo.push(entry)
          } else {
            failures.push({ run: entry.run, code: m.code, message: m.message })
            ctx.emit({ type: 'log', message: `${runId(entry.run)} failed: ${m.message}` })
          }
          dispatch(slot)
        }
      })
      child.on('exit', (code, signal) => {
        slot.child = null
        const lost = slot.job?.entry
        slot.job = null
        if (stopping) return finished() ? resolveAll() : undefined
        const how = signal ?? `exit ${code}`
        if (lost) {
          // The worker died mid-run: the run goes back, to resume from its checkpoint.
          lost.losses++
          if (lost.losses < MAX_LOSSES) {
            ctx.emit({
              type: 'log',
              message: `the worker on ${slot.device} stopped (${how}) during ${runId(lost.run)}; it runs again`,
            })
            todo.unshift(lost)
          } else {
            failures.push({
              run: lost.run,
              code: 'E_INTERNAL',
              message: `its worker died ${MAX_LOSSES} times (${how})`,
            })
          }
        }
        if (code !== 0 || lost) slot.crashes++
        if (finished()) return settle()
        if (slot.crashes <= MAX_CRASHES) return start(slot)
        ctx.emit({ type: 'log', message: `the worker on ${slot.device} keeps stopping (${how}); it is not restarted` })
        if (slots.every((s) => s.child === null)) {
          rejectAll(
            new PromptclipError(
              'E_INTERNAL',
              `every local worker process stopped (${how}) with ${todo.length} runs left; see the messages above`,
            ),
          )
        }
      })
    }
    ctx.signal?.addEventListener('abort', () => {
      stopping = true
      // Each worker stops its run at a checkpoint and exits; the rerun resumes there.
      for (const s of slots) s.child?.kill('SIGINT')
      const wait = () =>
        slots.every((s) => s.child === null)
          ? rejectAll(new AbortError('cancelled; the runs in progress left checkpoints'))
          : setTimeout(wait, 100)
      wait()
    })
    if (todo.length === 0) return resolveAll()
    for (const slot of slots.slice(0, Math.max(1, Math.min(slots.length, todo.length)))) start(slot)
  })

  return sweepRecords(runs, records, failures, options.out)
}
