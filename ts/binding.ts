/**
 * Loads the native addon through the loader that `napi build` generates at the package root
 * (index.js picks the right prebuilt .node for this platform). Users never import this directly.
 */
import { createRequire } from 'node:module'
import { dirname } from 'node:path'
import type * as Native from '../index.js'

// The loader is CommonJS and lives outside dist/, so it is required at run time, never bundled.
// Prefer __filename: in the CJS build (dist/index.js) it is the real path, while tsup's stand-in
// for import.meta.url there breaks on paths with '#' or '%'. The ESM build (dist/index.mjs) gets
// __filename from tsup's shim (fileURLToPath(import.meta.url)); import.meta.url is the fallback
// for an ESM runner without that shim.
export const packageRequire = createRequire(typeof __filename === 'string' ? __filename : import.meta.url)

export const binding: typeof Native = packageRequire('../index.js')

/** The package's own folder (dist/ and ts/ both sit one level below it). */
export const PACKAGE_ROOT: string = dirname(packageRequire.resolve('../package.json'))
export type { Native }
