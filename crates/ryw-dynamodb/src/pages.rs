//! Every page of a `Query` or `Scan`, each one through the session layer.
//!
//! DynamoDB answers a `Query` or `Scan` one page at a time (at most `Limit` items evaluated, at
//! most 1 MB), and the next page starts after the previous one's `LastEvaluatedKey`. [`Pages`]
//! sends each page as a request of its own through the session layer, so each is fenced like a
//! single-page read: a page behind the session is read again (with the same
//! `ExclusiveStartKey`), then with `ConsistentRead`, and the page returned replaces the stale
//! one. The next page starts after the key of the page kept, so no item is returned twice nor
//! skipped, whatever the attempts of each page.
//!
//! # What a page guarantees
//!
//! A `Query` page is fenced on its partition like a single-page query (see [Reads](crate#reads)):
//! on DynamoDB, which replicates each partition in order, the newest writer's clock among the
//! page's items shows how far the copy that served it is, so a page from a copy that lacks a
//! write of the session to the partition (an item added, changed or deleted) is never
//! `Guaranteed`. An absent item leaves no trace of its own: the page as a whole is judged by its
//! newest item, the rule of a single-page query. Each item is also checked against what the
//! session saw of it. A page that holds none of the partition's newest items (a page after the
//! one that holds them) shows nothing of how far its copy is, so it is read strongly; once a page
//! had to be read strongly, the remaining pages are sent with `ConsistentRead` up front, which
//! spares them the cheap attempts that cannot succeed.
//!
//! A `Scan` page is fenced as a single `Scan` is (see [Scan](crate#scan)).
//!
//! `Limit` is the size of each page, as for DynamoDB and the SDK's paginators; the
//! `ExclusiveStartKey` of the request is where the first page starts.
//!
//! # Example
//!
//! ```no_run
//! use aws_sdk_dynamodb::operation::query::QueryInput;
//! use aws_sdk_dynamodb::types::AttributeValue;
//! use ryw::{ReadYourWritesLayer, Session};
//! use ryw_dynamodb::{DynamoAdapter, DynamoRequest, DynamoService, Pages, TableSchema};
//! use tower::ServiceBuilder;
//!
//! # async fn run(client: aws_sdk_dynamodb::Client) -> Result<(), Box<dyn std::error::Error>> {
//! let adapter = DynamoAdapter::new().table(TableSchema::new("posts", "pk").sort_key("sk"));
//! let posts = ServiceBuilder::new()
//!     .layer(ReadYourWritesLayer::new(adapter))
//!     .service(DynamoService::new(client));
//!
//! let session = Session::new();
//! let query = QueryInput::builder()
//!     .table_name("posts")
//!     .key_condition_expression("pk = :p")
//!     .expression_attribute_values(":p", AttributeValue::S("thread#1".into()))
//!     .limit(25);
//! let all = Pages::new(posts, session.request(DynamoRequest::from(query)))?
//!     .collect()
//!     .await?;
//! assert!(all.is_guaranteed());
//! println!("{} items in {} pages", all.items().len(), all.pages());
//! # Ok(()) }
//! ```

use crate::error::DynamoError;
use crate::expr::Item;
use crate::request::{DynamoOperation, DynamoOutput, DynamoRequest, DynamoResponse};
use ryw::fence::Visibility;
use ryw::{SessionRequest, SessionResponse};
use std::fmt;
use tower::Service;

/// Every page of a `Query` or `Scan`, each one sent through the session layer (see the
/// [module docs](self)).
pub struct Pages<S> {
    service: S,
    /// The request of the next page.
    next: SessionRequest<DynamoRequest>,
    /// The caller asked for strong reads.
    consistent: bool,
    /// A page was read strongly: the next ones are sent with `ConsistentRead` up front.
    strong_from_now: bool,
    done: bool,
    pages: u32,
}

impl<S> fmt::Debug for Pages<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pages")
            .field("pages", &self.pages)
            .field("strong_from_now", &self.strong_from_now)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<S> Pages<S>
