//! Waiting by polling with a deadline, never by sleeping a fixed time.

use std::time::{Duration, Instant};

/// Errors of waiting.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("timed out after {timeout:?} waiting for {what}; last seen: {last}")]
    Timeout {
        what: String,
        timeout: Duration,
        last: String,
    },
}

/// Calls `check` every `interval` until it returns `Ok(value)` or `timeout`
/// passes. `check` returns `Err(what it saw)` while the condition does not
/// hold yet; the last one goes into the timeout error.
pub fn until<T, E: std::fmt::Display>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut check: impl FnMut() -> Result<T, E>,
) -> Result<T, WaitError> {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(last) => {
                if Instant::now() >= deadline {
                    return Err(WaitError::Timeout {
                        what: what.to_string(),
                        timeout,
                        last: last.to_string(),
                    });
                }
            }
        }
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_once_the_condition_holds() {
        let mut n = 0;
        let v = until(
            "n to reach 3",
            Duration::from_secs(5),
            Duration::from_millis(1),
            || {
                n += 1;
                if n >= 3 {
                    Ok(n)
                } else {
                    Err(format!("n = {n}"))
                }
            },
        )
        .unwrap();
        assert_eq!(v, 3);
    }

    #[test]
    fn timeout_names_what_and_the_last_state() {
        let err = until::<(), &str>(
            "never",
            Duration::from_millis(20),
            Duration::from_millis(5),
            || Err("still no"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("never") && err.contains("still no"), "{err}");
    }
}
