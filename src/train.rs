//! Training any learner: options parsed by the core on top of the method's recipe, progress
//! through a threadsafe function, cancellation through a token the TypeScript layer ties to an
//! AbortSignal.
use crate::cancel::NativeCancelToken;
use crate::clip::{image_sources, NativeImageFailure, NativeRawImage};
use crate::learner::{write, NativeLearner};
use crate::tasks::CoreTask;
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use promptclip_core::methods;
use promptclip_core::train::{
    fit_with_validation, LabelledImages, Progress, TrainOptions, TrainSummary,
};

/// One training step's report. `epoch` and `step` count from 1; accuracies are percentages.
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

impl From<&Progress> for NativeProgress {
    fn from(p: &Progress) -> Self {
        Self {
            epoch: p.epoch as u32,
            epochs: p.epochs as u32,
            step: p.step as u32,
            steps_per_epoch: p.steps_per_epoch as u32,
            global_step: p.global_step as u32,
            loss: p.loss as f64,
            epoch_loss: p.epoch_loss as f64,
            epoch_accuracy: p.epoch_accuracy as f64,
            lr: p.lr,
        }
    }
}

#[napi(object)]
pub struct NativeTrainSummary {
    pub epochs: u32,
    /// Epochs already done when this run started (0 unless resumed).
    pub resumed_after_epoch: u32,
    /// Steps of the next epoch already done when this run started (more than 0 only when resumed
    /// from a cancelled run's mid-epoch checkpoint).
    pub resumed_at_step: u32,
    /// Training images left out as unreadable (`skipUnreadable`), by their index in the dataset.
    pub skipped: Vec<NativeImageFailure>,
    pub global_step: u32,
    pub epoch_loss: Vec<f64>,
    /// Percentages.
    pub epoch_accuracy: Vec<f64>,
    pub seconds: f64,
    /// What a method's preparation and closing search report (the linear probe's C search,
    /// Tip-Adapter's alpha and beta).
    #[napi(ts_type = "Record<string, unknown>")]
    pub details: Option<serde_json::Value>,
    /// Their one-line accounts in words, in order.
    pub fitted: Vec<String>,
}

impl From<TrainSummary> for NativeTrainSummary {
    fn from(s: TrainSummary) -> Self {
        Self {
            epochs: s.epochs as u32,
            resumed_after_epoch: s.start_epoch as u32,
            resumed_at_step: s.start_step as u32,
            skipped: s
                .skipped
                .into_iter()
                .map(|f| NativeImageFailure {
                    index: f.index as u32,
                    code: f.code.into(),
                    message: f.message,
                })
                .collect(),
            global_step: s.global_step as u32,
            epoch_loss: s.epoch_loss.iter().map(|&x| x as f64).collect(),
            epoch_accuracy: s.epoch_accuracy.iter().map(|&x| x as f64).collect(),
            seconds: s.seconds,
            details: s.details,
            fitted: s.fitted,
        }
    }
}

#[napi(object)]
pub struct NativeDataset {
    pub images: Vec<Either3<String, Uint8Array, NativeRawImage>>,
    pub labels: Vec<u32>,
}

impl From<NativeDataset> for LabelledImages {
    fn from(d: NativeDataset) -> Self {
        LabelledImages {
            sources: image_sources(d.images),
            labels: d.labels.into_iter().map(|l| l as usize).collect(),
        }
    }
}

#[napi]
impl NativeLearner {
    /// Train with `options` (the core's TrainOptions: missing fields take the method's recipe).
    #[napi(ts_return_type = "Promise<NativeTrainSummary>")]
    pub fn train(
        &self,
        data: NativeDataset,
        validation: Option<NativeDataset>,
        #[napi(ts_arg_type = "Record<string, unknown>")] options: Option<serde_json::Value>,
        on_progress: Option<
            ThreadsafeFunction<NativeProgress, Unknown<'static>, NativeProgress, Status, false>,
        >,
        cancel: Option<&NativeCancelToken>,
    ) -> AsyncTask<CoreTask<TrainSummary, NativeTrainSummary>> {
        let (clip, learner) = (self.clip.clone(), self.inner.clone());
        let (data, validation) = (
            LabelledImages::from(data),
            validation.map(LabelledImages::from),
        );
        let cancel = cancel.map(|c| c.flag.clone()).unwrap_or_default();
        CoreTask::new(
            move || {
                let learner = write(&learner)?;
                let options = TrainOptions::from_json(options.unwrap_or(serde_json::Value::Null))?;
                let recipe = methods::recipe_of(learner.as_ref(), options.recipe_for())?;
                let config = options.resolve_for_model(&recipe, Some(&clip.image_config))?;
                let mut report = |p: &Progress| {
                    if let Some(f) = &on_progress {
                        f.call(
                            NativeProgress::from(p),
                            ThreadsafeFunctionCallMode::NonBlocking,
                        );
                    }
                };
                let learner = learner.as_ref();
                fit_with_validation(
                    &clip,
                    learner,
                    &data,
                    validation.as_ref(),
                    &config,
                    &mut report,
                    &cancel,
                )
            },
            NativeTrainSummary::from,
        )
    }
}
