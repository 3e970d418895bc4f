//! The linear probe, CoOp's baseline (official lpclip/): multinomial logistic regression on CLIP's
//! unnormalised image features of the center crop, fitted as scikit-learn fits it (L-BFGS, L2
//! penalty; `crate::logreg`), with C searched on the validation split as the official script does
//! unless the caller sets it. It is fitted on features in one go, not by SGD, and its weights
//! belong to its own classes: it cannot score new class names.
use super::catalogue::{ClassBinding, Fitting, OptionDoc, OptionKind, Takes};
use super::coop::own_classes_only;
use super::{FitData, FitReport, Learner, LearnerMeta, MethodSpec, Recipe, Runtime, Scorer};
use crate::clip::Clip;
use crate::logreg::{search_c, LogReg, LogRegConfig, SearchConfig};
use crate::{Error, Result};
use candle_core::{DType, Tensor, Var, D};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LinearProbeConfig {
    /// Inverse L2 strength. `None` (the default): searched on the validation split, as the
    /// official script does (coarse grid, then 8 rounds of bisection in log10 space).
    pub c: Option<f64>,
    /// L-BFGS iterations per fit (the official script's 1000).
    pub max_iter: usize,
    /// Stop when the largest gradient entry is at most this (scikit-learn's `tol`).
    pub tol: f64,
}

impl Default for LinearProbeConfig {
    fn default() -> Self {
        let fit = LogRegConfig::default();
        Self {
            c: None,
            max_iter: fit.max_iter,
            tol: fit.tol,
        }
    }
}

#[derive(Debug)]
pub struct LinearProbe {
    pub config: LinearProbeConfig,
    class_names: Vec<String>,
    /// (K, E): logits = features weightᵀ + bias.
    pub weight: Var,
    /// (K,)
    pub bias: Var,
}

impl LinearProbe {
    /// An unfitted probe (zero weights) for `class_names` on `clip`'s image features.
    pub fn new(clip: &Clip, class_names: &[String], config: LinearProbeConfig) -> Result<Self> {
        if let Some(c) = config.c {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::InvalidArgument(format!(
                    "c must be a positive number, got {c}"
                )));
            }
        }
        if config.max_iter == 0 || !(config.tol.is_finite() && config.tol > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "maxIter must be at least 1 and tol positive, got {} and {}",
                config.max_iter, config.tol
            )));
        }
        // `from_parts` validates the class names.
        let k = class_names.len();
        let weight = Tensor::zeros((k, clip.embed_dim()), DType::F32, &clip.device)?;
        let bias = Tensor::zeros(k, DType::F32, &clip.device)?;
        Self::from_parts(class_names, config, weight, bias)
    }

    pub fn from_parts(
        class_names: &[String],
        config: LinearProbeConfig,
        weight: Tensor,
        bias: Tensor,
    ) -> Result<Self> {
        crate::classnames::validate(class_names)?;
        Ok(Self {
            config,
            class_names: class_names.to_vec(),
            weight: Var::from_tensor(&weight.to_dtype(DType::F32)?)?,
            bias: Var::from_tensor(&bias.to_dtype(DType::F32)?)?,
        })
    }

    fn fit_config(&self, c: f64) -> LogRegConfig {
        LogRegConfig {
            c,
            max_iter: self.config.max_iter,
            tol: self.config.tol,
            ..LogRegConfig::default()
        }
    }
}

/// Scores with the probe's own weights (own classes only).
struct ProbeScorer<'a>(&'a LinearProbe);

impl Scorer for ProbeScorer<'_> {
    fn logits(&self, image_features: &Tensor) -> Result<Tensor> {
        let f = image_features.to_dtype(DType::F32)?;
        let w = self.0.weight.as_tensor();
        Ok(f.matmul(&w.t()?)?.broadcast_add(self.0.bias.as_tensor())?)
    }
}

impl Learner for LinearProbe {
    fn meta(&self) -> LearnerMeta {
        LearnerMeta {
            method: SPEC.name.into(),
            class_names: self.class_names.clone(),
            options: super::options_json(&self.config),
            params: super::param_shapes(&self.vars()),
        }
    }

    fn vars(&self) -> Vec<(String, Var)> {
        vec![
            ("weight".into(), self.weight.clone()),
            ("bias".into(), self.bias.clone()),
        ]
    }

    fn class_names(&self) -> &[String] {
        &self.class_names
    }

    fn logits(&self, _clip: &Clip, image_features: &Tensor) -> Result<Tensor> {
        ProbeScorer(self).logits(image_features)
    }

