/**
 * The core's method catalogue, read once from the addon: every method's name, title, paper, what
 * it takes and uses, its options (type, range, default, doc, command-line flag) and its recipe.
 * The factories' types (ts/generated/methods.ts), the command line's method flags, the protocols'
 * method list and the report's titles come from here, so a method added to the core needs no
 * TypeScript.
 */
import { binding, type Native } from './binding'
import { invalidArgument, nativeSync } from './errors'
import type { Method } from './generated/methods'

export type OptionDoc = { name: string; doc: string; flag: string | null } & (
  | { type: 'integer'; min: number }
  | { type: 'number'; exclusiveMin: number | null }
  | { type: 'boolean' }
  | { type: 'string' }
  | { type: 'string-list' }
  | { type: 'integer-list'; min: number }
  | { type: 'choice'; choices: string[] }
)

/** One method, as the core describes it (crates/promptclip-core/src/methods/catalogue.rs). */
export interface MethodEntry {
  name: Method
  /** As tables and reports print it. */
  title: string
  paper: string
  /** What its forward reads from a batch of images: the frozen encoder's features (cached once
   *  per run without augmentation), or the images' pixels (a method that runs the encoder). */
  takes: 'image-features' | 'images'
  /** Epochs of SGD steps (checkpointed, resumable), or one fit on the features. */
  fitting: 'sgd' | 'feature-fit'
  /** The class lists it scores: any names, or only those it was fitted on. */
  classes: 'any-classes' | 'own-classes'
  /** Whether fitting uses a validation split. */
  usesValidation: boolean
  /** The options that, when all set, make the validation split unneeded (the linear probe's `c`,
   *  Tip-Adapter's `alpha` and `beta`). */
  validationUnless: string[]
  /** The option that takes a dataset's hand-made template, if any. */
  templateOption: string | null
  /** Whether the learner takes a `seed` option (a protocol passes each run's seed there). */
  seeded: boolean
  options: OptionDoc[]
  /** Every option's default (null: chosen at fit time, or from another option). */
  defaults: Record<string, unknown>
  /** The recipe of a plain `fit`. */
  recipe: MethodRecipe
}

/** A method's training recipe: its optimiser, epochs, batch, learning rate, weight decay, warmup
 *  epochs and whether the cosine anneals per batch (the binding's type, generated from the core). */
export type MethodRecipe = Native.NativeRecipe

let cached: MethodEntry[] | undefined

/** Every method, in the order tables list them. */
export function methodCatalogue(): MethodEntry[] {
  cached ??= nativeSync(() => binding.methodCatalogue()) as MethodEntry[]
  return cached
}

/** The names of every method. */
export function methodNames(): Method[] {
  return methodCatalogue().map((m) => m.name)
}

/** The methods trained by SGD steps (checkpointed, resumable): the ones that training flags such
 *  as epochs, learning rate and batch size are for. */
export function sgdMethods(): Method[] {
  return methodCatalogue()
    .filter((m) => m.fitting === 'sgd')
    .map((m) => m.name)
}

/** A method's entry, or a coded refusal that lists the methods there are. */
export function methodEntry(name: string): MethodEntry {
  const entry = methodCatalogue().find((m) => m.name === name)
  if (!entry) throw invalidArgument(`method \`${name}\`: expected one of ${methodNames().join(', ')}`)
  return entry
}

/** A method's training recipe for a protocol's shots per class and dataset (catalog name). */
export function methodRecipe(name: string, shots?: number, dataset?: string): MethodRecipe {
  return nativeSync(() => binding.methodRecipe(name, shots ?? null, dataset ?? null))
}
