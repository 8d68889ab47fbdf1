//! Train MedSAM through the library API, in a page.
//!
//!     cargo run --release --example train_medsam -- DATA_DIR [SAM_CHECKPOINT.pth] [MAX_STEPS]
//!
//! DATA_DIR is the npy layout (imgs/, gts/) that `medsam preprocess` writes. Without a checkpoint
//! the model is a randomly initialised tiny SAM sized to the data (see `demo_config`).

use medsam::dist::SingleProcess;
use medsam::model::{Sam, SamConfig};
use medsam::train::{train, TrainConfig, TrainEvent};
use medsam::{Device, Result};
use std::path::PathBuf;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let data = PathBuf::from(args.first().map(String::as_str).unwrap_or("demo-out/npy"));
    let checkpoint = args
        .get(1)
        .filter(|s| s.ends_with(".pth") || s.ends_with(".safetensors"))
        .map(PathBuf::from);
    let max_steps = args.last().and_then(|s| s.parse().ok()).or(Some(50));

    // 1. A model: from a SAM checkpoint, or a tiny one sized to the data.
    let mut model = match &checkpoint {
        Some(path) => medsam::weights::load_model(path, None, None, Device::Cpu)?.0,
        None => {
            let first = medsam::data::list_pairs(&data)?.remove(0);
            let size = medsam::data::read_image(&first.image)?.h;
            Sam::new(&SamConfig::demo(size), 0, Device::Cpu)?
        }
    };

    // 2. MedSAM's training settings, with a step cap for a quick run.
    let cfg = TrainConfig {
        tr_npy_path: data,
        task_name: "MedSAM-example".into(),
        work_dir: PathBuf::from("work_dir"),
        num_epochs: 100,
        batch_size: 2,
        max_steps,
        ..TrainConfig::default()
    };

    // 3. Train, printing progress from the event callback.
    let outcome = train(&cfg, &mut model, &SingleProcess, &mut |event| match event {
        TrainEvent::Step { step, loss, .. } if step % 10 == 0 => {
            println!("step {step}: loss {loss:.4}")
        }
        TrainEvent::EpochEnd {
            epoch, mean_loss, ..
        } => println!("epoch {epoch}: mean loss {mean_loss:.4}"),
        TrainEvent::Saved { path } => println!("saved {}", path.display()),
        _ => {}
    })?;
    println!(
        "{} steps; latest checkpoint {}",
        outcome.steps,
        outcome.latest_checkpoint.display()
    );
    Ok(())
}
