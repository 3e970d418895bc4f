/**
 * Archives inside dataset repos (`.zip`, `.tar`, `.tar.gz`, `.tgz`), unpacked once and safely: no
 * entry may leave the folder it is unpacked into (no absolute paths, no `..`), links are not
 * unpacked at all (so none can point outside), and the bytes written and the number of entries are
 * bounded (`PROMPTCLIP_MAX_ARCHIVE_BYTES`, default 256 GiB; 10 million entries). The archive goes
 * into a temporary folder that is renamed into place when complete, so a half-unpacked archive
 * is never used, and two processes unpacking it at once leave one copy.
 */
import {
  closeSync,
  createReadStream,
  existsSync,
  fstatSync,
  mkdirSync,
  openSync,
  readSync,
  renameSync,
  rmSync,
  writeSync,
} from 'node:fs'
import { dirname, join } from 'node:path'
import { createGunzip, createInflateRaw } from 'node:zlib'
import { AbortError, invalidArgument, PromptclipError } from '../errors'

export const ARCHIVE = /\.(zip|tar|tar\.gz|tgz)$/i

const MAX_ENTRIES = 10_000_000

export interface UnpackLimits {
  maxBytes: number
  maxEntries: number
}

export function archiveLimits(env: NodeJS.ProcessEnv = process.env): UnpackLimits {
  const raw = env.PROMPTCLIP_MAX_ARCHIVE_BYTES
  const maxBytes = raw === undefined || raw === '' ? 256 * 2 ** 30 : Number(raw)
  if (!Number.isSafeInteger(maxBytes) || maxBytes < 1) {
    throw invalidArgument(`PROMPTCLIP_MAX_ARCHIVE_BYTES must be a whole number of bytes, got ${raw}`)
  }
  return { maxBytes, maxEntries: MAX_ENTRIES }
}

/** The safe relative path of an entry, or the reason it is refused. */
function entryPath(archive: string, name: string): string | null {
  const clean = name.replace(/^\.\/+/, '')
  if (clean === '' || clean === '.' || clean === './') return null
  const parts = clean.replace(/\/+$/, '').split('/')
  if (
    clean.startsWith('/') ||
    /^[a-zA-Z]:/.test(clean) ||
    clean.includes('\\') ||
    clean.includes('\0') ||
    parts.some((p) => p === '..')
  ) {
    throw invalidArgument(`${archive}: entry ${JSON.stringify(name)} would leave the folder it is unpacked into`)
  }
  return parts.filter((p) => p !== '' && p !== '.').join('/')
}

/** Counts what is written against the limits. */
class Budget {
  bytes = 0
  entries = 0
  constructor(
    private readonly archive: string,
    private readonly limits: UnpackLimits,
  ) {}
  entry(): void {
    if (++this.entries > this.limits.maxEntries) {
      throw invalidArgument(`${this.archive}: more than ${this.limits.maxEntries} entries`)
    }
  }
  add(n: number): void {
    this.bytes += n
    if (this.bytes > this.limits.maxBytes) {
      throw invalidArgument(
        `${this.archive}: unpacks to more than ${this.limits.maxBytes} bytes (PROMPTCLIP_MAX_ARCHIVE_BYTES)`,
      )
    }
  }
}

/**
 * Unpacks `archive` into the folder `into` (which must not exist yet), unless another process
 * did it first. Returns `into`.
 */
export async function unpackOnce(archive: string, into: string, signal?: AbortSignal): Promise<string> {
  if (existsSync(into)) return into
  const limits = archiveLimits()
  const tmp = `${into}.${process.pid}.${Date.now().toString(36)}.tmp`
  mkdirSync(tmp, { recursive: true })
  try {
    const budget = new Budget(archive, limits)
    if (/\.zip$/i.test(archive)) await unzip(archive, tmp, budget, signal)
    else await untar(archive, tmp, budget, /\.(tar\.gz|tgz)$/i.test(archive), signal)
    try {
      renameSync(tmp, into)
    } catch (e) {
      // Another process renamed its copy into place first: keep that one.
      if (!existsSync(into)) throw e
      rmSync(tmp, { recursive: true, force: true })
    }
    return into
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true })
    throw e
  }
}

