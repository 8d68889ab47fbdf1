//! The JSON form of `medsam::metrics::MetricsSummary` (`metrics.json`).

/// Panics unless the summary `v` (named `what` in the message) has every top-level field.
pub fn assert_summary_fields(what: &str, v: &serde_json::Value) {
    for k in [
        "dsc",
        "miou",
        "nsd",
        "count",
        "per_label",
        "box_baseline",
        "images_per_second",
    ] {
        assert!(v.get(k).is_some(), "{what} lacks {k}");
    }
}
