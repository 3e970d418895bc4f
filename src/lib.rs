//! Node binding for promptclip. Deliberately thin: it converts arguments, runs the core crate's
//! work as `AsyncTask`s on libuv's thread pool, and turns core errors into JS errors whose message
//! starts with a stable code in brackets (`[E_MISSING_TENSOR] ...`); the TypeScript layer
//! (ts/errors.ts) lifts that code into `error.code`. Panics are caught here so none crosses FFI.
#![deny(clippy::all)]

/// A caching allocator: CPU inference allocates tens of MB per op, which glibc maps fresh (and
/// zeroes through page faults) every time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
            Err(napi::Error::new(
                Status::GenericFailure,
                format!("[E_INTERNAL] internal error (please report): {msg}"),
            ))
        }
    }
}

/// Decoded 8-bit pixels, row-major.
#[napi(object)]
pub struct NativeRawImage {
    pub width: u32,
    pub height: u32,
    /// 1 (grey), 3 (RGB) or 4 (RGBA).
    pub channels: u32,
    pub data: Buffer,
}

type ImageArg = Either3<String, Buffer, NativeRawImage>;

/// Images arrive as file paths, encoded bytes (Buffer / Uint8Array) or raw pixels.
fn image_sources(images: Vec<ImageArg>) -> Vec<ImageSource> {
    images
        .into_iter()
        .enumerate()
        .map(|(i, img)| match img {
            Either3::A(path) => ImageSource::Path(PathBuf::from(path)),
            Either3::B(buf) => ImageSource::Bytes {
                name: format!("images[{i}] (buffer)"),
                data: Arc::from(Vec::<u8>::from(buf)),
            },
            Either3::C(raw) => ImageSource::Pixels {
                name: format!(
                    "images[{i}] (raw {}x{}x{})",
                    raw.width, raw.height, raw.channels
                ),
                width: raw.width,
                height: raw.height,
                channels: raw.channels.min(255) as u8,
                data: Arc::from(Vec::<u8>::from(raw.data)),
            },
        })
        .collect()
}

#[napi(object)]
pub struct NativeLoadOptions {
    /// "cpu" (default), "cuda" or "cuda:N".
    pub device: Option<String>,
    /// "fp32" (default), "fp16" or "bf16": the dtype of weights and activations.
    pub dtype: Option<String>,
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
    pub dtype: String,
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
        .map(|(i, e)| NativeImageFailure {
            index: i as u32,
            code: e.code().into(),
            message: e.to_string(),
        })
        .collect()
}

