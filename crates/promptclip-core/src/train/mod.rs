//! Training learners of any method: the CoOp recipe (SGD with momentum and weight decay, warmup
//! then cosine per epoch, random resized crop + flip), seeded end to end, with atomic checkpoints
//! that resume to the same result as an uninterrupted run.
pub mod augment;
pub mod checkpoint;
pub mod optim;
pub mod pipeline;
pub mod schedule;
pub mod trainer;

pub use trainer::{
    fit, fit_with_validation, LabelledImages, Progress, SkippedImage, TrainConfig, TrainOptions,
    TrainSummary,
};
