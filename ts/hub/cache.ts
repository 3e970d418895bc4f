/**
 * The Hugging Face hub's cache on disk, in the layout Python's huggingface_hub writes and reads,
 * so that a model fetched by either is found by the other:
 *
 *     <cache>/models--<org>--<name>/
 *       blobs/<etag>                       the files' contents (LFS: the sha256; git: the blob sha1)
 *       refs/<revision>                    the commit a branch or tag pointed to when last fetched
 *       snapshots/<commit>/<path>          relative symbolic links into blobs/
 *     <cache>/.locks/models--<org>--<name>/<etag>.lock
 *
 * The cache folder is `HF_HUB_CACHE`, else `HF_HOME/hub`, else `XDG_CACHE_HOME/huggingface/hub`,
 * else `~/.cache/huggingface/hub`, as huggingface_hub resolves it.
 */
import { existsSync, lstatSync, readdirSync, readFileSync, statSync } from 'node:fs'
import { homedir } from 'node:os'
import { join } from 'node:path'

export type RepoType = 'model' | 'dataset'

/** A repository on the hub: its type and `<org>/<name>` id. */
export interface RepoRef {
  type: RepoType
  id: string
}

/** The hub cache folder the environment names (see the module comment). */
export function hubCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HF_HUB_CACHE) return env.HF_HUB_CACHE
  if (env.HF_HOME) return join(env.HF_HOME, 'hub')
  if (env.XDG_CACHE_HOME) return join(env.XDG_CACHE_HOME, 'huggingface', 'hub')
  return join(homedir(), '.cache', 'huggingface', 'hub')
}

/** `models--openai--clip-vit-base-patch16`: huggingface_hub's folder name of a repo. */
export function repoFolderName(repo: RepoRef): string {
  return [`${repo.type}s`, ...repo.id.split('/')].join('--')
}

/** A 40-hex-digit git commit. */
export const COMMIT = /^[0-9a-f]{40}$/

/** The folders of one repo in the cache. */
export class RepoCache {
  readonly root: string
  readonly locks: string

  constructor(
    readonly cacheDir: string,
    readonly repo: RepoRef,
  ) {
    this.root = join(cacheDir, repoFolderName(repo))
    this.locks = join(cacheDir, '.locks', repoFolderName(repo))
  }

  blob(etag: string): string {
    return join(this.root, 'blobs', etag)
  }

  snapshot(commit: string): string {
    return join(this.root, 'snapshots', commit)
  }

  /** `refs/<revision>`: huggingface_hub writes branch and tag names there (`refs/pr/1` too). */
  refFile(revision: string): string {
    return join(this.root, 'refs', ...revision.split('/'))
  }

  /** The commit `revision` names in the cache: itself when it is a commit, else its ref, or undefined. */
  commitOf(revision: string): string | undefined {
    if (COMMIT.test(revision)) return existsSync(this.snapshot(revision)) ? revision : undefined
    try {
      const commit = readFileSync(this.refFile(revision), 'utf8').trim()
      return COMMIT.test(commit) ? commit : undefined
    } catch {
      return undefined
    }
  }

  /**
   * The revisions the cache can load without the network: each ref whose snapshot is there, and
   * each snapshot no ref names, by its commit.
   */
  revisions(): string[] {
    const refs: string[] = []
    const walk = (dir: string, prefix: string) => {
      let names: string[] = []
      try {
        names = readdirSync(dir).sort()
      } catch {
        return
      }
      for (const name of names) {
        const rel = prefix ? `${prefix}/${name}` : name
        try {
          if (lstatSync(join(dir, name)).isDirectory()) walk(join(dir, name), rel)
          else refs.push(rel)
        } catch {}
      }
    }
    walk(join(this.root, 'refs'), '')
    let snapshots: string[] = []
    try {
      snapshots = readdirSync(join(this.root, 'snapshots')).filter((c) => COMMIT.test(c))
    } catch {}
    const named = new Map(refs.map((r) => [r, this.commitOf(r)]))
    const held = [...named].filter(([, c]) => c !== undefined && snapshots.includes(c)).map(([r]) => r)
    const unnamed = snapshots.filter((c) => ![...named.values()].includes(c)).sort()
    return [...held, ...unnamed]
  }

  /** Whether the snapshot holds `path` as a readable file (a link whose blob is there). */
  has(commit: string, path: string): boolean {
    try {
      return statSync(join(this.snapshot(commit), path)).isFile()
    } catch {
      return false
    }
  }

  /** The files a snapshot holds, relative to it, with `/`. */
  files(commit: string): string[] {
    const out: string[] = []
    const walk = (dir: string, prefix: string) => {
      let names: string[]
      try {
        names = readdirSync(dir)
      } catch {
        return
      }
      for (const name of names.sort()) {
        const p = join(dir, name)
        const rel = prefix ? `${prefix}/${name}` : name
        let isDir = false
        try {
          isDir = lstatSync(p).isDirectory()
        } catch {
          continue
        }
        if (isDir) walk(p, rel)
        else out.push(rel)
      }
    }
    walk(this.snapshot(commit), '')
    return out
  }
}

/** One cached repo, as `promptclip models` lists it (`hf cache scan` shows the same). */
export interface CachedRepo {
  id: string
  type: RepoType
  /** The refs pointing at each cached commit (`main`, a tag), or none for a commit fetched by hash. */
  revisions: { commit: string; refs: string[]; files: string[] }[]
  /** Bytes of its blobs. */
  size: number
  /** The last time one of its blobs was read or written. */
  lastUsed: Date | null
  path: string
}

function listRefs(dir: string, prefix = ''): [string, string][] {
  const out: [string, string][] = []
  let names: string[] = []
  try {
    names = readdirSync(dir)
  } catch {
    return out
  }
  for (const name of names) {
    const p = join(dir, name)
    const rel = prefix ? `${prefix}/${name}` : name
    try {
      if (statSync(p).isDirectory()) out.push(...listRefs(p, rel))
      else out.push([rel, readFileSync(p, 'utf8').trim()])
    } catch {
      // A ref being rewritten: left out of this listing.
    }
  }
  return out
}

/** The repos of `type` in the cache, sorted by id. */
export function scanCache(cacheDir: string, type: RepoType = 'model'): CachedRepo[] {
  let names: string[] = []
  try {
    names = readdirSync(cacheDir)
  } catch {
    return []
  }
  const prefix = `${type}s--`
  return names
    .filter((n) => n.startsWith(prefix))
    .sort()
    .map((folder) => {
      const id = folder.slice(prefix.length).split('--').join('/')
      const cache = new RepoCache(cacheDir, { type, id })
      const refs = listRefs(join(cache.root, 'refs'))
      let commits: string[] = []
      try {
        commits = readdirSync(join(cache.root, 'snapshots')).filter((c) => COMMIT.test(c))
      } catch {
        commits = []
      }
      let size = 0
      let last = 0
      try {
        for (const b of readdirSync(join(cache.root, 'blobs'))) {
          if (b.endsWith('.incomplete')) continue
          const s = statSync(join(cache.root, 'blobs', b))
          size += s.size
          last = Math.max(last, s.atimeMs, s.mtimeMs)
        }
      } catch {
        // No blobs yet.
      }
      return {
        id,
        type,
        revisions: commits.sort().map((commit) => ({
          commit,
          refs: refs.filter(([, c]) => c === commit).map(([r]) => r),
          files: cache.files(commit),
        })),
        size,
        lastUsed: last > 0 ? new Date(last) : null,
        path: cache.root,
      }
    })
}
