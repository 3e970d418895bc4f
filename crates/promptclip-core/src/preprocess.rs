//! CLIP image preprocessing, equal to Hugging Face's CLIPImageProcessor: decode, convert to RGB
//! (grey expanded, alpha dropped as PIL's `convert("RGB")` does), resize the shorter side with
//! bicubic (Pillow's convolution, via fast_image_resize), center crop, scale to [0, 1], normalise
//! with CLIP's mean and std, CHW float32. Batches are decoded on all cores.
//!
//! Inputs are untrusted: a Node library must never abort or hang its host, so every size derived
//! from an input is checked before it is allocated (`ImageLimits`), files are read only when they
//! are regular files of bounded size, and truncated images are refused instead of decoded with
//! their missing part filled in.
use crate::{Error, Result};
use fast_image_resize::{
    images::Image as FirImage, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer,
};
use image::{DynamicImage, ImageDecoder, ImageFormat, RgbImage};
use rayon::prelude::*;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
// OpenAI's constants, digit for digit (f32 rounds them the same way PyTorch does).
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// The largest `size` (shorter side after resizing) and `crop_size` a `preprocessor_config.json`
/// may ask for: ten times CLIP's largest input (336), and a 4096 x 4096 resize is 50 MB. Larger
/// values are typing errors (`shortest_edge: 60000` resized every image to 60000 pixels or more a
/// side and aborted the process), refused with the field and value when the config is read.
pub const MAX_RESIZE_EDGE: u32 = 4096;

/// PIL's `Image.MAX_IMAGE_PIXELS` (a 1 GB 24-bit image's pixels): the default pixel budget.
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 89_478_485;
/// The default size limit of an image file: larger files are refused before they are read.
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 256 << 20;
/// Environment variables that raise (or lower) the limits for the whole process. They are read once,
/// at the first image, so they must be set before it (before `Clip.load` in Node, or on the
/// command line). An environment variable rather than a load option, because every reader of
/// images (encoding, zero-shot, evaluation, training and its skipUnreadable probe) then obeys the
/// same limits without each call threading them through.
pub const MAX_IMAGE_PIXELS_ENV: &str = "PROMPTCLIP_MAX_IMAGE_PIXELS";
pub const MAX_IMAGE_BYTES_ENV: &str = "PROMPTCLIP_MAX_IMAGE_BYTES";
/// Set to 1 to decode truncated JPEGs (their missing part grey) as PIL does with
/// `ImageFile.LOAD_TRUNCATED_IMAGES = True`, instead of refusing them.
pub const ACCEPT_TRUNCATED_ENV: &str = "PROMPTCLIP_ACCEPT_TRUNCATED_IMAGES";

/// What reading one image may cost. The pixel budget bounds the decoded image (checked from its
/// header, before decoding), raw pixels, and the resized image the crop is taken from (a 2,000,000
/// x 1 strip would resize to 224 x 448,000,000): at most 8 bytes a pixel (16-bit RGBA) are
/// allocated for it. The byte limit bounds image files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    pub max_pixels: u64,
    pub max_file_bytes: u64,
    /// Decode a JPEG whose data ends before its end-of-image marker (see `ACCEPT_TRUNCATED_ENV`).
    pub accept_truncated: bool,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_pixels: DEFAULT_MAX_IMAGE_PIXELS,
            max_file_bytes: DEFAULT_MAX_IMAGE_BYTES,
            accept_truncated: false,
        }
    }
}

impl ImageLimits {
    /// The process's limits: the defaults, changed by the environment variables above (read once).
    /// A malformed variable fails every image read with E_INVALID_ARGUMENT naming it, rather than
    /// silently running with the defaults.
    pub fn process() -> Result<Self> {
        static LIMITS: OnceLock<std::result::Result<ImageLimits, String>> = OnceLock::new();
        LIMITS
            .get_or_init(|| {
                let var = |k: &str| std::env::var(k).ok();
                Self::from_values(
                    var(MAX_IMAGE_PIXELS_ENV).as_deref(),
                    var(MAX_IMAGE_BYTES_ENV).as_deref(),
                    var(ACCEPT_TRUNCATED_ENV).as_deref(),
                )
            })
            .clone()
            .map_err(Error::InvalidArgument)
    }

