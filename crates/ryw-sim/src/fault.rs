//! Faults to put in front of any store service in tests: a response held back after the store
//! applied the request, as a response lost or delayed on its way back would be.
//!
//! # Example
//!
//! ```
//! use ryw_sim::fault::HoldResponses;
//! use std::time::Duration;
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let store = service_fn(|n: u32| async move { Ok::<_, std::convert::Infallible>(n * 2) });
//! // The first answer comes 10 s after the store gave it; the others at once.
//! let mut svc = HoldResponses::first(1, Duration::from_secs(10)).layer(store);
//! let started = tokio::time::Instant::now();
//! assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), 2);
//! assert!(started.elapsed() >= Duration::from_secs(10));
//! assert_eq!(svc.ready().await.unwrap().call(2).await.unwrap(), 4);
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Holds back the answers of the first `n` requests for `delay` after the inner service gave
/// them: the request applied, its answer arrives late (a timeout above fires first). A layer;
/// every service it makes, and their clones, share the count.
#[derive(Clone, Debug)]
pub struct HoldResponses {
    left: Arc<AtomicU32>,
    delay: Duration,
}

impl HoldResponses {
    /// Holds back the first `n` answers for `delay` each.
    pub fn first(n: u32, delay: Duration) -> Self {
        HoldResponses {
            left: Arc::new(AtomicU32::new(n)),
            delay,
        }
    }
}

impl<S> tower::Layer<S> for HoldResponses {
    type Service = Held<S>;

    fn layer(&self, inner: S) -> Held<S> {
        Held {
            inner,
            hold: self.clone(),
        }
    }
}

/// The service [`HoldResponses`] makes.
#[derive(Clone, Debug)]
pub struct Held<S> {
    inner: S,
    hold: HoldResponses,
}

impl<S, R> tower::Service<R> for Held<S>
where
    S: tower::Service<R>,
    S::Future: Send + 'static,
    S::Response: Send,
    S::Error: Send,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let held = self
            .hold
            .left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| l.checked_sub(1))
            .is_ok();
        let delay = self.hold.delay;
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answer = answer.await;
            if held {
                tokio::time::sleep(delay).await;
            }
            answer
        })
    }
}