fn flat_f32(t: &candle_core_tensor::Tensor) -> promptclip_core::Result<Vec<f32>> {
    Ok(t.to_dtype(candle_core_tensor::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

type Classified = (usize, Vec<u32>, Vec<f32>, Vec<NativeImageFailure>);

/// Probabilities of each readable image against normalised class embeddings (K, E).
fn classify(
    clip: &Clip,
    classes: &candle_core_tensor::Tensor,
    sources: &[ImageSource],
    batch_size: usize,
) -> promptclip_core::Result<Classified> {
    let enc = zeroshot::encode_image_sources(clip, sources, batch_size)?;
    let probs = match &enc.features {
        Some(f) => flat_f32(&zeroshot::probabilities(clip, f, classes)?)?,
        None => Vec::new(),
    };
    Ok((
        classes.dim(0)?,
        enc.indices.iter().map(|&i| i as u32).collect(),
        probs,
        failures(enc.failures),
    ))
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
    dtype: String,
}

impl Task for LoadTask {
    type Output = Clip;
    type JsValue = NativeClip;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        let (path, device, dtype) = (self.path.clone(), self.device.clone(), self.dtype.clone());
        guarded(move || {
            let device = promptclip_core::device::device_from_name(&device)?;
            let dtype = promptclip_core::device::dtype_from_name(&dtype)?;
            Clip::load_with_dtype(std::path::Path::new(&path), &device, dtype)
        })
    }

    fn resolve(&mut self, _env: Env, output: Self::Output) -> napi::Result<Self::JsValue> {
        Ok(NativeClip {
            inner: Arc::new(output),
        })
    }
}

/// Load a CLIP checkpoint (Hugging Face folder or OpenAI-named safetensors file) off the main thread.
#[napi(ts_return_type = "Promise<NativeClip>")]
pub fn load_clip(path: String, options: Option<NativeLoadOptions>) -> AsyncTask<LoadTask> {
    let (device, dtype) = match options {
        Some(o) => (o.device, o.dtype),
        None => (None, None),
    };
    AsyncTask::new(LoadTask {
        path,
        device: device.unwrap_or_else(|| "cpu".into()),
        dtype: dtype.unwrap_or_else(|| "fp32".into()),
    })
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
        let (clip, sources, bs) = (
            self.clip.clone(),
            std::mem::take(&mut self.sources),
            self.batch_size,
        );
        guarded(move || {
            let enc = zeroshot::encode_image_sources(&clip, &sources, bs)?;
            let data = match &enc.features {
                Some(f) => flat_f32(f)?,
                None => Vec::new(),
            };
            Ok((
                clip.embed_dim(),
                enc.indices.iter().map(|&i| i as u32).collect(),
                data,
                failures(enc.failures),
            ))
        })
    }

    fn resolve(
        &mut self,
        _env: Env,
        (dim, indices, data, failures): Self::Output,
    ) -> napi::Result<Self::JsValue> {
        Ok(NativeEncodedImages {
            dim: dim as u32,
            indices,
            embeddings: Float32Array::new(data),
            failures,
        })
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
        Ok(NativeEncodedTexts {
            dim: dim as u32,
            embeddings: Float32Array::new(data),
        })
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
    type Output = Classified;
    type JsValue = NativeZeroShot;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        let clip = self.clip.clone();
        let sources = std::mem::take(&mut self.sources);
        let (names, templates, bs) = (
            self.class_names.clone(),
            self.templates.clone(),
            self.batch_size,
        );
        guarded(move || {
            // Validate the cheap inputs before decoding any image.
            let classes = zeroshot::class_embeddings(&clip, &names, &templates)?;
            classify(&clip, &classes, &sources, bs)
        })
    }

    fn resolve(
        &mut self,
        _env: Env,
        (k, indices, probs, failures): Self::Output,
    ) -> napi::Result<Self::JsValue> {
        Ok(NativeZeroShot {
            num_classes: k as u32,
            indices,
            probs: Float32Array::new(probs),
            failures,
        })
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
    pub fn tokenize(&self, texts: Vec<String>) -> napi::Result<Vec<Vec<u32>>> {
        let clip = self.inner.clone();
        guarded(move || texts.iter().map(|t| clip.tokenizer.encode(t)).collect())
    }

    #[napi(ts_return_type = "Promise<NativeEncodedImages>")]
    pub fn encode_images(
        &self,
        images: Vec<ImageArg>,
        batch_size: Option<u32>,
    ) -> AsyncTask<EncodeImagesTask> {
        AsyncTask::new(EncodeImagesTask {
            clip: self.inner.clone(),
            sources: image_sources(images),
            batch_size: batch_size.unwrap_or(32) as usize,
        })
    }

    #[napi(ts_return_type = "Promise<NativeEncodedTexts>")]
    pub fn encode_texts(&self, texts: Vec<String>) -> AsyncTask<EncodeTextsTask> {
        AsyncTask::new(EncodeTextsTask {
            clip: self.inner.clone(),
            texts,
        })
    }

    #[napi(ts_return_type = "Promise<NativeZeroShot>")]
    pub fn zero_shot(
        &self,
        images: Vec<ImageArg>,
        class_names: Vec<String>,
        templates: Vec<String>,
        batch_size: Option<u32>,
    ) -> AsyncTask<ZeroShotTask> {
        AsyncTask::new(ZeroShotTask {
            clip: self.inner.clone(),
            sources: image_sources(images),
            class_names,
            templates,
            batch_size: batch_size.unwrap_or(32) as usize,
        })
    }
}

// ---------------------------------------------------------------- prompt learning (CoOp, CoCoOp)

use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use promptclip_core::prompt::io::{load_learner, save_learner};
use promptclip_core::prompt::{
    ClassTokenPosition, CocoopConfig, CocoopLearner, ContextInit, CoopConfig, Learner,
    PromptLearner,
};
use promptclip_core::train::schedule::ScheduleKind;
use promptclip_core::train::{fit, LabelledImages, Progress, TrainConfig};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

#[napi(object)]
pub struct NativeCoopOptions {
    pub class_names: Vec<String>,
    pub n_ctx: Option<u32>,
    pub class_specific: Option<bool>,
    /// "end" | "middle" | "front"
    pub position: Option<String>,
    /// Initialise the context from these words (sets nCtx to their token count).
    pub ctx_init: Option<String>,
    pub init_std: Option<f64>,
    pub seed: Option<u32>,
    /// CoCoOp only: Meta-Net bottleneck ratio (hidden = imageDim / ratio; default 16).
    pub meta_net_ratio: Option<u32>,
    /// CoCoOp only: activation memory for the B x K prompts at once, in MiB (default 2048).
    pub memory_budget_mb: Option<u32>,
}

#[napi(object)]
pub struct NativeLearnerInfo {
    pub method: String,
    pub n_ctx: u32,
    pub class_specific: bool,
    pub position: String,
    pub class_names: Vec<String>,
    pub prompt_prefix: String,
    pub ctx_dim: u32,
    pub meta_net_hidden: Option<u32>,
}

/// A learned prompt bound to the CLIP it runs on. Training holds the lock for its duration.
#[napi]
pub struct NativePromptLearner {
    clip: Arc<Clip>,
    inner: Arc<Mutex<Learner>>,
}

fn lock(m: &Mutex<Learner>) -> promptclip_core::Result<std::sync::MutexGuard<'_, Learner>> {
    m.lock().map_err(|_| {
        promptclip_core::Error::Internal(
            "prompt learner state was poisoned by an earlier failure".into(),
        )
    })
}

/// For synchronous calls on the main thread: never wait for a training task to finish.
fn lock_now(m: &Mutex<Learner>) -> promptclip_core::Result<std::sync::MutexGuard<'_, Learner>> {
    m.try_lock().map_err(|e| match e {
        std::sync::TryLockError::WouldBlock => promptclip_core::Error::Busy(
            "the prompt learner is training; read it after fit() resolves".into(),
        ),
        std::sync::TryLockError::Poisoned(_) => promptclip_core::Error::Internal(
            "prompt learner state was poisoned by an earlier failure".into(),
        ),
    })
}

