//! Pieces shared by the core's integration tests.

/// Retries every error, up to `0` times, by sending a clone of the request: tower middleware
/// above the session layer.
#[derive(Clone, Debug)]
pub(crate) struct RetryErrors(pub(crate) u32);

impl<Req: Clone, Res> tower::retry::Policy<Req, Res, tower::BoxError> for RetryErrors {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _: &mut Req,
        result: &mut Result<Res, tower::BoxError>,
    ) -> Option<Self::Future> {
        if result.is_err() && self.0 > 0 {
            self.0 -= 1;
            return Some(std::future::ready(()));
        }
        None
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}
