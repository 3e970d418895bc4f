//! Node binding for promptclip. Deliberately thin: it converts arguments, runs the core crate's
//! work as `AsyncTask`s on libuv's thread pool, and turns core errors into JS errors whose message
//! starts with a stable code in brackets (`[E_MISSING_TENSOR] ...`); the TypeScript layer
//! (ts/errors.ts) lifts that code into `error.code`. Panics are caught here so none crosses FFI.
#![deny(clippy::all)]

use napi::bindgen_prelude::*;
use napi_derive::napi;
use promptclip_core::preprocess::ImageSource;
use promptclip_core::{zeroshot, Clip};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;

fn core_error(e: promptclip_core::Error) -> napi::Error {
    napi::Error::new(Status::GenericFailure, format!("[{}] {}", e.code(), e))
}

/// Run core work, mapping its errors and any panic to a JS error instead of aborting Node.
fn guarded<T>(f: impl FnOnce() -> promptclip_core::Result<T>) -> napi::Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(core_error),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(napi::Error::new(Status::GenericFailure, format!("[E_INTERNAL] internal error (please report): {msg}")))
        }
    }
}

/// Images arrive as file paths or encoded bytes (Buffer / Uint8Array).
fn image_sources(images: Vec<Either<String, Buffer>>) -> Vec<ImageSource> {
    images
        .into_iter()
        .enumerate()
        .map(|(i, img)| match img {
            Either::A(path) => ImageSource::Path(PathBuf::from(path)),
            Either::B(buf) => ImageSource::Bytes { name: format!("images[{i}] (buffer)"), data: Arc::from(Vec::<u8>::from(buf)) },
        })
        .collect()
}

#[napi(object)]
pub struct NativeLoadOptions {
    /// "cpu" (default), "cuda" or "cuda:N".
    pub device: Option<String>,
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
    pub text_activation: String,
    pub logit_scale: f64,
    /// "huggingface" or "openai": the parameter names the weights file uses.
    pub naming: String,
    pub source: String,
    pub device: String,
}

#[napi(object)]
pub struct NativeImageFailure {
    pub index: u32,
    pub code: String,
    pub message: String,
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

#[napi(object)]
pub struct NativeZeroShot {
    pub num_classes: u32,
    pub indices: Vec<u32>,
    /// Row-major (indices.length, num_classes) probabilities.
    pub probs: Float32Array,
    pub failures: Vec<NativeImageFailure>,
}

fn failures(list: Vec<(usize, promptclip_core::Error)>) -> Vec<NativeImageFailure> {
    list.into_iter()
        .map(|(i, e)| NativeImageFailure { index: i as u32, code: e.code().into(), message: e.to_string() })
        .collect()
}

fn flat_f32(t: &candle_core_tensor::Tensor) -> promptclip_core::Result<Vec<f32>> {
    Ok(t.to_dtype(candle_core_tensor::DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

// The binding reaches tensors only through the core crate's re-export.
use promptclip_core::tensor as candle_core_tensor;

#[napi]
pub struct NativeClip {
    inner: Arc<Clip>,
}

pub struct LoadTask {
    path: String,
    device: String,
}

impl Task for LoadTask {
    type Output = Clip;
    type JsValue = NativeClip;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        let (path, device) = (self.path.clone(), self.device.clone());
        guarded(move || {
            let device = promptclip_core::device::device_from_name(&device)?;
            Clip::load(std::path::Path::new(&path), &device)
        })
    }

    fn resolve(&mut self, _env: Env, output: Self::Output) -> napi::Result<Self::JsValue> {
        Ok(NativeClip { inner: Arc::new(output) })
    }
}

/// Load a CLIP checkpoint (Hugging Face folder or OpenAI-named safetensors file) off the main thread.
#[napi(ts_return_type = "Promise<NativeClip>")]
pub fn load_clip(path: String, options: Option<NativeLoadOptions>) -> AsyncTask<LoadTask> {
    let device = options.and_then(|o| o.device).unwrap_or_else(|| "cpu".into());
    AsyncTask::new(LoadTask { path, device })
}

/// Whether this build was compiled with CUDA support.
#[napi]
pub fn cuda_compiled() -> bool {
    promptclip_core::device::cuda_compiled()
}

pub struct EncodeImagesTask {
    clip: Arc<Clip>,
    sources: Vec<ImageSource>,
    batch_size: usize,
}

impl Task for EncodeImagesTask {
    type Output = (usize, Vec<u32>, Vec<f32>, Vec<NativeImageFailure>);
    type JsValue = NativeEncodedImages;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        let (clip, sources, bs) = (self.clip.clone(), std::mem::take(&mut self.sources), self.batch_size);
        guarded(move || {
            let enc = zeroshot::encode_image_sources(&clip, &sources, bs)?;
            let data = match &enc.features {
                Some(f) => flat_f32(f)?,
                None => Vec::new(),
            };
            Ok((clip.embed_dim(), enc.indices.iter().map(|&i| i as u32).collect(), data, failures(enc.failures)))
        })
    }

    fn resolve(&mut self, _env: Env, (dim, indices, data, failures): Self::Output) -> napi::Result<Self::JsValue> {
        Ok(NativeEncodedImages { dim: dim as u32, indices, embeddings: Float32Array::new(data), failures })
    }
}

pub struct EncodeTextsTask {
    clip: Arc<Clip>,
    texts: Vec<String>,
}

impl Task for EncodeTextsTask {
    type Output = (usize, Vec<f32>);
    type JsValue = NativeEncodedTexts;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        let (clip, texts) = (self.clip.clone(), std::mem::take(&mut self.texts));
        guarded(move || Ok((clip.embed_dim(), flat_f32(&clip.encode_texts(&texts)?)?)))
    }

    fn resolve(&mut self, _env: Env, (dim, data): Self::Output) -> napi::Result<Self::JsValue> {
        Ok(NativeEncodedTexts { dim: dim as u32, embeddings: Float32Array::new(data) })
    }
}

pub struct ZeroShotTask {
    clip: Arc<Clip>,
    sources: Vec<ImageSource>,
    class_names: Vec<String>,
    templates: Vec<String>,
    batch_size: usize,
}

impl Task for ZeroShotTask {
    type Output = (usize, Vec<u32>, Vec<f32>, Vec<NativeImageFailure>);
    type JsValue = NativeZeroShot;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        let clip = self.clip.clone();
        let sources = std::mem::take(&mut self.sources);
        let (names, templates, bs) = (self.class_names.clone(), self.templates.clone(), self.batch_size);
        guarded(move || {
            // Validate the cheap inputs before decoding any image.
            let classes = zeroshot::class_embeddings(&clip, &names, &templates)?;
            let enc = zeroshot::encode_image_sources(&clip, &sources, bs)?;
            let probs = match &enc.features {
                Some(f) => flat_f32(&zeroshot::probabilities(&clip, f, &classes)?)?,
                None => Vec::new(),
            };
            Ok((names.len(), enc.indices.iter().map(|&i| i as u32).collect(), probs, failures(enc.failures)))
        })
    }

