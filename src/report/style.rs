//! One style for every figure: palette, font sizes, margins.

use plotters::style::RGBColor;

/// A colour-blind-safe palette used in series order: Okabe-Ito's eight, then four of Paul
/// Tol's muted colours (wine, olive, indigo, grey) so that up to twelve series stay apart.
pub const PALETTE: [RGBColor; 12] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(240, 228, 66),
    RGBColor(0, 0, 0),
    RGBColor(136, 34, 85),
    RGBColor(153, 153, 51),
    RGBColor(51, 34, 136),
    RGBColor(150, 150, 150),
];

/// The colour of series `i`.
pub fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

pub const TITLE_SIZE: u32 = 26;
pub const LABEL_SIZE: u32 = 20;
pub const TICK_SIZE: u32 = 16;
pub const MARGIN: u32 = 16;
