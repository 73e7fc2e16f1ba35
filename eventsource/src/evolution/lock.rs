//! The schema lock: every registered state's and event's serialized shape with its version,
//! as a text file a project checks in.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::de::DeserializeOwned;

use super::shape::{self, Traced};
use crate::aggregate::Aggregate;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::personal::PersonalField;
use crate::registry;

/// How a line of an event's entry that names a personal field begins.
const PERSONAL_LINE: &str = "personal ";

const HEADER: &str =
    "# eventsourcing-kit schema lock: the serialized shape of every aggregate state and event, with its version.
# A test compares it with the program (eventsourcing_kit::testing::check_schema_lock); after a deliberate
# change, rewrite it with EVENTSOURCE_SCHEMA_LOCK=overwrite and review the diff like code.";

/// Whether an entry is an aggregate's state or an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// An aggregate's state, versioned by its `schema_version`.
    State,
    /// An event, versioned by its `version`.
    Event,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::State => "aggregate",
            Kind::Event => "event",
        }
    }

    fn version_key(self) -> &'static str {
        match self {
            Kind::State => "schema_version",
            Kind::Event => "version",
        }
    }
}

/// The serialized shapes of a program's states and events, each with its version.
///
/// [`of_program`](Self::of_program) traces every type the registry lists;
/// [`differences`](Self::differences) compares two locks, and [`Display`](fmt::Display) /
/// [`parse`](Self::parse) are the checked-in text. A shape is traced from the type's serde
/// impl ([`shape::trace`]); a type that cannot be traced is recorded with the reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchemaLock {
    entries: BTreeMap<(Kind, String, u32), Vec<String>>,
}

impl SchemaLock {
    /// An empty lock.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every aggregate state and event type registered in this program.
    pub fn of_program() -> Self {
        let mut lock = Self::new();
        for aggregate in registry::aggregates() {
            lock.insert(
                Kind::State,
                aggregate.name.to_owned(),
                aggregate.schema_version,
                (aggregate.shape)(),
            );
        }
        for event in registry::events() {
            lock.insert(
                Kind::Event,
                format!("{}.{}", event.aggregate_type, event.event_type),
                event.event_version,
                (event.shape)(),
            );
            lock.mark_personal(
                event.aggregate_type,
                event.event_type,
                event.event_version,
                event.personal,
            );
        }
        lock
    }

    /// This lock with the state of `A`.
    #[must_use]
    pub fn with_aggregate<A: Aggregate>(self) -> Self {
        self.with_state::<A>(A::TYPE_NAME, A::SCHEMA_VERSION)
    }

    /// This lock with `T` as the state of aggregate type `name` at `schema_version`: the
    /// shape a state would have, to compare versions of a type side by side.
    #[must_use]
    pub fn with_state<T: DeserializeOwned>(mut self, name: &str, schema_version: u32) -> Self {
        self.insert(Kind::State, name.to_owned(), schema_version, shape::trace::<T>());
        self
    }

    /// This lock with the event `E`.
    #[must_use]
    pub fn with_event<E: Event>(mut self) -> Self {
        let name = format!("{}.{}", E::AGGREGATE_TYPE, E::EVENT_TYPE);
        self.insert(Kind::Event, name, E::EVENT_VERSION, shape::trace::<E>());
        self.mark_personal(E::AGGREGATE_TYPE, E::EVENT_TYPE, E::EVENT_VERSION, E::PERSONAL);
        self
    }

    /// Adds to an event's entry a line per personal field: `personal FIELD = subject FIELD`.
    fn mark_personal(
        &mut self,
        aggregate_type: &str,
        event_type: &str,
        version: u32,
        fields: &[PersonalField],
    ) {
        let key = (Kind::Event, format!("{aggregate_type}.{event_type}"), version);
        if let Some(lines) = self.entries.get_mut(&key) {
            lines.extend(
                fields
                    .iter()
                    .map(|f| format!("{PERSONAL_LINE}{} = subject {}", f.field, f.subject)),
            );
        }
    }

    fn insert(
        &mut self,
        kind: Kind,
        name: String,
        version: u32,
        traced: std::result::Result<Traced, String>,
    ) {
        let lines = match traced {
            Ok(traced) => traced.lines(),
            Err(reason) => vec![format!("untraceable: {}", reason.replace('\n', " "))],
        };
        self.entries.insert((kind, name, version), lines);
    }

