//! `streams close`: closes a stream for good (see [`crate::lifecycle`]).

use serde::Serialize;
use uuid::Uuid;

use super::output::{confirm, Output};
use super::{AdminError, Outcome, StreamsCommand};
use crate::backend::Stores;
use crate::text::escape;

#[derive(Serialize)]
struct Closed {
    aggregate_type: String,
    aggregate_id: Uuid,
    version: u64,
}

pub(super) async fn run(
    stores: &Stores,
    command: StreamsCommand,
    out: &mut Output<'_>,
) -> Result<Outcome, AdminError> {
    match command {
        StreamsCommand::Close {
            id,
            aggregate_type,
            yes,
        } => {
            confirm(
                &format!(
                    "Close {} {id} for good: no event can be saved on it afterwards",
                    escape(&aggregate_type)
                ),
                yes,
            )?;
            let version = crate::lifecycle::close(&*stores.events, id, &aggregate_type).await?;
            let closed = Closed {
                aggregate_type,
                aggregate_id: id,
                version,
            };
            out.report(&closed, |c, w| {
                writeln!(
                    w,
                    "{} {} is closed at version {}",
                    escape(&c.aggregate_type),
                    c.aggregate_id,
                    c.version
                )
            })?;
            Ok(Outcome::Clean)
        }
    }
}
