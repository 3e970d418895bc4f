#!/usr/bin/env node
/**
 * promptclip command line.
 *
 *   promptclip demo [--model <built-in>] [--data /usr/share/datasets/fashion-mnist]
 *                   [--shots 16] [--seeds 1,2,3] [--test-per-class 50] [--out promptclip-demo]
 *   promptclip info <model>
 *   promptclip zeroshot --model <path> --classes cat,dog [--template "a photo of a {}."]...
 *                       [--top-k 3] [--device cpu] [--json] <image or folder>...
 */
import { readdirSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { BUILTIN_MODEL, Clip, type DeviceName } from './clip'
import { FASHION_MNIST_DIR } from './datasets'
import { formatTable, runDemo } from './demo'
import { PromptclipError } from './errors'
import { writeReport } from './report'

const IMAGE_EXT = /\.(jpe?g|png|webp)$/i

const USAGE = `usage:
  promptclip demo [--model DIR] [--data DIR] [--shots N] [--seeds 1,2,3] [--test-per-class N]
                  [--out DIR]
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
 * The built-in job: base-to-new on the built-in CLIP's 20 classes, every method, 3 seeds; the
 * paper-style table, CoOp's context as words, and an HTML report.
 */
async function demo(rest: string[]): Promise<number> {
  const { values } = parseArgs({
    args: rest,
    options: {
      model: { type: 'string', default: BUILTIN_MODEL },
      data: { type: 'string', default: FASHION_MNIST_DIR },
      shots: { type: 'string', default: '16' },
      seeds: { type: 'string', default: '1,2,3' },
      'test-per-class': { type: 'string', default: '50' },
      out: { type: 'string', default: 'promptclip-demo' },
    },
  })
  const int = (k: 'shots' | 'test-per-class') => {
    const v = Number(values[k])
    if (!Number.isInteger(v) || v < 1)
      throw new PromptclipError('E_INVALID_ARGUMENT', `--${k} must be a positive integer`)
    return v
  }
  const seeds = values.seeds.split(',').map((s) => Number(s.trim()))
  if (seeds.some((s) => !Number.isInteger(s) || s < 0)) {
    throw new PromptclipError('E_INVALID_ARGUMENT', `--seeds must be a comma-separated list of integers`)
  }
  const results = await runDemo({
    model: values.model,
    fashionDir: values.data,
    shots: int('shots'),
    seeds,
    testPerClass: int('test-per-class'),
    log: (line) => console.log(line),
  })
  console.log(`\nbase-to-new, ${results.shots} shots, accuracy % (mean ± std over seeds ${seeds.join(', ')})`)
  console.log(formatTable(results))
  console.log("\nCoOp's learned context, nearest words of each position:")
  for (const [i, words] of results.contextWords.entries()) console.log(`  ${i + 1}: ${words.join(', ')}`)
  const report = join(values.out, 'report.html')
  writeReport(results, report)
  console.log(`\nreport: ${report} (${results.seconds.toFixed(0)} s)`)
  return 0
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv
  if (rest.includes('--help') || rest.includes('-h')) {
    console.log(USAGE)
    return 0
  }
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

/** node:util's parseArgs throws a TypeError with a code for unknown or malformed options. */
function usageError(err: unknown): unknown {
  const code = (err as { code?: unknown })?.code
  if (typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS')) {
    return new PromptclipError('E_INVALID_ARGUMENT', `${(err as Error).message}\n${USAGE}`)
  }
  return err
}

main(process.argv.slice(2))
  .catch((err) => Promise.reject(usageError(err)))
  .then(
    (code) => (process.exitCode = code),
    (err) => {
      if (err instanceof PromptclipError) console.error(`promptclip: ${err.code}: ${err.message}`)
      else console.error(err)
      process.exitCode = 1
    },
  )
