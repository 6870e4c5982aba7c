//! The two clocks of a client connection: `--header-timeout` and
//! `--idle-timeout`.
//!
//! hyper has one clock, its header read timeout, and starts it whenever it
//! waits for a request head, which on a kept-alive connection is the whole
//! time the connection sits idle between requests: with it alone an idle
//! connection is closed at the header timeout, and the idle timeout means
//! nothing. So hyper's clock is off and each accepted connection is wrapped
//! in a [`Clocked`] stream that keeps both, the way nginx does
//! (`client_header_timeout`, `keepalive_timeout`):
//!
//! - the header timeout runs from a request's first byte (from the accept,
//!   for a connection's first request) until its head is complete (a blank
//!   line); past it the connection is closed, as a slowloris deserves;
//! - the idle timeout runs from the last byte of an answer until the next
//!   request's first byte; past it the connection is closed quietly (an
//!   end of file for hyper, so no error is logged);
//! - while a request is handled, neither runs: a slow answer (service-a's
//!   `delay` fault, service-b waiting for its deadline) is the daemon's own.
//!
//! The stream only watches bytes go by; it never parses beyond spotting
//! the blank line that ends a head. A request body (none of the routes take
//! one) is read as part of the request being handled.
//!
//! The acceptor also keeps the [`Intake`], for the drain: on SIGTERM it
//! stops accepting, then waits until every connection it accepted has been
//! read from. hyper's graceful shutdown closes a connection from which
//! nothing was read yet, so a request whose bytes were on their way when
//! the daemon accepted it would be lost (a client sees "connection closed
//! before message completed" during a socket-activated restart); read, it
//! is served like any request in flight.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use salvo::conn::tcp::TcpCoupler;
use salvo::conn::{Accepted, Acceptor, Holding};
use salvo::fuse::ArcFusePolicy;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// The two timeouts, from the settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clocks {
    /// From a request's first byte to the end of its head.
    pub header: Duration,
    /// From the end of an answer to the next request's first byte.
    pub idle: Duration,
}

/// Whether the acceptor still takes connections, and how many of those it
/// took have not been read from yet: what the drain waits for.
///
/// The acceptor takes a connection from the kernel and counts it in one
/// step under the `stopped` lock, which [`Intake::stop`] takes too: once
/// `stop` returns, every connection taken is counted, and no other will be.
/// (Counted after the lock, one taken on the acceptor's thread as the drain
/// began on another could go uncounted, and be closed unread.)
#[derive(Debug, Default)]
pub struct Intake {
    stopped: Mutex<bool>,
    unread: AtomicUsize,
    changed: Notify,
}

impl Intake {
    /// Stops taking connections (they wait in the kernel's queue: for the
    /// next process, under socket activation). Waits for a connection being
    /// taken at this moment to be counted.
    pub fn stop(&self) {
        *self.gate() = true;
    }

    /// Waits until every accepted connection has been read from (or
    /// closed), for at most `within`: a client that connected and sends
    /// nothing is not waited for longer.
    pub async fn settled(&self, within: Duration) {
        let settled = async {
            loop {
                let changed = self.changed.notified();
                let mut changed = std::pin::pin!(changed);
                changed.as_mut().enable();
                if self.unread.load(Ordering::SeqCst) == 0 {
                    return;
                }
                changed.await;
            }
        };
        let _ = tokio::time::timeout(within, settled).await;
    }

