/**
 * Faults a user meets, each in a child process where a crash (an uncaught exception from a
 * callback, an abort in native code) would otherwise take the test runner down with it: kill -9
 * during training and resume, a disk that fills while a checkpoint is written, throwing progress
 * callbacks, many concurrent calls on one learner during a fit, and cancellation at every phase.
 * Children run the built package (dist/) on the built-in model and print one JSON line.
 */
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { pathToFileURL } from 'node:url'
import test from 'ava'
import { BUILTIN_MODEL, Clip, PromptclipError, PromptLearner } from 'promptclip'

const DIST = pathToFileURL(resolve(import.meta.dirname ?? __dirname, '..', 'dist', 'index.mjs')).href

/** The head every child shares: the package, the built-in model, digits as training data. */
const PRELUDE = `
import * as pc from ${JSON.stringify(DIST)}
import { readFileSync, writeFileSync } from 'node:fs'
const { Clip, PromptLearner, Trainer, Evaluator, BUILTIN_MODEL, loadMnistDigits, PromptclipError } = pc
const arg = JSON.parse(process.argv[2] ?? '{}')
const clip = await Clip.load(BUILTIN_MODEL)
const digits = loadMnistDigits('test')
/** n images of each of the first k digits, in a fixed order. */
function data(n, k = 4) {
  const images = [], labels = []
  for (let d = 0; d < k; d++) {
    const own = digits.images.filter((_, i) => digits.labels[i] === d).slice(0, n)
    for (const img of own) { images.push(img); labels.push(d) }
  }
  return { images, labels, classNames: digits.classNames.slice(0, k) }
}
const coop = () => PromptLearner.coop(clip, { classNames: digits.classNames.slice(0, 4), nCtx: 4, seed: 5 })
const errorOf = (e) => ({ name: e?.name, code: e?.code, message: String(e?.message ?? e), coded: e instanceof PromptclipError })
const settle = (p) => p.then((value) => ({ ok: true, value }), (e) => ({ ok: false, error: errorOf(e) }))
const out = (v) => process.stdout.write(JSON.stringify(v) + '\\n')
`

interface Child {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

/** Run a child script (module text after PRELUDE) with `arg`, through bash when `shell` wraps the
 *  node command (ulimit); `onLine` sees its stdout line by line and may kill it. */
function child(
  body: string,
  arg: unknown = {},
  options: { shell?: (cmd: string) => string; onLine?: (line: string, kill: () => void) => void } = {},
): Promise<Child> {
  const dir = mkdtempSync(join(tmpdir(), 'faults-'))
  const script = join(dir, 'child.mjs')
  writeFileSync(script, PRELUDE + body)
  const argv = [script, JSON.stringify(arg)]
  const quoted = [process.execPath, ...argv].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ')
  const proc = options.shell
    ? spawn('bash', ['-c', options.shell(`exec ${quoted}`)], { stdio: ['ignore', 'pipe', 'pipe'] })
    : spawn(process.execPath, argv, { stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  let partial = ''
  proc.stdout.on('data', (chunk: Buffer) => {
    stdout += chunk
    partial += chunk
    const lines = partial.split('\n')
    partial = lines.pop() ?? ''
    for (const line of lines) options.onLine?.(line, () => proc.kill('SIGKILL'))
  })
  proc.stderr.on('data', (chunk: Buffer) => {
    stderr += chunk
  })
  return new Promise((done) => proc.on('close', (code, signal) => done({ code, signal, stdout, stderr })))
}

/** The child's last JSON line. */
function result<T>(c: Child): T {
  const lines = c.stdout.trim().split('\n')
  try {
    return JSON.parse(lines[lines.length - 1]) as T
  } catch {
    throw new Error(`the child printed no result (exit ${c.code}, ${c.signal}):\n${c.stdout}\n${c.stderr}`)
  }
}

/** Train from scratch or resume, print every epoch's end, then the final context. */
const TRAIN = `
const learner = coop()
const trainer = new Trainer(learner, { epochs: arg.epochs, batchSize: 8, seed: 3, augment: false,
  ...(arg.ckpt ? { checkpointPath: arg.ckpt, checkpointEvery: 1 } : {}) })
const ac = new AbortController()
const r = await settle(trainer.fit(data(8), {
  ...(arg.resume ? { resumeFrom: arg.ckpt } : {}),
  signal: ac.signal,
  onProgress: (p) => {
    if (p.step === p.stepsPerEpoch) out({ epoch: p.epoch })
    if (p.globalStep === arg.abortAt) ac.abort()
  },
}))
out(r.ok ? { ok: true, context: Array.from(learner.context()), summary: r.value } : r)
`

interface Trained {
  ok: boolean
  context: number[]
  summary: { resumedAfterEpoch: number; globalStep: number }
  error?: { code: string; message: string; coded: boolean }
}

function maxAbsDiff(a: number[], b: number[]): number {
  return a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i])), a.length === b.length ? 0 : Infinity)
}

