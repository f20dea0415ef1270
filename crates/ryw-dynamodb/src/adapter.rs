//! The [`StoreAdapter`] for DynamoDB.

use crate::error::DynamoError;
use crate::expr::{self, key_bytes, Item};
use crate::request::{
    DynamoConfig, DynamoOperation, DynamoRequest, DynamoResponse, DynamoStamp, TableSchema,
};
use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem};
use ryw::adapter::{ErrorClass, Observed, Operation, Replay, Scopes, StoreAdapter, Verification};
use ryw::clock::{Clock, HybridTimestamp, SystemClock};
use ryw::conflict::Conflict;
use ryw::fence::{FenceStrategy, FenceSupport, ReadFence};
use ryw::stamp::Stamp;
use ryw::{ScopeKey, StoreId, Version, WriteId};
use std::collections::HashMap;
use std::sync::Arc;

/// Maps the session concepts onto DynamoDB. See the [crate docs](crate).
///
/// Cheap to clone (the configuration is shared).
#[derive(Clone, Debug)]
pub struct DynamoAdapter {
    pub(crate) config: Arc<DynamoConfig>,
}

impl Default for DynamoAdapter {
    fn default() -> Self {
        DynamoAdapter::new()
    }
}

impl DynamoAdapter {
    /// An adapter with the default attribute names and no tables; configured with consuming
    /// setters, like every adapter. Configuring a clone leaves the original unchanged.
    ///
    /// ```
    /// use ryw::StoreId;
    /// use ryw_dynamodb::{DynamoAdapter, TableSchema};
    ///
    /// let adapter = DynamoAdapter::new()
    ///     .table(TableSchema::new("posts", "pk"))
    ///     .store_id(StoreId::new(7));
    /// assert!(adapter.schema_of("posts").is_some());
    /// ```
    pub fn new() -> Self {
        DynamoAdapter {
            config: Arc::new(DynamoConfig::default()),
        }
    }

    fn config_mut(&mut self) -> &mut DynamoConfig {
        Arc::make_mut(&mut self.config)
    }

    /// Declares a table's key schema. Writes through the session layer to a table without one
    /// fail with [`DynamoError::UnknownTable`]; reads of it are not fenced.
    pub fn table(mut self, schema: TableSchema) -> Self {
        self.config_mut()
            .tables
            .insert(schema.table.clone(), schema);
        self
    }

    /// The version attribute (default `ryw_version`).
    pub fn version_attribute(mut self, name: impl Into<String>) -> Self {
        self.config_mut().version_attribute = name.into();
        self
    }

    /// The prefix of the attributes holding the item's recent write ids (default `ryw_write_id`:
    /// `ryw_write_id_0` to `ryw_write_id_3`, see [`crate::request::RECENT_WRITE_IDS`]).
    pub fn write_id_attribute(mut self, name: impl Into<String>) -> Self {
        self.config_mut().write_id_attribute = name.into();
        self
    }

    /// The attribute holding the last write's hybrid clock (default `ryw_clock`).
    pub fn clock_attribute(mut self, name: impl Into<String>) -> Self {
        self.config_mut().clock_attribute = name.into();
        self
    }

    /// The store id in session tokens (default [`STORE_ID`](crate::request::STORE_ID); several
    /// tables of one account share it). The same name on every adapter.
    pub fn store_id(mut self, store: StoreId) -> Self {
        self.config_mut().store = store;
        self
    }

    /// Whether the store replicates each base-table partition in order (default `true`, as AWS
    /// DynamoDB does).
    ///
    /// A query is fenced on the partition it reads. When partitions are replicated in order, a
    /// copy that holds a write of the partition holds every earlier write of it, so the newest
    /// writer's clock among the items a query returns shows how far the copy is, and an eventually
    /// consistent query is `Guaranteed(Verified)` once that clock reaches the session's
    /// requirement on the partition. (That also takes the writers' clocks to agree with the order
    /// in which the partition applied their writes: a writer whose clock runs ahead can credit a
    /// copy with a later session write it lacks.)
    ///
    /// Set `false` for a DynamoDB-compatible store that does not replicate a partition in order
    /// (ScyllaDB Alternator: each item is replicated on its own, so a replica can hold a later
    /// write of a partition and lack an earlier one; the items a query returns then prove nothing
    /// about the items it lacks). A base-table (or local secondary index) query then credits no
    /// version to its partition, as a global secondary index query never does: a query of a
    /// partition the session wrote to is sent as a `ConsistentRead` query up front
    /// ([`ryw::fence::Verification::ServerSideOnly`]), and an eventually consistent query of it
    /// is never `Guaranteed` (`Pending` when the fence does not escalate). Item versions are used as before, whatever the setting: each item a query
    /// returns is checked against what the session saw of it, and a `GetItem` is fenced by the
    /// item's version. That rests on another property, per item: a copy that holds one write of an
    /// item holds every earlier write of that item.
    ///
    /// ```
    /// use ryw_dynamodb::{DynamoAdapter, TableSchema};
    ///
    /// // ScyllaDB Alternator.
    /// let adapter = DynamoAdapter::new()
    ///     .table(TableSchema::new("posts", "pk").sort_key("sk"))
    ///     .ordered_partitions(false);
    /// assert!(!adapter.has_ordered_partitions());
    /// assert!(DynamoAdapter::new().has_ordered_partitions());
    /// ```
    pub fn ordered_partitions(mut self, ordered: bool) -> Self {
        self.config_mut().ordered_partitions = ordered;
        self
    }

