//! `tlab backdoorbench`: BackdoorBench's CIFAR-10 setting from the command line.

use std::path::PathBuf;
use transferlab::benchmark::{backdoorbench, BackdoorBenchConfig, BenchAttack};
use transferlab::report::Outcome;
use transferlab::train::LrSchedule;
use transferlab::{Error, Result};

pub struct Args {
    pub out: PathBuf,
    pub model: String,
    pub epochs: usize,
    pub train_per_class: Option<usize>,
    pub test_per_class: Option<usize>,
    pub attacks: String,
    pub defences: String,
    pub status: bool,
    pub device: String,
}

pub fn run(a: Args) -> Result<()> {
    let mut cfg = BackdoorBenchConfig {
        out_dir: a.out.clone(),
        model: a.model,
        train_per_class: a.train_per_class,
        test_per_class: a.test_per_class,
        device: transferlab::runtime::parse_device(&a.device)?,
        ..BackdoorBenchConfig::default()
    };
    cfg.train.epochs = a.epochs;
    if let LrSchedule::Cosine { epochs, .. } = &mut cfg.train.schedule {
        *epochs = a.epochs as f64;
    }
    cfg.attacks = a
        .attacks
        .split(',')
        .map(|n| match n.trim() {
            "badnets" => Ok(BenchAttack::badnets()),
            "blended" => Ok(BenchAttack::blended()),
            "sig" => Ok(BenchAttack::sig()),
            "ftrojan" => Ok(BenchAttack::ftrojan()),
            "clean" => Ok(BenchAttack::clean()),
            other => Err(Error::invalid("attack", format!("{other:?}; use badnets, blended, sig, ftrojan or clean"))),
        })
        .collect::<Result<_>>()?;
    let wanted: Vec<&str> = a.defences.split(',').map(str::trim).filter(|d| !d.is_empty()).collect();
    if let Some(bad) = wanted.iter().find(|d| !["ft", "fp", "nc", "abl"].contains(d)) {
        return Err(Error::invalid("defence", format!("{bad:?}; use ft, fp, nc or abl")));
    }
    cfg.defences.retain(|d| wanted.contains(&d.name()));
    let result = if a.status { backdoorbench::status(&cfg)? } else { backdoorbench::run(&cfg)? };
    println!("{}", result.to_dataframe()?);
    println!("table: {0}/table.parquet, {0}/table.csv; figure: {0}/figure.png", a.out.display());
    Ok(())
}