    fn gate(&self) -> MutexGuard<'_, bool> {
        self.stopped.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read(&self) {
        self.unread.fetch_sub(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

/// Where a connection is in its request/answer cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request head: the header clock runs.
    Head,
    /// A request is being handled (its body read, its answer made).
    Handling,
    /// Answered; waiting for the next request: the idle clock runs.
    Idle,
}

/// A connection's stream, with its two clocks.
#[derive(Debug)]
pub struct Clocked<S> {
    inner: S,
    clocks: Clocks,
    phase: Phase,
    /// The deadline of the clock that runs (unused while handling).
    timer: Pin<Box<Sleep>>,
    /// The last two bytes of the head so far, to spot the blank line that
    /// ends it across reads (`\r\n\r\n`, or `\n\n`, which hyper accepts).
    last: [u8; 2],
    /// Counted in the intake's unread connections until first read from.
    unread: Option<Arc<Intake>>,
    /// The end of file that follows a complete head has been held back
    /// once already (see [`Clocked::poll_read`]).
    eof_held: bool,
}

impl<S> Drop for Clocked<S> {
    fn drop(&mut self) {
        if let Some(intake) = self.unread.take() {
            intake.read();
        }
    }
}

impl<S> Clocked<S> {
    /// A new connection: its first request's head is due within the header
    /// timeout.
    pub fn new(inner: S, clocks: Clocks) -> Self {
        Self {
            inner,
            clocks,
            phase: Phase::Head,
            timer: Box::pin(tokio::time::sleep(clocks.header)),
            last: [0; 2],
            unread: None,
            eof_held: false,
        }
    }

    /// Counts this connection among `intake`'s unread ones until its first
    /// bytes are read.
    fn unread_in(mut self, intake: Arc<Intake>) -> Self {
        intake.unread.fetch_add(1, Ordering::SeqCst);
        self.unread = Some(intake);
        self
    }

    fn start(&mut self, phase: Phase, within: Duration) {
        self.phase = phase;
        self.timer.as_mut().reset(Instant::now() + within);
    }

    /// Bytes of a request arrived: a head begins, or goes on, or ends.
    fn on_read(&mut self, bytes: &[u8]) {
        if self.phase == Phase::Idle {
            self.start(Phase::Head, self.clocks.header);
            self.last = [0; 2];
            self.eof_held = false;
        }
        if self.phase != Phase::Head {
            return;
        }
        for &b in bytes {
            if b == b'\n' && (self.last[1] == b'\n' || self.last == *b"\n\r") {
                // Whatever follows belongs to the request being handled
                // (a body), or is the next request, pipelined: read either
                // way, under no clock until this one is answered.
                self.phase = Phase::Handling;
                return;
            }
            self.last = [self.last[1], b];
        }
    }

    /// Bytes of an answer went out: the idle clock starts (again, after
    /// each piece of the answer). It is polled here, so the connection's
    /// task wakes when it runs out: hyper may not read again until then
    /// (it read, found nothing, and wrote the answer after).
    fn on_write(&mut self, cx: &mut Context<'_>) {
        self.start(Phase::Idle, self.clocks.idle);
        let _ = self.timer.as_mut().poll(cx);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Clocked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let bytes = &buf.filled()[before..];
                // The client closed its side after a complete request (it
                // gave up while this daemon could not read). hyper, finding
                // the end of file before it has polled the request's
                // handler once, would drop the request unseen: no access
                // line, no span. Held back for one poll, it lets the
                // handler start and record the request (answered, or 499).
                if bytes.is_empty() && this.phase == Phase::Handling && !this.eof_held {
                    this.eof_held = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                if bytes.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                // A head dribbled in past its deadline is still too late.
                if this.phase == Phase::Head && this.timer.is_elapsed() {
                    return Poll::Ready(Err(header_timeout()));
                }
                // hyper holds these bytes once this returns: a drain no
                // longer closes the connection unread.
                if let Some(intake) = this.unread.take() {
                    intake.read();
                }
                this.on_read(bytes);
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.phase {
                Phase::Handling => Poll::Pending,
                Phase::Head => match this.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(header_timeout())),
                    Poll::Pending => Poll::Pending,
                },
                // The end of the connection, as if the client had closed it:
                // hyper closes an idle connection quietly.
                Phase::Idle => this.timer.as_mut().poll(cx).map(Ok),
            },
            ready => ready,
        }
    }
}