    /// Whether the adapter counts on the store replicating each base-table partition in order
    /// (see [`DynamoAdapter::ordered_partitions`]).
    pub fn has_ordered_partitions(&self) -> bool {
        self.config.ordered_partitions
    }

    /// How many times a `BatchGetItem` sends its `UnprocessedKeys` again before failing with
    /// [`DynamoError::UnprocessedKeys`] (default 8). The waits between rounds start at
    /// [`DynamoAdapter::batch_get_backoff`] and double, up to one second.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ryw_dynamodb::{DynamoAdapter, TableSchema};
    ///
    /// let adapter = DynamoAdapter::new()
    ///     .table(TableSchema::new("posts", "pk"))
    ///     .batch_get_retries(3)
    ///     .batch_get_backoff(Duration::from_millis(5));
    /// # let _ = adapter;
    /// ```
    pub fn batch_get_retries(mut self, retries: u32) -> Self {
        self.config_mut().batch_get_retries = retries;
        self
    }

    /// The wait before a `BatchGetItem` first sends its `UnprocessedKeys` again (default 25 ms;
    /// doubled for each next round, up to one second; see [`DynamoAdapter::batch_get_retries`]).
    pub fn batch_get_backoff(mut self, backoff: std::time::Duration) -> Self {
        self.config_mut().batch_get_backoff = backoff;
        self
    }

    /// The key schema declared for `table`, if any.
    pub fn schema_of(&self, table: &str) -> Option<&TableSchema> {
        self.config.tables.get(table)
    }
}

impl DynamoAdapter {
    fn schema(&self, table: Option<&String>) -> Option<&TableSchema> {
        self.config.tables.get(table?)
    }

    /// The scope of the item with `key` (a key map or a whole item) in `table`.
    pub fn item_scope(&self, table: &str, key: &Item) -> Option<ScopeKey> {
        let schema = self.config.tables.get(table)?;
        let pk = key.get(&schema.partition_key)?;
        let mut attrs = vec![(schema.partition_key.as_str(), pk)];
        if let Some(sk_name) = &schema.sort_key {
            attrs.push((sk_name.as_str(), key.get(sk_name)?));
        }
        Some(ScopeKey::new(
            self.config.store,
            &key_bytes(b'i', table, "", &mut attrs),
        ))
    }

    /// The scope of one partition of `table` (or of one of its global secondary indexes).
    pub fn partition_scope(
        &self,
        table: &str,
        index: Option<&str>,
        value: &AttributeValue,
    ) -> ScopeKey {
        ScopeKey::new(
            self.config.store,
            &key_bytes(b'p', table, index.unwrap_or(""), &mut [("", value)]),
        )
    }

    /// The scope of a whole table, which every write to it raises to the write's clock: what a
    /// `Scan` of the table is fenced on (see [Scan](crate#scan) in the crate docs).
    pub fn table_scope(&self, table: &str) -> ScopeKey {
        ScopeKey::new(self.config.store, &key_bytes(b't', table, "", &mut []))
    }

    /// Partition scopes a written item touches: its table's and those of its declared indexes,
    /// and the scope of the whole table.
    fn written_partitions(&self, table: &str, item: &Item, scopes: &mut Scopes) {
        let Some(schema) = self.config.tables.get(table) else {
            return;
        };
        scopes.push(self.table_scope(table));
        if let Some(v) = item.get(&schema.partition_key) {
            scopes.push(self.partition_scope(table, None, v));
        }
        let mut indexes: Vec<_> = schema.indexes.iter().collect();
        indexes.sort();
        for (index, attr) in indexes {
            if let Some(v) = item.get(attr) {
                scopes.push(self.partition_scope(table, Some(index), v));
            }
        }
    }

    /// What an UpdateItem leaves of the item that decides its partitions: its key, and each
    /// declared global index's key attribute that the update sets outright (`SET author = :a`).
    fn updated_partitions_view(
        &self,
        b: &aws_sdk_dynamodb::operation::update_item::builders::UpdateItemInputBuilder,
    ) -> Option<(String, Item)> {
        let table = b.get_table_name().clone()?;
        let view = self.updated_view(
            &table,
            b.get_key().as_ref()?,
            b.get_update_expression().as_deref(),
            b.get_expression_attribute_names().as_ref(),
            b.get_expression_attribute_values().as_ref(),
        );
        Some((table, view))
    }

