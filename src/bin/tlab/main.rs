//! `tlab`: scripted runs of transferlab from the command line.

mod demo;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use transferlab::attacks::{evaluate_backdoor, metrics_table, poison, PoisonConfig, TargetMode, Trigger};
use transferlab::data::DataSource;
use transferlab::models::{ModelSpec, Network, MODEL_NAMES};
use transferlab::report::save_table;
use transferlab::train::{train, LrSchedule, OptimizerConfig, TrainConfig};
use transferlab::weights::describe_weights;
use transferlab::Result;

#[derive(Parser)]
#[command(name = "tlab", version, about = "transferlab: what a trained model carries with it")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a ConvNet on the embedded digits, clean and BadNets-poisoned; print CA/ASR and write figures.
    Demo {
        /// Where tables and figures go.
        #[arg(long, default_value = "figures")]
        out: PathBuf,
    },
    /// List the tensors of a weights file (safetensors or PyTorch .pth).
    Info { file: PathBuf },
    /// List the model registry (our architectures and the pretrained hub models).
    Models,
    /// Serve local folders as a Hugging Face hub on 127.0.0.1 (tests, notebooks, cache
    /// interop checks): prints the endpoint (for HF_ENDPOINT) and serves until killed.
    ServeHub {
        /// A model repository: ID=DIR (every file under DIR).
        #[arg(long)]
        model: Vec<String>,
        /// A dataset repository: ID=DIR.
        #[arg(long)]
        dataset: Vec<String>,
    },
    /// Download a hub model or dataset into the Hugging Face cache (HF_HOME), for offline use.
    /// Datasets: `datasets/ORG/NAME` or a known id (ylecun/mnist, uoft-cs/cifar10, ...).
    Fetch {
        id: String,
        /// Only this split of a dataset (train, test, ...); all splits by default.
        #[arg(long)]
        split: Option<String>,
    },
    /// Train a model, optionally on BadNets-poisoned data.
    Train {
        #[command(flatten)]
        data: DataArgs,
        /// Registry name (see `tlab models`).
        #[arg(long, default_value = "convnet")]
        model: String,
        #[arg(long, default_value_t = 20)]
        epochs: usize,
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
        /// Peak learning rate (cosine-annealed).
        #[arg(long, default_value_t = 0.05)]
        lr: f64,
        /// sgd (momentum 0.9, weight decay 5e-4) or adamw.
        #[arg(long, default_value = "sgd")]
        optimizer: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[command(flatten)]
        attack: AttackArgs,
        /// Fraction of the BadNets-poisoned training set (0 trains clean).
        #[arg(long, default_value_t = 0.0)]
        poison_rate: f64,
        /// Checkpoint after each epoch and resume from it.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Where the trained weights go (safetensors).
        #[arg(long)]
        out: PathBuf,
        /// Also save the CA/ASR/RA table here (.csv or .parquet).
        #[arg(long)]
        table: Option<PathBuf>,
    },
    /// Evaluate saved weights: clean accuracy, and ASR/RA when a trigger is given.
    Eval {
        #[command(flatten)]
        data: DataArgs,
        #[arg(long)]
        weights: PathBuf,
        #[command(flatten)]
        attack: AttackArgs,
        /// Measure ASR/RA for the BadNets trigger as well.
        #[arg(long)]
        triggered: bool,
    },
}

#[derive(clap::Args)]
struct DataArgs {
    /// digits, synthetic, idx:IMAGES,LABELS, cifar10:FILES, cifar100:FILES, folder:DIR, parquet:FILE.
    #[arg(long, default_value = "digits")]
    data: String,
    /// Hold out this fraction (stratified, seeded) as the test split; 0 uses all data.
    #[arg(long, default_value_t = 0.2)]
    test_fraction: f64,
    /// Seed of the split.
    #[arg(long, default_value_t = 0)]
    split_seed: u64,
}

