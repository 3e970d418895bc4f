//! Dassl's classification metrics over scores the caller already has.
use crate::errors::sync;
use napi::bindgen_prelude::*;
use napi_derive::napi;

#[napi(object)]
pub struct NativeMetrics {
    pub total: u32,
    pub correct: u32,
    /// Percentages, as the papers report them.
    pub accuracy: f64,
    pub error_rate: f64,
    pub macro_f1: f64,
    /// NaN for classes without examples.
    pub per_class_accuracy: Vec<f64>,
    pub confusion: Vec<Vec<u32>>,
    /// [k, accuracy %] with each k capped at the number of classes.
    pub top_k: Vec<Vec<f64>>,
}

/// Metrics from row-major scores (N x numClasses) and labels; `topK` defaults to the core's.
#[napi]
pub fn compute_metrics(
    env: Env,
    scores: Float32Array,
    num_classes: u32,
    labels: Vec<u32>,
    // Numbers, not u32: napi would wrap -1 to 4294967295; the core refuses it by index.
    top_k: Option<Vec<f64>>,
) -> napi::Result<NativeMetrics> {
    sync(&env, || {
        let labels: Vec<usize> = labels.into_iter().map(|l| l as usize).collect();
        let ks: Vec<usize> = match top_k {
            Some(ks) => promptclip_core::eval::top_k_from_numbers(&ks)?,
            None => promptclip_core::eval::EVAL_TOP_K.to_vec(),
        };
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