    /// [`DynamoAdapter::updated_partitions_view`] from the parts of an update.
    fn updated_view(
        &self,
        table: &str,
        key: &Item,
        update: Option<&str>,
        names: Option<&HashMap<String, String>>,
        values: Option<&HashMap<String, AttributeValue>>,
    ) -> Item {
        let mut view = key.clone();
        let Some(schema) = self.config.tables.get(table) else {
            return view;
        };
        if let (false, Some(update)) = (schema.indexes.is_empty(), update) {
            for (attr, value) in expr::set_values(update, names, values) {
                if schema.indexes.values().any(|a| *a == attr) {
                    view.insert(attr, value.clone());
                }
            }
        }
        view
    }

    /// The partition scopes the writes of a transaction touch.
    fn transaction_partitions(&self, items: &[TransactWriteItem], scopes: &mut Scopes) {
        for ti in items {
            if let Some(p) = &ti.put {
                self.written_partitions(&p.table_name, &p.item, scopes);
            } else if let Some(u) = &ti.update {
                let view = self.updated_view(
                    &u.table_name,
                    &u.key,
                    Some(&u.update_expression),
                    u.expression_attribute_names.as_ref(),
                    u.expression_attribute_values.as_ref(),
                );
                self.written_partitions(&u.table_name, &view, scopes);
            } else if let Some(d) = &ti.delete {
                self.written_partitions(&d.table_name, &d.key, scopes);
            }
        }
    }

    /// A query of a global secondary index declared for its table.
    fn is_global_index_query(
        &self,
        q: &aws_sdk_dynamodb::operation::query::builders::QueryInputBuilder,
    ) -> bool {
        q.get_index_name().is_some() && !self.is_local_index(q)
    }

    fn query_scope(
        &self,
        q: &aws_sdk_dynamodb::operation::query::builders::QueryInputBuilder,
    ) -> Option<ScopeKey> {
        let table = q.get_table_name().as_ref()?;
        let schema = self.config.tables.get(table)?;
        // A global index has its own partitions; a local one shares the table's.
        let (attr, index) = match q.get_index_name().as_deref() {
            Some(i) => match schema.indexes.get(i) {
                Some(a) => (a, Some(i)),
                None => (&schema.partition_key, None),
            },
            None => (&schema.partition_key, None),
        };
        let value = expr::key_condition_value(
            q.get_key_condition_expression().as_deref()?,
            q.get_expression_attribute_names().as_ref(),
            q.get_expression_attribute_values().as_ref(),
            attr,
        )?;
        Some(self.partition_scope(table, index, value))
    }

    /// The item scope of each write of a transaction (`None` for condition checks and unknown
    /// tables).
    fn transaction_item_scopes(&self, items: &[TransactWriteItem]) -> Vec<Option<ScopeKey>> {
        items
            .iter()
            .map(|ti| {
                if let Some(p) = &ti.put {
                    self.item_scope(&p.table_name, &p.item)
                } else if let Some(u) = &ti.update {
                    self.item_scope(&u.table_name, &u.key)
                } else if let Some(d) = &ti.delete {
                    self.item_scope(&d.table_name, &d.key)
                } else {
                    None
                }
            })
            .collect()
    }

    fn single_write_scope(&self, op: &DynamoOperation) -> Option<ScopeKey> {
        match op {
            DynamoOperation::PutItem(b) => {
                self.item_scope(b.get_table_name().as_ref()?, b.get_item().as_ref()?)
            }
            DynamoOperation::UpdateItem(b) => {
                self.item_scope(b.get_table_name().as_ref()?, b.get_key().as_ref()?)
            }
            DynamoOperation::DeleteItem(b) => {
                self.item_scope(b.get_table_name().as_ref()?, b.get_key().as_ref()?)
            }
            _ => None,
        }
    }

    /// Records an item of `table` the response holds: its version for its scope, and its
    /// writer's clock, which the session's clock moves past and which becomes what the session
    /// requires of the item's base-table partition (monotonic reads: a later query of the
    /// partition must show a write at least this recent; the requirement proves nothing of this
    /// response).
    fn observe_item(
        &self,
        table: &str,
        scope: Option<ScopeKey>,
        item: &Item,
        observed: &mut Observed,
    ) {
        if let Some(scope) = scope {
            let v = expr::number(item, &self.config.version_attribute).unwrap_or(0);
            observed.push(scope, Version::new(v));
        }
        if let Some(c) = expr::number(item, &self.config.clock_attribute) {
            observed.clock(HybridTimestamp::new(c));
            let partition = self
                .config
                .tables
                .get(table)
                .and_then(|schema| item.get(&schema.partition_key));
            if let Some(pk) = partition {
                observed.require(self.partition_scope(table, None, pk), Version::new(c));
            }
        }
    }

