//! `medsam preprocess`: NIfTI → MedSAM `.npy` slices (see [`medsam::pipeline::preprocess`]).

pub use medsam::pipeline::preprocess::args::{PreprocessArgs, PreprocessCliError};
use medsam::pipeline::preprocess::{preprocess, PreprocessSummary, ProgressEvent};

/// Runs the preprocessing with a progress bar and prints a summary.
pub fn run(args: &PreprocessArgs) -> Result<PreprocessSummary, PreprocessCliError> {
    let cfg = args.to_config()?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} preprocessing [{bar:40}] {pos}/{len} cases {elapsed_precise} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let on_event = |ev: ProgressEvent| match ev {
        ProgressEvent::Started { cases } => bar.set_length(cases as u64),
        ProgressEvent::CaseDone { case, slices } => {
            bar.set_message(format!("{case}: {slices} slices"));
            bar.inc(1);
        }
        ProgressEvent::CaseSkipped { case, reason } => {
            bar.println(format!("skipped {case}: {reason}"));
            bar.inc(1);
        }
    };
    let start = std::time::Instant::now();
    let summary = preprocess(&cfg, &on_event)?;
    bar.finish_and_clear();
    println!(
        "label files: {}  (without image: {})",
        summary.label_files,
        summary.missing_images.len()
    );
    for c in &summary.done {
        println!("  {:<32} {:>5} slices", c.case, c.slices);
    }
    for s in &summary.skipped {
        println!("  {:<32} skipped: {}", s.case, s.reason);
    }
    println!(
        "{} cases done, {} skipped, {} files written to {} in {:.1?}",
        summary.done.len(),
        summary.skipped.len(),
        summary.files_written,
        cfg.npy_path.display(),
        start.elapsed()
    );
    Ok(summary)
}
