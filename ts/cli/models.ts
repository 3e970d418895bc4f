/**
 * `models`: the CLIPs in the Hugging Face cache (id, revisions, size, last used), as
 * `hf cache scan` lists them; a model fetched by either tool is listed.
 */
import type { Command } from 'commander'
import { hubCacheDir, scanCache } from '../hub/cache'
import { addJsonOption, type Ctx, EXIT, EXIT_HELP, print, printJson } from './common'

const size = (bytes: number) =>
  bytes >= 1e9
    ? `${(bytes / 1e9).toFixed(1)} GB`
    : bytes >= 1e6
      ? `${(bytes / 1e6).toFixed(1)} MB`
      : `${(bytes / 1e3).toFixed(1)} kB`

export function register(program: Command, ctx: Ctx): void {
  const cmd = program
    .command('models')
    .summary('the models in the Hugging Face cache')
    .description(
      'List the models in the Hugging Face cache (HF_HUB_CACHE, else HF_HOME/hub, else ' +
        '~/.cache/huggingface/hub): id, revisions (refs and commits), size on disk and last use.',
    )
  addJsonOption(cmd)
  cmd.addHelpText('after', EXIT_HELP)
  cmd.action((flags: { json?: boolean }) => {
    const dir = hubCacheDir()
    const repos = scanCache(dir, 'model')
    if (flags.json) {
      printJson(repos.map((r) => ({ ...r, lastUsed: r.lastUsed?.toISOString() ?? null })))
    } else if (repos.length === 0) {
      print(`no models in ${dir}`)
    } else {
      const rows = repos.map((r) => [
        r.id,
        r.revisions.flatMap((v) => (v.refs.length > 0 ? v.refs : [v.commit.slice(0, 12)])).join(', '),
        size(r.size),
        r.lastUsed ? r.lastUsed.toISOString().slice(0, 16).replace('T', ' ') : '-',
      ])
      const header = ['MODEL', 'REVISIONS', 'SIZE', 'LAST USED']
      const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)))
      for (const r of [header, ...rows])
        print(
          r
            .map((c, i) => c.padEnd(widths[i]))
            .join('  ')
            .trimEnd(),
        )
      print(`\n${repos.length} model${repos.length === 1 ? '' : 's'} in ${dir}`)
    }
    ctx.exitCode = EXIT.OK
  })
}
