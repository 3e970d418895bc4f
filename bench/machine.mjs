// Encoders against the machine (issue 29): each implementation's image-encoding rate in GFLOP/s
// (images/s x the ViT's arithmetic per image, which promptclip-bench's image_encode line carries)
// as a fraction of the best fp32 sgemm rate either BLAS reached in the same run.
//   node bench/machine.mjs bench/results/promptclip.jsonl bench/results/torch.jsonl
import { readFileSync } from 'node:fs'

const lines = process.argv
  .slice(2)
  .flatMap((f) => readFileSync(f, 'utf8').split('\n').filter(Boolean))
  .map((l) => JSON.parse(l))
const sgemm = lines.filter((l) => l.what === 'sgemm_2048')
const best = Math.max(...lines.filter((l) => String(l.what).startsWith('sgemm')).map((l) => l.gflops))
const ours = lines.find((l) => l.impl === 'promptclip' && l.what === 'image_encode')
if (!ours?.gflop_per_image || sgemm.length === 0) {
  console.log('no ViT image_encode or sgemm lines: nothing to read against the machine')
  process.exit(0)
}
console.log('== fp32 sgemm, 2048 x 2048 x 2048 (GFLOP/s)')
for (const l of sgemm) console.log(`  ${l.impl}: ${l.gflops.toFixed(1)}`)
console.log(`== image encoding against the best sgemm rate here (${best.toFixed(1)} GFLOP/s)`)
for (const l of lines.filter((x) => x.what === 'image_encode')) {
  const g = l.per_second * ours.gflop_per_image
  console.log(`  ${l.impl}: ${g.toFixed(1)} GFLOP/s, ${((100 * g) / best).toFixed(0)}% of the best sgemm`)
}
