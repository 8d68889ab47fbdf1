//! Writing `.npz` archives (numpy's layout) for tests.

use std::io::Write;
use std::path::Path;

/// A `.npz` (stored members) holding the given arrays.
pub fn write_npz(path: &Path, members: &[(&str, medsam::npy::NpyArray)]) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    for (name, arr) in members {
        let tmp = path.with_extension(format!("{name}.npy"));
        medsam::npy::write_npy(&tmp, arr).unwrap();
        let bytes = std::fs::read(&tmp).unwrap();
        std::fs::remove_file(&tmp).unwrap();
        z.start_file(
            format!("{name}.npy"),
            zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated),
        )
        .unwrap();
        z.write_all(&bytes).unwrap();
    }
    z.finish().unwrap();
}
