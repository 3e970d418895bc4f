/**
 * The image types the core decodes, by file extension: one list for every place that picks images
 * out of a folder (the dataset loaders, the CLI's expansion of folders for zeroshot and predict),
 * and for the messages that name the types. Imports nothing, so that any module may use it.
 */

/** The extensions, lower case, with the dot. */
export const IMAGE_EXTENSIONS = ['.jpg', '.jpeg', '.png', '.webp', '.bmp', '.gif'] as const

/** A file name with one of `IMAGE_EXTENSIONS`, in any case. */
export const IMAGE_EXT = new RegExp(`(${IMAGE_EXTENSIONS.map((e) => e.replace('.', '\\.')).join('|')})$`, 'i')

/** The types for a message: ".jpg, .jpeg, .png, .webp, .bmp or .gif". */
export const IMAGE_TYPES = `${IMAGE_EXTENSIONS.slice(0, -1).join(', ')} or ${IMAGE_EXTENSIONS[IMAGE_EXTENSIONS.length - 1]}`
