/**
 * Datasets from the hub: `hf://datasets/<org>/<name>[@<revision>][/<sub-folder>]` fetched into the
 * Hugging Face cache (the whole repo, or one sub-folder of it), its archives unpacked once, and
 * presented as one folder that the loaders read as they read any other: a catalog dataset's
 * layout, class folders, a split file, a CSV.
 *
 * The folder is a view: `<cache>/datasets--<org>--<name>/promptclip/<commit>/`, holding links to the
 * snapshot's files, and, where an archive was, links to what it unpacked to (in
 * `promptclip/unpacked/<etag>/`). It is built in a temporary folder and renamed into place, so it
 * exists only when complete.
 */
import { existsSync, mkdirSync, readdirSync, readlinkSync, renameSync, rmSync, symlinkSync } from 'node:fs'
import { dirname, join, relative } from 'node:path'
import { PromptclipError } from '../errors'
import { ARCHIVE, unpackOnce } from './archive'
import { COMMIT, RepoCache, type RepoRef } from './cache'
import { fetchAll, type HubOptions, type HubSettings, hubError, hubSettings, listTree, resolveCommit } from './client'
import { etagOf, type RemoteFile } from './download'

export interface HubDatasetRef {
  repo: RepoRef
  revision?: string
  /** The sub-folder, without leading or trailing `/`, or '' for the whole repo. */
  folder: string
}

const URI = /^hf:\/\/datasets\/([A-Za-z0-9][\w.-]*\/[\w.-]+?)(?:@([^/]+))?(?:\/(.*))?$/

export function isHubDatasetUri(source: unknown): source is string {
  return typeof source === 'string' && source.startsWith('hf://')
}

/** `hf://datasets/<org>/<name>[@rev][/<folder>]`, checked. */
export function parseHubDatasetUri(uri: string): HubDatasetRef {
  const m = URI.exec(uri)
  if (!m) {
    throw new PromptclipError(
      'E_INVALID_ARGUMENT',
      `${uri}: a hub dataset is hf://datasets/<org>/<name>[@<revision>][/<sub-folder>] (models are named by id alone)`,
    )
  }
  const folder = (m[3] ?? '').replace(/^\/+|\/+$/g, '')
  if (folder.split('/').some((p) => p === '..' || p === '.')) {
    throw new PromptclipError('E_INVALID_ARGUMENT', `${uri}: the sub-folder may not contain . or ..`)
  }
  return { repo: { type: 'dataset', id: m[1] }, ...(m[2] ? { revision: decodeURIComponent(m[2]) } : {}), folder }
}

function settingsFor(ref: HubDatasetRef, options: HubOptions): HubSettings {
  if (ref.revision !== undefined && options.revision !== undefined && ref.revision !== options.revision) {
    throw new PromptclipError(
      'E_INVALID_ARGUMENT',
      `the dataset names revision ${ref.revision} and the options ${options.revision}: give one`,
    )
  }
  return hubSettings({ ...options, revision: ref.revision ?? options.revision })
}

const viewOf = (cache: RepoCache, commit: string) => join(cache.root, 'promptclip', commit)

/** The local folder of an `hf://datasets/...` source already in the cache, or undefined. */
export function cachedHubDataset(uri: string, options: HubOptions = {}): string | undefined {
  const ref = parseHubDatasetUri(uri)
  const s = settingsFor(ref, options)
  const cache = new RepoCache(s.cacheDir, ref.repo)
  const commit = cache.commitOf(s.revision)
  if (commit === undefined) return undefined
  const view = join(viewOf(cache, commit), ref.folder)
  return existsSync(view) ? view : undefined
}

/**
 * Fetches the dataset `uri` names into the cache (what is already there is not fetched again; a
 * cached revision makes no request) and returns the local folder to open. Offline, the cache alone.
 */
