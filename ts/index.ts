export { Clip, DEFAULT_TEMPLATE, cudaCompiled, topK } from './clip'
export type {
  DeviceName,
  EncodeImagesOptions,
  EncodedImages,
  ImageFailure,
  ImageInput,
  LabelScore,
  LoadOptions,
  ModelInfo,
  ZeroShotOptions,
  ZeroShotPrediction,
} from './clip'
export { PromptclipError } from './errors'
export type { ErrorCode } from './errors'
