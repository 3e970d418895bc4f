//! Training prompt learners: the CoOp/CoCoOp recipe (SGD with momentum and weight decay,
//! warmup then cosine per epoch, random resized crop + flip), seeded end to end, with atomic
//! checkpoints that resume to the same result as an uninterrupted run.
pub mod augment;
pub mod checkpoint;
pub mod optim;
pub mod pipeline;
pub mod schedule;
pub mod trainer;

pub use trainer::{fit, LabelledImages, Progress, PromptModel, TrainConfig, TrainSummary};
