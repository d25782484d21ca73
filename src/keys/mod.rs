//! Object keys: by default `{prefix}/{yyyy}/{mm}/{dd}/{hh}/{instance}-{shard}-{start}-{seq}.json`,
//! and `{prefix}/{tenant}/{yyyy}/...` for the payloads of a token with a tenant (`[auth]`);
//! `keys.template` lays them out otherwise (see [`template`]), for example partitioned
//! Hive-style by a payload field.
//!
//! `instance` names the process, `start` is its start time in microseconds and `seq` counts
//! per shard, so two keys collide only if the same host name starts two processes within the
//! same microsecond: never across shards, restarts or machines (the Go service's
//! `folder/UnixNano` keys could collide between any two workers).
//!
//! - [`template`]: the template's grammar, its checks, rendering.
//! - [`value`]: values made safe for a key; a payload's field looked up in its JSON.

pub mod template;
#[cfg(test)]
mod template_tests;
pub mod value;

pub use template::{ObjectName, RequestFields, Template, TemplateError, DEFAULT_TEMPLATE};

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The directory under `keys.prefix` of the error output (see [`KeySpace::unfit_key`]).
pub const UNFIT_DIR: &str = "errors";

/// Everything about a key that is fixed for a shard's lifetime.
#[derive(Debug, Clone)]
pub struct KeySpace {
    template: Arc<Template>,
    prefix: String,
    instance: String,
    shard: usize,
    start_micros: u64,
}

impl KeySpace {
    /// The key space of one shard of one process, with the default template.
    pub fn new(prefix: &str, instance: &str, shard: usize, start_micros: u64) -> Self {
        Self::with_template(Arc::default(), prefix, instance, shard, start_micros)
    }

    /// The key space of one shard of one process, laid out by `template`.
    pub fn with_template(
        template: Arc<Template>,
        prefix: &str,
        instance: &str,
        shard: usize,
        start_micros: u64,
    ) -> Self {
        Self {
            template,
            prefix: prefix.trim_end_matches('/').to_string(),
            instance: instance.to_string(),
            shard,
            start_micros,
        }
    }

    /// The template keys follow.
    pub fn template(&self) -> &Arc<Template> {
        &self.template
    }

    /// What a request's partitions are rendered from.
    pub fn fields<'a>(
        &'a self,
        tenant: Option<&'a str>,
        received_secs: u64,
        headers: &'a [Option<Box<[u8]>>],
    ) -> RequestFields<'a> {
        RequestFields {
            prefix: &self.prefix,
            tenant,
            received_secs,
            headers,
            instance: &self.instance,
            shard: self.shard,
        }
    }

    /// The partition of `payload` of a request (see [`Template::partition`]).
    pub fn partition(&self, req: &RequestFields<'_>, payload: &[u8]) -> String {
        self.template.partition(req, payload)
    }

    /// The key of an object in `partition`.
    pub fn object_key(&self, partition: &str, name: ObjectName, ext: &str) -> String {
        self.template
            .key(partition, &self.instance, self.shard, name, ext)
    }

    /// The key of the error output of the object named `name` in `partition` (the payloads
    /// a Parquet object could not take): under `{prefix}/errors/`, then the object's key
    /// below the prefix, ending `.ndjson`. Never a data object's key: those end `.parquet`.
    pub fn unfit_key(&self, partition: &str, name: ObjectName) -> String {
        let key = self.object_key(partition, name, "ndjson");
        if self.prefix.is_empty() {
            return format!("{UNFIT_DIR}/{key}");
        }
        let below = key
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .unwrap_or(&key);
        format!("{}/{UNFIT_DIR}/{below}", self.prefix)
    }

    /// A memory-queued object's name: its first payload's sequence number `seq`.
    pub fn seq_name(&self, seq: u64) -> ObjectName {
        ObjectName::Seq {
            start: self.start_micros,
            seq,
        }
    }

    /// The key of an object built from a request kept in the durable spool: named by the
    /// record's place (segment, offset) and the index of the object's first payload in the
    /// request, so a replay after a crash writes the same keys again. Segment ids never repeat
    /// (see `spool`), and the `s` keeps these apart from [`KeySpace::key`]'s.
    pub fn spooled_key(
        &self,
        tenant: Option<&str>,
        unix_secs: u64,
        segment: u64,
        offset: u64,
        index: usize,
        ext: &str,
    ) -> String {
        let part = self.partition(&self.fields(tenant, unix_secs, &[]), b"");
        let name = ObjectName::Spooled {
            segment,
            offset,
            index,
        };
        self.object_key(&part, name, ext)
    }

    /// The key of payload `seq` of `tenant`, received at `unix_secs`, with the given
    /// extension.
    pub fn key(&self, tenant: Option<&str>, unix_secs: u64, seq: u64, ext: &str) -> String {
        let part = self.partition(&self.fields(tenant, unix_secs, &[]), b"");
        self.object_key(&part, self.seq_name(seq), ext)
    }
}

