//! Images to CLIP image features: decoding and preprocessing on all cores, encoding in batches,
//! unreadable images reported by index instead of failing the batch.
use crate::clip::Clip;
use crate::preprocess::ImageSource;
use crate::{Error, Result};
use candle_core::Tensor;

/// Images per forward pass of the image tower when a call does not say (encoding, zero-shot,
/// prediction, evaluation).
pub const BATCH_SIZE: usize = 32;

/// Features of images read from files, bytes or pixels.
pub struct EncodedImages {
    /// (N_ok, E), unnormalised, in input order of the successful images.
    pub features: Option<Tensor>,
    /// Input index of each row of `features`.
    pub indices: Vec<usize>,
    pub failures: Vec<(usize, Error)>,
}

/// Memory (MiB) one inference batch of the image tower may take (its pixels and activations):
/// the default budget of training's chunks (`Runtime::default().memory_budget_mb`).
pub const INFERENCE_MEMORY_BUDGET_MB: usize = 2048;

/// Estimated bytes one image takes in an inference batch: its f32 pixels on the host and on the
/// device (and in the compute dtype), and the image tower's largest activations at once (a ViT
/// layer's residual stream, QKV, MLP hidden and attention scores; a ResNet's stem and first stage).
pub fn bytes_per_image(clip: &Clip) -> usize {
    let v = &clip.config.vision_config;
    let s = clip.image_config.crop as usize;
    let el = clip.dtype.size_in_bytes();
    let input = 3 * s * s * (4 + 4 + el);
    let activations = match v.resnet {
        Some(shape) => {
            let (half, quarter) = (s.div_ceil(2), s.div_ceil(4));
            el * (3 * half * half * shape.width + 16 * quarter * quarter * shape.width)
        }
        None => {
            let grid = s / v.patch_size.max(1);
            let t = grid * grid + 1;
            el * t * (6 * v.hidden_size + 2 * v.intermediate_size + 2 * v.num_attention_heads * t)
        }
    };
    input.saturating_add(activations).max(1)
}

/// The images per forward pass for a requested batch size: at least 1, at most what fits
/// `budget_mb` by [`bytes_per_image`], so that a huge batch size runs in smaller chunks (the same
/// results) instead of failing to allocate.
pub fn inference_batch_size(clip: &Clip, requested: usize, budget_mb: usize) -> usize {
    let cap = (budget_mb.saturating_mul(1 << 20) / bytes_per_image(clip)).max(1);
    requested.clamp(1, cap)
}

/// One batch of images as the model's input.
pub struct Pixels {
    /// (N_ok, 3, S, S) in the model's dtype, on its device, of the images that could be read.
    pub pixels: Option<Tensor>,
    /// Index in the chunk of each row of `pixels`.
    pub indices: Vec<usize>,
    pub failures: Vec<(usize, Error)>,
}

/// Decode and preprocess `chunk` on all cores (the center crop of the model's preprocessing).
pub fn preprocess_chunk(clip: &Clip, chunk: &[ImageSource]) -> Result<Pixels> {
    let size = clip.image_config.crop as usize;
    let mut data = Vec::with_capacity(chunk.len() * 3 * size * size);
    let (mut indices, mut failures) = (vec![], vec![]);
    for (j, r) in crate::preprocess::preprocess_batch(chunk, &clip.image_config)
        .into_iter()
        .enumerate()
    {
        match r {
            Ok(p) => {
                data.extend_from_slice(&p);
                indices.push(j);
            }
            Err(e) => failures.push((j, e)),
        }
    }
    let pixels = if indices.is_empty() {
        None
    } else {
        let n = indices.len();
        Some(Tensor::from_vec(data, (n, 3, size, size), &clip.device)?.to_dtype(clip.dtype)?)
    };
    Ok(Pixels {
        pixels,
        indices,
        failures,
    })
}

pub fn encode(clip: &Clip, sources: &[ImageSource], batch_size: usize) -> Result<EncodedImages> {
    encode_with_progress(clip, sources, batch_size, &mut |_, _| Ok(()))
}

/// `encode`, calling `on_progress(done, total)` after each batch. An error it returns stops the
/// work between batches and becomes the call's (the binding stops this way once a JavaScript
/// progress callback has thrown).
pub fn encode_with_progress(
    clip: &Clip,
    sources: &[ImageSource],
    batch_size: usize,
    on_progress: &mut dyn FnMut(usize, usize) -> Result<()>,
) -> Result<EncodedImages> {
    encode_within(
        clip,
        sources,
        batch_size,
        INFERENCE_MEMORY_BUDGET_MB,
        on_progress,
    )
}

/// `encode_with_progress` with batches bounded by `budget_mb` ([`inference_batch_size`]).
pub fn encode_within(
    clip: &Clip,
    sources: &[ImageSource],
    batch_size: usize,
    budget_mb: usize,
    on_progress: &mut dyn FnMut(usize, usize) -> Result<()>,
) -> Result<EncodedImages> {
    let batch_size = inference_batch_size(clip, batch_size, budget_mb);
    let mut parts = Vec::new();
    let mut indices = Vec::new();
    let mut failures = Vec::new();
    for (chunk_no, chunk) in sources.chunks(batch_size).enumerate() {
        let at = chunk_no * batch_size;
        let p = preprocess_chunk(clip, chunk)?;
        indices.extend(p.indices.iter().map(|i| at + i));
        failures.extend(p.failures.into_iter().map(|(i, e)| (at + i, e)));
        if let Some(pixels) = &p.pixels {
            parts.push(clip.encode_image(pixels)?);
        }
        on_progress(at + chunk.len(), sources.len())?;
    }
    let features = if parts.is_empty() {
        None
    } else {
        Some(Tensor::cat(&parts, 0)?)
    };
    Ok(EncodedImages {
        features,
        indices,
        failures,
    })
}

/// Center-crop features (N, E) of every image; the first image that cannot be used fails the call,
/// named by `what` ("training image 3 cannot be used: ...") and keeping its cause's code.
pub fn encode_all(clip: &Clip, sources: &[ImageSource], what: &str) -> Result<Tensor> {
    let enc = encode(clip, sources, BATCH_SIZE)?;
    if let Some((index, e)) = enc.failures.into_iter().next() {
        return Err(Error::UnusableImage {
            what: what.into(),
            index,
            source: Box::new(e),
        });
    }
    enc.features
        .ok_or_else(|| Error::InvalidArgument(format!("no {what}s were given")))
}
