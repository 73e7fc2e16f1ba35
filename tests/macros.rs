//! Integration tests of `#[event]` and `#[derive(Aggregate)]`.

use eventsourcing_kit::prelude::*;
use eventsourcing_kit::registry;
use eventsourcing_kit::AggregateEvent;

#[event(aggregate = "Account")]
pub struct AccountOpened {
    pub owner_name: String,
    pub initial_balance: f64,
}

#[event(aggregate = "Account")]
pub struct MoneyDeposited {
    pub amount: f64,
}

#[event(aggregate = "Account")]
pub struct MoneyWithdrawn {
    pub amount: f64,
}

#[derive(Aggregate, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[aggregate(name = "Account", events(AccountOpened, MoneyDeposited, MoneyWithdrawn))]
pub struct Account {
    pub owner_name: String,
    pub balance: f64,
    pub transaction_count: u64,
}

impl Apply<AccountOpened> for Account {
    fn apply(&mut self, e: &AccountOpened) {
        self.owner_name = e.owner_name.clone();
        self.balance = e.initial_balance;
    }
}

impl Apply<MoneyDeposited> for Account {
    fn apply(&mut self, e: &MoneyDeposited) {
        self.balance += e.amount;
        self.transaction_count += 1;
    }
}

impl Apply<MoneyWithdrawn> for Account {
    fn apply(&mut self, e: &MoneyWithdrawn) {
        self.balance -= e.amount;
        self.transaction_count += 1;
    }
}

/// Events of another module, listed by path, one renamed and versioned, one unit struct,
/// one that derives everything itself.
mod ledger {
    use eventsourcing_kit::prelude::*;

    /// Version 3: version 1 stored the amount as `cents`, version 2 as a string.
    #[event(
        aggregate = "Ledger",
        name = "LedgerEntryPosted",
        version = 3,
        upcast(1 => json(Self::cents_to_text), 2 => PostedV2)
    )]
    pub struct Posted {
        pub amount: i64,
    }

    /// Version 2 of `Posted`, kept as its own type.
    #[derive(Deserialize)]
    pub struct PostedV2 {
        pub amount: String,
    }

    impl TryFrom<PostedV2> for Posted {
        type Error = std::num::ParseIntError;

        fn try_from(v2: PostedV2) -> Result<Self, Self::Error> {
            Ok(Posted {
                amount: v2.amount.parse()?,
            })
        }
    }

    impl Posted {
        /// Version 1 to 2, written as an associated function and named through `Self`.
        fn cents_to_text(v1: serde_json::Value) -> Result<serde_json::Value, String> {
            let cents = v1["cents"].as_i64().ok_or("`cents` is not an integer")?;
            Ok(serde_json::json!({ "amount": cents.to_string() }))
        }
    }

    #[event(aggregate = "Ledger")]
    pub struct LedgerClosed;

    // Above the derives, so that it sees them: a derive above an attribute macro is taken
    // off the item before the attribute macro runs.
    #[event(aggregate = "Ledger", name = "LedgerNoted")]
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct Noted {
        pub text: String,
    }
}

/// An event that derives some of the traits itself: the macro adds only the others.
#[event(aggregate = "Tally")]
#[derive(Serialize, PartialEq)]
pub struct TallyCounted {
    pub by: u32,
}

/// A generic aggregate: the derive keeps its parameters and bounds.
#[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
#[aggregate(name = "Tally", events(TallyCounted))]
pub struct Tally<T>
where
    T: Clone + std::fmt::Debug + Default + Send + Sync + 'static,
{
    count: u32,
    #[serde(skip)]
    marker: std::marker::PhantomData<T>,
}

impl<T> Apply<TallyCounted> for Tally<T>
where
    T: Clone + std::fmt::Debug + Default + Send + Sync + 'static,
{
    fn apply(&mut self, e: &TallyCounted) {
        self.count += e.by;
    }
}