/// Cancellation flag shared with a running task; the TypeScript layer ties it to an AbortSignal.
#[napi]
pub struct NativeCancelToken {
    flag: Arc<AtomicBool>,
}

#[napi]
impl NativeCancelToken {
    #[napi(constructor)]
    pub fn new() -> Self {
        Self {
            flag: Arc::new(AtomicBool::new(false)),
        }
    }

    #[napi]
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::Relaxed);
    }
}

impl Default for NativeCancelToken {
    fn default() -> Self {
        Self::new()
    }
}

fn coop_config(
    o: &NativeCoopOptions,
    default_init: Option<&str>,
) -> promptclip_core::Result<CoopConfig> {
    let position = ClassTokenPosition::parse(o.position.as_deref().unwrap_or("end"))?;
    let words = o
        .ctx_init
        .clone()
        .or_else(|| default_init.map(String::from))
        .filter(|s| !s.trim().is_empty());
    let init = match words {
        Some(words) => ContextInit::Words(words),
        None => ContextInit::Random {
            std: o.init_std.unwrap_or(0.02),
            seed: o.seed.unwrap_or(1) as u64,
        },
    };
    Ok(CoopConfig {
        n_ctx: o.n_ctx.unwrap_or(16) as usize,
        class_specific: o.class_specific.unwrap_or(false),
        position,
        init,
    })
}

#[napi]
pub fn create_coop(
    clip: &NativeClip,
    options: NativeCoopOptions,
) -> napi::Result<NativePromptLearner> {
    let clip = clip.inner.clone();
    guarded(move || {
        let learner =
            PromptLearner::new(&clip, &options.class_names, coop_config(&options, None)?)?;
        Ok(NativePromptLearner {
            clip,
            inner: Arc::new(Mutex::new(Learner::Coop(learner))),
        })
    })
}

