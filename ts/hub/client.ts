/**
 * Talking to the hub: where it is (`HF_ENDPOINT`), who asks (`HF_TOKEN`), whether to ask at all
 * (`HF_HUB_OFFLINE`), the commit a revision names and the files it holds (through
 * `@huggingface/hub`), the hub's answers as coded errors, and fetching a set of files into the
 * cache with one progress count.
 */
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import { homedir } from 'node:os'
import { dirname, join } from 'node:path'
import { AbortError, PromptclipError } from '../errors'
import { COMMIT, hubCacheDir, type RepoCache, type RepoRef } from './cache'
import { type DownloadProgress, fetchFile, type RemoteFile } from './download'

export type { DownloadProgress } from './download'

/** How a model or dataset is fetched from the hub (every field optional; the environment fills them). */
export interface HubOptions {
  /** A branch, tag or commit (default "main"). */
  revision?: string
  /** Use the cache only, never the network (default: `HF_HUB_OFFLINE=1`). */
  offline?: boolean
  /** A token for gated or private repos (default: `HF_TOKEN`, else the token `hf auth login` saved). */
  token?: string
  /** The hub's cache folder (default: `HF_HUB_CACHE`, `HF_HOME/hub`, ~/.cache/huggingface/hub). */
  cacheDir?: string
  /** Bytes fetched so far, over every file of the load. */
  onDownloadProgress?: (p: DownloadProgress) => void
  /** Cancels a download (the bytes that arrived are kept and resumed next time). */
  signal?: AbortSignal
}

export interface HubSettings {
  endpoint: string
  token?: string
  offline: boolean
  cacheDir: string
  revision: string
  signal?: AbortSignal
  onDownloadProgress?: (p: DownloadProgress) => void
  fetch: typeof fetch
}

const TRUE = /^(1|true|yes|on)$/i

function savedToken(env: NodeJS.ProcessEnv): string | undefined {
  const path =
    env.HF_TOKEN_PATH ??
    join(env.HF_HOME ?? join(env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'huggingface'), 'token')
  try {
    return readFileSync(path, 'utf8').trim() || undefined
  } catch {
    return undefined
  }
}

export function hubSettings(options: HubOptions = {}, env: NodeJS.ProcessEnv = process.env): HubSettings {
  const revision = options.revision ?? 'main'
  if (typeof revision !== 'string' || revision === '' || revision.includes('..')) {
    throw new PromptclipError('E_INVALID_ARGUMENT', `revision must be a branch, tag or commit, got ${String(revision)}`)
  }
  const signal = options.signal
  const withSignal: typeof fetch = (input, init) => fetch(input, { ...init, signal: init?.signal ?? signal })
  return {
    endpoint: (env.HF_ENDPOINT || 'https://huggingface.co').replace(/\/+$/, ''),
    token: options.token ?? (env.HF_TOKEN || env.HUGGING_FACE_HUB_TOKEN || savedToken(env)),
    offline: options.offline ?? TRUE.test(env.HF_HUB_OFFLINE ?? ''),
    cacheDir: options.cacheDir ?? hubCacheDir(env),
    revision,
    signal,
    onDownloadProgress: options.onDownloadProgress,
    fetch: withSignal,
  }
}

/** The hub's client, loaded on the first request (a load from a path never needs it). */
const client = () => import('@huggingface/hub')

/** `@huggingface/hub`'s HubApiError: an HTTP status the hub answered with. */
function hubStatus(err: unknown): { status: number; said: string } | undefined {
  const e = err as { statusCode?: unknown; data?: { error?: unknown }; message?: string }
  if (!(err instanceof Error) || typeof e.statusCode !== 'number') return undefined
  return { status: e.statusCode, said: String(e.data?.error ?? '').trim() }
}

const what = (repo: RepoRef) => `${repo.type === 'dataset' ? 'dataset ' : ''}${repo.id}`

/**
 * The system's word for why a request failed (ECONNREFUSED, ENOTFOUND, ...): fetch hides it under
 * `cause`, and under `errors` when it tried several addresses.
 */
function systemCode(err: unknown, depth = 0): string | undefined {
  if (err === null || typeof err !== 'object' || depth > 5) return undefined
  const e = err as { code?: unknown; cause?: unknown; errors?: unknown }
  if (typeof e.code === 'string' && /^E[A-Z0-9_]+$/.test(e.code)) return e.code
  for (const inner of [e.cause, ...(Array.isArray(e.errors) ? e.errors : [])]) {
    const code = systemCode(inner, depth + 1)
    if (code) return code
  }
  return undefined
}

/**
 * The hub's refusal as a coded error in the user's terms. `cached` lists the revisions of the repo
 * that the cache holds, for the offline hint when the network is down.
 */