#[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
#[aggregate(
    name = "Ledger",
    schema_version = 7,
    events(ledger::Posted, ledger::LedgerClosed, ledger::Noted)
)]
pub(crate) struct Ledger {
    total: i64,
    closed: bool,
    notes: Vec<String>,
}

impl Apply<ledger::Posted> for Ledger {
    fn apply(&mut self, e: &ledger::Posted) {
        self.total += e.amount;
    }
}

impl Apply<ledger::LedgerClosed> for Ledger {
    fn apply(&mut self, _: &ledger::LedgerClosed) {
        self.closed = true;
    }
}

impl Apply<ledger::Noted> for Ledger {
    fn apply(&mut self, e: &ledger::Noted) {
        self.notes.push(e.text.clone());
    }
}

fn deposit(amount: f64) -> AccountEvent {
    MoneyDeposited { amount }.into()
}

#[test]
fn the_event_enum_has_a_variant_per_listed_event() {
    let opened = AccountEvent::from(AccountOpened {
        owner_name: "Ada".into(),
        initial_balance: 1.5,
    });
    assert!(matches!(&opened, AccountEvent::AccountOpened(e) if e.owner_name == "Ada"));
    assert!(matches!(deposit(2.0), AccountEvent::MoneyDeposited(MoneyDeposited { amount }) if amount == 2.0));
    let withdrawn: AccountEvent = MoneyWithdrawn { amount: 3.0 }.into();
    assert!(matches!(withdrawn, AccountEvent::MoneyWithdrawn(_)));
    // Variants are named after the last path segment.
    let posted = LedgerEvent::from(ledger::Posted { amount: 5 });
    assert!(matches!(
        posted,
        LedgerEvent::Posted(ledger::Posted { amount: 5 })
    ));
    assert!(matches!(
        LedgerEvent::from(ledger::LedgerClosed),
        LedgerEvent::LedgerClosed(_)
    ));
    // Clone and Debug.
    let copy = opened.clone();
    assert_eq!(
        format!("{copy:?}"),
        r#"AccountOpened(AccountOpened { owner_name: "Ada", initial_balance: 1.5 })"#
    );
}

#[test]
fn the_event_enum_serializes_tagged_by_event_type() {
    let json = serde_json::to_value(deposit(2.5)).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"event_type": "MoneyDeposited", "data": {"amount": 2.5}})
    );

    // The tag is the event type, which a rename sets apart from the variant.
    let posted = LedgerEvent::from(ledger::Posted { amount: -4 });
    let json = serde_json::to_value(&posted).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"event_type": "LedgerEntryPosted", "data": {"amount": -4}})
    );
    let back: LedgerEvent = serde_json::from_value(json).unwrap();
    assert!(matches!(back, LedgerEvent::Posted(ledger::Posted { amount: -4 })));

    let closed = serde_json::to_string(&LedgerEvent::from(ledger::LedgerClosed)).unwrap();
    assert_eq!(closed, r#"{"event_type":"LedgerClosed","data":null}"#);
    assert!(matches!(
        serde_json::from_str(&closed).unwrap(),
        LedgerEvent::LedgerClosed(_)
    ));
}

