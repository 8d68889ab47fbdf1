//! `medsam phantom`: synthetic abdominal CT volumes in the FLARE22 layout.

use crate::preprocess::phantom::{make_phantom, PhantomCase, PhantomError};
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct PhantomArgs {
    /// Output directory (images/ and labels/ are created inside)
    #[arg(long, default_value = "data/phantom")]
    pub out: PathBuf,
    /// Number of cases
    #[arg(long, default_value_t = 4)]
    pub cases: usize,
    /// PRNG seed (same seed, same volumes)
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Volume size as XxYxZ
    #[arg(long, default_value = "128x128x32", value_parser = parse_size)]
    pub size: (usize, usize, usize),
}

/// Parses `XxYxZ` (e.g. `128x128x32`).
pub fn parse_size(s: &str) -> Result<(usize, usize, usize), String> {
    let parts: Vec<&str> = s.split(['x', 'X', ',']).collect();
    if parts.len() != 3 {
        return Err(format!("`{s}`: expected XxYxZ, e.g. 128x128x32"));
    }
    let p = |t: &str| {
        t.trim()
            .parse::<usize>()
            .map_err(|e| format!("`{s}`: bad dimension `{t}`: {e}"))
    };
    Ok((p(parts[0])?, p(parts[1])?, p(parts[2])?))
}

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