fn header_timeout() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "request head not complete in time")
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Clocked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(1..)) = written {
            this.on_write(cx);
        }
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(1..)) = written {
            this.on_write(cx);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// An acceptor whose connections keep the two clocks, and that stops and
/// counts for the drain ([`Intake`]).
#[derive(Debug)]
pub struct ClockedAcceptor<A> {
    inner: A,
    clocks: Clocks,
    intake: Arc<Intake>,
}

impl<A> ClockedAcceptor<A> {
    /// Wraps `inner`'s connections.
    pub fn new(inner: A, clocks: Clocks) -> Self {
        Self {
            inner,
            clocks,
            intake: Arc::default(),
        }
    }

    /// What the drain stops and waits on.
    pub fn intake(&self) -> Arc<Intake> {
        self.intake.clone()
    }
}

impl<A, S> Acceptor for ClockedAcceptor<A>
where
    A: Acceptor<Stream = S, Coupler = TcpCoupler<S>>,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Coupler = TcpCoupler<Clocked<S>>;
    type Stream = Clocked<S>;

    fn holdings(&self) -> &[Holding] {
        self.inner.holdings()
    }

    async fn accept(
        &mut self,
        fuse_policy: Option<ArcFusePolicy>,
    ) -> io::Result<Accepted<Self::Coupler, Self::Stream>> {
        let intake = self.intake.clone();
        let clocks = self.clocks;
        let mut taking = std::pin::pin!(self.inner.accept(fuse_policy));
        std::future::poll_fn(|cx| {
            let stopped = intake.gate();
            if *stopped {
                // Never again: the server's loop is told to stop too.
                return Poll::Pending;
            }
            taking.as_mut().poll(cx).map_ok(|accepted| {
                accepted.map_into(
                    |_| TcpCoupler::new(),
                    |s| Clocked::new(s, clocks).unread_in(intake.clone()),
                )
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLOCKS: Clocks = Clocks {
        header: Duration::from_secs(1),
        idle: Duration::from_secs(3),
    };

    /// A drain waits for accepted connections until each is read from or
    /// closed, and no longer than it is told.
    #[tokio::test(start_paused = true)]
    async fn a_drain_waits_for_each_accepted_connection_to_be_read() {
        let intake = Arc::new(Intake::default());
        let started = Instant::now();
        intake.settled(Duration::from_secs(5)).await;
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "nothing accepted: no wait"
        );

        let read_soon = Clocked::new((), CLOCKS).unread_in(intake.clone());
        let closed_soon = Clocked::new((), CLOCKS).unread_in(intake.clone());
        let reader = tokio::spawn(async move {
            let mut read_soon = read_soon;
            tokio::time::sleep(Duration::from_millis(100)).await;
            // What poll_read does with the first bytes.
            if let Some(intake) = read_soon.unread.take() {
                intake.read();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(closed_soon);
            read_soon
        });
        let started = Instant::now();
        intake.settled(Duration::from_secs(5)).await;
        assert_eq!(started.elapsed(), Duration::from_millis(200));
        let _read = reader.await.unwrap();

        // One that is never read: waited for as long as the bound, no longer.
        let _silent = Clocked::new((), CLOCKS).unread_in(intake.clone());
        let started = Instant::now();
        intake.settled(Duration::from_millis(500)).await;
        assert_eq!(started.elapsed(), Duration::from_millis(500));
    }

    /// Once the intake is stopped, connections wait in the kernel's queue:
    /// none is taken, or counted, however long the acceptor is polled.
    #[tokio::test]
    async fn a_stopped_intake_takes_no_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let inner = salvo::conn::tcp::TcpAcceptor::try_from(listener).unwrap();
        let mut acceptor = ClockedAcceptor::new(inner, CLOCKS);
        let intake = acceptor.intake();
        let _first = tokio::net::TcpStream::connect(addr).await.unwrap();
        let taken = acceptor.accept(None).await.unwrap();
        assert_eq!(intake.unread.load(Ordering::SeqCst), 1, "taken and counted");
        drop(taken);
        assert_eq!(intake.unread.load(Ordering::SeqCst), 0, "closed unread");

        intake.stop();
        let _second = tokio::net::TcpStream::connect(addr).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(300), acceptor.accept(None)).await;
        assert!(waited.is_err(), "a connection was taken after the stop");
        assert_eq!(intake.unread.load(Ordering::SeqCst), 0);
    }

    /// An acceptor that runs `hook` once it has taken a connection, before
    /// it hands it on: the instant at which a drain could look in between.
    struct Hooked<A> {
        inner: A,
        hook: Option<Box<dyn FnOnce() + Send>>,
    }

    impl<A: Acceptor> Acceptor for Hooked<A> {
        type Coupler = A::Coupler;
        type Stream = A::Stream;

        fn holdings(&self) -> &[Holding] {
            self.inner.holdings()
        }

        async fn accept(
            &mut self,
            fuse_policy: Option<ArcFusePolicy>,
        ) -> io::Result<Accepted<Self::Coupler, Self::Stream>> {
            let accepted = self.inner.accept(fuse_policy).await?;
            if let Some(hook) = self.hook.take() {
                hook();
            }
            Ok(accepted)
        }
    }

    /// SIGTERM as a connection is being taken (the acceptor, on one thread,
    /// has it from the kernel; the drain, on another, stops the intake and
    /// counts what is unread): the drain still waits for that connection to
    /// be read from. Were it missed, the graceful stop would close it unread
    /// and its request would be lost.
    #[tokio::test]
    async fn a_connection_taken_as_the_drain_begins_is_waited_for() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let inner = salvo::conn::tcp::TcpAcceptor::try_from(listener).unwrap();
        let read = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (drained, drain_report) = std::sync::mpsc::channel();
        let mut acceptor = ClockedAcceptor::new(Hooked { inner, hook: None }, CLOCKS);
        let intake = acceptor.intake();
        acceptor.inner.hook = Some(Box::new({
            let read = read.clone();
            move || {
                // The drain, on a thread of its own, while this connection
                // is taken and not yet handed on.
                let (begun, begins) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    let _ = begun.send(());
                    intake.stop();
                    tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build()
                        .unwrap()
                        .block_on(intake.settled(Duration::from_secs(5)));
                    let _ = drained.send(read.load(Ordering::SeqCst));
                });
                begins.recv().unwrap();
                // Time for the drain to look (it may not be able to yet).
                std::thread::sleep(Duration::from_millis(200));
            }
        }));
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let accepted = acceptor.accept(None).await.unwrap();
        let mut stream = accepted.stream;
        tokio::time::sleep(Duration::from_millis(100)).await;
        read.store(true, Ordering::SeqCst);
        let mut buf = [0u8; 64];
        assert!(stream.read(&mut buf).await.unwrap() > 0);
        let waited_for_the_read = tokio::task::spawn_blocking(move || drain_report.recv().unwrap())
            .await
            .unwrap();
        assert!(
            waited_for_the_read,
            "the drain went on before the connection taken as it began was read"
        );
    }

    /// The clocks as a reader of the stream meets them, on a paused clock:
    /// the header timeout is an error, the idle timeout an end of file, and
    /// neither runs while a request is handled (its body may come late).
    #[tokio::test(start_paused = true)]
    async fn the_clocks_as_hyper_meets_them() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(1024);
        let mut server = Clocked::new(server, CLOCKS);
        let mut buf = [0u8; 256];

        // A head that never ends: cut at the header timeout, not before.
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert!(server.read(&mut buf).await.unwrap() > 0);
        let started = Instant::now();
        let e = server.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), CLOCKS.header);

        // A head that ends: no clock while it is handled, even for a body
        // that comes after the header timeout.
        let (mut client, server) = tokio::io::duplex(1024);
        let mut server = Clocked::new(server, CLOCKS);
        client.write_all(b"POST / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(server.read(&mut buf).await.unwrap() > 0);
        tokio::time::sleep(CLOCKS.idle * 2).await;
        client.write_all(b"late body").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 9);

        // Answered: idle until the idle timeout, then an end of file.
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        let started = Instant::now();
        assert_eq!(server.read(&mut buf).await.unwrap(), 0);
        assert_eq!(started.elapsed(), CLOCKS.idle);
    }

    /// A request whose client closed its side right after sending it (it
    /// gave up while the daemon was busy or frozen): the request and the
    /// end of file are both waiting when the daemon reads. hyper, seeing the
    /// end of file before it has polled the request's handler even once,
    /// would drop the request unseen: no access line, no span. So the end of
    /// file after a complete head is held back for one poll, which lets the
    /// handler start (and record the request, as answered or as 499).
    #[tokio::test]
    async fn the_end_of_file_after_a_request_waits_one_poll() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(1024);
        let mut server = Clocked::new(server, CLOCKS);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        client.shutdown().await.unwrap();
        let mut buf = [0u8; 256];
        assert!(server.read(&mut buf).await.unwrap() > 0);
        // The first look finds nothing yet, and asks to be polled again.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut read_buf = ReadBuf::new(&mut buf);
        assert!(
            Pin::new(&mut server)
                .poll_read(&mut cx, &mut read_buf)
                .is_pending()
        );
        // The next one is the end of file.
        assert_eq!(server.read(&mut buf).await.unwrap(), 0);

        // An end of file with no request pending (an idle connection the
        // client closes) comes at once.
        let (mut client, server) = tokio::io::duplex(1024);
        let mut server = Clocked::new(server, CLOCKS);
        client.shutdown().await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_head_ends_at_its_blank_line_even_split_across_reads() {
        for pieces in [
            &[&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..]][..],
            &[b"GET / HTTP/1.1\r\nHost: x\r", b"\n", b"\r", b"\n"],
            &[b"GET / HTTP/1.1\nHost: x\n", b"\n"],
        ] {
            let mut c = Clocked::new((), CLOCKS);
            let (last, first) = pieces.split_last().unwrap();
            for piece in first {
                c.on_read(piece);
                assert_eq!(c.phase, Phase::Head, "{pieces:?}");
            }
            c.on_read(last);
            assert_eq!(c.phase, Phase::Handling, "{pieces:?}");
        }
        let mut c = Clocked::new((), CLOCKS);
        c.on_read(b"GET / HTTP/1.1\r\nHost: x\r\n");
        assert_eq!(c.phase, Phase::Head, "one line break ends no head");
    }

    #[tokio::test]
    async fn an_answer_starts_the_idle_clock_and_a_first_byte_the_header_clock() {
        let mut c = Clocked::new((), CLOCKS);
        c.on_read(b"GET / HTTP/1.1\r\n\r\n");
        c.on_write(&mut Context::from_waker(std::task::Waker::noop()));
        assert_eq!(c.phase, Phase::Idle);
        let idle_until = c.timer.deadline();
        assert!(idle_until >= Instant::now() + CLOCKS.idle - Duration::from_millis(100));
        c.on_read(b"G");
        assert_eq!(c.phase, Phase::Head);
        assert!(
            c.timer.deadline() < idle_until,
            "the header clock is shorter"
        );
        // Bytes read while a request is handled (a body) start no clock.
        c.on_read(b"ET / HTTP/1.1\r\n\r\nbody");
        assert_eq!(c.phase, Phase::Handling);
        c.on_read(b"more body\r\n\r\n");
        assert_eq!(c.phase, Phase::Handling);
    }
}
