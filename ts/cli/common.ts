/**
 * What every command shares: exit codes, option parsers (each flag is checked while the command
 * line is parsed, before any model or data is loaded), the model options, and output (results on
 * stdout, notes and progress on stderr, one JSON document with --json).
 */
import { existsSync, readFileSync, statSync } from 'node:fs'
import { type Command, InvalidArgumentError, Option } from 'commander'
import { BUILTIN_MODEL, Clip, type DeviceName, type Precision } from '../clip'
import { PromptclipError } from '../errors'
import { fetchHubDataset, isHubDatasetUri } from '../hub/dataset'
import { isHubModelId } from '../hub/model'
import type { Interrupt } from './interrupt'
import type { Progress } from './progress'

// Exit codes live in exit.ts (the interrupt handler needs them without the rest of this file).
export { EXIT, EXIT_HELP, exitCodeOf } from './exit'

export function badInput(message: string): PromptclipError {
  return new PromptclipError('E_INVALID_ARGUMENT', message)
}

// ---------------------------------------------------------------------------------------------
// Option parsers: commander calls them while parsing and reports a throw as a usage error (exit 2).

// Every number a flag takes is checked here: decimal digits only (no hex, octal or binary, no
// NaN or Infinity), whole where a count is meant, and within the range of the type it reaches the
// core as. A parser throws the rule alone ("must be ..."); index.ts puts the flag's name and the
// value given around it.

/** The largest count the binding takes (u32). */
export const U32_MAX = 4_294_967_295
/** The largest finite f32: float options reach the core as f32. */
export const F32_MAX = 3.4028234663852886e38
const WHOLE = /^\+?\d+$/
const DECIMAL = /^\+?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i

/** A whole number from `min` to `max`. */
export function wholeNumber(min: number, max: number): (value: string) => number {
  return (value) => {
    const v = value.trim()
    const n = Number(v)
    if (!WHOLE.test(v) || !Number.isSafeInteger(n) || n < min || n > max) {
      throw new InvalidArgumentError(`must be a whole number from ${min} to ${max}`)
    }
    return n
  }
}

/** A count: 1 to 2^32 - 1. */
export const positiveInt = wholeNumber(1, U32_MAX)
/** A seed: 0 to 2^32 - 1. */
export const nonNegativeInt = wholeNumber(0, U32_MAX)
/** Training epochs: 1 to a million. */
export const epochCount = wholeNumber(1, 1_000_000)

/** A number above 0 that an f32 holds (neither infinite nor rounded to 0). */
export function positiveNumber(value: string): number {
  const v = value.trim()
  const n = Number(v)
  if (!DECIMAL.test(v) || !(n > 0) || n > F32_MAX || Math.fround(n) === 0) {
    throw new InvalidArgumentError('must be a number above 0 and at most 3.4e38')
  }
  return n
}

/** A share: a number from 0 up to, not including, 1. */
export function fraction(value: string): number {
  const v = value.trim()
  const n = Number(v)
  if (!DECIMAL.test(v) || !(n >= 0) || n >= 1)
    throw new InvalidArgumentError('must be a number from 0 up to (not including) 1')
  return n
}

/** A comma-separated list of integers, each checked by `one`. */
export function intList(one: (v: string) => number): (value: string) => number[] {
  return (value) => {
    const parts = value.split(',').map((s) => s.trim())
    if (parts.some((p) => p === '')) throw new InvalidArgumentError('must be a comma-separated list of whole numbers')
    const out = parts.map((p) => {
      try {
        return one(p)
      } catch (e) {
        throw new InvalidArgumentError(
          `${(e as Error).message.replace('must be a whole number', 'must list whole numbers')} (${p} is not one)`,
        )
      }
    })
    const dup = out.find((n, i) => out.indexOf(n) !== i)
    if (dup !== undefined) throw new InvalidArgumentError(`must not list ${dup} twice`)
    return out
  }
}

/** A comma-separated list of non-empty names without duplicates. */
export function nameList(value: string): string[] {
  const names = value.split(',').map((s) => s.trim())
  if (names.some((n) => n === '')) throw new InvalidArgumentError('must be a comma-separated list of names')
  const dup = names.find((n, i) => names.indexOf(n) !== i)
  if (dup !== undefined) throw new InvalidArgumentError(`must not list "${dup}" twice`)
  return names
}

/** A comma-separated list of choices. */
export function choiceList<T extends string>(choices: readonly T[]): (value: string) => T[] {
  return (value) => {
    const list = nameList(value)
    const bad = list.find((v) => !choices.includes(v as T))
    if (bad !== undefined) throw new InvalidArgumentError(`must list only ${choices.join(', ')} ("${bad}" is not one)`)
    return list as T[]
  }
}

/** A repeatable option: every occurrence is collected. */
export function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value]
}

export function template(value: string, previous: string[] | undefined): string[] {
  if (!value.includes('{}')) throw new InvalidArgumentError('must have {} where the class name goes')
  return collect(value, previous)
}

export function device(value: string): DeviceName {
  if (!/^(cpu|cuda|cuda:\d+)$/.test(value)) throw new InvalidArgumentError('must be cpu, cuda or cuda:N')
  return value as DeviceName
}

// ---------------------------------------------------------------------------------------------
// Options several commands take.

