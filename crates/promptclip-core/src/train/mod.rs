//! Training learners of any method, by stage: the run's settings (`config`: options on top of the
//! method's recipe), its data (`data`: readable images, features, what a preparation asks for),
//! the input pipeline's augmented crops (`pipeline`, `augment`), the optimisers and schedules
//! (`optim`, `schedule`), checkpoints and resuming (`checkpoint`), and the loop (`trainer`):
//! seeded end to end, resuming to the same result as an uninterrupted run.
pub mod augment;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod optim;
pub mod pipeline;
pub mod schedule;
pub mod trainer;

pub use config::{InitFrom, TrainConfig, TrainOptions};
pub use data::{LabelledImages, SkippedImage};
pub use trainer::{fit, fit_with_validation, Progress, TrainSummary};
