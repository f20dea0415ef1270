//! DynamoDB: plain `PutItem` and eventually consistent `GetItem` for the probe, and the same
//! through ryw's DynamoDB adapter. Items are `{pk: S, v: N}` in a table keyed by `pk` alone.

use super::{ProbeStore, RywRead};
use crate::error::ProbeError;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::get_item::GetItemInput;
use aws_sdk_dynamodb::operation::put_item::PutItemInput;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use aws_sdk_dynamodb::Client;
use ryw::{ReadYourWrites, ReadYourWritesLayer, Session};
use ryw_dynamodb::{DynamoAdapter, DynamoService, TableSchema};
use std::collections::HashMap;
use std::time::Duration;
use tower::{Layer, ServiceExt};

/// The partition key the probe's table must have (a string, no sort key).
pub(crate) const KEY: &str = "pk";
const VALUE: &str = "v";

pub(crate) struct Dynamo {
    client: Client,
    table: String,
    endpoint: Option<String>,
    instances: Vec<ReadYourWrites<DynamoService, DynamoAdapter>>,
}

impl Dynamo {
    pub(crate) async fn connect(
        table: String,
        endpoint: Option<String>,
        instances: usize,
    ) -> Result<Self, ProbeError> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(url) = &endpoint {
            loader = loader.endpoint_url(url);
        }
        let config = loader.load().await;
        if config.region().is_none() {
            return Err(ProbeError::Usage(
                "no AWS region: set AWS_REGION (or a profile's region)".into(),
            ));
        }
        let dynamo = aws_sdk_dynamodb::config::Builder::from(&config)
            .timeout_config(
                aws_sdk_dynamodb::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_timeout(Duration::from_secs(20))
                    .build(),
            )
            .build();
        let client = Client::from_conf(dynamo);
        let adapter = DynamoAdapter::new().table(TableSchema::new(&table, KEY));
        let instances = (0..instances.max(1))
            .map(|_| {
                ReadYourWritesLayer::new(adapter.clone()).layer(DynamoService::new(client.clone()))
            })
            .collect();
        Ok(Dynamo {
            client,
            table,
            endpoint,
            instances,
        })
    }

    fn instance(&self, i: usize) -> ReadYourWrites<DynamoService, DynamoAdapter> {
        self.instances[i % self.instances.len()].clone()
    }

    async fn create(&self) -> Result<(), ProbeError> {
        self.client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(KEY)
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(|e| ProbeError::Store(e.to_string()))?,
            )
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(KEY)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(|e| ProbeError::Store(e.to_string()))?,
            )
            .send()
            .await
            .map_err(sdk)?;
        for _ in 0..240 {
            let t = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(sdk)?;
            if t.table().and_then(|t| t.table_status()).map(|s| s.as_str()) == Some("ACTIVE") {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(ProbeError::Store(format!(
            "{} did not become active in two minutes",
            self.table
        )))
    }
}

/// A DynamoDB error as the probe reports it.
pub(crate) fn sdk<E, R>(e: SdkError<E, R>) -> ProbeError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let text = DisplayErrorContext(&e).to_string();
    match &e {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => ProbeError::Unreachable(text),
        _ => match e.code() {
            Some(
                "AccessDeniedException"
                | "UnrecognizedClientException"
                | "MissingAuthenticationTokenException"
                | "InvalidSignatureException"
                | "ExpiredTokenException",
            ) => ProbeError::Permission(text),
            Some(
                "ProvisionedThroughputExceededException"
                | "ThrottlingException"
                | "RequestLimitExceeded",
            ) => ProbeError::Throttled(text),
            _ => ProbeError::Store(text),
        },
    }
}

/// An error of the ryw layer over DynamoDB.
fn layered(e: ryw::Error<ryw_dynamodb::DynamoError>) -> ProbeError {
    let text = e.to_string();
    match &e {
        ryw::Error::Store { source, .. } => match source {
            ryw_dynamodb::DynamoError::Throttled { .. } => ProbeError::Throttled(text),
            other => {
                let debug = format!("{other:?}");
                if debug.contains("DispatchFailure") || debug.contains("TimeoutError") {
                    ProbeError::Unreachable(text)
                } else if debug.contains("AccessDenied") || debug.contains("UnrecognizedClient") {
                    ProbeError::Permission(text)
                } else {
                    ProbeError::Store(text)
                }
            }
        },
        _ => ProbeError::Store(text),
    }
}

