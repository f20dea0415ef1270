//! Sessions' records ([`ryw::record`]) in a DynamoDB table of the application's own:
//! [`DynamoRecordStore`].

use crate::error::DynamoError;
use aws_sdk_dynamodb::client::Waiters;
use aws_sdk_dynamodb::config::AsyncSleep;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TimeToLiveSpecification,
};
use aws_sdk_dynamodb::Client;
use ryw::record::{Record, RecordError, RecordFuture, RecordStore};
use ryw::version::{Entry, ScopeKey, Version};
use ryw::SessionId;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The partition key attribute unless configured otherwise.
pub const DEFAULT_KEY_ATTRIBUTE: &str = "session";

/// The record's version attribute (N).
pub const VERSION_ATTRIBUTE: &str = "version";

/// The record's entries attribute (M: 16 hex digits to N).
pub const ENTRIES_ATTRIBUTE: &str = "entries";

/// The TTL attribute (N, seconds since the Unix epoch).
pub const EXPIRES_ATTRIBUTE: &str = "expires_at";

/// How long a record lives after its last append unless configured otherwise: 30 days.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// The most entries a record holds unless configured otherwise (about 115 KB).
pub const DEFAULT_MAX_ENTRIES: usize = 4096;

/// The most entries a record can be configured to hold: about 340 KB, under DynamoDB's item
/// size limit of 400 KB.
pub const MAX_ENTRIES_LIMIT: usize = 12_000;

/// How many conditional writes an append tries before giving up, unless configured otherwise.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 16;

/// The backoff after the second lost race in a row; it doubles per attempt up to
/// [`MAX_BACKOFF`]. The first lost race is retried at once.
const FIRST_BACKOFF: Duration = Duration::from_millis(4);
const MAX_BACKOFF: Duration = Duration::from_millis(200);

/// Why [`DynamoRecordStore`] refused an append; it is the source of the
/// [`RecordError::Unavailable`] the append returns, and nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordRefused {
    /// The record would hold more entries than [`DynamoRecordStore::max_entries`].
    #[error("the session's record would hold {entries} entries, more than its maximum of {max}")]
    TooManyEntries {
        /// The entries the record would hold.
        entries: usize,
        /// The maximum.
        max: usize,
    },
    /// Other instances' appends got in first on every attempt.
    #[error("the session's record changed under each of {attempts} attempts")]
    Contended {
        /// The attempts made.
        attempts: u32,
    },
}

