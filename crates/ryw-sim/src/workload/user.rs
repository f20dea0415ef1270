//! One user's device at work: its operations, each on a random instance, in the scenario's
//! mode, and what it recorded of them.

use super::mode::Mode;
use super::scenario::Scenario;
use crate::adapter::SimAdapter;
use crate::checker::{Op, OpKind, ReadStatus};
use crate::rng::SimRng;
use crate::store::{Key, Node, SimClient, SimError, SimRequest, SimResponse, SimStore};
use ryw::principal::{Advanced, PrincipalRecords};
use ryw::record::SessionRecords;
use ryw::retry::RetryPolicy;
use ryw::{ReadYourWrites, Session, SessionId, Visibility};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

/// An instance's store client behind the session layer.
pub(super) type Layered = ReadYourWrites<SimClient, SimAdapter, RetryPolicy>;

/// What one user's device recorded: its operations, and the counts the run report adds up.
pub(super) struct UserResult {
    pub(super) ops: Vec<Op>,
    pub(super) latencies: Vec<u64>,
    pub(super) reads: usize,
    pub(super) replica_reads: usize,
    pub(super) pending: usize,
    pub(super) past_applied: usize,
    pub(super) failed: usize,
    pub(super) max_token_len: usize,
    pub(super) session_only: usize,
    /// Positions in `ops` of operations whose principal's record could not be advanced: their
    /// caller was told, and later operations of the principal's other devices do not depend on
    /// them.
    pub(super) unadvanced: Vec<usize>,
}

/// A user, and which of the user's devices.
#[derive(Clone, Copy)]
pub(super) struct Who {
    pub(super) user: usize,
    pub(super) device: usize,
}

/// The instances' session records and principal records (empty when the scenario has none).
pub(super) type Records = (Vec<Arc<SessionRecords>>, Vec<Arc<PrincipalRecords>>);

