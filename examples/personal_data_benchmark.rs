//! What personal fields cost: saves and loads of an event with one personal field (sealed
//! with its subject's key) next to the same event with the field in the clear, on memory,
//! SQLite and PostgreSQL, and how often a load asks the key store once its keys are cached.
//!
//! Each cell alternates the two kinds in blocks, several rounds, so that a machine that gets
//! busier meanwhile weighs on both; the table gives the median of the rounds and the ratio.
//!
//! ```text
//! cargo run --release --features eventsourcing-kit/sqlite,eventsourcing-kit/postgres,eventsourcing-kit/personal-data \
//!     --example personal_data_benchmark -- [--stores memory,sqlite,postgres] [--ops 2000] \
//!     [--rounds 5] [--events 100] [--cells save,load] [--postgres URL]
//! ```
//!
//! Give PostgreSQL a schema of its own (`?schema=personal_bench`) and drop it afterwards.

use std::time::Instant;

use eventsourcing_kit::backend::Stores;
use eventsourcing_kit::personal::Personal;
use eventsourcing_kit::prelude::*;

type Fallible<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[event(aggregate = "Member")]
pub struct Noted {
    pub member: String,
    #[personal(subject = member)]
    pub email: Personal<String>,
    pub points: i64,
}

#[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
#[aggregate(name = "Member", events(Noted))]
pub struct Member {
    pub email: Personal<String>,
    pub points: i64,
}

impl Apply<Noted> for Member {
    fn apply(&mut self, e: &Noted) {
        self.email = e.email.clone();
        self.points += e.points;
    }
}

#[event(aggregate = "Guest", name = "Noted")]
pub struct GuestNoted {
    pub member: String,
    pub email: String,
    pub points: i64,
}

#[derive(Aggregate, Clone, Debug, Default, Serialize, Deserialize)]
#[aggregate(name = "Guest", events(GuestNoted))]
pub struct Guest {
    pub email: String,
    pub points: i64,
}

impl Apply<GuestNoted> for Guest {
    fn apply(&mut self, e: &GuestNoted) {
        self.email = e.email.clone();
        self.points += e.points;
    }
}

struct Options {
    stores: Vec<String>,
    ops: usize,
    rounds: usize,
    events: usize,
    cells: Vec<String>,
    postgres: String,
}

