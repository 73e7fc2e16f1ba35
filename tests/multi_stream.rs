//! Saves over several streams through the typed API (`MultiStreamSave`, `multi_stream::retry`)
//! on memory, SQLite and PostgreSQL: a username claimed by 64 callers at once, transfers
//! between wallets that never make or lose money, and bad input refused with nothing written.
//!
//! The PostgreSQL cases need `EVENTSOURCE_TEST_POSTGRES_URL`; see tests/postgres_store.rs.

mod common;

use std::sync::Arc;

use eventsourcing_kit::backend::Stores;
use eventsourcing_kit::multi_stream::{self, MultiStreamSave, StreamCheck};
use eventsourcing_kit::prelude::*;

#[event(aggregate = "Username")]
pub struct Claimed {
    pub user: Uuid,
}

/// A username: one stream per name, its id derived from the name.
#[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
#[aggregate(name = "Username", events(Claimed))]
pub struct Username {
    pub user: Option<Uuid>,
}

impl Apply<Claimed> for Username {
    fn apply(&mut self, e: &Claimed) {
        self.user = Some(e.user);
    }
}

#[event(aggregate = "Member")]
pub struct Registered {
    pub name: String,
}

#[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
#[aggregate(name = "Member", events(Registered))]
pub struct Member {
    pub name: String,
}

impl Apply<Registered> for Member {
    fn apply(&mut self, e: &Registered) {
        self.name = e.name.clone();
    }
}

#[event(aggregate = "Wallet")]
pub struct Credited {
    pub cents: i64,
}

#[event(aggregate = "Wallet")]
pub struct Debited {
    pub cents: i64,
}

#[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
#[aggregate(name = "Wallet", events(Credited, Debited))]
pub struct Wallet {
    pub cents: i64,
}

impl Apply<Credited> for Wallet {
    fn apply(&mut self, e: &Credited) {
        self.cents += e.cents;
    }
}

impl Apply<Debited> for Wallet {
    fn apply(&mut self, e: &Debited) {
        self.cents -= e.cents;
    }
}

/// Registers a member under `name` if the name is free: the claim and the member saved
/// together, decided again on a conflict. Whether this caller got the name.
async fn register(stores: &Stores, name: &str) -> Result<bool, Error> {
    let (names, members) = (stores.repository::<Username>(), stores.repository::<Member>());
    let store = stores.multi_stream()?;
    let member = Uuid::new_v4();
    let name_id = multi_stream::name_id(Uuid::NAMESPACE_OID, name.as_bytes());
    let (names, members, store) = (&names, &members, &store);
    multi_stream::retry(10, || async move {
        let mut claim = names.load_or_create(name_id).await?;
        if claim.state().user.is_some() {
            return Ok(false);
        }
        claim.record(Claimed { user: member });
        let mut joined = members.create_new(member);
        joined.record(Registered {
            name: name.to_owned(),
        });
        MultiStreamSave::new()
            .write(&mut claim)
            .write(&mut joined)
            .save(store)
            .await?;
        Ok(true)
    })
    .await
}

async fn a_username_is_claimed_once(stores: Stores) {
    let stores = Arc::new(stores);
    let callers = (0..64).map(|_| {
        let stores = stores.clone();
        tokio::spawn(async move { register(&stores, "ada").await })
    });
    let mut won = 0;
    for caller in callers {
        if caller.await.unwrap().unwrap() {
            won += 1;
        }
    }
    assert_eq!(won, 1, "exactly one of 64 callers got the name");
    let name_id = multi_stream::name_id(Uuid::NAMESPACE_OID, b"ada");
    let claim = stores.repository::<Username>().load(name_id).await.unwrap();
    assert_eq!(claim.version(), 1);
    let members = stores.stream_versions("Member").await.unwrap();
    assert_eq!(members.len(), 1, "one member, the one that claimed the name");
    assert_eq!(claim.state().user, Some(members[0].0));
    assert!(register(&stores, "grace").await.unwrap());
}

/// Moves `cents` from one wallet to another if the first holds them; whether it did.
async fn transfer(stores: &Stores, from: Uuid, to: Uuid, cents: i64) -> Result<bool, Error> {
    let wallets = stores.repository::<Wallet>();
    let store = stores.multi_stream()?;
    let (wallets, store) = (&wallets, &store);
    multi_stream::retry(200, || async move {
        let mut source = wallets.load(from).await?;
        let mut target = wallets.load(to).await?;
        if source.state().cents < cents {
            return Ok(false);
        }
        source.record(Debited { cents });
        target.record(Credited { cents });
        MultiStreamSave::new()
            .write(&mut source)
            .write(&mut target)
            .save(store)
            .await?;
        Ok(true)
    })
    .await
}

