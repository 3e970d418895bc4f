/**
 * Loads the native addon, once per process. Users never import this directly.
 *
 * Two builds exist. The CPU addon comes through the loader that `napi build` generates at the
 * package root (index.js: a local ./promptclip.<platform>.node from a source build first, else the
 * platform package, e.g. promptclip-linux-x64-gnu, an optional dependency of promptclip). The CUDA
 * addon is its own package, promptclip-linux-x64-gnu-cuda, installed by hand; it is taken when
 * the first Clip.load of the process asks for device "cuda" or "cuda:N", or when
 * PROMPTCLIP_ADDON=cuda. Whichever loads first stays for the life of the process (two addons
 * cannot share models or learners). Reading the core's defaults (constants, needed when the
 * package is imported) may load the CPU build beside a CUDA one chosen later; it runs no work.
 */
import { createRequire } from 'node:module'
import { dirname } from 'node:path'
import type * as Native from '../index.js'
import { PromptclipError } from './errors'

// The loader is CommonJS and lives outside dist/, so it is required at run time, never bundled.
// Prefer __filename: in the CJS build (dist/index.js) it is the real path, while tsup's stand-in
// for import.meta.url there breaks on paths with '#' or '%'. The ESM build (dist/index.mjs) gets
// __filename from tsup's shim (fileURLToPath(import.meta.url)); import.meta.url is the fallback
// for an ESM runner without that shim.
export const packageRequire = createRequire(typeof __filename === 'string' ? __filename : import.meta.url)

/** The package's own folder (dist/ and ts/ both sit one level below it). */
export const PACKAGE_ROOT: string = dirname(packageRequire.resolve('../package.json'))
export type { Native }

/** The CUDA build's package, and the libraries it loads at run time. */
export const CUDA_PACKAGE = 'promptclip-linux-x64-gnu-cuda'
export const CUDA_LIBRARIES = [
  'libcudart.so.13',
  'libcublas.so.13',
  'libcublasLt.so.13',
  'libcurand.so.10',
  'libnvrtc.so.13',
  'libcuda.so.1',
] as const

/** A CUDA library's file name in a dlopen message ("libcublasLt.so.13: cannot open ..."). */
const CUDA_LIBRARY_IN_MESSAGE = new RegExp(
  `lib(?:${CUDA_LIBRARIES.map((l) => l.slice('lib'.length, l.indexOf('.so'))).join('|')})\\b[\\w.+-]*`,
  'g',
)

const NEEDS =
  `It needs, on the library path (LD_LIBRARY_PATH): ${CUDA_LIBRARIES.slice(0, 5).join(', ')} (CUDA 13.0: ` +
  'the toolkit, or the PyPI packages nvidia-cuda-runtime, nvidia-cublas, nvidia-curand and nvidia-cuda-nvrtc), ' +
  'and libcuda.so.1 from the NVIDIA driver (580 or newer).'
const INSTALL =
  `install the package ${CUDA_PACKAGE} next to promptclip (npm install ${CUDA_PACKAGE}-<version>.tgz, ` +
  'made in a checkout by `bash scripts/gpu.sh build`, then `bash scripts/package.sh cuda` and `pack`; ' +
  'it is not on the npm registry yet)'

type Flavor = 'cpu' | 'cuda'
let loaded: { binding: typeof Native; flavor: Flavor; why: string } | undefined

function wantsCuda(device: string | undefined): boolean {
  return device === 'cuda' || (device?.startsWith('cuda:') ?? false)
}

function cudaUnavailable(message: string, cause?: unknown): PromptclipError {
  return new PromptclipError('E_CUDA_UNAVAILABLE', message, cause === undefined ? undefined : { cause })
}

function loadCpu(): typeof Native {
  return packageRequire('../index.js')
}

