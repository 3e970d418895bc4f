//! The cancellation token JavaScript hands to long work (training, batched inference): one
//! flag, shared with the task, that the task checks between steps or batches.
use napi_derive::napi;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Cancellation flag shared with a running task (training, or a batched inference call).
#[napi]
pub struct NativeCancelToken {
    pub(crate) flag: Arc<AtomicBool>,
}

#[napi]
impl NativeCancelToken {
    #[napi(constructor)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self {
            flag: Arc::new(AtomicBool::new(false)),
        }
    }

    #[napi]
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::Relaxed);
    }
}
