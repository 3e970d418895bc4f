//! Prompts under the official code's state-dict names (the core's `methods::official`): import a
//! file of them as a learner, export a learner or a learner file to one.
use crate::clip::NativeClip;
use crate::learner::{read, runtime, NativeLearner};
use crate::tasks::CoreTask;
use napi::bindgen_prelude::*;
use napi_derive::napi;
use promptclip_core::methods::{official, BoxedLearner};
use promptclip_core::Clip;
use std::path::Path;
use std::sync::{Arc, RwLock};

/// A learner from safetensors under the official names. `method` is inferred from the names when
/// left out; `classNames` may be left out for a file that promptclip exported (it records them);
/// `options` are the method's options beyond what the tensors' shapes decide (ctxInit, ...).
#[napi(ts_return_type = "Promise<NativeLearner>")]
pub fn import_official_learner(
    clip: &NativeClip,
    path: String,
    method: Option<String>,
    class_names: Option<Vec<String>>,
    #[napi(ts_arg_type = "Record<string, unknown>")] options: Option<serde_json::Value>,
    #[napi(ts_arg_type = "{ memoryBudgetMb?: number }")] runtime_options: Option<serde_json::Value>,
) -> AsyncTask<CoreTask<(Arc<Clip>, BoxedLearner), NativeLearner>> {
    let clip = clip.inner.clone();
    CoreTask::new(
        move || {
            let learner = official::import(
                &clip,
                Path::new(&path),
                official::ImportRequest {
                    method: method.as_deref(),
                    class_names: class_names.as_deref(),
                    options: options.unwrap_or(serde_json::Value::Null),
                    runtime: runtime(runtime_options)?,
                },
            )?;
            Ok((clip, learner))
        },
        |(clip, learner)| NativeLearner {
            clip,
            inner: Arc::new(RwLock::new(learner)),
        },
    )
}

/// Write a learner's trainable tensors under the official names, atomically.
#[napi(ts_return_type = "Promise<void>")]
pub fn export_official(learner: &NativeLearner, path: String) -> AsyncTask<CoreTask<(), ()>> {
    let inner = learner.inner.clone();
    CoreTask::new(
        move || official::export(Path::new(&path), read(&inner)?.as_ref()),
        |()| (),
    )
}

/// A promptclip learner file rewritten under the official names (no model needed).
#[napi(ts_return_type = "Promise<void>")]
pub fn export_official_file(input: String, output: String) -> AsyncTask<CoreTask<(), ()>> {
    CoreTask::new(
        move || official::export_file(Path::new(&input), Path::new(&output)),
        |()| (),
    )
}