    /// The limits the environment variables' values describe (`None`: unset).
    pub fn from_values(
        max_pixels: Option<&str>,
        max_file_bytes: Option<&str>,
        accept_truncated: Option<&str>,
    ) -> std::result::Result<Self, String> {
        let positive = |name: &str, v: Option<&str>, default: u64| match v.map(str::trim) {
            None | Some("") => Ok(default),
            Some(s) => match s.parse::<u64>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!(
                    "{name} is {s:?}; it must be a positive whole number"
                )),
            },
        };
        Ok(Self {
            max_pixels: positive(MAX_IMAGE_PIXELS_ENV, max_pixels, DEFAULT_MAX_IMAGE_PIXELS)?,
            max_file_bytes: positive(MAX_IMAGE_BYTES_ENV, max_file_bytes, DEFAULT_MAX_IMAGE_BYTES)?,
            accept_truncated: match accept_truncated.map(str::trim) {
                None | Some("") | Some("0") => false,
                Some("1") => true,
                Some(s) => {
                    return Err(format!(
                        "{ACCEPT_TRUNCATED_ENV} is {s:?}; it must be 0 or 1"
                    ))
                }
            },
        })
    }

    /// Refuse `width` x `height` pixels over the budget; `what` leads the message ("the image
    /// is", "the image (2000000x1) resized to ... would be").
    fn check_pixels(&self, what: &str, width: u64, height: u64) -> std::result::Result<(), String> {
        let n = width as u128 * height as u128;
        if n > self.max_pixels as u128 {
            return Err(format!(
                "{what} {width}x{height}, {n} pixels, over the limit of {} \
                 (set {MAX_IMAGE_PIXELS_ENV} to raise it)",
                self.max_pixels
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ImageConfig {
    /// The shorter side is resized to this.
    pub shortest_edge: u32,
    /// Square center crop; equals the vision tower's image size.
    pub crop: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// The model's own training augmentation, where its `preprocessor_config.json` gives one
    /// (`"promptclip": {"train_crop_scale": [lo, hi], "train_flip_p": p}`): a model trained on
    /// small images (the built-in CLIP's 28-pixel digits) needs crops that keep the object, and
    /// digits must not be flipped. `None`: the CoOp recipe's (scale 0.08 to 1, flip 0.5).
    pub train_crop_scale: Option<(f64, f64)>,
    pub train_flip_p: Option<f64>,
}

impl ImageConfig {
    pub fn clip(image_size: usize) -> Self {
        Self {
            shortest_edge: image_size as u32,
            crop: image_size as u32,
            mean: CLIP_MEAN,
            std: CLIP_STD,
            train_crop_scale: None,
            train_flip_p: None,
        }
    }

    /// Read `preprocessor_config.json` when the checkpoint has one. The crop always equals the
    /// model's input size (the position embeddings fix it); a different crop is an error.
    pub fn from_dir(dir: &Path, image_size: usize) -> Result<Self> {
        let mut cfg = Self::clip(image_size);
        let path = dir.join("preprocessor_config.json");
        if !path.is_file() {
            return Ok(cfg);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::bad_config(&path, format!("not valid JSON: {e}")))?;
        // A side is a whole number of pixels within MAX_RESIZE_EDGE, read as u64 so that 2^32 + 224
        // cannot wrap to 224; `field` names it in errors ("size.shortest_edge").
        let side = |v: &serde_json::Value, field: &str, keys: &[&str]| -> Result<Option<u32>> {
            let (field, x) = if v.is_object() {
                match keys.iter().find_map(|k| v.get(*k).map(|x| (*k, x))) {
                    Some((k, x)) => (format!("{field}.{k}"), x),
                    None => return Ok(None),
                }
            } else {
                (field.to_string(), v)
            };
            if x.is_null() {
                return Ok(None);
            }
            match x.as_u64() {
                Some(n) if (1..=MAX_RESIZE_EDGE as u64).contains(&n) => Ok(Some(n as u32)),
                _ => Err(Error::bad_config(
                    &path,
                    format!(
                        "`{field}` is {x}; it must be a whole number of pixels from 1 to {MAX_RESIZE_EDGE}"
                    ),
                )),
            }
        };
        if let Some(s) = v.get("size") {
            if let Some(s) = side(s, "size", &["shortest_edge", "height"])? {
                cfg.shortest_edge = s;
            }
        }
        if let Some(c) = v.get("crop_size") {
            if let Some(c) = side(c, "crop_size", &["height"])? {
                if c as usize != image_size {
                    return Err(Error::bad_config(
                        &path,
                        format!("crop_size {c} differs from the model's image_size {image_size}"),
                    ));
                }
            }
        }
        let triple = |key: &str| -> Result<Option<[f32; 3]>> {
            match v.get(key) {
                None => Ok(None),
                Some(a) => {
                    // Every element must be a finite f32: a string among numbers is an error, not
                    // skipped, and 1e300 does not become infinity.
                    let xs: Vec<f32> = a
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map_while(|x| x.as_f64().map(|x| x as f32))
                                .filter(|x| x.is_finite())
                                .collect()
                        })
                        .unwrap_or_default();
                    if xs.len() != 3 || a.as_array().map(Vec::len) != Some(3) {
                        return Err(Error::bad_config(
                            &path,
                            format!("`{key}` is {a}; it must be 3 finite numbers"),
                        ));
                    }
                    Ok(Some([xs[0], xs[1], xs[2]]))
                }
            }
        };
        if let Some(m) = triple("image_mean")? {
            cfg.mean = m;
        }
        if let Some(s) = triple("image_std")? {
            if s.iter().any(|x| *x <= 0.0) {
                return Err(Error::bad_config(&path, "`image_std` must be positive"));
            }
            cfg.std = s;
        }
        if let Some(own) = v.get("promptclip") {
            let number = |key: &str, x: &serde_json::Value| -> Result<f64> {
                x.as_f64()
                    .filter(|x| (0.0..=1.0).contains(x))
                    .ok_or_else(|| {
                        Error::bad_config(
                            &path,
                            format!(
                                "`promptclip.{key}` holds {x}; it must hold numbers from 0 to 1"
                            ),
                        )
                    })
            };
            if let Some(x) = own.get("train_crop_scale") {
                let pair = x.as_array().filter(|a| a.len() == 2).ok_or_else(|| {
                    Error::bad_config(
                        &path,
                        format!("`promptclip.train_crop_scale` is {x}; it must be [min, max]"),
                    )
                })?;
                let (lo, hi) = (
                    number("train_crop_scale", &pair[0])?,
                    number("train_crop_scale", &pair[1])?,
                );
                if !(lo > 0.0 && lo <= hi) {
                    return Err(Error::bad_config(
                        &path,
                        format!(
                            "`promptclip.train_crop_scale` is {x}; it needs 0 < min <= max <= 1"
                        ),
                    ));
                }
                cfg.train_crop_scale = Some((lo, hi));
            }
            if let Some(x) = own.get("train_flip_p") {
                cfg.train_flip_p = Some(number("train_flip_p", x)?);
            }
        }
        if cfg.shortest_edge < cfg.crop {
            return Err(Error::bad_config(
                &path,
                format!(
                    "size {} is smaller than the crop {}",
                    cfg.shortest_edge, cfg.crop
                ),
            ));
        }
        Ok(cfg)
    }
}

/// An image to read: a file, encoded bytes (JPEG, PNG, WebP, BMP, GIF: its first frame, as PIL's
/// `Image.open` reads it; the format is told by its content, not its name), or decoded 8-bit pixels
/// (row-major, 1 = grey, 3 = RGB, 4 = RGBA channels), with a name for error messages. `Invalid` is
/// an input its caller could not even describe as one of these (raw pixels whose width is not a
/// 32-bit whole number): reading it fails with E_INVALID_ARGUMENT and `msg`, so that a batch still
/// reports it at its index.
#[derive(Debug, Clone)]
pub enum ImageSource {
    Path(PathBuf),
    Bytes {
        name: String,
        data: Arc<[u8]>,
    },
    Pixels {
        name: String,
        width: u32,
        height: u32,
        channels: u8,
        data: Arc<[u8]>,
    },
    Invalid {
        name: String,
        msg: String,
    },
}

impl ImageSource {
    pub fn name(&self) -> String {
        match self {
            ImageSource::Path(p) => p.display().to_string(),
            ImageSource::Bytes { name, .. }
            | ImageSource::Pixels { name, .. }
            | ImageSource::Invalid { name, .. } => name.clone(),
        }
    }
}

/// Decode to 8-bit RGB within the process's limits (`ImageLimits::process`).
pub fn decode(src: &ImageSource) -> Result<RgbImage> {
    decode_with_limits(src, &ImageLimits::process()?)
}

/// Decode to 8-bit RGB within `limits`.
pub fn decode_with_limits(src: &ImageSource, limits: &ImageLimits) -> Result<RgbImage> {
    let decode_err = |msg: String| Error::ImageDecode {
        source_name: src.name(),
        msg,
    };
    let img = match src {
        ImageSource::Path(p) => decode_bytes(&read_image_file(p, limits)?, limits),
        ImageSource::Bytes { data, .. } => decode_bytes(data, limits),
        ImageSource::Pixels {
            width,
            height,
            channels,
            data,
            ..
        } => return pixels_to_rgb(*width, *height, *channels, data, limits).map_err(decode_err),
        ImageSource::Invalid { name, msg } => {
            return Err(Error::InvalidArgument(format!("{name}: {msg}")))
        }
    }
    .map_err(decode_err)?;
    if img.width() == 0 || img.height() == 0 {
        return Err(decode_err("image has no pixels".into()));
    }
    Ok(img.to_rgb8())
}

/// The bytes of an image file. Only a regular file is opened (a FIFO would block forever,
/// /dev/zero never ends), and non-blocking, so that one swapped in after the check cannot block
/// either; its size is checked from the open file and the read is bounded, in case it grows.
fn read_image_file(p: &Path, limits: &ImageLimits) -> Result<Vec<u8>> {
    let refuse = |msg: String| Error::Io {
        path: p.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, msg),
    };
    let check = |meta: &std::fs::Metadata| -> Result<()> {
        if !meta.is_file() {
            return Err(refuse(format!(
                "it is {}, not a regular file; images are read from regular files only",
                file_kind(&meta.file_type())
            )));
        }
        if meta.len() > limits.max_file_bytes {
            return Err(refuse(too_big(meta.len(), limits)));
        }
        Ok(())
    };
    check(&std::fs::metadata(p).map_err(|e| Error::io(p, e))?)?;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(p).map_err(|e| Error::io(p, e))?;
    let meta = file.metadata().map_err(|e| Error::io(p, e))?;
    check(&meta)?;
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(meta.len() as usize)
        .map_err(|e| refuse(format!("no memory for its {} bytes: {e}", meta.len())))?;
    file.take(limits.max_file_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(p, e))?;
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(refuse(too_big(bytes.len() as u64, limits)));
    }
    Ok(bytes)
}

