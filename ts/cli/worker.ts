/**
 * `worker`: runs the jobs of sweeps started with `promptclip run --queue`, one at a time, on one
 * device; start one per GPU, on as many machines as see the sweeps' folders. With `--local` it
 * serves the local sweep that forked it (`run --devices`) over its IPC channel instead.
 */
import { type Command, Option } from 'commander'
import { PromptclipError, toPromptclipError } from '../errors'
import type { RunKey } from '../protocols'
import { JobRunner } from '../protocols/jobs'
import type { FromWorker, ToWorker } from '../protocols/local'
import { runId } from '../protocols/plan'
import { DEFAULT_LOCK_MS, startWorker, type WorkerEvent } from '../protocols/queue'
import { isPermanent } from '../protocols/sweep'
import { badInput, type Ctx, device, EXIT, EXIT_HELP, wholeNumber } from './common'

interface Flags {
  queue?: string
  device: string
  lockMs: number
  local?: boolean
  json?: boolean
}

export function register(program: Command, ctx: Ctx): void {
  const cmd = program
    .command('worker')
    .summary('run the queued runs of sweeps (run --queue), one worker per GPU')
    .description(
      'Take the runs that `promptclip run --queue <url>` queued and run them one at a time on ' +
        '--device, until stopped (Ctrl-C hands the run in progress back to the queue at a ' +
        'checkpoint). Start one worker per GPU, on any machine that sees the sweeps’ --out folders ' +
        'and datasets at the same paths. A worker that dies loses at most its run’s last epoch: ' +
        'after --lock-ms another worker takes the run and resumes it from its checkpoint.',
    )
    .option('--queue <url>', 'the Redis server of the queue: redis://host:port')
    .addOption(new Option('--device <device>', 'cpu, cuda or cuda:N').default('cpu').argParser(device))
    .addOption(
      new Option('--lock-ms <ms>', 'how long a dead worker’s run waits before another worker takes it')
        .default(DEFAULT_LOCK_MS)
        .argParser(wholeNumber(500, 2_147_483_647)),
    )
    .addOption(new Option('--local').hideHelp())
    .option('--json', 'one JSON line per event on stdout')
  cmd.addHelpText('after', EXIT_HELP)
  cmd.action(async (flags: Flags) => {
    ctx.exitCode = flags.local ? await serveLocal(flags, ctx) : await serveQueue(flags, ctx)
  })
}

const runName = (r: RunKey) => `${r.method} on ${r.dataset}, ${r.shots} shots, seed ${r.seed}`

async function serveQueue(flags: Flags, ctx: Ctx): Promise<number> {
  if (!flags.queue) throw badInput('worker needs --queue (the Redis URL the sweep was queued on)')
  const { progress } = ctx
  let running: RunKey | null = null
  const onEvent = (e: WorkerEvent) => {
    if (e.type === 'job-start') running = e.run
    else if (e.type === 'job-done' || e.type === 'job-failed') running = null
    if (flags.json) {
      if (e.type !== 'progress') process.stdout.write(`${JSON.stringify(e)}\n`)
      return
    }
    if (e.type === 'job-start') progress.log(`start ${runName(e.run)} (${e.out}, attempt ${e.attempt})`)
    else if (e.type === 'job-done') progress.log(`done ${runName(e.run)}`)
    else if (e.type === 'job-failed') {
      progress.log(`failed ${runName(e.run)}: ${e.code}: ${e.message}${e.retried ? ' (will be retried)' : ''}`)
    }
  }
  const worker = await startWorker({ queue: flags.queue, device: flags.device, lockMs: flags.lockMs, onEvent })
  progress.log(`worker on ${flags.device} waiting for runs on ${flags.queue} (Ctrl-C to stop)`)
  await new Promise<void>((resolve) => ctx.interrupt.signal().addEventListener('abort', () => resolve()))
  const handedBack = running
  await worker.close()
  progress.log(
    handedBack ? `worker stopped; ${runName(handedBack)} went back to the queue at its checkpoint` : 'worker stopped',
  )
  return EXIT.OK
}

/** The local sweep's side: jobs arrive over IPC, events and results go back the same way. */
async function serveLocal(flags: Flags, ctx: Ctx): Promise<number> {
  const send = process.send?.bind(process)
  if (!send) throw badInput('--local is for the worker processes `promptclip run --devices` starts')
  const runner = new JobRunner(flags.device)
  const signal = ctx.interrupt.signal()
  let busy: Promise<void> = Promise.resolve()
  await new Promise<void>((resolve) => {
    process.on('message', (m: ToWorker) => {
      if (m.type === 'stop') return resolve()
      busy = busy.then(async () => {
        try {
          const record = await runner.run(m.job, (event) => send({ type: 'event', event } satisfies FromWorker), signal)
          send({ type: 'done', record } satisfies FromWorker)
        } catch (e) {
          const err = toPromptclipError(e)
          send({
            type: 'failed',
            code: err instanceof PromptclipError ? err.code : 'E_INTERNAL',
            message: err instanceof Error ? err.message : `${runId(m.job.run)}: ${String(err)}`,
            permanent: isPermanent(err),
          } satisfies FromWorker)
          if (signal.aborted) resolve()
        }
      })
    })
    process.on('disconnect', () => resolve())
    send({ type: 'ready' } satisfies FromWorker)
  })
  await busy
  process.disconnect?.()
  return signal.aborted ? EXIT.INTERRUPTED : EXIT.OK
}