/// CoCoOp: context from "a photo of a" unless `nCtx`/`ctxInit` say otherwise, plus a Meta-Net.
#[napi]
pub fn create_cocoop(
    clip: &NativeClip,
    options: NativeCoopOptions,
) -> napi::Result<NativePromptLearner> {
    let clip = clip.inner.clone();
    guarded(move || {
        let default_init = if options.n_ctx.is_some() {
            None
        } else {
            Some("a photo of a")
        };
        let d = CocoopConfig::default();
        let config = CocoopConfig {
            coop: coop_config(&options, default_init)?,
            ratio: options
                .meta_net_ratio
                .map(|r| r as usize)
                .unwrap_or(d.ratio),
            seed: options.seed.map(|s| s as u64).unwrap_or(d.seed),
            memory_budget_bytes: options
                .memory_budget_mb
                .map(|m| (m as usize) << 20)
                .unwrap_or(d.memory_budget_bytes),
        };
        let learner = CocoopLearner::new(&clip, &options.class_names, config)?;
        Ok(NativePromptLearner {
            clip,
            inner: Arc::new(Mutex::new(Learner::Cocoop(learner))),
        })
    })
}

pub struct LoadPromptTask {
    clip: Arc<Clip>,
    path: String,
}

impl Task for LoadPromptTask {
    type Output = Learner;
    type JsValue = NativePromptLearner;
    fn compute(&mut self) -> napi::Result<Self::Output> {
        let (clip, path) = (self.clip.clone(), self.path.clone());
        guarded(move || Ok(load_learner(std::path::Path::new(&path), &clip)?.0))
    }
    fn resolve(&mut self, _env: Env, output: Self::Output) -> napi::Result<Self::JsValue> {
        Ok(NativePromptLearner {
            clip: self.clip.clone(),
            inner: Arc::new(Mutex::new(output)),
        })
    }
}

#[napi(ts_return_type = "Promise<NativePromptLearner>")]
pub fn load_prompt_learner(clip: &NativeClip, path: String) -> AsyncTask<LoadPromptTask> {
    AsyncTask::new(LoadPromptTask {
        clip: clip.inner.clone(),
        path,
    })
}

#[napi(object)]
pub struct NativeTrainOptions {
    pub epochs: Option<u32>,
    pub batch_size: Option<u32>,
    pub lr: Option<f64>,
    pub momentum: Option<f64>,
    pub weight_decay: Option<f64>,
    /// "cosine" | "constant"
    pub schedule: Option<String>,
    pub warmup_epochs: Option<u32>,
    pub warmup_lr: Option<f64>,
    pub seed: Option<u32>,
    pub augment: Option<bool>,
    pub checkpoint_path: Option<String>,
    pub checkpoint_every: Option<u32>,
    pub resume_from: Option<String>,
}

#[napi(object)]
#[derive(Clone)]
pub struct NativeProgress {
    pub epoch: u32,
    pub epochs: u32,
    pub step: u32,
    pub steps_per_epoch: u32,
    pub global_step: u32,
    pub loss: f64,
    pub epoch_loss: f64,
    pub epoch_accuracy: f64,
    pub lr: f64,
}

#[napi(object)]
pub struct NativeTrainSummary {
    pub epochs: u32,
    pub start_epoch: u32,
    pub global_step: u32,
    pub epoch_loss: Vec<f64>,
    pub epoch_accuracy: Vec<f64>,
    pub seconds: f64,
}

