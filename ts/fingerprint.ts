/**
 * What a run was trained on, so that a checkpoint or a finished run is never reused for other
 * data: the model's weights, the class names, and each image (a file by path, size and the
 * sha256 of its content; bytes and raw pixels by their sha256). `compareFingerprints` names what
 * changed. File hashes are cached per process by (path, size, mtime, inode), so a sweep hashes
 * each image once. A model file in the Hugging Face cache is a link to a blob named by its sha256,
 * checked when it was downloaded, so its name is taken rather than hashing gigabytes again.
 */
import { createHash } from 'node:crypto'
import { createReadStream, lstatSync, readdirSync, readlinkSync, statSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { basename, dirname, join, resolve } from 'node:path'
import { invalidArgument } from './errors'
import type { ImageInput } from './options'

export interface ImageFingerprint {
  /** The path as given; `<bytes #i>` or `<pixels #i>` for in-memory images. */
  path: string
  /** Bytes on disk (files) or in memory. */
  size: number
  sha256: string
}

export interface DataFingerprint {
  /** Digest of the whole list, for a quick comparison (and a run's config). */
  digest: string
  images: ImageFingerprint[]
  /** The label of each image, as given. */
  labels: number[]
}

export interface Fingerprint {
  version: 1
  model: string
  classNames: string[]
  train: DataFingerprint
  validation?: DataFingerprint
  options: Record<string, unknown>
}

const fileHashes = new Map<string, { key: string; sha256: string }>()
const HASH_CONCURRENCY = 8

export async function fileSha256(path: string): Promise<{ size: number; sha256: string }> {
  const st = statSync(path)
  const key = `${st.size}:${st.mtimeMs}:${st.ino}`
  const hit = fileHashes.get(path)
  if (hit && hit.key === key) return { size: st.size, sha256: hit.sha256 }
  const sha256 =
    hubBlobSha256(path) ?? (st.size > STREAM_BYTES ? await streamSha256(path) : bytesSha256(await readFile(path)))
  fileHashes.set(path, { key, sha256 })
  return { size: st.size, sha256 }
}

/** Files above this are hashed as a stream (a model's weights), not read whole into memory. */
const STREAM_BYTES = 64 << 20

async function streamSha256(path: string): Promise<string> {
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(path, { highWaterMark: 4 << 20 })) hash.update(chunk as Buffer)
  return hash.digest('hex')
}

/** The sha256 a hub cache's snapshot link names: `snapshots/<commit>/<file>` -> `blobs/<sha256>`. */
function hubBlobSha256(path: string): string | undefined {
  try {
    if (!lstatSync(path).isSymbolicLink()) return undefined
    const target = resolve(dirname(path), readlinkSync(path))
    const name = basename(target)
    return basename(dirname(target)) === 'blobs' && /^[0-9a-f]{64}$/.test(name) ? name : undefined
  } catch {
    return undefined
  }
}

function bytesSha256(data: Uint8Array, extra = ''): string {
  return createHash('sha256').update(extra).update(data).digest('hex')
}

async function imageFingerprint(image: ImageInput, i: number): Promise<ImageFingerprint> {
  if (typeof image === 'string') {
    try {
      return { path: image, ...(await fileSha256(image)) }
    } catch {
      // Unreadable files are the trainer's to report (or skip); they still count as themselves.
      return { path: image, size: -1, sha256: '' }
    }
  }
  if (image instanceof Uint8Array) return { path: `<bytes #${i}>`, size: image.length, sha256: bytesSha256(image) }
  const { width, height, channels, data } = image
  return {
    path: `<pixels #${i}>`,
    size: data?.length ?? 0,
    sha256: bytesSha256(data ?? new Uint8Array(), `${width}x${height}x${channels}:`),
  }
}

