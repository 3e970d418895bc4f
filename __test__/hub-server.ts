/**
 * A stand-in for the Hugging Face hub on the loopback interface, for tests that must not reach
 * the network: the endpoints that `@huggingface/hub` and the downloads use (a revision's commit,
 * a commit's file tree, a file's bytes with HTTP Range), private repos behind a token, and faults
 * on demand (a connection dropped mid-file, a file whose bytes do not match its hash).
 */
import { createHash } from 'node:crypto'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { crc32, deflateRawSync, gzipSync } from 'node:zlib'

export type RepoType = 'model' | 'dataset'

interface Repo {
  private: boolean
  /** Branch or tag -> commit. */
  refs: Map<string, string>
  /** Commit -> path -> content. */
  commits: Map<string, Map<string, Buffer>>
}

/** The token the server accepts for private repos. */
export const GOOD_TOKEN = 'hf_loopbacktesttoken'

/** Files the hub keeps in LFS (and so lists with a sha256): weights and archives. */
const LFS = /\.(safetensors|bin|pt|zip|tar|gz|tgz)$/

export const gitOid = (b: Buffer) => createHash('sha1').update(`blob ${b.length}\0`).update(b).digest('hex')
export const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex')

export interface Request {
  method: string
  path: string
  range?: string
  auth?: string
}

export class FakeHub {
  readonly repos = new Map<string, Repo>()
  readonly requests: Request[] = []
  /** Paths (`<id>/<file>`) whose next download is cut off halfway. */
  readonly dropOnce = new Set<string>()
  /** Paths whose bytes are served with one byte changed (their hash no longer matches). */
  readonly corrupt = new Set<string>()
  /** Milliseconds to wait before each chunk of a file (to cancel or race a download). */
  slowMs = 0
  private server = createServer((req, res) => this.handle(req, res))
  endpoint = ''