where
    S: Service<
        SessionRequest<DynamoRequest>,
        Response = SessionResponse<DynamoResponse>,
        Error = ryw::Error<DynamoError>,
    >,
{
    /// The pages of `request`, a `Query` or a `Scan`, sent through `service` (the session layer
    /// over a [`DynamoService`](crate::DynamoService); `&mut` of one will do). Any other
    /// operation is a [`DynamoError::Validation`].
    pub fn new(service: S, request: SessionRequest<DynamoRequest>) -> Result<Self, DynamoError> {
        let consistent = match request.get_ref().operation() {
            DynamoOperation::Query(q) => q.get_consistent_read().unwrap_or(false),
            DynamoOperation::Scan(s) => s.get_consistent_read().unwrap_or(false),
            _ => {
                return Err(DynamoError::Validation {
                    message: "only a Query or a Scan has pages".into(),
                    source: None,
                })
            }
        };
        Ok(Pages {
            service,
            next: request,
            consistent,
            strong_from_now: false,
            done: false,
            pages: 0,
        })
    }

    /// The next page, or `None` after the last one (or after an error, which ends the pages).
    pub async fn next_page(
        &mut self,
    ) -> Option<Result<SessionResponse<DynamoResponse>, ryw::Error<DynamoError>>> {
        if self.done {
            return None;
        }
        let mut request = self.next.clone();
        if self.strong_from_now {
            match &mut request.get_mut().operation {
                DynamoOperation::Query(q) => *q = std::mem::take(q).consistent_read(true),
                DynamoOperation::Scan(s) => *s = std::mem::take(s).consistent_read(true),
                _ => {}
            }
        }
        let page = async {
            std::future::poll_fn(|cx| self.service.poll_ready(cx)).await?;
            self.service.call(request).await
        }
        .await;
        let page = match page {
            Ok(page) => page,
            Err(e) => {
                self.done = true;
                return Some(Err(e));
            }
        };
        self.pages += 1;
        if page.get_ref().is_consistent() && !self.consistent {
            self.strong_from_now = true;
        }
        match page
            .get_ref()
            .last_evaluated_key()
            .filter(|k| !k.is_empty())
        {
            Some(key) => {
                let key = Some(key.clone());
                match &mut self.next.get_mut().operation {
                    DynamoOperation::Query(q) => {
                        *q = std::mem::take(q).set_exclusive_start_key(key)
                    }
                    DynamoOperation::Scan(s) => *s = std::mem::take(s).set_exclusive_start_key(key),
                    _ => self.done = true,
                }
            }
            None => self.done = true,
        }
        Some(Ok(page))
    }

    /// Reads every page and gathers their items, in order.
    pub async fn collect(mut self) -> Result<AllPages, ryw::Error<DynamoError>> {
        let mut all = AllPages {
            items: Vec::new(),
            visibilities: Vec::new(),
        };
        while let Some(page) = self.next_page().await {
            let (response, visibility) = page?.into_parts();
            all.visibilities.push(visibility);
            if let Some(items) = match response.into_output() {
                DynamoOutput::Query(o) => o.items,
                DynamoOutput::Scan(o) => o.items,
                _ => None,
            } {
                all.items.extend(items);
            }
        }
        Ok(all)
    }

    /// Pages read so far.
    pub fn pages(&self) -> u32 {
        self.pages
    }
}

/// The items of every page of a `Query` or `Scan` ([`Pages::collect`]), with the visibility of
/// each page.
#[derive(Clone, Debug)]
pub struct AllPages {
    items: Vec<Item>,
    visibilities: Vec<Visibility>,
}

impl AllPages {
    /// The items, in the order of the pages.
    pub fn items(&self) -> &[Item] {
        &self.items
    }

    /// Takes the items out.
    pub fn into_items(self) -> Vec<Item> {
        self.items
    }

    /// How many pages were read.
    pub fn pages(&self) -> usize {
        self.visibilities.len()
    }

    /// The visibility of each page, in order.
    pub fn visibilities(&self) -> &[Visibility] {
        &self.visibilities
    }

    /// The visibility of the whole: that of the first page that is not `Guaranteed`, if any;
    /// otherwise the first page's (`Guaranteed`).
    pub fn visibility(&self) -> &Visibility {
        self.visibilities
            .iter()
            .find(|v| !v.is_guaranteed())
            .or(self.visibilities.first())
            .unwrap_or(&Visibility::Unscoped)
    }

    /// True when every page is `Guaranteed`: the items hold every write the session made to the
    /// scopes read.
    pub fn is_guaranteed(&self) -> bool {
        !self.visibilities.is_empty() && self.visibilities.iter().all(Visibility::is_guaranteed)
    }
}