/** Fingerprints of the images, in order, hashed a few files at a time. */
export async function dataFingerprint(images: ImageInput[], labels: number[]): Promise<DataFingerprint> {
  const out: ImageFingerprint[] = new Array(images.length)
  let next = 0
  const worker = async () => {
    for (let i = next++; i < images.length; i = next++) out[i] = await imageFingerprint(images[i], i)
  }
  await Promise.all(Array.from({ length: Math.min(HASH_CONCURRENCY, images.length) }, worker))
  const digest = createHash('sha256')
  for (const [i, f] of out.entries()) digest.update(`${f.path}\0${f.size}\0${f.sha256}\0${labels[i]}\n`)
  return { digest: digest.digest('hex'), images: out, labels: [...labels] }
}

/** The sha256 of a model's weights and config: the file, or a folder's safetensors and JSON files. */
export async function modelFingerprint(source: string): Promise<string> {
  let files: string[]
  try {
    files = statSync(source).isDirectory()
      ? readdirSync(source)
          .filter((f) => f.endsWith('.safetensors') || f.endsWith('.json') || f.endsWith('.txt'))
          .sort()
          .map((f) => join(source, f))
      : [source]
  } catch {
    return `unreadable:${source}`
  }
  const digest = createHash('sha256')
  for (const f of files) digest.update(`${f}\0${(await fileSha256(f)).sha256}\n`)
  return digest.digest('hex')
}

const some = (list: string[]) => `${list.slice(0, 3).join(', ')}${list.length > 3 ? `, ... (${list.length})` : ''}`

/** What differs between the images two fingerprints list, in words; null when none. */
function dataChanges(what: string, was: DataFingerprint | undefined, now: DataFingerprint | undefined): string | null {
  if (was?.digest === now?.digest) return null
  if (!was || !now) return `${what} ${was ? 'is gone' : 'is new'}`
  const before = new Map(was.images.map((f, i) => [f.path, { ...f, label: was.labels[i] }]))
  const after = new Map(now.images.map((f, i) => [f.path, { ...f, label: now.labels[i] }]))
  const added = [...after.keys()].filter((p) => !before.has(p))
  const removed = [...before.keys()].filter((p) => !after.has(p))
  const changed = [...after.entries()]
    .filter(([p, f]) => before.has(p) && (before.get(p)?.sha256 !== f.sha256 || before.get(p)?.size !== f.size))
    .map(([p]) => p)
  const relabelled = [...after.entries()]
    .filter(([p, f]) => before.has(p) && before.get(p)?.label !== f.label)
    .map(([p]) => p)
  const parts: string[] = []
  if (changed.length > 0) parts.push(`${changed.length} changed (${some(changed)})`)
  if (added.length > 0) parts.push(`${added.length} added (${some(added)})`)
  if (removed.length > 0) parts.push(`${removed.length} removed (${some(removed)})`)
  if (relabelled.length > 0) parts.push(`${relabelled.length} with another label (${some(relabelled)})`)
  if (parts.length === 0) parts.push('the same files in another order')
  return `${what} images: ${parts.join(', ')}`
}

/** Everything that differs, in words (empty when the fingerprints agree). */
export function fingerprintChanges(was: Fingerprint, now: Fingerprint): string[] {
  const out: string[] = []
  if (was.model !== now.model) out.push("the model's weights")
  if (JSON.stringify(was.classNames) !== JSON.stringify(now.classNames)) {
    out.push(`the class names (${some(was.classNames)} -> ${some(now.classNames)})`)
  }
  const train = dataChanges('training', was.train, now.train)
  if (train) out.push(train)
  const val = dataChanges('validation', was.validation, now.validation)
  if (val) out.push(val)
  // The options are recorded, but the core's resume check names them (with both values).
  return out
}

/**
 * Refuses to reuse `what` (a checkpoint, a finished run) when it was made from other data or
 * options, naming each change and `afresh`, the way to start over.
 */
export function checkFingerprint(what: string, was: Fingerprint, now: Fingerprint, afresh: string): void {
  const changes = fingerprintChanges(was, now)
  if (changes.length > 0) {
    throw invalidArgument(`${what} was made from other data or options: ${changes.join('; ')}. ${afresh}`)
  }
}