fn too_big(len: u64, limits: &ImageLimits) -> String {
    format!(
        "the file is {len} bytes, over the limit of {} for an image (set {MAX_IMAGE_BYTES_ENV} \
         to raise it)",
        limits.max_file_bytes
    )
}

fn file_kind(t: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Decode encoded bytes within the limits: the size is read from the header and checked before
/// any pixel is decoded (a 389 KB PNG of 20000 x 20000 would otherwise take 2.4 GB and 10 s), and
/// a JPEG must be whole.
fn decode_bytes(bytes: &[u8], limits: &ImageLimits) -> std::result::Result<DynamicImage, String> {
    if bytes.is_empty() {
        // The decoder would say the format "could not be determined" (issue 23).
        return Err("the file is empty (0 bytes)".into());
    }
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let side = u32::try_from(limits.max_pixels).unwrap_or(u32::MAX);
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_image_width = Some(side);
    decoder_limits.max_image_height = Some(side);
    decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8));
    reader.limits(decoder_limits);
    let format = reader.format();
    let decoder = reader.into_decoder().map_err(|e| e.to_string())?;
    let (width, height) = decoder.dimensions();
    limits.check_pixels("the image is", width as u64, height as u64)?;
    if format == Some(ImageFormat::Jpeg) && !limits.accept_truncated && !jpeg_is_complete(bytes) {
        return Err(format!(
            "the JPEG data ends before its end-of-image marker (a truncated file; set \
             {ACCEPT_TRUNCATED_ENV}=1 to decode such files with the missing part filled in)"
        ));
    }
    DynamicImage::from_decoder(decoder).map_err(|e| e.to_string())
}