    /// The entries whose shape could not be traced, with why: the lock does not check them.
    pub fn untraceable(&self) -> Vec<(String, String)> {
        self.entries
            .iter()
            .filter_map(|((kind, name, version), lines)| {
                let reason = lines.first()?.strip_prefix("untraceable: ")?;
                Some((
                    format!("{} {name} {} {version}", kind.word(), kind.version_key()),
                    reason.to_owned(),
                ))
            })
            .collect()
    }

    /// Reads a lock from its text; a line it does not understand is [`Error::InvalidInput`].
    pub fn parse(text: &str) -> Result<Self> {
        let mut lock = Self::new();
        let mut current: Option<&mut Vec<String>> = None;
        for (number, line) in text.lines().enumerate() {
            let bad =
                |why: &str| Error::InvalidInput(format!("schema lock line {}: {why}: {line}", number + 1));
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(body) = line.strip_prefix("    ") {
                current
                    .as_mut()
                    .ok_or_else(|| bad("a shape before any entry"))?
                    .push(body.to_owned());
                continue;
            }
            let words: Vec<&str> = line.split(' ').collect();
            let (kind, name, version) = match words.as_slice() {
                ["aggregate", name, "schema_version", version] => (Kind::State, name, version),
                ["event", name, "version", version] => (Kind::Event, name, version),
                _ => {
                    return Err(bad(
                        "expected `aggregate NAME schema_version N` or `event AGGREGATE.NAME version N`",
                    ))
                }
            };
            let version = version.parse().map_err(|_| bad("the version is not a number"))?;
            let key = (kind, (*name).to_owned(), version);
            if lock.entries.contains_key(&key) {
                return Err(bad("the entry is given twice"));
            }
            current = Some(lock.entries.entry(key).or_default());
        }
        Ok(lock)
    }

    /// What differs between this lock (the program) and `locked` (the checked-in file),
    /// each named as a person would fix it; empty if they agree.
    pub fn differences(&self, locked: &SchemaLock) -> Vec<LockDifference> {
        let mut differences = Vec::new();
        let names: BTreeSet<(Kind, &str)> = self
            .entries
            .keys()
            .chain(locked.entries.keys())
            .map(|(kind, name, _)| (*kind, name.as_str()))
            .collect();
        for (kind, name) in names {
            let versions = |lock: &SchemaLock| -> BTreeMap<u32, Vec<String>> {
                lock.entries
                    .iter()
                    .filter(|((k, n, _), _)| *k == kind && n == name)
                    .map(|((_, _, version), lines)| (*version, lines.clone()))
                    .collect()
            };
            let (now, before) = (versions(self), versions(locked));
            // A version gone from the program is taken as bumped to the lowest new one.
            let gone: Vec<u32> = before.keys().filter(|v| !now.contains_key(v)).copied().collect();
            let mut replaced = None;
            for (version, lines) in &now {
                match before.get(version) {
                    Some(locked_lines) if locked_lines == lines => {}
                    Some(locked_lines) => differences.push(LockDifference::ShapeChanged {
                        kind,
                        name: name.to_owned(),
                        version: *version,
                        changes: changes(locked_lines, lines),
                    }),
                    None => match gone.iter().rev().find(|v| *v < version) {
                        Some(&from) if replaced.is_none() => {
                            replaced = Some(from);
                            differences.push(LockDifference::VersionChanged {
                                kind,
                                name: name.to_owned(),
                                from,
                                to: *version,
                                changes: changes(&before[&from], lines),
                            });
                        }
                        _ => differences.push(LockDifference::Added {
                            kind,
                            name: name.to_owned(),
                            version: *version,
                        }),
                    },
                }
            }
            for version in gone.into_iter().filter(|v| Some(*v) != replaced) {
                differences.push(LockDifference::Removed {
                    kind,
                    name: name.to_owned(),
                    version,
                });
            }
        }
        differences
    }
}

impl fmt::Display for SchemaLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{HEADER}")?;
        for ((kind, name, version), lines) in &self.entries {
            writeln!(f)?;
            writeln!(f, "{} {name} {} {version}", kind.word(), kind.version_key())?;
            for line in lines {
                writeln!(f, "    {line}")?;
            }
        }
        Ok(())
    }
}