/// A [`RecordStore`] over a DynamoDB table: one item per session, shared by every app instance, holding the exact entries a session coarsened out of its token so that another
/// instance fences reads of those items on their exact versions instead of the store's horizon.
///
/// # Table layout
///
/// | attribute | type | holds |
/// |---|---|---|
/// | `session` (the partition key; another name with [`DynamoRecordStore::key_attribute`]) | S | the session id, 32 hex digits (`SessionId`'s `Display`) |
/// | `version` | N | the record's version: 1 after the first append, one more per append |
/// | `entries` | M | one entry per scope: the scope's 64 bits as 16 lower-case hex digits (`ScopeKey::to_bits`) to its version (N) |
/// | `expires_at` | N | seconds since the Unix epoch; the table's TTL attribute, refreshed by every append |
///
/// [`DynamoRecordStore::create_table`] creates such a table (on-demand capacity, partition key
/// `session` of type S, no sort key) and enables TTL on `expires_at`; for a table made another
/// way, [`DynamoRecordStore::enable_ttl`] enables TTL.
///
/// # How an append stays atomic
///
/// DynamoDB update expressions have no maximum, so an append reads the item with
/// `ConsistentRead`, merges the batch by pointwise maximum, and writes the whole record back with
/// `UpdateItem` on the condition `version = :expected` (`attribute_not_exists(version)` for a new
/// record), setting `version` to one more. When another instance's append got in first, the
/// condition fails, DynamoDB returns the item as it is now
/// (`ReturnValuesOnConditionCheckFailure`), and the append merges into it and retries at once;
/// after a second lost race in a row it backs off (exponentially, with jitter) and reads the item
/// again, up to [`DynamoRecordStore::max_attempts`] conditional writes in all. So
/// concurrent appends lose nothing, each acknowledged append has its own version, and the record
/// at version `v` holds every entry of every append numbered `v` or less.
///
/// # Size
///
/// An item is at most 400 KB; an entry takes about 28 bytes. A record holds at most
/// [`DynamoRecordStore::max_entries`] entries (default [`DEFAULT_MAX_ENTRIES`], at most
/// [`MAX_ENTRIES_LIMIT`]). An append that would take a record past it is refused
/// ([`RecordRefused::TooManyEntries`]) and writes nothing: dropping entries would lose them. The
/// session's token then names no record, and reads of its coarsened items meet the store's
/// horizon instead (on the strong path), which is always sound; so do later requests of the
/// session whose batches would still take the record past its maximum.
///
/// # Cost
///
/// - An append (one per request that coarsened entries, [`ryw::record::SessionRecords::flush`]):
///   one strongly consistent `GetItem` and one conditional `UpdateItem` of the whole item (write
///   units by item size: about 1 WCU per 36 entries), plus one more `UpdateItem` per append of
///   another instance that got in between (and from the second in a row, one more `GetItem`).
/// - A load: one strongly consistent `GetItem` (about 1 RCU per 146 entries) per session, per app
///   instance, per record version ([`ryw::record::SessionRecords`] caches what it loaded).
///
/// Loads and appends sit on the request path: give the client timeouts to match
/// (`aws_sdk_dynamodb::config::Builder::timeout_config`). An append or load that fails costs a
/// session nothing but the strong path on its coarsened items.
///
/// # Expiry
///
/// A record expires [`DynamoRecordStore::ttl`] after its last append (default 30 days; loads do
/// not extend it; DynamoDB deletes expired items within a few days). A token that names a deleted record is not
/// trusted (the horizon applies), but a new record of the same session counts from version 1
/// again: choose a TTL longer than a session's token stays usable.
///
/// A stored record that does not decode (an attribute missing or of another type, a key that is
/// not 16 lower-case hex digits, a number that is not a `u64`) is [`RecordError::Damaged`]: never
/// trusted by a load, never overwritten by an append.
///
/// # Example
///
/// ```no_run
/// use ryw::record::SessionRecords;
/// use ryw_dynamodb::DynamoRecordStore;
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// # async fn run(client: aws_sdk_dynamodb::Client, session: ryw::Session)
/// # -> Result<(), Box<dyn std::error::Error>> {
/// let store = DynamoRecordStore::new(client, "app_session_records")
///     .ttl(Duration::from_secs(7 * 86_400));
/// store.create_table().await?; // once, at deployment
/// // One per app instance.
/// let records = SessionRecords::new(Arc::new(store));
///
/// // Per request: the record the session's token names, then the request, then its batch.
/// records.load(&session).await;
/// // ... the request, through `ryw::ReadYourWritesLayer` ...
/// records.flush(&session).await;
/// let token = session.token().encode()?;
/// # let _ = token; Ok(()) }
/// ```
#[derive(Clone)]
pub struct DynamoRecordStore {
    client: Client,
    table: String,
    key_attribute: String,
    ttl: Duration,
    max_entries: usize,
    max_attempts: u32,
}

impl fmt::Debug for DynamoRecordStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynamoRecordStore")
            .field("table", &self.table)
            .field("key_attribute", &self.key_attribute)
            .field("ttl", &self.ttl)
            .field("max_entries", &self.max_entries)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

type Item = HashMap<String, AttributeValue>;

fn unavailable(e: impl Into<ryw::error::BoxError>) -> RecordError {
    RecordError::Unavailable(e.into())
}