test('kill -9 during training, then resume in a new process: the uninterrupted run\u2019s context', async (t) => {
  const epochs = 12
  const reference = result<Trained>(await child(TRAIN, { epochs }))
  t.true(reference.ok, JSON.stringify(reference))
  const ckpt = join(mkdtempSync(join(tmpdir(), 'faults-')), 'run.ckpt')
  let killedAt = 0
  const killed = await child(
    TRAIN,
    { epochs, ckpt },
    {
      onLine: (line, kill) => {
        const epoch = (JSON.parse(line) as { epoch?: number }).epoch ?? 0
        // The checkpoint of an epoch is written after its last step's progress: wait for the
        // next epoch's end, by which the file exists, and kill well before the run ends.
        if (killedAt === 0 && epoch >= 2 && existsSync(ckpt)) {
          killedAt = epoch
          kill()
        }
      },
    },
  )
  t.is(killed.signal, 'SIGKILL', `the child was not killed mid-run (exit ${killed.code})`)
  t.true(killedAt > 0 && killedAt < epochs)
  const resumed = result<Trained>(await child(TRAIN, { epochs, ckpt, resume: true }))
  t.true(resumed.ok, JSON.stringify(resumed.error))
  t.true(resumed.summary.resumedAfterEpoch >= 1 && resumed.summary.resumedAfterEpoch < epochs)
  t.is(resumed.summary.globalStep, reference.summary.globalStep)
  t.true(maxAbsDiff(resumed.context, reference.context) <= 1e-6, `${maxAbsDiff(resumed.context, reference.context)}`)
})

test('disk full while writing a checkpoint: the write fails by name, the old checkpoint loads and resumes', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'faults-'))
  const ckpt = join(dir, 'run.ckpt')
  // A run of 4 epochs (4 steps each) stopped after step 6: its checkpoint is the one to keep.
  const first = result<Trained>(await child(TRAIN, { epochs: 4, ckpt, abortAt: 6 }))
  t.is(first.error?.code, 'E_CANCELLED', JSON.stringify(first.error))
  const before = statSync(ckpt)
  // A file-size limit below the checkpoint's size: Node ignores SIGXFSZ, so the write fails with
  // EFBIG instead of the process being killed (the test checks that it stayed alive).
  const blocks = Math.max(1, Math.floor(before.size / 1024 / 2))
  const full = await child(TRAIN, { epochs: 4, ckpt, resume: true }, { shell: (cmd) => `ulimit -f ${blocks}; ${cmd}` })
  t.is(full.signal, null, full.stderr)
  const failed = result<Trained>(full)
  t.false(failed.ok, `exit ${full.code}: ${full.stdout} ${full.stderr}`)
  t.true(failed.error?.coded, JSON.stringify(failed.error))
  t.is(failed.error?.code, 'E_IO')
  t.regex(failed.error?.message ?? '', /run\.ckpt/)
  t.regex(failed.error?.message ?? '', /File too large|EFBIG|os error 27/i)
  // Noted for the core (files.rs): the message begins "cannot read <path>" although the write
  // failed; the test asserts the path and the OS's reason, not that wording.
  t.log(`the core's message: ${failed.error?.message}`)
  // The old checkpoint is untouched, and nothing half-written is left beside it.
  const after = statSync(ckpt)
  t.is(after.size, before.size)
  t.is(after.mtimeMs, before.mtimeMs)
  // Nothing half-written is left (the fingerprint beside the checkpoint is the first run's).
  t.deepEqual(
    readdirSync(dir).filter((f) => f !== 'run.ckpt.fingerprint.json'),
    ['run.ckpt'],
  )
  const resumed = result<Trained>(await child(TRAIN, { epochs: 4, ckpt, resume: true }))
  t.true(resumed.ok, JSON.stringify(resumed.error))
  t.is(resumed.summary.resumedAfterEpoch, 1)
  const reference = result<Trained>(await child(TRAIN, { epochs: 4 }))
  t.true(maxAbsDiff(resumed.context, reference.context) <= 1e-6)
})