    /// What the write `request` (stamped `write`) gave its items (`written`, per item) and
    /// their partitions, `sent_late` the wall clock it was sent at when late.
    fn observe_write(
        &self,
        request: &DynamoRequest,
        write: &DynamoStamp,
        written: &[Option<u64>],
        sent_late: Option<u64>,
        observed: &mut Observed,
    ) {
        let op = &request.operation;
        observed.clock(write.stamp.timestamp);
        let mut partitions = Scopes::new();
        let item_scopes = match op {
            DynamoOperation::TransactWriteItems(b) => {
                let items = b.get_transact_items().as_deref().unwrap_or_default();
                self.transaction_partitions(items, &mut partitions);
                self.transaction_item_scopes(items)
            }
            DynamoOperation::PutItem(b) => {
                if let (Some(t), Some(item)) = (b.get_table_name(), b.get_item()) {
                    self.written_partitions(t, item, &mut partitions);
                }
                vec![self.single_write_scope(op)]
            }
            DynamoOperation::UpdateItem(b) => {
                if let Some((t, view)) = self.updated_partitions_view(b) {
                    self.written_partitions(&t, &view, &mut partitions);
                }
                vec![self.single_write_scope(op)]
            }
            DynamoOperation::DeleteItem(b) => {
                if let (Some(t), Some(key)) = (b.get_table_name(), b.get_key()) {
                    self.written_partitions(t, key, &mut partitions);
                }
                vec![self.single_write_scope(op)]
            }
            _ => vec![self.single_write_scope(op)],
        };
        for (scope, version) in item_scopes.into_iter().zip(written) {
            if let (Some(s), Some(v)) = (scope, version) {
                observed.push(s, Version::new(*v));
            }
        }
        // A partition query is judged by the newest writer's clock among its items, which
        // assumes writes apply in clock order. A write sent late applies after writes whose
        // clocks are past its stamp: the session requires the clock at which it was sent, which
        // only a later write, or a strong read, meets.
        let required = sent_late.unwrap_or(0).max(write.stamp.timestamp.get());
        for p in partitions.iter() {
            observed.push(p, Version::new(required));
        }
    }

    fn conflict_from_item(
        &self,
        scope: ScopeKey,
        write: &DynamoStamp,
        expected: Option<u64>,
        item: Option<&Item>,
    ) -> Conflict {
        let current = item
            .and_then(|i| expr::number(i, &self.config.version_attribute))
            .unwrap_or(0);
        let mut conflict = Conflict::new(
            scope,
            write.stamp.write_id,
            write.stamp.timestamp,
            expected.map(Version::new),
            Version::new(current),
        );
        if let Some(item) = item {
            conflict.current_timestamp =
                expr::number(item, &self.config.clock_attribute).map(HybridTimestamp::new);
            conflict.current_writer =
                expr::number(item, &self.config.version_attribute).and_then(|v| {
                    expr::string(item, &self.config.write_id_slot(v)).and_then(WriteId::parse)
                });
            conflict.item = Some(Arc::new(item.clone()));
        }
        conflict
    }
}

impl StoreAdapter for DynamoAdapter {
    type Request = DynamoRequest;
    type Response = DynamoResponse;
    type Error = DynamoError;

    fn store(&self) -> StoreId {
        self.config.store
    }

    fn prepare(&self, request: &mut DynamoRequest) {
        request.config = Some(self.config.clone());
    }

    fn operation(&self, request: &DynamoRequest) -> Operation {
        match request.operation {
            DynamoOperation::GetItem(_)
            | DynamoOperation::Query(_)
            | DynamoOperation::BatchGetItem(_)
            | DynamoOperation::TransactGetItems(_)
            | DynamoOperation::Scan(_) => Operation::Read,
            // Writes are conditional on the version and carry their write id, so a replay is
            // recognised (and transactions carry a ClientRequestToken).
            _ => Operation::Write(Replay::Safe),
        }
    }

