//! Figures: a description of what to draw, rendered on demand to PNG (inline display) or SVG
//! (publication), at a consistent size and style.

use super::charts::{draw, Chart};
use super::font;
use crate::error::{Error, Result};
use crate::fsutil;
use plotters::prelude::*;
use std::path::Path;

/// Default publication size in pixels.
pub const DEFAULT_SIZE: (u32, u32) = (800, 500);

/// A figure: a chart and its size. Cheap to clone; rendering happens when it is saved or shown.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    pub chart: Chart,
    pub size: (u32, u32),
}

/// A picture grid shown as a figure, without giving the grid up (a notebook cell can be run
/// again): `Figure::from(&grid).with_size(900, 300)`.
impl From<&super::charts::ImageGrid> for Figure {
    fn from(grid: &super::charts::ImageGrid) -> Self {
        Figure::new(Chart::Grid(grid.clone()))
    }
}

impl Figure {
    /// A figure of the default size.
    pub fn new(chart: Chart) -> Self {
        Self { chart, size: DEFAULT_SIZE }
    }

    /// The same figure at another size.
    pub fn with_size(mut self, width: u32, height: u32) -> Self {
        self.size = (width, height);
        self
    }

    /// Render to an RGB pixel buffer.
    pub fn render_rgb(&self) -> Result<Vec<u8>> {
        font::ensure_registered()?;
        let (w, h) = self.size;
        let mut buf = vec![255u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            draw(&self.chart, &root)?;
            root.present().map_err(|e| Error::Figure(e.to_string()))?;
        }
        Ok(buf)
    }

    /// Render to PNG bytes.
    pub fn to_png(&self) -> Result<Vec<u8>> {
        let rgb = self.render_rgb()?;
        let (w, h) = self.size;
        let img = image::RgbImage::from_raw(w, h, rgb).ok_or_else(|| Error::Figure("pixel buffer size".into()))?;
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).map_err(|e| Error::Figure(e.to_string()))?;
        Ok(out.into_inner())
    }

    /// Render to an SVG document.
    pub fn to_svg(&self) -> Result<String> {
        font::ensure_registered()?;
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, self.size).into_drawing_area();
            draw(&self.chart, &root)?;
            root.present().map_err(|e| Error::Figure(e.to_string()))?;
        }
        Ok(svg)
    }

    /// Save as PNG or SVG by the file extension, atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        match path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()) {
            Some(e) if e == "png" => fsutil::write_bytes_atomic(path, &self.to_png()?),
            Some(e) if e == "svg" => fsutil::write_bytes_atomic(path, self.to_svg()?.as_bytes()),
            _ => Err(Error::invalid(
                "figure path",
                format!("{}: use a .png or .svg extension", path.display()),
            )),
        }
    }
}
