//! The atelier catalogue: Parquet files under one object-store prefix.
//!
//! Everything that knows what a catalogue looks like lives here: the column
//! contract ([`schema`]), addressing by URL ([`store`]), reading from footers and
//! streaming row groups ([`reader`]), writing with bounded row groups ([`writer`]),
//! and the three ways a catalogue comes to be: [`synthetic`], [`import`] and, for
//! checking one, [`inspect`].

pub mod error;
pub mod import;
pub mod inspect;
pub mod item;
mod object_reader;
pub mod ordered_pool;
pub mod reader;
pub mod schema;
pub mod sniff;
pub mod store;
pub mod synthetic;
pub mod writer;

pub use error::{CatalogError, Result};
pub use item::{stable_hash, CatalogItem, Labels};
pub use reader::{Catalog, CatalogFile, ReadRange};
pub use store::StoreLocation;
pub use writer::{CatalogWriter, WriterOptions};
