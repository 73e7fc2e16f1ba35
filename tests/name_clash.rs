//! Names as storage needs them: two aggregates may each have an event type `Created`, but
//! two aggregate types of one name and schema version are reported at the first load or
//! save, naming both Rust types. (A test binary of its own: the clash fails every repository
//! in it.)

use eventsourcing_kit::prelude::*;

mod order {
    use eventsourcing_kit::prelude::*;

    #[event(aggregate = "Order")]
    pub struct Created;

    #[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
    #[aggregate(name = "Order", events(Created))]
    #[allow(dead_code)]
    pub struct Order;

    impl Apply<Created> for Order {
        fn apply(&mut self, _: &Created) {}
    }
}

mod customer {
    use eventsourcing_kit::prelude::*;

    #[event(aggregate = "Customer")]
    pub struct Created;

    #[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
    #[aggregate(name = "Customer", events(Created))]
    pub struct Customer;

    impl Apply<Created> for Customer {
        fn apply(&mut self, _: &Created) {}
    }

    /// Another aggregate type that takes the name `Order`.
    #[event(aggregate = "Order")]
    pub struct Ordered;

    #[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
    #[aggregate(name = "Order", events(Ordered))]
    #[allow(dead_code)]
    pub struct AlsoOrder;

    impl Apply<Ordered> for AlsoOrder {
        fn apply(&mut self, _: &Ordered) {}
    }
}

#[test]
fn event_types_are_scoped_by_aggregate_and_aggregate_names_are_unique() {
    let order = eventsourcing_kit::registry::event("Order", "Created").expect("registered");
    let customer = eventsourcing_kit::registry::event("Customer", "Created").expect("registered");
    assert_eq!(order.rust_type, "name_clash::order::Created");
    assert_eq!(customer.rust_type, "name_clash::customer::Created");

    match eventsourcing_kit::registry::check() {
        Err(Error::DuplicateName {
            kind,
            name,
            first,
            second,
        }) => {
            assert_eq!(
                (kind, name.as_str()),
                ("aggregate type", "Order (schema version 1)")
            );
            let mut both = [first, second];
            both.sort_unstable();
            assert_eq!(
                both,
                ["name_clash::customer::AlsoOrder", "name_clash::order::Order"]
            );
        }
        other => panic!("expected the shared aggregate name to be reported, got {other:?}"),
    }
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let err = runtime
        .block_on(Repository::<customer::Customer>::new(InMemoryEventStore::new()).load(Uuid::new_v4()))
        .unwrap_err();
    assert!(matches!(err, Error::DuplicateName { .. }), "{err}");
}