    fn scopes(&self, request: &DynamoRequest, scopes: &mut Scopes) {
        match &request.operation {
            DynamoOperation::GetItem(b) => {
                if let (Some(t), Some(k)) = (b.get_table_name(), b.get_key()) {
                    if let Some(s) = self.item_scope(t, k) {
                        scopes.push(s);
                    }
                }
            }
            DynamoOperation::Query(q) => {
                if let Some(s) = self.query_scope(q) {
                    scopes.push(s);
                }
            }
            DynamoOperation::BatchGetItem(b) => {
                for (table, keys) in sorted_tables(b) {
                    for key in &keys.keys {
                        if let Some(s) = self.item_scope(table, key) {
                            scopes.push(s);
                        }
                    }
                }
            }
            DynamoOperation::TransactGetItems(b) => {
                for get in b.get_transact_items().iter().flatten() {
                    if let Some(s) = get
                        .get
                        .as_ref()
                        .and_then(|g| self.item_scope(&g.table_name, &g.key))
                    {
                        scopes.push(s);
                    }
                }
            }
            DynamoOperation::Scan(b) => {
                if let Some(table) = b.get_table_name() {
                    if self.config.tables.contains_key(table) {
                        scopes.push(self.table_scope(table));
                    }
                }
            }
            DynamoOperation::PutItem(b) => {
                if let Some(s) = self.single_write_scope(&request.operation) {
                    scopes.push(s);
                }
                if let (Some(t), Some(item)) = (b.get_table_name(), b.get_item()) {
                    self.written_partitions(t, item, scopes);
                }
            }
            DynamoOperation::UpdateItem(b) => {
                if let Some(s) = self.single_write_scope(&request.operation) {
                    scopes.push(s);
                }
                if let Some((t, view)) = self.updated_partitions_view(b) {
                    self.written_partitions(&t, &view, scopes);
                }
            }
            DynamoOperation::DeleteItem(b) => {
                if let Some(s) = self.single_write_scope(&request.operation) {
                    scopes.push(s);
                }
                // The table partition it leaves: a later query of it must not show the item.
                // (Its index partitions are unknown: the key does not name them.)
                if let (Some(t), Some(key)) = (b.get_table_name(), b.get_key()) {
                    self.written_partitions(t, key, scopes);
                }
            }
            DynamoOperation::TransactWriteItems(b) => {
                let items = b.get_transact_items().as_deref().unwrap_or_default();
                for s in self.transaction_item_scopes(items).into_iter().flatten() {
                    scopes.push(s);
                }
                self.transaction_partitions(items, scopes);
            }
        }
    }

    fn fence_support(&self) -> FenceSupport {
        FenceSupport::new().strong_reads(true)
    }

    fn stamp_write(&self, request: &mut DynamoRequest, stamp: Stamp, fence: &ReadFence) {
        let seen = |scope: Option<ScopeKey>| -> Option<u64> {
            Some(
                scope
                    .and_then(|s| fence.requirement(s))
                    .map_or(0, |r| r.version.get()),
            )
        };
        let expected = match &request.operation {
            DynamoOperation::TransactWriteItems(b) => {
                let items = b.get_transact_items().as_deref().unwrap_or_default();
                self.transaction_item_scopes(items)
                    .into_iter()
                    .zip(items)
                    .map(|(scope, ti)| {
                        if ti.condition_check.is_some() {
                            None
                        } else {
                            seen(scope)
                        }
                    })
                    .collect()
            }
            op => vec![request
                .explicit_version
                .or_else(|| seen(self.single_write_scope(op)))],
        };
        request.stamp = Some(DynamoStamp {
            stamp,
            expected,
            replay: false,
            rebased: false,
            create: false,
            rebases: 0,
        });
    }

    fn prepare_replay(&self, request: &mut DynamoRequest) {
        if let Some(w) = request.stamp.as_mut() {
            w.replay = true;
        }
    }

    fn verification(&self, request: &DynamoRequest) -> Verification {
        // A base-table partition of a store that does not replicate it in order: no item a
        // query returns vouches for the others, so a fenced query goes to `ConsistentRead` up
        // front. (A global index has no strong read: its queries stay cheap and `Pending`.)
        match &request.operation {
            DynamoOperation::Query(q)
                if !self.config.ordered_partitions && !self.is_global_index_query(q) =>
            {
                Verification::ServerSideOnly
            }
            // No page of a scan shows that it holds every write to the table (each partition is
            // replicated on its own): a scan of a table the session wrote is read strongly, and a
            // scan of one it did not write claims nothing (`Unscoped`).
            DynamoOperation::Scan(_) => Verification::WritesOnly,
            _ => Verification::Versions,
        }
    }

    fn apply_fence(&self, request: &mut DynamoRequest, fence: &ReadFence, strategy: FenceStrategy) {
        if strategy != FenceStrategy::Strong {
            return;
        }
        match &mut request.operation {
            DynamoOperation::GetItem(b) => *b = std::mem::take(b).consistent_read(true),
            // Global secondary indexes have no strong reads: the attempt is a plain re-read.
            DynamoOperation::Query(q) if q.get_index_name().is_none() || self.is_local_index(q) => {
                *q = std::mem::take(q).consistent_read(true)
            }
            // Per table: only the tables holding an item the session requires something of are
            // read strongly (a strong read costs twice as much).
            DynamoOperation::BatchGetItem(b) => {
                let Some(mut tables) = b.get_request_items().clone() else {
                    return;
                };
                for (table, keys) in tables.iter_mut() {
                    let fenced = keys.keys.iter().any(|k| {
                        self.item_scope(table, k)
                            .and_then(|s| fence.requirement(s))
                            .is_some_and(|r| !r.is_unfenced())
                    });
                    if fenced {
                        keys.consistent_read = Some(true);
                    }
                }
                *b = std::mem::take(b).set_request_items(Some(tables));
            }
            // Global secondary indexes have no strong reads: the attempt is a plain re-read.
            DynamoOperation::Scan(b) if !self.is_global_index_scan(b) => {
                *b = std::mem::take(b).consistent_read(true)
            }
            _ => {}
        }
    }

