//! The method catalogue: what each registered method is, in one place, for everyone outside the
//! core. The binding hands it to TypeScript as JSON ([`catalogue`]), and the factories' option
//! types, the command line's method flags and `--help`, the protocols' method list and the
//! report's titles are made from it; nothing outside `methods/` names a method.
//!
//! A method states here what its forward takes, how it is fitted, what it uses from the data,
//! its options (type, range, default, one line of documentation, command-line flag) and its
//! recipe as a function of the protocol's shots and dataset.
use super::{MethodSpec, Recipe, METHODS};
use serde::Serialize;

/// What a method's forward reads from a batch of images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Takes {
    /// The frozen image encoder's features (B, E): the trainer may compute them once per run.
    ImageFeatures,
    /// The images' pixels (B, 3, S, S): the method runs the image encoder itself (with its own
    /// prompts or weights), so nothing is cached; without augmentation every step gets the
    /// center crops.
    Images,
}

/// How a method's parameters are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fitting {
    /// Epochs of SGD steps, checkpointed and resumable.
    Sgd,
    /// One fit on the training (and validation) features, closed form or full batch; no epochs.
    FeatureFit,
}

/// The class list a learner can score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClassBinding {
    /// Any class names: its parameters do not belong to classes (unless an option makes them,
    /// as CoOp's class-specific context; the learner's own capabilities say so).
    AnyClasses,
    /// Only the classes it was fitted on.
    OwnClasses,
}

/// The type and range of one option.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum OptionKind {
    /// A whole number from `min` (inclusive).
    Integer {
        min: u64,
    },
    /// A finite number above `exclusive_min` (if any).
    #[serde(rename_all = "camelCase")]
    Number {
        exclusive_min: Option<f64>,
    },
    Boolean,
    String,
    /// A list of strings (TypeScript `string[]`).
    StringList,
    /// A list of whole numbers from `min` (TypeScript `number[]`).
    IntegerList {
        min: u64,
    },
    Choice {
        choices: &'static [&'static str],
    },
}

/// One option of a method, as users see it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OptionDoc {
    /// The field in the options object (camelCase, as the config serialises it).
    pub name: &'static str,
    #[serde(flatten)]
    pub kind: OptionKind,
    /// One line for the API docs and `--help`.
    pub doc: &'static str,
    /// The command line's flag (`--n-ctx`), when the option has one.
    pub flag: Option<&'static str>,
}

/// What a recipe is chosen for: the protocol's shots per class and the dataset's catalog name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecipeFor<'a> {
    pub shots: Option<usize>,
    pub dataset: Option<&'a str>,
}

/// A method's entry as the binding hands it out.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MethodEntry {
    pub name: &'static str,
    pub title: &'static str,
    pub paper: &'static str,
    pub takes: Takes,
    pub fitting: Fitting,
    pub classes: ClassBinding,
    /// Whether fitting uses a validation split (to choose hyperparameters).
    pub uses_validation: bool,
    /// The options that, when all set, make the validation split unneeded (the linear probe's C,
    /// Tip-Adapter's alpha and beta: searched on validation unless given).
    pub validation_unless: &'static [&'static str],
    /// The option that takes the dataset's hand-made template, when the method has one.
    pub template_option: Option<&'static str>,
    /// Whether the learner takes a `seed` option (its random initialisation); a protocol passes
    /// each run's seed there.
    pub seeded: bool,
    pub options: &'static [OptionDoc],
    /// Every option's default, as the config serialises it (`null`: chosen at fit time or from
    /// another option).
    pub defaults: serde_json::Value,
    /// The recipe without a protocol (a plain `fit`).
    pub recipe: RecipeEntry,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecipeEntry {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub optimizer: super::OptimizerKind,
    pub weight_decay: f64,
    pub warmup_epochs: usize,
    pub lr_per_step: bool,
    /// A run counted in steps, this many per shot (CLIP-LoRA's 500), instead of whole epochs.
    pub steps_per_shot: Option<usize>,
    pub min_lr: f64,
}

