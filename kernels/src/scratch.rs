//! Per-thread reusable f32 buffers for kernels' temporaries (packed panels, padded copies,
//! score blocks, per-tap weights). A kernel takes one with [`scratch`] (zeroed) or
//! [`scratch_overwritten`] (stale contents, for a caller that writes every element before
//! reading it); dropping it hands it back to the thread's pool. Fresh allocations would cost a
//! page fault per 4 KiB on every call (freed memory goes back to the system), so the pool keeps
//! up to [`POOL_MAX_COUNT`] buffers of at most [`POOL_MAX_LEN`] floats per thread.

/// A buffer taken from this thread's pool and returned to it on drop.
pub(crate) struct Scratch(pub(crate) Vec<f32>);

thread_local! {
    static POOL: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Buffers larger than this (and empty ones) are not kept in the pool.
const POOL_MAX_LEN: usize = 1 << 22;
/// Buffers kept per thread; past it the smallest is freed.
const POOL_MAX_COUNT: usize = 16;

/// The pooled buffer that best fits `n` elements, empty: the smallest that holds `n`, else the
/// largest, regrown to exactly `n` without copying its stale contents. Taking whichever buffer
/// was returned last instead let small buffers serve large requests: every call regrew them
/// (a `realloc` that copies, onto fresh pages) — on MedSAM2's encoder, most of its page
/// faults after the first call.
fn pooled(n: usize) -> Vec<f32> {
    if n == 0 {
        return Vec::new();
    }
    let mut v = POOL
        .with(|p| {
            let mut p = p.borrow_mut();
            let fits = (p.iter().enumerate())
                .filter(|(_, b)| b.capacity() >= n)
                .min_by_key(|(_, b)| b.capacity());
            let pick = fits.or_else(|| p.iter().enumerate().max_by_key(|(_, b)| b.capacity()));
            pick.map(|(i, _)| i).map(|i| p.swap_remove(i))
        })
        .unwrap_or_default();
    if v.capacity() < n {
        v.clear();
        v.reserve_exact(n);
    }
    v
}

/// A zeroed buffer of `n` floats.
pub(crate) fn scratch(n: usize) -> Scratch {
    let mut v = pooled(n);
    v.clear();
    v.resize(n, 0.0);
    Scratch(v)
}

/// Like [`scratch`] but with unspecified (stale, finite or not) contents, for a caller that
/// writes every element before reading any: it saves zeroing what is about to be overwritten.
pub(crate) fn scratch_overwritten(n: usize) -> Scratch {
    let mut v = pooled(n);
    if v.len() >= n {
        v.truncate(n);
    } else {
        v.resize(n, 0.0);
    }
    Scratch(v)
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if (1..=POOL_MAX_LEN).contains(&self.0.capacity()) {
            let v = std::mem::take(&mut self.0);
            POOL.with(|p| {
                let mut p = p.borrow_mut();
                p.push(v);
                if p.len() > POOL_MAX_COUNT {
                    let smallest = (p.iter().enumerate())
                        .min_by_key(|(_, b)| b.capacity())
                        .map(|(i, _)| i);
                    smallest.map(|i| p.swap_remove(i));
                }
            });
        }
    }
}

impl std::ops::Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl std::ops::DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request takes the smallest kept buffer that holds it, whatever the order they came
    /// back in; `scratch` zeroes what it hands out, `scratch_overwritten` leaves it stale.
    #[test]
    fn best_fit_whatever_the_return_order() {
        POOL.with(|p| p.borrow_mut().clear());
        drop(Scratch(vec![2.0; 1000]));
        drop(Scratch(vec![1.0; 100]));
        let big = scratch_overwritten(500);
        assert_eq!(
            big.0.capacity(),
            1000,
            "the 100-float buffer was regrown instead"
        );
        assert!(big.iter().all(|&v| v == 2.0));
        let small = scratch(50);
        assert_eq!(small.0.capacity(), 100);
        assert!(small.iter().all(|&v| v == 0.0));
        assert_eq!(
            scratch(0).0.capacity(),
            0,
            "an empty request takes no buffer"
        );
        drop((big, small));
        assert_eq!(POOL.with(|p| p.borrow().len()), 2);
    }
}
