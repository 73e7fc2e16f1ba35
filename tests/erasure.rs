//! Forgetting a data subject on memory, SQLite and PostgreSQL: every copy of its values is
//! reached (events, snapshots, dead letters, registered read models) and read again, a
//! forgetting killed half way finishes when run again, findings keep the key, writers and
//! readers running meanwhile never fail but for the subject's new values, and a projection
//! rebuilt afterwards holds no value.
//!
//! The PostgreSQL cases need `EVENTSOURCE_TEST_POSTGRES_URL`; see tests/postgres_store.rs.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventsourcing_kit::async_trait;
use eventsourcing_kit::backend::Stores;
use eventsourcing_kit::erasure::{Erasure, PersonalDataHolder};
use eventsourcing_kit::lifecycle;
use eventsourcing_kit::personal::Personal;
use eventsourcing_kit::prelude::*;
use eventsourcing_kit::projection::{InMemoryReadModel, MemoryProjection};

#[path = "personal/customer.rs"]
mod customer;
use customer::*;

fn subject() -> String {
    format!("customer-{}", Uuid::new_v4())
}

/// A read model of emails by subject that registers as holding personal data.
#[derive(Clone, Default)]
struct Emails {
    rows: Arc<Mutex<HashMap<String, String>>>,
    /// Fails the next `forget` (a crash half way), then works.
    fail_once: Arc<AtomicBool>,
    /// Forgets nothing (a bug in the application's erasure).
    broken: Arc<AtomicBool>,
}

#[async_trait]
impl PersonalDataHolder for Emails {
    fn name(&self) -> String {
        "read model emails".to_owned()
    }

    async fn forget(&self, subject: &str) -> eventsourcing_kit::Result<()> {
        if self.fail_once.swap(false, Ordering::SeqCst) {
            return Err(Error::store(
                "test",
                "the read model is down",
                std::io::Error::other("down"),
            ));
        }
        if !self.broken.load(Ordering::SeqCst) {
            self.rows.lock().unwrap().remove(subject);
        }
        Ok(())
    }

    async fn holds(&self, subject: &str, values: &[String]) -> eventsourcing_kit::Result<bool> {
        let rows = self.rows.lock().unwrap();
        Ok(rows.contains_key(subject)
            || rows
                .values()
                .any(|v| values.iter().any(|s| v.contains(s.as_str()))))
    }
}

/// Stores with a customer registered under `subject` (its email changed once, a snapshot
/// taken, a dead letter quoting the email, a row in `emails`), and the same for another
/// subject, which the forgetting must leave alone.
async fn customer_everywhere(stores: &Stores, subject: &str, emails: &Emails) -> Uuid {
    let repository = stores.repository_with_snapshots::<Customer>(SnapshotPolicy::manual());
    let id = register(&repository, subject).await;
    let mut root = repository.load(id).await.unwrap();
    root.record(EmailChanged {
        customer: subject.to_owned(),
        email: Personal::new(format!("{subject}@mail.example")),
    });
    repository.save(&mut root).await.unwrap();
    repository.warm_snapshot(id).await.unwrap();
    let event = stores
        .events
        .read_stream(id, "Customer", 0)
        .next()
        .await
        .unwrap()
        .unwrap();
    // A subscription that gave up on the event: it held the lease when it did.
    stores
        .subscriptions
        .acquire("mailer", Uuid::new_v4(), Duration::from_millis(50))
        .await
        .unwrap();
    stores
        .subscriptions
        .dead_letter(
            "mailer",
            &event,
            &format!("cannot mail {subject}@mail.example: refused"),
        )
        .await
        .unwrap();
    emails
        .rows
        .lock()
        .unwrap()
        .insert(subject.to_owned(), format!("{subject}@mail.example"));
    id
}

/// Forgets `subject` with no wait (one process uses the stores) and no holder.
async fn forget_now(stores: &Stores, subject: &str) -> eventsourcing_kit::erasure::ErasureReport {
    Erasure::new(stores)
        .unwrap()
        .settle(Duration::ZERO)
        .forget(subject)
        .await
        .unwrap()
}

fn key_store(stores: &Stores) -> &Arc<dyn eventsourcing_kit::personal::KeyStore> {
    stores.keys.as_ref().expect("every backend keeps keys").store()
}

fn erasure(stores: &Stores, emails: &Emails) -> Erasure {
    Erasure::new(stores)
        .unwrap()
        .holder(Arc::new(emails.clone()))
        .settle(Duration::ZERO)
}

