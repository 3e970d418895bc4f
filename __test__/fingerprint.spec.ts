/**
 * A checkpoint or a finished run is never reused for other data: what a run trained on is
 * fingerprinted, and resuming with other files, labels or class names is refused naming what
 * changed; one writer per checkpoint; a resumed run reports the whole loss curve.
 */
import { spawnSync } from 'node:child_process'
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import test from 'ava'
import { Clip, PromptclipError, PromptLearner, runProtocol, Trainer } from 'promptclip'
import { CLASSES, HF_MODEL, png, RGB } from './helpers'

const CLI = join(import.meta.dirname ?? __dirname, '..', 'dist', 'cli.js')

/** A folder of PNGs, `perClass` per class, as paths and labels. */
function folder(dir: string, perClass: number) {
  mkdirSync(dir, { recursive: true })
  const images: string[] = []
  const labels: number[] = []
  for (const [c, rgb] of RGB.entries()) {
    for (let i = 0; i < perClass; i++) {
      const p = join(dir, `${CLASSES[c]}-${i}.png`)
      writeFileSync(p, png(24, 24, rgb, 100 * c + i))
      images.push(p)
      labels.push(c)
    }
  }
  return { images, labels }
}

const RECIPE = { epochs: 3, batchSize: 4, augment: false, seed: 1 } as const

async function fitOnce(
  clip: Clip,
  data: { images: string[]; labels: number[] },
  ckpt: string,
  resume = false,
  epochs: number = RECIPE.epochs,
) {
  const learner = PromptLearner.coop(clip, { classNames: CLASSES, nCtx: 2, seed: 1 })
  const trainer = new Trainer(learner, { ...RECIPE, epochs, checkpointPath: ckpt })
  return trainer.fit(data, { resumeFrom: resume ? ckpt : undefined })
}

async function refusal(p: Promise<unknown>): Promise<PromptclipError> {
  const e = await p.then(
    () => null,
    (err: unknown) => err,
  )
  if (!(e instanceof PromptclipError)) throw new Error(`expected a PromptclipError, got ${String(e)}`)
  return e
}

test('resuming a finished checkpoint with other images is refused, naming the files', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'promptclip-fp-'))
  const clip = await Clip.load(HF_MODEL)
  const data = folder(join(dir, 'imgs'), 3)
  const ckpt = join(dir, 'run.ckpt')
  const first = await fitOnce(clip, data, ckpt)
  t.true(existsSync(`${ckpt}.fingerprint.json`))
  // The same data resumes (finished: nothing left to train) and reports the whole curve.
  const again = await fitOnce(clip, data, ckpt, true)
  t.is(again.resumedAfterEpoch, 3)
  t.deepEqual(again.epochLoss, first.epochLoss)
  t.deepEqual(again.epochAccuracy, first.epochAccuracy)

  // An image added.
  const extra = join(dir, 'imgs', 'red-extra.png')
  copyFileSync(data.images[1], extra)
  let e = await refusal(fitOnce(clip, { images: [...data.images, extra], labels: [...data.labels, 0] }, ckpt, true))
  t.is(e.code, 'E_INVALID_ARGUMENT')
  t.regex(e.message, /1 added \(.*red-extra\.png\)/)
  t.regex(e.message, /--no-resume/)
  // An image's content changed (same path, same size).
  const changed = readFileSync(data.images[0])
  writeFileSync(data.images[0], png(24, 24, RGB[3], 999))
  e = await refusal(fitOnce(clip, data, ckpt, true))
  t.regex(e.message, /1 changed \(.*red-0\.png\)/)
  writeFileSync(data.images[0], changed)
  // An image removed, and one relabelled.
  e = await refusal(fitOnce(clip, { images: data.images.slice(1), labels: data.labels.slice(1) }, ckpt, true))
  t.regex(e.message, /1 removed \(.*red-0\.png\)/)
  const relabelled = [...data.labels]
  relabelled[0] = 1
  e = await refusal(fitOnce(clip, { images: data.images, labels: relabelled }, ckpt, true))
  t.regex(e.message, /1 with another label/)
  // Restored: resumes again.
  t.is((await fitOnce(clip, data, ckpt, true)).resumedAfterEpoch, 3)
})

