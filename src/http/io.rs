//! hyper on glommio: an adapter from glommio's `TcpStream` to `hyper::rt::Read`/`Write`, and a
//! `hyper::rt::Timer` on glommio timers (hyper's header-read timeout needs one), which keeps one
//! reactor registration per connection instead of one per request.

use futures_lite::{AsyncBufRead, AsyncRead, AsyncWrite};
use glommio::net::{Preallocated, TcpStream};
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

/// Read scratch shared by every connection of a shard that is not read through a buffered
/// stream (TLS). `poll_read` borrows it only for the duration of one synchronous call, so one
/// buffer per shard serves all its connections and hyper's uninitialised read buffer is
/// filled by a safe copy instead of an unsafe cast.
pub type Scratch = Rc<RefCell<Box<[u8]>>>;

/// The receive buffer of a plain connection (glommio's buffered stream).
pub type Plain = TcpStream<Preallocated>;

/// Bytes of a plain connection's receive buffer: a request head and a body10 body in one
/// read; larger bodies take several (after a read that fills it, the next one is a direct
/// `recv`).
const PLAIN_READ_BUFFER: usize = 8 * 1024;

/// A glommio TCP stream (or a TLS stream over one) as hyper sees it. Errors stay errors; only
/// a real EOF reads as EOF. `R` is how reads reach hyper: `()` for a plain connection (its
/// own buffer, see [`HyperIo::plain`]), a [`Scratch`] for a stream without one.
#[derive(Debug)]
pub struct HyperIo<S = Plain, R = ()> {
    stream: S,
    reads: R,
}

impl HyperIo<Plain, ()> {
    /// Wraps an accepted plain connection. Its reads go through glommio's buffered stream:
    /// a speculative `recv` first, and when that finds nothing, the buffer is lent to the
    /// kernel for an io_uring `RECV` (a completion, not a readiness poll and a second
    /// syscall); the bytes are then copied once, into hyper's buffer. Its writes are sent
    /// behind (glommio patch): each answer goes to the kernel as an io_uring `SEND` in the
    /// reactor's next submission batch, with the other connections' sends and receives, not
    /// as a `send(2)` of its own; a close waits for it.
    pub fn plain(stream: TcpStream) -> Self {
        let mut stream = stream.buffered_with(Preallocated::new(PLAIN_READ_BUFFER));
        stream.set_send_behind(true);
        Self { stream, reads: () }
    }
}

impl<S> HyperIo<S, Scratch> {
    /// Wraps a stream without a receive buffer of its own (TLS), read through the shard's
    /// scratch.
    pub fn with_scratch(stream: S, scratch: Scratch) -> Self {
        Self {
            stream,
            reads: scratch,
        }
    }
}

