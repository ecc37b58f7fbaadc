//! Prometheus metrics: the exporter renders what the log records through the
//! `metrics` facade (fsync latency, records per fsync) plus gauges read from
//! the engine's stats at scrape time.

use keel::Db;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::time::SystemTime;

/// Installs the process-wide recorder; call once, before the store opens.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let fsync_buckets = [
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        0.5, 1.0,
    ];
    let batch_buckets = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("keel_wal_fsync_seconds".into()),
            &fsync_buckets,
        )?
        .set_buckets_for_metric(
            Matcher::Full("keel_wal_records_per_fsync".into()),
            &batch_buckets,
        )?
        .install_recorder()?;
    Ok(handle)
}

/// The median and 99th percentile of the summary `name` (a histogram with
/// no buckets set, over the exporter's recent window), from the rendered
/// exposition `text`; `None` if it has no samples.
pub fn quantiles(text: &str, name: &str) -> Option<(f64, f64)> {
    let q = |which: &str| {
        let prefix = format!("{name}{{quantile=\"{which}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix)?.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite())
    };
    Some((q("0.5")?, q("0.99")?))
}

/// The Prometheus text exposition, with the engine's gauges refreshed.
pub fn render(handle: &PrometheusHandle, db: &Db) -> String {
    let st = db.stats();
    metrics::gauge!("keel_keys").set(st.keys as f64);
    metrics::gauge!("keel_applied_lsn").set(st.applied_lsn as f64);
    metrics::gauge!("keel_wal_durable_lsn").set(st.durable_lsn as f64);
    metrics::gauge!("keel_wal_segments").set(st.log_segments as f64);
    metrics::gauge!("keel_wal_fsyncs").set(st.wal.syncs as f64);
    metrics::gauge!("keel_wal_appends").set(st.wal.appends as f64);
    metrics::gauge!("keel_wal_bytes_written").set(st.wal.bytes_written as f64);
    metrics::gauge!("keel_wal_segments_archived").set(st.wal.segments_archived as f64);
    metrics::gauge!("keel_wal_archive_failures").set(st.wal.archive_failures as f64);
    metrics::gauge!("keel_wal_bytes_since_checkpoint").set(st.log_bytes_since_checkpoint as f64);
    metrics::gauge!("keel_stopped").set(if st.stopped { 1.0 } else { 0.0 });
    metrics::gauge!("keel_checkpoint_lsn").set(st.checkpoint_lsn.unwrap_or(0) as f64);
    metrics::gauge!("keel_checkpoints_written").set(st.checkpoints_written as f64);
    metrics::gauge!("keel_checkpoints_failed").set(st.checkpoints_failed as f64);
    if let Some(t) = st.checkpoint_time {
        let age = SystemTime::now()
            .duration_since(t)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        metrics::gauge!("keel_checkpoint_age_seconds").set(age);
    }
    metrics::gauge!("keel_last_recovery_seconds").set(st.recovery.duration.as_secs_f64());
    metrics::gauge!("keel_last_recovery_records_replayed").set(st.recovery.records_replayed as f64);
    metrics::gauge!("keel_last_recovery_torn_bytes_cut").set(
        st.recovery
            .wal
            .torn_tail
            .as_ref()
            .map_or(0.0, |t| t.bytes_cut as f64),
    );
    if let Some(t) = &st.tables {
        render_tables(t);
    }
    handle.render()
}

/// The gauges of a store on tables: per level, memtables, flushes,
/// compactions, write amplification, stalls, the block cache.
fn render_tables(t: &keel::TablesStats) {
    for (level, (tables, bytes)) in t.levels.iter().enumerate() {
        let level = level.to_string();
        metrics::gauge!("keel_level_tables", "level" => level.clone()).set(*tables as f64);
        metrics::gauge!("keel_level_bytes", "level" => level).set(*bytes as f64);
    }
    metrics::gauge!("keel_memtable_bytes").set(t.memtable_bytes as f64);
    metrics::gauge!("keel_frozen_memtables").set(t.frozen as f64);
    metrics::gauge!("keel_frozen_memtable_bytes").set(t.frozen_bytes as f64);
    metrics::gauge!("keel_flushes").set(t.flushes as f64);
    metrics::gauge!("keel_flush_bytes_written").set(t.flush_bytes as f64);
    metrics::gauge!("keel_compactions").set(t.compactions as f64);
    metrics::gauge!("keel_compaction_running").set(f64::from(u8::from(t.compacting)));
    metrics::gauge!("keel_compaction_bytes_read").set(t.compaction_bytes_read as f64);
    metrics::gauge!("keel_compaction_bytes_written").set(t.compaction_bytes_written as f64);
    metrics::gauge!("keel_write_amplification").set(t.write_amplification());
    metrics::gauge!("keel_write_stall_seconds").set(t.stall_micros as f64 / 1e6);
    metrics::gauge!("keel_write_stalls").set(t.stalls as f64);
    metrics::gauge!("keel_block_cache_hits").set(t.cache_hits as f64);
    metrics::gauge!("keel_block_cache_misses").set(t.cache_misses as f64);
    metrics::gauge!("keel_block_cache_hit_ratio").set(t.cache_hit_ratio());
}

#[cfg(test)]
mod tests {
    use super::quantiles;

    #[test]
    fn quantiles_are_read_from_a_summary_and_absent_without_samples() {
        let text = "# TYPE a summary\na{quantile=\"0\"} 0.1\na{quantile=\"0.5\"} 0.25\na{quantile=\"0.99\"} 0.75\na_sum 3\na_count 9\nab{quantile=\"0.5\"} 9\n";
        assert_eq!(quantiles(text, "a"), Some((0.25, 0.75)));
        assert_eq!(quantiles(text, "ab"), None, "no 0.99 line");
        assert_eq!(quantiles(text, "b"), None);
        assert_eq!(
            quantiles("a{quantile=\"0.5\"} NaN\na{quantile=\"0.99\"} NaN\n", "a"),
            None
        );
    }
}
