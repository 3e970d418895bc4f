import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { deflateSync } from 'node:zlib'

export const FIXTURES = join(import.meta.dirname ?? __dirname, '..', 'fixtures')
export const HF_MODEL = join(FIXTURES, 'tiny-clip-hf')
export const OPENAI_MODEL = join(FIXTURES, 'tiny-clip-openai.safetensors')
export const IMAGES = join(FIXTURES, 'images')

/** Minimal safetensors reader (f32 / i64 only), independent of the addon. */
export function readSafetensors(path: string): Record<string, { shape: number[]; data: number[] }> {
  const buf = readFileSync(path)
  const n = Number(buf.readBigUInt64LE(0))
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<
    string,
    { dtype: string; shape: number[]; data_offsets: [number, number] }
  >
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

/** A non-null assertion checked at run time: `value`, or an error naming what is missing. */
export function present<T>(value: T | null | undefined, what = 'a value'): T {
  if (value === null || value === undefined) throw new Error(`expected ${what}, got ${value}`)
  return value
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

/** A solid-colour PNG with a little deterministic noise, written by hand (no image library). */
export function png(w: number, h: number, rgb: [number, number, number], seed: number): Buffer {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
    return c >>> 0
  })
  const crc = (b: Buffer) => {
    let c = 0xffffffff
    for (const x of b) c = crcTable[(c ^ x) & 0xff] ^ (c >>> 8)
    return (c ^ 0xffffffff) >>> 0
  }
  const chunk = (type: string, data: Buffer) => {
    const len = Buffer.alloc(4)
    len.writeUInt32BE(data.length)
    const td = Buffer.concat([Buffer.from(type), data])
    const c = Buffer.alloc(4)
    c.writeUInt32BE(crc(td))
    return Buffer.concat([len, td, c])
  }
  let s = seed
  const rand = () => {
    s = (s * 1103515245 + 12345) & 0x7fffffff
    return s / 0x7fffffff
  }
  const raw = Buffer.alloc((w * 3 + 1) * h)
  for (let y = 0; y < h; y++) {
    raw[y * (w * 3 + 1)] = 0
    for (let x = 0; x < w; x++) {
      for (let c = 0; c < 3; c++) {
        raw[y * (w * 3 + 1) + 1 + x * 3 + c] = Math.max(0, Math.min(255, rgb[c] + Math.round((rand() - 0.5) * 40)))
      }
    }
  }
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(w, 0)
  ihdr.writeUInt32BE(h, 4)
  ihdr.set([8, 2, 0, 0, 0], 8)
  return Buffer.concat([
    Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ])
}

export const CLASSES = ['red', 'green', 'blue', 'yellow']
export const RGB: [number, number, number][] = [
  [220, 40, 40],
  [40, 200, 60],
  [40, 70, 220],
  [230, 220, 40],
]
export function dataset(perClass: number, seed: number) {
  const images: Buffer[] = []
  const labels: number[] = []
  for (let i = 0; i < perClass; i++) {
    for (const [c, rgb] of RGB.entries()) {
      images.push(png(36 + ((i * 7) % 20), 40, rgb, seed + i * 10 + c))
      labels.push(c)
    }
  }
  return { images, labels }
}

export interface ProcessResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

/** A child process's exit and everything it wrote. */
export function collect(child: import('node:child_process').ChildProcess): Promise<ProcessResult> {
  let stdout = ''
  let stderr = ''
  child.stdout?.on('data', (d) => {
    stdout += d
  })
  child.stderr?.on('data', (d) => {
    stderr += d
  })
  return new Promise((resolve, reject) => {
    child.on('error', reject)
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }))
  })
}
