//! plotters renders text with fonts we hand it; DejaVu Sans comes from the
//! system (Debian's fonts-dejavu-core, installed by scripts/setup.sh).

use anyhow::Context;
use plotters::style::{register_font, FontStyle};

const CANDIDATES: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

pub fn register() -> anyhow::Result<()> {
    let path = std::env::var("ATELIER_FONT")
        .ok()
        .or_else(|| {
            CANDIDATES
                .iter()
                .find(|p| std::path::Path::new(p).exists())
                .map(|p| p.to_string())
        })
        .context(
            "no font for the charts: install fonts-dejavu-core or set ATELIER_FONT to a .ttf file",
        )?;
    let bytes = std::fs::read(&path).with_context(|| format!("reading font {path}"))?;
    // plotters keeps fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{path} is not a usable font"))?;
    Ok(())
}
