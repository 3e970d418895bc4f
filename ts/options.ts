/**
 * The one place where public options become the binding's. The core parses and checks every
 * method's and training's options itself (unknown fields and wrong types are refused by name), and
 * holds every default; this module only splits what the binding takes apart (callbacks, signals,
 * runtime settings), converts images, and asks the core for the defaults of the calls it makes.
 */
import { coreDefaults, type Native } from './binding'
import { invalidArgument } from './errors'

/** Decoded 8-bit pixels, row-major: 1 (grey), 3 (RGB) or 4 (RGBA) channels. */
export interface RawImage {
  width: number
  height: number
  channels: 1 | 3 | 4
  data: Uint8Array
}

/** An image: a file path, encoded JPEG / PNG / WebP / BMP / GIF (first frame) bytes, or raw pixels. */
export type ImageInput = string | Uint8Array | RawImage

type NativeImage = string | Uint8Array | Native.NativeRawImage

/** The core's defaults for calls whose options leave them out (batch size, top-k, template). */
let cachedDefaults: Native.NativeDefaults | undefined
export function defaults(): Native.NativeDefaults {
  cachedDefaults ??= coreDefaults()
  return cachedDefaults
}

export function toNativeImages(images: ImageInput[], what = 'images'): NativeImage[] {
  if (!Array.isArray(images)) throw invalidArgument(`${what} must be an array of file paths, Buffers or raw images`)
  return images.map((img, i) => {
    if (typeof img === 'string') return img
    if (img instanceof Uint8Array) return img
    if (img && typeof img === 'object' && img.data instanceof Uint8Array) {
      const { width, height, channels, data } = img
      if (![width, height].every((v) => Number.isInteger(v) && v > 0) || ![1, 3, 4].includes(channels)) {
        throw invalidArgument(`${what}[${i}]: raw images need positive integer width/height and 1, 3 or 4 channels`)
      }
      return { width, height, channels, data }
    }
    throw invalidArgument(
      `${what}[${i}] must be a file path (string), a Buffer/Uint8Array or { width, height, channels, data }`,
    )
  })
}

/** The largest count the binding takes (napi's u32 would wrap 2^32 + 4 to 4, silently). */
export const MAX_COUNT = 0xffff_ffff

export function positiveInt(name: string, v: number | undefined): number | undefined {
  if (v !== undefined && (!Number.isInteger(v) || v < 1 || v > MAX_COUNT))
    throw invalidArgument(`${name} must be a positive integer up to ${MAX_COUNT}, got ${v}`)
  return v
}

/**
 * A list of strings (class names, templates, texts) checked here, before the binding: the
 * binding's own conversion would refuse a number or a null with napi's bare "StringExpected",
 * naming neither the option nor the entry.
 */
export function toNativeStrings(
  list: unknown,
  name: string,
  { required = false }: { required?: boolean } = {},
): string[] | undefined {
  if (list === undefined && !required) return undefined
  if (!Array.isArray(list)) throw invalidArgument(`${name} must be an array of strings, got ${describe(list)}`)
  for (let i = 0; i < list.length; i++) {
    // A sparse array's holes are undefined too.
    if (typeof list[i] !== 'string') {
      throw invalidArgument(`${name}[${i}] must be a string, got ${describe(list[i])}`)
    }
  }
  return list as string[]
}

/** An optional string option, checked by name (the binding would say only "StringExpected"). */
export function optionalString(name: string, v: unknown): string | undefined {
  if (v !== undefined && typeof v !== 'string') throw invalidArgument(`${name} must be a string, got ${describe(v)}`)
  return v
}

/** A value for a message: its JSON where short, else its type. */
function describe(v: unknown): string {
  if (v === undefined) return 'undefined'
  if (typeof v === 'bigint' || typeof v === 'symbol' || typeof v === 'function') return typeof v
  try {
    const json = JSON.stringify(v)
    return json.length <= 40 ? json : `a ${Array.isArray(v) ? 'array' : typeof v} (${json.slice(0, 37)}...)`
  } catch {
    return typeof v
  }
}

/**
 * NaN and the infinities have no JSON form, so the binding could only refuse them without naming
 * the option: name it here. (Every other check of a number is the core's.)
 */
export function finiteNumbers<O extends object>(what: string, options: O): O {
  for (const [k, v] of Object.entries(options))
    if (typeof v === 'number' && !Number.isFinite(v))
      throw invalidArgument(`${what} options: ${k} must be a finite number, got ${v}`)
  return options
}

/** A learner's class list, options and runtime settings, as `createLearner` takes them. */
export function toNativeLearnerOptions<O extends { classNames: string[]; memoryBudgetMb?: number }>(
  options: O,
): { classNames: string[]; options: Omit<O, 'classNames' | 'memoryBudgetMb'>; runtime: Record<string, number> } {
  if (!options || typeof options !== 'object') throw invalidArgument('options must be an object with classNames')
  const { classNames, memoryBudgetMb, ...rest } = options
  toNativeStrings(classNames, 'classNames', { required: true })
  return { classNames, options: finiteNumbers('learner', rest), runtime: toNativeRuntime({ memoryBudgetMb }) }
}

export function toNativeRuntime(options: { memoryBudgetMb?: number } = {}): Record<string, number> {
  const memoryBudgetMb = positiveInt('memoryBudgetMb', options.memoryBudgetMb)
  return memoryBudgetMb === undefined ? {} : { memoryBudgetMb }
}

/** Training options for the core: `resumeFrom` joins them; callbacks and signals stay here. */
export function toNativeTrainOptions(options: object, resumeFrom: string | undefined): Record<string, unknown> {
  const out: Record<string, unknown> = { ...options }
  if (resumeFrom !== undefined) out.resumeFrom = resumeFrom
  for (const [k, v] of Object.entries(out)) if (v === undefined) delete out[k]
  return finiteNumbers('train', out)
}
