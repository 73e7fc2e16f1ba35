//! [`PersonalDataHolder`]: a place beyond the events and snapshots that keeps copies of
//! personal values, such as a read model, and erases them when told.

use async_trait::async_trait;

use crate::error::Result;

/// A place that keeps copies of data subjects' personal values (a read model's rows, a cache,
/// a search index), registered with an [`Erasure`](super::Erasure) so that forgetting a
/// subject reaches it.
///
/// # Contract
///
/// - [`forget`](Self::forget) erases or anonymises everything it holds of the subject, and
///   may be called again for a subject it holds nothing of (a forgetting run again after a
///   crash calls it again).
/// - [`holds`](Self::holds) reads the place again and says whether it still holds any of
///   `values` (the subject's values as text, each at least four characters long) or
///   anything else it knows to be the subject's: what the forgetting's report says of it.
#[async_trait]
pub trait PersonalDataHolder: Send + Sync {
    /// Its name in reports, such as the read model's table.
    fn name(&self) -> String;

    /// Erases or anonymises what it holds of `subject`.
    async fn forget(&self, subject: &str) -> Result<()>;

    /// Whether it still holds any of `values`, or anything else of `subject`.
    async fn holds(&self, subject: &str, values: &[String]) -> Result<bool>;
}
