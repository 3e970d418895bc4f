export type {
  DeviceName,
  EncodedImages,
  EncodeImagesOptions,
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
export { BUILTIN_MODEL, Clip, cudaCompiled, DEFAULT_TEMPLATE, topK } from './clip'
export type {
  CatalogEntry,
  CatalogLayout,
  DatasetName,
  DatasetSplits,
  FolderOptions,
  FractionOptions,
  LabelledDataset,
  SkippedFile,
} from './datasets'
export {
  baseToNew,
  catalogName,
  DATASETS,
  DIGIT_CLASSES,
  FASHION_MNIST_CLASSES,
  fewShot,
  fewShotSplits,
  fromList,
  IMAGE_EXTENSIONS,
  loadClothesAndDigits,
  loadCsv,
  loadDataset,
  loadFashionMnist,
  loadIdx,
  loadImageFolder,
  loadMnistDigits,
  loadSplitFile,
  openDataset,
  readClassNamesFile,
  readIdx,
  requireTwoClasses,
  selectClasses,
  splitFractions,
  without,
  writeSplitFile,
} from './datasets'
export type { ErrorCode } from './errors'
export { AbortError, PromptclipError } from './errors'
export type { ClassReport, EvaluateOptions, Evaluation } from './evaluate'
export { Evaluator } from './evaluate'
export type * from './generated/methods'
export type { CachedRepo } from './hub/cache'
export { hubCacheDir, scanCache as scanHubCache } from './hub/cache'
export type { DownloadProgress, HubOptions } from './hub/client'
export { fetchHubDataset as fetchDataset } from './hub/dataset'
export type { MethodEntry, MethodRecipe, OptionDoc } from './methods'
export { methodCatalogue, methodRecipe } from './methods'
export type {
  ClassTokenPosition,
  CocoopOptions,
  CoopOptions,
  ImportOfficialOptions,
  InterpretRow,
  KgcoopOptions,
  LearnerInfo,
  LearnerOptions,
  LinearProbeOptions,
  Method,
  MethodOptions,
  PredictOptions,
  RuntimeOptions,
} from './prompt'
export { PromptLearner } from './prompt'
export type {
  EvalRecord,
  ProtocolEvent,
  ProtocolMethod,
  ProtocolName,
  ProtocolOptions,
  ProtocolResults,
  QueueWorker,
  RunKey,
  RunRecord,
  RunStatus,
  WorkerEvent,
  WorkerOptions,
} from './protocols'
export { runProtocol, startWorker, sweepStatus } from './protocols'
export type { Dataset, FitOptions, TrainOptions, TrainProgress, TrainSummary } from './train'
export { Trainer } from './train'