async fn forgetting_reaches_every_copy_and_proves_it(stores: Stores) {
    let emails = Emails::default();
    let (gone, kept) = (subject(), subject());
    let id = customer_everywhere(&stores, &gone, &emails).await;
    let other = customer_everywhere(&stores, &kept, &emails).await;

    let report = erasure(&stores, &emails).forget(&gone).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert!(report.key_deleted && report.values_known);
    assert_eq!(report.streams, 1);
    assert!(
        report.values_sought >= 3,
        "email, name and the new email: {report:?}"
    );
    assert_eq!((report.snapshots_deleted, report.snapshots_rewritten), (1, 1));
    assert_eq!(report.streams_marked, 1);
    assert_eq!(report.letters_redacted, 1);
    assert_eq!(report.holders, vec!["read model emails".to_owned()]);

    let snapshot = stores
        .snapshots
        .get_snapshot(id, "Customer", u32::MAX)
        .await
        .unwrap()
        .unwrap();
    assert!(
        !snapshot.state.contains("mail.example") && !snapshot.state.contains(EMAIL),
        "{}",
        snapshot.state
    );
    let loaded = stores
        .repository_with_snapshots::<Customer>(SnapshotPolicy::manual())
        .load(id)
        .await
        .unwrap();
    assert!(loaded.state().email.is_forgotten() && loaded.state().name.is_forgotten());
    assert_eq!(loaded.state().plan, "gold");
    let letters = stores
        .subscriptions
        .dead_letters("mailer", 0, usize::MAX)
        .await
        .unwrap();
    let errors: Vec<&str> = letters.iter().map(|l| l.error.as_str()).collect();
    assert!(errors.contains(&"cannot mail [forgotten]: refused"), "{errors:?}");
    assert!(
        errors.iter().any(|e| e.contains(&kept)),
        "another subject's letter stays: {errors:?}"
    );
    assert!(!emails.rows.lock().unwrap().contains_key(&gone));

    let untouched = stores.repository::<Customer>().load(other).await.unwrap();
    assert_eq!(
        untouched.state().name.known().map(String::as_str),
        Some(NAME),
        "another subject stays"
    );
    assert!(stores
        .snapshots
        .get_snapshot(other, "Customer", u32::MAX)
        .await
        .unwrap()
        .unwrap()
        .state
        .contains(NAME));

    // Forgetting again reports the key gone and changes nothing.
    let again = erasure(&stores, &emails).forget(&gone).await.unwrap();
    assert!(
        again.is_clean() && again.key_deleted && !again.values_known,
        "{again:?}"
    );
    assert!(erasure(&stores, &emails).unfinished().await.unwrap().is_empty());
}

async fn a_value_also_held_in_the_clear_elsewhere_is_no_finding(stores: Stores) {
    // The plan happens to be the customer's name: a field in the clear, which a forgetting
    // leaves, and which the snapshot it writes again holds.
    let customers = stores.repository_with_snapshots::<Customer>(SnapshotPolicy::manual());
    let gone = subject();
    let id = Uuid::new_v4();
    let mut root = customers.create_new(id);
    root.record(Registered {
        plan: NAME.to_owned(),
        ..registered(&gone)
    });
    customers.save(&mut root).await.unwrap();
    customers.warm_snapshot(id).await.unwrap();
    let report = forget_now(&stores, &gone).await;
    assert!(report.is_clean() && report.key_deleted, "{report:?}");
    let loaded = customers.load(id).await.unwrap();
    assert!(loaded.state().name.is_forgotten());
    assert_eq!(loaded.state().plan, NAME);
}

async fn a_forgetting_killed_half_way_finishes_when_run_again(stores: Stores) {
    let emails = Emails::default();
    let gone = subject();
    let id = customer_everywhere(&stores, &gone, &emails).await;
    // Killed after the first step: readers see the subject forgotten, nothing else is done.
    key_store(&stores).begin_forgetting(&gone).await.unwrap();
    stores.keys.as_ref().unwrap().evict(&gone);
    assert!(stores
        .repository::<Customer>()
        .load(id)
        .await
        .unwrap()
        .state()
        .email
        .is_forgotten());
    assert_eq!(
        erasure(&stores, &emails).unfinished().await.unwrap(),
        vec![gone.clone()]
    );
    // Killed again half way: the read model fails.
    emails.fail_once.store(true, Ordering::SeqCst);
    assert!(erasure(&stores, &emails).forget(&gone).await.is_err());
    assert_eq!(
        erasure(&stores, &emails).unfinished().await.unwrap(),
        vec![gone.clone()]
    );
    // Run again: it finishes.
    let report = erasure(&stores, &emails).forget(&gone).await.unwrap();
    assert!(report.is_clean() && report.key_deleted, "{report:?}");
    assert!(erasure(&stores, &emails).unfinished().await.unwrap().is_empty());
}

