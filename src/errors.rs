//! Core errors become JS `Error`s whose `code` property is the core's stable code
//! (`E_FILE_NOT_FOUND`, ...), set when the error object is created; nothing is parsed back out of
//! a message. Panics are caught so that none crosses the FFI.
use napi::bindgen_prelude::*;
use promptclip_core::Error as CoreError;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Run core work, turning any panic into an `E_INTERNAL` error instead of aborting Node.
pub fn guarded<T>(f: impl FnOnce() -> promptclip_core::Result<T>) -> promptclip_core::Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        Err(CoreError::Internal(format!("please report: {msg}")))
    })
}

/// A JS error object carrying the core error's code as `error.code`.
pub fn to_js(env: &Env, e: CoreError) -> napi::Error {
    let error: napi::Error<String> = napi::Error::new(e.code().to_string(), e.to_string());
    napi::Error::from(JsError::from(error).into_unknown(*env))
}

/// `guarded`, for synchronous calls on the main thread.
pub fn sync<T>(env: &Env, f: impl FnOnce() -> promptclip_core::Result<T>) -> napi::Result<T> {
    guarded(f).map_err(|e| to_js(env, e))
}
