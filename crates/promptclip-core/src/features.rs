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
    let batch_size = batch_size.max(1);
    let size = clip.image_config.crop as usize;
    let mut parts = Vec::new();
    let mut indices = Vec::new();
    let mut failures = Vec::new();
    for (chunk_no, chunk) in sources.chunks(batch_size).enumerate() {
        let pixels = crate::preprocess::preprocess_batch(chunk, &clip.image_config);
        let mut data = Vec::with_capacity(chunk.len() * 3 * size * size);
        let mut n = 0;
        for (j, r) in pixels.into_iter().enumerate() {
            let index = chunk_no * batch_size + j;
            match r {
                Ok(p) => {
                    data.extend_from_slice(&p);
                    indices.push(index);
                    n += 1;
                }
                Err(e) => failures.push((index, e)),
            }
        }
        if n > 0 {
            let t =
                Tensor::from_vec(data, (n, 3, size, size), &clip.device)?.to_dtype(clip.dtype)?;
            parts.push(clip.encode_image(&t)?);
        }
        on_progress(chunk_no * batch_size + chunk.len(), sources.len())?;
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