/// Defaults follow each method's paper: CoOp 50 epochs at batch 32 (set epochs for your shots),
/// CoCoOp 10 epochs at batch 1; both lr 0.002.
fn train_config(o: NativeTrainOptions, method: &str) -> promptclip_core::Result<TrainConfig> {
    let d = TrainConfig::default();
    let (epochs, batch) = if method == "cocoop" {
        (10, 1)
    } else {
        (d.epochs, d.batch_size)
    };
    let schedule = match o.schedule.as_deref() {
        None | Some("cosine") => ScheduleKind::Cosine,
        Some("constant") => ScheduleKind::Constant,
        Some(other) => {
            return Err(promptclip_core::Error::InvalidArgument(format!(
                "schedule `{other}`: expected \"cosine\" or \"constant\""
            )))
        }
    };
    Ok(TrainConfig {
        epochs: o.epochs.map(|x| x as usize).unwrap_or(epochs),
        batch_size: o.batch_size.map(|x| x as usize).unwrap_or(batch),
        sgd: promptclip_core::train::optim::SgdConfig {
            lr: o.lr.unwrap_or(d.sgd.lr),
            momentum: o.momentum.unwrap_or(d.sgd.momentum),
            weight_decay: o.weight_decay.unwrap_or(d.sgd.weight_decay),
            ..d.sgd
        },
        schedule,
        warmup_epochs: o
            .warmup_epochs
            .map(|x| x as usize)
            .unwrap_or(d.warmup_epochs),
        warmup_lr: o.warmup_lr.unwrap_or(d.warmup_lr),
        seed: o.seed.map(|x| x as u64).unwrap_or(d.seed),
        augment: o.augment.unwrap_or(d.augment),
        checkpoint_path: o.checkpoint_path.map(PathBuf::from),
        checkpoint_every: o
            .checkpoint_every
            .map(|x| x as usize)
            .unwrap_or(d.checkpoint_every),
        resume_from: o.resume_from.map(PathBuf::from),
        ..d
    })
}

type ProgressFn =
    ThreadsafeFunction<NativeProgress, Unknown<'static>, NativeProgress, Status, false>;

pub struct TrainTask {
    clip: Arc<Clip>,
    learner: Arc<Mutex<Learner>>,
    data: Option<LabelledImages>,
    options: Option<NativeTrainOptions>,
    on_progress: Option<Arc<ProgressFn>>,
    cancel: Arc<AtomicBool>,
}

impl Task for TrainTask {
    type Output = promptclip_core::train::TrainSummary;
    type JsValue = NativeTrainSummary;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        let (clip, learner, cancel) =
            (self.clip.clone(), self.learner.clone(), self.cancel.clone());
        let data = self.data.take();
        let options = self.options.take();
        let on_progress = self.on_progress.clone();
        guarded(move || {
            let ran_twice = || promptclip_core::Error::Internal("train task ran twice".into());
            let data = data.ok_or_else(ran_twice)?;
            let learner = lock(&learner)?;
            let config = train_config(options.ok_or_else(ran_twice)?, learner.method())?;
            let mut report = |p: &Progress| {
                if let Some(f) = &on_progress {
                    let value = NativeProgress {
                        epoch: p.epoch as u32,
                        epochs: p.epochs as u32,
                        step: p.step as u32,
                        steps_per_epoch: p.steps_per_epoch as u32,
                        global_step: p.global_step as u32,
                        loss: p.loss as f64,
                        epoch_loss: p.epoch_loss as f64,
                        epoch_accuracy: p.epoch_accuracy as f64,
                        lr: p.lr,
                    };
                    f.call(value, ThreadsafeFunctionCallMode::NonBlocking);
                }
            };
            match &*learner {
                Learner::Coop(l) => fit(&clip, l, &data, &config, &mut report, &cancel),
                Learner::Cocoop(l) => fit(&clip, l, &data, &config, &mut report, &cancel),
            }
        })
    }

    fn resolve(&mut self, _env: Env, s: Self::Output) -> napi::Result<Self::JsValue> {
        Ok(NativeTrainSummary {
            epochs: s.epochs as u32,
            start_epoch: s.start_epoch as u32,
            global_step: s.global_step as u32,
            epoch_loss: s.epoch_loss.iter().map(|&x| x as f64).collect(),
            epoch_accuracy: s.epoch_accuracy.iter().map(|&x| x as f64).collect(),
            seconds: s.seconds,
        })
    }
}

#[napi(object)]
pub struct NativeInterpretRow {
    /// Context position (0-based); with class-specific context, rows run class by class.
    pub position: u32,
    pub class_index: Option<u32>,
    pub tokens: Vec<String>,
    pub token_ids: Vec<u32>,
    pub distances: Vec<f64>,
}

pub struct InterpretTask {
    clip: Arc<Clip>,
    learner: Arc<Mutex<Learner>>,
    k: usize,
}

