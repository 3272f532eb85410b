//! Tables and figures: formats, atomic saving, rendering without system fonts.

use polars::prelude::*;
use transferlab::report::*;

#[test]
fn tables_round_trip_as_csv_and_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let df = df!("run" => ["a", "b"], "asr" => [0.5, 0.25]).unwrap();
    for name in ["t.csv", "t.parquet"] {
        let p = dir.path().join(name);
        save_table(&df, &p).unwrap();
        assert!(load_table(&p).unwrap().equals(&df), "{name}");
    }
    assert!(save_table(&df, dir.path().join("t.xlsx")).unwrap_err().to_string().contains(".parquet or .csv"));
    std::fs::write(dir.path().join("bad.parquet"), b"PAR1 truncated").unwrap();
    assert!(load_table(dir.path().join("bad.parquet")).unwrap_err().to_string().contains("bad.parquet"));
}

#[test]
fn figures_render_to_png_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    let bars = Figure::new(Chart::Bars(
        BarChart::new("CA and ASR", "rate (%)", vec!["CA".into(), "ASR".into()])
            .series("clean", vec![99.0, 1.0])
            .series_with_error("badnets", vec![98.0, 100.0], vec![0.5, 0.0]),
    ));
    let png = dir.path().join("bars.png");
    bars.save(&png).unwrap();
    let img = image::open(&png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), DEFAULT_SIZE);
    // Something besides the white background was drawn.
    assert!(img.pixels().filter(|p| p.0 != [255, 255, 255]).count() > 10_000);
    let svg = dir.path().join("bars.svg");
    bars.save(&svg).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("<svg") && text.contains("CA and ASR"));

    let lines = Figure::new(Chart::Lines(LineChart::new("ASR vs epoch", "epoch", "ASR").series("badnets", vec![(1.0, 0.2), (2.0, 0.9)])));
    lines.save(dir.path().join("lines.png")).unwrap();
    let grid = Figure::new(Chart::Grid(ImageGrid::new("samples", (1, 4, 4), 2).image(vec![0.5; 16], "a").image(vec![1.0; 16], "b")));
    grid.save(dir.path().join("grid.png")).unwrap();
    assert!(grid.save(dir.path().join("grid.pdf")).unwrap_err().to_string().contains(".png or .svg"));
}

#[test]
fn malformed_charts_are_errors_not_panics() {
    let bad = Figure::new(Chart::Bars(BarChart::new("x", "y", vec!["a".into()]).series("s", vec![1.0, 2.0])));
    assert!(bad.to_png().unwrap_err().to_string().contains("one value per category"));
    let empty = Figure::new(Chart::Grid(ImageGrid::new("x", (2, 4, 4), 2).image(vec![0.0; 32], "a")));
    assert!(empty.to_png().is_err());
}

#[test]
fn an_interrupted_sweep_resumes_without_redoing_finished_rows() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sweep.jsonl");
    let configs = grid(&[("rate", vec![0.01.into(), 0.05.into(), 0.1.into()]), ("seed", vec![0.into(), 1.into()])]);
    let sweep = Sweep::new(&log);
    let mut calls = Vec::new();
    // The fourth run fails, as a killed process would.
    let err = sweep.run(&configs, |c| {
        calls.push(c.clone());
        if calls.len() == 4 {
            return Err(transferlab::Error::invalid("test", "interrupted"));
        }
        Ok(vec![("asr".into(), c["rate"].as_f64().unwrap() * 10.0)])
    });
    assert!(err.is_err());
    // A kill in the middle of an append leaves a cut-off line; it must be ignored and redone.
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut f, b"{\"rate\":0.05,\"se").unwrap();
    drop(f);
    let mut second = Vec::new();
    let df = sweep
        .run(&configs, |c| {
            second.push(c.clone());
            Ok(vec![("asr".into(), c["rate"].as_f64().unwrap() * 10.0)])
        })
        .unwrap();
    assert_eq!(second.len(), 3, "finished rows were recomputed: {second:?}");
    assert_eq!(second[0], configs[3]);
    assert_eq!(df.height(), 6);
    let names: Vec<&str> = df.get_column_names().iter().map(|s| s.as_str()).collect();
    assert_eq!(names, ["rate", "seed", "asr"]);
    assert_eq!(df.column("asr").unwrap().f64().unwrap().get(5), Some(1.0));
    // Everything is logged now: a third run computes nothing.
    let again = sweep.run(&configs, |_| panic!("recomputed")).unwrap();
    assert!(again.equals(&df));
    // The cut-off line is gone: one record per line.
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.lines().count(), 6);
    assert!(text.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()), "{text}");
    // A damaged line in the middle is an error that names it, never silently dropped rows.
    let mut lines: Vec<&str> = text.lines().collect();
    lines[2] = "{\"rate\": 0.1, garbage";
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let e = sweep.run(&configs, |_| panic!("recomputed")).unwrap_err().to_string();
    assert!(e.contains("line 3 of") && e.contains("not a sweep record"), "{e}");
}

