//! `atelier similar`: the products that look most like one product, from a
//! tag output written with `--embeddings`.

use atelier_worker::similar;
use clap::Args;
use tokio::runtime::Handle;

#[derive(Debug, Args)]
pub struct SimilarArgs {
    /// The tag output (its prefix), tagged with --embeddings.
    #[arg(long)]
    pub tags: String,
    /// The product to find neighbours of (its item_id).
    #[arg(long)]
    pub item: String,
    /// How many neighbours.
    #[arg(short, long, default_value_t = 10)]
    pub k: usize,
}

pub fn run(args: &SimilarArgs, handle: &Handle) -> anyhow::Result<()> {
    let neighbours = similar(&args.tags, &args.item, args.k, handle)?;
    println!("{:>4}  {:>10}  item_id", "rank", "similarity");
    for (rank, neighbour) in neighbours.iter().enumerate() {
        println!(
            "{:>4}  {:>10.4}  {}",
            rank + 1,
            neighbour.similarity,
            neighbour.item_id
        );
    }
    Ok(())
}