/** A file being written: created with its folders, closed at the end. */
function createFile(root: string, rel: string): number {
  const path = join(root, rel)
  mkdirSync(dirname(path), { recursive: true })
  return openSync(path, 'wx')
}

function parseOctal(b: Buffer, archive: string, what: string): number {
  // GNU base-256 for sizes of 8 GiB and more.
  if (b[0] & 0x80) {
    let n = 0
    for (let i = 1; i < b.length; i++) n = n * 256 + b[i]
    return n
  }
  const s = b.toString('latin1').replace(/\0.*$/s, '').trim()
  if (s === '') return 0
  if (!/^[0-7]+$/.test(s))
    throw invalidArgument(`${archive}: a tar header's ${what} is not a number (${JSON.stringify(s)})`)
  return Number.parseInt(s, 8)
}

const cstring = (b: Buffer) => b.toString('utf8').replace(/\0.*$/s, '')

/** The `path` record of a pax extended header, if any. */
function paxPath(data: Buffer): string | undefined {
  let i = 0
  while (i < data.length) {
    const space = data.indexOf(0x20, i)
    if (space < 0) break
    const len = Number(data.subarray(i, space).toString('latin1'))
    if (!Number.isInteger(len) || len <= 0) break
    const record = data.subarray(space + 1, i + len - 1).toString('utf8')
    const eq = record.indexOf('=')
    if (record.slice(0, eq) === 'path') return record.slice(eq + 1)
    i += len
  }
  return undefined
}

async function untar(archive: string, root: string, budget: Budget, gzip: boolean, signal?: AbortSignal) {
  const input = createReadStream(archive)
  const stream = gzip ? input.pipe(createGunzip()) : input
  let buf: Buffer = Buffer.alloc(0)
  /** The entry being read: what is left of its data, its padding, and where it goes. */
  let left = 0
  let pad = 0
  let fd: number | undefined
  let meta: Buffer[] | undefined
  let nextName: string | undefined
  /** The kind of the metadata entry being read: a pax header (x) or a GNU long name (L). */
  let metaKind = 'x'
  let ended = false
  try {
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      if (signal?.aborted) throw new AbortError('unpacking cancelled')
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk])
      for (;;) {
        if (left > 0) {
          const n = Math.min(left, buf.length)
          if (n === 0) break
          const part = buf.subarray(0, n)
          if (fd !== undefined) {
            budget.add(n)
            writeSync(fd, part)
          } else if (meta) meta.push(Buffer.from(part))
          buf = buf.subarray(n)
          left -= n
          if (left > 0) break
        }
        if (left === 0 && fd !== undefined) {
          closeSync(fd)
          fd = undefined
        }
        if (left === 0 && meta) {
          const data = Buffer.concat(meta)
          meta = undefined
          nextName = metaKind === 'L' ? cstring(data) : (paxPath(data) ?? nextName)
        }
        if (pad > 0) {
          const n = Math.min(pad, buf.length)
          buf = buf.subarray(n)
          pad -= n
          if (pad > 0) break
        }
        if (ended || buf.length < 512) break
        const h = buf.subarray(0, 512)
        buf = buf.subarray(512)
        if (h.every((x) => x === 0)) {
          ended = true
          break
        }
        const size = parseOctal(h.subarray(124, 136), archive, 'size')
        const type = String.fromCharCode(h[156] || 0x30)
        const prefix = h.subarray(257, 263).toString('latin1').startsWith('ustar') ? cstring(h.subarray(345, 500)) : ''
        const raw = nextName ?? (prefix ? `${prefix}/${cstring(h.subarray(0, 100))}` : cstring(h.subarray(0, 100)))
        left = size
        pad = (512 - (size % 512)) % 512
        if (type === 'x' || type === 'L' || type === 'g') {
          metaKind = type
          // A global header applies to no name promptclip uses: its data is skipped.
          meta = type === 'g' ? undefined : []
          continue
        }
        nextName = undefined
        budget.entry()
        const rel = entryPath(archive, raw)
        if (type === '1' || type === '2') {
          throw invalidArgument(
            `${archive}: entry ${JSON.stringify(raw)} is a link; links in archives are not unpacked`,
          )
        }
        if (type === '5') {
          if (rel) mkdirSync(join(root, rel), { recursive: true })
          continue
        }
        if (type !== '0' && type !== '7') {
          throw invalidArgument(`${archive}: entry ${JSON.stringify(raw)} is not a file or folder (tar type ${type})`)
        }
        if (!rel) throw invalidArgument(`${archive}: a file entry has no name`)
        fd = createFile(root, rel)
        if (size === 0) {
          closeSync(fd)
          fd = undefined
        }
      }
    }
    // Archives written without the closing zero blocks are common; a cut entry is not.
    if (left > 0) throw invalidArgument(`${archive}: the archive ends inside an entry (truncated)`)
  } finally {
    if (fd !== undefined) closeSync(fd)
  }
}

