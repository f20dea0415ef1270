//! Recorded histories and the session-guarantee checker.
//!
//! A [`History`] is what clients saw ([`Op`]s: who, what, when, which version came back and with
//! what status) plus what the store did (its log). [`check`] reports every violation of
//! read-your-writes, monotonic reads, monotonic writes and writes-follow-reads, every duplicated
//! effect of a write (one write applied twice), and every acknowledged write missing from the log,
//! naming the operations involved.
//!
//! Guarantees are checked per key, the scope of the simulated store's adapter. Reads reported as
//! `Pending` told the caller they may be stale: they are counted, not checked.
//!
//! # Example
//!
//! ```
//! use ryw::Version;
//! use ryw_sim::checker::{check, History, Op, OpKind, ReadStatus, ViolationKind};
//! use ryw_sim::LogEntry;
//!
//! let key: ryw_sim::Key = "k".into();
//! let history = History {
//!     ops: vec![
//!         Op { session: 0, key: key.clone(), invoked_micros: 0, completed_micros: 5,
//!              kind: OpKind::Write { value: 7, ok: true }, detached: false },
//!         // The session reads its key and sees nothing: the write is missing.
//!         Op { session: 0, key: key.clone(), invoked_micros: 6, completed_micros: 8,
//!              kind: OpKind::Read { observed: Some(Version::ZERO), status: ReadStatus::Unchecked },
//!              detached: false },
//!     ],
//!     log: vec![LogEntry { position: 1, key, value: 7, write_id: None, clock: None, at_micros: 3 }],
//! };
//! let report = check(&history);
//! assert_eq!(report.violations.len(), 1);
//! assert_eq!(report.violations[0].kind, ViolationKind::ReadYourWrites);
//! ```

use crate::store::{Key, LogEntry};
use ryw::Version;
use std::collections::HashMap;
use std::fmt;

/// The status a read was returned with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadStatus {
    /// No session layer: nothing was promised, everything is checked.
    Unchecked,
    /// The layer said `Guaranteed`.
    Guaranteed,
    /// The layer said `Pending`: flagged to the caller, not checked.
    Pending,
    /// The layer said `SessionOnly`: checked for its session (the guarantees hold for it), but
    /// not for the session's principal.
    SessionOnly,
}

/// What an operation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// A read; `observed` is the log position of the write it saw (`Version::ZERO`: none), or
    /// `None` if the read failed.
    Read {
        /// The version seen.
        observed: Option<Version>,
        /// Its status.
        status: ReadStatus,
    },
    /// A write of a unique `value`; `ok` when the client got a success.
    Write {
        /// The value written.
        value: u64,
        /// Acknowledged.
        ok: bool,
    },
}

/// One client operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// The session (user) that issued it.
    pub session: usize,
    /// The key.
    pub key: Key,
    /// What it did.
    pub kind: OpKind,
    /// When it was invoked (simulated microseconds).
    pub invoked_micros: u64,
    /// When it completed.
    pub completed_micros: u64,
    /// The operation ran on a continuation of the session whose token was then dropped (a lost
    /// response, a second browser tab): it is checked against what the session did before it,
    /// but later operations of the session do not depend on it. Its writes must still be applied
    /// exactly once.
    pub detached: bool,
}

/// Client operations plus the store's log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// Operations, in any order.
    pub ops: Vec<Op>,
    /// The primary's log.
    pub log: Vec<LogEntry>,
}

/// Kinds of violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ViolationKind {
    /// A read missed an earlier acknowledged write of its session.
    ReadYourWrites,
    /// A read saw an older version than an earlier read of its session.
    MonotonicReads,
    /// A write applied before (or was re-applied after) a later write of its session.
    MonotonicWrites,
    /// A write applied before a version its session had already read.
    WritesFollowReads,
    /// One write applied more than once.
    DuplicatedEffect,
    /// An acknowledged write is not in the log.
    LostWrite,
}

/// One violation, with the operations involved (indices into [`History::ops`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The kind.
    pub kind: ViolationKind,
    /// The session.
    pub session: usize,
    /// The operations involved.
    pub ops: Vec<usize>,
    /// What happened.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} in session {} (ops {:?}): {}",
            self.kind, self.session, self.ops, self.detail
        )
    }
}

/// The checker's findings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Every violation found.
    pub violations: Vec<Violation>,
    /// Reads checked.
    pub reads_checked: usize,
    /// Reads flagged `Pending` (not checked).
    pub reads_pending: usize,
    /// Reads that failed.
    pub reads_failed: usize,
}

impl CheckReport {
    /// Violations of one kind.
    pub fn count(&self, kind: ViolationKind) -> usize {
        self.violations.iter().filter(|v| v.kind == kind).count()
    }