function loadCuda(device: string): typeof Native {
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    throw cudaUnavailable(
      `device "${device}": the CUDA build of promptclip (${CUDA_PACKAGE}) exists for linux x64 only, ` +
        `not ${process.platform} ${process.arch}`,
    )
  }
  try {
    return packageRequire(CUDA_PACKAGE)
  } catch (err) {
    const e = err as NodeJS.ErrnoException
    if (e?.code === 'MODULE_NOT_FOUND' && String(e.message).includes(`'${CUDA_PACKAGE}'`)) {
      // A source build with the cuda feature (npm run build:native:cuda) is the CPU loader's own
      // ./promptclip.linux-x64-gnu.node: take it if it is one.
      let local: typeof Native | undefined
      try {
        local = loadCpu()
      } catch {}
      if (local?.cudaCompiled()) return local
      throw cudaUnavailable(
        `device "${device}" needs the CUDA build of promptclip, which is a separate package, not installed: ${INSTALL}. ${NEEDS}`,
        err,
      )
    }
    const message = String(e?.message ?? err)
    const missing = [...new Set(message.match(CUDA_LIBRARY_IN_MESSAGE) ?? [])]
    throw cudaUnavailable(
      `device "${device}": the CUDA build of promptclip (package ${CUDA_PACKAGE}) is installed but could not be ` +
        `loaded${missing.length > 0 ? ` (missing ${missing.join(', ')})` : ''}: ${message.split('\n')[0]}. ${NEEDS} ` +
        `Reinstall ${CUDA_PACKAGE} if the libraries are there.`,
      err,
    )
  }
}

/**
 * The addon, loaded on first use: the CUDA build when `device` (the first Clip.load's) is a CUDA
 * device or PROMPTCLIP_ADDON=cuda, else the CPU build. Throws E_CUDA_UNAVAILABLE when a CUDA
 * device is asked for and the CUDA build cannot be had.
 */
export function addon(device?: string): typeof Native {
  if (!loaded) {
    const env = process.env.PROMPTCLIP_ADDON
    if (env !== undefined && env !== '' && env !== 'cpu' && env !== 'cuda') {
      throw new PromptclipError('E_INVALID_ARGUMENT', `PROMPTCLIP_ADDON must be "cpu" or "cuda", not "${env}"`)
    }
    if (env === 'cuda' || (env !== 'cpu' && wantsCuda(device))) {
      const asked = env === 'cuda' ? 'cuda' : (device as string)
      loaded = { binding: loadCuda(asked), flavor: 'cuda', why: '' }
    } else {
      loaded = {
        binding: loadCpu(),
        flavor: 'cpu',
        why:
          env === 'cpu' ? 'PROMPTCLIP_ADDON=cpu' : 'the first use of promptclip in this process did not ask for CUDA',
      }
    }
  }
  if (wantsCuda(device) && loaded.flavor === 'cpu' && !loaded.binding.cudaCompiled()) {
    throw cudaUnavailable(
      `device "${device}": this process has loaded the CPU build of promptclip (${loaded.why}), and the addon is ` +
        'chosen once per process. Ask for the CUDA device in the first Clip.load, or set PROMPTCLIP_ADDON=cuda; ' +
        `the CUDA build is the package ${CUDA_PACKAGE}. ${NEEDS}`,
    )
  }
  return loaded.binding
}

/** The addon, loaded on first property access (the CPU build unless PROMPTCLIP_ADDON=cuda or a
 *  CUDA device was asked for first). */
export const binding: typeof Native = new Proxy({} as typeof Native, {
  get: (_target, prop) => Reflect.get(addon(), prop),
})

/**
 * The core's defaults (the same in every build), without choosing the addon: from the chosen one
 * if there is one, else from the CPU build (or the CUDA package when that is all there is).
 */
export function coreDefaults(): Native.NativeDefaults {
  if (loaded) return loaded.binding.defaults()
  if (process.env.PROMPTCLIP_ADDON === 'cuda') {
    try {
      return addon().defaults()
    } catch {
      // Importing the package does not fail for want of the CUDA build: its first use will.
    }
  }
  try {
    return loadCpu().defaults()
  } catch (err) {
    try {
      return (packageRequire(CUDA_PACKAGE) as typeof Native).defaults()
    } catch {
      throw err
    }
  }
}