/** The little-endian integer of `n` bytes at `at` in `b`. */
const le = (b: Buffer, at: number, n: 2 | 4 | 8) =>
  n === 2 ? b.readUInt16LE(at) : n === 4 ? b.readUInt32LE(at) : Number(b.readBigUInt64LE(at))

function readAt(fd: number, at: number, n: number): Buffer {
  const b = Buffer.alloc(n)
  const got = readSync(fd, b, 0, n, at)
  return b.subarray(0, got)
}

interface ZipEntry {
  name: string
  method: number
  compressed: number
  size: number
  localHeader: number
  isLink: boolean
  isDir: boolean
}

/** The central directory: every entry's name, sizes and where its data is (ZIP64 included). */
function zipEntries(archive: string, fd: number): ZipEntry[] {
  const fileSize = fstatSync(fd).size
  const tailLength = Math.min(fileSize, 65_557)
  const tail = readAt(fd, fileSize - tailLength, tailLength)
  const eocd = tail.lastIndexOf(Buffer.from([0x50, 0x4b, 0x05, 0x06]))
  if (eocd < 0) throw invalidArgument(`${archive}: not a zip file (no end of central directory)`)
  let count = le(tail, eocd + 10, 2)
  let cdSize = le(tail, eocd + 12, 4)
  let cdOffset = le(tail, eocd + 16, 4)
  const locator = tail.lastIndexOf(Buffer.from([0x50, 0x4b, 0x06, 0x07]), eocd)
  if (locator >= 0 && (count === 0xffff || cdOffset === 0xffffffff || cdSize === 0xffffffff)) {
    const z64 = readAt(fd, le(tail, locator + 8, 8), 56)
    if (z64.readUInt32LE(0) !== 0x06064b50) throw invalidArgument(`${archive}: a broken ZIP64 end record`)
    count = le(z64, 32, 8)
    cdSize = le(z64, 40, 8)
    cdOffset = le(z64, 48, 8)
  }
  if (cdOffset + cdSize > fileSize)
    throw invalidArgument(`${archive}: the central directory runs past the end (truncated)`)
  const cd = readAt(fd, cdOffset, cdSize)
  const entries: ZipEntry[] = []
  let p = 0
  for (let i = 0; i < count; i++) {
    if (p + 46 > cd.length || cd.readUInt32LE(p) !== 0x02014b50) {
      throw invalidArgument(`${archive}: entry ${i} of the central directory is damaged`)
    }
    const madeBy = cd[p + 5]
    const method = le(cd, p + 10, 2)
    let compressed = le(cd, p + 20, 4)
    let size = le(cd, p + 24, 4)
    const nameLength = le(cd, p + 28, 2)
    const extraLength = le(cd, p + 30, 2)
    const commentLength = le(cd, p + 32, 2)
    const external = cd.readUInt32LE(p + 38)
    let localHeader = le(cd, p + 42, 4)
    const name = cd.subarray(p + 46, p + 46 + nameLength).toString('utf8')
    // ZIP64 extra field: the 64-bit values of those that read 0xffffffff, in order.
    let e = p + 46 + nameLength
    const extraEnd = e + extraLength
    while (e + 4 <= extraEnd) {
      const id = le(cd, e, 2)
      const len = le(cd, e + 2, 2)
      if (id === 0x0001) {
        let q = e + 4
        if (size === 0xffffffff) {
          size = le(cd, q, 8)
          q += 8
        }
        if (compressed === 0xffffffff) {
          compressed = le(cd, q, 8)
          q += 8
        }
        if (localHeader === 0xffffffff) localHeader = le(cd, q, 8)
      }
      e += 4 + len
    }
    const unixMode = madeBy === 3 ? external >>> 16 : 0
    entries.push({
      name,
      method,
      compressed,
      size,
      localHeader,
      isLink: (unixMode & 0o170000) === 0o120000,
      isDir: name.endsWith('/'),
    })
    p = extraEnd + commentLength
  }
  return entries
}

