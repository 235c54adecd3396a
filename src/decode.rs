//! The decode step: a message's data turned, once, into the type every stage works with.
//!
//! A source delivers what its broker holds (Kafka's payload, SQS's body: `bytes::Bytes`).
//! A pipeline built with [`PipelineBuilder::decode`](crate::PipelineBuilder::decode)
//! decodes each message in its processor, before
//! [`prepare_messages`](crate::Handler::prepare_messages), and every later stage
//! (`handle_message`, `handle_batch`, `handle_failed`) gets the decoded value. The
//! metadata is untouched and keeps the original bytes, so a dead-letter destination still
//! writes the message as it came.
//!
//! A message that does not decode is a failed message of
//! [kind](crate::FailureKind::Decode) `decode`, failed for good: the pipeline never tries it
//! again (the same bytes would fail again; SQS with no dead-letter destination of the
//! pipeline's still redelivers it until its queue's redrive policy moves it). Having no
//! decoded value, it reaches none of the handler's methods but
//! [`handle_undecoded`](crate::Handler::handle_undecoded); then it is written to the
//! dead-letter destination, if there is one, and acknowledged as failed, at once: like
//! every final failure it leaves its key's order, ahead of earlier messages of its key
//! still being handled. It is counted as `failed` in
//! [`Stats`](crate::Stats) and `longshore_acknowledged_messages_total{outcome="failed"}`.
//! A decode step that waits (a registry lookup) is cut short at the shutdown deadline,
//! and its chunk handed back unfinished.
//!
//! # Other formats
//!
//! [`Json`] is built in (feature `json`, on by default). Another format implements
//! [`Decode`]: Protobuf with `prost` is `Message::decode(bytes)`. A format whose schema
//! lives in a registry (Avro or Protobuf in Confluent's wire format: a magic byte and a
//! schema id before the body) keeps the schemas it has seen in a map behind a lock,
//! keyed by id: [`Decode::decode`] is async so that a miss can fetch the schema (with
//! `reqwest`, say) while other messages go on, and a fetch that fails should be retried
//! there, within a bound, rather than failing the message for good.

use std::future::Future;

use crate::error::BoxError;

/// Turns a message's data `D` (with its metadata `M` for context, such as a header naming
/// the format) into the pipeline's item.
///
/// # Examples
///
/// A codec of UTF-8 text that trims it:
///
/// ```
/// use longshore::decode::Decode;
/// use longshore::BoxError;
///
/// struct Trimmed;
///
/// impl<M: Sync> Decode<Vec<u8>, M> for Trimmed {
///     type Output = String;
///
///     async fn decode(&self, data: Vec<u8>, _metadata: &M) -> Result<String, BoxError> {
///         Ok(String::from_utf8(data)?.trim().to_owned())
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot decode the source's data `{D}` into the handler's `Item`",
    label = "the handler's `Item` must be what this decode step makes of the source's data",
    note = "a handler of the source's own data needs no decode step; otherwise set one with `.decode(...)`, such as `longshore::decode::Json::<YourType>::new()`"
)]
pub trait Decode<D, M>: Send + Sync + 'static {
    /// What the data becomes: the handler's [`Item`](crate::Handler::Item).
    type Output: Send + 'static;

    /// Decodes one message's data. An `Err` (or a panic) fails the message for good.
    fn decode(&self, data: D, metadata: &M) -> impl Future<Output = Result<Self::Output, BoxError>> + Send;
}

/// No decoding: the handler gets the source's data as it is. The default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Identity;

impl<D: Send + 'static, M: Sync> Decode<D, M> for Identity {
    type Output = D;

    async fn decode(&self, data: D, _metadata: &M) -> Result<D, BoxError> {
        Ok(data)
    }
}

/// Decodes JSON into `T` with `serde_json`, from any bytes (`Bytes`, `Vec<u8>`, `String`).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use longshore::decode::{Decode, Json};
///
/// #[derive(serde::Deserialize, Debug, PartialEq)]
/// struct Order { id: u64 }
///
/// let json = Json::<Order>::new();
/// assert_eq!(json.decode(br#"{"id": 7}"#.to_vec(), &()).await.unwrap(), Order { id: 7 });
/// let error = json.decode(b"{".to_vec(), &()).await.unwrap_err();
/// assert_eq!(error.to_string(), "EOF while parsing an object at line 1 column 1");
/// # }
/// ```
#[cfg(feature = "json")]
pub struct Json<T>(std::marker::PhantomData<fn() -> T>);

#[cfg(feature = "json")]
impl<T> Json<T> {
    /// The JSON decode step into `T`.
    pub fn new() -> Self {
        Json(std::marker::PhantomData)
    }
}

#[cfg(feature = "json")]
impl<T> Default for Json<T> {
    fn default() -> Self {
        Json::new()
    }
}

#[cfg(feature = "json")]
impl<T> std::fmt::Debug for Json<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Json<{}>", std::any::type_name::<T>())
    }
}

#[cfg(feature = "json")]
impl<T, D, M> Decode<D, M> for Json<T>
where
    T: serde::de::DeserializeOwned + Send + 'static,
    D: AsRef<[u8]> + Send + 'static,
    M: Sync,
{
    type Output = T;

    async fn decode(&self, data: D, _metadata: &M) -> Result<T, BoxError> {
        Ok(serde_json::from_slice(data.as_ref())?)
    }
}
