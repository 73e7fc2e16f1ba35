//! The request id: the idempotency key a command runs under (see [`crate::request`]).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::error::{Error, Result};

/// The longest request id, in bytes.
pub const MAX_REQUEST_ID_LEN: usize = 255;

/// A request id: 1 to [`MAX_REQUEST_ID_LEN`] bytes of text without a control character, a
/// line separator or a bidirectional override (ids are printed as they are, by the admin
/// command line among others). Cheap to clone.
///
/// ```
/// use eventsourcing_kit::request::RequestId;
///
/// let id: RequestId = "order-7/payment".parse()?;
/// assert_eq!(id.as_str(), "order-7/payment");
/// assert!("".parse::<RequestId>().is_err());
/// assert!(RequestId::new("a\nb").is_err());
/// let from_uuid = RequestId::from(uuid::Uuid::nil());
/// assert_eq!(from_uuid.as_str(), "00000000-0000-0000-0000-000000000000");
/// # Ok::<(), eventsourcing_kit::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// The request id `id`, or [`Error::InvalidInput`] if it is empty, longer than
    /// [`MAX_REQUEST_ID_LEN`] bytes, or holds a character that cannot be printed safely.
    pub fn new(id: &str) -> Result<Self> {
        if id.is_empty() {
            return Err(Error::InvalidInput("a request id may not be empty".into()));
        }
        if id.len() > MAX_REQUEST_ID_LEN {
            return Err(Error::InvalidInput(format!(
                "request id {:?}... is {} bytes long, above the limit of {MAX_REQUEST_ID_LEN}",
                id.chars().take(32).collect::<String>(),
                id.len()
            )));
        }
        if let Some(c) = id.chars().find(|c| crate::text::is_unsafe(*c)) {
            return Err(Error::InvalidInput(format!(
                "request id {id:?} holds {c:?}: request ids are printed as they are, so they \
                 may hold no control character, line separator or bidirectional override"
            )));
        }
        Ok(RequestId(Arc::from(id)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<Uuid> for RequestId {
    fn from(id: Uuid) -> Self {
        RequestId(Arc::from(id.hyphenated().to_string()))
    }
}

impl FromStr for RequestId {
    type Err = Error;

    fn from_str(id: &str) -> Result<Self> {
        RequestId::new(id)
    }
}

impl TryFrom<&str> for RequestId {
    type Error = Error;

    fn try_from(id: &str) -> Result<Self> {
        RequestId::new(id)
    }
}

impl TryFrom<String> for RequestId {
    type Error = Error;

    fn try_from(id: String) -> Result<Self> {
        RequestId::new(&id)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Serialize for RequestId {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RequestId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let id = String::deserialize(deserializer)?;
        RequestId::new(&id).map_err(serde::de::Error::custom)
    }
}
