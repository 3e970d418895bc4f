/**
 * The one HTML report page, shared by every report (a protocol's, and the demo's, which is its
 * base-to-new protocol's report with the demo's extras; ts/protocols/report.ts composes it): the
 * page shell, one self-contained file that needs no network to open, with the minified builds of
 * Vega, Vega-Lite and vega-embed inlined from dist/vendor/. Its charts are in charts.ts, the
 * numbers' formatting in stats.ts, images in png.ts. Internal to the CLI; not part of the
 * package's API.
 */
import { readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { packageRequire } from './binding'
import { SPLIT_COLOURS } from './charts'

interface Library {
  name: string
  version: string
  source: string
}
let libraries: Library[] | undefined

/**
 * Reads the three minified builds once, from dist/vendor/ of this package, where the build put
 * them (scripts/vendor.cjs): the package ships those files instead of depending on Vega.
 */
export function vegaLibraries(): Library[] {
  libraries ??= (() => {
    const vendor = join(dirname(packageRequire.resolve('promptclip/package.json')), 'dist', 'vendor')
    let list: { name: string; version: string; file: string }[]
    try {
      list = JSON.parse(readFileSync(join(vendor, 'libraries.json'), 'utf8'))
    } catch {
      throw new Error(`${vendor}/libraries.json is missing: the report's charts come from the build (npm run build)`)
    }
    return list.map(({ name, version, file }) => {
      let source = readFileSync(join(vendor, file), 'utf8')
        .replace(/\n\/\/# sourceMappingURL=\S*\s*$/, '\n')
        // Inside a <script> element the only text that needs care is "</script" (and "<!--"): both can
        // only occur in strings, regexes or comments of valid code, where "<\/" means the same.
        .replace(/<\/(script)/gi, '<\\/$1')
      if (source.includes('<!--')) throw new Error(`${file} contains "<!--"; cannot inline it in a <script>`)
      source = source.trimEnd()
      return { name, version, source }
    })
  })()
  return libraries
}

export function escapeHtml(text: unknown): string {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)
}

/** JSON for a <script type="application/json"> element: no "<" can end or disturb the element. */
function scriptJson(value: unknown): string {
  return JSON.stringify(value)
    .replace(/</g, '\\u003c')
    .replace(/\u2028/g, '\\u2028')
    .replace(/\u2029/g, '\\u2029')
}

// ---------------------------------------------------------------------------------------------
// The page

export const CSS = `
:root { color-scheme: light; --base: ${SPLIT_COLOURS.base}; --new: ${SPLIT_COLOURS.new}; --ok: #1a7f37; --bad: #cf222e; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328; background: #f6f8fa; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 28px 40px; background: #fff; }
h1 { font-size: 22px; margin: 0 0 6px; }
h2 { font-size: 17px; margin: 32px 0 10px; padding-top: 12px; border-top: 1px solid #d0d7de; }
.meta { color: #57606a; margin: 0 0 4px; }
.meta b { color: #1f2328; font-weight: 600; }
.classes { margin: 8px 0 0; display: grid; grid-template-columns: max-content 1fr; gap: 2px 10px; font-size: 13px; }
.classes dt { font-weight: 600; }
.classes dd { margin: 0; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 5px; vertical-align: -1px; }
table.results { border-collapse: collapse; margin: 6px 0 4px; font-variant-numeric: tabular-nums; }
table.results th, table.results td { padding: 5px 14px; border-bottom: 1px solid #d8dee4; }
table.results th { text-align: left; background: #f6f8fa; font-weight: 600; }
table.results td.num, table.results th.num { text-align: right; }
table.results td.best { font-weight: 700; }
.note { color: #57606a; font-size: 12.5px; margin: 4px 0 12px; }
.chart { margin: 8px 0; overflow-x: auto; }
.chart .vega-bindings { margin: 4px 0 8px; font-size: 13px; }
.chart .error { color: var(--bad); font-family: ui-monospace, monospace; white-space: pre-wrap; }
.examples { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 12px; }
.example { margin: 0; padding: 8px; border: 1px solid #d0d7de; border-radius: 6px; background: #fff; }
.example img { display: block; width: 112px; height: auto; margin: 0 auto 6px; image-rendering: pixelated; background: #000; }
.example figcaption { font-size: 12px; line-height: 1.35; }
.example .label { font-weight: 600; }
.example .pred { display: block; overflow-wrap: anywhere; }
.example .ok { color: var(--ok); }
.example .bad { color: var(--bad); }
.example.fixed { border-color: var(--ok); box-shadow: inset 0 0 0 1px var(--ok); }
.example.broken { border-color: var(--bad); box-shadow: inset 0 0 0 1px var(--bad); }
ol.context { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 13px; padding-left: 2.5em; }
ol.context li { margin: 2px 0; }
ol.context .first { font-weight: 700; }
ol.context .rest { color: #57606a; }
p.caption { margin: 14px 0 4px; font-weight: 600; }
details summary { cursor: pointer; margin: 6px 0; }
footer { margin-top: 36px; color: #8c959f; font-size: 12px; }
`

/** One self-contained HTML page: `body` (the page's sections), then the chart libraries inlined,
 *  and a script that draws each spec of `specs` into the element with its id. */
export function renderPage(page: { title: string; body: string; specs: Record<string, object> }): string {
  const libs = vegaLibraries()
  const generated = new Date()
    .toISOString()
    .replace('T', ' ')
    .replace(/\.\d+Z$/, ' UTC')
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(page.title)}</title>
<style>${CSS}</style>
</head>
<body>
<main>
${page.body}
<footer>Generated by promptclip on ${escapeHtml(generated)}. Charts: ${libs.map((l) => `${escapeHtml(l.name)} ${escapeHtml(l.version)}`).join(', ')}, inlined; the page needs no network.</footer>
</main>
${libs.map((l) => `<script>/* ${l.name} ${l.version} */\n${l.source}\n</script>`).join('\n')}
<script type="application/json" id="chart-specs">${scriptJson(page.specs)}</script>
<script>
(function () {
  var specs = JSON.parse(document.getElementById('chart-specs').textContent);
  window.chartsReady = Promise.all(Object.keys(specs).map(function (id) {
    var el = document.getElementById(id);
    return vegaEmbed(el, specs[id], { renderer: 'svg', actions: false }).catch(function (err) {
      console.error('chart ' + id + ' failed:', err);
      var msg = document.createElement('p');
      msg.className = 'error';
      msg.textContent = 'This chart could not be drawn: ' + (err && err.message ? err.message : err);
      el.appendChild(msg);
    });
  })).then(function () { document.body.setAttribute('data-charts', 'done'); });
})();
</script>
</body>
</html>
`
}