export function hubError(err: unknown, repo: RepoRef, s: HubSettings, cached: string[]): unknown {
  if (err instanceof PromptclipError) return err
  if (s.signal?.aborted || (err as Error)?.name === 'AbortError')
    return new AbortError('download cancelled', { cause: err })
  const at = s.revision === 'main' ? '' : ` at revision ${s.revision}`
  const answer = hubStatus(err)
  if (answer) {
    const { status, said } = answer
    if (status === 404 && /revision|rev id|invalid rev/i.test(said)) {
      return new PromptclipError(
        'E_MODEL_NOT_FOUND',
        `${what(repo)} has no revision ${s.revision} on ${s.endpoint} (${said}); give a branch, tag or commit it has`,
        { cause: err },
      )
    }
    if (status === 404) {
      return new PromptclipError(
        'E_MODEL_NOT_FOUND',
        `${what(repo)}${at} is neither a local path nor a ${repo.type} on ${s.endpoint}; check the id ` +
          `(e.g. ${repo.type === 'model' ? 'openai/clip-vit-base-patch16' : 'hf://datasets/<org>/<name>'})`,
        { cause: err },
      )
    }
    if (status === 401 || status === 403) {
      const token = s.token ? 'the token given (HF_TOKEN) cannot read it' : 'no token was given'
      return new PromptclipError(
        'E_AUTH',
        `${what(repo)}${at}: the hub refused access (HTTP ${status}): it is private, gated or does not exist, ` +
          `and ${token}. Set HF_TOKEN to a token that can read it (https://huggingface.co/settings/tokens); ` +
          'a gated repo also needs its terms accepted on its page',
        { cause: err },
      )
    }
    return new PromptclipError(
      'E_NETWORK',
      `${what(repo)}: the hub answered HTTP ${status} (${said || (err as Error).message})`,
      {
        cause: err,
      },
    )
  }
  if (err instanceof TypeError && /hf_/.test(err.message)) {
    return new PromptclipError('E_AUTH', `HF_TOKEN: a hub token starts with hf_ (${err.message})`, { cause: err })
  }
  const inner = (err as { cause?: { message?: unknown } })?.cause?.message
  const cause = systemCode(err) ?? (typeof inner === 'string' ? inner : (err as Error)?.message)
  const others = cached.filter((r) => r !== s.revision)
  const hint =
    cached.length === 0
      ? ''
      : `; the cache has ${what(repo)} at ${cached.join(', ')}: set HF_HUB_OFFLINE=1 (or offline: true)` +
        (cached.includes(s.revision)
          ? ' to use it without the network'
          : ` and revision ${others[0]} (--revision ${others[0]}) to use it without the network`)
  return new PromptclipError('E_NETWORK', `cannot reach ${s.endpoint} for ${what(repo)} (${cause})${hint}`, {
    cause: err,
  })
}

/** The commit `s.revision` names on the hub. */
export async function resolveCommit(repo: RepoRef, s: HubSettings): Promise<string> {
  const params = { name: repo.id, revision: s.revision, hubUrl: s.endpoint, fetch: s.fetch, additionalFields: ['sha'] }
  const auth = s.token ? { accessToken: s.token } : {}
  const { datasetInfo, modelInfo } = await client()
  const info =
    repo.type === 'model'
      ? await modelInfo({ ...params, ...auth, additionalFields: ['sha'] as const })
      : await datasetInfo({ ...params, ...auth, additionalFields: ['sha'] as const })
  const sha = (info as { sha?: unknown }).sha
  if (typeof sha !== 'string' || !COMMIT.test(sha)) {
    throw new PromptclipError('E_NETWORK', `${what(repo)}: the hub's answer names no commit for ${s.revision}`)
  }
  return sha
}

/** The files of the repo at `commit` under `path` (default: the top), every level with `recursive`. */
export async function listTree(
  repo: RepoRef,
  commit: string,
  s: HubSettings,
  path?: string,
  recursive = false,
): Promise<RemoteFile[]> {
  const out: RemoteFile[] = []
  const { listFiles } = await client()
  for await (const e of listFiles({
    repo: { type: repo.type, name: repo.id },
    revision: commit,
    hubUrl: s.endpoint,
    fetch: s.fetch,
    ...(s.token ? { accessToken: s.token } : {}),
    ...(path ? { path } : {}),
    recursive,
  })) {
    if (e.type !== 'file' || typeof e.oid !== 'string') continue
    out.push({
      path: e.path,
      size: e.size,
      oid: e.oid,
      ...(e.lfs ? { lfs: { oid: e.lfs.oid, size: e.lfs.size } } : {}),
    })
  }
  return out
}

/** Fetches `files` into the snapshot of `commit`, reporting bytes over all of them, then records
 *  the revision's ref (so that the next load finds it without asking the hub). */
export async function fetchAll(cache: RepoCache, commit: string, files: RemoteFile[], s: HubSettings): Promise<void> {
  const total = files.reduce((n, f) => n + (f.lfs?.size ?? f.size), 0)
  const at = new Map<string, number>()
  const t0 = Date.now()
  let done = 0
  const prefix = cache.repo.type === 'dataset' ? 'datasets/' : ''
  const encode = (p: string) => p.split('/').map(encodeURIComponent).join('/')
  for (const file of files) {
    await fetchFile(cache, commit, file, {
      url: (p) => `${s.endpoint}/${prefix}${cache.repo.id}/resolve/${commit}/${encode(p)}`,
      token: s.token,
      signal: s.signal,
      fetch: s.fetch,
      onBytes: (path, position) => {
        done += position - (at.get(path) ?? 0)
        at.set(path, position)
        const seconds = (Date.now() - t0) / 1000
        s.onDownloadProgress?.({ file: path, done, total, bytesPerSecond: seconds > 0 ? done / seconds : 0 })
      },
    })
  }
  if (!COMMIT.test(s.revision)) {
    const ref = cache.refFile(s.revision)
    mkdirSync(dirname(ref), { recursive: true })
    const tmp = `${ref}.${process.pid}.tmp`
    writeFileSync(tmp, commit)
    renameSync(tmp, ref)
  }
}