#[test]
fn the_event_enum_deserializes_with_the_data_before_the_tag() {
    let event: AccountEvent =
        serde_json::from_str(r#"{"data": {"amount": 7.0}, "event_type": "MoneyWithdrawn"}"#).unwrap();
    assert!(matches!(event, AccountEvent::MoneyWithdrawn(MoneyWithdrawn { amount }) if amount == 7.0));
}

#[test]
fn the_event_enum_refuses_a_type_it_does_not_list() {
    let err = serde_json::from_str::<AccountEvent>(r#"{"event_type": "LedgerClosed", "data": null}"#)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("LedgerClosed") && err.contains("MoneyDeposited"),
        "{err}"
    );
    let err = serde_json::from_str::<AccountEvent>(r#"{"data": {"amount": 1.0}}"#).unwrap_err();
    assert!(err.to_string().contains("event_type"), "{err}");
}

#[test]
fn aggregate_events_round_trip_through_json() {
    let events = [
        AccountEvent::from(AccountOpened {
            owner_name: "Ada".into(),
            initial_balance: 100.0,
        }),
        deposit(50.0),
        MoneyWithdrawn { amount: 30.0 }.into(),
    ];
    for event in events {
        let json = event.to_json().unwrap();
        let back = AccountEvent::from_json(event.event_type(), &json).unwrap();
        assert_eq!(format!("{back:?}"), format!("{event:?}"));
        assert_eq!(event.event_version(), 1);
    }
    assert_eq!(deposit(1.0).to_json().unwrap(), r#"{"amount":1.0}"#);

    let posted = LedgerEvent::from(ledger::Posted { amount: 9 });
    assert_eq!(posted.event_type(), "LedgerEntryPosted");
    assert_eq!(posted.event_version(), 3);
    let back = LedgerEvent::from_json("LedgerEntryPosted", &posted.to_json().unwrap()).unwrap();
    assert!(matches!(back, LedgerEvent::Posted(ledger::Posted { amount: 9 })));
    // The Rust name of a renamed event is not its event type.
    assert!(LedgerEvent::from_json("Posted", r#"{"amount":9}"#).is_err());
    // Versions 1 and 2 upcast through both kinds of step.
    let v1 = LedgerEvent::decode("LedgerEntryPosted", 1, r#"{"cents": 12}"#).unwrap();
    assert!(matches!(v1, LedgerEvent::Posted(ledger::Posted { amount: 12 })));
    let v2 = LedgerEvent::decode("LedgerEntryPosted", 2, r#"{"amount": "-3"}"#).unwrap();
    assert!(matches!(v2, LedgerEvent::Posted(ledger::Posted { amount: -3 })));
}

#[test]
fn an_unlisted_event_type_is_an_error_naming_it() {
    let err = AccountEvent::from_json("AccountRenamed", "{}").unwrap_err();
    match err {
        Error::UnknownEventType {
            event_type,
            aggregate_type,
        } => {
            assert_eq!(event_type, "AccountRenamed");
            assert_eq!(aggregate_type, "Account");
        }
        other => panic!("expected UnknownEventType, got {other:?}"),
    }
    let err = AccountEvent::from_json("MoneyDeposited", r#"{"amount":"ten"}"#).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Serialization {
                action: "deserialize",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_non_finite_float_is_a_serialization_error() {
    let err = deposit(f64::NAN).to_json().unwrap_err();
    match &err {
        Error::Serialization { action, what, .. } => {
            assert_eq!(*action, "serialize");
            assert!(what.contains("MoneyDeposited"), "{what}");
        }
        other => panic!("expected Serialization, got {other:?}"),
    }
    assert!(deposit(f64::INFINITY).to_json().is_err());
}

#[test]
fn schema_version_is_1_unless_set() {
    assert_eq!(Account::SCHEMA_VERSION, 1);
    assert_eq!(Ledger::SCHEMA_VERSION, 7);
}

#[test]
fn type_name_is_the_aggregate_name() {
    assert_eq!(Account::TYPE_NAME, "Account");
    assert_eq!(Ledger::TYPE_NAME, "Ledger");
}

#[test]
fn apply_dispatches_to_the_apply_impl_of_each_event() {
    let mut account = Account::default();
    let events = [
        AccountEvent::from(AccountOpened {
            owner_name: "Ada".into(),
            initial_balance: 100.0,
        }),
        deposit(50.0),
        MoneyWithdrawn { amount: 30.0 }.into(),
    ];
    for event in &events {
        Aggregate::apply_event(&mut account, event);
    }
    assert_eq!(
        account,
        Account {
            owner_name: "Ada".into(),
            balance: 120.0,
            transaction_count: 2
        }
    );

    let mut ledger = Ledger::default();
    for event in [
        LedgerEvent::from(ledger::Posted { amount: 5 }),
        ledger::Noted {
            text: "checked".into(),
        }
        .into(),
        ledger::LedgerClosed.into(),
    ] {
        Aggregate::apply_event(&mut ledger, &event);
    }
    assert_eq!(
        (ledger.total, ledger.closed, ledger.notes),
        (5, true, vec!["checked".to_owned()])
    );
}

#[test]
fn event_consts_follow_the_attribute() {
    assert_eq!(MoneyDeposited::EVENT_TYPE, "MoneyDeposited");
    assert_eq!(MoneyDeposited::AGGREGATE_TYPE, "Account");
    assert_eq!(MoneyDeposited::EVENT_VERSION, 1);
    assert_eq!(ledger::Posted::EVENT_TYPE, "LedgerEntryPosted");
    assert_eq!(ledger::Posted::AGGREGATE_TYPE, "Ledger");
    assert_eq!(ledger::Posted::EVENT_VERSION, 3);
    assert_eq!(ledger::LedgerClosed::EVENT_TYPE, "LedgerClosed");
}

#[test]
fn derives_written_by_the_user_are_kept_and_not_repeated() {
    // `Noted` derives all four itself and PartialEq besides; a repeated derive would not
    // compile, so this compiling is most of the test.
    let noted = ledger::Noted { text: "x".into() };
    assert_eq!(noted.clone(), noted);
    assert_eq!(serde_json::to_string(&noted).unwrap(), r#"{"text":"x"}"#);
    assert_eq!(ledger::Noted::EVENT_TYPE, "LedgerNoted");

    // `TallyCounted` derives Serialize and PartialEq; Clone, Debug and Deserialize are added.
    let counted: TallyCounted = serde_json::from_str(r#"{"by":2}"#).unwrap();
    assert_eq!(counted.clone(), TallyCounted { by: 2 });
    assert_eq!(format!("{counted:?}"), "TallyCounted { by: 2 }");
}

#[test]
fn a_generic_aggregate_applies_its_events() {
    let mut tally = Tally::<String>::default();
    Aggregate::apply_event(&mut tally, &TallyEvent::from(TallyCounted { by: 3 }));
    assert_eq!(tally.count, 3);
    assert_eq!(<Tally<String> as Aggregate>::TYPE_NAME, "Tally");
}

#[test]
fn the_registry_lists_every_event_and_aggregate() {
    let opened = registry::event("Account", "AccountOpened").expect("AccountOpened is registered");
    assert_eq!(opened.aggregate_type, "Account");
    assert_eq!(opened.event_version, 1);
    assert_eq!(opened.rust_type, "macros::AccountOpened");

    let posted =
        registry::event("Ledger", "LedgerEntryPosted").expect("renamed events register by event type");
    assert_eq!(posted.event_version, 3);
    assert_eq!(posted.rust_type, "macros::ledger::Posted");
    assert!(registry::event("Ledger", "Posted").is_none());

    let mut names: Vec<_> = registry::events().map(|e| e.event_type).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "AccountOpened",
            "LedgerClosed",
            "LedgerEntryPosted",
            "LedgerNoted",
            "MoneyDeposited",
            "MoneyWithdrawn",
            "TallyCounted"
        ]
    );

    let account = registry::aggregates().find(|a| a.name == "Account").unwrap();
    assert_eq!(account.schema_version, 1);
    assert_eq!(
        account.event_types,
        ["AccountOpened", "MoneyDeposited", "MoneyWithdrawn"]
    );
    assert_eq!(account.rust_type, "macros::Account");
    let ledger = registry::aggregates().find(|a| a.name == "Ledger").unwrap();
    assert_eq!(ledger.schema_version, 7);
    assert_eq!(
        ledger.event_types,
        ["LedgerEntryPosted", "LedgerClosed", "LedgerNoted"]
    );
    assert_eq!(registry::aggregates().count(), 3);

    registry::check().expect("no two event types share a name in this program");
}