/// Whether a JPEG stream reaches its end-of-image marker. The decoder fills in the data of a
/// truncated file without a word, so the marker segments are walked here: each segment is skipped
/// by its length, each scan's entropy-coded data up to the next marker (in it, 0xFF is followed
/// by 0x00 or a restart marker), until EOI. An EXIF thumbnail's own EOI lies inside its APP1
/// segment, so it cannot stand in for a missing one.
pub fn jpeg_is_complete(b: &[u8]) -> bool {
    if !b.starts_with(&[0xFF, 0xD8]) {
        return false;
    }
    let mut i = 2;
    loop {
        // Bytes between segments are not markers; decoders skip them (libjpeg warns), and so do we.
        while i < b.len() && b[i] != 0xFF {
            i += 1;
        }
        while i < b.len() && b[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = b.get(i) else {
            return false;
        };
        i += 1;
        match marker {
            0xD9 => return true,
            // Standalone markers: no length follows.
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(len) = b
            .get(i..i + 2)
            .map(|l| u16::from_be_bytes([l[0], l[1]]) as usize)
        else {
            return false;
        };
        if len < 2 {
            return false;
        }
        i += len;
        if marker == 0xDA {
            // Entropy-coded data of the scan, up to the next marker.
            loop {
                match (b.get(i), b.get(i + 1)) {
                    (Some(0xFF), Some(0x00 | 0xD0..=0xD7)) => i += 2,
                    (Some(0xFF), Some(_)) => break,
                    (Some(_), _) => i += 1,
                    (None, _) => return false,
                }
            }
        }
    }
}

fn pixels_to_rgb(
    width: u32,
    height: u32,
    channels: u8,
    data: &[u8],
    limits: &ImageLimits,
) -> std::result::Result<RgbImage, String> {
    let n = width as u64 * height as u64;
    if n == 0 {
        return Err("image has no pixels".into());
    }
    if ![1, 3, 4].contains(&channels) {
        return Err(format!(
            "{channels} channels; raw pixels need 1 (grey), 3 (RGB) or 4 (RGBA)"
        ));
    }
    // u128: 2^32 - 1 squared times 4 channels does not fit 64 bits.
    let expected = n as u128 * channels as u128;
    if data.len() as u128 != expected {
        return Err(format!(
            "{} bytes for {width}x{height}x{channels} pixels (expected {expected})",
            data.len()
        ));
    }
    limits.check_pixels("the image is", width as u64, height as u64)?;
    let c = channels as usize;
    // Grey is replicated, alpha dropped: the same as PIL's convert("RGB").
    Ok(RgbImage::from_fn(width, height, |x, y| {
        let i = (y as usize * width as usize + x as usize) * c;
        if c == 1 {
            image::Rgb([data[i]; 3])
        } else {
            image::Rgb([data[i], data[i + 1], data[i + 2]])
        }
    }))
}

/// Output size of "resize the shorter side to `s`" exactly as transformers computes it
/// (`int(s * long / short)`, truncating).
pub fn resized_size(width: u32, height: u32, s: u32) -> (u32, u32) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = ((s as f64) * (long as f64) / (short as f64)) as u32;
    if width <= height {
        (s, new_long)
    } else {
        (new_long, s)
    }
}

/// Bicubic resize of an RGB image (Pillow's BICUBIC: Catmull-Rom with antialiasing support).
pub fn resize_rgb(img: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    if img.width() == width && img.height() == height {
        return Ok(img.clone());
    }
    let src = FirImage::from_vec_u8(
        img.width(),
        img.height(),
        img.as_raw().clone(),
        PixelType::U8x3,
    )
    .map_err(|e| Error::Internal(format!("resize source: {e}")))?;
    let mut dst = FirImage::new(width, height, PixelType::U8x3);
    Resizer::new()
        .resize(
            &src,
            &mut dst,
            &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom)),
        )
        .map_err(|e| Error::Internal(format!("resize: {e}")))?;
    RgbImage::from_raw(width, height, dst.into_vec())
        .ok_or_else(|| Error::Internal("resize buffer size".into()))
}