test('throwing callbacks reject their call and never end the process; context() in onProgress is E_BUSY', async (t) => {
  const c = await child(`
const boom = () => { throw new Error('boom from the callback') }
const learner = coop()
const d = data(4)
let uncaught = 0
process.on('uncaughtException', () => uncaught++)
const busy = await settle(new Trainer(learner, { epochs: 2, batchSize: 4 }).fit(d, { onProgress: () => learner.context() }))
const fit = await settle(new Trainer(learner, { epochs: 2, batchSize: 4 }).fit(d, { onProgress: boom }))
const predict = await settle(learner.predict(d.images, { batchSize: 2, onProgress: boom }))
const evaluate = await settle(new Evaluator(learner).evaluate(d, { batchSize: 2, onProgress: boom }))
const encode = await settle(clip.encodeImages(d.images, { batchSize: 2, onProgress: boom }))
const zeroShot = await settle(clip.zeroShot(d.images, d.classNames, { batchSize: 2, onProgress: boom }))
// Still usable afterwards.
const after = await settle(learner.predict(d.images.slice(0, 2)))
out({ busy, fit, predict, evaluate, encode, zeroShot, after: after.ok, context: learner.context().length, uncaught })
`)
  t.is(c.code, 0, c.stderr)
  const r = result<Record<string, { ok: boolean; error: { code: string; message: string; name: string } }>>(c)
  t.false(r.busy.ok)
  t.is(r.busy.error.code, 'E_BUSY')
  for (const call of ['fit', 'predict', 'evaluate', 'encode', 'zeroShot']) {
    t.false(r[call].ok, call)
    t.is(r[call].error.message, 'boom from the callback', call)
  }
  t.true(r.after as unknown as boolean)
  t.true((r.context as unknown as number) > 0)
  t.is(r.uncaught as unknown as number, 0)
})

