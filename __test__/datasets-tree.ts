/** Tiny fake dataset trees for the loaders' tests: the loaders list and check files but do not
 *  decode them, so every image is the same 1x1 PNG whatever its extension. */
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { png } from './helpers'

const PIXEL = png(1, 1, [200, 100, 50], 1)

export function tempDir(prefix = 'data-'): string {
  return mkdtempSync(join(tmpdir(), prefix))
}

/** Write `files` (relative paths) under `root`: an image unless text is given. */
export function tree(root: string, files: Record<string, string | null> | string[]): string {
  const entries = Array.isArray(files) ? files.map((f) => [f, null] as const) : Object.entries(files)
  for (const [rel, text] of entries) {
    const path = join(root, rel)
    mkdirSync(dirname(path), { recursive: true })
    writeFileSync(path, text ?? PIXEL)
  }
  return root
}

export type SplitEntry = [string, number, string]

/** A split file's object, and the images it names under `imageRoot`. */
export function splitTree(imageRoot: string, split: Record<'train' | 'val' | 'test', SplitEntry[]>): void {
  tree(
    imageRoot,
    Object.values(split).flatMap((list) => list.map(([rel]) => rel)),
  )
}
