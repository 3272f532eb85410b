//! The embedded font. Headless machines (CI, notebook servers) have no system fonts, so the
//! figures carry DejaVu Sans (Bitstream Vera licence, see fonts/DejaVuSans-LICENSE.txt).
//!
//! plotters keeps registered fonts in a process-wide table. evcxr links a fresh copy of that
//! table into every cell, so the font is registered again before every drawing rather than
//! once at start-up.

use crate::error::{Error, Result};

/// The font family name figures use.
pub const FAMILY: &str = "sans-serif";

static DEJAVU_SANS: &[u8] = include_bytes!("fonts/DejaVuSans.ttf");

/// Make the embedded font available to plotters (cheap; call before drawing).
pub fn ensure_registered() -> Result<()> {
    plotters::style::register_font(FAMILY, plotters::style::FontStyle::Normal, DEJAVU_SANS)
        .map_err(|_| Error::Figure("the embedded font could not be parsed".into()))
}