impl DynamoRecordStore {
    /// Records kept in `table`, partition key [`DEFAULT_KEY_ATTRIBUTE`], TTL [`DEFAULT_TTL`], at
    /// most [`DEFAULT_MAX_ENTRIES`] entries a record.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoRecordStore {
            client,
            table: table.into(),
            key_attribute: DEFAULT_KEY_ATTRIBUTE.into(),
            ttl: DEFAULT_TTL,
            max_entries: DEFAULT_MAX_ENTRIES,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }

    /// The partition key attribute (a string; default [`DEFAULT_KEY_ATTRIBUTE`]).
    pub fn key_attribute(mut self, name: impl Into<String>) -> Self {
        self.key_attribute = name.into();
        self
    }

    /// How long a record lives after its last append (default [`DEFAULT_TTL`]). Longer than a
    /// session's token stays usable: see the [expiry](DynamoRecordStore#expiry).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The most entries one record holds (default [`DEFAULT_MAX_ENTRIES`]; at least 1, at most
    /// [`MAX_ENTRIES_LIMIT`]). An append past it is refused, never truncated.
    pub fn max_entries(mut self, max: usize) -> Self {
        self.max_entries = max.clamp(1, MAX_ENTRIES_LIMIT);
        self
    }

    /// How many conditional writes one append tries when other instances' appends keep getting
    /// in first (default [`DEFAULT_MAX_ATTEMPTS`], at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates the table (on-demand capacity, the partition key attribute of type S, no sort
    /// key), waits until it is active (up to two minutes), and enables TTL on
    /// [`EXPIRES_ATTRIBUTE`].
    pub async fn create_table(&self) -> Result<(), RecordError> {
        self.client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(&self.key_attribute)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(unavailable)?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(&self.key_attribute)
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(unavailable)?,
            )
            .send()
            .await
            .map_err(|e| unavailable(DynamoError::from_sdk(e)))?;
        self.client
            .wait_until_table_exists()
            .table_name(&self.table)
            .wait(Duration::from_secs(120))
            .await
            .map_err(unavailable)?;
        self.enable_ttl().await
    }

    /// Enables TTL on [`EXPIRES_ATTRIBUTE`] (`UpdateTimeToLive`), for a table created without
    /// [`DynamoRecordStore::create_table`]. Fails if TTL is already enabled.
    pub async fn enable_ttl(&self) -> Result<(), RecordError> {
        self.client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .enabled(true)
                    .attribute_name(EXPIRES_ATTRIBUTE)
                    .build()
                    .map_err(unavailable)?,
            )
            .send()
            .await
            .map_err(|e| unavailable(DynamoError::from_sdk(e)))?;
        Ok(())
    }

    /// The item of `key`, read strongly.
    async fn read(&self, key: &str) -> Result<Option<Item>, RecordError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(&self.key_attribute, AttributeValue::S(key.to_owned()))
            .consistent_read(true)
            .projection_expression("#v, #e")
            .expression_attribute_names("#v", VERSION_ATTRIBUTE)
            .expression_attribute_names("#e", ENTRIES_ATTRIBUTE)
            .send()
            .await
            .map_err(|e| unavailable(DynamoError::from_sdk(e)))?;
        Ok(out.item)
    }

    async fn append_batch(&self, session: SessionId, batch: &[Entry]) -> Result<u64, RecordError> {
        let key = session.to_string();
        let mut current = self.read(&key).await?;
        for attempt in 0..self.max_attempts {
            let (version, mut held) = match &current {
                Some(item) => decode(item)?,
                None => (0, HashMap::new()),
            };
            for e in batch {
                let slot = held.entry(e.scope).or_insert(Version::ZERO);
                *slot = (*slot).max(e.version);
            }
            if held.len() > self.max_entries {
                return Err(unavailable(RecordRefused::TooManyEntries {
                    entries: held.len(),
                    max: self.max_entries,
                }));
            }
            let next = version
                .checked_add(1)
                .ok_or_else(|| RecordError::Damaged("the record's version is exhausted".into()))?;
            let mut update = self
                .client
                .update_item()
                .table_name(&self.table)
                .key(&self.key_attribute, AttributeValue::S(key.clone()))
                .update_expression("SET #v = :next, #e = :entries, #x = :expires")
                .expression_attribute_names("#v", VERSION_ATTRIBUTE)
                .expression_attribute_names("#e", ENTRIES_ATTRIBUTE)
                .expression_attribute_names("#x", EXPIRES_ATTRIBUTE)
                .expression_attribute_values(":next", number(next))
                .expression_attribute_values(":entries", encode(&held))
                .expression_attribute_values(":expires", number(self.expires_at()))
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                );
            update = if version == 0 {
                update.condition_expression("attribute_not_exists(#v)")
            } else {
                update
                    .condition_expression("#v = :expected")
                    .expression_attribute_values(":expected", number(version))
            };
            match update.send().await {
                Ok(_) => return Ok(next),
                Err(e) => {
                    let lost_race = match e.as_service_error() {
                        Some(UpdateItemError::ConditionalCheckFailedException(c)) => {
                            Some(c.item().cloned())
                        }
                        _ => None,
                    };
                    let Some(now) = lost_race else {
                        return Err(unavailable(DynamoError::from_sdk(e)));
                    };
                    if attempt + 1 == self.max_attempts {
                        break;
                    }
                    // Another append got in first. The first time, merge at once into the
                    // record as the failed condition returned it; after that, back off, then
                    // read the record afresh (what was returned is older than the wait).
                    current = match now {
                        Some(item) if attempt == 0 => Some(item),
                        _ => {
                            if attempt > 0 {
                                self.sleep(backoff(attempt - 1)).await;
                            }
                            self.read(&key).await?
                        }
                    };
                }
            }
        }
        Err(unavailable(RecordRefused::Contended {
            attempts: self.max_attempts,
        }))
    }

    fn expires_at(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_add(self.ttl)
            .as_secs()
    }

    async fn sleep(&self, duration: Duration) {
        match self.client.config().sleep_impl() {
            Some(sleep) => sleep.sleep(duration).await,
            None => tokio::time::sleep(duration).await,
        }
    }
}

/// The `n`-th wait of one append (from 0): exponential, capped, with half of it jittered so that
/// two instances that lost to each other do not retry in step.
fn backoff(n: u32) -> Duration {
    let full = FIRST_BACKOFF
        .saturating_mul(1u32 << n.min(16))
        .min(MAX_BACKOFF);
    let half = full / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1);
    half + Duration::from_nanos(jitter() % nanos)
}

/// A random number (per-process random keys of the standard hasher, over a counter).
fn jitter() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

