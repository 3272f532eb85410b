//! Image grids: datasets, triggers, poisoned samples, recovered masks.

use super::fig_err;
use crate::error::{Error, Result};
use crate::report::font::FAMILY;
use crate::report::style::{MARGIN, TICK_SIZE, TITLE_SIZE};
use plotters::coord::Shift;
use plotters::prelude::*;

/// Images (CHW, values in [0, 1]; 1 or 3 channels) laid out in rows, each with a caption.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageGrid {
    pub title: String,
    pub shape: (usize, usize, usize),
    pub images: Vec<Vec<f32>>,
    pub captions: Vec<String>,
    pub columns: usize,
}

impl ImageGrid {
    /// A grid of `images` of `shape` in `columns` columns.
    pub fn new(title: &str, shape: (usize, usize, usize), columns: usize) -> Self {
        Self { title: title.into(), shape, images: Vec::new(), captions: Vec::new(), columns: columns.max(1) }
    }

    /// Add an image with its caption.
    pub fn image(mut self, pixels: Vec<f32>, caption: &str) -> Self {
        self.images.push(pixels);
        self.captions.push(caption.into());
        self
    }
}

pub(super) fn draw<DB: DrawingBackend>(g: &ImageGrid, area: &DrawingArea<DB, Shift>) -> Result<()> {
    let (c, h, w) = g.shape;
    if g.images.is_empty() {
        return Err(Error::Figure("an image grid needs at least one image".into()));
    }
    if c != 1 && c != 3 {
        return Err(Error::Figure(format!("images must have 1 or 3 channels, not {c}")));
    }
    if let Some(bad) = g.images.iter().position(|im| im.len() != c * h * w) {
        return Err(Error::Figure(format!("image {bad} does not have shape {:?}", g.shape)));
    }
    let area = area
        .titled(&g.title, (FAMILY, TITLE_SIZE))
        .map_err(fig_err)?
        .margin(MARGIN, MARGIN, MARGIN, MARGIN);
    let rows = g.images.len().div_ceil(g.columns);
    let cells = area.split_evenly((rows, g.columns));
    for (i, cell) in cells.iter().enumerate().take(g.images.len()) {
        let (cw, ch) = cell.dim_in_pixel();
        let caption_h = TICK_SIZE as i32 + 6;
        let side = ((cw as i32 - 4).min(ch as i32 - caption_h - 4)).max(1);
        let scale = side as f64 / h.max(w) as f64;
        let x0 = (cw as i32 - (w as f64 * scale) as i32) / 2;
        let img = &g.images[i];
        for y in 0..h {
            for x in 0..w {
                let px = |ch: usize| (img[(ch * h + y) * w + x].clamp(0.0, 1.0) * 255.0).round() as u8;
                let col = if c == 1 { RGBColor(px(0), px(0), px(0)) } else { RGBColor(px(0), px(1), px(2)) };
                let a = (x0 + (x as f64 * scale) as i32, 2 + (y as f64 * scale) as i32);
                let b = (x0 + ((x + 1) as f64 * scale) as i32, 2 + ((y + 1) as f64 * scale) as i32);
                cell.draw(&Rectangle::new([a, b], col.filled())).map_err(fig_err)?;
            }
        }
        let style = TextStyle::from((FAMILY, TICK_SIZE).into_font()).pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Center,
        ));
        let caption_y = 2 + side + caption_h / 2 + 2;
        cell.draw(&Text::new(g.captions[i].clone(), (cw as i32 / 2, caption_y), style)).map_err(fig_err)?;
    }
    Ok(())
}
