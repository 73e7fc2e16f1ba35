//! Idempotent commands: the first outcome of a command's request id, found, checked against
//! the request's fingerprint, and recorded.
//!
//! With a [request index](crate::abilities::RequestIndex), a command's events are appended
//! together with the record of its request, a refusal is recorded too, and a request id sent
//! again finds its first outcome whatever aggregate it ran on. Without one, a command finds
//! its request id only among the events of its own aggregate, by reading its stream, and
//! refusals are decided again.

use std::time::Duration;

use futures_util::StreamExt;
use uuid::Uuid;

use super::outcome::Executed;
use super::Repository;
use crate::aggregate::Aggregate;
use crate::error::{Error, Result};
use crate::event::EventEnvelope;
use crate::event_store::Appended;
use crate::request::{Fingerprint, RequestId, RequestOutcome, RequestRecord};

/// How long a refusal is remembered unless the repository is told otherwise: a day.
pub const DEFAULT_REQUEST_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// The request a command runs under.
#[derive(Clone, Debug)]
pub(super) struct CommandRequest {
    pub(super) id: RequestId,
    pub(super) fingerprint: Option<Fingerprint>,
}

/// What a request id sent before decided, as the command answers it.
#[derive(Debug)]
pub(super) enum FirstOutcome {
    /// The command stored events: this is what it did.
    Executed(Executed),
    /// The aggregate refused the command, for this reason.
    Refused(String),
    /// The request id was used for a different request: another fingerprint, or a command on
    /// another aggregate type.
    Mismatch,
}

impl<A: Aggregate> Repository<A> {
    /// The first outcome of `request`, if one is recorded (a refusal only within the
    /// retention: an older one is forgotten here, and the command decided again).
    pub(super) async fn first_outcome(
        &self,
        request: &CommandRequest,
        id: Uuid,
        attempt: u32,
    ) -> Result<Option<FirstOutcome>> {
        let Some(index) = &self.requests else {
            return self.first_outcome_in_stream(request, id, attempt).await;
        };
        let Some(record) = index.find_request(&request.id).await? else {
            return Ok(None);
        };
        if let RequestOutcome::Refused { .. } = record.outcome {
            let bound = chrono::Duration::from_std(self.request_retention)
                .ok()
                .and_then(|retention| crate::request::now().checked_sub_signed(retention));
            if let Some(bound) = bound.filter(|bound| record.recorded_at < *bound) {
                index.forget_refusals(Some(&request.id), bound).await?;
                return Ok(None);
            }
        }
        Ok(Some(self.answer(request, record, attempt)))
    }

    /// What `record` answers to `request`.
    fn answer(&self, request: &CommandRequest, record: RequestRecord, attempt: u32) -> FirstOutcome {
        let other_content = matches!(
            (record.fingerprint, request.fingerprint),
            (Some(first), Some(now)) if first != now
        );
        if other_content || record.aggregate_type != A::TYPE_NAME {
            return FirstOutcome::Mismatch;
        }
        match record.outcome {
            RequestOutcome::Executed { version, position } => FirstOutcome::Executed(Executed {
                aggregate_id: record.aggregate_id,
                version,
                events: 0,
                attempts: attempt,
                repeated: true,
                position,
            }),
            RequestOutcome::Refused { reason } => FirstOutcome::Refused(reason),
        }
    }

    /// Without a request index: the request id among the aggregate's own events.
    async fn first_outcome_in_stream(
        &self,
        request: &CommandRequest,
        id: Uuid,
        attempt: u32,
    ) -> Result<Option<FirstOutcome>> {
        let mut found = None;
        let mut stream = self.events.read_stream(id, A::TYPE_NAME, 0);
        while let Some(event) = stream.next().await {
            let event = event?;
            if event.request_id.as_ref() == Some(&request.id) {
                found = Some((event.aggregate_version, event.position));
            }
        }
        let Some((version, position)) = found else {
            return Ok(None);
        };
        let position = match position {
            0 => self.position(id, version).await?,
            known => known,
        };
        Ok(Some(FirstOutcome::Executed(Executed {
            aggregate_id: id,
            version,
            events: 0,
            attempts: attempt,
            repeated: true,
            position,
        })))
    }

    /// Records that the aggregate `id` refused `request` for `reason`, where a request index
    /// keeps refusals; the first outcome instead if another command recorded one first.
    pub(super) async fn record_refusal(
        &self,
        request: &CommandRequest,
        id: Uuid,
        reason: String,
        attempt: u32,
    ) -> Result<Option<FirstOutcome>> {
        let Some(index) = &self.requests else {
            return Ok(None);
        };
        let refusal =
            RequestRecord::refused(request.id.clone(), A::TYPE_NAME, id, request.fingerprint, reason);
        let recorded = index.record_refusal(&refusal).await?;
        if recorded == refusal {
            return Ok(None);
        }
        Ok(Some(self.answer(request, recorded, attempt)))
    }

    /// Appends the root's events expecting its saved version, recording `request` with them
    /// where there is a request index.
    pub(super) async fn append_requested(
        &self,
        id: Uuid,
        expected_version: u64,
        envelopes: &[EventEnvelope],
        request: Option<&CommandRequest>,
    ) -> Result<Appended> {
        match (request, &self.requests) {
            (Some(request), Some(index)) => {
                index
                    .append_with_request(id, A::TYPE_NAME, expected_version, envelopes, request.fingerprint)
                    .await
            }
            _ => {
                self.events
                    .append(id, A::TYPE_NAME, expected_version, envelopes)
                    .await
            }
        }
    }
}

/// Whether `error` says the request was recorded by another command first.
pub(super) fn recorded_first(error: &Error) -> bool {
    matches!(error, Error::RequestRecorded { .. })
}