fn number(n: u64) -> AttributeValue {
    AttributeValue::N(n.to_string())
}

fn encode(held: &HashMap<ScopeKey, Version>) -> AttributeValue {
    AttributeValue::M(
        held.iter()
            .map(|(scope, version)| (scope.to_hex(), number(version.get())))
            .collect(),
    )
}

/// The version and entries of a stored record, or [`RecordError::Damaged`].
fn decode(item: &Item) -> Result<(u64, HashMap<ScopeKey, Version>), RecordError> {
    let damaged = |what: &str| RecordError::Damaged(format!("dynamodb record: {what}"));
    let version = item
        .get(VERSION_ATTRIBUTE)
        .ok_or_else(|| damaged("no version"))?
        .as_n()
        .map_err(|_| damaged("the version is not a number"))?
        .parse::<u64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| damaged("the version is not a positive 64-bit integer"))?;
    let entries = item
        .get(ENTRIES_ATTRIBUTE)
        .ok_or_else(|| damaged("no entries"))?
        .as_m()
        .map_err(|_| damaged("the entries are not a map"))?;
    let mut held = HashMap::with_capacity(entries.len());
    for (key, value) in entries {
        let scope =
            ScopeKey::parse_hex(key).ok_or_else(|| damaged("an entry's key is not a scope"))?;
        let v = value
            .as_n()
            .ok()
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| damaged("an entry's version is not a 64-bit integer"))?;
        held.insert(scope, Version::new(v));
    }
    Ok((version, held))
}

impl RecordStore for DynamoRecordStore {
    fn append<'a>(&'a self, session: SessionId, entries: &'a [Entry]) -> RecordFuture<'a, u64> {
        Box::pin(self.append_batch(session, entries))
    }

    fn load(&self, session: SessionId) -> RecordFuture<'_, Option<Record>> {
        Box::pin(async move {
            let Some(item) = self.read(&session.to_string()).await? else {
                return Ok(None);
            };
            let (version, held) = decode(&item)?;
            Ok(Some(Record {
                version,
                entries: held
                    .into_iter()
                    .map(|(scope, version)| Entry { scope, version })
                    .collect(),
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ryw::StoreId;

    fn item(pairs: &[(&str, AttributeValue)]) -> Item {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    #[test]
    fn a_record_round_trips_through_its_attributes() {
        let scope = ScopeKey::new(StoreId::new(2), b"posts/1");
        let held: HashMap<_, _> = [(scope, Version::new(u64::MAX))].into();
        let stored = item(&[("version", number(3)), ("entries", encode(&held))]);
        assert_eq!(decode(&stored).unwrap(), (3, held));
        assert_eq!(ScopeKey::parse_hex(&scope.to_hex()), Some(scope));
    }

    #[test]
    fn anything_that_does_not_decode_is_damaged() {
        let good_key = ScopeKey::new(StoreId::new(2), b"k").to_hex();
        let entries = |k: &str, v: AttributeValue| {
            AttributeValue::M([(k.to_owned(), v)].into_iter().collect())
        };
        let cases = [
            item(&[("entries", entries(&good_key, number(1)))]),
            item(&[
                ("version", AttributeValue::S("1".into())),
                ("entries", entries(&good_key, number(1))),
            ]),
            item(&[
                ("version", number(0)),
                ("entries", entries(&good_key, number(1))),
            ]),
            item(&[
                ("version", AttributeValue::N("-1".into())),
                ("entries", entries(&good_key, number(1))),
            ]),
            item(&[("version", number(1))]),
            item(&[
                ("version", number(1)),
                ("entries", AttributeValue::S("x".into())),
            ]),
            item(&[
                ("version", number(1)),
                ("entries", entries("zz", number(1))),
            ]),
            item(&[
                ("version", number(1)),
                ("entries", entries(&good_key.to_uppercase(), number(1))),
            ]),
            item(&[
                ("version", number(1)),
                (
                    "entries",
                    entries(&format!("+{}", &good_key[1..]), number(1)),
                ),
            ]),
            item(&[
                ("version", number(1)),
                (
                    "entries",
                    entries(&good_key, AttributeValue::N("1.5".into())),
                ),
            ]),
            item(&[
                ("version", number(1)),
                ("entries", entries(&good_key, AttributeValue::S("1".into()))),
            ]),
        ];
        for case in cases {
            assert!(
                matches!(decode(&case), Err(RecordError::Damaged(_))),
                "{case:?}"
            );
        }
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        for attempt in 0..40 {
            let full = FIRST_BACKOFF
                .saturating_mul(1u32 << attempt.min(16))
                .min(MAX_BACKOFF);
            let b = backoff(attempt);
            assert!(b >= full / 2 && b <= full, "{attempt}: {b:?}");
        }
    }
}