/// Center crop to `size` x `size` with transformers' offsets ((h - size) // 2); zero-pads an
/// image smaller than the crop, like transformers does.
pub fn center_crop(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let top = (h as i64 - size as i64).div_euclid(2);
    let left = (w as i64 - size as i64).div_euclid(2);
    RgbImage::from_fn(size, size, |x, y| {
        let sx = x as i64 + left;
        let sy = y as i64 + top;
        if sx >= 0 && sy >= 0 && (sx as u32) < w && (sy as u32) < h {
            *img.get_pixel(sx as u32, sy as u32)
        } else {
            image::Rgb([0, 0, 0])
        }
    })
}

/// The 8-bit crop the model sees, before normalisation, within the process's limits.
pub fn resize_and_crop(img: &RgbImage, cfg: &ImageConfig) -> Result<RgbImage> {
    resize_and_crop_within(img, cfg, &ImageLimits::process()?, "image")
}

/// `resize_and_crop` within `limits`: the resized image, whose long side grows with the aspect
/// ratio, must fit the pixel budget (an error names the image `name`).
pub fn resize_and_crop_within(
    img: &RgbImage,
    cfg: &ImageConfig,
    limits: &ImageLimits,
    name: &str,
) -> Result<RgbImage> {
    let (w, h) = resized_size(img.width(), img.height(), cfg.shortest_edge);
    // resized_size saturates at u32::MAX, which is still over any budget.
    limits
        .check_pixels(
            &format!(
                "the image ({}x{}) resized to the model's short side of {} would be",
                img.width(),
                img.height(),
                cfg.shortest_edge
            ),
            w as u64,
            h as u64,
        )
        .map_err(|msg| Error::ImageDecode {
            source_name: name.into(),
            msg,
        })?;
    Ok(center_crop(&resize_rgb(img, w, h)?, cfg.crop))
}