test('a resumed run reports the epochs before the interruption', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'promptclip-fp-'))
  const clip = await Clip.load(HF_MODEL)
  const data = folder(join(dir, 'imgs'), 3)
  // Long enough that the abort, delivered from the progress events, lands well before the end
  // even on a loaded machine (it once did not at 40).
  const epochs = 120
  const full = await fitOnce(clip, data, join(dir, 'full.ckpt'), false, epochs)
  const ckpt = join(dir, 'cut.ckpt')
  const learner = PromptLearner.coop(clip, { classNames: CLASSES, nCtx: 2, seed: 1 })
  const ac = new AbortController()
  await refusal(
    new Trainer(learner, { ...RECIPE, epochs, checkpointPath: ckpt }).fit(data, {
      signal: ac.signal,
      // Stop early in the run (3 steps an epoch); the core stops at the next step it sees it.
      onProgress: (p) => p.globalStep === 5 && ac.abort(),
    }),
  )
  const resumed = await fitOnce(clip, data, ckpt, true, epochs)
  t.true(resumed.resumedAfterEpoch >= 1 && resumed.resumedAfterEpoch < epochs, `${resumed.resumedAfterEpoch}`)
  t.is(resumed.epochLoss.length, epochs)
  t.deepEqual(resumed.epochLoss, full.epochLoss)
  t.deepEqual(resumed.epochAccuracy, full.epochAccuracy)
})

test('one writer per checkpoint: a second fit is refused while the first holds it; a dead writer is taken over', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'promptclip-fp-'))
  const clip = await Clip.load(HF_MODEL)
  const data = folder(join(dir, 'imgs'), 3)
  const ckpt = join(dir, 'run.ckpt')
  const first = fitOnce(clip, data, ckpt)
  const e = await refusal(fitOnce(clip, data, ckpt))
  t.is(e.code, 'E_BUSY')
  t.regex(e.message, new RegExp(`process ${process.pid}`))
  await first
  t.false(existsSync(`${ckpt}.lock`), 'released when the fit ends')
  // A lock left by a process that is gone.
  const dead = spawnSync(process.execPath, ['-e', 'console.log(process.pid)'], { encoding: 'utf8' })
  const pid = Number(dead.stdout.trim())
  writeFileSync(`${ckpt}.lock`, JSON.stringify({ pid, host: (await import('node:os')).hostname(), since: 'then' }))
  t.is((await fitOnce(clip, data, join(dir, 'run.ckpt'), true)).resumedAfterEpoch, 3)
  t.false(existsSync(`${ckpt}.lock`))
})

test('a finished protocol run is not reused once its test images changed', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'promptclip-fp-'))
  for (const split of ['train', 'test']) {
    for (const [c, rgb] of RGB.entries()) {
      mkdirSync(join(dir, 'data', split, CLASSES[c]), { recursive: true })
      for (let i = 0; i < 2; i++) {
        writeFileSync(join(dir, 'data', split, CLASSES[c], `${i}.png`), png(24, 24, rgb, 10 * c + i))
      }
    }
  }
  const options = {
    protocol: 'few-shot' as const,
    dataset: join(dir, 'data'),
    model: HF_MODEL,
    methods: ['zero-shot' as const],
    shots: [1],
    seeds: [1],
    out: join(dir, 'out'),
  }
  await runProtocol(options)
  // Unchanged: the finished run is served.
  const events: string[] = []
  await runProtocol({ ...options, onEvent: (ev) => events.push(ev.type) })
  t.true(events.includes('run-skipped'))
  writeFileSync(join(dir, 'data', 'test', 'red', '0.png'), png(24, 24, RGB[2], 77))
  const e = await refusal(runProtocol(options))
  t.is(e.code, 'E_INVALID_ARGUMENT')
  t.regex(e.message, /the test images changed/)
  t.regex(e.message, /--out/)
})