test('during a fit, fs stays responsive and 50 concurrent predict() calls equal the sequential results', async (t) => {
  const c = await child(`
const { readFile } = await import('node:fs/promises')
const learner = coop()
const d = data(8)
const probe = d.images.slice(0, 6)
const started = performance.now()
let fitMs = 0
const fit = new Trainer(learner, { epochs: 6, batchSize: 4 }).fit(d).then(() => { fitMs = performance.now() - started })
// More predicts than libuv has pool threads (4): queued on the learner, they hold none.
const during = Array.from({ length: 8 }, () => learner.predict(probe))
await new Promise((r) => setTimeout(r, 50))
const readStarted = performance.now()
await readFile(${JSON.stringify(join(import.meta.dirname ?? __dirname, 'helpers.ts'))})
const readMs = performance.now() - readStarted
const readDuringFit = fitMs === 0
await fit
await Promise.all(during)
const sequential = []
for (const img of probe) sequential.push((await learner.predict([img]))[0].probabilities)
const concurrent = await Promise.all(Array.from({ length: 50 }, (_, i) => learner.predict([probe[i % probe.length]])))
let maxDiff = 0
for (const [i, [p]] of concurrent.entries()) {
  const s = sequential[i % probe.length]
  for (let j = 0; j < s.length; j++) maxDiff = Math.max(maxDiff, Math.abs(s[j] - p.probabilities[j]))
}
const afterFit = (await during[0])[0].probabilities
const trained = (await learner.predict([probe[0]]))[0].probabilities
out({ fitMs, readMs, readDuringFit, maxDiff, count: concurrent.length, predictWaitedForFit: afterFit.every((x, j) => x === trained[j]) })
`)
  t.is(c.code, 0, c.stderr)
  const r = result<{
    fitMs: number
    readMs: number
    readDuringFit: boolean
    maxDiff: number
    count: number
    predictWaitedForFit: boolean
  }>(c)
  t.log(`readFile took ${r.readMs.toFixed(1)} ms during a ${r.fitMs.toFixed(0)} ms fit`)
  t.true(r.readDuringFit, 'the fit ended before the read: make it longer')
  // Parked pool threads made the read wait for the whole fit; now it waits for no learner.
  t.true(r.readMs < r.fitMs / 5, `${r.readMs} ms of a ${r.fitMs} ms fit`)
  t.is(r.count, 50)
  t.is(r.maxDiff, 0)
  t.true(r.predictWaitedForFit)
})

test('cancellation at every phase rejects with AbortError and leaves the learner usable', async (t) => {
  const c = await child(`
const learner = coop()
const d = data(8)
const many = data(40)
const fitWith = (options, abortWhen, fitOptions = {}) => {
  const ac = new AbortController()
  const steps = []
  const { data: fitData = d, ...rest } = fitOptions
  const run = new Trainer(learner, { batchSize: 8, ...options }).fit(fitData, {
    ...rest,
    signal: ac.signal,
    onProgress: (p) => { steps.push(p.globalStep); if (abortWhen(p)) ac.abort() },
  })
  return { ac, steps, run }
}
const phases = {}
// Before fit starts: the signal is already aborted.
{
  const ac = new AbortController(); ac.abort()
  phases.before = await settle(new Trainer(learner, { epochs: 1 }).fit(d, { signal: ac.signal }))
}
// Waiting for the learner: queued behind a predict.
{
  const ac = new AbortController()
  const busy = learner.predict(many.images)
  const run = new Trainer(learner, { epochs: 1 }).fit(d, { signal: ac.signal })
  ac.abort()
  phases.queued = await settle(run)
  await busy
}
// During feature encoding (augment off, many images): aborted before any step.
{
  const f = fitWith({ epochs: 2, augment: false }, () => false, { data: many })
  setTimeout(() => f.ac.abort(), 1)
  phases.encoding = { ...(await settle(f.run)), steps: f.steps.length }
}
// Mid-epoch (4 steps an epoch) and between epochs (after an epoch's last step).
{
  const f = fitWith({ epochs: 3 }, (p) => p.globalStep === 2)
  phases.midEpoch = { ...(await settle(f.run)), steps: f.steps.length }
}
{
  const f = fitWith({ epochs: 3 }, (p) => p.step === p.stepsPerEpoch && p.epoch === 1)
  phases.betweenEpochs = { ...(await settle(f.run)), steps: f.steps.length }
}
// Batched calls: after the first batch of many.
const afterFirst = async (call) => {
  const ac = new AbortController()
  let batches = 0
  const r = await settle(call({ batchSize: 1, signal: ac.signal, onProgress: () => { batches++; ac.abort() } }))
  return { ...r, batches }
}
phases.predict = await afterFirst((o) => learner.predict(many.images, o))
phases.evaluate = await afterFirst((o) => new Evaluator(learner).evaluate(many, o))
phases.zeroShot = await afterFirst((o) => clip.zeroShot(many.images, many.classNames, o))
phases.encodeImages = await afterFirst((o) => clip.encodeImages(many.images, o))
{
  const ac = new AbortController(); ac.abort()
  phases.predictBefore = await settle(learner.predict(d.images, { signal: ac.signal }))
}
// Usable afterwards: reads, predicts, trains.
const usable = await settle((async () => {
  learner.context()
  await learner.predict(d.images.slice(0, 2))
  await new Trainer(learner, { epochs: 1, batchSize: 8 }).fit(d)
  return learner.context().length
})())
out({ phases, usable })
`)
  t.is(c.code, 0, c.stderr)
  const { phases, usable } = result<{
    phases: Record<string, { ok: boolean; error?: { name: string; code: string }; steps?: number; batches?: number }>
    usable: { ok: boolean; value: number }
  }>(c)
  for (const [phase, r] of Object.entries(phases)) {
    t.false(r.ok, phase)
    t.is(r.error?.name, 'AbortError', `${phase}: ${JSON.stringify(r.error)}`)
    t.is(r.error?.code, 'E_CANCELLED', phase)
  }
  t.is(phases.encoding.steps, 0, 'cancelled during encoding: no step ran')
  // The signal is read at step (batch) boundaries, and progress reaches JS without stopping the
  // work: a step or two may run after the abort, never the rest of the run (12 steps, 160 images).
  t.true((phases.midEpoch.steps ?? 0) >= 2 && (phases.midEpoch.steps ?? 0) < 8, `${phases.midEpoch.steps}`)
  t.true((phases.betweenEpochs.steps ?? 0) >= 4 && (phases.betweenEpochs.steps ?? 0) < 8)
  for (const call of ['predict', 'evaluate', 'zeroShot', 'encodeImages']) {
    t.true((phases[call].batches ?? 0) >= 1 && (phases[call].batches ?? 0) < 40, `${call}: ${phases[call].batches}`)
  }
  t.true(usable.ok, JSON.stringify(usable))
})

