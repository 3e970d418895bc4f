/**
 * A finished run's files checked before they are trusted: result.json's fields and the learner
 * file's safetensors framing. Read without a model, so `run --status` can say that a run is
 * damaged (and will be redone) as well as the protocol can.
 */
import { closeSync, openSync, readFileSync, readSync, statSync } from 'node:fs'
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
  let fd: number | undefined
  try {
    const size = statSync(path).size
    if (size < 8) return `${path} is truncated (${size} bytes)`
    fd = openSync(path, 'r')
    const len = Buffer.alloc(8)
    readSync(fd, len, 0, 8, 0)
    const headerLength = Number(len.readBigUInt64LE(0))
    if (headerLength > size - 8) return `${path} is truncated (its header runs past the end)`
    const header = Buffer.alloc(headerLength)
    readSync(fd, header, 0, headerLength, 8)
    const tensors = JSON.parse(header.toString('utf8')) as Record<string, { data_offsets?: [number, number] }>
    let end = 0
    for (const [name, t] of Object.entries(tensors)) {
      if (name !== '__metadata__' && Array.isArray(t?.data_offsets)) end = Math.max(end, t.data_offsets[1])
    }
    if (8 + headerLength + end > size) return `${path} is truncated (${size} of ${8 + headerLength + end} bytes)`
    return null
  } catch (e) {
    return `${path} is not a readable safetensors file (${(e as Error).message})`
  } finally {
    if (fd !== undefined) closeSync(fd)
  }
}
