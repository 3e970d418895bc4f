/**
 * One file from the hub into the cache, safely: the bytes go to `blobs/<etag>.incomplete` (one
 * writer at a time, under a lock), a dropped connection resumes from what arrived (HTTP Range),
 * the whole file is checked against the hub's hash (sha256 for LFS files, the git blob sha1 for
 * the others), and only then is it renamed into `blobs/` and linked from the snapshot. A file
 * whose hash is wrong never enters the cache.
 */
import { createHash, type Hash } from 'node:crypto'
import {
  createReadStream,
  existsSync,
  mkdirSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  truncateSync,
  unlinkSync,
} from 'node:fs'
import { open } from 'node:fs/promises'
import { dirname, join, relative } from 'node:path'
import { AbortError, PromptclipError } from '../errors'
import { lockOutput } from '../outputLock'
import type { RepoCache } from './cache'

/** A file of a repo at a commit, as the hub's tree lists it. */
export interface RemoteFile {
  path: string
  size: number
  /** The git blob sha1 (the blob's name for a file kept in git). */
  oid: string
  /** For a file kept in LFS: its sha256 (the blob's name). */
  lfs?: { oid: string; size: number }
}

export interface DownloadProgress {
  /** The file being fetched, relative to the repo. */
  file: string
  /** Bytes of all the files of this load done so far, and in all. */
  done: number
  total: number
  /** Bytes per second over this load so far. */
  bytesPerSecond: number
}

export interface Transfer {
  /** `<endpoint>/<repo>/resolve/<commit>/<path>` for a path. */
  url: (path: string) => string
  token?: string
  signal?: AbortSignal
  /** Called as bytes arrive, with how many of the file are there (a resumed download starts
   *  from what it had, so nothing is counted twice). */
  onBytes?: (file: string, position: number) => void
  fetch: typeof fetch
}

/** Attempts per file when the connection drops (each resumes where the last stopped). */
const ATTEMPTS = 4

export function etagOf(file: RemoteFile): string {
  return file.lfs?.oid ?? file.oid
}

/** What the hash of a file must be, and the hasher that computes it. */
function expected(file: RemoteFile): { hash: () => Hash; want: string; kind: string; size: number } {
  if (file.lfs) return { hash: () => createHash('sha256'), want: file.lfs.oid, kind: 'sha256', size: file.lfs.size }
  // git's blob id: sha1 of "blob <size>\0" followed by the content.
  return {
    hash: () => createHash('sha1').update(`blob ${file.size}\0`),
    want: file.oid,
    kind: 'git blob sha1',
    size: file.size,
  }
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve, reject) => {
    const t = setTimeout(resolve, ms)
    signal?.addEventListener(
      'abort',
      () => {
        clearTimeout(t)
        reject(new AbortError('download cancelled'))
      },
      { once: true },
    )
  })

/** The lock of one blob: waited for while another process downloads it. */
async function lockBlob(cache: RepoCache, etag: string, signal?: AbortSignal): Promise<() => void> {
  mkdirSync(cache.locks, { recursive: true })
  // Not huggingface_hub's own `<etag>.lock` (a flock'd file that stays after it is released).
  const path = join(cache.locks, `${etag}.promptclip`)
  for (;;) {
    if (signal?.aborted) throw new AbortError('download cancelled')
    try {
      return lockOutput(path)
    } catch (e) {
      if (!(e instanceof PromptclipError && e.code === 'E_BUSY')) throw e
      await sleep(200, signal)
    }
  }
}

/** A relative symbolic link at `at` to `target`, made atomically (a temporary link, then a rename). */
function linkInto(target: string, at: string): void {
  mkdirSync(dirname(at), { recursive: true })
  const tmp = `${at}.${process.pid}.tmp`
  rmSync(tmp, { force: true })
  try {
    symlinkSync(relative(dirname(at), target), tmp)
    renameSync(tmp, at)
  } catch (e) {
    rmSync(tmp, { force: true })
    throw e
  }
}

/** Hash what a partial download already holds. */
async function hashPrefix(path: string, hash: Hash): Promise<void> {
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer)
}

/**
 * Fetches `file` of the repo at `commit` into the cache (unless its blob is there) and links it
 * from the snapshot. Returns the snapshot path of the file.
 */