impl Task for InterpretTask {
    type Output = Vec<NativeInterpretRow>;
    type JsValue = Vec<NativeInterpretRow>;
    fn compute(&mut self) -> napi::Result<Self::Output> {
        let (clip, learner, k) = (self.clip.clone(), self.learner.clone(), self.k);
        guarded(move || {
            let learner = lock(&learner)?;
            let prompt = learner.prompt();
            let m = prompt.n_ctx();
            let csc = prompt.config.class_specific;
            Ok(prompt
                .interpret(&clip, k)?
                .into_iter()
                .enumerate()
                .map(|(r, near)| NativeInterpretRow {
                    position: (r % m) as u32,
                    class_index: csc.then_some((r / m) as u32),
                    token_ids: near.iter().map(|n| n.0).collect(),
                    tokens: near.iter().map(|n| n.1.clone()).collect(),
                    distances: near.iter().map(|n| n.2 as f64).collect(),
                })
                .collect())
        })
    }
    fn resolve(&mut self, _env: Env, output: Self::Output) -> napi::Result<Self::JsValue> {
        Ok(output)
    }
}

#[napi(object)]
#[derive(Clone)]
pub struct NativePredictProgress {
    pub done: u32,
    pub total: u32,
}

type PredictProgressFn = ThreadsafeFunction<
    NativePredictProgress,
    Unknown<'static>,
    NativePredictProgress,
    Status,
    false,
>;

pub struct PredictTask {
    clip: Arc<Clip>,
    learner: Arc<Mutex<Learner>>,
    sources: Vec<ImageSource>,
    class_names: Option<Vec<String>>,
    batch_size: usize,
    on_progress: Option<Arc<PredictProgressFn>>,
}

impl Task for PredictTask {
    type Output = Classified;
    type JsValue = NativeZeroShot;
    fn compute(&mut self) -> napi::Result<Self::Output> {
        let (clip, learner, bs) = (self.clip.clone(), self.learner.clone(), self.batch_size);
        let sources = std::mem::take(&mut self.sources);
        let names = self.class_names.take();
        let on_progress = self.on_progress.clone();
        guarded(move || {
            let learner = lock(&learner)?;
            let mut report = |done: usize, total: usize| {
                if let Some(f) = &on_progress {
                    f.call(
                        NativePredictProgress {
                            done: done as u32,
                            total: total as u32,
                        },
                        ThreadsafeFunctionCallMode::NonBlocking,
                    );
                }
            };
            let p = promptclip_core::prompt::predict(
                &clip,
                &learner,
                &sources,
                names.as_deref(),
                bs,
                &mut report,
            )?;
            Ok((
                p.num_classes,
                p.indices.iter().map(|&i| i as u32).collect(),
                p.probs,
                failures(p.failures),
            ))
        })
    }
    fn resolve(
        &mut self,
        _env: Env,
        (k, indices, probs, failures): Self::Output,
    ) -> napi::Result<Self::JsValue> {
        Ok(NativeZeroShot {
            num_classes: k as u32,
            indices,
            probs: Float32Array::new(probs),
            failures,
        })
    }
}

pub struct SavePromptTask {
    clip: Arc<Clip>,
    learner: Arc<Mutex<Learner>>,
    path: String,
}

impl Task for SavePromptTask {
    type Output = ();
    type JsValue = ();
    fn compute(&mut self) -> napi::Result<()> {
        let (clip, learner, path) = (self.clip.clone(), self.learner.clone(), self.path.clone());
        guarded(move || save_learner(std::path::Path::new(&path), &*lock(&learner)?, &clip))
    }
    fn resolve(&mut self, _env: Env, _o: ()) -> napi::Result<()> {
        Ok(())
    }
}

#[napi]
impl NativePromptLearner {
    #[napi(getter)]
    pub fn info(&self) -> napi::Result<NativeLearnerInfo> {
        let inner = self.inner.clone();
        guarded(move || {
            let learner = lock_now(&inner)?;
            let l = learner.prompt();
            Ok(NativeLearnerInfo {
                method: learner.method().into(),
                n_ctx: l.n_ctx() as u32,
                class_specific: l.config.class_specific,
                position: l.config.position.as_str().into(),
                class_names: l.buffers.class_names.clone(),
                prompt_prefix: l.prompt_prefix().into(),
                ctx_dim: l.ctx.dims().last().copied().unwrap_or(0) as u32,
                meta_net_hidden: match &*learner {
                    Learner::Cocoop(c) => Some(c.meta.hidden() as u32),
                    Learner::Coop(_) => None,
                },
            })
        })
    }

