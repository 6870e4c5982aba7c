//! Which connection an attempt went out on: a kept-alive one from the pool,
//! or one it opened. That decides the one resend ([`crate::upstream`]): a
//! kept-alive connection that service-a closed just as the request went out
//! on it may be tried again; a fresh one that closed may not (service-a may
//! have crashed on this very request).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

tokio::task_local! {
    /// Set when the attempt in progress opened a new connection to
    /// service-a (rather than reusing a kept-alive one).
    static NEW_CONNECTION: Cell<bool>;
}

/// Runs one attempt, and says whether it opened a new connection. Takes
/// the attempt as a closure so that its future is made in place, inside
/// this one: made outside and passed in, it would be copied at each move.
pub async fn watching_connections<F: Future>(attempt: impl FnOnce() -> F) -> (F::Output, bool) {
    NEW_CONNECTION
        .scope(Cell::new(false), async {
            let output = attempt().await;
            (output, NEW_CONNECTION.with(Cell::get))
        })
        .await
}

/// A connector layer that marks the attempt in progress as one that made a
/// new connection. hyper's pool races an idle connection coming back against
/// a new one being made; if the idle one wins, the new one is finished in a
/// background task and the request goes out on the reused connection. So
/// the mark is set when the connect *completes*, which is in the requesting
/// task only when the new connection is the one the request uses.
#[derive(Debug, Clone, Copy)]
pub struct MarkNewConnections;

impl<S> tower_layer::Layer<S> for MarkNewConnections {
    type Service = MarkNew<S>;

    fn layer(&self, inner: S) -> MarkNew<S> {
        MarkNew(inner)
    }
}

/// The connector, wrapped by [`MarkNewConnections`].
#[derive(Debug, Clone)]
pub struct MarkNew<S>(S);

impl<S, R> tower_service::Service<R> for MarkNew<S>
where
    S: tower_service::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, target: R) -> Self::Future {
        let connecting = self.0.call(target);
        Box::pin(async move {
            let connected = connecting.await;
            // Outside an attempt (finished in the background, for the pool)
            // there is nothing to mark.
            if connected.is_ok() {
                let _ = NEW_CONNECTION.try_with(|marked| marked.set(true));
            }
            connected
        })
    }
}
