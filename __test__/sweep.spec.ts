/**
 * Sweeps spread over workers: a real redis-server (Debian's package) started here on a loopback
 * port, `promptclip worker` processes on the built-in CLIP, and `promptclip run --queue`; local
 * worker processes (`run --devices`); a worker killed mid-run; a run with bad input. Every result
 * is compared with the same sweep run in one process.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import test from 'ava'
import { type ProtocolResults, type RunRecord, runProtocol, startWorker, sweepStatus } from 'promptclip'
import { CLASSES, collect, png, RGB } from './helpers'

const ROOT = join(import.meta.dirname ?? __dirname, '..')
const CLI = join(ROOT, 'dist', 'cli.js')
const TMP = mkdtempSync(join(tmpdir(), 'promptclip-sweep-'))
const DATA = join(TMP, 'colours')
/** The sweep every test runs: a baseline, the linear probe and CoOp at two shot counts. */
const SWEEP = ['few-shot', DATA, '--methods', 'zero-shot,linear-probe,coop', '--shots', '1,2', '--seeds', '1']

let redis: ChildProcess | undefined
let url = ''
const children: ChildProcess[] = []

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer()
    s.on('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port
      s.close(() => resolve(port))
    })
  })
}

function start(args: string[]): ChildProcess {
  const child = spawn(process.execPath, [CLI, ...args], { cwd: TMP, stdio: ['ignore', 'pipe', 'pipe'] })
  children.push(child)
  return child
}

const cli = (args: string[]) => collect(start(args))

/** A worker process, resolved once it listens on the queue. */
async function worker(extra: string[] = []): Promise<ChildProcess> {
  const child = start(['worker', '--queue', url, '--lock-ms', '1000', ...extra])
  await new Promise<void>((resolve, reject) => {
    let err = ''
    child.stderr?.on('data', (d) => {
      err += d
      if (err.includes('waiting for runs')) resolve()
    })
    child.on('exit', (code) => reject(new Error(`worker exited ${code}: ${err}`)))
  })
  return child
}

const results = (out: string) => JSON.parse(readFileSync(join(out, 'results.json'), 'utf8')) as ProtocolResults
const record = (out: string, run: string) =>
  JSON.parse(readFileSync(join(out, 'runs', run, 'result.json'), 'utf8')) as RunRecord
/** What must not depend on where a run executed: its settings and every metric but timings. */
const outcome = (r: RunRecord) => ({
  config: r.config,
  evaluations: r.evaluations.map(({ seconds: _seconds, ...e }) => e),
  epochLoss: r.train?.epochLoss.length,
})

let single: ProtocolResults

test.before(async () => {
  if (spawnSync('redis-server', ['--version']).status !== 0) {
    throw new Error('redis-server is missing: apt-get install redis-server (.ci/run installs it)')
  }
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build:ts first`)
  for (const [split, n] of [
    ['train', 4],
    ['test', 3],
  ] as const) {
    for (const [c, name] of CLASSES.entries()) {
      mkdirSync(join(DATA, split, name), { recursive: true })
      for (let i = 0; i < n; i++) {
        writeFileSync(
          join(DATA, split, name, `${i}.png`),
          png(36, 36, RGB[c], 100 * c + i + (split === 'test' ? 50 : 0)),
        )
      }
    }
  }
  const port = await freePort()
  redis = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  await new Promise<void>((resolve, reject) => {
    let log = ''
    redis?.stdout?.on('data', (d) => {
      log += d
      if (log.includes('Ready to accept connections')) resolve()
    })
    redis?.on('exit', (code) => reject(new Error(`redis-server exited ${code}: ${log}`)))
  })
  url = `redis://127.0.0.1:${port}`
  // The reference: the same sweep in this process, without a queue.
  single = await runProtocol({
    protocol: 'few-shot',
    dataset: DATA,
    methods: ['zero-shot', 'linear-probe', 'coop'],
    shots: [1, 2],
    seeds: [1],
    out: join(TMP, 'single'),
    train: { coop: { epochs: 40 } },
  })
})

test.after.always(() => {
  for (const c of children) c.kill('SIGKILL')
  redis?.kill('SIGKILL')
})

test.serial('two queue workers run the sweep; its results equal the single-process run', async (t) => {
  const workers = [await worker(), await worker()]
  const out = join(TMP, 'queued')
  const r = await cli(['run', ...SWEEP, '--epochs', '40', '--queue', url, '--out', out, '--json'])
  t.is(r.code, 0, r.stderr)
  t.is(results(out).table, single.table)
  const pids = new Set<number>()
  for (const run of single.runs) {
    const id = run.run.method === 'zero-shot' ? 'zero-shot' : `${run.run.method}-${run.run.shots}shot-seed1`
    const queued = record(out, id)
    t.deepEqual(outcome(queued), outcome(run), id)
    pids.add(queued.executedBy.pid)
  }
  t.true(
    [...pids].every((p) => workers.some((w) => w.pid === p)),
    'every run was executed by a worker',
  )
  t.is(pids.size, 2, 'both workers took runs')
  // Every run shows on the queue as completed, and in the folder.
  const status = await sweepStatus(url, out)
  t.deepEqual(
    status.map((s) => [s.run, s.state]),
    ['coop-1shot-seed1', 'coop-2shot-seed1', 'linear-probe-1shot-seed1', 'linear-probe-2shot-seed1', 'zero-shot'].map(
      (run) => [run, 'completed'],
    ),
  )
  const folder = await cli(['run', '--status', '--out', out, '--json'])
  t.true(
    (JSON.parse(folder.stdout) as { state: string }[]).every((s) => s.state === 'completed'),
    folder.stdout,
  )
  // Running the sweep again finds every run finished.
  const again = await cli(['run', ...SWEEP, '--epochs', '40', '--queue', url, '--out', out, '--json'])
  t.is(again.code, 0, again.stderr)
  for (const w of workers) w.kill('SIGINT')
})

