//! Accepting connections on a listener without spinning when accepting fails.

use std::time::Duration;

/// Sleep after an accept error that retrying at once cannot fix (out of file descriptors or
/// memory, anything unexpected), doubling up to one second; errors that concern only the
/// one connection (a peer that gave up) retry at once.
pub struct AcceptBackoff {
    delay: Duration,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff {
            delay: Duration::ZERO,
        }
    }
}

impl AcceptBackoff {
    pub fn succeeded(&mut self) {
        self.delay = Duration::ZERO;
    }

    /// Wait as long as `e` calls for.
    pub async fn failed(&mut self, e: &std::io::Error) {
        let one_connection = matches!(
            e.raw_os_error(),
            Some(libc::ECONNABORTED | libc::ECONNRESET | libc::EINTR | libc::EPROTO | libc::EPERM)
        );
        if one_connection {
            return;
        }
        self.delay = (self.delay * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
        tracing::warn!(error = %e, backoff_ms = self.delay.as_millis() as u64, "accept failed; backing off");
        tokio::time::sleep(self.delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accept_errors_back_off_unless_they_concern_one_connection() {
        let mut b = AcceptBackoff::default();
        let t = tokio::time::Instant::now();
        b.failed(&std::io::Error::from_raw_os_error(libc::ECONNABORTED))
            .await;
        assert!(t.elapsed() < Duration::from_millis(5));
        for _ in 0..3 {
            b.failed(&std::io::Error::from_raw_os_error(libc::EMFILE))
                .await;
        }
        // 10 + 20 + 40 ms
        assert!(t.elapsed() >= Duration::from_millis(70));
        b.succeeded();
        assert_eq!(b.delay, Duration::ZERO);
    }
}
