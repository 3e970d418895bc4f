import type { ImageInput } from '../options'

/** Images with 0-based labels into `classNames`. */
export interface LabelledDataset {
  images: ImageInput[]
  labels: number[]
  classNames: string[]
}

/** A file or folder a loader left out, and why (it is not an error: the rest loads). */
export interface SkippedFile {
  path: string
  reason: string
}

/** A dataset's splits as its source defines them, sharing one class list. */
export interface DatasetSplits {
  /** The catalog name, or the path given. */
  name: string
  classNames: string[]
  train: LabelledDataset
  /** When the source has one. */
  val?: LabelledDataset
  test?: LabelledDataset
  /** The dataset's hand-made zero-shot template (catalog datasets). */
  template?: string
  /** What loading skipped, and why. */
  skipped: SkippedFile[]
}
