//! What the admin command line shows of a sharded store (see [`crate::backend::sharded`]): each shard's
//! ranges and feed, and the feed's head summed over the shards where one head is asked for.

use std::io::Write;

use serde::Serialize;

use super::output::thousands;
use super::AdminError;
use crate::backend::Stores;
use crate::event_store::FeedHead;

/// One shard of a sharded store, as `stats` shows it.
#[derive(Serialize)]
pub(super) struct ShardStats {
    pub(super) shard: usize,
    /// The ranges of slices the shard map gives it, as `FIRST-LAST`.
    pub(super) slices: Vec<String>,
    /// Events in its feed.
    pub(super) events: Option<u64>,
    /// The position of its feed's last event.
    pub(super) position: Option<u64>,
    /// Why it could not be read, if it could not: the other shards are shown anyway.
    pub(super) error: Option<String>,
}

/// Each shard of `stores`, if they are a sharded store's; none otherwise.
pub(super) async fn shard_stats(stores: &Stores) -> Vec<ShardStats> {
    let (Some(map), Some(shards)) = (stores.shard_map(), stores.shards()) else {
        return Vec::new();
    };
    let mut stats = Vec::with_capacity(shards.len());
    for (index, shard) in shards.iter().enumerate() {
        let slices = map
            .ranges_of(index)
            .iter()
            .map(|r| format!("{}-{}", r.first(), r.last()))
            .collect();
        let head = shard.events.head(0).await;
        stats.push(ShardStats {
            shard: index,
            slices,
            events: head.as_ref().ok().map(|h| h.events_after),
            position: head.as_ref().ok().map(|h| h.position),
            error: head.err().map(|e| e.to_string()),
        });
    }
    stats
}

/// The head of the feed after `after`; on a store of several shards, whose positions do not
/// compare, the heads of every shard's feed after `after` added up (the highest position
/// shown): an estimate of what follows, meant for lags and counts.
pub(super) async fn feed_head(stores: &Stores, after: u64) -> Result<FeedHead, AdminError> {
    match stores.shards() {
        Some(shards) if shards.len() > 1 => {
            let (mut position, mut events, mut held, mut holder) = (after, 0, 0, None);
            for shard in shards {
                let head = shard.events.head(after).await?;
                position = position.max(head.position);
                events += head.events_after;
                held += head.held_back;
                holder = holder.or(head.held_by);
            }
            Ok(FeedHead::new(position, events).with_held_back(held, holder))
        }
        _ => Ok(stores.events.head(after).await?),
    }
}

pub(super) fn write_shards(shards: &[ShardStats], out: &mut dyn Write) -> std::io::Result<()> {
    if shards.is_empty() {
        return Ok(());
    }
    writeln!(out, "shards")?;
    for s in shards {
        let feed = match (&s.error, s.events, s.position) {
            (Some(error), _, _) => format!("cannot be read: {error}"),
            (None, Some(events), Some(position)) => {
                format!(
                    "{} events, feed at position {}",
                    thousands(events),
                    thousands(position)
                )
            }
            _ => String::new(),
        };
        writeln!(out, "  shard {}  slices {}  {feed}", s.shard, s.slices.join(", "))?;
    }
    writeln!(out)
}
