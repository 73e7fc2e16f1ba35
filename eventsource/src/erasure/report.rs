//! [`ErasureReport`]: what a forgetting did, and what reading every place again found.

use serde::Serialize;

/// What a forgetting of one data subject did, and what reading every place again found
/// (see [`Erasure::forget`](super::Erasure::forget)).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ErasureReport {
    /// The data subject.
    pub subject: String,
    /// The streams that hold the subject's values (their events stay, sealed).
    pub streams: usize,
    /// How many of the subject's values (texts of four characters or more) were looked for.
    pub values_sought: usize,
    /// Whether the values could be looked for: not when a forgetting that finished before
    /// is run again, since the key that read them is gone.
    pub values_known: bool,
    /// Streams given the event [`SUBJECT_FORGOTTEN`](crate::lifecycle::SUBJECT_FORGOTTEN),
    /// so that a writer holding the values in a state loaded before cannot save (and then
    /// snapshot) it; closed and deleted streams take no writes and get none.
    pub streams_marked: u64,
    /// Snapshots deleted because they were taken from the subject's values.
    pub snapshots_deleted: u64,
    /// Of those, snapshots written again from a replay that reads the values as forgotten.
    pub snapshots_rewritten: u64,
    /// Dead letters whose error quoted a value, now redacted.
    pub letters_redacted: u64,
    /// The registered holders told to forget the subject, by name.
    pub holders: Vec<String>,
    /// Every place that, read again, still holds a value: empty when the erasure is complete.
    pub findings: Vec<String>,
    /// Whether the key is deleted: done once nothing was found.
    pub key_deleted: bool,
}

impl ErasureReport {
    /// Whether no place holds any of the subject's values any more.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }
}