/// (x / 255 - mean) / std into CHW float32, appended to `out`.
pub fn normalize_into(img: &RgbImage, cfg: &ImageConfig, out: &mut Vec<f32>) {
    let plane = img.width() as usize * img.height() as usize;
    let start = out.len();
    out.resize(start + 3 * plane, 0.0);
    let dst = &mut out[start..];
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            // Same arithmetic as transformers: rescale in f64, cast to f32, (x - mean) / std in f32.
            let x = (px.0[c] as f64 * (1.0 / 255.0)) as f32;
            dst[c * plane + i] = (x - cfg.mean[c]) / cfg.std[c];
        }
    }
}

pub fn preprocess(src: &ImageSource, cfg: &ImageConfig) -> Result<Vec<f32>> {
    preprocess_within(src, cfg, &ImageLimits::process()?)
}

pub fn preprocess_within(
    src: &ImageSource,
    cfg: &ImageConfig,
    limits: &ImageLimits,
) -> Result<Vec<f32>> {
    let img = resize_and_crop_within(&decode_with_limits(src, limits)?, cfg, limits, &src.name())?;
    let mut out = Vec::with_capacity(3 * cfg.crop as usize * cfg.crop as usize);
    normalize_into(&img, cfg, &mut out);
    Ok(out)
}

/// Preprocess a batch on all cores. Each input gets its own result, so one bad file does not
/// lose the rest of the batch.
pub fn preprocess_batch(srcs: &[ImageSource], cfg: &ImageConfig) -> Vec<Result<Vec<f32>>> {
    srcs.par_iter().map(|s| preprocess(s, cfg)).collect()
}
