/**
 * A finished run's files checked before they are trusted: result.json's fields and the learner
 * file's safetensors framing. Read without a model, so `run --status` can say that a run is
 * damaged (and will be redone) as well as the protocol can.
 */
import { readFileSync } from 'node:fs'
import { readSafetensorsFraming } from '../safetensors'
import type { RunRecord } from './types'

const isNumber = (x: unknown) => typeof x === 'number' && Number.isFinite(x)

/** What is wrong with a finished run's result.json, or null. */
export function resultDamage(resultPath: string): string | null {
  let done: RunRecord
  try {
    done = JSON.parse(readFileSync(resultPath, 'utf8')) as RunRecord
  } catch {
    return 'result.json is not valid JSON'
  }
  if (done === null || typeof done !== 'object' || typeof done.config !== 'object' || done.config === null) {
    return 'result.json has no config'
  }
  if (!Array.isArray(done.evaluations) || done.evaluations.length === 0) return 'result.json has no evaluations'
  for (const e of done.evaluations) {
    if (e === null || typeof e !== 'object' || ![e.accuracy, e.macroF1, e.total, e.correct].every(isNumber)) {
      return `result.json's evaluation ${JSON.stringify(e?.split ?? null)} is not a number where one is needed`
    }
  }
  return null
}

/**
 * What is wrong with a safetensors file's framing (its header and the length of its data), or
 * null: a truncated learner file is found without loading a model.
 */
export function safetensorsDamage(path: string): string | null {
  try {
    const { size, headerLength, header } = readSafetensorsFraming(path)
    if (size < 8) return `${path} is truncated (${size} bytes)`
    if (header === null) return `${path} is truncated (its header runs past the end)`
    const tensors = JSON.parse(header) as Record<string, { data_offsets?: [number, number] }>
    let end = 0
    for (const [name, t] of Object.entries(tensors)) {
      if (name !== '__metadata__' && Array.isArray(t?.data_offsets)) end = Math.max(end, t.data_offsets[1])
    }
    if (8 + headerLength + end > size) return `${path} is truncated (${size} of ${8 + headerLength + end} bytes)`
    return null
  } catch (e) {
    return `${path} is not a readable safetensors file (${(e as Error).message})`
  }
}
