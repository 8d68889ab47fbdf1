//! `medsam phantom`: synthetic abdominal CT volumes in the FLARE22 layout.

pub use medsam::pipeline::preprocess::args::PhantomArgs;
use medsam::pipeline::preprocess::phantom::{make_phantom, PhantomCase, PhantomError};

/// Writes the phantoms and prints what was written.
pub fn run(args: &PhantomArgs) -> Result<Vec<PhantomCase>, PhantomError> {
    let cases = make_phantom(&args.out, args.cases, args.seed, args.size)?;
    for c in &cases {
        let ids: Vec<String> = c
            .label_voxels
            .iter()
            .enumerate()
            .skip(1)
            .filter(|(_, &n)| n > 0)
            .map(|(id, n)| format!("{id}:{n}"))
            .collect();
        println!("{}  labels {}", c.image.display(), ids.join(" "));
    }
    println!(
        "{} phantom cases written to {}",
        cases.len(),
        args.out.display()
    );
    Ok(cases)
}
