//! One write per pass of a connection's task, however many streams it served.
//!
//! h2 flushes its writer after every data frame larger than a few hundred bytes, so a
//! rotation pushed to 100 streams of one connection would cost 100 `write` calls. Between
//! [`Cork::cork`] and [`Cork::uncork`], the connection's writes land in a buffer and its
//! flushes are deferred; [`Cork::poll_flush`] then writes the buffer at once, like
//! `TCP_CORK` without the system calls. The buffer is bounded: past [`HIGH_WATER`] it is
//! written out first, and a socket that cannot take it makes the writer wait (flow control
//! reaches h2 as back-pressure, as it would without the cork).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes buffered before the buffer is written out even while corked.
pub const HIGH_WATER: usize = 256 * 1024;
/// A buffer larger than this is freed once written: idle connections hold none.
const KEEP_CAPACITY: usize = 16 * 1024;

struct Shared<IO> {
    io: IO,
    buf: Vec<u8>,
    /// How much of `buf` is written already.
    written: usize,
    corked: bool,
}

/// The connection's I/O as h2 sees it.
pub struct Corked<IO>(Arc<Mutex<Shared<IO>>>);

/// The connection task's handle on the same buffer.
pub struct Cork<IO>(Arc<Mutex<Shared<IO>>>);

/// Wraps `io`, uncorked.
pub fn wrap<IO>(io: IO) -> (Corked<IO>, Cork<IO>) {
    let shared = Arc::new(Mutex::new(Shared {
        io,
        buf: Vec::new(),
        written: 0,
        corked: false,
    }));
    (Corked(shared.clone()), Cork(shared))
}

fn lock<IO>(shared: &Mutex<Shared<IO>>) -> MutexGuard<'_, Shared<IO>> {
    // Only the connection's own task takes this lock; a panic there ends the connection.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

impl<IO: AsyncWrite + Unpin> Shared<IO> {
    /// Writes the buffer out and flushes the I/O.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.written = 0;
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.buf.len() >= HIGH_WATER {
            ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO> Cork<IO> {
    /// Defers the connection's flushes until [`Cork::uncork`] and [`Cork::poll_flush`].
    pub fn cork(&self) {
        lock(&self.0).corked = true;
    }

    pub fn uncork(&self) {
        lock(&self.0).corked = false;
    }
}

impl<IO: AsyncWrite + Unpin> Cork<IO> {
    /// Writes what the pass buffered. Pending: the socket is full, and wakes the task when
    /// it drains.
    pub fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        lock(&self.0).poll_drain(cx)
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Corked<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut lock(&self.0).io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Corked<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut shared = lock(&self.0);
        ready!(shared.poll_room(cx))?;
        shared.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut shared = lock(&self.0);
        ready!(shared.poll_room(cx))?;
        let mut n = 0;
        for b in bufs {
            shared.buf.extend_from_slice(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }

    /// Vectored: h2 then hands over a frame's header and payload in one call.
    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut shared = lock(&self.0);
        if shared.corked {
            return Poll::Ready(Ok(()));
        }
        shared.poll_drain(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut shared = lock(&self.0);
        ready!(shared.poll_drain(cx))?;
        Pin::new(&mut shared.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Corked writes reach the peer only when the task flushes, in one piece.
    #[tokio::test]
    async fn corked_writes_wait_for_the_flush() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let (mut corked, cork) = wrap(ours);
        cork.cork();
        corked.write_all(b"frame one ").await.unwrap();
        corked.flush().await.unwrap();
        corked.write_all(b"frame two").await.unwrap();
        corked.flush().await.unwrap();
        let mut buf = [0u8; 64];
        let nothing = futures::FutureExt::now_or_never(theirs.read(&mut buf));
        assert!(nothing.is_none(), "nothing is written while corked");
        cork.uncork();
        std::future::poll_fn(|cx| cork.poll_flush(cx))
            .await
            .unwrap();
        let n = theirs.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"frame one frame two");
    }

    /// Past the high-water mark the buffer is written even while corked, and a full peer
    /// makes the writer wait instead of growing the buffer.
    #[tokio::test]
    async fn the_buffer_is_bounded() {
        let (ours, mut theirs) = tokio::io::duplex(HIGH_WATER);
        let (mut corked, cork) = wrap(ours);
        cork.cork();
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..HIGH_WATER / chunk.len() {
            corked.write_all(&chunk).await.unwrap();
        }
        // The buffer is full; this write drains it into the pipe first.
        corked.write_all(&chunk).await.unwrap();
        // The pipe is full now and the buffer is at the mark again: the next write waits.
        for _ in 1..HIGH_WATER / chunk.len() {
            corked.write_all(&chunk).await.unwrap();
        }
        let waits = futures::FutureExt::now_or_never(corked.write_all(&chunk));
        assert!(waits.is_none(), "a full peer makes the writer wait");
        let mut sink = vec![0u8; HIGH_WATER];
        theirs.read_exact(&mut sink).await.unwrap();
        assert!(sink.iter().all(|b| *b == 7));
    }
}