    fn observe(&self, request: &DynamoRequest, response: &DynamoResponse, observed: &mut Observed) {
        match &request.operation {
            DynamoOperation::GetItem(b) => {
                let scope = match (b.get_table_name(), b.get_key()) {
                    (Some(t), Some(k)) => self.item_scope(t, k),
                    _ => None,
                };
                match response.item() {
                    Some(item) => {
                        let table = b.get_table_name().as_deref().unwrap_or_default();
                        self.observe_item(table, scope, item, observed)
                    }
                    None => {
                        if let Some(s) = scope {
                            observed.push(s, Version::ZERO);
                        }
                    }
                }
                if response.consistent {
                    observed.mark_strong();
                }
            }
            DynamoOperation::Query(q) => {
                let table = q.get_table_name().clone().unwrap_or_default();
                let mut newest = 0u64;
                for item in response.items() {
                    self.observe_item(&table, self.item_scope(&table, item), item, observed);
                    newest =
                        newest.max(expr::number(item, &self.config.clock_attribute).unwrap_or(0));
                }
                if let Some(scope) = self.query_scope(q) {
                    // On DynamoDB a base-table partition is replicated in order, so its newest
                    // item shows how far the copy read is. A global index is not: DynamoDB copies
                    // writes to it item by item, in no order, so the index can show a later write
                    // while it still lacks an earlier one; nor is a base-table partition of a
                    // store declared with `ordered_partitions(false)`. Such a query's items prove
                    // nothing about the others: it credits no version to its partition, so a
                    // requirement there is met only by a strong read (a global index has none:
                    // the read is `Pending`), and `Guaranteed(Unfenced)` when there is none.
                    let version =
                        if self.is_global_index_query(q) || !self.config.ordered_partitions {
                            Version::ZERO
                        } else {
                            Version::new(newest)
                        };
                    observed.push(scope, version);
                }
                if response.consistent {
                    observed.mark_strong();
                }
            }
            DynamoOperation::BatchGetItem(b) => {
                let mut every_table_strong = true;
                for (table, keys) in sorted_tables(b) {
                    // As sent: the fence may have made the table's reads strong.
                    let strong = response.strong_tables.iter().any(|t| t == table);
                    every_table_strong &= strong;
                    let returned: Vec<(ScopeKey, &Item)> = response
                        .batch_items(table)
                        .iter()
                        .filter_map(|i| Some((self.item_scope(table, i)?, i)))
                        .collect();
                    for key in &keys.keys {
                        let Some(scope) = self.item_scope(table, key) else {
                            continue;
                        };
                        let item = returned.iter().find(|(s, _)| *s == scope).map(|(_, i)| *i);
                        match item {
                            Some(item) => self.observe_item(table, Some(scope), item, observed),
                            // Absent, as GetItem's absence: version 0, which meets no
                            // requirement of a cheap read.
                            None => observed.push(scope, Version::ZERO),
                        }
                        if strong {
                            // A strong read of the item reflects every write of it acknowledged
                            // before: it meets any requirement on the item, even when the item
                            // is older than the session saw (deleted and created again) or gone.
                            observed.meets(scope, Version::new(u64::MAX));
                        }
                    }
                }
                if every_table_strong {
                    observed.mark_strong();
                }
            }
            DynamoOperation::TransactGetItems(b) => {
                let items = response.transact_items();
                for (i, get) in b.get_transact_items().iter().flatten().enumerate() {
                    let Some(get) = &get.get else { continue };
                    let scope = self.item_scope(&get.table_name, &get.key);
                    match items.get(i).copied().flatten() {
                        Some(item) => self.observe_item(&get.table_name, scope, item, observed),
                        None => {
                            if let Some(s) = scope {
                                observed.push(s, Version::ZERO);
                            }
                        }
                    }
                }
                // DynamoDB serves TransactGetItems from the leader, in a serializable snapshot.
                observed.mark_strong();
            }
            DynamoOperation::Scan(b) => {
                // Every item is checked against what the session saw of it; the table's own
                // scope is credited nothing (no page shows that it lacks no write of the table).
                let table = b.get_table_name().clone().unwrap_or_default();
                for item in response.items() {
                    self.observe_item(&table, self.item_scope(&table, item), item, observed);
                }
                if response.consistent {
                    observed.mark_strong();
                } else if self.config.tables.contains_key(&table) {
                    // An eventually consistent page (a global index has no other) shows nothing of
                    // the table: never trusted, even on the strong path.
                    observed.push(self.table_scope(&table), Version::ZERO);
                }
            }
            _ => {
                if let Some(write) = &request.stamp {
                    self.observe_write(
                        request,
                        write,
                        &response.written,
                        response.sent_late,
                        observed,
                    );
                }
            }
        }
    }

