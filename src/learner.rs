//! Learners of every registered method, through the core's one seam: create by method name with
//! the method's own options, load, save, read `info` and the context, predict, interpret.
use crate::cancel::NativeCancelToken;
use crate::clip::{
    batch_reporter, batch_size, flat_f32, image_sources, Classified, NativeBatchProgress,
    NativeClip, NativePredictions, NativeRawImage,
};
use crate::errors::sync;
use crate::tasks::CoreTask;
use napi::bindgen_prelude::*;
use napi::threadsafe_function::ThreadsafeFunction;
use napi_derive::napi;
use promptclip_core::methods::{self, io, BoxedLearner, Runtime};
use promptclip_core::{Clip, Error};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};

/// A learner bound to the CLIP it runs on. Training holds the write lock for its duration; reads
/// (predict, interpret, save, `info`, `context()`) share the read lock.
#[napi]
pub struct NativeLearner {
    pub(crate) clip: Arc<Clip>,
    pub(crate) inner: Arc<RwLock<BoxedLearner>>,
}

const POISONED: &str = "the learner's state was poisoned by an earlier failure";

/// Every lock is taken without waiting, on the main thread and on libuv's pool alike: a task that
/// waited for a training task would park one of the pool's few threads (four by default) for the
/// whole training, starving every other user of the pool (fs, zlib, dns) in the process. The
/// TypeScript layer queues a learner's calls, so that these fail only for callers of the binding
/// itself, or for a synchronous read while a task runs.
fn busy<G>(e: TryLockError<G>, what: &str) -> Error {
    match e {
        TryLockError::WouldBlock => Error::Busy(what.into()),
        TryLockError::Poisoned(_) => Error::Internal(POISONED.into()),
    }
}

/// For reading the learner (concurrent reads are fine): fails with E_BUSY while it trains.
pub(crate) fn read(
    m: &RwLock<BoxedLearner>,
) -> promptclip_core::Result<RwLockReadGuard<'_, BoxedLearner>> {
    m.try_read()
        .map_err(|e| busy(e, "the learner is training; use it after fit() resolves"))
}

/// For training: fails with E_BUSY while any other call uses the learner.
pub(crate) fn write(
    m: &RwLock<BoxedLearner>,
) -> promptclip_core::Result<RwLockWriteGuard<'_, BoxedLearner>> {
    m.try_write().map_err(|e| {
        busy(
            e,
            "the learner is in use by another call; train it after that settles",
        )
    })
}

pub(crate) fn runtime(options: Option<serde_json::Value>) -> promptclip_core::Result<Runtime> {
    methods::parse_options("runtime", options.unwrap_or(serde_json::Value::Null))
}

/// A new learner of `method` ("coop", "cocoop", "kgcoop", "linear-probe") for `classNames`, with
/// the method's options (missing ones take its defaults) and runtime settings (memoryBudgetMb).
/// Each method's options are typed in TypeScript by `ts/generated/methods.ts` (from the catalogue).
#[napi]
pub fn create_learner(
    env: Env,
    clip: &NativeClip,
    method: String,
    class_names: Vec<String>,
    #[napi(ts_arg_type = "Record<string, unknown>")] options: Option<serde_json::Value>,
    #[napi(ts_arg_type = "{ memoryBudgetMb?: number }")] runtime_options: Option<serde_json::Value>,
) -> napi::Result<NativeLearner> {
    let clip = clip.inner.clone();
    sync(&env, || {
        let options = options.unwrap_or(serde_json::Value::Null);
        let learner = methods::create(
            &clip,
            &method,
            &class_names,
            options,
            runtime(runtime_options)?,
        )?;
        Ok(NativeLearner {
            clip,
            inner: Arc::new(RwLock::new(learner)),
        })
    })
}