async function unzip(archive: string, root: string, budget: Budget, signal?: AbortSignal) {
  const fd = openSync(archive, 'r')
  let entries: ZipEntry[]
  try {
    entries = zipEntries(archive, fd)
  } catch (e) {
    closeSync(fd)
    throw e
  }
  try {
    for (const entry of entries) {
      if (signal?.aborted) throw new AbortError('unpacking cancelled')
      budget.entry()
      const rel = entryPath(archive, entry.name)
      if (entry.isLink) {
        throw invalidArgument(
          `${archive}: entry ${JSON.stringify(entry.name)} is a link; links in archives are not unpacked`,
        )
      }
      if (entry.isDir) {
        if (rel) mkdirSync(join(root, rel), { recursive: true })
        continue
      }
      if (!rel) throw invalidArgument(`${archive}: a file entry has no name`)
      if (entry.method !== 0 && entry.method !== 8) {
        throw new PromptclipError(
          'E_UNSUPPORTED',
          `${archive}: entry ${JSON.stringify(entry.name)} uses compression method ${entry.method}; only stored and deflate are read`,
        )
      }
      const local = readAt(fd, entry.localHeader, 30)
      if (local.length < 30 || local.readUInt32LE(0) !== 0x04034b50) {
        throw invalidArgument(`${archive}: entry ${JSON.stringify(entry.name)} has a damaged local header`)
      }
      const start = entry.localHeader + 30 + le(local, 26, 2) + le(local, 28, 2)
      const out = createFile(root, rel)
      try {
        if (entry.compressed > 0) {
          const raw = createReadStream(archive, { start, end: start + entry.compressed - 1 })
          const data = entry.method === 8 ? raw.pipe(createInflateRaw()) : raw
          let written = 0
          for await (const chunk of data as AsyncIterable<Buffer>) {
            written += chunk.length
            // The central directory's size is a claim: the bytes are counted as they come.
            if (written > entry.size) {
              throw invalidArgument(`${archive}: entry ${JSON.stringify(entry.name)} is larger than its stated size`)
            }
            budget.add(chunk.length)
            writeSync(out, chunk)
          }
          if (written !== entry.size) {
            throw invalidArgument(
              `${archive}: entry ${JSON.stringify(entry.name)} is truncated (${written} of ${entry.size} bytes)`,
            )
          }
        }
      } finally {
        closeSync(out)
      }
    }
  } finally {
    closeSync(fd)
  }
}