export async function fetchHubDataset(uri: string, options: HubOptions = {}): Promise<string> {
  const ref = parseHubDatasetUri(uri)
  const s = settingsFor(ref, options)
  const cached = cachedHubDataset(uri, options)
  if (cached !== undefined) return cached
  const cache = new RepoCache(s.cacheDir, ref.repo)
  if (s.offline) {
    throw new PromptclipError(
      'E_MODEL_NOT_FOUND',
      `offline (HF_HUB_OFFLINE=1 or offline: true): the cache (${s.cacheDir}) has no ${uri} at ${s.revision}; fetch it once online`,
    )
  }
  let commit: string
  let files: RemoteFile[]
  try {
    commit = COMMIT.test(s.revision) ? s.revision : await resolveCommit(ref.repo, s)
    files = await listTree(ref.repo, commit, s, ref.folder, true)
  } catch (e) {
    throw hubError(e, ref.repo, s, cache.revisions())
  }
  if (files.length === 0) {
    throw new PromptclipError(
      'E_FILE_NOT_FOUND',
      `${uri}: dataset ${ref.repo.id} has no files${ref.folder ? ` under ${ref.folder}/` : ''} at ${s.revision}`,
    )
  }
  try {
    await fetchAll(cache, commit, files, s)
  } catch (e) {
    throw hubError(e, ref.repo, s, cache.revisions())
  }
  await buildView(cache, commit, files, s)
  return join(viewOf(cache, commit), ref.folder)
}

/** A relative symbolic link at `at` to `target`. */
function link(target: string, at: string): void {
  mkdirSync(dirname(at), { recursive: true })
  symlinkSync(relative(dirname(at), target), at)
}

/**
 * The view of `files` at `commit`: links to the snapshot's files and to unpacked archives (an
 * archive's entries appear in the folder the archive is in). Views of several fetches of one
 * commit (other sub-folders) are merged into one.
 */
async function buildView(cache: RepoCache, commit: string, files: RemoteFile[], s: HubSettings): Promise<void> {
  const view = viewOf(cache, commit)
  const tmp = `${view}.${process.pid}.${Date.now().toString(36)}.tmp`
  try {
    const placed = new Map<string, string>()
    const place = (rel: string, target: string, from: string) => {
      const before = placed.get(rel)
      if (before !== undefined) {
        throw new PromptclipError(
          'E_INVALID_ARGUMENT',
          `${cache.repo.id}: ${rel} comes from both ${before} and ${from}`,
        )
      }
      placed.set(rel, from)
      link(target, join(tmp, rel))
    }
    // What an earlier fetch of this commit placed (another sub-folder) stays in the view.
    if (existsSync(view)) {
      for (const entry of walkLinks(view)) place(entry.rel, entry.target, `an earlier fetch (${entry.rel})`)
    }
    for (const file of files) {
      const snapshotFile = join(cache.snapshot(commit), file.path)
      if (placed.has(file.path)) continue
      if (!ARCHIVE.test(file.path)) {
        place(file.path, snapshotFile, file.path)
        continue
      }
      const unpacked = await unpackOnce(
        snapshotFile,
        join(cache.root, 'promptclip', 'unpacked', etagOf(file)),
        s.signal,
      )
      const folder = dirname(file.path) === '.' ? '' : dirname(file.path)
      for (const name of readdirSync(unpacked)) {
        place(folder ? `${folder}/${name}` : name, join(unpacked, name), file.path)
      }
    }
    mkdirSync(tmp, { recursive: true })
    rmSync(view, { recursive: true, force: true })
    renameSync(tmp, view)
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true })
    throw e
  }
}

/** The links of a view, with where each points. */
function walkLinks(root: string): { rel: string; target: string }[] {
  const out: { rel: string; target: string }[] = []
  const walk = (dir: string, prefix: string) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const rel = prefix ? `${prefix}/${entry.name}` : entry.name
      const p = join(dir, entry.name)
      if (entry.isSymbolicLink()) out.push({ rel, target: join(dir, readlinkSync(p)) })
      else if (entry.isDirectory()) walk(p, rel)
    }
  }
  walk(root, '')
  return out
}
