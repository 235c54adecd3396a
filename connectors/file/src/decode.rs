//! CSV records decoded by their file's column names.

use std::marker::PhantomData;

use bytes::Bytes;
use longshore::decode::Decode;
use longshore::BoxError;

use crate::metadata::FileMetadata;

/// Decodes a CSV record into `T` with serde, matching fields to the file's header
/// (a record of a file read without headers is decoded by position). A record that does
/// not fit `T` fails for good, as any decode failure.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use longshore::decode::Decode;
/// use longshore_file::{Csv, FileMetadata};
///
/// #[derive(serde::Deserialize, Debug, PartialEq)]
/// struct Order { id: u64, item: String }
///
/// let metadata = FileMetadata::new("orders.csv", 2, 8, "pears,7").with_headers(["item", "id"]);
/// let csv = Csv::<Order>::new();
/// let order = csv.decode(metadata.raw().clone(), &metadata).await.unwrap();
/// assert_eq!(order, Order { id: 7, item: "pears".into() });
/// # }
/// ```
pub struct Csv<T>(PhantomData<fn() -> T>);

impl<T> Csv<T> {
    /// The CSV decode step into `T`.
    pub fn new() -> Self {
        Csv(PhantomData)
    }
}

impl<T> Default for Csv<T> {
    fn default() -> Self {
        Csv::new()
    }
}

impl<T> std::fmt::Debug for Csv<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Csv<{}>", std::any::type_name::<T>())
    }
}

impl<T> Decode<Bytes, FileMetadata> for Csv<T>
where
    T: serde::de::DeserializeOwned + Send + 'static,
{
    type Output = T;

    async fn decode(&self, data: Bytes, metadata: &FileMetadata) -> Result<T, BoxError> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(&data[..]);
        let mut record = csv::StringRecord::new();
        if !reader.read_record(&mut record)? {
            return Err("an empty CSV record".into());
        }
        // The source splits as the csv crate reads: a second row here is a record made
        // by hand (a test's, a dead letter replayed), and would be lost unread.
        if reader.read_record(&mut csv::StringRecord::new())? {
            return Err("a CSV record holding more than one row".into());
        }
        Ok(record.deserialize(metadata.headers())?)
    }
}
