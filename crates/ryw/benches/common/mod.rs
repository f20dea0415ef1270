//! A minimal adapter over a ready `service_fn`, shared by the benchmarks.

use ryw::adapter::{ErrorClass, Observed, Operation, Replay, Scopes, StoreAdapter, WriteStamp};
use ryw::fence::{FenceStrategy, FenceSupport, ReadFence};
use ryw::{ScopeKey, StoreId, Version};

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
    fn stamp_write(&self, r: &mut Req, stamp: &WriteStamp<'_>) {
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
