//! New UIDs (`2.25.<128-bit number>`, the UUID-derived form of PS3.5 B.2) and DICOM dates.

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
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // civil-from-days (H. Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    (
        format!("{y:04}{m:02}{d:02}"),
        format!("{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60),
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
