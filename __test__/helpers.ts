import { readFileSync } from 'node:fs'
import { join } from 'node:path'

export const FIXTURES = join(import.meta.dirname ?? __dirname, '..', 'fixtures')
export const HF_MODEL = join(FIXTURES, 'tiny-clip-hf')
export const OPENAI_MODEL = join(FIXTURES, 'tiny-clip-openai.safetensors')
export const IMAGES = join(FIXTURES, 'images')

/** Minimal safetensors reader (f32 / i64 only), independent of the addon. */
export function readSafetensors(path: string): Record<string, { shape: number[]; data: number[] }> {
  const buf = readFileSync(path)
  const n = Number(buf.readBigUInt64LE(0))
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>
  const out: Record<string, { shape: number[]; data: number[] }> = {}
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__') continue
    const bytes = buf.subarray(8 + n + t.data_offsets[0], 8 + n + t.data_offsets[1])
    const ab = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength)
    let data: number[]
    if (t.dtype === 'F32') data = Array.from(new Float32Array(ab))
    else if (t.dtype === 'I64') data = Array.from(new BigInt64Array(ab), Number)
    else continue
    out[name] = { shape: t.shape, data }
  }
  return out
}

export function maxRelErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let scale = 1e-12
  let err = 0
  for (let i = 0; i < b.length; i++) scale = Math.max(scale, Math.abs(b[i]))
  for (let i = 0; i < b.length; i++) err = Math.max(err, Math.abs(a[i] - b[i]))
  return err / scale
}

export function normalize(v: ArrayLike<number>): number[] {
  const n = Math.sqrt(Array.from(v).reduce((s, x) => s + x * x, 0))
  return Array.from(v, (x) => x / n)
}

export function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0
  for (let i = 0; i < a.length; i++) s += a[i] * b[i]
  return s
}
