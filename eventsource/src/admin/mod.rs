//! The admin command line (feature `admin`): what operators do with the stores of an
//! application, for every aggregate type it registers and every projection it names.
//!
//! Snapshots and read models are caches over the events. This command line inspects them,
//! warms them, checks them and rebuilds them, on SQLite and PostgreSQL alike:
//!
//! ```text
//! stats                                            streams, events, snapshot coverage and staleness
//!                                                  per aggregate type; checkpoint and lag per
//!                                                  subscription and projection
//! snapshots rewarm --type T [--concurrency N]      current-schema snapshots, busiest streams first
//! snapshots verify --type T [--sample N]           snapshot + tail against a full replay
//! snapshots invalidate --type T [--below N]        delete a type's snapshots (asks first)
//! projections list | status NAME                   checkpoints, lag, consumers, dead letters
//! projections rebuild NAME | reset NAME            (asks first)
//! projections verify NAME [--sample N | --after P --until Q]
//!                                                  live rows against a rebuild with today's code
//! events tail [--aggregate-type T] [--event-type E] [--from-start]
//! events show ID
//! migrate [--print-sql | --apply]                 the tables' layout and pending steps, as SQL
//! deadletters list [NAME] | show NAME EVENT_ID     what a subscription or projection gave up on
//! deadletters replay NAME [--dry-run] [--limit N]  a projection's, through today's code
//! doctor [--max-replay N] [--max-lag N]            durability, layout, snapshots, consumers:
//!                                                  findings with what to do
//! forget SUBJECT | forget [--settle SECS]          erases a data subject's personal values from
//!                                                  every copy, then reads each place again
//! streams close ID --type T                        closes a stream for good (asks first)
//! ```
//!
//! Output is for people by default and JSON with `--json`. The exit status is 0 when all is
//! well, 1 when a check found something (a drift), 2 on an error or a refusal.
//!
//! The text for people shows every name with its control characters (and line separators and
//! bidirectional overrides) escaped, `\n`, `\u{1b}`: a name read from a store, which may
//! predate the rules of [`validate_name`](crate::subscription::validate_name) or come from
//! another program, or given on the command line, cannot forge a row or reach the terminal as
//! a sequence. The JSON keeps every name exact.
//!
//! # Adding it to an application
//!
//! `#[derive(Aggregate)]` registers every aggregate type at link time, so the command line
//! knows them without being told. Projections run the application's own code: name each with
//! [`Admin::projection`]. As a subcommand of the application's own clap command line:
//!
//! ```no_run
//! # use std::sync::Arc;
//! use clap::Parser;
//! use eventsourcing_kit::admin::{Admin, AdminArgs};
//! # use eventsourcing_kit::projection::Projection;
//! # fn read_model(stores: &eventsourcing_kit::backend::Stores) -> eventsourcing_kit::Result<Arc<Projection>> { unimplemented!() }
//!
//! #[derive(Parser)]
//! enum Cli {
//!     /// Serves the API.
//!     Serve,
//!     /// Operates the stores.
//!     Admin(AdminArgs),
//! }
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> std::process::ExitCode {
//!     match Cli::parse() {
//!         Cli::Serve => std::process::ExitCode::SUCCESS,
//!         Cli::Admin(args) => Admin::new().projection(read_model).run(args).await,
//!     }
//! }
//! ```
//!
//! A binary of its own is [`Admin::main_from`] with `std::env::args_os()`.

mod copy;
mod deadletters;
mod doctor;
mod events;
mod forget;
mod migrate;
mod output;
mod projections;
mod shards;
mod snapshots;
mod stats;
mod streams;
mod verify_projection;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use crate::backend::Stores;
use crate::erasure::PersonalDataHolder;
use crate::error::Error;
use crate::projection::Projection;
use crate::registry::{self, AggregateRegistration};
use crate::text::escape;
use output::Output;

/// The admin command line's arguments, for a place in an application's own clap command
/// line (see the [module docs](self)).
#[derive(Args, Clone, Debug)]
pub struct AdminArgs {
    /// The stores' URL, as `eventsourcing_kit::backend::open` takes it: `sqlite:FILE`,
    /// `postgres://...`.
    #[arg(long, env = "EVENTSOURCE_URL")]
    pub url: String,
    /// Prints JSON for scripts instead of text for people.
    #[arg(long, global = true)]
    pub json: bool,
    /// Brings the PostgreSQL tables up to date first, as the application does at start-up.
    /// Without it the command uses them as they are, so that an admin binary newer than the
    /// running application never upgrades the database under it. (A SQLite file is brought
    /// up to date whenever it is opened.)
    #[arg(long, global = true)]
    pub migrate: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// The admin commands.
#[derive(Subcommand, Clone, Debug)]
pub enum AdminCommand {
    /// Streams, events, snapshot coverage and staleness per aggregate type; checkpoint, lag
    /// and consumer per subscription and projection.
    Stats {
        /// Only this aggregate type.
        #[arg(long = "type", value_name = "TYPE")]
        aggregate_type: Option<String>,
    },
    /// Warms, verifies and invalidates snapshots.
    #[command(subcommand)]
    Snapshots(SnapshotsCommand),
    /// Lists, inspects, rebuilds and resets projections and subscriptions.
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// Follows or shows the events.
    #[command(subcommand)]
    Events(EventsCommand),
    /// The layout of the tables and the steps pending (PostgreSQL; a SQLite file is brought
    /// up to date when opened): as SQL for a review, or applied.
    Migrate {
        /// Prints the SQL script that applies the pending steps, for a review or a team's own
        /// migration tool, and changes nothing.
        #[arg(long, conflicts_with = "apply")]
        print_sql: bool,
        /// Applies the pending steps (what `--migrate` and `Stores::migrate` do).
        #[arg(long)]
        apply: bool,
    },
    /// Lists, shows and replays the events subscriptions and projections gave up on.
    #[command(subcommand)]
    Deadletters(DeadLettersCommand),
    /// Copies every event of the store into another (new databases under another shard map:
    /// offline resharding), then compares the two stream by stream; exits 1 on a difference.
    /// Stop the application first.
    Copy {
        /// The store to copy into: a URL, or `shards:PATH` of the new shard map.
        #[arg(long, value_name = "URL")]
        to: String,
        /// How many differing streams to print.
        #[arg(long, default_value_t = 10)]
        show: usize,
        /// Does not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Checks the store: whether its database keeps every write it acknowledged, its
    /// layout, the snapshots of each aggregate type and the consumers; prints each finding
    /// with what to do. Exits 1 when one is serious.
    Doctor {
        /// Warns of an aggregate type whose loads replay more events than this after their
        /// snapshot (at the 99th percentile).
        #[arg(long, value_name = "EVENTS", default_value_t = 1_000)]
        max_replay: u64,
        /// Warns of a subscription or projection running this many events behind the feed.
        #[arg(long, value_name = "EVENTS", default_value_t = 10_000)]
        max_lag: u64,
    },
    /// Closes, deletes, archives and restores streams.
    #[command(subcommand)]
    Streams(StreamsCommand),
    /// Forgets a data subject (see `eventsourcing_kit::erasure`): its personal values read as
    /// forgotten, its snapshots are written again, dead letters quoting its values are
    /// redacted, the holders the program names erase theirs; then every place is read again,
    /// and the key is deleted if none holds a value. Exits 1 if one still does (the key is
    /// kept: fix it and run again). Without a subject, finishes every forgetting that did
    /// not.
    Forget {
        /// The data subject, as its events name it; every unfinished forgetting without it.
        subject: Option<String>,
        /// Seconds to wait after a forgetting begins for keys that other processes cached to
        /// expire: at least their keyrings' time to live.
        #[arg(long, value_name = "SECONDS", default_value_t = 30)]
        settle: u64,
        /// Does not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

/// `snapshots ...`
#[derive(Subcommand, Clone, Debug)]
pub enum SnapshotsCommand {
    /// Writes current-schema snapshots from full replays, busiest streams first. Streams
    /// whose current-schema snapshot is at their head are skipped, so a run that was
    /// interrupted goes on where it stopped when started again.
    Rewarm {
        /// The aggregate type.
        #[arg(long = "type", value_name = "TYPE")]
        aggregate_type: String,
        /// Streams replayed at once.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
        concurrency: u32,
        /// Only streams at least this many events past their current-schema snapshot.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
        min_behind: u64,
        /// At most this many streams, the busiest.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Compares the load from each sampled aggregate's snapshot with a full replay, field by
    /// field: a drift means an `Apply` changed without a schema version bump.
    Verify {
        /// The aggregate type.
        #[arg(long = "type", value_name = "TYPE")]
        aggregate_type: String,
        /// Aggregates verified, chosen at random among those with a snapshot.
        #[arg(long, default_value_t = 100)]
        sample: usize,
        /// Drifted aggregates shown in full.
        #[arg(long, default_value_t = 10)]
        show: usize,
    },
    /// Deletes a type's snapshots, all of them or those below a schema version. Loads replay
    /// in full until new snapshots are written.
    Invalidate {
        /// The aggregate type (registered or not: the snapshots of a removed type too).
        #[arg(long = "type", value_name = "TYPE")]
        aggregate_type: String,
        /// Only snapshots of a schema version below this one.
        #[arg(long)]
        below: Option<u32>,
        /// Does not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

/// `streams ...`
#[derive(Subcommand, Clone, Debug)]
pub enum StreamsCommand {
    /// Closes a stream for good (see `eventsourcing_kit::lifecycle`): its last event is the
    /// closing event, and the library's writers refuse new events on it. A stream closed
    /// already is left as it is.
    Close {
        /// The aggregate's id.
        id: uuid::Uuid,
        /// Its aggregate type (registered or not).
        #[arg(long = "type", value_name = "TYPE")]
        aggregate_type: String,
        /// Does not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Deletes a stream for good (see `eventsourcing_kit::lifecycle`): a tombstone takes its
    /// next version, and its events, request ids and snapshots are removed. A stream deleted
    /// already is left as it is (its snapshots are deleted again).
    Delete {
        /// The aggregate's id.
        id: uuid::Uuid,
        /// Its aggregate type (registered or not).
        #[arg(long = "type", value_name = "TYPE")]
        aggregate_type: String,
        /// Does not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Moves the events of a stream before its newest snapshot to the archive (see
    /// `eventsourcing_kit::lifecycle`): loads go on from the snapshot, whole-stream reads
    /// still read them, and the feed no longer holds them. Take a snapshot first
    /// (`snapshots rewarm`) if the stream has none.
    Archive {
        /// The aggregate's id.
        id: uuid::Uuid,
        /// Its aggregate type (registered or not).
        #[arg(long = "type", value_name = "TYPE")]
        aggregate_type: String,
        /// Does not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Moves the archived events of a stream back to the live table and the feed.
    Restore {
        /// The aggregate's id.
        id: uuid::Uuid,
        /// Its aggregate type (registered or not).
        #[arg(long = "type", value_name = "TYPE")]
        aggregate_type: String,
    },
}

/// `deadletters ...`
#[derive(Subcommand, Clone, Debug)]
pub enum DeadLettersCommand {
    /// The dead letters of one subscription or projection (and of its consumer group's
    /// ranges), or of all of them.
    List {
        /// Its name; every one's without it.
        name: Option<String>,
    },
    /// One dead letter in full: the handler's error and the event as the feed holds it.
    Show {
        /// The subscription's or projection's name.
        name: String,
        /// The event's id.
        event_id: uuid::Uuid,
    },
    /// Applies a projection's dead letters again through today's code, one by one, each in
    /// the read model's transaction (the checkpoint never moves), and removes those that now
    /// succeed; reports what still fails (exit 1). Stop the projection's consumers first.
    Replay {
        /// The projection's name (one the program names).
        name: String,
        /// Runs each letter and rolls it back: reports what would succeed, removes nothing.
        #[arg(long)]
        dry_run: bool,
        /// At most this many letters, the first recorded first.
        #[arg(long)]
        limit: Option<usize>,
    },
}

/// `projections ...`
#[derive(Subcommand, Clone, Debug)]
pub enum ProjectionsCommand {
    /// Every subscription and projection: checkpoint, lag, consumer, dead letters.
    List,
    /// One subscription or projection, with its dead letters.
    Status {
        /// Its name.
        name: String,
    },
    /// Empties a projection's read model and replays the whole feed into it, with progress.
    /// Interrupted, run it again with `--resume` to go on from the last committed batch.
    Rebuild {
        /// The projection's name.
        name: String,
        /// Goes on from the checkpoint instead of emptying the read model first.
        #[arg(long)]
        resume: bool,
        /// Runs even while another consumer holds the projection's lease.
        #[arg(long)]
        force: bool,
        /// Does not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Rebuilds a sample of streams (or those of a range of the feed) into a scratch copy of
    /// a projection's read model with today's code and compares their rows with the live
    /// ones; shows the first differences and exits 1 on any. The projection may be running.
    Verify {
        /// The projection's name (one the program names).
        name: String,
        /// Streams verified, chosen at random among those of the types it takes.
        #[arg(long, default_value_t = 100, conflicts_with_all = ["after", "until"])]
        sample: usize,
        /// Verifies the streams with events in the feed after this position ...
        #[arg(long, value_name = "POSITION", requires = "until")]
        after: Option<u64>,
        /// ... up to this one.
        #[arg(long, value_name = "POSITION", requires = "after")]
        until: Option<u64>,
        /// Differing streams shown in full.
        #[arg(long, default_value_t = 10)]
        show: usize,
    },
    /// Records a new layout of a consumer group with another number of ranges (its first, for
    /// a subscription or projection that ran as a single consumer, which must be stopped);
    /// its running workers move to it on their own.
    Rescale {
        /// The subscription's or projection's name.
        name: String,
        /// The number of ranges, 1 to 1,024.
        ranges: u32,
    },
    /// Forgets a subscription's checkpoint, or empties a projection's read model with it.
    Reset {
        /// The subscription's or projection's name.
        name: String,
        /// Runs even while another consumer holds the lease.
        #[arg(long)]
        force: bool,
        /// Does not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

/// `events ...`
#[derive(Subcommand, Clone, Debug)]
pub enum EventsCommand {
    /// Prints the feed's events as they are appended, from its end unless told otherwise.
    Tail {
        /// Only events of this aggregate type.
        #[arg(long, value_name = "TYPE")]
        aggregate_type: Option<String>,
        /// Only events of this event type.
        #[arg(long, value_name = "TYPE")]
        event_type: Option<String>,
        /// Starts at the beginning of the feed.
        #[arg(long, conflicts_with = "after")]
        from_start: bool,
        /// Starts after this feed position.
        #[arg(long, value_name = "POSITION")]
        after: Option<u64>,
        /// Stops after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Stops at the feed's head instead of waiting for more.
        #[arg(long)]
        no_follow: bool,
        /// The shard whose feed to print, on a sharded store (each shard has a feed of its
        /// own, with positions of its own): from 0, as `stats` lists them. Required there.
        #[arg(long, value_name = "N")]
        shard: Option<usize>,
    },
    /// Prints every event of one aggregate.
    Show {
        /// The aggregate's id.
        id: uuid::Uuid,
        /// Its aggregate type (by default, every registered type is looked at).
        #[arg(long = "type", value_name = "TYPE")]
        aggregate_type: Option<String>,
    },
}

/// The admin command line as a program of its own.
#[derive(Parser, Debug)]
#[command(about = "Operates the event, snapshot and subscription stores")]
struct AdminCli {
    #[command(flatten)]
    args: AdminArgs,
}

/// Why an admin command did not finish.
///
/// Its text is safe to print on a terminal: the control characters of the names it quotes
/// (a name given on the command line, or read from a store that another program wrote) are
/// escaped, `\n` for a newline, `\u{1b}` for an escape.
#[derive(Debug)]
#[non_exhaustive]
pub enum AdminError {
    /// The library refused or failed.
    Library(Error),
    /// The output could not be written.
    Output(std::io::Error),
    /// The command was refused before it changed anything: an unknown name, a missing
    /// confirmation, a consumer still running. The names in it are escaped.
    Refused(String),
}

impl std::fmt::Display for AdminError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            AdminError::Library(e) => e.to_string(),
            AdminError::Output(e) => format!("cannot write the output: {e}"),
            AdminError::Refused(why) => why.clone(),
        };
        f.write_str(&escape(&text))
    }
}

impl std::error::Error for AdminError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // The library's error stands for itself, as its own text is the message.
            AdminError::Library(e) => e.source(),
            AdminError::Output(e) => Some(e),
            AdminError::Refused(_) => None,
        }
    }
}

impl From<Error> for AdminError {
    fn from(e: Error) -> Self {
        AdminError::Library(e)
    }
}

impl From<std::io::Error> for AdminError {
    fn from(e: std::io::Error) -> Self {
        AdminError::Output(e)
    }
}

/// How a command that finished came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// All is well.
    Clean,
    /// A check found something: a snapshot that drifted from its history, a stream that
    /// could not be warmed.
    Findings,
}

impl Outcome {
    fn exit_code(self) -> ExitCode {
        match self {
            Outcome::Clean => ExitCode::SUCCESS,
            Outcome::Findings => ExitCode::from(1),
        }
    }
}

type OpenProjection = dyn Fn(&Stores) -> crate::Result<Arc<Projection>> + Send + Sync;
type OpenHolder = dyn Fn(&Stores) -> crate::Result<Arc<dyn PersonalDataHolder>> + Send + Sync;

/// The admin command line of an application: its registered aggregate types, and the
/// projections and holders of personal data it names.
#[derive(Default)]
pub struct Admin {
    projections: Vec<Box<OpenProjection>>,
    holders: Vec<Box<OpenHolder>>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("projections", &self.projections.len())
            .field("holders", &self.holders.len())
            .finish()
    }
}

impl Admin {
    /// The command line, knowing every registered aggregate type and no projection yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Names a projection, built on the stores the command line opens, so that
    /// `projections rebuild` and `reset` can run it. Subscriptions and projections not named
    /// are still listed, from their store.
    #[must_use]
    pub fn projection(
        mut self,
        open: impl Fn(&Stores) -> crate::Result<Arc<Projection>> + Send + Sync + 'static,
    ) -> Self {
        self.projections.push(Box::new(open));
        self
    }

    /// Names a place that keeps copies of personal values (a read model, a cache), built on
    /// the stores the command line opens, so that `forget` erases them too and reads it
    /// again (see [`crate::erasure`]).
    #[must_use]
    pub fn holder(
        mut self,
        open: impl Fn(&Stores) -> crate::Result<Arc<dyn PersonalDataHolder>> + Send + Sync + 'static,
    ) -> Self {
        self.holders.push(Box::new(open));
        self
    }

    /// Parses `args` (the program's name first) and runs the command: the whole program of
    /// an admin binary, `Admin::new().main_from(std::env::args_os()).await`.
    ///
    /// # Cancel safety
    ///
    /// The commands commit as they go, each step on its own: dropped, what was committed
    /// stays, and the command run again goes on (`projections rebuild --resume` from the last
    /// batch, `snapshots rewarm` past the streams already warm).
    pub async fn main_from<I, T>(&self, args: I) -> ExitCode
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        match AdminCli::try_parse_from(args) {
            Ok(cli) => self.run(cli.args).await,
            Err(e) => {
                let _ = e.print();
                ExitCode::from(if e.use_stderr() { 2 } else { 0 })
            }
        }
    }

    /// Runs the command, printing to the standard output and errors to the standard error;
    /// returns the exit status.
    ///
    /// # Cancel safety
    ///
    /// The commands commit as they go, each step on its own: dropped, what was committed
    /// stays, and the command run again goes on (`projections rebuild --resume` from the last
    /// batch, `snapshots rewarm` past the streams already warm).
    pub async fn run(&self, args: AdminArgs) -> ExitCode {
        let mut stdout = std::io::stdout();
        match self.run_with(args, &mut stdout).await {
            Ok(outcome) => outcome.exit_code(),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        }
    }

    /// Runs the command, writing its report to `out`.
    ///
    /// # Errors
    ///
    /// [`AdminError::Library`] if the library refused or failed, [`AdminError::Output`] if the
    /// report could not be written, [`AdminError::Refused`] for a command refused before it
    /// changed anything. A check that found something is no error but
    /// [`Outcome::Findings`].
    ///
    /// # Cancel safety
    ///
    /// The commands commit as they go, each step on its own: dropped, what was committed
    /// stays, and the command run again goes on (`projections rebuild --resume` from the last
    /// batch, `snapshots rewarm` past the streams already warm).
    pub async fn run_with(
        &self,
        args: AdminArgs,
        out: &mut (dyn Write + Send),
    ) -> Result<Outcome, AdminError> {
        let stores = crate::backend::open(&args.url).await?;
        if args.migrate {
            stores.migrate().await?;
        }
        let mut out = Output::new(out, args.json);
        match args.command {
            AdminCommand::Stats { aggregate_type } => {
                let projections = self.open_projections(&stores)?;
                stats::run(&stores, aggregate_type.as_deref(), &projections, &mut out).await
            }
            AdminCommand::Snapshots(command) => snapshots::run(&stores, command, &mut out).await,
            AdminCommand::Projections(command) => {
                let projections = self.open_projections(&stores)?;
                projections::run(&stores, &projections, command, &mut out).await
            }
            AdminCommand::Events(command) => events::run(&stores, command, &mut out).await,
            AdminCommand::Migrate { print_sql, apply } => {
                migrate::run(&stores, print_sql, apply, &mut out).await
            }
            AdminCommand::Deadletters(command) => {
                let projections = self.open_projections(&stores)?;
                deadletters::run(&stores, &projections, command, &mut out).await
            }
            AdminCommand::Copy { to, show, yes } => copy::run(&stores, &to, show, yes, &mut out).await,
            AdminCommand::Doctor { max_replay, max_lag } => {
                doctor::run(&stores, doctor::Limits { max_replay, max_lag }, &mut out).await
            }
            AdminCommand::Streams(command) => streams::run(&stores, command, &mut out).await,
            AdminCommand::Forget { subject, settle, yes } => {
                let holders = self
                    .holders
                    .iter()
                    .map(|open| open(&stores))
                    .collect::<crate::Result<Vec<_>>>()?;
                let settle = std::time::Duration::from_secs(settle);
                forget::run(&stores, holders, subject, settle, yes, &mut out).await
            }
        }
    }

    fn open_projections(&self, stores: &Stores) -> Result<Vec<Arc<Projection>>, AdminError> {
        Ok(self
            .projections
            .iter()
            .map(|open| open(stores))
            .collect::<crate::Result<_>>()?)
    }
}

/// The registration of the aggregate type named `name`, or a refusal that lists the known ones.
fn registered(name: &str) -> Result<&'static AggregateRegistration, AdminError> {
    registry::aggregate(name).ok_or_else(|| {
        let mut known: Vec<&str> = registry::aggregates().map(|a| a.name).collect();
        known.sort_unstable();
        known.dedup();
        AdminError::Refused(format!(
            "no aggregate type `{}` is registered in this program (registered: {})",
            escape(name),
            listing(known)
        ))
    })
}

/// Names for a message, escaped, separated by commas; `none` for no name.
fn listing<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<_> = names.into_iter().map(escape).collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// Every registered aggregate type, by name, the newer schema of a name only.
fn every_registered() -> Vec<&'static AggregateRegistration> {
    let mut names: Vec<&str> = registry::aggregates().map(|a| a.name).collect();
    names.sort_unstable();
    names.dedup();
    names.into_iter().filter_map(registry::aggregate).collect()
}
