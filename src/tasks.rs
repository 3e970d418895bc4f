//! Long work runs as an `AsyncTask` off the main thread: a closure over the core, whose value (or
//! core error) is converted to JS on the main thread when it settles.
use crate::errors::{guarded, to_js};
use napi::bindgen_prelude::*;

type Work<T> = Box<dyn FnOnce() -> promptclip_core::Result<T> + Send>;

pub struct CoreTask<T: Send + 'static, J> {
    work: Option<Work<T>>,
    to_js: fn(T) -> J,
}

impl<T: Send + 'static, J: ToNapiValue + TypeName> CoreTask<T, J> {
    pub fn new(
        work: impl FnOnce() -> promptclip_core::Result<T> + Send + 'static,
        to_js: fn(T) -> J,
    ) -> AsyncTask<Self> {
        AsyncTask::new(Self {
            work: Some(Box::new(work)),
            to_js,
        })
    }
}

impl<T: Send + 'static, J: ToNapiValue + TypeName> Task for CoreTask<T, J> {
    /// The core's error travels as a value, so that `resolve` can build its JS error (with its
    /// code) on the main thread.
    type Output = promptclip_core::Result<T>;
    type JsValue = J;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        let work = self.work.take();
        Ok(guarded(move || match work {
            Some(work) => work(),
            None => Err(promptclip_core::Error::Internal("a task ran twice".into())),
        }))
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> napi::Result<J> {
        match output {
            Ok(value) => Ok((self.to_js)(value)),
            Err(e) => Err(to_js(&env, e)),
        }
    }
}