    fn observe_unresolved(&self, request: &DynamoRequest, observed: &mut Observed) {
        let Some(write) = &request.stamp else { return };
        let written = crate::write::versions_if_applied(&self.config, &request.operation, write);
        // When it was sent is not known: no later than now.
        let now = SystemClock.now_micros();
        self.observe_write(request, write, &written, Some(now), observed);
    }

    fn classify(&self, error: &DynamoError) -> ErrorClass {
        error.class()
    }

    fn conflict(&self, request: &DynamoRequest, error: &DynamoError) -> Option<Conflict> {
        let write = request.stamp.as_ref()?;
        match (&request.operation, error) {
            (
                DynamoOperation::TransactWriteItems(b),
                DynamoError::TransactionCanceled {
                    reasons,
                    version_conflicts,
                },
            ) => {
                let items = b.get_transact_items().as_deref().unwrap_or_default();
                let scopes = self.transaction_item_scopes(items);
                let i = *version_conflicts.first()?;
                let mut conflict = self.conflict_from_item(
                    scopes.get(i).copied().flatten()?,
                    write,
                    write.expected.get(i).copied().flatten(),
                    reasons.get(i).and_then(|r| r.item.as_ref()),
                );
                // Every reason stays available to a resolver.
                conflict.item = Some(Arc::new(reasons.clone()));
                Some(conflict)
            }
            (op, DynamoError::ConditionFailed(c)) if c.version_conflict => {
                let mut conflict = self.conflict_from_item(
                    self.single_write_scope(op)?,
                    write,
                    c.expected,
                    c.item.as_ref(),
                );
                // A version conflict without an item: deleted since the session saw it.
                conflict.gone = c.item.is_none();
                Some(conflict)
            }
            _ => None,
        }
    }

    fn rebase(&self, request: &mut DynamoRequest, conflict: &Conflict) -> bool {
        if request.explicit_version.is_some() {
            // The caller's own read-modify-write: the conflict is theirs to handle.
            return false;
        }
        let index = match &request.operation {
            // Only a single-item write finds its item gone (a transaction is canceled).
            DynamoOperation::TransactWriteItems(_) if conflict.gone => None,
            DynamoOperation::TransactWriteItems(b) => {
                let items = b.get_transact_items().as_deref().unwrap_or_default();
                self.transaction_item_scopes(items)
                    .iter()
                    .position(|s| *s == Some(conflict.scope))
            }
            _ => Some(0),
        };
        match (index, request.stamp.as_mut()) {
            (Some(i), Some(write)) if i < write.expected.len() => {
                if conflict.gone {
                    // Created again, at a version past the one the session saw.
                    write.create = true;
                } else {
                    write.expected[i] = Some(conflict.current.get());
                }
                write.rebased = true;
                write.rebases = write.rebases.saturating_add(1);
                true
            }
            _ => false,
        }
    }
}

/// The tables of a `BatchGetItem` and their keys, in name order.
fn sorted_tables(
    b: &aws_sdk_dynamodb::operation::batch_get_item::builders::BatchGetItemInputBuilder,
) -> Vec<(&String, &aws_sdk_dynamodb::types::KeysAndAttributes)> {
    let mut tables: Vec<_> = b.get_request_items().iter().flatten().collect();
    tables.sort_by(|a, b| a.0.cmp(b.0));
    tables
}

impl DynamoAdapter {
    /// A scan of a global secondary index declared for its table (no strong reads).
    fn is_global_index_scan(
        &self,
        b: &aws_sdk_dynamodb::operation::scan::builders::ScanInputBuilder,
    ) -> bool {
        match (self.schema(b.get_table_name().as_ref()), b.get_index_name()) {
            (Some(schema), Some(index)) => schema.indexes.contains_key(index),
            _ => false,
        }
    }