test('a damaged finished run is run again; a changed setting is named with both values', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'promptclip-fp-'))
  for (const split of ['train', 'test']) {
    for (const [c, rgb] of RGB.entries()) {
      mkdirSync(join(dir, 'data', split, CLASSES[c]), { recursive: true })
      for (let i = 0; i < 2; i++) {
        writeFileSync(join(dir, 'data', split, CLASSES[c], `${i}.png`), png(24, 24, rgb, 10 * c + i))
      }
    }
  }
  const options = {
    protocol: 'few-shot' as const,
    dataset: join(dir, 'data'),
    model: HF_MODEL,
    methods: ['coop' as const],
    shots: [1],
    seeds: [1],
    train: { coop: { epochs: 1, augment: false } },
    learners: { coop: { nCtx: 2 } },
    out: join(dir, 'out'),
  }
  const first = await runProtocol(options)
  const run = join(dir, 'out', 'runs', 'coop-1shot-seed1')
  const result = JSON.parse(readFileSync(join(run, 'result.json'), 'utf8'))
  // A wrong type in result.json.
  writeFileSync(
    join(run, 'result.json'),
    JSON.stringify({ ...result, evaluations: [{ ...result.evaluations[0], accuracy: 'x' }] }),
  )
  // `run --status` says so before the sweep is run again (it read "completed").
  const status = () => {
    const r = spawnSync(process.execPath, [CLI, 'run', '--status', '--out', join(dir, 'out'), '--json'], {
      encoding: 'utf8',
    })
    t.is(r.status, 0, r.stderr)
    return (JSON.parse(r.stdout) as { run: string; state: string; failedReason?: string }[]).find(
      (x) => x.run === 'coop-1shot-seed1',
    )
  }
  t.like(status(), { state: 'damaged' })
  t.regex(status()?.failedReason ?? '', /not a number.*redoes it/)
  const logs: string[] = []
  const again = await runProtocol({ ...options, onEvent: (e) => e.type === 'log' && logs.push(e.message) })
  t.like(status(), { state: 'completed' })
  t.true(
    logs.some((m) => /is not a number.*running it again/.test(m)),
    logs.join('\n'),
  )
  t.is(again.runs[0].evaluations[0].accuracy, first.runs[0].evaluations[0].accuracy)
  // A truncated learner file.
  const learner = readFileSync(join(run, 'learner.safetensors'))
  writeFileSync(join(run, 'learner.safetensors'), learner.subarray(0, learner.length >> 1))
  t.like(status(), { state: 'damaged' })
  t.regex(status()?.failedReason ?? '', /truncated/)
  logs.length = 0
  const third = await runProtocol({ ...options, onEvent: (e) => e.type === 'log' && logs.push(e.message) })
  t.true(
    logs.some((m) => /learner file does not load/.test(m)),
    logs.join('\n'),
  )
  t.is(third.runs[0].evaluations[0].accuracy, first.runs[0].evaluations[0].accuracy)
  // Another setting: named, with both values.
  const e = await refusal(runProtocol({ ...options, train: { coop: { epochs: 2, augment: false } } }))
  t.regex(e.message, /train\.epochs \(was 1, now 2\)/)
})

test('rerunning a subset of methods adds to results.md instead of dropping the others', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'promptclip-fp-'))
  for (const split of ['train', 'test']) {
    for (const [c, rgb] of RGB.entries()) {
      mkdirSync(join(dir, 'data', split, CLASSES[c]), { recursive: true })
      writeFileSync(join(dir, 'data', split, CLASSES[c], '0.png'), png(24, 24, rgb, c))
    }
  }
  const base = { protocol: 'few-shot' as const, dataset: join(dir, 'data'), model: HF_MODEL, shots: [1], seeds: [1] }
  const out = join(dir, 'out')
  await runProtocol({ ...base, methods: ['zero-shot'], out })
  const second = await runProtocol({ ...base, methods: ['ensemble'], out })
  const md = readFileSync(join(out, 'results.md'), 'utf8')
  t.regex(md, /Zero-shot CLIP/i)
  t.regex(md, /ensembl/i)
  t.deepEqual(second.runs.map((r) => r.run.method).sort(), ['ensemble', 'zero-shot'])
  const json = JSON.parse(readFileSync(join(out, 'results.json'), 'utf8'))
  t.is(json.runs.length, 2)
})