#[test]
fn scatter_fits_a_line_and_heatmaps_check_their_shape() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, r) = transferlab::report::charts::fit_line(&[(1.0, 2.0), (2.0, 2.9), (3.0, 4.2), (4.0, 4.9)]).unwrap();
    assert!((b - 1.0).abs() < 0.1 && (a - 1.0).abs() < 0.2 && r > 0.99, "{a} {b} {r}");
    assert!(transferlab::report::charts::fit_line(&[(1.0, 2.0), (1.0, 3.0)]).is_none());
    let scatter = Figure::new(Chart::Scatter(
        ScatterChart::new("transfer vs source", "source accuracy", "transfer accuracy", vec![(0.7, 0.6), (0.8, 0.72), (0.9, 0.8)])
            .labels(vec!["a".into(), "b".into(), "c".into()]),
    ));
    scatter.save(dir.path().join("scatter.png")).unwrap();
    let svg = scatter.to_svg().unwrap();
    assert!(svg.contains("r = 0.99"), "the fitted r is not in the legend");
    let heat = Figure::new(Chart::Heatmap(Heatmap::new("influence", vec!["c0".into(), "c1".into()], vec!["t0".into(), "t1".into(), "t2".into()], vec![0.1, -0.2, 0.3, 0.0, 0.5, -0.4])));
    heat.save(dir.path().join("heat.png")).unwrap();
    // NaN is a missing cell (drawn grey, "?"); a heatmap with nothing present is an error.
    let missing = Figure::new(Chart::Heatmap(Heatmap::new("pending", vec!["a".into()], vec!["b".into(), "c".into()], vec![0.5, f64::NAN])));
    assert!(missing.to_png().unwrap().len() > 1000);
    let noted = Figure::new(Chart::Heatmap(Heatmap::new("plan", vec!["a".into()], vec!["b".into(), "c".into()], vec![0.5, f64::NAN]).note(0, 1, "n/a")));
    assert!(noted.to_png().unwrap().len() > 1000);
    // A note names a missing cell, inside the grid.
    for (r, c) in [(0, 0), (0, 2), (1, 1)] {
        let wrong = Figure::new(Chart::Heatmap(Heatmap::new("plan", vec!["a".into()], vec!["b".into(), "c".into()], vec![0.5, f64::NAN]).note(r, c, "n/a")));
        assert!(wrong.to_png().unwrap_err().to_string().contains("must name a missing (NaN) cell"), "({r}, {c})");
    }
    let nothing = Figure::new(Chart::Heatmap(Heatmap::new("pending", vec!["a".into()], vec!["b".into()], vec![f64::NAN])));
    assert!(nothing.to_png().is_err());
    let bad = Figure::new(Chart::Heatmap(Heatmap::new("bad", vec!["a".into()], vec!["b".into()], vec![1.0, 2.0])));
    assert!(bad.to_png().unwrap_err().to_string().contains("needs 1 values"));
}
