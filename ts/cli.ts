#!/usr/bin/env node
/**
 * promptclip command line.
 *
 *   promptclip info <model>
 *   promptclip zeroshot --model <path> --classes cat,dog [--template "a photo of a {}."]...
 *                       [--top-k 3] [--device cpu] [--json] <image or folder>...
 */
import { readdirSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { Clip, type DeviceName } from './clip'
import { PromptclipError } from './errors'

const IMAGE_EXT = /\.(jpe?g|png|webp)$/i

const USAGE = `usage:
  promptclip info <model>
  promptclip zeroshot --model <path> --classes a,b,c [--template T]... [--top-k K]
                      [--device cpu|cuda] [--json] <image or folder>...`

function expandImages(inputs: string[]): string[] {
  return inputs.flatMap((p) => {
    let st
    try {
      st = statSync(p)
    } catch {
      return [p] // let the core report it as a missing file, by name
    }
    if (!st.isDirectory()) return [p]
    return readdirSync(p)
      .filter((f) => IMAGE_EXT.test(f))
      .sort()
      .map((f) => join(p, f))
  })
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv
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
      console.log(JSON.stringify(preds.map((p) => ({ image: images[p.index], top: p.top, error: p.error })), null, 2))
    } else {
      for (const p of preds) {
        const what = p.error ? `error ${p.error.code}: ${p.error.message}` : p.top.map((t) => `${t.label} ${(100 * t.probability).toFixed(1)}%`).join(', ')
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
