/**
 * The shipped type declarations, as a strict TypeScript consumer sees them: `npm pack` the built
 * package, install the tarball into a temporary project (strict, skipLibCheck off, nodenext) and
 * type-check a CommonJS and an ESM file that use the public API.
 */

import { spawnSync } from 'node:child_process'
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import test from 'ava'
import { installPacked, TSC } from './packed'

const TSCONFIG = {
  compilerOptions: {
    strict: true,
    skipLibCheck: false,
    module: 'nodenext',
    moduleResolution: 'nodenext',
    target: 'es2022',
    types: ['node'],
    noEmit: true,
  },
  files: ['consumer.ts', 'consumer.mts'],
}

// The whole public API, typed the way a user writes it (no `any`, no casts).
const CONSUMER = `
import {
  Clip, DEFAULT_TEMPLATE, Evaluator, FASHION_MNIST_CLASSES, PromptLearner, PromptclipError, Trainer,
  cudaCompiled, fewShot, loadFashionMnist, loadImageFolder, loadSplitFile, readIdx, topK,
  AbortError, type Evaluation, type ImageInput, type LabelledDataset, type LearnerInfo, type Method,
  type ModelInfo, type TrainProgress, type TrainSummary, type ZeroShotPrediction,
} from 'promptclip'

export async function main(model: string, folder: string): Promise<number> {
  const gpu: boolean = cudaCompiled()
  const clip = await Clip.load(model, { device: gpu ? 'cuda:0' : 'cpu', dtype: 'fp32' })
  const info: ModelInfo = clip.info
  const ids: number[][] = clip.tokenize(['a photo of a dog.'])
  const texts: Float32Array[] = await clip.encodeTexts([DEFAULT_TEMPLATE.replace('{}', 'dog')])
  const raw: ImageInput = { width: 2, height: 1, channels: 3, data: new Uint8Array(6) }
  const encoded = await clip.encodeImages([raw, Buffer.alloc(0), 'x.png'], { batchSize: 2 })
  const first: Float32Array | null = encoded.embeddings[0]
  const zs: ZeroShotPrediction[] = await clip.zeroShot(['x.png'], ['dog', 'cat'], {
    templates: [DEFAULT_TEMPLATE],
    topK: 1,
  })
  const best: string | undefined = zs[0]?.top[0]?.label
  const ranked = topK([0.1, 0.9], ['a', 'b'], 1)

  const data: LabelledDataset = loadImageFolder(folder)
  const split = loadSplitFile('split.json', folder)
  const fashion = fewShot(loadFashionMnist('train'), 16, 1)
  const idx: { dims: number[]; data: Uint8Array } = readIdx('labels.idx')
  const classNames: string[] = FASHION_MNIST_CLASSES

  const coop = PromptLearner.coop(clip, {
    classNames: data.classNames,
    nCtx: 16,
    classSpecific: false,
    position: 'end',
  })
  const cocoop = PromptLearner.cocoop(clip, { classNames: data.classNames, metaNetRatio: 16, memoryBudgetMb: 512 })
  const kg = PromptLearner.kgcoop(clip, { classNames: data.classNames, w: 8, template: 'a photo of a {}.' })
  const probe = PromptLearner.linearProbe(clip, { classNames: data.classNames, c: 1 })
  const method: Method = 'coop'
  const any = PromptLearner.create(clip, method, { classNames: data.classNames, ctxInit: 'a photo of a' })
  const about: LearnerInfo = kg.info
  const controller = new AbortController()
  const steps: TrainProgress[] = []
  const trainer = new Trainer(coop, { epochs: 1, batchSize: 4, lr: 0.002, schedule: 'cosine' })
  const summary: TrainSummary = await trainer.fit(data, {
    onProgress: (p) => steps.push(p),
    signal: controller.signal,
  })
  await new Trainer(cocoop).fit(split.train)
  await new Trainer(probe).fit(split.train, { validation: split.val })
  const ctx: Float32Array = coop.context()
  await coop.save('prompt.safetensors')
  const loaded: PromptLearner = await PromptLearner.load(clip, 'prompt.safetensors')
  const words = await loaded.interpret({ topK: 1 })
  const preds = await cocoop.predict(fashion.images, {
    classNames,
    batchSize: 8,
    onProgress: ({ done, total }) => done / total,
  })
  const ev: Evaluation = await new Evaluator(coop, { topK: [1, 5] }).evaluate(split.test)
  const zsEval: Evaluation = await new Evaluator(clip, { classNames: data.classNames }).evaluate(data)
  try {
    await Clip.load('')
  } catch (e) {
    if (e instanceof AbortError) return 2
    if (e instanceof PromptclipError && e.code === 'E_FILE_NOT_FOUND') return 1
  }
  return info.embedDim + ids.length + texts.length + (first?.length ?? 0) + (best?.length ?? 0) + ranked.length +
    idx.dims.length + summary.epochLoss.length + ctx.length + words.length + preds.length + ev.accuracy +
    zsEval.macroF1 + cocoop.info.params.length + about.classNames.length + any.info.method.length
}
`

let dir = ''
let installError: string | undefined

test.before(() => {
  dir = mkdtempSync(join(tmpdir(), 'promptclip-types-'))
  try {
    installPacked(dir, { name: 'consumer', private: true })
  } catch (e) {
    installError = String((e as { stderr?: string }).stderr || e)
    return
  }
  writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify(TSCONFIG, null, 2))
  const loaderOnly = { ...TSCONFIG, files: [join('node_modules', 'promptclip', 'index.d.ts')] }
  writeFileSync(join(dir, 'tsconfig.loader.json'), JSON.stringify(loaderOnly, null, 2))
  writeFileSync(join(dir, 'consumer.ts'), CONSUMER)
  writeFileSync(join(dir, 'consumer.mts'), CONSUMER)
})

test.after.always(() => {
  if (dir) rmSync(dir, { recursive: true, force: true })
})

function tsc(args: string[]): { code: number | null; output: string } {
  const r = spawnSync(process.execPath, [TSC, ...args], { cwd: dir, encoding: 'utf8' })
  return { code: r.status, output: `${r.stdout}${r.stderr}` }
}

test('the packed package holds the loader, its types and dist/', (t) => {
  t.is(installError, undefined)
  const pkg = join(dir, 'node_modules', 'promptclip')
  const files = readdirSync(pkg)
  t.true(
    ['index.js', 'index.d.ts', 'package.json'].every((f) => files.includes(f)),
    files.join(' '),
  )
  t.deepEqual(
    readdirSync(join(pkg, 'dist'))
      .filter((f) => /^(index|cli)\.[cm]?(js|d\.[cm]?ts)$/.test(f))
      .sort(),
    ['cli.js', 'index.d.mts', 'index.d.ts', 'index.js', 'index.mjs'],
  )
})

test('the public API type-checks in a strict consumer (CommonJS and ESM, skipLibCheck off)', (t) => {
  t.is(installError, undefined)
  const { code, output } = tsc(['--noEmit', '-p', 'tsconfig.json'])
  t.is(code, 0, output)
})

// The napi-generated loader types declare everything they use (no Rust type aliases in napi
// signatures), so a user who imports them directly type-checks too.
test('the native loader types (index.d.ts) are self-contained under --strict', (t) => {
  t.is(installError, undefined)
  const { code, output } = tsc(['--noEmit', '-p', 'tsconfig.loader.json'])
  t.is(code, 0, output)
})
