//! `#[event(crate = "...")]` and `#[aggregate(crate = "...")]`: the macros reach the library
//! through the path they are given, here the library under another name and a module that
//! re-exports it.

extern crate eventsourcing_kit as renamed;

/// The library as a facade crate would re-export it.
pub mod lib {
    pub use ::eventsourcing_kit::*;
}

use renamed::prelude::*;

#[event(aggregate = "Wallet", crate = "renamed")]
pub struct WalletOpened {
    pub owner: String,
}

#[event(
    aggregate = "Wallet",
    version = 2,
    upcast(1 => json(coins_v1_to_v2)),
    crate = "renamed"
)]
pub struct CoinsAdded {
    pub coins: u64,
}

fn coins_v1_to_v2(v1: serde_json::Value) -> serde_json::Value {
    serde_json::json!({ "coins": v1["count"] })
}

#[derive(Aggregate, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[aggregate(crate = "renamed", name = "Wallet", events(WalletOpened, CoinsAdded))]
pub struct Wallet {
    pub owner: String,
    pub coins: u64,
}

impl Apply<WalletOpened> for Wallet {
    fn apply(&mut self, e: &WalletOpened) {
        self.owner = e.owner.clone();
    }
}

impl Apply<CoinsAdded> for Wallet {
    fn apply(&mut self, e: &CoinsAdded) {
        self.coins += e.coins;
    }
}

#[crate::lib::event(aggregate = "Ledger", crate = "crate::lib")]
pub struct Posted {
    pub amount: i64,
}

#[derive(crate::lib::Aggregate, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[aggregate(name = "Ledger", schema_version = 2, migrate(1 => ledger_v1_to_v2))]
#[aggregate(events(Posted), crate = "crate::lib")]
pub struct Ledger {
    pub total: i64,
}

fn ledger_v1_to_v2(v1: serde_json::Value) -> serde_json::Value {
    serde_json::json!({ "total": v1["sum"] })
}

impl Apply<Posted> for Ledger {
    fn apply(&mut self, e: &Posted) {
        self.total += e.amount;
    }
}

#[test]
fn the_generated_impls_name_the_types_and_versions() {
    assert_eq!(<WalletOpened as renamed::Event>::EVENT_TYPE, "WalletOpened");
    assert_eq!(<CoinsAdded as renamed::Event>::EVENT_VERSION, 2);
    assert_eq!(<Wallet as renamed::Aggregate>::TYPE_NAME, "Wallet");
    assert_eq!(<Ledger as lib::Aggregate>::SCHEMA_VERSION, 2);
    assert_eq!(<Ledger as lib::Aggregate>::MIGRATES_FROM, 1);
    assert_eq!(
        renamed::registry::event("Wallet", "CoinsAdded")
            .unwrap()
            .event_version,
        2
    );
    assert_eq!(lib::registry::aggregate("Ledger").unwrap().migrates_from, 1);
    renamed::registry::check().unwrap();
}

#[test]
fn stored_events_upcast_and_snapshots_migrate() {
    let v1 = <CoinsAdded as renamed::Event>::decode_version(1, r#"{"count":5}"#).unwrap();
    assert_eq!(v1.coins, 5);
    let v1 = serde_json::json!({ "sum": 3 });
    let migrated = <Ledger as lib::Aggregate>::migrate_snapshot(1, v1).unwrap();
    assert_eq!(migrated, serde_json::json!({ "total": 3 }));
}

#[tokio::test]
async fn aggregates_save_and_load_through_an_in_memory_store() {
    let events = InMemoryEventStore::new();

    let wallets: Repository<Wallet> = Repository::new(events.clone());
    let id = Uuid::new_v4();
    let mut wallet = AggregateRoot::<Wallet>::new(id);
    wallet.record(WalletOpened { owner: "Ada".into() });
    wallet.record(CoinsAdded { coins: 3 });
    wallet.record(CoinsAdded { coins: 4 });
    assert_eq!(wallets.save(&mut wallet).await.unwrap(), 3);
    let loaded = wallets.load(id).await.unwrap();
    assert_eq!(loaded.version(), 3);
    assert_eq!(
        loaded.state(),
        &Wallet {
            owner: "Ada".into(),
            coins: 7
        }
    );

    let ledgers: Repository<Ledger> = Repository::new(events);
    let id = Uuid::new_v4();
    let mut ledger = AggregateRoot::<Ledger>::new(id);
    ledger.record(Posted { amount: 10 });
    ledger.record(Posted { amount: -4 });
    ledgers.save(&mut ledger).await.unwrap();
    assert_eq!(ledgers.load(id).await.unwrap().state().total, 6);
}
