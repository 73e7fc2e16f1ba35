//! Store backends: in-memory (always), SQLite (`sqlite` feature), PostgreSQL (`postgres`
//! feature), and [`open`] to pick one from a URL at run time.

pub mod memory;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod param;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;
mod url;

pub use url::{open, Stores};