test.serial('a worker killed mid-run: another resumes its run from the checkpoint, with the same result', async (t) => {
  const out = join(TMP, 'killed')
  const args = ['few-shot', DATA, '--methods', 'coop', '--shots', '2', '--seeds', '1', '--epochs', '200']
  const reference = await cli(['run', ...args, '--out', join(TMP, 'uninterrupted'), '--json'])
  t.is(reference.code, 0, reference.stderr)
  const first = await worker()
  const coordinator = collect(start(['run', ...args, '--queue', url, '--out', out, '--json']))
  const checkpoint = join(out, 'runs', 'coop-2shot-seed1', 'checkpoint.safetensors')
  for (let i = 0; i < 400 && !existsSync(checkpoint); i++) await new Promise((r) => setTimeout(r, 25))
  t.true(existsSync(checkpoint), 'the run wrote a checkpoint')
  // While it runs, --status shows its progress.
  const status = await cli(['run', '--status', '--queue', url, '--out', out])
  t.regex(status.stdout, /coop-2shot-seed1\s+active\s+epoch \d+\/200/)
  first.kill('SIGKILL')
  const second = await worker()
  const r = await coordinator
  t.is(r.code, 0, r.stderr)
  const resumed = record(out, 'coop-2shot-seed1')
  t.is(resumed.executedBy.pid, present(second.pid))
  t.true(present(resumed.train).resumedAfterEpoch > 0, 'the second worker resumed from the checkpoint')
  t.true(present(resumed.train).resumedAfterEpoch < 200)
  t.deepEqual(outcome(resumed).evaluations, outcome(record(join(TMP, 'uninterrupted'), 'coop-2shot-seed1')).evaluations)
  t.deepEqual(
    readFileSync(join(out, 'runs', 'coop-2shot-seed1', 'learner.safetensors')),
    readFileSync(join(TMP, 'uninterrupted', 'runs', 'coop-2shot-seed1', 'learner.safetensors')),
    'the learned context is bit for bit the uninterrupted one',
  )
  second.kill('SIGINT')
})

test.serial('a run with bad input fails once, with its message, and is not retried', async (t) => {
  const events: string[] = []
  const w = await startWorker({ queue: url, lockMs: 1000, onEvent: (e) => events.push(e.type) })
  const out = join(TMP, 'bad')
  const err = await t.throwsAsync(
    runProtocol({
      protocol: 'few-shot',
      dataset: DATA,
      methods: ['zero-shot', 'coop'],
      shots: [1],
      seeds: [1],
      out,
      queue: url,
      learners: { coop: { nCtx: 0 } },
    }),
    { code: 'E_INVALID_ARGUMENT' } as never,
  )
  t.regex(err?.message ?? '', /coop-1shot-seed1: .*nCtx/)
  const status = await sweepStatus(url, out)
  t.like(
    status.find((s) => s.run === 'coop-1shot-seed1'),
    { state: 'failed', attempts: 1 },
  )
  t.regex(status.find((s) => s.run === 'coop-1shot-seed1')?.failedReason ?? '', /nCtx/)
  t.like(
    status.find((s) => s.run === 'zero-shot'),
    { state: 'completed' },
  )
  const failure = JSON.parse(readFileSync(join(out, 'runs', 'coop-1shot-seed1', 'failed.json'), 'utf8'))
  t.like(failure, { code: 'E_INVALID_ARGUMENT' })
  t.is(events.filter((e) => e === 'job-failed').length, 1)
  await w.close()
})

test.serial('without a queue, one local worker process per device runs the same sweep', async (t) => {
  const out = join(TMP, 'local')
  const r = await cli(['run', ...SWEEP, '--epochs', '40', '--devices', 'cpu,cpu', '--out', out, '--json'])
  t.is(r.code, 0, r.stderr)
  t.is(results(out).table, single.table)
  const pids = new Set(results(out).runs.map((run) => run.executedBy.pid))
  t.is(pids.size, 2, 'two worker processes took runs')
  for (const [i, run] of results(out).runs.entries()) t.deepEqual(outcome(run), outcome(single.runs[i]))
})

function present<T>(v: T | null | undefined): T {
  if (v === null || v === undefined) throw new Error('missing')
  return v
}
