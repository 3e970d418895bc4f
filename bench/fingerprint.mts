/**
 * What fingerprinting a run's data costs: 10,000 image files of 110 kB (an ImageNet JPEG's
 * typical size) hashed as a checkpoint's fingerprint hashes them, the first time (content read
 * and sha256'd) and again in the same process (cached by path, size, mtime and inode).
 *
 *   node --import tsx bench/fingerprint.mts [files] [kB]
 */
import { randomBytes } from 'node:crypto'
import { cpus } from 'node:os'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { dataFingerprint } from '../ts/fingerprint'

const n = Number(process.argv[2] ?? 10000)
const kb = Number(process.argv[3] ?? 110)
const dir = mkdtempSync(join(tmpdir(), 'promptclip-fp-bench-'))
try {
  mkdirSync(join(dir, 'c'), { recursive: true })
  const images: string[] = []
  for (let i = 0; i < n; i++) {
    const p = join(dir, 'c', `${i}.jpg`)
    writeFileSync(p, randomBytes(kb * 1024))
    images.push(p)
  }
  const labels = images.map((_, i) => i % 100)
  let t = performance.now()
  const first = await dataFingerprint(images, labels)
  const cold = (performance.now() - t) / 1000
  t = performance.now()
  const second = await dataFingerprint(images, labels)
  const warm = (performance.now() - t) / 1000
  if (first.digest !== second.digest) throw new Error('digest changed')
  const mb = (n * kb) / 1024
  console.log(`CPU: ${cpus()[0]?.model} x ${cpus().length}`)
  console.log(`fingerprint of ${n} files of ${kb} kB (${mb.toFixed(0)} MB, in the page cache):`)
  console.log(`  first: ${cold.toFixed(2)} s (${(mb / cold).toFixed(0)} MB/s, ${((1e6 * cold) / n).toFixed(0)} us/file)`)
  console.log(`  again in the same process (cached): ${warm.toFixed(2)} s`)
} finally {
  rmSync(dir, { recursive: true, force: true })
}
