//! CLIP itself: loading, encoding images and texts, tokenizing, zero-shot classification, and
//! the images every call accepts.
use crate::cancel::NativeCancelToken;
use crate::errors::sync;
use crate::tasks::CoreTask;
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use promptclip_core::preprocess::ImageSource;
use promptclip_core::tensor::{DType, Tensor};
use promptclip_core::{features, zeroshot, Clip};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Decoded 8-bit pixels, row-major. The sizes are read as JavaScript numbers (f64) and checked
/// here: napi's u32 conversion wraps, so a width of 2^32 + 10 would have been taken as 10.
#[napi(object)]
pub struct NativeRawImage {
    pub width: f64,
    pub height: f64,
    /// 1 (grey), 3 (RGB) or 4 (RGBA).
    pub channels: f64,
    pub data: Uint8Array,
}

/// A raw image's size field as a whole number up to `max`, or why not (naming field and value).
fn raw_field(field: &str, v: f64, max: u32) -> std::result::Result<u32, String> {
    if v.fract() == 0.0 && (0.0..=max as f64).contains(&v) {
        Ok(v as u32)
    } else {
        Err(format!(
            "raw image {field} {v} is not a whole number from 0 to {max}"
        ))
    }
}

/// Images arrive as file paths, encoded bytes (a Buffer is a Uint8Array) or raw pixels.
pub fn image_sources(images: Vec<Either3<String, Uint8Array, NativeRawImage>>) -> Vec<ImageSource> {
    images
        .into_iter()
        .enumerate()
        .map(|(i, img)| match img {
            Either3::A(path) => ImageSource::Path(PathBuf::from(path)),
            Either3::B(bytes) => ImageSource::Bytes {
                name: format!("images[{i}] (bytes)"),
                data: Arc::from(bytes.to_vec()),
            },
            Either3::C(raw) => {
                let sizes = (|| {
                    Ok::<_, String>((
                        raw_field("width", raw.width, u32::MAX)?,
                        raw_field("height", raw.height, u32::MAX)?,
                        raw_field("channels", raw.channels, u8::MAX as u32)?,
                    ))
                })();
                match sizes {
                    Ok((width, height, channels)) => ImageSource::Pixels {
                        name: format!("images[{i}] (raw {width}x{height}x{channels})"),
                        width,
                        height,
                        channels: channels as u8,
                        data: Arc::from(raw.data.to_vec()),
                    },
                    // Reported at its index, as the batch reports its other unusable images.
                    Err(msg) => ImageSource::Invalid {
                        name: format!("images[{i}]"),
                        msg,
                    },
                }
            }
        })
        .collect()
}

/// Images processed so far by a batched call (encoding, zero-shot, prediction).
#[napi(object)]
#[derive(Clone)]
pub struct NativeBatchProgress {
    pub done: u32,
    pub total: u32,
}

/// The progress callback of batched calls. napi reads argument types by their spelling, so the
/// signatures it exports spell this out instead of naming the alias.
pub type BatchProgressFn =
    ThreadsafeFunction<NativeBatchProgress, Unknown<'static>, NativeBatchProgress, Status, false>;

/// The core's per-batch progress callback: forwards (done, total) to JavaScript without waiting,
/// and stops the work between batches once `cancel` is set (the TypeScript layer sets it when its
/// callback threw, so that the call rejects with that error instead of running on).
pub fn batch_reporter<'a>(
    on_progress: &'a Option<BatchProgressFn>,
    cancel: &'a Option<Arc<AtomicBool>>,
) -> impl FnMut(usize, usize) -> promptclip_core::Result<()> + 'a {
    move |done, total| {
        if let Some(f) = on_progress {
            let p = NativeBatchProgress {
                done: done as u32,
                total: total as u32,
            };
            f.call(p, ThreadsafeFunctionCallMode::NonBlocking);
        }
        match cancel {
            Some(c) if c.load(Ordering::Relaxed) => Err(promptclip_core::Error::cancelled()),
            _ => Ok(()),
        }
    }
}

/// Where the core leaves a batch size to the caller: its default when the caller gives none.
pub fn batch_size(given: Option<u32>) -> usize {
    given.map_or(features::BATCH_SIZE, |b| b as usize)
}

#[napi(object)]
pub struct NativeModelInfo {
    pub embed_dim: u32,
    pub image_size: u32,
    pub patch_size: u32,
    pub context_length: u32,
    pub vocab_size: u32,
    pub text_width: u32,
    pub vision_width: u32,
    pub text_layers: u32,
    pub vision_layers: u32,
    /// "vit" or "resnet" (OpenAI's ModifiedResNet: RN50, RN101, RN50x4, ...).
    pub vision_arch: String,
    /// A ResNet's Bottleneck blocks per stage ([3, 4, 6, 3] for RN50); absent for a ViT.
    pub resnet_layers: Option<Vec<u32>>,
    pub text_activation: String,
    /// The multiplier of the cosine similarities, exp(logit_scale) (about 100 in real models).
    pub logit_scale: f64,
    /// "huggingface" or "openai": the parameter names the weights file uses.
    pub naming: String,
    pub source: String,
    pub device: String,
    pub dtype: String,
}

