//! `medsam demo`: pretrained LiteMedSAM on a real MRI when its assets are present (fetched by
//! `scripts/fetch_demo_assets.sh`), then the whole workflow on a generated CT phantom, no downloads.

mod real;
mod workflow;

use super::common::show;
use medsam::pipeline::eval::format_table;
use medsam::pipeline::train::TrainEvent;
use medsam::Result;
use std::path::PathBuf;
use workflow::{run, DemoConfig, DemoEvent};

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Where everything is written.
    #[arg(long, default_value = "demo-out")]
    pub out: PathBuf,
    /// Optimizer steps of the training stage.
    #[arg(long = "max-steps", default_value_t = 3000)]
    pub max_steps: usize,
    #[arg(long = "train-cases", default_value_t = 30)]
    pub train_cases: usize,
    #[arg(long = "test-cases", default_value_t = 2)]
    pub test_cases: usize,
    #[arg(long, default_value_t = 2023)]
    pub seed: u64,
    /// Directory with lite_medsam.pth, ch2.nii.gz and ch2bet.nii.gz for the real-scan stage.
    #[arg(long, default_value = "assets")]
    pub assets: PathBuf,
    /// Only the real-scan stage (pretrained LiteMedSAM on the Colin27 MRI).
    #[arg(long = "real-only")]
    pub real_only: bool,
    /// Axial slices scored in the real-scan stage.
    #[arg(long = "real-slices", default_value_t = 5)]
    pub real_slices: usize,
}

/// The real-scan stage when its assets are present; one line on how to get them otherwise
/// (an error with `--real-only`).
fn run_real(a: &DemoArgs, t0: std::time::Instant) -> Result<()> {
    use real::{find_assets, format_table, RealConfig, FETCH_HINT};
    let Some(assets) = find_assets(&a.assets) else {
        if a.real_only {
            return Err(medsam::Error::arg(
                "--real-only",
                format!(
                    "assets missing under {}; get them with: {FETCH_HINT}",
                    show(&a.assets)
                ),
            ));
        }
        println!(
            "real-scan stage skipped (assets missing under {}): {FETCH_HINT}",
            show(&a.assets)
        );
        return Ok(());
    };
    println!(
        "[{:>5.1}s] real scan: pretrained LiteMedSAM ({}) on {}, brain box prompts",
        t0.elapsed().as_secs_f64(),
        show(&assets.weights),
        show(&assets.scan)
    );
    let cfg = RealConfig {
        assets,
        out_dir: a.out.clone(),
        slices: a.real_slices,
        margin: 5,
    };
    let r = real::run(&cfg, &mut |_, _| {})?;
    println!(
        "\nLiteMedSAM on Colin27 T1 ({}×{}×{}), brain mask = ch2bet > 0:\n{}",
        r.shape[2],
        r.shape[1],
        r.shape[0],
        format_table(&r)
    );
    println!(
        "real-scan figure:     {}\nreal-scan stage {:.1} s (loading {:.1} s)\n",
        show(&r.figure),
        r.seconds,
        r.load_seconds
    );
    Ok(())
}

pub fn run_demo(a: &DemoArgs) -> Result<()> {
    let cfg = DemoConfig {
        out_dir: a.out.clone(),
        max_steps: a.max_steps,
        train_cases: a.train_cases,
        test_cases: a.test_cases,
        seed: a.seed,
        ..DemoConfig::default()
    };
    let t0 = std::time::Instant::now();
    run_real(a, t0)?;
    if a.real_only {
        return Ok(());
    }
    let bar = indicatif::ProgressBar::new(cfg.max_steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("  train [{bar:30}] {pos}/{len} {msg} ({per_sec})")
            .expect("template"),
    );
    bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    let mut on = |e: DemoEvent| match e {
        DemoEvent::Stage(s) => {
            bar.finish_and_clear();
            println!("[{:>5.1}s] {s}", t0.elapsed().as_secs_f64());
        }
        DemoEvent::Train(TrainEvent::Step { step, loss, .. }) => {
            if step == 1 {
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            }
            bar.set_position(step as u64);
            bar.set_message(format!("loss {loss:.4}"));
        }
        DemoEvent::Train(_) => {}
    };
    let r = run(&cfg, &mut on)?;
    bar.finish_and_clear();
    let f = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "n/a".into());
    println!(
        "\nmodel trained on {} slices, scored on {} held-out slices (per label):\n{}",
        r.train_slices,
        r.test_slices,
        format_table(&r.trained)
    );
    println!("                          DSC      mIoU     NSD");
    println!(
        "untrained model        {:>8} {:>8} {:>8}",
        f(r.untrained.dsc),
        f(r.untrained.miou),
        f(r.untrained.nsd)
    );
    println!(
        "fill-the-box baseline  {:>8} {:>8} {:>8}",
        f(r.trained.box_baseline.dsc),
        f(r.trained.box_baseline.miou),
        f(r.trained.box_baseline.nsd)
    );
    println!(
        "trained MedSAM (demo)  {:>8} {:>8} {:>8}",
        f(r.trained.dsc),
        f(r.trained.miou),
        f(r.trained.nsd)
    );
    println!("\nconverted checkpoint: {}", show(&r.converted_checkpoint));
    println!("training run:         {}", show(&r.run_dir));
    println!("loss curve:           {}", show(&r.loss_curve));
    println!("metrics:              {}", show(&r.metrics_json));
    if let Some(fig) = &r.figure {
        println!("comparison figure:    {}", show(fig));
    }
    println!("total {:.0} s", t0.elapsed().as_secs_f64());
    Ok(())
}
