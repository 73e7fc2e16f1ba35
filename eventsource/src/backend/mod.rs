//! Store backends: in-memory (always), SQLite (`sqlite` feature), PostgreSQL (`postgres`
//! feature), and [`open`] to pick one from a URL at run time.

pub mod durability;
pub mod memory;
pub mod migration;
mod param;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod sql_read_model;
#[cfg(feature = "sqlite")]
pub mod sqlite;
mod url;

#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use sql_read_model::{SqlProjection, SqlReadModel, SqlReads, SqlValue, SqlWrites};
pub use url::{open, Stores};