  async start(): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve))
    this.endpoint = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`
    return this
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections()
    await new Promise<void>((resolve) => this.server.close(() => resolve()))
  }

  /** Adds a commit of `files` to a repo, pointed to by `ref` (default main). Returns the commit. */
  commit(type: RepoType, id: string, files: Record<string, Buffer>, ref = 'main', options: { private?: boolean } = {}) {
    const key = `${type}:${id}`
    const repo = this.repos.get(key) ?? { private: options.private ?? false, refs: new Map(), commits: new Map() }
    const content = new Map(Object.entries(files))
    const commit = createHash('sha1')
      .update(`${key}:${this.repos.size}:${repo.commits.size}:${[...content.keys()].join(',')}`)
      .digest('hex')
    repo.commits.set(commit, content)
    repo.refs.set(ref, commit)
    this.repos.set(key, repo)
    return commit
  }

  /** Requests for files' bytes (not the API), as `<id>/<path>`. */
  downloads(): string[] {
    return this.requests.filter((r) => r.path.includes('/resolve/')).map((r) => r.path)
  }

  private json(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) {
    res.writeHead(status, { 'Content-Type': 'application/json', ...headers })
    res.end(JSON.stringify(body))
  }

  /** The repo and commit a request names, or an answer already sent. */
  private find(
    req: IncomingMessage,
    res: ServerResponse,
    type: RepoType,
    id: string,
    rev: string,
  ): { repo: Repo; commit: string; files: Map<string, Buffer> } | undefined {
    const repo = this.repos.get(`${type}:${id}`)
    const authorized = req.headers.authorization === `Bearer ${GOOD_TOKEN}`
    if (!repo || (repo.private && !authorized)) {
      // The hub answers 401 for a private repo and for one that does not exist, to an anonymous
      // caller; 404 to a signed-in one.
      if (!req.headers.authorization || (repo?.private && !authorized)) {
        this.json(res, 401, { error: 'Invalid username or password.' }, { 'X-Error-Code': 'RepoNotFound' })
      } else this.json(res, 404, { error: 'Repository not found' }, { 'X-Error-Code': 'RepoNotFound' })
      return undefined
    }
    const commit = repo.commits.has(rev) ? rev : repo.refs.get(rev === 'HEAD' ? 'main' : rev)
    const files = commit ? repo.commits.get(commit) : undefined
    if (!commit || !files) {
      this.json(res, 404, { error: `Invalid rev id: ${rev}` }, { 'X-Error-Code': 'RevisionNotFound' })
      return undefined
    }
    return { repo, commit, files }
  }

  private async handle(req: IncomingMessage, res: ServerResponse) {
    const url = new URL(req.url ?? '/', 'http://x')
    const path = decodeURIComponent(url.pathname)
    this.requests.push({
      method: req.method ?? 'GET',
      path,
      ...(req.headers.range ? { range: req.headers.range } : {}),
      ...(req.headers.authorization ? { auth: req.headers.authorization } : {}),
    })
    let m = /^\/api\/(models|datasets)\/([^/]+\/[^/]+)\/revision\/([^/]+)$/.exec(path)
    if (m) {
      const type = m[1] === 'models' ? 'model' : 'dataset'
      const found = this.find(req, res, type, m[2], m[3])
      if (found) this.json(res, 200, { _id: m[2], id: m[2], sha: found.commit, private: found.repo.private })
      return
    }
    m = /^\/api\/(models|datasets)\/([^/]+\/[^/]+)\/tree\/([^/]+)(?:\/(.*))?$/.exec(path)
    if (m) {
      const type = m[1] === 'models' ? 'model' : 'dataset'
      const found = this.find(req, res, type, m[2], m[3])
      if (!found) return
      const under = m[4] ? `${m[4].replace(/\/$/, '')}/` : ''
      const recursive = url.searchParams.get('recursive') === 'true'
      const entries: unknown[] = []
      const dirs = new Set<string>()
      for (const [p, b] of found.files) {
        if (!p.startsWith(under)) continue
        const rest = p.slice(under.length)
        if (!recursive && rest.includes('/')) {
          dirs.add(under + rest.split('/')[0])
          continue
        }
        const lfs = LFS.test(p)
        const pointer = Buffer.from(
          `version https://git-lfs.github.com/spec/v1\noid sha256:${sha256(b)}\nsize ${b.length}\n`,
        )
        entries.push({
          type: 'file',
          path: p,
          size: b.length,
          oid: gitOid(lfs ? pointer : b),
          ...(lfs ? { lfs: { oid: sha256(b), size: b.length, pointerSize: pointer.length } } : {}),
        })
      }
      for (const d of dirs) entries.push({ type: 'directory', path: d, size: 0, oid: gitOid(Buffer.from(d)) })
      this.json(res, 200, entries)
      return
    }
    m = /^\/(?:(datasets)\/)?([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(path)
    if (m) {
      const type = m[1] ? 'dataset' : 'model'
      const found = this.find(req, res, type, m[2], m[3])
      if (!found) return
      let body = found.files.get(m[4])
      if (!body) {
        this.json(res, 404, { error: 'Entry not found' }, { 'X-Error-Code': 'EntryNotFound' })
        return
      }
      const key = `${m[2]}/${m[4]}`
      if (this.corrupt.has(key)) {
        body = Buffer.from(body)
        body[body.length >> 1] ^= 0xff
      }
      const r = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '')
      const start = r ? Number(r[1]) : 0
      const end = r?.[2] ? Number(r[2]) + 1 : body.length
      if (r && start >= body.length) {
        res.writeHead(416, { 'Content-Range': `bytes */${body.length}` })
        res.end()
        return
      }
      const part = body.subarray(start, end)
      res.writeHead(r ? 206 : 200, {
        'Content-Type': 'application/octet-stream',
        'Content-Length': String(part.length),
        ETag: `"${LFS.test(m[4]) ? sha256(found.files.get(m[4]) as Buffer) : gitOid(found.files.get(m[4]) as Buffer)}"`,
        'X-Repo-Commit': found.commit,
        'Accept-Ranges': 'bytes',
        ...(r ? { 'Content-Range': `bytes ${start}-${end - 1}/${body.length}` } : {}),
      })
      if (this.dropOnce.has(key)) {
        this.dropOnce.delete(key)
        // Half the bytes, then the connection goes.
        res.write(part.subarray(0, part.length >> 1), () => res.socket?.destroy())
        return
      }
      const chunk = 64 * 1024
      for (let i = 0; i < part.length; i += chunk) {
        if (this.slowMs > 0) await new Promise((ok) => setTimeout(ok, this.slowMs))
        if (res.destroyed) return
        res.write(part.subarray(i, i + chunk))
      }
      res.end()
      return
    }
    this.json(res, 404, { error: `no route ${path}` })
  }
}

