//! An admitted peer's TCP stream, noting when the kernel last accepted bytes from it.
//!
//! A peer that stops reading fills its socket's buffers, and then every write to it waits.
//! The outbound queue bounds what piles up behind such a write, but a peer whose queue
//! never overflows (a sender that stops in time) would hold its queue, tungstenite's write
//! buffer and the waiting task forever. The connection task therefore watches how long a
//! write has gone without progress and drops the peer past `write_timeout`
//! (`docs/deploy.md` §1, memory).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until};

/// When a socket last accepted written bytes, shared between the socket (which sets it)
/// and its connection task (which reads it while a write waits).
#[derive(Debug)]
pub(crate) struct WriteClock {
    base: Instant,
    /// Milliseconds after `base`.
    last_progress_ms: AtomicU64,
}

impl WriteClock {
    pub(crate) fn new() -> Arc<WriteClock> {
        Arc::new(WriteClock {
            base: Instant::now(),
            last_progress_ms: AtomicU64::new(0),
        })
    }

    fn progressed(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_progress_ms.store(ms, Relaxed);
    }

    fn last_progress(&self) -> Instant {
        self.base + Duration::from_millis(self.last_progress_ms.load(Relaxed))
    }

    /// Completes once a write that began at `began` has gone `bound` without the socket
    /// accepting a byte. Poll it beside the write; it never completes while bytes flow.
    pub(crate) async fn stalled(&self, began: Instant, bound: Duration) {
        loop {
            let deadline = self.last_progress().max(began) + bound;
            if Instant::now() >= deadline {
                return;
            }
            sleep_until(deadline).await;
        }
    }
}

/// A `TcpStream` that records write progress in a [`WriteClock`].
#[derive(Debug)]
pub(crate) struct Socket {
    stream: TcpStream,
    clock: Arc<WriteClock>,
}

impl Socket {
    pub(crate) fn new(stream: TcpStream, clock: Arc<WriteClock>) -> Self {
        Socket { stream, clock }
    }

    /// Makes the close reset the connection, so the kernel frees what it still holds for
    /// a peer that is not reading rather than keep retrying to deliver it.
    pub(crate) fn reset_on_close(&self) {
        let _ = self.stream.set_zero_linger();
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written
            && n > 0
        {
            self.clock.progressed();
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = written
            && n > 0
        {
            self.clock.progressed();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_write_is_stalled_only_after_the_bound_without_progress() {
        let clock = WriteClock::new();
        let bound = Duration::from_secs(10);
        let began = Instant::now();
        tokio::time::advance(Duration::from_secs(6)).await;
        clock.progressed();
        let stalled = clock.stalled(began, bound);
        tokio::pin!(stalled);
        // Progress at 6 s moves the deadline to 16 s.
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(futures_util::poll!(stalled.as_mut()).is_pending());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(futures_util::poll!(stalled.as_mut()).is_ready());
    }
}