/// One way a program's shapes differ from its lock.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockDifference {
    /// The shape changed and the version did not: the forgotten bump. Snapshots of the old
    /// shape would load as the new one (or not at all), stored events likewise.
    ShapeChanged {
        /// State or event.
        kind: Kind,
        /// The aggregate type, or `Aggregate.Event`.
        name: String,
        /// The version both have.
        version: u32,
        /// What changed, one line each (``gained field `count: u64` ``).
        changes: Vec<String>,
    },
    /// The version changed (a deliberate bump) and the lock has not been rewritten yet.
    VersionChanged {
        /// State or event.
        kind: Kind,
        /// The aggregate type, or `Aggregate.Event`.
        name: String,
        /// The version in the lock.
        from: u32,
        /// The version in the program.
        to: u32,
        /// What changed with it.
        changes: Vec<String>,
    },
    /// A type the lock does not have yet.
    Added {
        /// State or event.
        kind: Kind,
        /// The aggregate type, or `Aggregate.Event`.
        name: String,
        /// Its version.
        version: u32,
    },
    /// A type in the lock that the program no longer has.
    Removed {
        /// State or event.
        kind: Kind,
        /// The aggregate type, or `Aggregate.Event`.
        name: String,
        /// Its version in the lock.
        version: u32,
    },
}

impl LockDifference {
    /// Whether this is a shape changed without its version: a mistake to fix in the code,
    /// not in the lock.
    pub fn is_forgotten_bump(&self) -> bool {
        matches!(self, LockDifference::ShapeChanged { .. })
    }
}

fn subject(kind: Kind, name: &str) -> String {
    match kind {
        Kind::State => format!("the `{name}` state"),
        Kind::Event => format!("the event `{name}`"),
    }
}

impl fmt::Display for LockDifference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockDifference::ShapeChanged {
                kind,
                name,
                version,
                changes,
            } => {
                let fix = match kind {
                    Kind::State => format!(
                        "bump #[aggregate(schema_version = {})] (with a migrate(...) step only if the new state follows from the old one alone)",
                        version + 1
                    ),
                    Kind::Event => format!(
                        "bump #[event(version = {})] and add an upcast from version {version} (or, if every stored \
                         event still decodes to the right value, as with a new optional field, rewrite the lock)",
                        version + 1
                    ),
                };
                write!(
                    f,
                    "{} {} but `{}` is still {version}: {fix}",
                    subject(*kind, name),
                    changes.join(", "),
                    kind.version_key()
                )
            }
            LockDifference::VersionChanged {
                kind,
                name,
                from,
                to,
                changes,
            } => {
                let what = if changes.is_empty() {
                    "with the same shape".to_owned()
                } else {
                    format!("and {}", changes.join(", "))
                };
                write!(
                    f,
                    "{} went from `{}` {from} to {to} {what}; the lock is not rewritten yet",
                    subject(*kind, name),
                    kind.version_key()
                )
            }
            LockDifference::Added { kind, name, version } => write!(
                f,
                "{} (`{}` {version}) is not in the lock yet",
                subject(*kind, name),
                kind.version_key()
            ),
            LockDifference::Removed { kind, name, version } => write!(
                f,
                "{} (`{}` {version}) is in the lock but not in the program",
                subject(*kind, name),
                kind.version_key()
            ),
        }
    }
}

/// What changed from one shape to another, as a person would say it.
fn changes(before: &[String], after: &[String]) -> Vec<String> {
    let split = |lines: &[String]| -> BTreeMap<String, String> {
        lines
            .iter()
            .map(|line| match line.split_once(" = ") {
                Some((name, shape)) => (name.to_owned(), shape.to_owned()),
                None => (String::new(), line.clone()),
            })
            .collect()
    };
    let (old, new) = (split(before), split(after));
    let root = after
        .first()
        .and_then(|line| line.split_once(" = "))
        .map(|(name, _)| name);
    let mut said = Vec::new();
    for (name, shape) in &new {
        if let Some(field) = name.strip_prefix(PERSONAL_LINE) {
            match old.get(name) {
                Some(was) if was == shape => {}
                Some(was) => said.push(format!(
                    "changed the subject of personal field `{field}` from `{}` to `{}`",
                    was.trim_start_matches("subject "),
                    shape.trim_start_matches("subject ")
                )),
                None => said.push(format!(
                    "made field `{field}` personal, of the subject in `{}`",
                    shape.trim_start_matches("subject ")
                )),
            }
            continue;
        }
        match old.get(name) {
            Some(was) if was == shape => {}
            Some(was) => said.extend(container_changes(name, Some(name.as_str()) == root, was, shape)),
            None => said.push(format!("gained the type `{name} = {shape}`")),
        }
    }
    for name in old.keys().filter(|name| !new.contains_key(*name)) {
        match name.strip_prefix(PERSONAL_LINE) {
            Some(field) => said.push(format!("made field `{field}` no longer personal")),
            None => said.push(format!("lost the type `{name}`")),
        }
    }
    said
}

