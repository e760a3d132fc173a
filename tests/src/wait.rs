//! Waiting for a condition with a deadline, polling it, instead of sleeping a guessed time.

use std::future::Future;
use std::time::Duration;

use anyhow::{bail, Result};
use tokio::time::Instant;

/// Pause between two checks of a condition.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Calls `check` until it answers `Some`, for up to `timeout`; fails naming `what` (and the last
/// error `check` returned, if any) when time runs out. Errors from `check` count as "not yet".
pub async fn until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining.max(POLL_INTERVAL), check()).await {
            Ok(Ok(Some(value))) => return Ok(value),
            Ok(Ok(None)) => {}
            Ok(Err(error)) => last_error = Some(error),
            Err(_) => {}
        }
        if Instant::now() >= deadline {
            match last_error {
                Some(error) => bail!("timed out after {timeout:?} waiting for {what}; last error: {error:#}"),
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Awaits `future` for up to `timeout`, failing with `what` if it takes longer.
pub async fn within<T>(what: &str, timeout: Duration, future: impl Future<Output = T>) -> Result<T> {
    match tokio::time::timeout(timeout, future).await {
        Ok(value) => Ok(value),
        Err(_) => bail!("{what} did not finish within {timeout:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn until_returns_the_value_once_the_condition_holds() {
        let mut calls = 0;
        let value = until("the third call", Duration::from_secs(5), || {
            calls += 1;
            let now = calls;
            async move { Ok((now >= 3).then_some(now)) }
        })
        .await
        .unwrap();
        assert_eq!(value, 3);
    }

    #[tokio::test]
    async fn until_fails_at_the_deadline_with_the_last_error() {
        let error = until::<(), _, _>("never", Duration::from_millis(100), || async {
            Err(anyhow::anyhow!("still broken"))
        })
        .await
        .unwrap_err();
        let message = format!("{error:#}");
        assert!(
            message.contains("never") && message.contains("still broken"),
            "{message}"
        );
    }
}
