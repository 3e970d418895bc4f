/**
 * `convert`: prompts between promptclip's learner files and the official code's state-dict names.
 * A learner file (`promptclip train`'s) becomes safetensors under the official names; any other
 * safetensors (the official names, as scripts/dassl_to_safetensors.py writes them from a Dassl
 * checkpoint) becomes a learner file for the model given.
 */
import type { Command } from 'commander'
import { binding } from '../binding'
import { native } from '../errors'
import { methodNames } from '../methods'
import { type Method, PromptLearner } from '../prompt'
import { readSafetensorsFraming } from '../safetensors'
import {
  addClassOptions,
  addJsonOption,
  addModelOptions,
  badInput,
  type Ctx,
  checkModel,
  EXIT,
  EXIT_HELP,
  given,
  loadClip,
  type ModelFlags,
  print,
  printJson,
  readClasses,
  requireFile,
} from './common'
import { commanderOption, learnerOptionsFrom, methodFlags } from './methodFlags'

interface Flags extends ModelFlags {
  method?: Method
  classes?: string[]
  classesFile?: string
  json?: boolean
}

export function register(program: Command, ctx: Ctx): void {
  const cmd = program
    .command('convert')
    .summary("prompts to and from the official code's state-dict names")
    .description(
      "A prompt file saved by promptclip becomes safetensors under the official code's state-dict " +
        'names (prompt_learner.ctx, image_encoder.VPT, ...; no model needed). Safetensors under those ' +
        'names (scripts/dassl_to_safetensors.py makes them from a Dassl checkpoint) become a prompt ' +
        'file for --model: the method is inferred from the names (--method to choose, e.g. promptsrc ' +
        'for IVLP-shaped prompts), the tokens and depths from the shapes; give the classes, and the ' +
        "options the official config set that the tensors do not show (--ctx-init: the prompt's words).",
    )
    .argument('<input>', 'a promptclip prompt file, or safetensors under the official names')
    .argument('<output>', 'the file to write')
    .option('--method <method>', `the method of official prompts (${methodNames().join(', ')})`)
  addClassOptions(cmd)
  for (const f of methodFlags()) cmd.addOption(commanderOption(f))
  addModelOptions(cmd)
  addJsonOption(cmd)
  cmd.addHelpText('after', EXIT_HELP)
  cmd.action(async (input: string, output: string, flags: Flags, command: Command) => {
    requireFile(input, '<input>')
    const metadata = metadataOf(input)
    if (typeof metadata?.promptclip === 'string') {
      for (const key of ['method', 'classes', 'classesFile', ...methodFlags().map((f) => f.key)]) {
        if (given(command, key))
          throw badInput(`${input} is a promptclip prompt file: it says its method, classes and options`)
      }
      await native(() => binding.exportOfficialFile(input, output))
      report(ctx, flags, { input, output, to: 'official' })
      return
    }
    if (flags.method !== undefined && !methodNames().includes(flags.method)) {
      throw badInput(`--method ${flags.method}: expected one of ${methodNames().join(', ')}`)
    }
    const isGiven = (key: string) => given(command, key)
    const options =
      flags.method === undefined
        ? optionsForAnyMethod(isGiven, flags)
        : learnerOptionsFrom(flags.method, isGiven, flags as object as Record<string, unknown>, badInput)
    const classNames = readClasses(flags)
    // A promptclip export records its classes; the official code's files do not.
    if (classNames === undefined && metadata !== null && metadata['promptclip.classNames'] === undefined) {
      throw badInput(
        `${input} holds no class names (the official code keeps them in its config): give --classes a,b,c or --classes-file FILE`,
      )
    }
    checkModel(flags)
    const clip = await loadClip(flags, ctx)
    const learner = await PromptLearner.importOfficial(clip, input, {
      method: flags.method,
      classNames,
      options,
    })
    await learner.save(output)
    const info = learner.info
    report(ctx, flags, { input, output, to: 'promptclip', method: info.method, options: info.options })
  })
}

/** Method flags given without --method: each applies to the methods that have it, checked by the
 *  core once the names decide the method. */
function optionsForAnyMethod(isGiven: (key: string) => boolean, flags: object): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  for (const f of methodFlags()) if (isGiven(f.key)) out[f.option] = (flags as Record<string, unknown>)[f.key]
  return out
}

function report(ctx: Ctx, flags: Flags, r: { input: string; output: string; to: string } & Record<string, unknown>) {
  if (flags.json) printJson(r)
  else if (r.to === 'official') print(`${r.output}: ${r.input}'s prompts under the official state-dict names`)
  else print(`${r.output}: ${r.method} prompts from ${r.input} (options ${JSON.stringify(r.options)})`)
  ctx.exitCode = EXIT.OK
}

/** A safetensors file's metadata (its JSON header's `__metadata__`), or null when the file is not
 *  one: anything unreadable is left to the core to name. */
function metadataOf(path: string): Record<string, string> | null {
  try {
    const { header } = readSafetensorsFraming(path)
    if (header === null) return null
    return (JSON.parse(header) as { __metadata__?: Record<string, string> }).__metadata__ ?? {}
  } catch {
    return null
  }
}
