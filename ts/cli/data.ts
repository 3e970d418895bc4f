/**
 * Inputs: image files and folders (zeroshot, predict) and datasets (train, eval, run), opened and
 * checked before any model is loaded.
 */
import { readdirSync, statSync } from 'node:fs'
import { join } from 'node:path'
import type { LabelledDataset } from '../datasets'
import { escapeControls, plural, requireExists } from '../datasets/checks'
import { IMAGE_EXT, IMAGE_TYPES } from '../datasets/extensions'
import { badInput } from './common'

function listFolder(dir: string): { images: string[]; folders: string[] } {
  const entries = readdirSync(dir, { withFileTypes: true })
  const images = entries.filter((e) => !e.isDirectory() && IMAGE_EXT.test(e.name)).map((e) => e.name)
  const folders = entries.filter((e) => e.isDirectory()).map((e) => e.name)
  return { images: images.sort(), folders: folders.sort() }
}

/**
 * Image files from files and folders (a folder's own images, not its sub-folders'). Every path
 * must exist; a folder without images is refused, with a hint when it holds class sub-folders.
 */
export function expandImages(inputs: string[]): string[] {
  return inputs.flatMap((p) => {
    requireExists(p, '')
    if (!statSync(p).isDirectory()) return [p]
    const { images, folders } = listFolder(p)
    if (images.length > 0) return images.map((f) => join(p, f))
    if (folders.length > 0) {
      const shown = folders.slice(0, 5).map(escapeControls).join(', ') + (folders.length > 5 ? ', ...' : '')
      const n = folders.length
      throw badInput(
        `no images in ${p}; it has ${n} sub-folder${n === 1 ? '' : 's'} (${shown}): ` +
          `did you mean \`promptclip eval ${p}\`?`,
      )
    }
    throw badInput(`no images in ${p} (looked for ${IMAGE_TYPES} files)`)
  })
}

/** "12 images of 4 classes" */
export function describe(data: LabelledDataset): string {
  const k = data.classNames.length
  return `${plural(data.images.length, 'image')} of ${plural(k, 'class', 'classes')}`
}
