/**
 * A safetensors file's framing, read without its tensors: the file size, the length of its JSON
 * header and the header's text (null when the file is too short to hold the header it announces).
 * What the protocols' damage check and `convert` read before handing a file to the core.
 */
import { closeSync, openSync, readSync, statSync } from 'node:fs'

export interface SafetensorsFraming {
  size: number
  /** The header length the first 8 bytes announce (0 when the file is shorter than 8 bytes). */
  headerLength: number
  /** The JSON header's text; null when the file ends before it does. */
  header: string | null
}

/** Throws only where the file cannot be opened or read. */
export function readSafetensorsFraming(path: string): SafetensorsFraming {
  const size = statSync(path).size
  if (size < 8) return { size, headerLength: 0, header: null }
  const fd = openSync(path, 'r')
  try {
    const len = Buffer.alloc(8)
    readSync(fd, len, 0, 8, 0)
    const headerLength = Number(len.readBigUInt64LE(0))
    if (headerLength > size - 8) return { size, headerLength, header: null }
    const header = Buffer.alloc(headerLength)
    readSync(fd, header, 0, headerLength, 8)
    return { size, headerLength, header: header.toString('utf8') }
  } finally {
    closeSync(fd)
  }
}