/** One entry of an archive the tests write: a file, a folder, or a symbolic link. */
export interface ArchiveEntry {
  name: string
  data?: Buffer
  type?: 'file' | 'dir' | 'symlink'
  link?: string
}

/** A ustar archive of `entries` (gzipped with `gzip`), written here so no tool is needed. */
export function tarball(entries: ArchiveEntry[], gzip = false): Buffer {
  const blocks: Buffer[] = []
  for (const e of entries) {
    const data = e.type === 'file' || e.type === undefined ? (e.data ?? Buffer.alloc(0)) : Buffer.alloc(0)
    const h = Buffer.alloc(512)
    h.write(e.name, 0, 100, 'utf8')
    h.write('0000644\0', 100)
    h.write('0000000\0', 108)
    h.write('0000000\0', 116)
    h.write(`${data.length.toString(8).padStart(11, '0')}\0`, 124)
    h.write('00000000000\0', 136)
    h.write(e.type === 'dir' ? '5' : e.type === 'symlink' ? '2' : '0', 156)
    if (e.link) h.write(e.link, 157, 100)
    h.write('ustar\0', 257)
    h.write('00', 263)
    h.fill(0x20, 148, 156)
    let sum = 0
    for (const b of h) sum += b
    h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148)
    blocks.push(h, data, Buffer.alloc((512 - (data.length % 512)) % 512))
  }
  blocks.push(Buffer.alloc(1024))
  const tar = Buffer.concat(blocks)
  return gzip ? gzipSync(tar) : tar
}

/** A zip archive of `entries` (files deflated), with a symbolic link marked as unix zips mark one. */
export function zipFile(entries: ArchiveEntry[]): Buffer {
  const locals: Buffer[] = []
  const central: Buffer[] = []
  let offset = 0
  for (const e of entries) {
    const name = Buffer.from(e.type === 'dir' && !e.name.endsWith('/') ? `${e.name}/` : e.name)
    const raw = e.type === 'symlink' ? Buffer.from(e.link ?? '') : (e.data ?? Buffer.alloc(0))
    const body = e.type === 'symlink' || e.type === 'dir' ? raw : deflateRawSync(raw)
    const method = e.type === 'symlink' || e.type === 'dir' ? 0 : 8
    const crc = crc32(raw) >>> 0
    const local = Buffer.alloc(30)
    local.writeUInt32LE(0x04034b50, 0)
    local.writeUInt16LE(20, 4)
    local.writeUInt16LE(method, 8)
    local.writeUInt32LE(crc, 14)
    local.writeUInt32LE(body.length, 18)
    local.writeUInt32LE(raw.length, 22)
    local.writeUInt16LE(name.length, 26)
    const cd = Buffer.alloc(46)
    cd.writeUInt32LE(0x02014b50, 0)
    cd.writeUInt16LE((3 << 8) | 20, 4)
    cd.writeUInt16LE(20, 6)
    cd.writeUInt16LE(method, 10)
    cd.writeUInt32LE(crc, 16)
    cd.writeUInt32LE(body.length, 20)
    cd.writeUInt32LE(raw.length, 24)
    cd.writeUInt16LE(name.length, 28)
    const mode = e.type === 'symlink' ? 0o120777 : e.type === 'dir' ? 0o40755 : 0o100644
    cd.writeUInt32LE((mode << 16) >>> 0, 38)
    cd.writeUInt32LE(offset, 42)
    locals.push(local, name, body)
    central.push(cd, name)
    offset += local.length + name.length + body.length
  }
  const cdBuf = Buffer.concat(central)
  const end = Buffer.alloc(22)
  end.writeUInt32LE(0x06054b50, 0)
  end.writeUInt16LE(entries.length, 8)
  end.writeUInt16LE(entries.length, 10)
  end.writeUInt32LE(cdBuf.length, 12)
  end.writeUInt32LE(offset, 16)
  return Buffer.concat([...locals, cdBuf, end])
}
