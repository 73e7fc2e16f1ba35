//! What a migration of the stores' tables would do, before it does it: the pending steps and
//! the SQL they run, for a review by the people who keep the database, or for a team's own
//! migration tool ([`Stores::migration_plan`](crate::backend::Stores::migration_plan), `admin
//! migrate --print-sql`).

use serde::Serialize;

/// The layout of a store's tables, the steps that would bring it to this library's, and the
/// SQL script that applies them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MigrationPlan {
    /// The last step applied to the tables (0 for none).
    pub applied: i64,
    /// The layout this version of the library reads and writes.
    pub latest: i64,
    /// The steps to apply, in order.
    pub pending: Vec<PendingStep>,
    /// The statements a migration runs now, in order, in one transaction (its `BEGIN` and
    /// `COMMIT` included), each step recorded in the record of migrations as it is applied.
    /// The script is for tables of layout [`applied`](Self::applied): made again for tables
    /// of another layout, since run on tables with a step recorded already it fails on that
    /// step's record and rolls back.
    pub script: Vec<String>,
}

/// One step of a [`MigrationPlan`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PendingStep {
    /// Its number.
    pub version: i64,
    /// What it does.
    pub description: &'static str,
}

impl MigrationPlan {
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn new(applied: i64, latest: i64, pending: Vec<PendingStep>, script: Vec<String>) -> Self {
        MigrationPlan {
            applied,
            latest,
            pending,
            script,
        }
    }

    /// Whether the tables have this library's layout already.
    pub fn is_current(&self) -> bool {
        self.pending.is_empty()
    }

    /// The script as one text, each statement ended by `;` and a blank line: what
    /// `admin migrate --print-sql` prints, and what `psql -f` or a migration tool runs.
    pub fn sql(&self) -> String {
        let mut sql = String::new();
        for statement in &self.script {
            sql.push_str(statement.trim());
            sql.push_str(";\n\n");
        }
        sql
    }
}

impl PendingStep {
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn new(version: i64, description: &'static str) -> Self {
        PendingStep { version, description }
    }
}