async fn transfers_keep_the_total(stores: Stores) {
    let stores = Arc::new(stores);
    let wallets = stores.repository::<Wallet>();
    let mut ids = Vec::new();
    for _ in 0..4 {
        let id = Uuid::new_v4();
        let mut wallet = wallets.create_new(id);
        wallet.record(Credited { cents: 100 });
        wallets.save(&mut wallet).await.unwrap();
        ids.push(id);
    }
    let moves = (0..32).map(|i| {
        let (stores, from, to) = (stores.clone(), ids[i % 4], ids[(i * 3 + 1) % 4]);
        tokio::spawn(async move { transfer(&stores, from, to, 30 + i as i64).await })
    });
    let mut done = 0;
    for outcome in moves {
        if outcome.await.unwrap().unwrap() {
            done += 1;
        }
    }
    let mut total = 0;
    let mut debits = 0;
    for id in &ids {
        let wallet = wallets.load(*id).await.unwrap();
        assert!(
            wallet.state().cents >= 0,
            "a wallet went below zero: {:?}",
            wallet.state()
        );
        total += wallet.state().cents;
        let events: Vec<StoredEvent> = stores
            .events
            .read_stream(*id, "Wallet", 0)
            .try_collect()
            .await
            .unwrap();
        debits += events.iter().filter(|e| &*e.event_type == "Debited").count();
    }
    assert_eq!(total, 400, "money is neither made nor lost");
    assert_eq!(debits, done, "each transfer that went in debited once");
    assert!(done > 0);
}

async fn bad_input_writes_nothing(stores: Stores) {
    let store = stores.multi_stream().unwrap();
    let wallets = stores.repository::<Wallet>();
    let invalid = |outcome: Result<Vec<eventsourcing_kit::Appended>, Error>, what: &str| match outcome {
        Err(Error::InvalidInput(why)) => why,
        other => panic!("{what}: expected invalid input, got {other:?}"),
    };
    let why = invalid(MultiStreamSave::new().save(&*store).await, "an empty save");
    assert!(why.contains("at least one stream"), "{why}");

    let id = Uuid::new_v4();
    let mut unchanged = wallets.create_new(id);
    let why = invalid(
        MultiStreamSave::new().write(&mut unchanged).save(&*store).await,
        "a save of a root without events",
    );
    assert!(why.contains("no root has unsaved events"), "{why}");

    let (mut once, mut twice) = (wallets.create_new(id), wallets.create_new(id));
    once.record(Credited { cents: 1 });
    twice.record(Credited { cents: 2 });
    let why = invalid(
        MultiStreamSave::new()
            .write(&mut once)
            .write(&mut twice)
            .save(&*store)
            .await,
        "a stream written twice",
    );
    assert!(why.contains("appears twice"), "{why}");
    let why = invalid(
        MultiStreamSave::new()
            .write(&mut once)
            .expect_absent::<Wallet>(id)
            .save(&*store)
            .await,
        "a stream written and checked",
    );
    assert!(why.contains("appears twice"), "{why}");
    let why = invalid(
        MultiStreamSave::new()
            .write(&mut once)
            .expect(StreamCheck::absent("NoSuchType", Uuid::new_v4()))
            .save(&*store)
            .await,
        "a check of an unknown type",
    );
    assert!(why.contains("not registered"), "{why}");
    let mut requested = wallets.create_new(Uuid::new_v4());
    requested.set_context({
        let mut value = EventContext::default();
        value.request_id = Some("transfer-9".parse().unwrap());
        value
    });
    requested.record(Credited { cents: 1 });
    let why = invalid(
        MultiStreamSave::new().write(&mut requested).save(&*store).await,
        "a root carrying a request id",
    );
    assert!(why.contains("records no request id"), "{why}");
    assert_eq!(
        stores.events.stream_version(id, "Wallet").await.unwrap(),
        0,
        "nothing written"
    );
    assert_eq!(once.pending_events().len(), 1, "the root keeps its events");

    // A conflict: the root keeps its events, and saves once loaded and decided again.
    let mut other = wallets.create_new(Uuid::new_v4());
    other.record(Credited { cents: 5 });
    wallets.save(&mut twice).await.unwrap();
    let conflict = MultiStreamSave::new()
        .write(&mut once)
        .write(&mut other)
        .save(&*store)
        .await
        .unwrap_err();
    match &conflict {
        Error::Conflicts { streams } => {
            assert_eq!(streams.len(), 1);
            assert_eq!(
                (streams[0].aggregate_id, streams[0].expected, streams[0].actual),
                (id, 0, 1)
            );
            assert!(streams[0].written);
        }
        other => panic!("expected a conflict, got {other}"),
    }
    assert!(conflict.is_conflict());
    assert_eq!(
        (once.pending_events().len(), other.pending_events().len()),
        (1, 1)
    );
    let mut reloaded = wallets.load(id).await.unwrap();
    reloaded.record(Credited { cents: 1 });
    let appended = MultiStreamSave::new()
        .write(&mut reloaded)
        .write(&mut other)
        .save(&*store)
        .await
        .unwrap();
    assert_eq!(appended.iter().map(|a| a.version).collect::<Vec<_>>(), vec![2, 1]);
    assert!(!reloaded.has_pending_events() && !other.has_pending_events());
    assert_eq!(reloaded.position(), Some(appended[0].position));
    assert_eq!(wallets.load(id).await.unwrap().state().cents, 3);
}

crate::on_every_backend! {
    "multi":
    a_username_claimed_by_64_callers_at_once_goes_to_one => a_username_is_claimed_once;
    transfers_between_wallets_neither_make_nor_lose_money => transfers_keep_the_total;
    bad_input_is_refused_and_nothing_is_written => bad_input_writes_nothing;
}
