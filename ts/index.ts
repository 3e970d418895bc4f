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
  Precision,
  RawImage,
  ZeroShotOptions,
  ZeroShotPrediction,
} from './clip'
export { PromptLearner } from './prompt'
export type { ClassTokenPosition, CocoopOptions, CoopOptions, InterpretRow, LearnerInfo, PredictOptions } from './prompt'
export { Trainer } from './train'
export type { Dataset, FitOptions, TrainOptions, TrainProgress, TrainSummary } from './train'
export { Evaluator } from './evaluate'
export type { ClassReport, EvaluateOptions, Evaluation } from './evaluate'
export { PromptclipError } from './errors'
export type { ErrorCode } from './errors'
export { FASHION_MNIST_CLASSES, fewShot, loadFashionMnist, loadImageFolder, loadSplitFile, readIdx } from './datasets'
export type { LabelledDataset } from './datasets'
