/** Lists of images as CSV: `path,label` per line. */
import { existsSync, readFileSync } from 'node:fs'
import { dirname, relative, resolve } from 'node:path'
import { invalidArgument, nativeSync } from '../errors'
import type { ImageInput } from '../options'
import {
  checkExist,
  checkNoDuplicates,
  checkNotEmpty,
  escapeControls,
  escapesRoot,
  fileNotFound,
  quote,
} from './checks'
import { labelsFor } from './memory'
import type { LabelledDataset } from './types'

/** One record and the line it starts on (a quoted field may span lines). */
export interface CsvRecord {
  line: number
  fields: string[]
}

/**
 * RFC 4180 records: comma-separated, fields optionally in double quotes (a quote inside doubled),
 * CRLF or LF, blank lines skipped, a UTF-8 byte order mark ignored. Kept here rather than as a
 * dependency: this is all the format needs. A malformed record fails naming `file:line`.
 */
export function parseCsv(text: string, file: string): CsvRecord[] {
  const records: CsvRecord[] = []
  let i = text.charCodeAt(0) === 0xfeff ? 1 : 0
  let line = 1
  while (i < text.length) {
    const start = line
    const fields: string[] = []
    let quoted = false
    let end = false
    while (!end) {
      let field = ''
      if (text[i] === '"') {
        quoted = true
        i++
        for (;;) {
          if (i >= text.length) throw invalidArgument(`${file}:${start}: a quoted field is not closed`)
          const ch = text[i]
          if (ch === '"') {
            if (text[i + 1] === '"') {
              field += '"'
              i += 2
              continue
            }
            i++
            break
          }
          if (ch === '\n') line++
          field += ch
          i++
        }
        const next = text[i]
        if (next !== undefined && next !== ',' && next !== '\n' && !(next === '\r' && text[i + 1] === '\n')) {
          throw invalidArgument(`${file}:${line}: text after a closing quote (a quote inside a field is written "")`)
        }
      } else {
        while (i < text.length && text[i] !== ',' && text[i] !== '\n' && text[i] !== '\r') {
          if (text[i] === '"') throw invalidArgument(`${file}:${line}: a quote inside an unquoted field`)
          field += text[i]
          i++
        }
        if (text[i] === '\r' && text[i + 1] !== '\n') throw invalidArgument(`${file}:${line}: a lone carriage return`)
      }
      fields.push(field)
      if (text[i] === ',') i++
      else {
        if (text[i] === '\r') i++
        if (text[i] === '\n') i++
        end = true
      }
    }
    const blank = fields.length === 1 && !quoted && fields[0].trim() === ''
    if (!blank) records.push({ line: start, fields })
    line++
  }
  return records
}

const PATH_HEADERS = new Set([
  'path',
  'image',
  'img',
  'file',
  'filename',
  'filepath',
  'file_path',
  'image_path',
  'impath',
])
const LABEL_HEADERS = new Set(['label', 'class', 'classname', 'class_name', 'category', 'target'])

/**
 * A CSV of `path,label`: the label is a class name or a class index (an index needs
 * `options.classNames`, the names in label order). A first line naming the columns (path / image /
 * file..., label / class / category...) is a header, and then the columns may come in any order and
 * others are ignored. Paths are relative to `options.imageRoot`, else to the CSV's folder, and may
 * not leave it: a row whose path (with `../`, or absolute) lies outside is refused, as a split
 * file's, before anything is opened and without saying whether that file exists. Without `classNames` the sorted distinct names become the classes, as
 * for a folder of classes. Every image must exist and appear once.
 */
export function loadCsv(csvPath: string, options: { imageRoot?: string; classNames?: string[] } = {}): LabelledDataset {
  const text = nativeSync(() => readFileSync(csvPath, 'utf8'))
  const records = parseCsv(text, csvPath)
  let pathCol = 0
  let labelCol = 1
  let width = 2
  let body = records
  let header: string[] | undefined
  const head = records[0]?.fields.map((f) => f.trim().toLowerCase())
  if (head) {
    const p = head.findIndex((f) => PATH_HEADERS.has(f))
    const l = head.findIndex((f) => LABEL_HEADERS.has(f))
    if (p >= 0 && l >= 0) {
      pathCol = p
      labelCol = l
      width = head.length
      header = records[0].fields.map((f) => f.trim())
      body = records.slice(1)
    }
  }
  const root = resolve(options.imageRoot ?? dirname(csvPath))
  const rootName = options.imageRoot !== undefined ? `the image root ${root}` : `the CSV's folder ${root}`
  const columns = header ? `columns (as the header: ${header.join(',')})` : 'columns path,label'
  const images: string[] = []
  const raw: string[] = []
  for (const { line, fields } of body) {
    if (fields.length !== width) {
      const hint = fields.length > width ? ' (a comma inside a path or a label needs the field in double quotes)' : ''
      throw invalidArgument(`${csvPath}:${line}: expected ${width} ${columns}, found ${fields.length}${hint}`)
    }
    const path = fields[pathCol].trim()
    const label = fields[labelCol].trim()
    if (path === '') throw invalidArgument(`${csvPath}:${line}: empty path`)
    if (label === '') throw invalidArgument(`${csvPath}:${line}: empty label`)
    const image = resolve(root, path)
    if (escapesRoot(relative(root, image))) {
      throw invalidArgument(`${csvPath}:${line}: path ${quote(path)} leaves ${rootName}`)
    }
    images.push(image)
    raw.push(label)
  }
  checkNotEmpty(images.length, csvPath)
  checkNoDuplicates(images, csvPath, (i) => `line ${body[i].line}`)
  const { labels, classNames } = labelsFor(raw, options.classNames, csvPath, (i) => `${csvPath}:${body[i].line}`)
  // A header the loader does not know reads as a first image: say so rather than only "missing".
  if (body === records && images.length > 1 && !existsSync(images[0])) {
    const [p, l] = [records[0].fields[pathCol], records[0].fields[labelCol]]
    throw fileNotFound(
      `${csvPath}:${records[0].line}: image ${escapeControls(images[0])} does not exist; if ${quote(`${p},${l}`)} is a header, name the columns path,label`,
    )
  }
  checkExist(images, csvPath)
  return { images: images as ImageInput[], labels, classNames }
}