    fn scorer<'a>(
        &'a self,
        _clip: &'a Clip,
        class_names: Option<&[String]>,
    ) -> Result<Box<dyn Scorer + 'a>> {
        match class_names {
            Some(names) if names != self.class_names.as_slice() => {
                Err(own_classes_only("a linear probe", &self.class_names))
            }
            _ => Ok(Box::new(ProbeScorer(self))),
        }
    }

    /// The whole fit: L-BFGS on the center-crop features, C searched on validation unless set
    /// (the validation images are encoded only then).
    fn prepare(&self, _clip: &Clip, data: &mut dyn FitData) -> Result<Option<FitReport>> {
        let x = &data.features()?;
        let y = data.labels().to_vec();
        let y = y.as_slice();
        let validation = match self.config.c {
            Some(_) => None,
            None => data.validation()?,
        };
        data.check_cancelled()?;
        let k = self.class_names.len();
        let (model, details) = match (self.config.c, validation.as_ref()) {
            (Some(c), _) => (
                LogReg::fit(x, y, k, &self.fit_config(c))?,
                serde_json::json!({ "c": c }),
            ),
            (None, Some((vx, vy))) => {
                let search = SearchConfig {
                    fit: self.fit_config(1.0),
                    ..SearchConfig::default()
                };
                let (model, s) = search_c(x, y, vx, vy, k, &search)?;
                let rounds: Vec<_> = s
                    .rounds
                    .iter()
                    .map(|r| serde_json::json!([r.c_left, r.c_right, r.acc_left, r.acc_right]))
                    .collect();
                let details = serde_json::json!({
                    "c": s.c,
                    "grid": search.grid,
                    "gridAccuracy": s.grid_acc,
                    "rounds": rounds,
                });
                (model, details)
            }
            (None, None) => {
                return Err(Error::InvalidArgument(
                    "the linear probe searches C on a validation set: pass one, or set c".into(),
                ))
            }
        };
        let device = self.weight.device().clone();
        self.weight
            .set(&model.weight.to_dtype(DType::F32)?.to_device(&device)?)?;
        self.bias
            .set(&model.bias.to_dtype(DType::F32)?.to_device(&device)?)?;
        // Training loss (cross-entropy, without the penalty) and accuracy of the final model.
        let logits = model.logits(x)?;
        let labels = Tensor::from_vec(
            y.iter().map(|&l| l as u32).collect::<Vec<_>>(),
            y.len(),
            logits.device(),
        )?;
        let loss = crate::loss::cross_entropy(&logits, &labels)?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?;
        let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let correct = pred
            .iter()
            .zip(y)
            .filter(|(p, &l)| **p as usize == l)
            .count();
        let mut details = details;
        details["iterations"] = model.n_iter.into();
        details["converged"] = model.converged.into();
        let summary = match self.config.c {
            Some(c) => format!("C = {}", super::shown(c)),
            None => format!(
                "C = {}, searched on the validation split",
                super::shown(details["c"].as_f64().unwrap_or(f64::NAN))
            ),
        };
        Ok(Some(FitReport {
            summary,
            details,
            loss: Some(loss),
            accuracy: Some(100.0 * correct as f32 / y.len() as f32),
        }))
    }
}

const C: OptionDoc = OptionDoc {
    name: "c",
    kind: OptionKind::Number {
        exclusive_min: Some(0.0),
    },
    doc: "inverse L2 strength (default: searched on the validation split, as the official script)",
    flag: Some("--c"),
};
const MAX_ITER: OptionDoc = OptionDoc {
    name: "maxIter",
    kind: OptionKind::Integer { min: 1 },
    doc: "L-BFGS iterations per fit",
    flag: None,
};
const TOL: OptionDoc = OptionDoc {
    name: "tol",
    kind: OptionKind::Number {
        exclusive_min: Some(0.0),
    },
    doc: "stop when the largest gradient entry is at most this",
    flag: None,
};

pub const SPEC: MethodSpec = MethodSpec {
    name: "linear-probe",
    title: "Linear probe",
    paper: "Radford et al.: Learning Transferable Visual Models From Natural Language Supervision (ICML 2021)",
    takes: Takes::ImageFeatures,
    fitting: Fitting::FeatureFit,
    classes: ClassBinding::OwnClasses,
    uses_validation: true,
    validation_unless: &["c"],
    template_option: None,
    options: &[C, MAX_ITER, TOL],
    defaults: || super::options_json(&LinearProbeConfig::default()),
    recipe: |_| Recipe::default(),
    create: |clip, names, options, _runtime: Runtime| {
        let config: LinearProbeConfig = super::parse_options("linear-probe", options)?;
        Ok(Box::new(LinearProbe::new(clip, names, config)?))
    },
    restore: |_clip, meta, tensors, _runtime| {
        let config: LinearProbeConfig = super::parse_options("linear-probe", meta.options.clone())?;
        let (w, b) = (
            super::saved(tensors, "weight")?,
            super::saved(tensors, "bias")?,
        );
        Ok(Box::new(LinearProbe::from_parts(
            &meta.class_names,
            config,
            w,
            b,
        )?))
    },
    official: None,
};
