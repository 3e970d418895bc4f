import { defineConfig } from 'tsup';

export default defineConfig({
  entry: { index: 'ts/index.ts', cli: 'ts/cli.ts' },
  format: ['esm', 'cjs'],
  // Declarations only for the library entry (dist/index.d.ts + dist/index.d.cts).
  // ignoreDeprecations: tsup 8's dts worker sets `baseUrl`, which TypeScript 6 rejects (TS5101).
  dts: { entry: { index: 'ts/index.ts' }, compilerOptions: { ignoreDeprecations: '6.0' } },
  // Shims `import.meta.url` in the CJS output, so createRequire(import.meta.url) works there too.
  shims: true,
  platform: 'node',
  target: 'node18',
  sourcemap: true,
  clean: true,
  // The napi-generated loader (../index.cjs) and its .node files are loaded at runtime via
  // createRequire; never bundle them.
  external: [/\.node$/, /(^|\/)index\.cjs$/],
});
