//! `tlab demo`: the main job on the embedded digits, offline. A clean and a BadNets-poisoned
//! ConvNet; their CA/ASR/RA as a table; a bar chart of the metrics and a grid of poisoned
//! training samples.

use std::path::Path;
use std::time::Instant;
use transferlab::attacks::{evaluate_backdoor, metrics_table, poison, PoisonConfig};
use transferlab::data::digits;
use transferlab::models::{ModelSpec, Network};
use transferlab::report::{save_table, BarChart, Chart, Figure, ImageGrid};
use transferlab::train::{train, LrSchedule, OptimizerConfig, TrainConfig};
use transferlab::Result;

pub fn run(out: &Path) -> Result<()> {
    let started = Instant::now();
    let data = digits()?;
    let (train_set, test_set) = data.split(0.8, 0, true)?;
    println!("digits: {} training and {} test images of {:?}", train_set.len(), test_set.len(), train_set.shape);

    let attack = PoisonConfig::badnets(3, 0.10, 0);
    let poisoned = poison(&train_set, &attack)?;
    let spec = ModelSpec::named("convnet", train_set.shape, 10)?;
    let cfg = TrainConfig {
        epochs: 15,
        batch_size: 64,
        optimizer: OptimizerConfig::sgd_momentum(),
        schedule: LrSchedule::Cosine { lr: 0.05, min_lr: 0.0, epochs: 15.0 },
        ..TrainConfig::default()
    };

    let mut rows = Vec::new();
    for (name, set) in [("clean", &train_set), ("badnets 10%", &poisoned)] {
        println!("training the {name} model");
        let mut net = Network::new(&spec, 0, &candle_core::Device::Cpu)?;
        train(&mut net, set, None, &cfg)?;
        let m = evaluate_backdoor(&net, &test_set, &attack.trigger, &attack.target, 0)?;
        rows.push((name.to_string(), m));
    }
    let table = metrics_table(&rows)?;
    println!("{table}");
    save_table(&table, out.join("demo_metrics.csv"))?;

    let chart = BarChart::new("BadNets on digits (ConvNet, 3x3 patch, 10% poisoned)", "rate (%)", vec!["CA".into(), "ASR".into()])
        .y_range(0.0, 105.0);
    let chart = rows.iter().fold(chart, |c, (name, m)| {
        c.series(name, vec![100.0 * m.clean_accuracy, 100.0 * m.attack_success_rate])
    });
    let fig = Figure::new(Chart::Bars(chart));
    fig.save(out.join("demo_metrics.png"))?;
    fig.save(out.join("demo_metrics.svg"))?;

    let flags = poisoned.poisoned_flags();
    let shown: Vec<usize> = (0..poisoned.len()).filter(|&i| flags[i]).take(8).collect();
    let mut grid = ImageGrid::new("Poisoned training samples (relabelled to 0)", poisoned.shape, 8);
    for &i in &shown {
        grid = grid.image(train_set.image(i).to_vec(), &format!("clean {}", train_set.labels[i]));
    }
    for &i in &shown {
        grid = grid.image(poisoned.image(i).to_vec(), &format!("-> {}", poisoned.labels[i]));
    }
    Figure::new(Chart::Grid(grid)).with_size(900, 300).save(out.join("demo_samples.png"))?;
    println!(
        "wrote {} and {} ({:.1} s)",
        out.join("demo_metrics.png").display(),
        out.join("demo_samples.png").display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