impl From<Recipe> for RecipeEntry {
    fn from(r: Recipe) -> Self {
        Self {
            epochs: r.epochs,
            batch_size: r.batch_size,
            lr: r.lr,
            optimizer: r.optimizer,
            weight_decay: r.weight_decay,
            warmup_epochs: r.warmup_epochs,
            lr_per_step: r.lr_per_step,
            steps_per_shot: r.steps_per_shot,
            min_lr: r.min_lr,
        }
    }
}

impl MethodSpec {
    pub fn entry(&self) -> MethodEntry {
        let defaults = (self.defaults)();
        MethodEntry {
            name: self.name,
            title: self.title,
            paper: self.paper,
            takes: self.takes,
            fitting: self.fitting,
            classes: self.classes,
            uses_validation: self.uses_validation,
            validation_unless: self.validation_unless,
            template_option: self.template_option,
            seeded: defaults.get("seed").is_some(),
            options: self.options,
            defaults,
            recipe: (self.recipe)(RecipeFor::default()).into(),
        }
    }
}

/// Every method's entry, in registry order (the baselines, then the learners by year).
pub fn catalogue() -> Vec<MethodEntry> {
    METHODS.iter().map(MethodSpec::entry).collect()
}

/// The recipe of `method` for a protocol's shots and dataset.
pub fn recipe(method: &str, r: RecipeFor<'_>) -> crate::Result<Recipe> {
    Ok((super::spec(method)?.recipe)(r))
}

/// CoOp's recipe (lr 0.002, batch 32) with the official scripts' epochs per shot count: 50 for 1
/// shot, 100 for 2 and 4, 200 for 8 and 16; ImageNet 50 at any shots (scripts/coop/main.sh and
/// its configs). Also the recipe of methods whose official code trains with CoOp's configs.
pub fn coop_recipe(r: RecipeFor<'_>) -> Recipe {
    let epochs = match (r.dataset, r.shots) {
        (Some("imagenet"), _) | (_, None) => 50,
        (_, Some(s)) if s <= 1 => 50,
        (_, Some(s)) if s <= 4 => 100,
        _ => 200,
    };
    Recipe {
        epochs,
        ..Recipe::default()
    }
}

/// CoOp's context options, shared by the methods built on its prompt learner.
pub const N_CTX: OptionDoc = OptionDoc {
    name: "nCtx",
    kind: OptionKind::Integer { min: 1 },
    doc: "M, the number of learned context tokens, random vectors (with ctxInit: the words' token count)",
    flag: Some("--n-ctx"),
};
/// CoOp's: random context (M = 16) unless words are given.
pub const CTX_INIT: OptionDoc = OptionDoc {
    name: "ctxInit",
    kind: OptionKind::String,
    doc: "initialise the context from these words' token embeddings, e.g. \"a photo of a\" (default: 16 random vectors)",
    flag: Some("--ctx-init"),
};
/// CoCoOp's and KgCoOp's: "a photo of a" (M = 4) unless `nCtx` or other words are given.
pub const CTX_INIT_PHOTO: OptionDoc = OptionDoc {
    doc: "initialise the context from these words' token embeddings (default: \"a photo of a\", unless nCtx is given)",
    ..CTX_INIT
};
pub const CLASS_SPECIFIC: OptionDoc = OptionDoc {
    name: "classSpecific",
    kind: OptionKind::Boolean,
    doc: "one context per class (K x M x d) instead of one shared by all classes",
    flag: Some("--class-specific"),
};
pub const POSITION: OptionDoc = OptionDoc {
    name: "position",
    kind: OptionKind::Choice {
        choices: &["end", "middle", "front"],
    },
    doc: "where the class token sits relative to the context",
    flag: Some("--position"),
};
pub const INIT_STD: OptionDoc = OptionDoc {
    name: "initStd",
    kind: OptionKind::Number {
        exclusive_min: Some(0.0),
    },
    doc: "standard deviation of the random initialisation (the paper's 0.02)",
    flag: None,
};
pub const SEED: OptionDoc = OptionDoc {
    name: "seed",
    kind: OptionKind::Integer { min: 0 },
    doc: "seed of every random initialisation of the learner",
    flag: None,
};