async fn findings_keep_the_key_until_every_copy_is_gone(stores: Stores) {
    let emails = Emails::default();
    let gone = subject();
    customer_everywhere(&stores, &gone, &emails).await;
    emails.broken.store(true, Ordering::SeqCst);
    let report = erasure(&stores, &emails).forget(&gone).await.unwrap();
    assert!(!report.is_clean() && !report.key_deleted, "{report:?}");
    assert_eq!(
        report.findings,
        vec!["read model emails still holds the subject's data".to_owned()]
    );
    let kept = key_store(&stores).begin_forgetting(&gone).await.unwrap();
    assert!(kept.key.is_some(), "the key is kept while a copy remains");
    emails.broken.store(false, Ordering::SeqCst);
    let report = erasure(&stores, &emails).forget(&gone).await.unwrap();
    assert!(report.is_clean() && report.key_deleted, "{report:?}");
}

async fn writers_and_readers_meanwhile_fail_only_on_the_subjects_new_values(stores: Stores) {
    let emails = Emails::default();
    let (gone, kept) = (subject(), subject());
    let repository = stores.repository::<Customer>();
    let gone_ids: Vec<Uuid> =
        futures_util::future::join_all((0..4).map(|_| register(&repository, &gone))).await;
    let kept_ids: Vec<Uuid> =
        futures_util::future::join_all((0..4).map(|_| register(&repository, &kept))).await;
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (i, &id) in gone_ids.iter().chain(&kept_ids).enumerate() {
        let (repository, stop, refused) = (repository.clone(), stop.clone(), refused.clone());
        let subject = if i < gone_ids.len() {
            gone.clone()
        } else {
            kept.clone()
        };
        tasks.push(tokio::spawn(async move {
            let mut saves = 0;
            while !stop.load(Ordering::SeqCst) {
                // The in-memory store never waits: let the other tasks run.
                tokio::task::yield_now().await;
                let mut root = repository.load(id).await.expect("a load never fails");
                root.record(EmailChanged {
                    customer: subject.clone(),
                    email: Personal::new(format!("{subject}-{saves}@mail.example")),
                });
                match repository.save(&mut root).await {
                    Ok(_) => saves += 1,
                    Err(Error::SubjectForgotten { .. }) => {
                        refused.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(e) => panic!("a save failed: {e}"),
                }
            }
            saves
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let report = erasure(&stores, &emails).forget(&gone).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::SeqCst);
    let saves: Vec<u32> = futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(report.is_clean() && report.key_deleted, "{report:?}");
    assert!(
        refused.load(Ordering::SeqCst) > 0,
        "the forgotten subject's writers were refused"
    );
    assert!(
        saves[gone_ids.len()..].iter().all(|&n| n > 0),
        "the other subject's writers went on: {saves:?}"
    );
    for id in gone_ids {
        let root = repository.load(id).await.unwrap();
        assert!(root.state().email.is_forgotten() && root.state().name.is_forgotten());
    }
    for id in kept_ids {
        assert!(repository.load(id).await.unwrap().state().email.known().is_some());
    }
}

/// Emails by customer stream, as a projection keeps them.
#[derive(Clone, Default)]
struct EmailsByStream(HashMap<Uuid, Personal<String>>);

impl MemoryProjection for EmailsByStream {
    fn apply(&mut self, events: &[StoredEvent]) -> Result<(), HandlerError> {
        // The forgetting's own event is a system event, which no event enum decodes.
        for event in events
            .iter()
            .filter(|e| !lifecycle::is_system_event(&e.event_type))
        {
            if let CustomerEvent::Registered(e) =
                CustomerEvent::decode(&event.event_type, event.event_version, &event.payload)?
            {
                self.0.insert(event.aggregate_id, e.email);
            }
        }
        Ok(())
    }
}

async fn a_projection_rebuilt_after_a_forgetting_holds_no_value(stores: Stores) {
    let (gone, kept) = (subject(), subject());
    let repository = stores.repository::<Customer>();
    let (id, other) = (
        register(&repository, &gone).await,
        register(&repository, &kept).await,
    );
    let model = InMemoryReadModel::new(EmailsByStream::default());
    let projection = stores
        .projection(&format!("emails-{}", Uuid::new_v4().simple()), model.clone())
        .unwrap()
        .for_aggregate::<Customer>();
    projection.catch_up(|_| {}).await.unwrap();
    assert_eq!(model.read(|m| m.0[&id].known().cloned()), Some(EMAIL.to_owned()));

    let report = forget_now(&stores, &gone).await;
    assert!(report.is_clean(), "{report:?}");
    projection.rebuild(|_| {}).await.unwrap();
    assert!(
        model.read(|m| m.0[&id].is_forgotten()),
        "the rebuilt row reads as forgotten"
    );
    assert_eq!(
        model.read(|m| m.0[&other].known().cloned()),
        Some(EMAIL.to_owned())
    );
}

/// A process that loaded the customer before the forgetting holds its values in memory: its
/// next save meets a conflict (the forgetting's event), so it cannot snapshot them; loaded
/// again, the values read as forgotten, and the snapshot its save writes holds none.
async fn a_writer_that_loaded_before_the_forgetting_cannot_snapshot_the_values(stores: Stores) {
    let policy = SnapshotPolicy::every(1).unwrap();
    let customers = stores.repository_with_snapshots::<Customer>(policy);
    let gone = subject();
    let id = register(&customers, &gone).await;
    let mut stale = customers.load(id).await.unwrap();
    assert_eq!(stale.state().name.known().map(String::as_str), Some(NAME));

    let report = forget_now(&stores, &gone).await;
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.streams_marked, 1);
    stale.record(Noted {
        note: serde_json::json!("a note in the clear"),
    });
    let error = customers.save(&mut stale).await.unwrap_err();
    assert!(error.is_conflict(), "{error}");

    let mut fresh = customers.load(id).await.unwrap();
    assert!(fresh.state().name.is_forgotten());
    fresh.record(Noted {
        note: serde_json::json!("a note in the clear"),
    });
    customers.save(&mut fresh).await.unwrap();
    let snapshot = stores
        .snapshots
        .get_snapshot(id, "Customer", u32::MAX)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        snapshot.version, 3,
        "registered, the forgetting's event, the note"
    );
    assert!(
        !snapshot.state.contains(NAME) && !snapshot.state.contains(EMAIL),
        "{}",
        snapshot.state
    );
    let again = forget_now(&stores, &gone).await;
    assert_eq!(
        again.streams_marked, 0,
        "a stream marked already is left as it is"
    );
}

crate::on_every_backend! {
    "erasure":
    a_writer_that_loaded_before_the_forgetting_cannot_snapshot_the_values => a_writer_that_loaded_before_the_forgetting_cannot_snapshot_the_values;
    forgetting_reaches_every_copy_and_proves_it => forgetting_reaches_every_copy_and_proves_it;
    a_value_also_held_in_the_clear_elsewhere_is_no_finding => a_value_also_held_in_the_clear_elsewhere_is_no_finding;
    a_forgetting_killed_half_way_finishes_when_run_again => a_forgetting_killed_half_way_finishes_when_run_again;
    findings_keep_the_key_until_every_copy_is_gone => findings_keep_the_key_until_every_copy_is_gone;
    writers_and_readers_meanwhile_fail_only_on_the_subjects_new_values => writers_and_readers_meanwhile_fail_only_on_the_subjects_new_values;
    a_projection_rebuilt_after_a_forgetting_holds_no_value => a_projection_rebuilt_after_a_forgetting_holds_no_value;
}

/// `admin forget SUBJECT` on the URL of `stores`: forgets, prints the report, and exits 1
/// (findings) while a named holder still holds the subject's data.
async fn admin_forget_reports_and_exits_on_findings(url: &str, stores: Stores) {
    use eventsourcing_kit::admin::{Admin, AdminArgs, AdminCommand, Outcome};

    let emails = Emails::default();
    let gone = subject();
    let id = customer_everywhere(&stores, &gone, &emails).await;
    emails.broken.store(true, Ordering::SeqCst);
    let holder = emails.clone();
    let admin = Admin::new().holder(move |_| Ok(Arc::new(holder.clone())));
    let forget = |subject: Option<&str>| AdminArgs {
        url: url.to_owned(),
        json: true,
        migrate: false,
        command: AdminCommand::Forget {
            subject: subject.map(str::to_owned),
            settle: 0,
            yes: true,
        },
    };
    let mut out = Vec::new();
    let outcome = admin.run_with(forget(Some(&gone)), &mut out).await.unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(outcome, Outcome::Findings, "{report}");
    assert_eq!(report["subjects"][0]["key_deleted"], false);
    assert_eq!(
        report["subjects"][0]["findings"][0],
        "read model emails still holds the subject's data"
    );

    // Fixed, the unfinished forgetting is finished by a run without a subject.
    emails.broken.store(false, Ordering::SeqCst);
    let mut out = Vec::new();
    let outcome = admin.run_with(forget(None), &mut out).await.unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(outcome, Outcome::Clean, "{report}");
    assert_eq!(report["subjects"][0]["subject"], gone.as_str());
    assert_eq!(report["subjects"][0]["key_deleted"], true);
    // These stores stand for another process: their keyring may hold the key for its time
    // to live (what `--settle` waits for); a keyring without it reads the subject forgotten.
    let keys = eventsourcing_kit::personal::Keyring::new(key_store(&stores).clone());
    let loaded = stores
        .repository::<Customer>()
        .with_personal_data(keys)
        .load(id)
        .await
        .unwrap();
    assert!(loaded.state().email.is_forgotten());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_forget_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("forget.db").display());
    let stores = eventsourcing_kit::backend::open(&url).await.unwrap();
    admin_forget_reports_and_exits_on_findings(&url, stores).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(eventsource_postgres_tests),
    ignore = "set EVENTSOURCE_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn admin_forget_on_postgres() {
    let Some(url) = common::postgres_url("admin_forget_on_postgres") else {
        return;
    };
    let scratch = common::ScratchSchema::new(&url, "forget");
    let separator = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{separator}schema={}", scratch.name);
    let stores = eventsourcing_kit::backend::open(&url).await.unwrap();
    stores.migrate().await.unwrap();
    admin_forget_reports_and_exits_on_findings(&url, stores).await;
}

/// On a sharded store the keys are kept by shard 0, and a forgetting reaches the subject's
/// streams on every shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgetting_on_a_sharded_store_reaches_every_shard() {
    use eventsourcing_kit::backend::sharded::{self, ShardMap};
    use eventsourcing_kit::slice::{SliceCount, SliceRange};

    let dir = tempfile::tempdir().unwrap();
    let mut shards = Vec::new();
    for name in ["a.db", "b.db"] {
        let url = format!("sqlite:{}", dir.path().join(name).display());
        shards.push(eventsourcing_kit::backend::open(&url).await.unwrap());
    }
    let range = |first, last| SliceRange::new(first, last).unwrap();
    let map = ShardMap::new(
        SliceCount::DEFAULT,
        vec![(range(0, 511), 0), (range(512, 1023), 1)],
    )
    .unwrap();
    let stores = sharded::open(map, shards).await.unwrap();
    let customers = stores.repository::<Customer>();
    let gone = subject();
    let ids = futures_util::future::join_all((0..8).map(|_| register(&customers, &gone))).await;
    let on_shard = |shard: usize| {
        let events = stores.shards().unwrap()[shard].events.clone();
        let ids = ids.clone();
        async move {
            let mut held = 0;
            for id in ids {
                held += usize::from(events.stream_version(id, "Customer").await.unwrap() > 0);
            }
            held
        }
    };
    assert!(
        on_shard(0).await > 0 && on_shard(1).await > 0,
        "the streams are spread over both shards"
    );

    let report = forget_now(&stores, &gone).await;
    assert!(report.is_clean() && report.key_deleted, "{report:?}");
    assert_eq!(report.streams, 8);
    for id in ids {
        assert!(customers.load(id).await.unwrap().state().email.is_forgotten());
    }
}

