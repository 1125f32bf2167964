//! Retries with exponential backoff, for sends and for the client's own requests.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::Error;

/// How a request that failed with a retryable error ([`Error::is_retryable`]) is
/// tried again: after `initial`, doubling up to `max_delay` (with jitter, and
/// never sooner than a 429's `Retry-After`), until `max_elapsed` has passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first pause.
    pub initial: Duration,
    /// The longest pause.
    pub max_delay: Duration,
    /// No new attempt starts after this long since the first.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            max_elapsed: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// Never retries.
    pub const NONE: RetryPolicy = RetryPolicy {
        initial: Duration::ZERO,
        max_delay: Duration::ZERO,
        max_elapsed: Duration::ZERO,
    };

    /// Runs `attempt` until it succeeds, fails with an error that is not
    /// retryable, or the policy's time is up ([`Error::GaveUp`] with the last
    /// error, when more than one attempt was made).
    pub async fn run<T, F, Fut>(&self, mut attempt: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let start = Instant::now();
        let mut delay = self.initial;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let e = match attempt().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let mut pause = jitter(delay);
            if let Error::Api {
                retry_after: Some(after),
                ..
            } = &e
            {
                pause = pause.max(*after);
            }
            if !e.is_retryable() || start.elapsed() + pause > self.max_elapsed {
                return Err(if attempts == 1 {
                    e
                } else {
                    Error::GaveUp {
                        attempts,
                        last: Box::new(e),
                    }
                });
            }
            tracing::debug!(error = %e, ?pause, attempts, "retrying");
            tokio::time::sleep(pause).await;
            delay = (delay * 2).min(self.max_delay);
        }
    }
}

/// `d` scaled by a factor in [0.5, 1.0), so that clients that failed together do
/// not all come back at the same instant.
fn jitter(d: Duration) -> Duration {
    let r = crate::ids::random_u64() % 1000;
    d.mul_f64(0.5 + r as f64 / 2000.0)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
            max_elapsed: Duration::from_secs(10),
        }
    }

    #[tokio::test]
    async fn a_retryable_failure_is_retried_until_it_succeeds() {
        let calls = AtomicU32::new(0);
        let got = policy()
            .run(|| async {
                if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                    Err(Error::Transport("refused".into()))
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(got.ok(), Some(7));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_client_error_is_not_retried() {
        let calls = AtomicU32::new(0);
        let got: Result<(), Error> = policy()
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Error::Api {
                    status: 403,
                    code: "forbidden".into(),
                    message: "no".into(),
                    retry_after: None,
                })
            })
            .await;
        assert_eq!(got.err().and_then(|e| e.status()), Some(403));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_when_the_time_is_up() {
        let calls = AtomicU32::new(0);
        let p = RetryPolicy {
            initial: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            max_elapsed: Duration::from_secs(3),
        };
        let got: Result<(), Error> = p
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Error::Api {
                    status: 503,
                    code: "overloaded".into(),
                    message: "busy".into(),
                    retry_after: None,
                })
            })
            .await;
        match got {
            Err(Error::GaveUp { attempts, last }) => {
                assert!(attempts > 2, "{attempts}");
                assert_eq!(last.status(), Some(503));
            }
            other => panic!("expected GaveUp, got {other:?}"),
        }
    }
}
