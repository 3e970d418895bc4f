//! CLIP image preprocessing, equal to Hugging Face's CLIPImageProcessor: decode, convert to RGB
//! (grey expanded, alpha dropped as PIL's `convert("RGB")` does), resize the shorter side with
//! bicubic (Pillow's convolution, via fast_image_resize), center crop, scale to [0, 1], normalise
//! with CLIP's mean and std, CHW float32. Batches are decoded on all cores.
use crate::{Error, Result};
use fast_image_resize::{
    images::Image as FirImage, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer,
};
use image::RgbImage;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
// OpenAI's constants, digit for digit (f32 rounds them the same way PyTorch does).
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

#[derive(Debug, Clone, PartialEq)]
pub struct ImageConfig {
    /// The shorter side is resized to this.
    pub shortest_edge: u32,
    /// Square center crop; equals the vision tower's image size.
    pub crop: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl ImageConfig {
    pub fn clip(image_size: usize) -> Self {
        Self {
            shortest_edge: image_size as u32,
            crop: image_size as u32,
            mean: CLIP_MEAN,
            std: CLIP_STD,
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
        let side = |v: &serde_json::Value, keys: &[&str]| -> Option<u32> {
            if let Some(n) = v.as_u64() {
                return Some(n as u32);
            }
            keys.iter()
                .find_map(|k| v.get(*k).and_then(|x| x.as_u64()))
                .map(|n| n as u32)
        };
        if let Some(s) = v
            .get("size")
            .and_then(|s| side(s, &["shortest_edge", "height"]))
        {
            cfg.shortest_edge = s;
        }
        if let Some(c) = v.get("crop_size").and_then(|s| side(s, &["height"])) {
            if c as usize != image_size {
                return Err(Error::bad_config(
                    &path,
                    format!("crop_size {c} differs from the model's image_size {image_size}"),
                ));
            }
        }
        let triple = |key: &str| -> Result<Option<[f32; 3]>> {
            match v.get(key) {
                None => Ok(None),
                Some(a) => {
                    let xs: Vec<f32> = a
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|x| x.as_f64())
                                .map(|x| x as f32)
                                .collect()
                        })
                        .unwrap_or_default();
                    if xs.len() != 3 {
                        return Err(Error::bad_config(
                            &path,
                            format!("`{key}` must be 3 numbers"),
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
/// (row-major, 1 = grey, 3 = RGB, 4 = RGBA channels), with a name for error messages.
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
}

impl ImageSource {
    pub fn name(&self) -> String {
        match self {
            ImageSource::Path(p) => p.display().to_string(),
            ImageSource::Bytes { name, .. } | ImageSource::Pixels { name, .. } => name.clone(),
        }
    }
}

/// Decode to 8-bit RGB.
pub fn decode(src: &ImageSource) -> Result<RgbImage> {
    let decode_err = |msg: String| Error::ImageDecode {
        source_name: src.name(),
        msg,
    };
    let img = match src {
        ImageSource::Path(p) => {
            let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
            image::load_from_memory(&bytes)
        }
        ImageSource::Bytes { data, .. } => image::load_from_memory(data),
        ImageSource::Pixels {
            width,
            height,
            channels,
            data,
            ..
        } => return pixels_to_rgb(*width, *height, *channels, data).map_err(decode_err),
    }
    .map_err(|e| decode_err(e.to_string()))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(decode_err("image has no pixels".into()));
    }
    Ok(img.to_rgb8())
}

fn pixels_to_rgb(
    width: u32,
    height: u32,
    channels: u8,
    data: &[u8],
) -> std::result::Result<RgbImage, String> {
    let n = width as usize * height as usize;
    if n == 0 {
        return Err("image has no pixels".into());
    }
    if ![1, 3, 4].contains(&channels) {
        return Err(format!(
            "{channels} channels; raw pixels need 1 (grey), 3 (RGB) or 4 (RGBA)"
        ));
    }
    if data.len() != n * channels as usize {
        return Err(format!(
            "{} bytes for {width}x{height}x{channels} pixels (expected {})",
            data.len(),
            n * channels as usize
        ));
    }
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

/// The 8-bit crop the model sees, before normalisation.
pub fn resize_and_crop(img: &RgbImage, cfg: &ImageConfig) -> Result<RgbImage> {
    let (w, h) = resized_size(img.width(), img.height(), cfg.shortest_edge);
    Ok(center_crop(&resize_rgb(img, w, h)?, cfg.crop))
}

/// (x / 255 - mean) / std into CHW float32, appended to `out`.
pub fn normalize_into(img: &RgbImage, cfg: &ImageConfig, out: &mut Vec<f32>) {
    let plane = (img.width() * img.height()) as usize;
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
    let img = resize_and_crop(&decode(src)?, cfg)?;
    let mut out = Vec::with_capacity(3 * (cfg.crop * cfg.crop) as usize);
    normalize_into(&img, cfg, &mut out);
    Ok(out)
}

/// Preprocess a batch on all cores. Each input gets its own result, so one bad file does not
/// lose the rest of the batch.
pub fn preprocess_batch(srcs: &[ImageSource], cfg: &ImageConfig) -> Vec<Result<Vec<f32>>> {
    srcs.par_iter().map(|s| preprocess(s, cfg)).collect()
}
