//! Runs user code so that an error or a panic becomes a [`Failure`], never a dead stage.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;

use crate::error::BoxError;
use crate::message::{Failure, FailureKind};

/// Awaits `fut`, turning an `Err` or a panic into the failure to record on messages.
pub(crate) async fn guarded<F>(fut: F) -> Result<(), Failure>
where
    F: Future<Output = Result<(), BoxError>>,
{
    // Unwind safety: after a panic the handler's borrowed messages are only marked
    // failed and acknowledged, never read as if the handler had finished.
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(Failure::new(FailureKind::Error, error)),
        Err(payload) => Err(Failure::new(FailureKind::Panic, panic_message(payload).into())),
    }
}

pub(crate) fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(message) => (*message).to_owned(),
            Err(_) => "handler panicked".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_and_panics_become_failures() {
        assert!(guarded(async { Ok(()) }).await.is_ok());

        let error = guarded(async { Err("bad payload".into()) }).await.unwrap_err();
        assert_eq!(error.kind(), FailureKind::Error);
        assert_eq!(error.to_string(), "error: bad payload");

        let panic = guarded(async { panic!("boom {}", 42) }).await.unwrap_err();
        assert_eq!(panic.kind(), FailureKind::Panic);
        assert_eq!(panic.to_string(), "panic: boom 42");
    }
}
