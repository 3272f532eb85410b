//! `tlab backdoorbench`: BackdoorBench's CIFAR-10 setting from the command line.

use std::path::PathBuf;
use transferlab::benchmark::{backdoorbench, BackdoorBenchConfig, BenchAttack, BenchDefence};
use transferlab::report::Outcome;
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
    pub seeds: String,
}

pub fn run(a: Args) -> Result<()> {
    let mut cfg = BackdoorBenchConfig {
        out_dir: a.out.clone(),
        model: a.model,
        train_per_class: a.train_per_class,
        test_per_class: a.test_per_class,
        device: transferlab::runtime::parse_device(&a.device)?,
        seeds: a
            .seeds
            .split(',')
            .map(|x| x.trim().parse::<u64>().map_err(|_| Error::invalid("seeds", format!("{x:?} is not a seed; give comma-separated integers, e.g. 0,1,2"))))
            .collect::<Result<_>>()?,
        ..BackdoorBenchConfig::default()
    };
    cfg = cfg.with_epochs(a.epochs);
    cfg.attacks = a.attacks.split(',').map(|n| BenchAttack::by_name(n.trim())).collect::<Result<_>>()?;
    cfg.defences = a.defences.split(',').map(str::trim).filter(|d| !d.is_empty()).map(BenchDefence::by_name).collect::<Result<_>>()?;
    let result = if a.status { backdoorbench::status(&cfg)? } else { backdoorbench::run(&cfg)? };
    println!("{}", result.to_dataframe()?);
    println!("table: {0}/table.parquet, {0}/table.csv; figures: {0}/figure.png, {0}/asr_heatmap.png, {0}/ca_vs_asr.png", a.out.display());
    Ok(())
}