/// Seconds since the Unix epoch, now, to within the kernel's tick (a request's arrival
/// second, which its keys are dated by, read once per request: see [`crate::clock`]).
pub fn unix_secs() -> u64 {
    crate::clock::coarse_unix_secs()
}

/// Microseconds since the Unix epoch, now.
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The host name, for the default instance name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().replace('/', "_"))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "corepost".into())
}

/// UTC (year, month, day, hour, minute) of a Unix time.
fn civil_minute(unix_secs: u64) -> (i64, u32, u32, u32, u32) {
    let (y, m, d, h) = civil_hour(unix_secs);
    (y, m, d, h, ((unix_secs % 3600) / 60) as u32)
}

/// UTC (year, month, day, hour) of a Unix time, by Howard Hinnant's `civil_from_days`.
fn civil_hour(unix_secs: u64) -> (i64, u32, u32, u32) {
    let days = (unix_secs / 86_400) as i64;
    let hour = ((unix_secs % 86_400) / 3600) as u32;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, hour)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_hour(0), (1970, 1, 1, 0));
        // 2000-02-29 13:00:00 UTC (leap day in a century leap year)
        assert_eq!(civil_hour(951_829_200), (2000, 2, 29, 13));
        // 2026-11-28 23:59:59 UTC
        assert_eq!(civil_hour(1_795_910_399), (2026, 11, 28, 23));
        // 2024-12-31 00:00:00 UTC and the next day
        assert_eq!(civil_hour(1_735_603_200), (2024, 12, 31, 0));
        assert_eq!(civil_hour(1_735_689_600), (2025, 1, 1, 0));
    }

    #[test]
    fn key_layout() {
        let ks = KeySpace::new("events/", "host-a", 1, 1_700_000_000_000_000);
        assert_eq!(
            ks.key(None, 1_795_910_399, 42, "json"),
            "events/2026/11/28/23/host-a-1-1700000000000000-42.json"
        );
        let bare = KeySpace::new("", "h", 0, 5);
        assert_eq!(bare.key(None, 0, 0, "json"), "1970/01/01/00/h-0-5-0.json");
        assert_eq!(
            ks.spooled_key(
                None,
                1_795_910_399,
                1_700_000_000_000_001,
                4096,
                3,
                "ndjson.zst"
            ),
            "events/2026/11/28/23/host-a-1-s1700000000000001-4096-3.ndjson.zst"
        );
    }

    #[test]
    fn error_output_keys_sit_under_the_prefix() {
        let t = Arc::new(
            Template::parse("{prefix}/e={payload.e}/{instance}-{shard}-{start}-{seq}").unwrap(),
        );
        let ks = KeySpace::with_template(t.clone(), "ev", "h", 0, 5);
        let fields = ks.fields(None, 0, &[]);
        let part = ks.partition(&fields, br#"{"e":"x"}"#);
        assert_eq!(
            ks.object_key(&part, ks.seq_name(3), "parquet"),
            "ev/e=x/h-0-5-3.parquet"
        );
        assert_eq!(
            ks.unfit_key(&part, ks.seq_name(3)),
            "ev/errors/e=x/h-0-5-3.ndjson"
        );
        let bare = KeySpace::with_template(t, "", "h", 0, 5);
        let part = bare.partition(&bare.fields(None, 0, &[]), b"{}");
        assert_eq!(
            bare.unfit_key(&part, bare.seq_name(1)),
            "errors/e=__HIVE_DEFAULT_PARTITION__/h-0-5-1.ndjson"
        );
    }

    #[test]
    fn a_tenant_is_the_segment_after_the_prefix() {
        let ks = KeySpace::new("events", "h", 0, 5);
        assert_eq!(
            ks.key(Some("acme"), 0, 3, "json"),
            "events/acme/1970/01/01/00/h-0-5-3.json"
        );
        assert_eq!(
            ks.spooled_key(Some("acme"), 0, 9, 4096, 0, "ndjson"),
            "events/acme/1970/01/01/00/h-0-s9-4096-0.ndjson"
        );
        let bare = KeySpace::new("", "h", 0, 5);
        assert_eq!(
            bare.key(Some("t"), 0, 0, "json"),
            "t/1970/01/01/00/h-0-5-0.json"
        );
    }

    #[test]
    fn keys_differ_across_shards_restarts_and_instances() {
        let t = 1_795_910_399;
        let keys = [
            KeySpace::new("p", "a", 0, 1).key(None, t, 7, "json"),
            KeySpace::new("p", "a", 1, 1).key(None, t, 7, "json"),
            KeySpace::new("p", "a", 0, 2).key(None, t, 7, "json"),
            KeySpace::new("p", "b", 0, 1).key(None, t, 7, "json"),
        ];
        let mut uniq = keys.to_vec();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), keys.len());
    }
}
