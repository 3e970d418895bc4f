//! Node binding for promptclip. Deliberately thin, and split by concept as the tokenizers binding
//! is: `clip` (the model, encoding, zero-shot), `learner` (any method's learner: create, load,
//! save, predict, interpret), `official` (prompts under the official code's names), `methods` (the
//! core's method catalogue), `train`, `metrics`, `cancel`
//! (the token long work checks), with `tasks` running core work as AsyncTasks on
//! libuv's thread pool and `errors` turning core errors into JS errors with a stable `code`.
//! Options cross as plain JS objects and are parsed by the core's own option types (serde), so
//! the defaults and the checks live in one place: the core.
#![deny(clippy::all)]
// napi registers the exported functions only in the addon build; the crate's test build (cargo
// test/clippy --all-targets) sees them as unused.
#![cfg_attr(test, allow(dead_code))]

/// A caching allocator: CPU inference allocates tens of MB per op, which glibc maps fresh (and
/// zeroes through page faults) every time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cancel;
mod clip;
mod errors;
mod learner;
mod methods;
mod metrics;
mod official;
mod tasks;
mod train;
