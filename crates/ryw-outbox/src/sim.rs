//! The durable encoding of the simulated store's requests (feature `sim`).

use crate::entry::{DecodeError, DurableRequest, NotDeferrable, Reader};
use ryw::clock::HybridTimestamp;
use ryw::{SessionId, Version, WriteId};
use ryw_sim::SimRequest;

const GET: u8 = 0;
const PUT: u8 = 1;
const MAX_KEY: usize = 64 * 1024;

impl DurableRequest for SimRequest {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), NotDeferrable> {
        let put = match self {
            SimRequest::Put(p) => p,
            SimRequest::Get(_) => {
                return Err(NotDeferrable {
                    reason: "a read is never deferred",
                })
            }
        };
        if put.key.len() > MAX_KEY {
            return Err(NotDeferrable {
                reason: "key longer than the 64 KiB an entry keeps",
            });
        }
        out.push(PUT);
        out.extend_from_slice(&(put.key.len() as u32).to_le_bytes());
        out.extend_from_slice(put.key.as_bytes());
        out.extend_from_slice(&put.value.to_le_bytes());
        match put.write_id {
            Some(id) => {
                out.push(1);
                out.extend_from_slice(&id.session.as_u128().to_le_bytes());
                out.extend_from_slice(&id.lane.to_le_bytes());
                out.extend_from_slice(&id.seq.to_le_bytes());
            }
            None => out.push(0),
        }
        optional(out, put.clock.map(HybridTimestamp::get));
        optional(out, put.if_version.map(Version::get));
        Ok(())
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader(bytes);
        match r.u8()? {
            PUT => {}
            GET => return Err(DecodeError::Invalid("a read is never deferred")),
            _ => return Err(DecodeError::Invalid("request kind")),
        }
        let len = r.len("key", MAX_KEY)?;
        let key = std::str::from_utf8(r.take(len)?).map_err(|_| DecodeError::Invalid("key"))?;
        let value = r.u64()?;
        let write_id = match r.u8()? {
            0 => None,
            1 => Some(WriteId::new(
                SessionId::from_u128(u128::from_le_bytes(r.array()?)),
                r.u64()?,
                r.u64()?,
            )),
            _ => return Err(DecodeError::Invalid("write id flag")),
        };
        let clock = read_optional(&mut r)?.map(HybridTimestamp::new);
        let if_version = read_optional(&mut r)?.map(Version::new);
        if !r.0.is_empty() {
            return Err(DecodeError::Trailing);
        }
        let mut request = match if_version {
            Some(v) => SimRequest::put_if(key, value, v),
            None => SimRequest::put(key, value),
        };
        if let SimRequest::Put(p) = &mut request {
            p.write_id = write_id;
            p.clock = clock;
        }
        Ok(request)
    }
}

fn optional(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        Some(v) => {
            out.push(1);
            out.extend_from_slice(&v.to_le_bytes());
        }
        None => out.push(0),
    }
}

fn read_optional(r: &mut Reader<'_>) -> Result<Option<u64>, DecodeError> {
    match r.u8()? {
        0 => Ok(None),
        1 => Ok(Some(r.u64()?)),
        _ => Err(DecodeError::Invalid("optional flag")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn writes_round_trip(key in "[a-z]{0,20}", value in any::<u64>(), id in any::<Option<(u128, u64, u64)>>(), clock in any::<Option<u64>>(), cond in any::<Option<u64>>()) {
            let mut request = match cond {
                Some(v) => SimRequest::put_if(key.as_str(), value, Version::new(v)),
                None => SimRequest::put(key.as_str(), value),
            };
            if let SimRequest::Put(p) = &mut request {
                p.write_id = id.map(|(s, l, q)| WriteId::new(SessionId::from_u128(s), l, q));
                p.clock = clock.map(HybridTimestamp::new);
            }
            let mut bytes = Vec::new();
            request.encode(&mut bytes).unwrap();
            prop_assert_eq!(SimRequest::decode(&bytes).unwrap(), request);
            for n in 0..bytes.len() {
                prop_assert!(SimRequest::decode(&bytes[..n]).is_err());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = SimRequest::decode(&bytes);
        }
    }

    #[test]
    fn reads_are_not_deferrable() {
        let mut out = Vec::new();
        assert!(SimRequest::get("k").encode(&mut out).is_err());
    }
}
