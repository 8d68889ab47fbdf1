//! `medsam demo`: the whole workflow on a generated CT phantom, no downloads.

use super::common::show;
use medsam::demo::{run, DemoConfig, DemoEvent};
use medsam::eval::format_table;
use medsam::train::TrainEvent;
use medsam::Result;
use std::path::PathBuf;

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
        _ => {}
    };
    let r = run(&cfg, &mut on)?;
    bar.finish_and_clear();
    let f = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "n/a".into());
    println!(
        "\ntrained model on {} held-out slices (per label):\n{}",
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
