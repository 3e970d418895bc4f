/**
 * Datasets as users bring them (issue 23): one list of image types everywhere, CSV rows and split
 * files that say what is wrong with them, one-class datasets refused, folder names mapped to class
 * names, classes picked by name, and messages that neither mis-count nor echo control characters.
 * Imports the sources, so that it needs no build of the bundle.
 */
import test from 'ava'
import { expandImages } from '../ts/cli/data'
import { IMAGE_EXTENSIONS } from '../ts/datasets/extensions'
import { loadImageFolder } from '../ts/datasets/folder'
import { PromptclipError } from '../ts/errors'
import { tempDir, tree } from './datasets-tree'

const code = (c: string, message?: RegExp) =>
  ({ instanceOf: PromptclipError, code: c, ...(message ? { message } : {}) }) as never

test('one list of image types: the CLI expands a folder to the images the loaders read', (t) => {
  const names = IMAGE_EXTENSIONS.map((e, i) => `${i}${i % 2 ? e.toUpperCase() : e}`)
  const dir = tree(tempDir(), [...names, 'notes.txt'])
  const expanded = expandImages([dir]).map((p) => p.slice(dir.length + 1))
  t.deepEqual(expanded, [...names].sort())
  t.true(expanded.some((f) => f.endsWith('.bmp') || f.endsWith('.BMP')))
  t.true(expanded.some((f) => f.endsWith('.gif') || f.endsWith('.GIF')))
  // The loaders take the same files.
  const root = tree(tempDir(), [...names.map((n) => `a/${n}`), 'b/x.png'])
  t.is(loadImageFolder(root).images.length, names.length + 1)
  // The message names every type of the list.
  const empty = tree(tempDir(), ['readme.txt'])
  const e = t.throws(() => expandImages([empty])) as Error
  for (const ext of IMAGE_EXTENSIONS) t.true(e.message.includes(ext), `${ext} in: ${e.message}`)
})