test('non-string class names, templates, texts or device fail as E_INVALID_ARGUMENT naming the field and index', async (t) => {
  const clip = await Clip.load(BUILTIN_MODEL)
  const coded = (f: () => unknown, pattern: RegExp) => {
    const e = t.throws(f, { instanceOf: PromptclipError }) as PromptclipError
    t.is(e.code, 'E_INVALID_ARGUMENT')
    t.regex(e.message, pattern)
  }
  const codedAsync = async (p: () => Promise<unknown>, pattern: RegExp) => {
    const e = (await t.throwsAsync(p, { instanceOf: PromptclipError })) as PromptclipError
    t.is(e.code, 'E_INVALID_ARGUMENT')
    t.regex(e.message, pattern)
  }
  coded(() => PromptLearner.coop(clip, { classNames: ['a', 7 as never] }), /classNames\[1\] must be a string, got 7/)
  coded(() => PromptLearner.coop(clip, { classNames: ['a', null as never] }), /classNames\[1\].*null/)
  coded(() => PromptLearner.coop(clip, { classNames: 'a,b' as never }), /classNames must be an array/)
  coded(() => clip.tokenize([1 as never]), /texts\[0\]/)
  await codedAsync(() => Clip.load(BUILTIN_MODEL, { device: 0 as never }), /device must be a string, got 0/)
  await codedAsync(() => clip.zeroShot([], ['a', {} as never]), /classNames\[1\]/)
  await codedAsync(() => clip.zeroShot([], ['a'], { templates: [undefined as never] }), /templates\[0\]/)
  const learner = PromptLearner.coop(clip, { classNames: ['a', 'b'] })
  await codedAsync(() => learner.predict([], { classNames: ['a', 2 as never] }), /classNames\[1\]/)
})
