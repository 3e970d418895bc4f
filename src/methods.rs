//! The method catalogue, as the core describes it (`promptclip_core::methods::catalogue`): what
//! TypeScript knows of each method, read rather than restated.
use crate::errors::sync;
use napi::bindgen_prelude::*;
use napi_derive::napi;
use promptclip_core::methods::catalogue::{self, RecipeFor};
use promptclip_core::methods::OptimizerKind;

/// Every method's catalogue entry (name, title, paper, what it takes and uses, its options with
/// types, ranges, defaults and docs, its plain recipe), in the order tables list them.
/// (Typed in TypeScript by `ts/generated/methods.ts`, generated from this at build time.)
#[napi(ts_return_type = "unknown[]")]
pub fn method_catalogue(env: Env) -> napi::Result<serde_json::Value> {
    sync(&env, || {
        serde_json::to_value(catalogue::catalogue())
            .map_err(|e| promptclip_core::Error::Internal(format!("the catalogue: {e}")))
    })
}

/// A method's training recipe for a protocol's shots per class and dataset (catalog name).
#[napi(object)]
pub struct NativeRecipe {
    pub epochs: u32,
    pub batch_size: u32,
    pub lr: f64,
    /// `sgd` or `adamw`.
    #[napi(ts_type = "'sgd' | 'adamw'")]
    pub optimizer: String,
    pub weight_decay: f64,
    pub warmup_epochs: u32,
    /// Whether the cosine anneals per batch instead of per epoch.
    pub lr_per_step: bool,
    /// A run counted in steps, this many per shot (CLIP-LoRA: 500), instead of whole epochs.
    pub steps_per_shot: Option<u32>,
    /// Where the cosine ends.
    pub min_lr: f64,
}

#[napi]
pub fn method_recipe(
    env: Env,
    method: String,
    shots: Option<u32>,
    dataset: Option<String>,
) -> napi::Result<NativeRecipe> {
    sync(&env, || {
        let r = catalogue::recipe(
            &method,
            RecipeFor {
                shots: shots.map(|s| s as usize),
                dataset: dataset.as_deref(),
            },
        )?;
        let optimizer = match r.optimizer {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adamw => "adamw",
        };
        Ok(NativeRecipe {
            epochs: r.epochs as u32,
            batch_size: r.batch_size as u32,
            lr: r.lr,
            optimizer: optimizer.into(),
            weight_decay: r.weight_decay,
            warmup_epochs: r.warmup_epochs as u32,
            lr_per_step: r.lr_per_step,
            steps_per_shot: r.steps_per_shot.map(|s| s as u32),
            min_lr: r.min_lr,
        })
    })
}
