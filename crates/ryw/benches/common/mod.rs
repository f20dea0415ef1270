//! A minimal adapter over a ready `service_fn`, shared by the benchmarks.

use ryw::adapter::{ErrorClass, Observed, Operation, Replay, Scopes, StoreAdapter};
use ryw::fence::{FenceStrategy, FenceSupport, ReadFence};
use ryw::stamp::Stamp;
use ryw::{ScopeKey, Session, StoreId, Version};
use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use tower::Service;

pub(crate) const STORE: StoreId = StoreId::new(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Req {
    pub key: u64,
    pub write: bool,
    pub strong: bool,
    pub write_seq: u64,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Resp {
    pub version: u64,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct BenchAdapter;

impl StoreAdapter for BenchAdapter {
    type Request = Req;
    type Response = Resp;
    type Error = std::convert::Infallible;

    fn store(&self) -> StoreId {
        STORE
    }
    fn operation(&self, r: &Req) -> Operation {
        if r.write {
            Operation::Write(Replay::Safe)
        } else {
            Operation::Read
        }
    }
    fn scopes(&self, r: &Req, scopes: &mut Scopes) {
        scopes.push(ScopeKey::from_hash(STORE, r.key));
    }
    fn fence_support(&self) -> FenceSupport {
        FenceSupport::new().strong_reads(true)
    }
    fn stamp_write(&self, r: &mut Req, stamp: Stamp, _: &ReadFence) {
        r.write_seq = stamp.write_id.seq;
    }
    fn apply_fence(&self, r: &mut Req, _: &ReadFence, strategy: FenceStrategy) {
        r.strong = strategy == FenceStrategy::Strong;
    }
    fn observe(&self, r: &Req, resp: &Resp, observed: &mut Observed) {
        observed.push(
            ScopeKey::from_hash(STORE, r.key),
            Version::new(resp.version),
        );
    }
    fn classify(&self, _: &std::convert::Infallible) -> ErrorClass {
        ErrorClass::Permanent
    }
}

/// Polls one request through `svc` to completion (the inner service answers at once).
pub(crate) fn drive<S: Service<R>, R>(svc: &mut S, req: R) -> S::Response
where
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("not ready"),
    }
    let mut fut = pin!(svc.call(req));
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(r)) => r,
        _ => panic!("not ready"),
    }
}

pub(crate) fn inner() -> impl Service<
    Req,
    Response = Resp,
    Error = Infallible,
    Future = std::future::Ready<Result<Resp, Infallible>>,
> + Clone {
    tower::service_fn(|r: Req| {
        std::future::ready(Ok(Resp {
            version: 1_000 + r.key,
        }))
    })
}

pub(crate) fn session_with_scopes(n: u64) -> Session {
    let s = Session::new();
    s.with_state(|st| {
        for k in 0..n {
            st.advance(ScopeKey::from_hash(STORE, k), Version::new(900 + k));
        }
    });
    s
}
