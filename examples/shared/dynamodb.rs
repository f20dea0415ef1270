//! What the DynamoDB examples share: a client for `DYNAMODB_ENDPOINT` (test credentials and
//! region unless the environment has its own) or for AWS, and a table keyed by `pk`.

use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::client::Waiters;
use aws_sdk_dynamodb::config::{Credentials, Region};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use aws_sdk_dynamodb::Client;
use std::time::Duration;

/// A client for `endpoint` (an emulator), or for AWS from the environment when `None`.
pub async fn client(endpoint: Option<&str>) -> Client {
    let Some(endpoint) = endpoint else {
        return Client::new(&aws_config::load_defaults(BehaviorVersion::latest()).await);
    };
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).endpoint_url(endpoint);
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        loader =
            loader.credentials_provider(Credentials::new("test", "test", None, None, "example"));
    }
    if std::env::var_os("AWS_REGION").is_none() {
        loader = loader.region(Region::new("us-east-1"));
    }
    Client::new(&loader.load().await)
}

/// Creates the table `name` (string partition key `pk`, on demand) and waits until it exists.
pub async fn create_table(
    client: &Client,
    name: &str,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()?,
        )
        .send()
        .await?;
    client
        .wait_until_table_exists()
        .table_name(name)
        .wait(Duration::from_secs(120))
        .await?;
    Ok(())
}
