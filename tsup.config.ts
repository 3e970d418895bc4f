import { defineConfig } from 'tsup'

const common = {
  // Shims `import.meta.url` in the CJS output, so createRequire(import.meta.url) works there too.
  shims: true,
  platform: 'node',
  target: 'node18',
  sourcemap: true,
  // The napi-generated loader (../index.js) and its .node files are loaded at runtime via
  // createRequire; never bundle them.
  external: [/\.node$/, /^\.\.\/index\.js$/],
} as const

export default defineConfig([
  {
    ...common,
    // The package is CommonJS: dist/index.js is CJS, dist/index.mjs is ESM.
    entry: { index: 'ts/index.ts' },
    format: ['cjs', 'esm'],
    // dist/index.d.ts (CJS) and dist/index.d.mts (ESM).
    // ignoreDeprecations: tsup 8's dts worker sets `baseUrl`, which TypeScript 6 rejects (TS5101).
    // stripInternal: members marked @internal (the `native` handles on Clip and PromptLearner) stay
    // out of the public types, so dist/*.d.ts do not import the napi loader's types (../index.js).
    dts: { compilerOptions: { ignoreDeprecations: '6.0', stripInternal: true } },
    // The two configs build in parallel: this one empties dist/ but leaves the CLI's files.
    clean: ['!cli.js', '!cli.js.map'],
  },
  {
    ...common,
    // The command line (package.json "bin"): dist/cli.js, CJS only.
    entry: { cli: 'ts/cli/index.ts' },
    format: ['cjs'],
    clean: false,
  },
])
