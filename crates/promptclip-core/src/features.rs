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
/// named by `what` ("training image 3 cannot be used: ...").
pub fn encode_all(clip: &Clip, sources: &[ImageSource], what: &str) -> Result<Tensor> {
    let enc = encode(clip, sources, BATCH_SIZE)?;
    if let Some((i, e)) = enc.failures.into_iter().next() {
        return Err(Error::InvalidArgument(format!(
            "{what} {i} cannot be used: {e}"
        )));
    }
    enc.features
        .ok_or_else(|| Error::InvalidArgument(format!("no {what}s were given")))
}