#[napi(object)]
pub struct NativeImageFailure {
    pub index: u32,
    pub code: String,
    pub message: String,
}

pub fn failures(list: Vec<(usize, promptclip_core::Error)>) -> Vec<NativeImageFailure> {
    list.into_iter()
        .map(|(i, e)| NativeImageFailure {
            index: i as u32,
            code: e.code().into(),
            message: e.to_string(),
        })
        .collect()
}

#[napi(object)]
pub struct NativeEncodedImages {
    pub dim: u32,
    /// Input index of each embedding row.
    pub indices: Vec<u32>,
    /// Row-major (indices.length, dim).
    pub embeddings: Float32Array,
    pub failures: Vec<NativeImageFailure>,
}

#[napi(object)]
pub struct NativeEncodedTexts {
    pub dim: u32,
    pub embeddings: Float32Array,
}

/// Probabilities of the readable images over a class list.
#[napi(object)]
pub struct NativePredictions {
    /// The classes the columns stand for, as the caller named them.
    pub class_names: Vec<String>,
    pub indices: Vec<u32>,
    /// Row-major (indices.length, classNames.length).
    pub probs: Float32Array,
    pub failures: Vec<NativeImageFailure>,
}

/// Defaults of the calls whose options the TypeScript layer may leave out.
#[napi(object)]
pub struct NativeDefaults {
    pub batch_size: u32,
    pub top_k: u32,
    pub eval_top_k: Vec<u32>,
    pub template: String,
    /// The seed of runs, learners and sampled dataset fractions when none is given.
    pub seed: u32,
}

#[napi]
pub fn defaults() -> NativeDefaults {
    NativeDefaults {
        batch_size: features::BATCH_SIZE as u32,
        top_k: promptclip_core::eval::TOP_K as u32,
        eval_top_k: promptclip_core::eval::EVAL_TOP_K
            .iter()
            .map(|&k| k as u32)
            .collect(),
        template: zeroshot::DEFAULT_TEMPLATE.into(),
        seed: promptclip_core::rng::DEFAULT_SEED as u32,
    }
}

pub fn flat_f32(t: &Tensor) -> promptclip_core::Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

#[napi]
pub struct NativeClip {
    pub(crate) inner: Arc<Clip>,
}

#[napi(object)]
pub struct NativeLoadOptions {
    /// "cpu" (default), "cuda" or "cuda:N".
    pub device: Option<String>,
    /// "fp32" (default), "fp16" or "bf16": the dtype of weights and activations.
    pub dtype: Option<String>,
}

/// Load a CLIP checkpoint (Hugging Face folder or OpenAI-named safetensors file) off the main thread.
#[napi(ts_return_type = "Promise<NativeClip>")]
pub fn load_clip(
    path: String,
    options: Option<NativeLoadOptions>,
) -> AsyncTask<CoreTask<Clip, NativeClip>> {
    let (device, dtype) = options.map_or((None, None), |o| (o.device, o.dtype));
    CoreTask::new(
        move || {
            let device =
                promptclip_core::device::device_from_name(device.as_deref().unwrap_or("cpu"))?;
            let dtype =
                promptclip_core::device::dtype_from_name(dtype.as_deref().unwrap_or("fp32"))?;
            Clip::load_with_dtype(std::path::Path::new(&path), &device, dtype)
        },
        |clip| NativeClip {
            inner: Arc::new(clip),
        },
    )
}

/// Whether this build was compiled with CUDA support.
#[napi]
pub fn cuda_compiled() -> bool {
    promptclip_core::device::cuda_compiled()
}

#[napi]
impl NativeClip {
    #[napi(getter)]
    pub fn info(&self) -> NativeModelInfo {
        let c = &self.inner;
        let (t, v) = (&c.config.text_config, &c.config.vision_config);
        NativeModelInfo {
            embed_dim: c.embed_dim() as u32,
            image_size: v.image_size as u32,
            patch_size: v.patch_size as u32,
            context_length: t.max_position_embeddings as u32,
            vocab_size: t.vocab_size as u32,
            text_width: t.hidden_size as u32,
            // OpenAI's `vision_width`: a ResNet's stem width (64 for RN50), a ViT's token width.
            vision_width: v.resnet.map_or(v.hidden_size, |r| r.width) as u32,
            text_layers: t.num_hidden_layers as u32,
            vision_layers: v.num_hidden_layers as u32,
            vision_arch: if v.resnet.is_some() { "resnet" } else { "vit" }.into(),
            resnet_layers: v
                .resnet
                .map(|r| r.layers.iter().map(|&n| n as u32).collect()),
            text_activation: t.hidden_act.clone(),
            logit_scale: (c.logit_scale as f64).exp(),
            naming: match c.naming {
                promptclip_core::clip::weights::Naming::HuggingFace => "huggingface".into(),
                promptclip_core::clip::weights::Naming::OpenAi => "openai".into(),
            },
            source: c.source.display().to_string(),
            device: if c.device.is_cuda() {
                "cuda".into()
            } else {
                "cpu".into()
            },
            dtype: promptclip_core::device::dtype_name(c.dtype).into(),
        }
    }