    fn resolve(&mut self, _env: Env, (k, indices, probs, failures): Self::Output) -> napi::Result<Self::JsValue> {
        Ok(NativeZeroShot { num_classes: k as u32, indices, probs: Float32Array::new(probs), failures })
    }
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
            vision_width: v.hidden_size as u32,
            text_layers: t.num_hidden_layers as u32,
            vision_layers: v.num_hidden_layers as u32,
            text_activation: t.hidden_act.clone(),
            logit_scale: c.logit_scale as f64,
            naming: match c.naming {
                promptclip_core::clip::weights::Naming::HuggingFace => "huggingface".into(),
                promptclip_core::clip::weights::Naming::OpenAi => "openai".into(),
            },
            source: c.source.display().to_string(),
            device: if c.device.is_cuda() { "cuda".into() } else { "cpu".into() },
        }
    }

    /// CLIP token ids ([SOS] ... [EOT], unpadded) for each text.
    #[napi]
    pub fn tokenize(&self, texts: Vec<String>) -> napi::Result<Vec<Vec<u32>>> {
        let clip = self.inner.clone();
        guarded(move || texts.iter().map(|t| clip.tokenizer.encode(t)).collect())
    }

    #[napi(ts_return_type = "Promise<NativeEncodedImages>")]
    pub fn encode_images(&self, images: Vec<Either<String, Buffer>>, batch_size: Option<u32>) -> AsyncTask<EncodeImagesTask> {
        AsyncTask::new(EncodeImagesTask { clip: self.inner.clone(), sources: image_sources(images), batch_size: batch_size.unwrap_or(32) as usize })
    }

    #[napi(ts_return_type = "Promise<NativeEncodedTexts>")]
    pub fn encode_texts(&self, texts: Vec<String>) -> AsyncTask<EncodeTextsTask> {
        AsyncTask::new(EncodeTextsTask { clip: self.inner.clone(), texts })
    }

    #[napi(ts_return_type = "Promise<NativeZeroShot>")]
    pub fn zero_shot(&self, images: Vec<Either<String, Buffer>>, class_names: Vec<String>, templates: Vec<String>, batch_size: Option<u32>) -> AsyncTask<ZeroShotTask> {
        AsyncTask::new(ZeroShotTask {
            clip: self.inner.clone(),
            sources: image_sources(images),
            class_names,
            templates,
            batch_size: batch_size.unwrap_or(32) as usize,
        })
    }
}