    /// Session-guarantee violations (everything but duplicated effects and lost writes).
    pub fn guarantee_violations(&self) -> usize {
        self.violations
            .iter()
            .filter(|v| {
                !matches!(
                    v.kind,
                    ViolationKind::DuplicatedEffect | ViolationKind::LostWrite
                )
            })
            .count()
    }
}

#[derive(Clone, Copy)]
struct Effects {
    first: u64,
    last: u64,
    count: usize,
}

/// Checks `history`. See the [module docs](self).
pub fn check(history: &History) -> CheckReport {
    let mut report = CheckReport::default();
    let mut effects: HashMap<u64, Effects> = HashMap::new();
    for e in &history.log {
        effects
            .entry(e.value)
            .and_modify(|x| {
                x.first = x.first.min(e.position);
                x.last = x.last.max(e.position);
                x.count += 1;
            })
            .or_insert(Effects {
                first: e.position,
                last: e.position,
                count: 1,
            });
    }

    let mut by_session: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, op) in history.ops.iter().enumerate() {
        by_session.entry(op.session).or_default().push(i);
    }
    let mut sessions: Vec<_> = by_session.into_iter().collect();
    sessions.sort_by_key(|(s, _)| *s);

    for (session, mut ops) in sessions {
        ops.sort_by_key(|&i| (history.ops[i].invoked_micros, i));
        // Per key: acknowledged writes and checked reads, in session order.
        let mut writes: HashMap<&Key, Vec<(usize, Effects)>> = HashMap::new();
        let mut reads: HashMap<&Key, Vec<(usize, Version)>> = HashMap::new();
        for &i in &ops {
            let op = &history.ops[i];
            let before = |j: usize| history.ops[j].completed_micros <= op.invoked_micros;
            match &op.kind {
                OpKind::Read { observed, status } => {
                    let Some(seen) = *observed else {
                        report.reads_failed += 1;
                        continue;
                    };
                    if *status == ReadStatus::Pending {
                        report.reads_pending += 1;
                        continue;
                    }
                    report.reads_checked += 1;
                    if let Some(ws) = writes.get(&op.key) {
                        for &(w, eff) in ws.iter().filter(|(w, _)| before(*w)) {
                            if seen.get() < eff.first {
                                report.violations.push(Violation {
                                    kind: ViolationKind::ReadYourWrites,
                                    session,
                                    ops: vec![w, i],
                                    detail: format!(
                                        "read saw {seen} but the session's write applied at v{}",
                                        eff.first
                                    ),
                                });
                            }
                        }
                    }
                    if let Some(rs) = reads.get(&op.key) {
                        if let Some(&(r, prev)) = rs
                            .iter()
                            .filter(|(r, _)| before(*r))
                            .max_by_key(|(_, v)| *v)
                        {
                            if seen < prev {
                                report.violations.push(Violation {
                                    kind: ViolationKind::MonotonicReads,
                                    session,
                                    ops: vec![r, i],
                                    detail: format!(
                                        "read saw {seen} after an earlier read saw {prev}"
                                    ),
                                });
                            }
                        }
                    }
                    if !op.detached {
                        reads.entry(&op.key).or_default().push((i, seen));
                    }
                }
                OpKind::Write { value, ok } => {
                    if !ok {
                        continue;
                    }
                    let Some(&eff) = effects.get(value) else {
                        report.violations.push(Violation {
                            kind: ViolationKind::LostWrite,
                            session,
                            ops: vec![i],
                            detail: format!(
                                "acknowledged write of value {value} is not in the log"
                            ),
                        });
                        continue;
                    };
                    if let Some(ws) = writes.get(&op.key) {
                        for &(w, prev) in ws.iter().filter(|(w, _)| before(*w)) {
                            if prev.last >= eff.first {
                                report.violations.push(Violation {
                                    kind: ViolationKind::MonotonicWrites,
                                    session,
                                    ops: vec![w, i],
                                    detail: format!(
                                        "earlier write applied at v{} not before this write at v{}",
                                        prev.last, eff.first
                                    ),
                                });
                            }
                        }
                    }
                    if let Some(rs) = reads.get(&op.key) {
                        if let Some(&(r, seen)) = rs
                            .iter()
                            .filter(|(r, _)| before(*r))
                            .max_by_key(|(_, v)| *v)
                        {
                            if eff.first <= seen.get() {
                                report.violations.push(Violation {
                                    kind: ViolationKind::WritesFollowReads,
                                    session,
                                    ops: vec![r, i],
                                    detail: format!(
                                        "write applied at v{} not after the read version {seen}",
                                        eff.first
                                    ),
                                });
                            }
                        }
                    }
                    if !op.detached {
                        writes.entry(&op.key).or_default().push((i, eff));
                    }
                }
            }
        }
    }

    // Duplicated effects, attributed to the writing operation.
    let mut writer_of: HashMap<u64, usize> = HashMap::new();
    for (i, op) in history.ops.iter().enumerate() {
        if let OpKind::Write { value, .. } = op.kind {
            writer_of.entry(value).or_insert(i);
        }
    }
    let mut dups: Vec<_> = effects.iter().filter(|(_, e)| e.count > 1).collect();
    dups.sort_by_key(|(v, _)| **v);
    for (value, e) in dups {
        let op = writer_of.get(value).copied();
        report.violations.push(Violation {
            kind: ViolationKind::DuplicatedEffect,
            session: op.map_or(usize::MAX, |i| history.ops[i].session),
            ops: op.into_iter().collect(),
            detail: format!(
                "value {value} applied {} times (v{}..v{})",
                e.count, e.first, e.last
            ),
        });
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        "k".into()
    }

    fn write(session: usize, value: u64, t: u64) -> Op {
        Op {
            session,
            key: key(),
            kind: OpKind::Write { value, ok: true },
            invoked_micros: t,
            completed_micros: t + 1,
            detached: false,
        }
    }

    fn read(session: usize, seen: u64, t: u64, status: ReadStatus) -> Op {
        Op {
            session,
            key: key(),
            kind: OpKind::Read {
                observed: Some(Version::new(seen)),
                status,
            },
            invoked_micros: t,
            completed_micros: t + 1,
            detached: false,
        }
    }

    fn entry(position: u64, value: u64) -> LogEntry {
        LogEntry {
            position,
            key: key(),
            value,
            write_id: None,
            clock: None,
            at_micros: 0,
        }
    }

    #[test]
    fn clean_history_has_no_violations() {
        let h = History {
            ops: vec![
                write(0, 10, 0),
                read(0, 1, 10, ReadStatus::Unchecked),
                read(0, 2, 20, ReadStatus::Guaranteed),
                write(0, 11, 30),
            ],
            log: vec![entry(1, 10), entry(2, 99), entry(3, 11)],
        };
        let r = check(&h);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.reads_checked, 2);
    }

    #[test]
    fn each_kind_is_detected() {
        let h = History {
            ops: vec![
                write(0, 10, 0),
                read(0, 0, 10, ReadStatus::Guaranteed), // misses its write
                read(1, 3, 10, ReadStatus::Unchecked),
                read(1, 2, 20, ReadStatus::Unchecked), // goes back
                write(1, 12, 30),                      // applied at 2 <= read version 3
                write(2, 13, 0),
                write(2, 14, 10), // 13 re-applied after 14
            ],
            log: vec![
                entry(1, 10),
                entry(2, 12),
                entry(3, 13),
                entry(4, 14),
                entry(5, 13),
            ],
        };
        let r = check(&h);
        for kind in [
            ViolationKind::ReadYourWrites,
            ViolationKind::MonotonicReads,
            ViolationKind::WritesFollowReads,
            ViolationKind::MonotonicWrites,
            ViolationKind::DuplicatedEffect,
        ] {
            assert_eq!(r.count(kind), 1, "{kind:?}: {:?}", r.violations);
        }
        assert_eq!(r.violations[0].ops, vec![0, 1]);
    }

    #[test]
    fn detached_operations_are_checked_but_constrain_nothing_later() {
        let mut ghost = write(0, 20, 5);
        ghost.detached = true;
        let mut ghost_read = read(0, 0, 6, ReadStatus::Guaranteed);
        ghost_read.detached = true;
        let h = History {
            ops: vec![
                write(0, 10, 0),
                ghost,
                ghost_read, // misses the session's earlier write: a violation
                read(0, 1, 20, ReadStatus::Guaranteed), // need not see the dropped write 20
            ],
            log: vec![entry(1, 10), entry(2, 20)],
        };
        let r = check(&h);
        assert_eq!(
            r.count(ViolationKind::ReadYourWrites),
            1,
            "{:?}",
            r.violations
        );
        assert_eq!(r.violations[0].ops, vec![0, 2]);
        // Its write must still be applied exactly once.
        let lost = History {
            ops: h.ops[..2].to_vec(),
            log: vec![entry(1, 10)],
        };
        assert_eq!(check(&lost).count(ViolationKind::LostWrite), 1);
    }

    #[test]
    fn pending_reads_are_flagged_not_checked_and_lost_writes_found() {
        let h = History {
            ops: vec![
                write(0, 10, 0),
                read(0, 0, 10, ReadStatus::Pending),
                write(0, 11, 20),
            ],
            log: vec![entry(1, 10)],
        };
        let r = check(&h);
        assert_eq!(r.reads_pending, 1);
        assert_eq!(r.count(ViolationKind::ReadYourWrites), 0);
        assert_eq!(r.count(ViolationKind::LostWrite), 1);
    }
}
