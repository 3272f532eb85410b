//! `tlab`: scripted runs of transferlab from the command line.

mod backdoorbench;
mod demo;
mod grid;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use transferlab::attacks::{evaluate_backdoor, metrics_table, poison, Placement, PoisonConfig, TargetMode, Trigger};
use transferlab::data::transforms::Augment;
use transferlab::models::InputNorm;
use transferlab::runtime::parse_device;
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
    /// Train a model, optionally on poisoned data (BadNets or Blended).
    Train {
        #[command(flatten)]
        data: DataArgs,
        /// Registry name (see `tlab models`).
        #[arg(long, default_value = "convnet")]
        model: String,
        /// Input normalisation inside the model: cifar10, imagenet or MEANS/STDS
        /// (e.g. 0.5,0.5,0.5/0.25,0.25,0.25); data and triggers stay in [0, 1].
        #[arg(long)]
        normalize: Option<String>,
        /// Random crop (padding 4) and horizontal flip while training.
        #[arg(long)]
        augment: bool,
        /// cpu, cuda, cuda:N or auto.
        #[arg(long, default_value = "cpu")]
        device: String,
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
        /// Fraction of the training set poisoned with the trigger (0 trains clean).
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
    /// Evaluate weights: clean accuracy, and CA/ASR/RA when --triggered. Our own weights carry
    /// their model; a foreign .pth/.safetensors needs --model (and --normalize if it was
    /// trained on normalised inputs).
    Eval {
        #[command(flatten)]
        data: DataArgs,
        #[arg(long)]
        weights: PathBuf,
        /// Registry name of the architecture, for weights that do not carry a transferlab spec.
        #[arg(long)]
        model: Option<String>,
        /// Input normalisation the weights were trained with (cifar10, imagenet, MEANS/STDS).
        #[arg(long)]
        normalize: Option<String>,
        /// Drop wrapper prefixes from tensor names: `module.` (DataParallel) and a leading
        /// `N.` (an nn.Sequential wrapper such as `Sequential(Normalize, net)`).
        #[arg(long)]
        unwrap_sequential: bool,
        #[command(flatten)]
        attack: AttackArgs,
        /// Measure ASR/RA for the trigger as well.
        #[arg(long)]
        triggered: bool,
        /// cpu, cuda, cuda:N or auto.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// BackdoorBench's CIFAR-10 setting: BadNets and Blended against FT, FP, NC, CLP, FST and ABL
    /// (resumable; writes table.parquet, table.csv, figure.png, asr_heatmap.png and ca_vs_asr.png
    /// under --out).
    Backdoorbench {
        #[arg(long, default_value = "runs/backdoorbench")]
        out: PathBuf,
        /// Registry name of the victim.
        #[arg(long, default_value = "resnet20")]
        model: String,
        /// Training epochs of each attacked model.
        #[arg(long, default_value_t = 20)]
        epochs: usize,
        /// Use only this many training / test images per class (all by default).
        #[arg(long)]
        train_per_class: Option<usize>,
        #[arg(long)]
        test_per_class: Option<usize>,
        /// Only these attacks (comma-separated: badnets, blended, sig, ftrojan, wanet, bpp, lc, blind, lf, clean).
        #[arg(long, default_value = "badnets,blended")]
        attacks: String,
        /// Only these defences (comma-separated: ft, fp, nc, clp, fst, abl; also ft-sam, nad, rnp, anp, i-bau, sau, strip, spectral, ac).
        #[arg(long, default_value = "ft,fp,nc,clp,fst,abl")]
        defences: String,
        /// One grid per seed (comma-separated).
        #[arg(long, default_value = "0")]
        seeds: String,
        /// Print the table as it stands without running anything.
        #[arg(long)]
        status: bool,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// An attacks x defences x seeds grid from a spec file (JSON), on this machine or as a
    /// Slurm job array: run, submit, status, collect.
    Grid {
        #[command(subcommand)]
        command: grid::GridCommand,
    },
}

#[derive(clap::Args)]
struct DataArgs {
    /// digits, synthetic, idx:IMAGES,LABELS, cifar10:FILES, cifar100:FILES, folder:DIR,
    /// parquet:FILE, or hub:ID (a hub dataset such as hub:uoft-cs/cifar10, its train and test
    /// splits; --test-fraction is ignored).
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
    /// badnets (a square patch), blended (a noise pattern blended into the whole image), sig (a
    /// sinusoid, clean-label), ftrojan (DCT coefficients in the chrominance of 32x32 blocks),
    /// wanet (a smooth warp) or bpp (dithered 3-bit colour depth).
    #[arg(long, default_value = "badnets")]
    attack: String,
    /// Side of the BadNets patch.
    #[arg(long, default_value_t = 3)]
    trigger_size: usize,
    /// Where the patch goes: bottom-right, bottom-left, top-right, top-left, four-corners, random.
    #[arg(long, default_value = "bottom-right")]
    trigger_placement: String,
    /// What the patch looks like: white or checkerboard.
    #[arg(long, default_value = "white")]
    trigger_pattern: String,
    /// Blended's mixing weight of the pattern.
    #[arg(long, default_value_t = 0.2)]
    blend_alpha: f32,
    /// Target class of the all-to-one attack.
    #[arg(long, default_value_t = 0)]
    target: u32,
}

impl AttackArgs {
    fn trigger(&self) -> Result<Trigger> {
        match self.attack.as_str() {
            "blended" => Ok(Trigger::blend_noise(0, self.blend_alpha)),
            "sig" => Ok(Trigger::sig()),
            "ftrojan" => Ok(Trigger::ftrojan()),
            "wanet" => Ok(Trigger::wanet()),
            "bpp" => Ok(Trigger::bpp()),
            "badnets" => {
                let base = match self.trigger_pattern.as_str() {
                    "white" => Trigger::badnets(self.trigger_size),
                    "checkerboard" => Trigger::checkerboard(self.trigger_size),
                    other => return Err(transferlab::Error::invalid("trigger pattern", format!("{other:?}; use white or checkerboard"))),
                };
                let placement = match self.trigger_placement.as_str() {
                    "bottom-right" => Placement::BottomRight,
                    "bottom-left" => Placement::BottomLeft,
                    "top-right" => Placement::TopRight,
                    "top-left" => Placement::TopLeft,
                    "random" => Placement::Random,
                    "four-corners" => Placement::FourCorners,
                    other => {
                        return Err(transferlab::Error::invalid(
                            "trigger placement",
                            format!("{other:?}; use bottom-right, bottom-left, top-right, top-left, four-corners or random"),
                        ))
                    }
                };
                Ok(base.at(placement))
            }
            other => Err(transferlab::Error::invalid("attack", format!("{other:?}; use badnets, blended, sig, ftrojan, wanet or bpp"))),
        }
    }

    /// SIG poisons only target-class images and keeps their labels.
    fn clean_label(&self) -> bool {
        self.attack == "sig"
    }
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
    if let Some(id) = args.data.strip_prefix("hub:") {
        let hub = transferlab::hub::Hub::from_env();
        let load = |split: &str| transferlab::hub::load_dataset(&hub, &transferlab::hub::DatasetRequest::new(id, split));
        return Ok((load("train")?, load("test")?));
    }
    let data = DataSource::parse(&args.data)?.load()?;
    if args.test_fraction == 0.0 {
        return Ok((data.clone(), data));
    }
    data.split(1.0 - args.test_fraction, args.split_seed, true)
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Demo { out } => demo::run(&out),
        Command::Grid { command } => grid::run(command),
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
        Command::Train { data, model, normalize, augment, device, epochs, batch_size, lr, optimizer, seed, attack, poison_rate, checkpoint, out, table } => {
            let device = parse_device(&device)?;
            let trigger = attack.trigger()?;
            let (train_set, test_set) = split(&data)?;
            let poisoned = if poison_rate > 0.0 {
                let cfg = PoisonConfig {
                    trigger: trigger.clone(),
                    seed,
                    clean_label: attack.clean_label(),
                    ..PoisonConfig::badnets(attack.trigger_size, poison_rate, attack.target)
                };
                poison(&train_set, &cfg)?
            } else {
                train_set
            };
            let spec = with_normalization(ModelSpec::named(&model, poisoned.shape, poisoned.num_classes())?, normalize.as_deref())?;
            let mut net = Network::new(&spec, seed, &device)?;
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
                augment: if augment { Augment::cifar() } else { Augment::none() },
                ..TrainConfig::default()
            };
            let history = train(&mut net, &poisoned, Some(&test_set), &cfg)?;
            println!("{}", history.to_dataframe()?);
            net.save(&out)?;
            let target = TargetMode::AllToOne { target: attack.target };
            let m = evaluate_backdoor(&net, &test_set, &trigger, &target, seed)?;
            let df = metrics_table(&[(model.clone(), m)])?;
            println!("{df}");
            if let Some(t) = table {
                save_table(&df, &t)?;
            }
            println!("weights written to {}", out.display());
            Ok(())
        }
        Command::Eval { data, weights, model, normalize, unwrap_sequential, attack, triggered, device } => {
            let device = parse_device(&device)?;
            let (_, test_set) = split(&data)?;
            let net = match model {
                None if normalize.is_none() && !unwrap_sequential => Network::from_file(&weights, &device).map_err(|e| {
                    transferlab::Error::invalid(
                        "weights",
                        format!("{e}. Weights that transferlab did not save carry no model: give --model NAME (and --normalize if the model was trained on normalised inputs)"),
                    )
                })?,
                None => {
                    return Err(transferlab::Error::invalid(
                        "eval",
                        "--normalize and --unwrap-sequential apply to foreign weights: give --model NAME too",
                    ))
                }
                Some(name) => {
                    let spec = with_normalization(ModelSpec::named(&name, test_set.shape, test_set.num_classes())?, normalize.as_deref())?;
                    Network::from_foreign(&weights, &spec, &device, unwrap_sequential).map_err(|e| match e {
                        transferlab::Error::WeightMismatch(m) if !unwrap_sequential => {
                            transferlab::Error::WeightMismatch(format!("{m} (wrapped in an nn.Sequential? try --unwrap-sequential)"))
                        }
                        other => other,
                    })?
                }
            };
            if triggered {
                let target = TargetMode::AllToOne { target: attack.target };
                let m = evaluate_backdoor(&net, &test_set, &attack.trigger()?, &target, 0)?;
                println!("{}", metrics_table(&[(weights.display().to_string(), m)])?);
            } else {
                let ca = transferlab::train::accuracy(&net, &test_set)?;
                println!("clean accuracy {:.2}% on {} samples", 100.0 * ca, test_set.len());
            }
            Ok(())
        }
        Command::Backdoorbench { out, model, epochs, train_per_class, test_per_class, attacks, defences, status, device, seeds } => {
            backdoorbench::run(backdoorbench::Args { out, model, epochs, train_per_class, test_per_class, attacks, defences, status, device, seeds })
        }
    }
}

fn with_normalization(spec: ModelSpec, normalize: Option<&str>) -> Result<ModelSpec> {
    match normalize {
        Some(n) => spec.normalized(InputNorm::parse(n)?),
        None => Ok(spec),
    }
}
