#!/usr/bin/env node
/**
 * promptclip command line.
 *
 *   promptclip demo [--model fixtures/tiny-clip-hf] [--data /usr/share/datasets/fashion-mnist]
 *                   [--shots 16] [--epochs 50] [--test 1000] [--out promptclip-demo]
 *   promptclip info <model>
 *   promptclip zeroshot --model <path> --classes cat,dog [--template "a photo of a {}."]...
 *                       [--top-k 3] [--device cpu] [--json] <image or folder>...
 */
import { readdirSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { Clip, type DeviceName } from './clip'
import { FASHION_MNIST_DIR, fewShot, loadFashionMnist } from './datasets'
import { PromptclipError } from './errors'
import { Evaluator } from './evaluate'
import { PromptLearner } from './prompt'
import { Trainer } from './train'

const IMAGE_EXT = /\.(jpe?g|png|webp)$/i

const USAGE = `usage:
  promptclip demo [--model DIR] [--data DIR] [--shots N] [--epochs N] [--lr X]
                  [--context unified|class-specific] [--n-ctx M] [--test N] [--out DIR]
  promptclip info <model>
  promptclip zeroshot --model <path> --classes a,b,c [--template T]... [--top-k K]
                      [--device cpu|cuda] [--json] <image or folder>...`

function expandImages(inputs: string[]): string[] {
  return inputs.flatMap((p) => {
    let isDir: boolean
    try {
      isDir = statSync(p).isDirectory()
    } catch {
      return [p] // let the core report it as a missing file, by name
    }
    if (!isDir) return [p]
    return readdirSync(p)
      .filter((f) => IMAGE_EXT.test(f))
      .sort()
      .map((f) => join(p, f))
  })
}

/**
 * The built-in default job: CoOp on Fashion-MNIST (few-shot), against zero-shot CLIP, with the
 * learned prompt saved and read back as words. Defaults to the bundled tiny test CLIP; pass
 * --model for a real checkpoint.
 */
async function demo(rest: string[]): Promise<number> {
  const { values } = parseArgs({
    args: rest,
    options: {
      model: { type: 'string', default: 'fixtures/tiny-clip-hf' },
      data: { type: 'string', default: FASHION_MNIST_DIR },
      shots: { type: 'string', default: '16' },
      // Defaults suit the bundled tiny random CLIP; for a real CLIP the paper's settings are
      // --context unified --lr 0.002 --epochs 200 (16 shots).
      epochs: { type: 'string', default: '50' },
      lr: { type: 'string', default: '0.01' },
      'n-ctx': { type: 'string', default: '16' },
      context: { type: 'string', default: 'class-specific' },
      test: { type: 'string', default: '1000' },
      seed: { type: 'string', default: '1' },
      out: { type: 'string', default: 'promptclip-demo' },
    },
  })
  const num = (k: keyof typeof values) => Number(values[k])
  const t0 = Date.now()
  const clip = await Clip.load(values.model)
  const full = loadFashionMnist('train', values.data)
  const train = fewShot(full, num('shots'), num('seed'))
  const testAll = loadFashionMnist('test', values.data)
  const test = { images: testAll.images.slice(0, num('test')), labels: testAll.labels.slice(0, num('test')) }
  const classNames = full.classNames
  console.log(
    `CLIP ${values.model} (${clip.info.naming}, width ${clip.info.textWidth}); ` +
      `Fashion-MNIST ${num('shots')}-shot: ${train.images.length} training, ${test.images.length} test images`,
  )

  const zs = await new Evaluator(clip, { classNames, topK: [1, 3] }).evaluate(test)
  if (values.context !== 'unified' && values.context !== 'class-specific') {
    throw new PromptclipError('E_INVALID_ARGUMENT', `--context must be "unified" or "class-specific"`)
  }
  const learner = PromptLearner.coop(clip, {
    classNames,
    nCtx: num('n-ctx'),
    classSpecific: values.context === 'class-specific',
    seed: num('seed'),
  })
  const trainer = new Trainer(learner, {
    epochs: num('epochs'),
    lr: num('lr'),
    seed: num('seed'),
    checkpointPath: join(values.out, 'train.ckpt'),
  })
  const summary = await trainer.fit(train, {
    onProgress: (p) => {
      if (p.step === p.stepsPerEpoch) {
        const acc = p.epochAccuracy.toFixed(1)
        console.log(
          `epoch ${p.epoch}/${p.epochs}  loss ${p.epochLoss.toFixed(4)}  acc ${acc}%  lr ${p.lr.toExponential(2)}`,
        )
      }
    },
  })
  const coop = await new Evaluator(learner, { topK: [1, 3] }).evaluate(test)
  const promptPath = join(values.out, 'fashion-mnist.prompt.safetensors')
  await learner.save(promptPath)
  const words = await learner.interpret({ topK: 1 })
  console.log(`\n${'method'.padEnd(16)}${'acc %'.padStart(8)}${'macro-F1'.padStart(10)}${'top-3 %'.padStart(9)}`)
  for (const [name, r] of [
    ['zero-shot CLIP', zs],
    ['CoOp', coop],
  ] as const) {
    const cells = [
      r.accuracy.toFixed(1).padStart(8),
      r.macroF1.toFixed(1).padStart(10),
      r.topK[1].accuracy.toFixed(1).padStart(9),
    ]
    console.log(`${name.padEnd(16)}${cells.join('')}`)
  }
  console.log(`\nper class (CoOp): ${coop.perClass.map((c) => `${c.name} ${c.accuracy?.toFixed(0)}%`).join(', ')}`)
  console.log(`learned context as nearest words: ${words.map((w) => w.tokens[0].token).join(' ')}`)
  const loss = `${summary.epochLoss[0].toFixed(3)} -> ${summary.epochLoss.at(-1)?.toFixed(3)}`
  console.log(`saved ${promptPath}; training loss ${loss}; ${((Date.now() - t0) / 1000).toFixed(1)} s`)
  return 0
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv
  if (command === 'demo') return demo(rest)
  if (command === 'info') {
    if (rest.length !== 1) throw new PromptclipError('E_INVALID_ARGUMENT', `info takes one model path\n${USAGE}`)
    const clip = await Clip.load(rest[0])
    console.log(JSON.stringify(clip.info, null, 2))
    return 0
  }
  if (command === 'zeroshot') {
    const { values, positionals } = parseArgs({
      args: rest,
      allowPositionals: true,
      options: {
        model: { type: 'string' },
        classes: { type: 'string' },
        template: { type: 'string', multiple: true },
        'top-k': { type: 'string', default: '3' },
        device: { type: 'string', default: 'cpu' },
        json: { type: 'boolean', default: false },
      },
    })
    if (!values.model || !values.classes || positionals.length === 0) {
      throw new PromptclipError('E_INVALID_ARGUMENT', `zeroshot needs --model, --classes and images\n${USAGE}`)
    }
    const classes = values.classes.split(',').map((c) => c.trim())
    const images = expandImages(positionals)
    const clip = await Clip.load(values.model, { device: values.device as DeviceName })
    const preds = await clip.zeroShot(images, classes, { templates: values.template, topK: Number(values['top-k']) })
    if (values.json) {
      console.log(
        JSON.stringify(
          preds.map((p) => ({ image: images[p.index], top: p.top, error: p.error })),
          null,
          2,
        ),
      )
    } else {
      for (const p of preds) {
        const what = p.error
          ? `error ${p.error.code}: ${p.error.message}`
          : p.top.map((t) => `${t.label} ${(100 * t.probability).toFixed(1)}%`).join(', ')
        console.log(`${images[p.index]}: ${what}`)
      }
    }
    return preds.some((p) => p.error) ? 2 : 0
  }
  console.error(USAGE)
  return command === undefined || command === '--help' || command === '-h' ? 0 : 1
}

main(process.argv.slice(2)).then(
  (code) => (process.exitCode = code),
  (err) => {
    if (err instanceof PromptclipError) console.error(`promptclip: ${err.code}: ${err.message}`)
    else console.error(err)
    process.exitCode = 1
  },
)