impl hyper::rt::Read for HyperIo<Plain, ()> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let bytes = ready!(Pin::new(&mut this.stream).poll_fill_buf(cx))?;
        let n = bytes.len().min(buf.remaining());
        buf.put_slice(&bytes[..n]);
        Pin::new(&mut this.stream).consume(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> hyper::rt::Read for HyperIo<S, Scratch> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut scratch = this.reads.borrow_mut();
        let want = buf.remaining().min(scratch.len());
        let n = ready!(Pin::new(&mut this.stream).poll_read(cx, &mut scratch[..want]))?;
        buf.put_slice(&scratch[..n]);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin, R: Unpin> hyper::rt::Write for HyperIo<S, R> {
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

/// hyper's timer for one connection, on the shard's glommio executor.
///
/// hyper arms a header-read timer for every request head it waits for (on a keep-alive
/// connection: after every answer) and drops it once the head is in. A glommio timer for each
/// would be a registration with the reactor and its removal per request. Instead the
/// connection keeps one registration: a sleep whose deadline is not earlier than the
/// registered one (the next request's, `header_read_timeout_ms` later than the last) leaves it
/// in place, and when it fires before a sleep's own deadline, that sleep registers again at its
/// deadline. A busy keep-alive connection thus registers about once per
/// `header_read_timeout_ms`, and a stalled client is still cut at its own deadline.
#[derive(Debug, Clone)]
pub struct GlommioTimer {
    armed: OnThread<Armed>,
}

/// The connection's one registration with the reactor: its deadline and the glommio timer
/// (registered once, with the connection task's waker, and never polled again; dropping it
/// removes it from the reactor).
type Armed = Rc<RefCell<Option<(Instant, glommio::timer::Timer)>>>;

impl GlommioTimer {
    /// A timer for a connection served on this thread.
    pub fn new() -> Self {
        Self {
            armed: OnThread::new(Rc::default()),
        }
    }
}

impl Default for GlommioTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl hyper::rt::Timer for GlommioTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    /// The coarse clock (see [`clock`](crate::clock)): hyper asks for the time once per
    /// request, for the header-read deadline, which a tick's error does not matter to.
    fn now(&self) -> Instant {
        crate::clock::coarse_now()
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(LocalSleep(OnThread::new(SleepState {
            deadline,
            armed: self.armed.get().clone(),
        })))
    }

    /// Moves the deadline of a sleep of ours in place (hyper resets its header-read sleep for
    /// every request of a keep-alive connection): no new box, no new registration (see
    /// [`GlommioTimer`] for when the registration is replaced).
    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<LocalSleep>() {
            Some(ours) => ours.get_mut().0.get_mut().deadline = new_deadline,
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

/// One of hyper's sleeps: a deadline, and the connection's registration that wakes it.
#[derive(Debug)]
struct SleepState {
    deadline: Instant,
    armed: Armed,
}

struct LocalSleep(OnThread<SleepState>);

impl hyper::rt::Sleep for LocalSleep {}

impl Future for LocalSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let sleep = self.get_mut().0.get();
        let now = Instant::now();
        if now >= sleep.deadline {
            return Poll::Ready(());
        }
        let mut armed = sleep.armed.borrow_mut();
        // The registration wakes this sleep in time if it is still to come and not after
        // this sleep's deadline; otherwise (none, fired, or too late) it is replaced.
        let in_time = matches!(&*armed, Some((at, _)) if *at > now && *at <= sleep.deadline);
        if !in_time {
            let mut timer = glommio::timer::Timer::new(sleep.deadline - now);
            // Registers it with this (the connection's) task's waker; it stays registered
            // until it fires or is dropped.
            let _ = Pin::new(&mut timer).poll(cx);
            *armed = Some((sleep.deadline, timer));
        }
        Poll::Pending
    }
}

/// A value of the shard's thread that hyper may hold as `Send + Sync`. glommio timers are
/// `Rc`-based and must stay on their executor's thread; hyper only ever uses its timer and
/// sleeps inside the connection future, which runs on that same executor. The owner check
/// turns any violation into a panic (use) or a leak (drop) instead of a data race.
struct OnThread<T> {
    value: ManuallyDrop<T>,
    owner: ThreadId,
}

impl<T> OnThread<T> {
    fn new(value: T) -> Self {
        Self {
            value: ManuallyDrop::new(value),
            owner: std::thread::current().id(),
        }
    }

    fn get(&self) -> &T {
        self.check();
        &self.value
    }

    fn get_mut(&mut self) -> &mut T {
        self.check();
        &mut self.value
    }

    fn check(&self) {
        assert_eq!(
            std::thread::current().id(),
            self.owner,
            "a glommio timer was used off its executor's thread"
        );
    }
}

impl<T: Clone> Clone for OnThread<T> {
    fn clone(&self) -> Self {
        Self::new(self.get().clone())
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for OnThread<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnThread")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

// SAFETY: the inner value is only touched on the thread that created it: `get` (and so
// `clone`) checks the thread before touching it and `drop` leaks it when run elsewhere.
// `&OnThread` exposes nothing without that check, so sharing a reference across threads
// (`Sync`) allows no unchecked access.
#[allow(unsafe_code)]
unsafe impl<T> Send for OnThread<T> {}
// SAFETY: see the `Send` impl above.
#[allow(unsafe_code)]
unsafe impl<T> Sync for OnThread<T> {}

impl<T> Drop for OnThread<T> {
    fn drop(&mut self) {
        if std::thread::current().id() == self.owner {
            // SAFETY: dropped exactly once, here, on the owning thread (see `Send` above).
            #[allow(unsafe_code)]
            unsafe {
                ManuallyDrop::drop(&mut self.value)
            }
        }
    }
}