fn options() -> Fallible<Options> {
    let mut options = Options {
        stores: vec!["memory".into(), "sqlite".into(), "postgres".into()],
        ops: 2000,
        rounds: 5,
        events: 100,
        cells: vec!["save".into(), "load".into()],
        postgres: std::env::var("EVENTSOURCE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--stores" => options.stores = value.split(',').map(str::to_owned).collect(),
            "--ops" => options.ops = value.parse()?,
            "--rounds" => options.rounds = value.parse()?,
            "--events" => options.events = value.parse()?,
            "--cells" => options.cells = value.split(',').map(str::to_owned).collect(),
            "--postgres" => options.postgres = value,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    Ok(options)
}

/// One event of the personal kind or the plain one, for the stream of `member`.
trait Kind: Aggregate {
    fn event(member: &str, n: usize) -> Self::Event;
}

impl Kind for Member {
    fn event(member: &str, n: usize) -> MemberEvent {
        MemberEvent::Noted(Noted {
            member: member.to_owned(),
            email: Personal::new(format!("{member}@mail.example")),
            points: n as i64,
        })
    }
}

impl Kind for Guest {
    fn event(member: &str, n: usize) -> GuestEvent {
        GuestEvent::GuestNoted(GuestNoted {
            member: member.to_owned(),
            email: format!("{member}@mail.example"),
            points: n as i64,
        })
    }
}

/// `ops` saves of one event: each into a new stream of a new subject (`new`), or all into one
/// stream of one subject; saves per second.
async fn saves<A: Kind>(stores: &Stores, ops: usize, new: bool) -> Fallible<f64> {
    let repo = stores.repository::<A>();
    let member = format!("m-{}", Uuid::new_v4().simple());
    let mut root = repo.create_new(Uuid::new_v4());
    let started = Instant::now();
    for n in 0..ops {
        if new {
            let member = format!("m-{}", Uuid::new_v4().simple());
            let mut fresh = repo.create_new(Uuid::new_v4());
            fresh.record(A::event(&member, n));
            repo.save(&mut fresh).await?;
        } else {
            root.record(A::event(&member, n));
            repo.save(&mut root).await?;
        }
    }
    Ok(ops as f64 / started.elapsed().as_secs_f64())
}

/// A stream of `events` events of one subject; its id.
async fn stream<A: Kind>(stores: &Stores, events: usize) -> Fallible<Uuid> {
    let repo = stores.repository::<A>();
    let member = format!("m-{}", Uuid::new_v4().simple());
    let mut root = repo.create_new(Uuid::new_v4());
    for n in 0..events {
        root.record(A::event(&member, n));
    }
    repo.save(&mut root).await?;
    Ok(root.id())
}

/// `ops` loads of the stream `id`; loads per second.
async fn loads<A: Kind>(stores: &Stores, id: Uuid, ops: usize) -> Fallible<f64> {
    let repo = stores.repository::<A>();
    let started = Instant::now();
    for _ in 0..ops {
        repo.load(id).await?;
    }
    Ok(ops as f64 / started.elapsed().as_secs_f64())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Medians of the rounds of the plain and the personal kind, alternating.
async fn alternate<P, Q>(
    rounds: usize,
    mut plain: impl FnMut() -> P,
    mut personal: impl FnMut() -> Q,
) -> Fallible<(f64, f64)>
where
    P: std::future::Future<Output = Fallible<f64>>,
    Q: std::future::Future<Output = Fallible<f64>>,
{
    plain().await?;
    personal().await?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        a.push(plain().await?);
        b.push(personal().await?);
    }
    Ok((median(a), median(b)))
}

#[tokio::main]
async fn main() -> Fallible {
    let options = options()?;
    let dir = std::env::temp_dir().join(format!("eventsource-personal-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    println!(
        "one writer; {} operations a block, {} rounds of one block of each kind, alternating; medians; \
         loads of a stream of {} events, no snapshot\n",
        options.ops, options.rounds, options.events
    );
    println!(
        "| store | operation | in the clear, ops/s | one personal field, ops/s | personal / clear (time) |"
    );
    println!("|---|---|---|---|---|");
    for store in &options.stores {
        let stores = match store.as_str() {
            "memory" => Stores::in_memory(),
            "sqlite" => {
                eventsourcing_kit::backend::open(&format!("sqlite:{}", dir.join("personal.db").display()))
                    .await?
            }
            "postgres" => eventsourcing_kit::backend::open(&options.postgres).await?,
            other => return Err(format!("unknown store {other}").into()),
        };
        stores.migrate().await?;
        let ops = options.ops;
        let saving = options.cells.iter().any(|c| c == "save");
        for (operation, new) in [("save, subject known", false), ("save, new subject", true)] {
            if !saving {
                break;
            }
            let (plain, personal) = alternate(
                options.rounds,
                || saves::<Guest>(&stores, ops, new),
                || saves::<Member>(&stores, ops, new),
            )
            .await?;
            println!(
                "| {store} | {operation} | {plain:.0} | {personal:.0} | {:.2}x |",
                plain / personal
            );
        }
        if !options.cells.iter().any(|c| c == "load") {
            continue;
        }
        let guest = stream::<Guest>(&stores, options.events).await?;
        let member = stream::<Member>(&stores, options.events).await?;
        let keys = stores.keys.clone().ok_or("the stores keep no keys")?;
        let (plain, personal) = alternate(
            options.rounds,
            || loads::<Guest>(&stores, guest, ops / 10),
            || loads::<Member>(&stores, member, ops / 10),
        )
        .await?;
        println!(
            "| {store} | load of {} events | {plain:.0} | {personal:.0} | {:.2}x |",
            options.events,
            plain / personal
        );
        let before = keys.lookups();
        loads::<Member>(&stores, member, ops / 10).await?;
        println!(
            "| {store} | key store lookups per load, cache warm | | {:.3} | |",
            (keys.lookups() - before) as f64 / (ops / 10) as f64
        );
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