fn value_of(item: Option<&HashMap<String, AttributeValue>>) -> Option<u64> {
    item?.get(VALUE)?.as_n().ok()?.parse().ok()
}

impl ProbeStore for Dynamo {
    fn describe(&self) -> String {
        match &self.endpoint {
            Some(url) => format!("DynamoDB table {} at {url}", self.table),
            None => format!("DynamoDB table {}", self.table),
        }
    }

    async fn prepare(&mut self, create: bool, force: bool) -> Result<(), ProbeError> {
        let described = self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await;
        let table = match described {
            Ok(t) => t,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                if !create {
                    return Err(ProbeError::Missing(format!("table {}", self.table)));
                }
                return self.create().await;
            }
            Err(e) => return Err(sdk(e)),
        };
        let Some(t) = table.table() else {
            return Err(ProbeError::Missing(format!("table {}", self.table)));
        };
        let keys = t.key_schema();
        let string_key = t
            .attribute_definitions()
            .iter()
            .any(|a| a.attribute_name() == KEY && *a.attribute_type() == ScalarAttributeType::S);
        if keys.len() != 1 || keys[0].attribute_name() != KEY || !string_key {
            return Err(ProbeError::Schema {
                table: self.table.clone(),
                detail: format!(
                    "its key is {:?}; the probe needs a string partition key `{KEY}` and no sort key",
                    keys.iter().map(|k| k.attribute_name()).collect::<Vec<_>>()
                ),
            });
        }
        if !force {
            let scan = self
                .client
                .scan()
                .table_name(&self.table)
                .limit(1)
                .consistent_read(true)
                .send()
                .await
                .map_err(sdk)?;
            if scan.count() > 0 {
                return Err(ProbeError::NotEmpty(format!("table {}", self.table)));
            }
        }
        Ok(())
    }

    async fn write(&self, key: &str, value: u64) -> Result<(), ProbeError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item(KEY, AttributeValue::S(key.to_owned()))
            .item(VALUE, AttributeValue::N(value.to_string()))
            .send()
            .await
            .map_err(sdk)?;
        Ok(())
    }

    async fn read_cheap(&self, key: &str) -> Result<Option<u64>, ProbeError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(KEY, AttributeValue::S(key.to_owned()))
            .send()
            .await
            .map_err(sdk)?;
        Ok(value_of(out.item()))
    }

    async fn ryw_write(
        &self,
        instance: usize,
        session: &Session,
        key: &str,
        value: u64,
    ) -> Result<(), ProbeError> {
        let put: ryw_dynamodb::DynamoRequest = PutItemInput::builder()
            .table_name(&self.table)
            .item(KEY, AttributeValue::S(key.to_owned()))
            .item(VALUE, AttributeValue::N(value.to_string()))
            .into();
        self.instance(instance)
            .oneshot(session.request(put))
            .await
            .map_err(layered)?;
        Ok(())
    }

    async fn ryw_read(
        &self,
        instance: usize,
        session: &Session,
        key: &str,
    ) -> Result<RywRead, ProbeError> {
        let get: ryw_dynamodb::DynamoRequest = GetItemInput::builder()
            .table_name(&self.table)
            .key(KEY, AttributeValue::S(key.to_owned()))
            .into();
        let r = self
            .instance(instance)
            .oneshot(session.request(get))
            .await
            .map_err(layered)?;
        Ok(RywRead {
            value: value_of(r.get_ref().item()),
            visibility: r.visibility().clone(),
        })
    }

    async fn cleanup(&self, keys: &[String]) -> Result<(), ProbeError> {
        for key in keys {
            self.client
                .delete_item()
                .table_name(&self.table)
                .key(KEY, AttributeValue::S(key.clone()))
                .send()
                .await
                .map_err(sdk)?;
        }
        Ok(())
    }
}
