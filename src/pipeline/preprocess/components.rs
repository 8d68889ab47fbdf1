//! Multi-label connected components and "dust" removal with the semantics of
//! `connected-components-3d` (cc3d 4.x):
//!
//! * Voxels are connected when they hold the same non-zero value and are neighbours under the
//!   chosen connectivity (2-D: 4 or 8; 3-D: 6, 18 or 26). Zero is background.
//! * Components are numbered 1..=N in order of their first voxel in a C-order scan
//!   (last axis fastest), which is how cc3d numbers a C-contiguous NumPy array.
//! * `dust(img, threshold)` zeroes every component with fewer than `threshold` voxels.
//!
//! Volumes are `(z, y, x)` C order; 2-D images are `(y, x)`.

use std::collections::VecDeque;

/// Neighbourhood of a 3-D connectivity (6, 18 or 26), or a 2-D one (4 or 8) as `dz = 0`.
fn offsets(connectivity: u32, three_d: bool) -> Vec<(isize, isize, isize)> {
    let mut v = Vec::new();
    let zr = if three_d { -1..=1 } else { 0..=0 };
    for dz in zr {
        for dy in -1isize..=1 {
            for dx in -1isize..=1 {
                let nz = (dz != 0) as u32 + (dy != 0) as u32 + (dx != 0) as u32;
                if nz == 0 {
                    continue;
                }
                let keep = match (three_d, connectivity) {
                    (true, 6) | (false, 4) => nz == 1,
                    (true, 18) => nz <= 2,
                    (true, 26) | (false, 8) => true,
                    _ => panic!("unsupported connectivity {connectivity} (3-D: {three_d})"),
                };
                if keep {
                    v.push((dz, dy, dx));
                }
            }
        }
    }
    v
}

/// Labels connected components of a multi-label `(z, y, x)` volume.
/// Returns the component id of every voxel (0 = background) and the number of components.
///
/// # Panics
/// On an unsupported connectivity (3-D accepts 6, 18, 26) or a length mismatch.
pub fn connected_components_3d<T: Copy + PartialEq + Default>(
    labels: &[T],
    shape: [usize; 3],
    connectivity: u32,
) -> (Vec<u32>, usize) {
    label_impl(labels, shape, &offsets(connectivity, true))
}

/// Labels connected components of a multi-label `(y, x)` image (connectivity 4 or 8).
pub fn connected_components_2d<T: Copy + PartialEq + Default>(
    labels: &[T],
    shape: [usize; 2],
    connectivity: u32,
) -> (Vec<u32>, usize) {
    label_impl(
        labels,
        [1, shape[0], shape[1]],
        &offsets(connectivity, false),
    )
}

fn label_impl<T: Copy + PartialEq + Default>(
    labels: &[T],
    shape: [usize; 3],
    nbrs: &[(isize, isize, isize)],
) -> (Vec<u32>, usize) {
    let [nz, ny, nx] = shape;
    assert_eq!(
        labels.len(),
        nz * ny * nx,
        "labels length does not match shape"
    );
    let zero = T::default();
    let mut out = vec![0u32; labels.len()];
    let mut next = 0u32;
    let mut queue = VecDeque::new();
    for start in 0..labels.len() {
        if labels[start] == zero || out[start] != 0 {
            continue;
        }
        next += 1;
        let val = labels[start];
        out[start] = next;
        queue.push_back(start);
        while let Some(i) = queue.pop_front() {
            let z = (i / (ny * nx)) as isize;
            let y = ((i / nx) % ny) as isize;
            let x = (i % nx) as isize;
            for &(dz, dy, dx) in nbrs {
                let (zz, yy, xx) = (z + dz, y + dy, x + dx);
                if zz < 0
                    || yy < 0
                    || xx < 0
                    || zz >= nz as isize
                    || yy >= ny as isize
                    || xx >= nx as isize
                {
                    continue;
                }
                let j = (zz as usize * ny + yy as usize) * nx + xx as usize;
                if out[j] == 0 && labels[j] == val {
                    out[j] = next;
                    queue.push_back(j);
                }
            }
        }
    }
    (out, next as usize)
}

fn dust_with(labels: &mut [u8], cc: &[u32], n: usize, threshold: usize) -> usize {
    let mut sizes = vec![0usize; n + 1];
    for &c in cc {
        sizes[c as usize] += 1;
    }
    let mut removed = 0;
    for (v, &c) in labels.iter_mut().zip(cc) {
        if c != 0 && sizes[c as usize] < threshold {
            *v = 0;
            removed += 1;
        }
    }
    removed
}

/// `cc3d.dust(volume, threshold, connectivity, in_place=True)` on a `(z, y, x)` u8 volume:
/// zeroes components with fewer than `threshold` voxels. Returns the number of voxels zeroed.
pub fn dust_3d(labels: &mut [u8], shape: [usize; 3], threshold: usize, connectivity: u32) -> usize {
    let (cc, n) = connected_components_3d(labels, shape, connectivity);
    dust_with(labels, &cc, n, threshold)
}

/// `cc3d.dust(image, threshold, connectivity)` on one `(y, x)` u8 image.
pub fn dust_2d(labels: &mut [u8], shape: [usize; 2], threshold: usize, connectivity: u32) -> usize {
    let (cc, n) = connected_components_2d(labels, shape, connectivity);
    dust_with(labels, &cc, n, threshold)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbourhood_sizes() {
        assert_eq!(offsets(6, true).len(), 6);
        assert_eq!(offsets(18, true).len(), 18);
        assert_eq!(offsets(26, true).len(), 26);
        assert_eq!(offsets(4, false).len(), 4);
        assert_eq!(offsets(8, false).len(), 8);
    }

    #[test]
    fn diagonal_connects_only_with_8() {
        let img = [1u8, 0, 0, 1];
        assert_eq!(connected_components_2d(&img, [2, 2], 4).1, 2);
        assert_eq!(connected_components_2d(&img, [2, 2], 8).1, 1);
    }

    #[test]
    fn different_labels_are_different_components() {
        let img = [1u8, 2, 2, 1];
        let (cc, n) = connected_components_2d(&img, [1, 4], 8);
        assert_eq!(n, 3);
        assert_eq!(cc, vec![1, 2, 2, 3]);
    }
}