export interface ModelFlags {
  model: string
  device: DeviceName
  dtype: Precision
  /** For a hub id: a branch, tag or commit. */
  revision?: string
  /** For a hub id: the cache only. */
  offline?: boolean
}

export function addModelOptions(cmd: Command): Command {
  return cmd
    .addOption(
      new Option(
        '--model <path or id>',
        'CLIP: a hub id (openai/clip-vit-base-patch16), a Hugging Face folder or an OpenAI safetensors file',
      ).default(BUILTIN_MODEL, 'the built-in CLIP'),
    )
    .option('--revision <rev>', 'for a hub id: a branch, tag or commit (default main)')
    .option('--offline', 'for a hub id: the Hugging Face cache only, no network (as HF_HUB_OFFLINE=1)')
    .addOption(new Option('--device <device>', 'cpu, cuda or cuda:N').default('cpu').argParser(device))
    .addOption(new Option('--dtype <dtype>', 'precision of CLIP').choices(['fp32', 'fp16', 'bf16']).default('fp32'))
}

export function addJsonOption(cmd: Command): Command {
  return cmd.option('--json', 'one JSON document on stdout (errors as JSON on stderr)')
}

export function addClassOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option('--classes <a,b,c>', 'class names, comma-separated').argParser(nameList))
    .option('--classes-file <file>', 'class names, one per line')
}

/** The class names of --classes or --classes-file, undefined when neither is given. */
export function readClasses(opts: { classes?: string[]; classesFile?: string }): string[] | undefined {
  if (opts.classes && opts.classesFile) throw badInput('give --classes or --classes-file, not both')
  if (opts.classesFile === undefined) return opts.classes
  const file = requireFile(opts.classesFile, '--classes-file')
  const names = readFileSync(file, 'utf8')
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'))
  if (names.length === 0) throw badInput(`--classes-file ${file} lists no class names`)
  const dup = names.find((n, i) => names.indexOf(n) !== i)
  if (dup !== undefined) throw badInput(`--classes-file ${file} lists "${dup}" twice`)
  return names
}

/** A path that must exist (a file, or with `dir` a folder), checked before any work starts. */
export function requireFile(path: string, what: string, kind: 'file' | 'dir' | 'any' = 'file'): string {
  if (!existsSync(path)) throw new PromptclipError('E_FILE_NOT_FOUND', `${what}: ${path} does not exist`)
  const isDir = statSync(path).isDirectory()
  if (kind === 'file' && isDir) throw badInput(`${what}: ${path} is a folder, not a file`)
  if (kind === 'dir' && !isDir) throw badInput(`${what}: ${path} is a file, not a folder`)
  return path
}

/** The model flag names a path that exists, or a hub id (fetched when the command loads it). */
export function checkModel(flags: ModelFlags): void {
  if (isHubModelId(flags.model)) return
  requireFile(flags.model, '--model', 'any')
}

/**
 * The CLIP of the model flags, a hub id fetched into the Hugging Face cache with a download bar
 * (bytes, speed, ETA) on a terminal; Ctrl-C cancels the download (it resumes next time).
 */
export async function loadClip(flags: ModelFlags, ctx: Ctx): Promise<Clip> {
  const task = ctx.progress.task('download', 'MB')
  const mb = (bytes: number) => Math.round(bytes / 1e5) / 10
  try {
    return await Clip.load(flags.model, {
      device: flags.device,
      dtype: flags.dtype,
      ...(flags.revision !== undefined ? { revision: flags.revision } : {}),
      ...(flags.offline ? { offline: true } : {}),
      signal: ctx.interrupt.signal(),
      onDownloadProgress: (p) =>
        task.update(mb(p.done), Math.max(mb(p.total), 0.1), `${p.file} ${mb(p.done)}/${mb(p.total)} MB`, {
          rate: p.bytesPerSecond / 1e6,
        }),
    })
  } finally {
    task.remove()
  }
}

/**
 * Fetches a dataset argument that names the hub (`hf://datasets/...`) into the Hugging Face cache
 * (with a download bar; Ctrl-C cancels), so that `openDataset` then reads it from there. Other
 * sources are left as they are.
 */
export async function fetchDatasetArg(source: string, ctx: Ctx, offline?: boolean): Promise<void> {
  if (!isHubDatasetUri(source)) return
  const task = ctx.progress.task('download', 'MB')
  const mb = (bytes: number) => Math.round(bytes / 1e5) / 10
  try {
    await fetchHubDataset(source, {
      ...(offline ? { offline: true } : {}),
      signal: ctx.interrupt.signal(),
      onDownloadProgress: (p) =>
        task.update(mb(p.done), Math.max(mb(p.total), 0.1), `${p.file} ${mb(p.done)}/${mb(p.total)} MB`, {
          rate: p.bytesPerSecond / 1e6,
        }),
    })
  } finally {
    task.remove()
  }
}

/** Whether the user gave this option on the command line (rather than its default). */
export function given(cmd: Command, name: string): boolean {
  return cmd.getOptionValueSource(name) === 'cli'
}

// ---------------------------------------------------------------------------------------------
// Output.

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`)
}

export function print(line = ''): void {
  process.stdout.write(`${line}\n`)
}

export const pct = (x: number) => `${x.toFixed(1)}%`

// ---------------------------------------------------------------------------------------------
// What a command's action gets.

export interface Ctx {
  progress: Progress
  interrupt: Interrupt
  /** What the process exits with once the action returns. */
  exitCode: number
}