#[derive(clap::Args)]
struct AttackArgs {
    /// Side of the BadNets square trigger (bottom-right, white).
    #[arg(long, default_value_t = 3)]
    trigger_size: usize,
    /// Target class of the all-to-one attack.
    #[arg(long, default_value_t = 0)]
    target: u32,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn split(args: &DataArgs) -> Result<(transferlab::data::Dataset, transferlab::data::Dataset)> {
    let data = DataSource::parse(&args.data)?.load()?;
    if args.test_fraction == 0.0 {
        return Ok((data.clone(), data));
    }
    data.split(1.0 - args.test_fraction, args.split_seed, true)
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Demo { out } => demo::run(&out),
        Command::Models => {
            for (name, what) in MODEL_NAMES {
                println!("{name:18} {what}");
            }
            println!("\npretrained (hub ids, `tlab fetch ID`):");
            for e in transferlab::hub::ModelRegistry::builtin().entries() {
                println!("{:36} {}", e.name, e.about);
            }
            println!("\ndatasets (hub ids):");
            for (id, what) in transferlab::hub::HUB_DATASETS {
                println!("{id:36} {what}");
            }
            Ok(())
        }
        Command::ServeHub { model, dataset } => {
            let server = transferlab::hub::LoopbackHub::start()?;
            for (kind, specs) in [(transferlab::hub::RepoKind::Model, model), (transferlab::hub::RepoKind::Dataset, dataset)] {
                for spec in specs {
                    let (id, dir) = spec.split_once('=').ok_or_else(|| {
                        transferlab::Error::invalid("repository", format!("{spec:?}; use ID=DIR, e.g. org/tiny=./tiny"))
                    })?;
                    server.add_dir(kind, id, std::path::Path::new(dir))?;
                }
            }
            println!("{}", server.endpoint());
            use std::io::Write;
            std::io::stdout().flush().ok();
            loop {
                std::thread::park();
            }
        }
        Command::Fetch { id, split } => {
            let hub = transferlab::hub::Hub::from_env();
            let paths = transferlab::hub::fetch(&hub, &id, split.as_deref())?;
            for p in &paths {
                println!("{}", p.display());
            }
            println!("{} files of {id} in {}", paths.len(), hub.config.cache_dir.display());
            Ok(())
        }
        Command::Info { file } => {
            let (format, tensors) = describe_weights(&file)?;
            let total: usize = tensors.iter().map(|t| t.shape.iter().product::<usize>()).sum();
            println!("{} ({format:?}): {} tensors, {total} values", file.display(), tensors.len());
            for t in tensors {
                println!("  {:60} {:>6} {:?}", t.name, t.dtype.as_str(), t.shape);
            }
            Ok(())
        }
        Command::Train { data, model, epochs, batch_size, lr, optimizer, seed, attack, poison_rate, checkpoint, out, table } => {
            let (train_set, test_set) = split(&data)?;
            let poisoned = if poison_rate > 0.0 {
                let mut cfg = PoisonConfig::badnets(attack.trigger_size, poison_rate, attack.target);
                cfg.seed = seed;
                poison(&train_set, &cfg)?
            } else {
                train_set
            };
            let spec = ModelSpec::named(&model, poisoned.shape, poisoned.num_classes())?;
            let mut net = Network::new(&spec, seed, &candle_core::Device::Cpu)?;
            let optimizer = match optimizer.as_str() {
                "sgd" => OptimizerConfig::sgd_momentum(),
                "adamw" => OptimizerConfig::adamw(),
                other => return Err(transferlab::Error::invalid("optimizer", format!("{other:?}; use sgd or adamw"))),
            };
            let cfg = TrainConfig {
                epochs,
                batch_size,
                optimizer,
                schedule: LrSchedule::Cosine { lr, min_lr: 0.0, epochs: epochs as f64 },
                seed,
                checkpoint,
                ..TrainConfig::default()
            };
            let history = train(&mut net, &poisoned, Some(&test_set), &cfg)?;
            println!("{}", history.to_dataframe()?);
            net.save(&out)?;
            let target = TargetMode::AllToOne { target: attack.target };
            let m = evaluate_backdoor(&net, &test_set, &Trigger::badnets(attack.trigger_size), &target, seed)?;
            let df = metrics_table(&[(model.clone(), m)])?;
            println!("{df}");
            if let Some(t) = table {
                save_table(&df, &t)?;
            }
            println!("weights written to {}", out.display());
            Ok(())
        }
        Command::Eval { data, weights, attack, triggered } => {
            let (_, test_set) = split(&data)?;
            let net = Network::from_file(&weights, &candle_core::Device::Cpu)?;
            if triggered {
                let target = TargetMode::AllToOne { target: attack.target };
                let m = evaluate_backdoor(&net, &test_set, &Trigger::badnets(attack.trigger_size), &target, 0)?;
                println!("{}", metrics_table(&[(weights.display().to_string(), m)])?);
            } else {
                let ca = transferlab::train::accuracy(&net, &test_set)?;
                println!("clean accuracy {:.2}% on {} samples", 100.0 * ca, test_set.len());
            }
            Ok(())
        }
    }
}