export async function fetchFile(cache: RepoCache, commit: string, file: RemoteFile, t: Transfer): Promise<string> {
  const etag = etagOf(file)
  const blob = cache.blob(etag)
  const pointer = join(cache.snapshot(commit), file.path)
  if (existsSync(blob)) {
    linkInto(blob, pointer)
    t.onBytes?.(file.path, expected(file).size)
    return pointer
  }
  const unlock = await lockBlob(cache, etag, t.signal)
  try {
    // Another process may have finished it while this one waited.
    if (!existsSync(blob)) await download(file, blob, t)
    else t.onBytes?.(file.path, expected(file).size)
    linkInto(blob, pointer)
    return pointer
  } finally {
    unlock()
  }
}

async function download(file: RemoteFile, blob: string, t: Transfer): Promise<void> {
  const want = expected(file)
  const partial = `${blob}.incomplete`
  mkdirSync(dirname(blob), { recursive: true })
  let lastError: unknown
  for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
    if (t.signal?.aborted) throw new AbortError('download cancelled')
    let offset = existsSync(partial) ? statSync(partial).size : 0
    if (offset > want.size) {
      truncateSync(partial, 0)
      offset = 0
    }
    try {
      await receive(file, partial, offset, want.size, t)
      lastError = undefined
      break
    } catch (e) {
      if (t.signal?.aborted || e instanceof AbortError) throw new AbortError('download cancelled', { cause: e })
      if (e instanceof PromptclipError) throw e
      lastError = e
      // A dropped connection: the next attempt resumes from the bytes that arrived.
      await sleep(Math.min(2000, 250 * 2 ** attempt), t.signal)
    }
  }
  if (lastError !== undefined) {
    throw new PromptclipError(
      'E_NETWORK',
      `${file.path}: the download failed ${ATTEMPTS} times (${reason(lastError)}); run again to resume it`,
      { cause: lastError },
    )
  }
  const size = statSync(partial).size
  const hash = want.hash()
  await hashPrefix(partial, hash)
  const got = hash.digest('hex')
  if (size !== want.size || got !== want.want) {
    unlinkSync(partial)
    throw new PromptclipError(
      'E_INTEGRITY',
      `${file.path}: the downloaded file does not match the hub's ${want.kind} (${size} bytes, ${got}; ` +
        `expected ${want.size} bytes, ${want.want}); nothing was cached. Run again, or check the mirror (HF_ENDPOINT)`,
    )
  }
  renameSync(partial, blob)
}

function reason(e: unknown): string {
  const cause = (e as { cause?: { code?: string; message?: string } })?.cause
  return cause?.code ?? cause?.message ?? (e as Error)?.message ?? String(e)
}

/** One HTTP request for the bytes from `offset` on, appended to `partial`. */
async function receive(file: RemoteFile, partial: string, offset: number, size: number, t: Transfer): Promise<void> {
  if (offset === size && size > 0) return
  const headers: Record<string, string> = {}
  if (t.token) headers.Authorization = `Bearer ${t.token}`
  if (offset > 0) headers.Range = `bytes=${offset}-`
  const res = await t.fetch(t.url(file.path), { headers, signal: t.signal, redirect: 'follow' })
  if (res.status === 416) {
    // The range starts at the end: what is there is the whole file (checked by its hash).
    await res.body?.cancel()
    return
  }
  if (!res.ok) {
    await res.body?.cancel()
    throw httpError(file.path, res.status)
  }
  // A server that ignores Range sends the whole file: start over.
  const from = res.status === 206 ? offset : 0
  if (from === 0 && offset > 0) truncateSync(partial, 0)
  let position = from
  t.onBytes?.(file.path, position)
  const out = await open(partial, from > 0 ? 'a' : 'w')
  try {
    if (!res.body) throw new Error('empty response body')
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      await out.write(chunk)
      position += chunk.length
      t.onBytes?.(file.path, position)
    }
  } finally {
    await out.close()
  }
  const got = statSync(partial).size
  if (got < size) throw new Error(`connection closed after ${got} of ${size} bytes`)
}

/** An HTTP status from the hub as a coded error (a 5xx is the server's, retried by the caller). */
export function httpError(what: string, status: number): Error {
  if (status === 401 || status === 403) {
    return new PromptclipError(
      'E_AUTH',
      `${what}: the hub refused access (HTTP ${status}). Set HF_TOKEN to a token that can read this repo ` +
        '(https://huggingface.co/settings/tokens); a gated repo also needs its terms accepted on its page',
    )
  }
  if (status === 404) return new PromptclipError('E_MODEL_NOT_FOUND', `${what}: not found on the hub (HTTP 404)`)
  // Retried: a server error may pass.
  return new Error(`HTTP ${status}`)
}