    /// The learned context as a flat Float32Array ((M, d) or (K, M, d), row-major).
    #[napi]
    pub fn context(&self) -> napi::Result<Float32Array> {
        let inner = self.inner.clone();
        guarded(move || {
            Ok(Float32Array::new(flat_f32(
                lock_now(&inner)?.prompt().ctx.as_tensor(),
            )?))
        })
    }

    #[napi(ts_return_type = "Promise<NativeTrainSummary>")]
    pub fn train(
        &self,
        images: Vec<ImageArg>,
        labels: Vec<u32>,
        options: NativeTrainOptions,
        on_progress: Option<ProgressFn>,
        cancel: Option<&NativeCancelToken>,
    ) -> AsyncTask<TrainTask> {
        AsyncTask::new(TrainTask {
            clip: self.clip.clone(),
            learner: self.inner.clone(),
            data: Some(LabelledImages {
                sources: image_sources(images),
                labels: labels.into_iter().map(|l| l as usize).collect(),
            }),
            options: Some(options),
            on_progress: on_progress.map(Arc::new),
            cancel: cancel.map(|c| c.flag.clone()).unwrap_or_default(),
        })
    }

    #[napi(ts_return_type = "Promise<NativeZeroShot>")]
    pub fn predict(
        &self,
        images: Vec<ImageArg>,
        class_names: Option<Vec<String>>,
        batch_size: Option<u32>,
        on_progress: Option<PredictProgressFn>,
    ) -> AsyncTask<PredictTask> {
        AsyncTask::new(PredictTask {
            clip: self.clip.clone(),
            learner: self.inner.clone(),
            sources: image_sources(images),
            class_names,
            batch_size: batch_size.unwrap_or(32) as usize,
            on_progress: on_progress.map(Arc::new),
        })
    }

    #[napi(ts_return_type = "Promise<NativeInterpretRow[]>")]
    pub fn interpret(&self, top_k: Option<u32>) -> AsyncTask<InterpretTask> {
        AsyncTask::new(InterpretTask {
            clip: self.clip.clone(),
            learner: self.inner.clone(),
            k: top_k.unwrap_or(5).max(1) as usize,
        })
    }

    #[napi(ts_return_type = "Promise<void>")]
    pub fn save(&self, path: String) -> AsyncTask<SavePromptTask> {
        AsyncTask::new(SavePromptTask {
            clip: self.clip.clone(),
            learner: self.inner.clone(),
            path,
        })
    }
}

#[napi(object)]
pub struct NativeMetrics {
    pub total: u32,
    pub correct: u32,
    pub accuracy: f64,
    pub error_rate: f64,
    pub macro_f1: f64,
    /// NaN for classes without examples.
    pub per_class_accuracy: Vec<f64>,
    pub confusion: Vec<Vec<u32>>,
    pub top_k: Vec<Vec<f64>>,
}

/// Dassl-style metrics from row-major scores (N x numClasses) and labels.
#[napi]
pub fn compute_metrics(
    scores: Float32Array,
    num_classes: u32,
    labels: Vec<u32>,
    top_k: Vec<u32>,
) -> napi::Result<NativeMetrics> {
    let scores = scores.to_vec();
    guarded(move || {
        let labels: Vec<usize> = labels.into_iter().map(|l| l as usize).collect();
        let ks: Vec<usize> = top_k.into_iter().map(|k| k as usize).collect();
        let m = promptclip_core::eval::metrics(&scores, num_classes as usize, &labels, &ks)?;
        Ok(NativeMetrics {
            total: m.total as u32,
            correct: m.correct as u32,
            accuracy: m.accuracy,
            error_rate: m.error_rate,
            macro_f1: m.macro_f1,
            per_class_accuracy: m
                .per_class_accuracy
                .iter()
                .map(|a| a.unwrap_or(f64::NAN))
                .collect(),
            confusion: m.confusion,
            top_k: m.top_k.iter().map(|&(k, a)| vec![k as f64, a]).collect(),
        })
    })
}