/// Runs the operations of `who`, drawn with `rng`, through the instances' `services` (ryw modes)
/// or `store`'s clients (the others).
pub(super) async fn run_user(
    who: Who,
    mut rng: SimRng,
    store: SimStore,
    services: Vec<Layered>,
    (records, principals): Records,
    scenario: Scenario,
    mode: Mode,
) -> UserResult {
    let Who { user, device } = who;
    let devices = scenario.devices.max(1);
    // Operations are recorded per device: the session they ran in.
    let session_no = user * devices + device;
    let principal = format!("principal{user}");
    let mut out = UserResult {
        ops: Vec::with_capacity(scenario.ops_per_user),
        latencies: Vec::new(),
        reads: 0,
        replica_reads: 0,
        pending: 0,
        past_applied: 0,
        failed: 0,
        max_token_len: 0,
        session_only: 0,
        unadvanced: Vec::new(),
    };
    // Derived ids keep runs reproducible; real applications use random or per-user ids.
    let id = if devices == 1 {
        SessionId::derive(format!("sim:{}:{user}", scenario.seed).as_bytes())
    } else {
        SessionId::derive(format!("sim:{}:{user}:{device}", scenario.seed).as_bytes())
    };
    let mut token = Session::with_id(id)
        .token()
        .encode()
        .expect("fresh token encodes");
    let mut last_write: Option<Duration> = None;
    let instances = scenario.instances.max(1);
    let mut follow_up: Option<Key> = None;
    for n in 0..scenario.ops_per_user {
        let (is_write, key) = match follow_up.take() {
            Some(key) => {
                let redirect = 2_000 + rng.below(3_000) as u64;
                tokio::time::sleep(Duration::from_micros(redirect)).await;
                (false, key)
            }
            None => {
                let lo = scenario.think_min.as_micros() as u64;
                let hi = scenario.think_max.as_micros() as u64;
                let think = lo + (rng.unit() * hi.saturating_sub(lo) as f64) as u64;
                tokio::time::sleep(Duration::from_micros(think)).await;
                let is_write = rng.chance(scenario.write_ratio);
                let owner =
                    if !is_write && scenario.users > 1 && rng.chance(scenario.foreign_read_ratio) {
                        (user + 1 + rng.below(scenario.users - 1)) % scenario.users
                    } else {
                        user
                    };
                let key: Key =
                    format!("user{owner}/k{}", rng.below(scenario.keys_per_user.max(1))).into();
                if is_write && rng.chance(scenario.read_after_write) {
                    follow_up = Some(key.clone());
                }
                (is_write, key)
            }
        };
        let instance = rng.below(instances);
        let value = ((session_no as u64 + 1) << 32) | (n as u64 + 1);
        let invoked = store.elapsed();
        let mut ghost_op = None;
        let (mut unadvanced, mut ghost_unadvanced) = (false, false);
        let kind = match &mode {
            Mode::Ryw(_) | Mode::RywAdaptive(_) => {
                let session = continue_session(&token, scenario.scope_cap);
                if let Some(r) = records.get(instance) {
                    r.load(&session).await;
                }
                if let Some(p) = principals.get(instance) {
                    p.enter(principal.as_bytes(), &session).await;
                }
                let request = if is_write {
                    SimRequest::put(key.clone(), value)
                } else {
                    SimRequest::get(key.clone())
                };
                let main = services[instance].clone().oneshot(session.request(request));
                let result = if rng.chance(scenario.fork_ratio) {
                    // The same token continued a second time, at once, on another instance.
                    let ghost = continue_session(&token, scenario.scope_cap);
                    let ghost_instance = (instance + 1) % instances;
                    if let Some(r) = records.get(ghost_instance) {
                        r.load(&ghost).await;
                    }
                    if let Some(p) = principals.get(ghost_instance) {
                        p.enter(principal.as_bytes(), &ghost).await;
                    }
                    let ghost_value = value | (1 << 31);
                    let other = services[(instance + 1) % instances]
                        .clone()
                        .oneshot(ghost.request(SimRequest::put(key.clone(), ghost_value)));
                    let (result, ghost_result) = tokio::join!(main, other);
                    if let Some(p) = principals.get(ghost_instance) {
                        ghost_unadvanced =
                            p.leave(principal.as_bytes(), &ghost).await == Advanced::Failed;
                    }
                    if let Some(r) = records.get(ghost_instance) {
                        r.flush(&ghost).await;
                    }
                    let merged = rng.chance(scenario.fork_merge);
                    if merged {
                        session.merge(&ghost.snapshot());
                    }
                    ghost_op = Some(Op {
                        session: session_no,
                        key: key.clone(),
                        kind: OpKind::Write {
                            value: ghost_value,
                            ok: ghost_result.is_ok(),
                        },
                        invoked_micros: invoked.as_micros() as u64,
                        completed_micros: store.elapsed().as_micros() as u64,
                        detached: !merged,
                    });
                    result
                } else {
                    main.await
                };
                if let Some(p) = principals.get(instance) {
                    unadvanced = p.leave(principal.as_bytes(), &session).await == Advanced::Failed;
                }
                if let Some(r) = records.get(instance) {
                    r.flush(&session).await;
                }
                token = session.token().encode().expect("token encodes");
                out.max_token_len = out.max_token_len.max(token.len());
                match (is_write, result) {
                    (true, Ok(_)) => OpKind::Write { value, ok: true },
                    (true, Err(_)) => OpKind::Write { value, ok: false },
                    (false, Ok(response)) => {
                        let status = match response.visibility() {
                            Visibility::Guaranteed(_) => ReadStatus::Guaranteed,
                            Visibility::SessionOnly(_) => {
                                out.session_only += 1;
                                ReadStatus::SessionOnly
                            }
                            _ => ReadStatus::Pending,
                        };
                        read_kind(&mut out, response.get_ref(), status)
                    }
                    (false, Err(_)) => OpKind::Read {
                        observed: None,
                        status: ReadStatus::Guaranteed,
                    },
                }
            }
            _ => {
                let client = store.client(instance);
                if is_write {
                    let ok = naive_write(client, SimRequest::put(key.clone(), value)).await;
                    if ok {
                        last_write = Some(store.elapsed());
                    }
                    OpKind::Write { value, ok }
                } else {
                    let primary = match &mode {
                        Mode::Strong => true,
                        Mode::Pinned(window) => {
                            last_write.is_some_and(|t| store.elapsed() < t + *window)
                        }
                        _ => false,
                    };
                    let request = if primary {
                        SimRequest::get_primary(key.clone())
                    } else {
                        SimRequest::get(key.clone())
                    };
                    match client.oneshot(request).await {
                        Ok(response) => read_kind(&mut out, &response, ReadStatus::Unchecked),
                        Err(_) => OpKind::Read {
                            observed: None,
                            status: ReadStatus::Unchecked,
                        },
                    }
                }
            }
        };
        let completed = store.elapsed();
        match &kind {
            OpKind::Read {
                observed: Some(_), ..
            } => out.latencies.push((completed - invoked).as_micros() as u64),
            OpKind::Read { observed: None, .. } | OpKind::Write { ok: false, .. } => {
                out.failed += 1
            }
            _ => {}
        }
        if unadvanced {
            out.unadvanced.push(out.ops.len());
        }
        out.ops.push(Op {
            session: session_no,
            key,
            kind,
            invoked_micros: invoked.as_micros() as u64,
            completed_micros: completed.as_micros() as u64,
            detached: false,
        });
        if let Some(op) = ghost_op {
            if let OpKind::Write { ok: false, .. } = op.kind {
                out.failed += 1;
            }
            if ghost_unadvanced {
                out.unadvanced.push(out.ops.len());
            }
            out.ops.push(op);
        }
    }
    out
}

/// Continues the session of `token` as an app instance does, with the scenario's vector cap.
fn continue_session(token: &str, cap: usize) -> Session {
    let session = Session::from_encoded(token).expect("own token decodes");
    if cap != ryw::version::DEFAULT_SCOPE_CAP {
        session.with_state(|s| s.vector_mut().set_cap(cap));
    }
    session
}

/// Counts a read that returned `response`, reported `status`, and the operation it records.
fn read_kind(out: &mut UserResult, response: &SimResponse, status: ReadStatus) -> OpKind {
    out.reads += 1;
    if matches!(response.served_by, Node::Replica(_)) {
        out.replica_reads += 1;
        if response.version > response.applied {
            out.past_applied += 1;
        }
    }
    if status == ReadStatus::Pending {
        out.pending += 1;
    }
    OpKind::Read {
        observed: Some(response.version),
        status,
    }
}

/// What applications without idempotency keys do: retry a failed write as it is, a few times.
async fn naive_write(client: SimClient, request: SimRequest) -> bool {
    for _ in 0..3 {
        match client.clone().oneshot(request.clone()).await {
            Ok(_) => return true,
            Err(SimError::Timeout | SimError::Unavailable) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => return false,
        }
    }
    false
}
