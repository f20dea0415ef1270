//! ScyllaDB: `INSERT` at `LOCAL_QUORUM` and `SELECT` at `LOCAL_ONE` for the probe, and the same
//! through ryw's ScyllaDB adapter. Rows are `(pk text PRIMARY KEY, v bigint)`. Statements carry
//! their values as literals (keys are the probe's own, quotes doubled) and end with a comment
//! naming what they are.

use super::{ProbeStore, RywRead};
use crate::error::ProbeError;
use ryw::{ReadYourWrites, ReadYourWritesLayer, Session};
use ryw_scylla::{ScyllaAdapter, ScyllaRequest, ScyllaService};
use scylla::client::session::Session as Driver;
use scylla::client::session_builder::SessionBuilder;
use scylla::response::query_result::QueryRowsResult;
use scylla::statement::unprepared::Statement;
use scylla::statement::Consistency;
use std::sync::Arc;
use std::time::Duration;
use tower::{Layer, ServiceExt};

pub(crate) struct Scylla {
    driver: Arc<Driver>,
    table: String,
    nodes: String,
    instances: Vec<ReadYourWrites<ScyllaService, ScyllaAdapter>>,
}

fn quote(key: &str) -> String {
    format!("'{}'", key.replace('\'', "''"))
}

fn failed(e: impl std::fmt::Display) -> ProbeError {
    let text = e.to_string();
    let lower = text.to_lowercase();
    if lower.contains("unauthorized") || lower.contains("authentication") {
        ProbeError::Permission(text)
    } else if lower.contains("overloaded") || lower.contains("rate limit") {
        ProbeError::Throttled(text)
    } else {
        ProbeError::Store(text)
    }
}

fn value_of(rows: Option<&QueryRowsResult>) -> Option<u64> {
    let row = rows?
        .maybe_first_row::<(Option<i64>, Option<i64>)>()
        .ok()??;
    row.0.map(|v| v as u64)
}

impl Scylla {
    pub(crate) async fn connect(
        nodes: &str,
        table: &str,
        instances: usize,
    ) -> Result<Self, ProbeError> {
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= 48
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        };
        match table.split_once('.') {
            Some((ks, t)) if valid(ks) && valid(t) => {}
            _ => {
                return Err(ProbeError::Usage(format!(
                    "--table must be keyspace.table (letters, digits, _), not {table:?}"
                )))
            }
        }
        let list: Vec<&str> = nodes
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect();
        if list.is_empty() {
            return Err(ProbeError::Usage(
                "--nodes needs HOST:PORT[,HOST:PORT...]".into(),
            ));
        }
        let driver = SessionBuilder::new()
            .known_nodes(&list)
            .connection_timeout(Duration::from_secs(3))
            .build()
            .await
            .map_err(|e| ProbeError::Unreachable(e.to_string()))?;
        let driver = Arc::new(driver);
        let instances = (0..instances.max(1))
            .map(|_| {
                ReadYourWritesLayer::new(ScyllaAdapter::new())
                    .layer(ScyllaService::new(driver.clone()))
            })
            .collect();
        Ok(Scylla {
            driver,
            table: table.to_owned(),
            nodes: nodes.to_owned(),
            instances,
        })
    }

    fn instance(&self, i: usize) -> ReadYourWrites<ScyllaService, ScyllaAdapter> {
        self.instances[i % self.instances.len()].clone()
    }

    fn insert(&self, key: &str, value: u64) -> String {
        format!(
            "INSERT INTO {} (pk, v) VALUES ({}, {value}) /* ryw-probe write */",
            self.table,
            quote(key)
        )
    }

    fn select(&self, key: &str) -> String {
        format!(
            "SELECT v, WRITETIME(v) FROM {} WHERE pk = {} /* ryw-probe read */",
            self.table,
            quote(key)
        )
    }

    async fn run(
        &self,
        text: String,
        consistency: Consistency,
    ) -> Result<Option<QueryRowsResult>, ProbeError> {
        let mut statement = Statement::new(text);
        statement.set_consistency(consistency);
        let result = self
            .driver
            .query_unpaged(statement, ())
            .await
            .map_err(failed)?;
        Ok(result.into_rows_result().ok())
    }
}

impl ProbeStore for Scylla {
    fn describe(&self) -> String {
        format!("ScyllaDB table {} at {}", self.table, self.nodes)
    }

    async fn prepare(&mut self, create: bool, force: bool) -> Result<(), ProbeError> {
        let probe = format!(
            "SELECT pk FROM {} LIMIT 1 /* ryw-probe check */",
            self.table
        );
        match self.run(probe, Consistency::LocalQuorum).await {
            Ok(rows) => {
                let any = rows.is_some_and(|r| r.rows_num() > 0);
                if any && !force {
                    return Err(ProbeError::NotEmpty(format!("table {}", self.table)));
                }
                Ok(())
            }
            Err(ProbeError::Store(text))
                if text.contains("unconfigured table") || text.contains("does not exist") =>
            {
                if !create {
                    return Err(ProbeError::Missing(format!("table {}", self.table)));
                }
                let ddl = format!(
                    "CREATE TABLE IF NOT EXISTS {} (pk text PRIMARY KEY, v bigint) /* ryw-probe create */",
                    self.table
                );
                self.run(ddl, Consistency::LocalQuorum).await.map(|_| ())
            }
            Err(e) => Err(e),
        }
    }

    async fn write(&self, key: &str, value: u64) -> Result<(), ProbeError> {
        self.run(self.insert(key, value), Consistency::LocalQuorum)
            .await
            .map(|_| ())
    }

    async fn read_cheap(&self, key: &str) -> Result<Option<u64>, ProbeError> {
        Ok(value_of(
            self.run(self.select(key), Consistency::LocalOne)
                .await?
                .as_ref(),
        ))
    }

    async fn ryw_write(
        &self,
        instance: usize,
        session: &Session,
        key: &str,
        value: u64,
    ) -> Result<(), ProbeError> {
        let write = ScyllaRequest::write(Statement::new(self.insert(key, value)), ()).row(key, b"");
        self.instance(instance)
            .oneshot(session.request(write))
            .await
            .map_err(failed)?;
        Ok(())
    }

    async fn ryw_read(
        &self,
        instance: usize,
        session: &Session,
        key: &str,
    ) -> Result<RywRead, ProbeError> {
        let read = ScyllaRequest::read(Statement::new(self.select(key)), ())
            .row(key, b"")
            .track("v");
        let r = self
            .instance(instance)
            .oneshot(session.request(read))
            .await
            .map_err(failed)?;
        Ok(RywRead {
            value: value_of(r.get_ref().rows()),
            visibility: r.visibility().clone(),
        })
    }

    async fn cleanup(&self, keys: &[String]) -> Result<(), ProbeError> {
        for key in keys {
            let delete = format!(
                "DELETE FROM {} WHERE pk = {} /* ryw-probe cleanup */",
                self.table,
                quote(key)
            );
            self.run(delete, Consistency::LocalQuorum).await?;
        }
        Ok(())
    }
}
