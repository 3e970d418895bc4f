/**
 * A CLIP named by hub id (`openai/clip-vit-base-patch16`) as a folder or file the core loads: the
 * snapshot in the hub cache, fetched first when it is not there. Only what CLIP needs is fetched,
 * and only safetensors: a repo with pickled weights alone is refused, and nothing pickled is read.
 */
import { existsSync } from 'node:fs'
import { PromptclipError } from '../errors'
import { COMMIT, RepoCache, type RepoRef } from './cache'
import { fetchAll, type HubOptions, type HubSettings, hubError, hubSettings, listTree, resolveCommit } from './client'
import type { RemoteFile } from './download'

/** A Hugging Face CLIP: weights with transformers' names and their config. */
const HF_WEIGHTS = 'model.safetensors'
/** An OpenCLIP repo (`hf-hub:` models): weights with OpenAI's names. */
const OPEN_CLIP_WEIGHTS = 'open_clip_model.safetensors'
/** What else a CLIP reads, when the repo has it. */
const COMPANIONS = [
  'config.json',
  'preprocessor_config.json',
  'tokenizer.json',
  'tokenizer_config.json',
  'vocab.json',
  'merges.txt',
  'special_tokens_map.json',
  'open_clip_config.json',
]
const PICKLED = /(\.bin|\.pt|\.pth|\.ckpt|\.pkl)$/i

/**
 * Whether `source` is a hub id (`<org>/<name>`, as the hub spells ids) rather than a path: it does
 * not exist on disk and has the hub's form. A path that exists always wins.
 */
export function isHubModelId(source: string): boolean {
  if (existsSync(source)) return false
  return /^[A-Za-z0-9][\w.-]{0,95}\/[\w.-]{1,96}$/.test(source) && !/(\.\.|--)/.test(source) && !source.endsWith('.')
}

/** Which file is the model in a snapshot that holds `files`, or undefined. */
function weightsIn(files: Set<string>): string | undefined {
  if (files.has(HF_WEIGHTS) && files.has('config.json')) return HF_WEIGHTS
  if (files.has(OPEN_CLIP_WEIGHTS)) return OPEN_CLIP_WEIGHTS
  return undefined
}

/** The path the core loads: the snapshot folder (transformers' layout) or the OpenCLIP file. */
function loadPath(cache: RepoCache, commit: string, weights: string): string {
  const dir = cache.snapshot(commit)
  return weights === OPEN_CLIP_WEIGHTS ? `${dir}/${OPEN_CLIP_WEIGHTS}` : dir
}

/** The files to fetch from a repo's listing, or the coded reason it holds no CLIP promptclip reads. */
function chooseFiles(repo: RepoRef, revision: string, listing: RemoteFile[]): { weights: string; files: RemoteFile[] } {
  const names = new Set(listing.map((f) => f.path))
  const weights = weightsIn(names)
  const found = [...names].sort()
  const shown = found.length > 12 ? `${found.slice(0, 12).join(', ')}, ... (${found.length} files)` : found.join(', ')
  if (weights === undefined) {
    if (names.has('model.safetensors.index.json')) {
      throw new PromptclipError(
        'E_UNSUPPORTED',
        `${repo.id} (${revision}) holds sharded weights (model.safetensors.index.json); promptclip reads one model.safetensors`,
      )
    }
    const pickled = found.filter((f) => PICKLED.test(f))
    if (pickled.length > 0) {
      throw new PromptclipError(
        'E_UNSUPPORTED',
        `${repo.id} (${revision}) holds only pickled weights (${pickled.join(', ')}); promptclip reads safetensors ` +
          'only and never unpickles a file. Convert them where you trust the file, e.g. ' +
          '`python -c "import torch; from safetensors.torch import save_file; ' +
          "save_file(torch.load('pytorch_model.bin'), 'model.safetensors')\"` in a local copy of the repo, " +
          'or open a conversion pull request with https://huggingface.co/spaces/safetensors/convert ' +
          '(then load it with revision: "refs/pr/<n>")',
      )
    }
    if (names.has(HF_WEIGHTS)) {
      throw new PromptclipError('E_BAD_CONFIG', `${repo.id} (${revision}) has model.safetensors but no config.json`)
    }
    throw new PromptclipError(
      'E_INVALID_ARGUMENT',
      `${repo.id} (${revision}) is not a CLIP promptclip can load: it has neither model.safetensors with ` +
        `config.json nor open_clip_model.safetensors (its files: ${shown || 'none'})`,
    )
  }
  // The weights last: once they are in the snapshot, so is everything else it needs.
  const files = [...listing.filter((f) => COMPANIONS.includes(f.path)), ...listing.filter((f) => f.path === weights)]
  return { weights, files }
}

/**
 * The local path of `source`: itself when it is not a hub id, else the cached snapshot of the
 * model (fetched when missing, unless offline). A revision found in the cache is used without a
 * request to the hub; pass another revision (or delete its ref) to fetch a newer one.
 */
export async function resolveModelSource(source: string, options: HubOptions = {}): Promise<string> {
  if (!isHubModelId(source)) return source
  const s = hubSettings(options)
  const repo: RepoRef = { type: 'model', id: source }
  const cache = new RepoCache(s.cacheDir, repo)
  const cachedCommit = cache.commitOf(s.revision)
  if (cachedCommit !== undefined) {
    const weights = weightsIn(new Set(cache.files(cachedCommit)))
    if (weights !== undefined && cache.has(cachedCommit, weights)) return loadPath(cache, cachedCommit, weights)
  }
  if (s.offline) throw offlineMiss(repo, s, cache, cachedCommit)
  return fetchModel(repo, s, cache)
}

async function fetchModel(repo: RepoRef, s: HubSettings, cache: RepoCache): Promise<string> {
  try {
    const commit = COMMIT.test(s.revision) ? s.revision : await resolveCommit(repo, s)
    const { weights, files } = chooseFiles(repo, s.revision, await listTree(repo, commit, s))
    await fetchAll(cache, commit, files, s)
    return loadPath(cache, commit, weights)
  } catch (e) {
    throw hubError(e, repo, s, cache.revisions())
  }
}

function offlineMiss(repo: RepoRef, s: HubSettings, cache: RepoCache, commit: string | undefined): PromptclipError {
  const why =
    commit === undefined
      ? `the cache (${s.cacheDir}) has no ${repo.id} at ${s.revision}`
      : `the cache's ${repo.id} at ${s.revision} (${commit.slice(0, 12)}) lacks its weights (${HF_WEIGHTS} with config.json, or ${OPEN_CLIP_WEIGHTS}); it has: ${cache.files(commit).join(', ') || 'nothing'}`
  return new PromptclipError(
    'E_MODEL_NOT_FOUND',
    `offline (HF_HUB_OFFLINE=1 or offline: true): ${why}. Load it once online, or fetch it with \`hf download ${repo.id}\``,
  )
}