    /// CLIP token ids ([SOS] ... [EOT], unpadded) for each text.
    #[napi]
    pub fn tokenize(&self, env: Env, texts: Vec<String>) -> napi::Result<Vec<Vec<u32>>> {
        sync(&env, || {
            texts
                .iter()
                .map(|t| self.inner.tokenizer.encode(t))
                .collect()
        })
    }

    /// `onProgress` after each batch; `cancel` stops the work between batches.
    #[napi(ts_return_type = "Promise<NativeEncodedImages>")]
    pub fn encode_images(
        &self,
        images: Vec<Either3<String, Uint8Array, NativeRawImage>>,
        batch: Option<u32>,
        on_progress: Option<
            ThreadsafeFunction<
                NativeBatchProgress,
                Unknown<'static>,
                NativeBatchProgress,
                Status,
                false,
            >,
        >,
        cancel: Option<&NativeCancelToken>,
    ) -> AsyncTask<CoreTask<NativeEncodedImages, NativeEncodedImages>> {
        let (clip, sources, bs) = (self.inner.clone(), image_sources(images), batch_size(batch));
        let cancel = cancel.map(|c| c.flag.clone());
        CoreTask::new(
            move || {
                let mut report = batch_reporter(&on_progress, &cancel);
                let enc = features::encode_with_progress(&clip, &sources, bs, &mut report)?;
                let data = enc
                    .features
                    .as_ref()
                    .map(flat_f32)
                    .transpose()?
                    .unwrap_or_default();
                Ok(NativeEncodedImages {
                    dim: clip.embed_dim() as u32,
                    indices: enc.indices.iter().map(|&i| i as u32).collect(),
                    embeddings: Float32Array::new(data),
                    failures: failures(enc.failures),
                })
            },
            |encoded| encoded,
        )
    }

    #[napi(ts_return_type = "Promise<NativeEncodedTexts>")]
    pub fn encode_texts(
        &self,
        texts: Vec<String>,
    ) -> AsyncTask<CoreTask<(u32, Vec<f32>), NativeEncodedTexts>> {
        let clip = self.inner.clone();
        CoreTask::new(
            move || {
                Ok((
                    clip.embed_dim() as u32,
                    flat_f32(&clip.encode_texts(&texts)?)?,
                ))
            },
            |(dim, data)| NativeEncodedTexts {
                dim,
                embeddings: Float32Array::new(data),
            },
        )
    }

    /// Zero-shot probabilities: each class's templates ensembled (mean of normalised features).
    /// `onProgress` after each batch of images; `cancel` stops the work between batches.
    #[napi(ts_return_type = "Promise<NativePredictions>")]
    pub fn zero_shot(
        &self,
        images: Vec<Either3<String, Uint8Array, NativeRawImage>>,
        class_names: Vec<String>,
        templates: Option<Vec<String>>,
        batch: Option<u32>,
        on_progress: Option<
            ThreadsafeFunction<
                NativeBatchProgress,
                Unknown<'static>,
                NativeBatchProgress,
                Status,
                false,
            >,
        >,
        cancel: Option<&NativeCancelToken>,
    ) -> AsyncTask<CoreTask<Classified, NativePredictions>> {
        let (clip, sources, bs) = (self.inner.clone(), image_sources(images), batch_size(batch));
        let templates = templates.unwrap_or_else(|| vec![zeroshot::DEFAULT_TEMPLATE.into()]);
        let cancel = cancel.map(|c| c.flag.clone());
        CoreTask::new(
            move || {
                // The cheap inputs are checked before any image is decoded.
                let classes = zeroshot::class_embeddings(&clip, &class_names, &templates)?;
                let mut report = batch_reporter(&on_progress, &cancel);
                let enc = features::encode_with_progress(&clip, &sources, bs, &mut report)?;
                let probs = match &enc.features {
                    Some(f) => flat_f32(&zeroshot::probabilities(&clip, f, &classes)?)?,
                    None => Vec::new(),
                };
                Ok(Classified {
                    class_names,
                    indices: enc.indices,
                    probs,
                    failures: enc.failures,
                })
            },
            Classified::into_js,
        )
    }
}

/// Probabilities over a class list, before conversion to JS.
pub struct Classified {
    pub class_names: Vec<String>,
    pub indices: Vec<usize>,
    pub probs: Vec<f32>,
    pub failures: Vec<(usize, promptclip_core::Error)>,
}

impl Classified {
    pub fn into_js(self) -> NativePredictions {
        NativePredictions {
            class_names: self.class_names,
            indices: self.indices.iter().map(|&i| i as u32).collect(),
            probs: Float32Array::new(self.probs),
            failures: failures(self.failures),
        }
    }
}
