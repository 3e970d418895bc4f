/** PNG encoding of raw pixels (greyscale, RGB or RGBA, 8 bits, no interlace), for the reports' example images as data URIs. */
import { deflateSync } from 'node:zlib'
import type { RawImage } from './options'

// ---------------------------------------------------------------------------------------------
// PNG (greyscale, RGB or RGBA, 8 bits, no interlace), for the example images' data URIs

const CRC_TABLE = (() => {
  const table = new Uint32Array(256)
  for (let n = 0; n < 256; n++) {
    let c = n
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
    table[n] = c >>> 0
  }
  return table
})()

function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8)
  return (c ^ 0xffffffff) >>> 0
}

function pngChunk(type: string, data: Uint8Array): Buffer {
  const out = Buffer.alloc(12 + data.length)
  out.writeUInt32BE(data.length, 0)
  out.write(type, 4, 'latin1')
  out.set(data, 8)
  out.writeUInt32BE(crc32(out.subarray(4, 8 + data.length)), 8 + data.length)
  return out
}

/** Encodes raw 8-bit pixels as a PNG file (filter 0 on every row, zlib via node:zlib). */
export function encodePng(image: RawImage): Buffer {
  const { width, height, channels, data } = image
  if (![width, height].every((v) => Number.isInteger(v) && v > 0) || ![1, 3, 4].includes(channels)) {
    throw new TypeError('encodePng: an image needs positive integer width/height and 1, 3 or 4 channels')
  }
  const row = width * channels
  if (!(data instanceof Uint8Array) || data.length < row * height) {
    throw new TypeError(`encodePng: ${width}x${height}x${channels} needs ${row * height} bytes, got ${data?.length}`)
  }
  const raw = Buffer.alloc((row + 1) * height)
  for (let y = 0; y < height; y++) raw.set(data.subarray(y * row, (y + 1) * row), y * (row + 1) + 1)
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(width, 0)
  ihdr.writeUInt32BE(height, 4)
  ihdr[8] = 8 // bit depth
  ihdr[9] = channels === 1 ? 0 : channels === 3 ? 2 : 6 // colour type: grey, RGB, RGBA
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk('IHDR', ihdr),
    pngChunk('IDAT', deflateSync(raw)),
    pngChunk('IEND', new Uint8Array(0)),
  ])
}

export function pngDataUri(image: RawImage): string {
  return `data:image/png;base64,${encodePng(image).toString('base64')}`
}
