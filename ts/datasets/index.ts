/**
 * Dataset IO: folders of images, the official CoOp split files, CSV lists, lists in memory, IDX
 * files (MNIST / Fashion-MNIST), the catalog of the papers' datasets, and the few-shot and
 * base-to-new sampling of the papers' protocols.
 */
export type { CatalogEntry, CatalogLayout, DatasetName } from './catalog'
export { catalogName, DATASETS, loadDataset, readClassnames } from './catalog'
export { requireTwoClasses } from './checks'
export type { CsvRecord } from './csv'
export { loadCsv, parseCsv } from './csv'
export { IMAGE_EXT, IMAGE_EXTENSIONS } from './extensions'
export type { FolderOptions } from './folder'
export { loadImageFolder, loadSplitFolders } from './folder'
export type { FractionOptions } from './fractions'
export { splitFractions } from './fractions'
export {
  DIGIT_CLASSES,
  FASHION_MNIST_CLASSES,
  FASHION_MNIST_DIR,
  loadClothesAndDigits,
  loadFashionMnist,
  loadIdx,
  loadMnistDigits,
  readIdx,
} from './idx'
export { fromList } from './memory'
export { readClassNamesFile, selectClasses } from './names'
export { dataRoot, openDataset } from './open'
export { baseToNew, fewShot, fewShotSplits, rng, without } from './sampling'
export { loadSplitFile, writeSplitFile } from './split'
export type { DatasetSplits, LabelledDataset, SkippedFile } from './types'
