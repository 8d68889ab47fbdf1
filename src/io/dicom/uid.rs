//! New UIDs (`2.25.<128-bit number>`, the UUID-derived form of PS3.5 B.2) and DICOM dates.

use crate::io::clock::UtcDateTime;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn random_u64(salt: u64) -> u64 {
    // RandomState is seeded from the OS per process; mixing in time, pid and a counter keeps
    // UIDs distinct across calls and processes.
    let mut h = RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u64(salt);
    h.finish()
}

/// A fresh UID under the `2.25` root.
pub fn new_uid() -> String {
    let v = ((random_u64(1) as u128) << 64) | random_u64(2) as u128;
    format!("2.25.{v}")
}

/// Current UTC date and time as DICOM DA (`YYYYMMDD`) and TM (`HHMMSS`).
pub fn now_da_tm() -> (String, String) {
    let t = UtcDateTime::now();
    (
        format!("{:04}{:02}{:02}", t.year, t.month, t.day),
        format!("{:02}{:02}{:02}", t.hour, t.minute, t.second),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn uids_are_valid_and_distinct() {
        let a = super::new_uid();
        let b = super::new_uid();
        assert_ne!(a, b);
        assert!(a.len() <= 64 && a.starts_with("2.25."));
        assert!(a[5..].chars().all(|c| c.is_ascii_digit()));
        assert!(!a[5..].starts_with('0') || a.len() == 6);
        let (da, tm) = super::now_da_tm();
        assert_eq!((da.len(), tm.len()), (8, 6));
    }
}
