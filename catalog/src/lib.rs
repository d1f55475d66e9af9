//! The atelier catalogue: Parquet files under one object-store prefix.
//!
//! Everything that knows what a catalogue looks like lives here: the column
//! contract (`schema`), addressing by URL (`store`), fetching
//! image URLs from a shop's CDN (`http`), reading from footers and
//! streaming row groups (`reader`), writing with bounded row groups
//! (`writer`), output prefixes (`output`), and the three ways a catalogue
//! comes to be: `synthetic`, `import` and, for checking one, `inspect`. The
//! modules are private; what other crates use is re-exported here.

mod checkpoint_commit;
mod error;
mod http;
mod import;
mod inspect;
mod item;
mod object_reader;
mod ordered_pool;
mod output;
mod reader;
mod schema;
mod sniff;
mod store;
mod synthetic;
mod tag_output;
mod writer;

pub use checkpoint_commit::{commit_checkpoint, CHECKPOINT_MANIFEST, CHECKPOINT_METRICS};
pub use error::{CatalogError, Result};
pub use http::{Fetched, HttpFetcher, HttpLimits};
pub use import::{import, BadRow, ColumnMapping, ImportOptions, ImportSummary};
pub use inspect::{inspect, FileReport, InspectReport, LabelDistribution, SampleRow};
pub use item::{stable_hash, CatalogItem, Labels};
pub use object_reader::ObjectFileReader;
pub use ordered_pool::{OrderedPool, WorkerPanic};
pub use output::prepare_output;
pub use reader::{is_hidden, Catalog, CatalogFile, ReadRange};
pub use schema::{is_id_type, FileColumns, CAPTION, IMAGE, IMAGE_URI, ITEM_ID, LABEL_COLUMNS};
pub use sniff::ImageFormat;
pub use store::{StoreCache, StoreLocation};
pub use synthetic::{encode_jpeg, generate, render_item, GenerateOptions, GenerateSummary};
pub use tag_output::{
    part_name, seal_tag_output, ManifestPart, TagManifest, SUCCESS, TAG_MANIFEST,
};
pub use writer::{
    CatalogWriter, WriterOptions, WrittenFile, DEFAULT_GROUPS_PER_FILE, DEFAULT_ROWS_PER_GROUP,
};
