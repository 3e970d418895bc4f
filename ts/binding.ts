/**
 * Loads the native addon through the loader that `napi build` generates at the package root
 * (index.js picks the right prebuilt .node for this platform). Users never import this directly.
 */
import { createRequire } from 'node:module'
import type * as Native from '../index.cjs'

// tsup's CJS stand-in for import.meta.url breaks on paths with '#' or '%', so prefer __filename.
const nativeRequire = createRequire(typeof __filename === 'string' ? __filename : import.meta.url)

export const binding: typeof Native = nativeRequire('../index.cjs')
export type { Native }