/// Load a learner file of any method onto `clip`, with runtime settings (memoryBudgetMb).
#[napi(ts_return_type = "Promise<NativeLearner>")]
pub fn load_learner(
    clip: &NativeClip,
    path: String,
    #[napi(ts_arg_type = "{ memoryBudgetMb?: number }")] runtime_options: Option<serde_json::Value>,
) -> AsyncTask<CoreTask<(Arc<Clip>, BoxedLearner), NativeLearner>> {
    let clip = clip.inner.clone();
    CoreTask::new(
        move || {
            let (learner, _) = io::load(
                std::path::Path::new(&path),
                &clip,
                runtime(runtime_options)?,
            )?;
            Ok((clip, learner))
        },
        |(clip, learner)| NativeLearner {
            clip,
            inner: Arc::new(RwLock::new(learner)),
        },
    )
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

fn no_context(learner: &BoxedLearner) -> Error {
    let why = if learner.takes() == promptclip_core::methods::catalogue::Takes::Images {
        "what it learns lives inside the encoders (image-tower prompt tokens, or updates of the \
         weights), not in the token-embedding space where words are"
    } else {
        "only CoOp-style context vectors live in the token-embedding space"
    };
    Error::Unsupported(format!(
        "a {} learner has no learned text context, so it has no words to show ({why})",
        learner.meta().method
    ))
}

#[napi]
impl NativeLearner {
    /// The learner's one description (method, class names, resolved options, parameter shapes).
    #[napi(getter)]
    pub fn info(&self, env: Env) -> napi::Result<NativeLearnerMeta> {
        sync(&env, || {
            let m = read(&self.inner)?.meta();
            Ok(NativeLearnerMeta {
                method: m.method,
                class_names: m.class_names,
                options: m.options,
                params: m
                    .params
                    .into_iter()
                    .map(|(n, s)| (n, s.into_iter().map(|d| d as u32).collect()))
                    .collect(),
            })
        })
    }

    /// What the learner can be asked, from the learner itself (not from its method's name).
    #[napi(getter)]
    pub fn capabilities(&self, env: Env) -> napi::Result<NativeCapabilities> {
        sync(&env, || {
            let learner = read(&self.inner)?;
            Ok(NativeCapabilities {
                scores_any_classes: learner.scores_any_classes(),
                has_context: learner.learned_context().is_some(),
            })
        })
    }

    /// The learned context as a flat Float32Array ((M, d) or (K, M, d), row-major).
    #[napi]
    pub fn context(&self, env: Env) -> napi::Result<Float32Array> {
        sync(&env, || {
            let learner = read(&self.inner)?;
            let context = learner
                .learned_context()
                .ok_or_else(|| no_context(&learner))?;
            Ok(Float32Array::new(flat_f32(&context.vectors)?))
        })
    }

    /// `onProgress` after each batch; `cancel` stops the work between batches.
    #[napi(ts_return_type = "Promise<NativePredictions>")]
    pub fn predict(
        &self,
        images: Vec<Either3<String, Uint8Array, NativeRawImage>>,
        class_names: Option<Vec<String>>,
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
        let (clip, learner) = (self.clip.clone(), self.inner.clone());
        let (sources, bs) = (image_sources(images), batch_size(batch));
        let cancel = cancel.map(|c| c.flag.clone());
        CoreTask::new(
            move || {
                let learner = read(&learner)?;
                let mut report = batch_reporter(&on_progress, &cancel);
                let names = class_names.as_deref();
                let p = methods::predict_with_progress(
                    &clip,
                    learner.as_ref(),
                    &sources,
                    names,
                    bs,
                    &mut report,
                )?;
                Ok(Classified {
                    class_names: class_names.unwrap_or_else(|| learner.class_names().to_vec()),
                    indices: p.indices,
                    probs: p.probs,
                    failures: p.failures,
                })
            },
            Classified::into_js,
        )
    }

    /// The `topK` nearest vocabulary tokens of each context vector (CoOp's Table 4).
    #[napi(ts_return_type = "Promise<NativeInterpretRow[]>")]
    pub fn interpret(
        &self,
        top_k: Option<u32>,
    ) -> AsyncTask<CoreTask<Vec<NativeInterpretRow>, Vec<NativeInterpretRow>>> {
        let (clip, learner) = (self.clip.clone(), self.inner.clone());
        let k = top_k.map_or(promptclip_core::eval::TOP_K, |k| k as usize);
        CoreTask::new(
            move || {
                let learner = read(&learner)?;
                let context = learner
                    .learned_context()
                    .ok_or_else(|| no_context(&learner))?;
                let m = context.n_ctx();
                let csc = context.class_specific;
                let rows = context.nearest_tokens(&clip, k)?.into_iter().enumerate();
                Ok(rows
                    .map(|(r, near)| NativeInterpretRow {
                        position: (r % m) as u32,
                        class_index: csc.then_some((r / m) as u32),
                        token_ids: near.iter().map(|n| n.0).collect(),
                        tokens: near.iter().map(|n| n.1.clone()).collect(),
                        distances: near.iter().map(|n| n.2 as f64).collect(),
                    })
                    .collect())
            },
            |rows| rows,
        )
    }

    /// Save as safetensors with the learner's metadata, atomically.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn save(&self, path: String) -> AsyncTask<CoreTask<(), ()>> {
        let (clip, learner) = (self.clip.clone(), self.inner.clone());
        CoreTask::new(
            move || io::save(std::path::Path::new(&path), read(&learner)?.as_ref(), &clip),
            |()| (),
        )
    }
}

/// What a learner can be asked.
#[napi(object)]
pub struct NativeCapabilities {
    /// Whether `predict` takes class names the learner was not fitted on.
    pub scores_any_classes: bool,
    /// Whether it has a learned text context (`context()`, `interpret()`).
    pub has_context: bool,
}

/// What `info` returns: the core's `LearnerMeta`.
#[napi(object)]
pub struct NativeLearnerMeta {
    pub method: String,
    pub class_names: Vec<String>,
    /// The method's options, resolved (defaults filled in).
    #[napi(ts_type = "Record<string, unknown>")]
    pub options: serde_json::Value,
    /// [name, shape] of each trainable tensor.
    pub params: Vec<(String, Vec<u32>)>,
}