fn container_changes(name: &str, is_root: bool, was: &str, now: &str) -> Vec<String> {
    let (Some(old), Some(new)) = (struct_fields(was), struct_fields(now)) else {
        return vec![format!("changed `{name}` from `{was}` to `{now}`")];
    };
    let of = |field: &str| {
        if is_root || name.is_empty() {
            format!("`{field}`")
        } else {
            format!("`{field}` (in `{name}`)")
        }
    };
    let mut said = Vec::new();
    for (field, format) in &new {
        match old.iter().find(|(f, _)| f == field) {
            None => said.push(format!("gained field {}", of(&format!("{field}: {format}")))),
            Some((_, was)) if was != format => {
                said.push(format!("changed field {} from {was} to {format}", of(field)))
            }
            Some(_) => {}
        }
    }
    for (field, format) in &old {
        if !new.iter().any(|(f, _)| f == field) {
            said.push(format!("lost field {}", of(&format!("{field}: {format}"))));
        }
    }
    if said.is_empty() {
        said.push(format!("reordered the fields of `{name}`"));
    }
    said
}

/// The fields of `struct { a: T, b: U }`, split at top-level commas.
fn struct_fields(shape: &str) -> Option<Vec<(String, String)>> {
    if shape == "struct {}" {
        return Some(Vec::new());
    }
    let inner = shape.strip_prefix("struct { ")?.strip_suffix(" }")?;
    let (mut fields, mut depth, mut start) = (Vec::new(), 0i32, 0);
    let bytes = inner.as_bytes();
    for (i, &byte) in bytes.iter().enumerate() {
        match byte {
            b'<' | b'(' | b'{' => depth += 1,
            b'>' | b')' | b'}' => depth -= 1,
            b',' if depth == 0 => {
                fields.push(&inner[start..i]);
                start = i + 2;
            }
            _ => {}
        }
    }
    fields.push(&inner[start.min(inner.len())..]);
    fields
        .into_iter()
        .map(|field| field.split_once(": ").map(|(n, f)| (n.to_owned(), f.to_owned())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    mod v1 {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        pub struct Account {
            owner: String,
            balance: f64,
        }
    }

    mod v2 {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        pub struct Account {
            owner: String,
            balance: f64,
            transaction_count: u64,
        }
    }

    use v1::Account as V1;
    use v2::Account as V2;

    #[test]
    fn a_shape_changed_without_its_version_is_named_as_the_forgotten_bump() {
        let locked = SchemaLock::new().with_state::<V1>("Account", 1);
        let program = SchemaLock::new().with_state::<V2>("Account", 1);
        let differences = program.differences(&locked);
        assert_eq!(differences.len(), 1);
        assert!(differences[0].is_forgotten_bump());
        assert_eq!(
            differences[0].to_string(),
            "the `Account` state gained field `transaction_count: u64` but `schema_version` is still 1: bump #[aggregate(schema_version = 2)] (with a migrate(...) step \
             only if the new state follows from the old one alone)"
        );
    }

    #[test]
    fn a_bump_is_a_version_change_and_the_text_reads_back() {
        let locked = SchemaLock::new().with_state::<V1>("Account", 1);
        let program = SchemaLock::new().with_state::<V2>("Account", 2);
        let differences = program.differences(&locked);
        assert_eq!(differences.len(), 1, "{differences:?}");
        assert!(matches!(
            differences[0],
            LockDifference::VersionChanged { from: 1, to: 2, .. }
        ));
        assert_eq!(SchemaLock::parse(&program.to_string()).unwrap(), program);
        assert!(program.differences(&program).is_empty());
        assert!(SchemaLock::parse("aggregate Account schema_version x").is_err());
    }
}
