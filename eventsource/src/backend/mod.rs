//! Store backends: in-memory (always), SQLite (`sqlite` feature), PostgreSQL (`postgres`
//! feature), a [sharded] store over several of them, and [`open`] to pick one from a
//! URL at run time.

pub mod durability;
pub mod memory;
pub mod migration;
mod param;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod sharded;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod sql_read_model;
#[cfg(feature = "sqlite")]
pub mod sqlite;
mod url;

#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use sql_read_model::{SqlProjection, SqlReadModel, SqlReads, SqlValue, SqlWrites};
pub use url::{open, Stores};