    /// Local secondary indexes (not declared as global) support consistent reads.
    fn is_local_index(
        &self,
        q: &aws_sdk_dynamodb::operation::query::builders::QueryInputBuilder,
    ) -> bool {
        match (self.schema(q.get_table_name().as_ref()), q.get_index_name()) {
            (Some(schema), Some(index)) => !schema.indexes.contains_key(index),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuring_a_clone_leaves_the_original_unchanged() {
        let original = DynamoAdapter::new().table(TableSchema::new("a", "pk"));
        let configured = original
            .clone()
            .table(TableSchema::new("b", "pk"))
            .version_attribute("v")
            .store_id(StoreId::new(9));
        assert!(original.schema_of("b").is_none());
        assert_eq!(original.config.version_attribute, "ryw_version");
        assert_eq!(original.store(), StoreId::new(2));
        assert!(configured.schema_of("a").is_some() && configured.schema_of("b").is_some());
        assert_eq!(configured.config.version_attribute, "v");
        assert_eq!(configured.store(), StoreId::new(9));
        assert!(original.has_ordered_partitions());
        assert!(!original.ordered_partitions(false).has_ordered_partitions());
    }

    /// What a query of partition `p` (of the table, of a local index, or of the global index
    /// `by_author`) returning one item credits to its partition scope, and to the item's scope.
    #[test]
    fn a_query_credits_its_partition_only_when_the_store_replicates_it_in_order() {
        use crate::request::{DynamoOutput, DynamoResponse};
        use aws_sdk_dynamodb::operation::query::{QueryInput, QueryOutput};

        let s = |v: &str| AttributeValue::S(v.into());
        let item: Item = [
            ("pk".to_owned(), s("p")),
            ("sk".to_owned(), s("a")),
            ("author".to_owned(), s("p")),
            ("ryw_version".to_owned(), AttributeValue::N("7".into())),
            ("ryw_clock".to_owned(), AttributeValue::N("500".into())),
        ]
        .into();
        let response = DynamoResponse {
            sent_late: None,
            output: DynamoOutput::Query(QueryOutput::builder().items(item.clone()).build()),
            written: vec![],
            replayed: false,
            consistent: false,
            strong_tables: vec![],
        };
        let query = |index: Option<&str>| -> DynamoRequest {
            let attr = if index == Some("by_author") {
                "author"
            } else {
                "pk"
            };
            QueryInput::builder()
                .table_name("t")
                .set_index_name(index.map(str::to_owned))
                .key_condition_expression(format!("{attr} = :v"))
                .expression_attribute_values(":v", s("p"))
                .into()
        };
        let schema = TableSchema::new("t", "pk")
            .sort_key("sk")
            .global_index("by_author", "author");
        for ordered in [true, false] {
            let adapter = DynamoAdapter::new()
                .table(schema.clone())
                .ordered_partitions(ordered);
            let credited = |index: Option<&str>| {
                let mut observed = Observed::new();
                adapter.observe(&query(index), &response, &mut observed);
                let item_scope = adapter.item_scope("t", &item).unwrap();
                assert_eq!(observed.get(item_scope), Some(Version::new(7)));
                let scope = match index {
                    Some("by_author") => adapter.partition_scope("t", index, &s("p")),
                    _ => adapter.partition_scope("t", None, &s("p")),
                };
                observed.get(scope).unwrap()
            };
            let base = if ordered {
                Version::new(500)
            } else {
                Version::ZERO
            };
            assert_eq!(credited(None), base, "ordered: {ordered}");
            assert_eq!(credited(Some("local")), base, "ordered: {ordered}");
            assert_eq!(credited(Some("by_author")), Version::ZERO);
        }
    }

    /// A write sent late (kept for later, retried, rebased) makes the session require of its
    /// partitions the clock it was sent at; one sent at once, its stamp. A rebase marks the write
    /// as sent late.
    #[test]
    fn a_write_sent_late_requires_the_clock_it_was_sent_at_of_its_partitions() {
        use crate::request::{DynamoOutput, DynamoResponse, DynamoStamp};
        use aws_sdk_dynamodb::operation::put_item::{PutItemInput, PutItemOutput};
        use ryw::{SessionId, WriteId};

        let adapter = DynamoAdapter::new().table(TableSchema::new("t", "pk"));
        let write_id = WriteId::new(SessionId::derive(b"late"), 1, 1);
        let mut request: DynamoRequest = PutItemInput::builder()
            .table_name("t")
            .item("pk", AttributeValue::S("p".into()))
            .into();
        request.stamp = Some(DynamoStamp {
            stamp: Stamp::new(write_id, HybridTimestamp::new(1_000)),
            expected: vec![None],
            replay: false,
            rebased: false,
            create: false,
            rebases: 0,
        });
        let partition = adapter.partition_scope("t", None, &AttributeValue::S("p".into()));
        let required = |sent_late: Option<u64>| {
            let response = DynamoResponse {
                sent_late,
                output: DynamoOutput::PutItem(PutItemOutput::builder().build()),
                written: vec![Some(1_000)],
                replayed: false,
                consistent: false,
                strong_tables: vec![],
            };
            let mut observed = Observed::new();
            adapter.observe(&request, &response, &mut observed);
            observed.get(partition)
        };
        assert_eq!(required(None), Some(Version::new(1_000)));
        assert_eq!(required(Some(9_000)), Some(Version::new(9_000)));

        let conflict = Conflict::new(
            adapter
                .item_scope(
                    "t",
                    &[("pk".to_owned(), AttributeValue::S("p".into()))].into(),
                )
                .unwrap(),
            write_id,
            HybridTimestamp::new(1_000),
            Some(Version::new(1_000)),
            Version::new(1_001),
        );
        assert!(adapter.rebase(&mut request, &conflict));
        assert!(request.stamp.as_ref().unwrap().rebased);
    }
}
