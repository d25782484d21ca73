//! hyper on glommio: an adapter from glommio's `TcpStream` to `hyper::rt::Read`/`Write`, and a
//! `hyper::rt::Timer` on glommio timers (hyper's header-read timeout needs one).

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

/// Read scratch shared by every connection of a shard. `poll_read` borrows it only for the
/// duration of one synchronous call, so one buffer per shard serves all its connections and
/// hyper's uninitialised read buffer is filled by a safe copy instead of an unsafe cast.
pub type Scratch = Rc<RefCell<Box<[u8]>>>;

/// A glommio TCP stream (or a TLS stream over one) as hyper sees it. Errors stay errors; only
/// a real EOF reads as EOF.
#[derive(Debug)]
pub struct HyperIo<S = TcpStream> {
    stream: S,
    scratch: Scratch,
}

impl<S> HyperIo<S> {
    /// Wraps an accepted stream.
    pub fn new(stream: S, scratch: Scratch) -> Self {
        Self { stream, scratch }
    }
}

impl<S: AsyncRead + Unpin> hyper::rt::Read for HyperIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut scratch = this.scratch.borrow_mut();
        let want = buf.remaining().min(scratch.len());
        match Pin::new(&mut this.stream).poll_read(cx, &mut scratch[..want]) {
            Poll::Ready(Ok(n)) => {
                buf.put_slice(&scratch[..n]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> hyper::rt::Write for HyperIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_close(cx)
    }
}

/// hyper's timer on the shard's glommio executor.
#[derive(Debug, Clone, Copy, Default)]
pub struct GlommioTimer;

impl hyper::rt::Timer for GlommioTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(LocalSleep {
            timer: ManuallyDrop::new(glommio::timer::Timer::new(duration)),
            owner: std::thread::current().id(),
        })
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep(deadline.saturating_duration_since(Instant::now()))
    }
}

/// A glommio timer that hyper may hold as `Send + Sync`. glommio timers are `Rc`-based and
/// must stay on their executor's thread; hyper only ever polls and drops them inside the
/// connection future, which runs on that same executor. The owner check turns any violation
/// into a panic (poll) or a leak (drop) instead of a data race.
struct LocalSleep {
    timer: ManuallyDrop<glommio::timer::Timer>,
    owner: ThreadId,
}

// SAFETY: the inner `Rc`-based timer is only touched on the thread that created it: `poll`
// checks the thread before touching it and `drop` leaks it when run elsewhere. `&LocalSleep`
// exposes nothing, so sharing a reference across threads (`Sync`) allows no access at all.
#[allow(unsafe_code)]
unsafe impl Send for LocalSleep {}
// SAFETY: see the `Send` impl above.
#[allow(unsafe_code)]
unsafe impl Sync for LocalSleep {}

impl hyper::rt::Sleep for LocalSleep {}

impl Future for LocalSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        assert_eq!(
            std::thread::current().id(),
            this.owner,
            "a glommio timer was polled off its executor's thread"
        );
        Pin::new(&mut *this.timer).poll(cx).map(|_| ())
    }
}

impl Drop for LocalSleep {
    fn drop(&mut self) {
        if std::thread::current().id() == self.owner {
            // SAFETY: dropped exactly once, here, on the owning thread (see `Send` above).
            #[allow(unsafe_code)]
            unsafe {
                ManuallyDrop::drop(&mut self.timer)
            }
        }
    }
}