/// Resharding copies the keys of data subjects with the events: in the copy, sealed values
/// open, and a forgetting there reaches the subject's streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_the_store_carries_the_keys() {
    use eventsourcing_kit::backend::sharded;

    let dir = tempfile::tempdir().unwrap();
    let url = |name: &str| format!("sqlite:{}", dir.path().join(name).display());
    let old = eventsourcing_kit::backend::open(&url("old.db")).await.unwrap();
    let gone = subject();
    let customers = old.repository::<Customer>();
    let ids = futures_util::future::join_all((0..4).map(|_| register(&customers, &gone))).await;
    let new = eventsourcing_kit::backend::open(&url("new.db")).await.unwrap();
    let copied = sharded::copy(&old, &new, |_| {}).await.unwrap();
    assert_eq!(copied.subjects, 1);
    sharded::compare(&old, &new)
        .await
        .unwrap()
        .require_same()
        .unwrap();
    for &id in &ids {
        let loaded = new.repository::<Customer>().load(id).await.unwrap();
        assert_eq!(loaded.state().email.known().map(String::as_str), Some(EMAIL));
    }
    // Run again, it copies the keys again without a change.
    assert_eq!(sharded::copy(&old, &new, |_| {}).await.unwrap().subjects, 1);
    let report = forget_now(&new, &gone).await;
    assert!(report.is_clean() && report.streams == 4, "{report:?}");
}
