/**
 * The command line's method flags, made from the core's catalogue: each method option that has a
 * flag there (`--n-ctx`, `--kg-weight`, ...) becomes one commander option, typed by the option's
 * kind, documented by its doc, and given only to the methods that have it. A method added to the
 * core gets its flags here without a line of TypeScript.
 */
import { InvalidArgumentError, Option } from 'commander'
import type { Method } from '../generated/methods'
import { methodCatalogue, methodEntry, type OptionDoc } from '../methods'
import { F32_MAX, positiveNumber, U32_MAX, wholeNumber } from './common'

/** One flag and the method options it sets. */
export interface MethodFlag {
  /** As typed: `--kg-weight`. */
  flag: string
  /** Commander's attribute for it: `kgWeight`. */
  key: string
  /** The option it sets, and the methods that have that option. */
  option: string
  methods: Method[]
  kind: OptionDoc
}

const SIGNED_DECIMAL = /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i

/** A flag's parser from its option's kind: the shape here, the range rule the core's. */
function parserOf(o: OptionDoc): ((value: string) => unknown) | undefined {
  switch (o.type) {
    case 'integer':
      return wholeNumber(o.min, U32_MAX)
    case 'number':
      // Above 0: the parser every positive number flag uses (f32 range, not rounded to 0).
      if (o.exclusiveMin === 0) return positiveNumber
      return (value) => {
        const v = value.trim()
        const n = Number(v)
        const above = o.exclusiveMin
        if (!SIGNED_DECIMAL.test(v) || !Number.isFinite(n) || Math.abs(n) > F32_MAX) {
          throw new InvalidArgumentError('must be a number (decimal digits)')
        }
        if (above !== null && !(n > above)) throw new InvalidArgumentError(`must be a number above ${above}`)
        return n
      }
    case 'string-list':
      // --lora-matrices q,k,v
      return (value) => {
        const items = value.split(',').map((s) => s.trim())
        if (items.some((s) => s === '')) throw new InvalidArgumentError('must be a comma-separated list, e.g. a,b,c')
        return items
      }
    case 'integer-list': {
      // --lora-layers 0,1,2
      const whole = wholeNumber(o.min, U32_MAX)
      return (value) => value.split(',').map((s) => whole(s.trim()))
    }
    default:
      return undefined
  }
}

let cached: MethodFlag[] | undefined

/** Every method flag of the catalogue, in the order the methods list them. */
export function methodFlags(): MethodFlag[] {
  if (cached) return cached
  const byFlag = new Map<string, MethodFlag>()
  for (const entry of methodCatalogue()) {
    for (const o of entry.options) {
      if (o.flag === null) continue
      const known = byFlag.get(o.flag)
      if (known) {
        known.methods.push(entry.name)
        continue
      }
      const key = o.flag.replace(/^--/, '').replace(/-([a-z])/g, (_, c: string) => c.toUpperCase())
      byFlag.set(o.flag, { flag: o.flag, key, option: o.name, methods: [entry.name], kind: o })
    }
  }
  cached = [...byFlag.values()]
  return cached
}

/** The commander option of a method flag; its help names the methods it is for. */
export function commanderOption(f: MethodFlag): Option {
  const o = f.kind
  const defaults = new Set(f.methods.map((m) => JSON.stringify(methodEntry(m).defaults[o.name])))
  const shared = defaults.size === 1 ? [...defaults][0] : undefined
  const dflt = shared !== undefined && shared !== 'null' && o.type !== 'boolean' ? `, default ${shared}` : ''
  // Methods may document one option differently (CoOp's context starts random, CoCoOp's from
  // words): each doc with the methods it is for.
  const docs = new Map<string, Method[]>()
  for (const m of f.methods) {
    const doc = methodEntry(m).options.find((x) => x.name === f.option)?.doc
    if (doc !== undefined) docs.set(doc, [...(docs.get(doc) ?? []), m])
  }
  const help =
    docs.size <= 1
      ? `${o.doc}${dflt} (${f.methods.join(', ')})`
      : [...docs].map(([doc, ms]) => `${ms.join(', ')}: ${doc}`).join('; ')
  const arg =
    o.type === 'boolean'
      ? ''
      : o.type === 'integer'
        ? ' <n>'
        : o.type === 'number'
          ? ' <x>'
          : o.type === 'integer-list'
            ? ' <n,n,...>'
            : o.type === 'string-list'
              ? ' <a,b,...>'
              : ' <value>'
  const option = new Option(`${f.flag}${arg}`, help)
  if (o.type === 'choice') return option.choices(o.choices)
  const parse = parserOf(o)
  return parse ? option.argParser(parse) : option
}

/** The learner options that the given method flags set, for `method`; a flag given for a method
 *  that has no such option is refused, naming the methods it is for. */
export function learnerOptionsFrom(
  method: Method,
  isGiven: (key: string) => boolean,
  values: Record<string, unknown>,
  refuse: (message: string) => Error,
): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  for (const f of methodFlags()) {
    if (!isGiven(f.key)) continue
    if (!f.methods.includes(method)) {
      throw refuse(`${f.flag} does not apply to --method ${method} (it is for ${f.methods.join(', ')})`)
    }
    out[f.option] = values[f.key]
  }
  return out
}
