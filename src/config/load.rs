//! Merging the configuration layers: defaults → file → profile → environment → flags.

use super::{Config, ConfigError, ConfigErrors, Cores, SinkKind};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Sections a tuning profile may set: placement and capacity, never where data goes.
const PROFILE_SECTIONS: &[&str] = &["shards", "queue", "upload", "glommio"];

/// Command-line overrides (the last layer): the flags of `corepost serve` and `check-config`,
/// each declared here once (its help is the doc comment) and applied by `apply_flags`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Flags {
    /// Address to listen on (default 127.0.0.1:8080; port 0 picks one).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Where payloads go.
    #[arg(long, value_parser = parse_sink)]
    pub sink: Option<SinkKind>,
    /// Root directory of the fs sink.
    #[arg(long, value_name = "DIR")]
    pub fs_root: Option<String>,
    /// Number of shards (one per core), or `all`.
    #[arg(long, value_name = "N", value_parser = parse_cores)]
    pub cores: Option<Cores>,
    /// Directory for payloads that could not be delivered (uploaded first at the next start).
    #[arg(long, value_name = "DIR")]
    pub spill_dir: Option<String>,
    /// Directory of the per-shard durable spools (`ack = "durable"`).
    #[arg(long, value_name = "DIR")]
    pub spool_dir: Option<String>,
    /// Close a keep-alive connection after its next request once it is this old
    /// (server.max_connection_age_ms; 0 = never), so a load balancer can place it again.
    #[arg(long, value_name = "MS")]
    pub max_connection_age_ms: Option<u64>,
    /// TLS on the public listener: PEM certificate chain (`tls.cert_file`).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<String>,
    /// TLS on the public listener: PEM private key (`tls.key_file`).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<String>,
    /// File of bearer tokens (and their tenants): payload requests without a listed token
    /// get `401`. Re-read on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub tokens_file: Option<String>,
}

/// A flag's value that clap refuses (it prints it after the flag's name).
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    /// `--sink` names no sink.
    #[error("{0:?} is not one of fs, s3, discard")]
    Sink(String),
    /// `--cores` is neither a count nor `all`.
    #[error("{0:?} is not a number")]
    Cores(String),
}

fn parse_sink(s: &str) -> Result<SinkKind, FlagError> {
    match s {
        "fs" => Ok(SinkKind::Fs),
        "s3" => Ok(SinkKind::S3),
        "discard" => Ok(SinkKind::Discard),
        _ => Err(FlagError::Sink(s.into())),
    }
}

fn parse_cores(s: &str) -> Result<Cores, FlagError> {
    match s {
        "all" => Ok(Cores::Named("all".into())),
        n => n
            .trim()
            .parse()
            .map(Cores::Count)
            .map_err(|_| FlagError::Cores(s.into())),
    }
}

/// Everything `load` reads; as flags, the whole command line of `corepost serve`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Sources {
    /// Configuration file (TOML).
    #[arg(long = "config", value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// Tuning profile (TOML; see tuning/).
    #[arg(long = "profile", value_name = "FILE")]
    pub profile_file: Option<PathBuf>,
    /// The process environment (only the variables listed in the README are read): not a
    /// flag, see [`Sources::with_process_env`].
    #[arg(skip)]
    pub env: HashMap<String, String>,
    /// Command-line overrides.
    #[command(flatten)]
    pub flags: Flags,
}

impl Sources {
    /// These sources with this process's environment.
    pub fn with_process_env(mut self) -> Self {
        self.env = std::env::vars().collect();
        self
    }
}

/// Builds the configuration from all layers and validates it.
pub fn load(src: &Sources) -> Result<Config, ConfigErrors> {
    let mut errs = Vec::new();
    let mut merged = toml::Table::new();
    if let Some(path) = &src.config_file {
        if let Some(t) = read_layer(path, "config file", None, &mut errs) {
            merge(&mut merged, t);
        }
    }
    if let Some(path) = &src.profile_file {
        if let Some(t) = read_layer(path, "profile", Some(PROFILE_SECTIONS), &mut errs) {
            merge(&mut merged, t);
        }
    }
    if !errs.is_empty() {
        return Err(ConfigErrors(errs));
    }
    let mut cfg: Config = match Config::deserialize_table(merged) {
        Ok(c) => c,
        Err(e) => return Err(ConfigErrors(vec![e])),
    };
    apply_env(&mut cfg, &src.env, &mut errs);
    apply_flags(&mut cfg, &src.flags);
    if let Err(ConfigErrors(more)) = cfg.validate() {
        errs.extend(more);
    }
    if errs.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigErrors(errs))
    }
}

/// [`load`], then the shard placement checked against `allowed` (the CPUs this process may
/// use, or those of the machine `check-config --sysfs-root` reads).
pub fn load_placed(src: &Sources, allowed: &[usize]) -> Result<Config, ConfigErrors> {
    let cfg = load(src)?;
    super::resolve_placement(&cfg.shards, allowed).map_err(|e| ConfigErrors(vec![e]))?;
    Ok(cfg)
}

impl Config {
    fn deserialize_table(t: toml::Table) -> Result<Config, ConfigError> {
        toml::Value::Table(t)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError(format!("configuration: {}", e.message())))
    }
}

/// Reads one TOML layer and checks it alone, so an error names the file it came from.
fn read_layer(
    path: &Path,
    what: &str,
    allowed: Option<&[&str]>,
    errs: &mut Vec<ConfigError>,
) -> Option<toml::Table> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            errs.push(ConfigError(format!(
                "{what} {}: cannot read: {e}",
                path.display()
            )));
            return None;
        }
    };
    let table: toml::Table = match toml::from_str(&text) {
        Ok(t) => t,
        Err(e) => {
            errs.push(ConfigError(format!("{what} {}: {e}", path.display())));
            return None;
        }
    };
    if let Some(allowed) = allowed {
        for key in table.keys() {
            if !allowed.contains(&key.as_str()) {
                errs.push(ConfigError(format!(
                    "{what} {}: [{key}] does not belong in a tuning profile (allowed: {})",
                    path.display(),
                    allowed.join(", ")
                )));
            }
        }
    }
    // Unknown keys and wrong types, reported against this file.
    if let Err(e) = toml::from_str::<Config>(&text) {
        errs.push(ConfigError(format!("{what} {}: {e}", path.display())));
        return None;
    }
    Some(table)
}

/// Deep merge: tables merge key by key, anything else in `over` replaces `base`.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn parse_num<T: std::str::FromStr>(name: &str, v: &str, errs: &mut Vec<ConfigError>) -> Option<T> {
    match v.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => {
            errs.push(ConfigError(format!("{name}: {v:?} is not a number")));
            None
        }
    }
}

fn apply_env(cfg: &mut Config, env: &HashMap<String, String>, errs: &mut Vec<ConfigError>) {
    let get = |k: &str| env.get(k).filter(|v| !v.is_empty());
    if let Some(v) = get("MAX_WORKERS") {
        if let Some(n) = parse_num("MAX_WORKERS", v, errs) {
            cfg.upload.max_in_flight = n;
        }
    }
    if let Some(v) = get("MAX_QUEUE") {
        if let Some(n) = parse_num("MAX_QUEUE", v, errs) {
            cfg.queue.max_payloads = n;
        }
    }
    if let Some(v) = get("S3_ENDPOINT") {
        cfg.sink.s3.endpoint = Some(v.clone());
    }
    if let Some(v) = get("S3_BUCKET") {
        cfg.sink.s3.bucket = Some(v.clone());
    }
    if let Some(v) = get("S3_REGION").or_else(|| get("AWS_REGION")) {
        cfg.sink.s3.region = v.clone();
    }
    if let Some(v) = get("S3_PREFIX") {
        cfg.keys.prefix = v.clone();
    }
    if let Some(v) = get("AWS_ACCESS_KEY_ID") {
        cfg.sink.s3.access_key_id = Some(v.clone());
    }
    if let Some(v) = get("AWS_SECRET_ACCESS_KEY") {
        cfg.sink.s3.secret_access_key = Some(v.clone());
    }
    if let Some(v) = get("COREPOST_MAX_CONNECTION_AGE_MS") {
        if let Some(n) = parse_num("COREPOST_MAX_CONNECTION_AGE_MS", v, errs) {
            cfg.server.max_connection_age_ms = n;
        }
    }
    if let Some(v) = get("COREPOST_TLS_CERT_FILE") {
        cfg.tls.get_or_insert_with(Default::default).cert_file = v.clone();
    }
    if let Some(v) = get("COREPOST_TLS_KEY_FILE") {
        cfg.tls.get_or_insert_with(Default::default).key_file = v.clone();
    }
    if let Some(v) = get("COREPOST_TLS_CLIENT_CA_FILE") {
        cfg.tls.get_or_insert_with(Default::default).client_ca_file = Some(v.clone());
    }
    if let Some(v) = get("COREPOST_TOKENS_FILE") {
        cfg.auth.tokens_file = Some(v.clone());
    }
}

fn apply_flags(cfg: &mut Config, flags: &Flags) {
    if let Some(v) = &flags.listen {
        cfg.server.listen = v.clone();
    }
    if let Some(v) = flags.sink {
        cfg.sink.kind = v;
    }
    if let Some(v) = &flags.fs_root {
        cfg.sink.fs.root = v.clone();
    }
    if let Some(v) = &flags.spill_dir {
        cfg.upload.spill_dir = v.clone();
    }
    if let Some(v) = &flags.spool_dir {
        cfg.spool.dir = v.clone();
    }
    if let Some(v) = flags.max_connection_age_ms {
        cfg.server.max_connection_age_ms = v;
    }
    // Either flag turns TLS on; the other file must then come from a layer too.
    if let Some(v) = &flags.tls_cert {
        cfg.tls.get_or_insert_with(Default::default).cert_file = v.clone();
    }
    if let Some(v) = &flags.tls_key {
        cfg.tls.get_or_insert_with(Default::default).key_file = v.clone();
    }
    if let Some(v) = &flags.tokens_file {
        cfg.auth.tokens_file = Some(v.clone());
    }
    if let Some(v) = &flags.cores {
        cfg.shards.cores = v.clone();
        // An explicit count on the command line replaces any CPU list from the file.
        if let Cores::Count(n) = *v {
            if cfg.shards.cpus.as_ref().is_some_and(|c| c.len() != n) {
                cfg.shards.cpus = None;
                cfg.shards.worker_cpus = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    /// Parses `args` as the flags of `corepost serve`.
    fn command_line(args: &[&str]) -> Result<Sources, clap::Error> {
        #[derive(clap::Parser)]
        struct Serve {
            #[command(flatten)]
            sources: Sources,
        }
        let args = std::iter::once("corepost").chain(args.iter().copied());
        <Serve as clap::Parser>::try_parse_from(args).map(|s| s.sources)
    }

    #[test]
    fn flags_are_typed_on_the_command_line() {
        let src = command_line(&["--cores", "all", "--max-connection-age-ms", "5"]).unwrap();
        assert_eq!(src.flags.cores, Some(Cores::Named("all".into())));
        assert_eq!(src.flags.max_connection_age_ms, Some(5));
        assert_eq!(src.config_file, None);
        assert_eq!(
            command_line(&["--cores", "2"]).unwrap().flags.cores,
            Some(Cores::Count(2))
        );
        let msg = command_line(&["--cores", "many"]).unwrap_err().to_string();
        assert!(
            msg.contains("--cores") && msg.contains("\"many\" is not a number"),
            "{msg}"
        );
        let msg = command_line(&["--sink", "tape"]).unwrap_err().to_string();
        assert!(msg.contains("is not one of fs, s3, discard"), "{msg}");
    }

    #[test]
    fn layers_apply_in_order() {
        let conf = file("[server]\nlisten = \"127.0.0.1:9000\"\n[queue]\nmax_payloads = 10\n[upload]\nmax_in_flight = 3\n");
        let prof = file("[queue]\nmax_payloads = 20\n[shards]\ncores = 2\n");
        let mut env = HashMap::new();
        env.insert("MAX_WORKERS".to_string(), "7".to_string());
        let src = Sources {
            config_file: Some(conf.path().into()),
            profile_file: Some(prof.path().into()),
            env,
            flags: Flags {
                cores: Some(Cores::Count(1)),
                ..Flags::default()
            },
        };
        let c = load(&src).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:9000"); // file
        assert_eq!(c.queue.max_payloads, 20); // profile over file
        assert_eq!(c.upload.max_in_flight, 7); // env over file
        assert_eq!(c.shards.cores, Cores::Count(1)); // flag over profile
        assert_eq!(c.queue.max_bytes, 64 << 20); // default kept
    }

    #[test]
    fn unknown_key_is_named_with_its_file() {
        let conf = file("[queue]\nmax_payload = 10\n");
        let src = Sources {
            config_file: Some(conf.path().into()),
            ..Sources::default()
        };
        let msg = load(&src).unwrap_err().to_string();
        assert!(msg.contains("max_payload"), "{msg}");
        assert!(msg.contains("config file"), "{msg}");
    }

    #[test]
    fn profile_may_not_choose_the_sink() {
        let prof = file("[sink]\nkind = \"discard\"\n");
        let src = Sources {
            profile_file: Some(prof.path().into()),
            ..Sources::default()
        };
        let msg = load(&src).unwrap_err().to_string();
        assert!(msg.contains("[sink] does not belong"), "{msg}");
    }

    #[test]
    fn bad_env_number_names_the_variable() {
        let mut env = HashMap::new();
        env.insert("MAX_QUEUE".to_string(), "lots".to_string());
        let src = Sources {
            env,
            ..Sources::default()
        };
        let msg = load(&src).unwrap_err().to_string();
        assert!(msg.starts_with("MAX_QUEUE:"), "{msg}");
    }

    #[test]
    fn max_connection_age_from_file_env_and_flag() {
        let conf = file("[server]\nmax_connection_age_ms = 1000\n");
        let mut src = Sources {
            config_file: Some(conf.path().into()),
            ..Sources::default()
        };
        assert_eq!(load(&src).unwrap().server.max_connection_age_ms, 1000);
        src.env.insert(
            "COREPOST_MAX_CONNECTION_AGE_MS".to_string(),
            "2000".to_string(),
        );
        assert_eq!(load(&src).unwrap().server.max_connection_age_ms, 2000);
        src.flags.max_connection_age_ms = Some(3000);
        assert_eq!(load(&src).unwrap().server.max_connection_age_ms, 3000);
        // A value that is not a number is refused on the command line, naming the flag.
        let msg = command_line(&["--max-connection-age-ms", "soon"])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("--max-connection-age-ms"), "{msg}");
        assert_eq!(
            Config::default().server.max_connection_age_ms,
            0,
            "off by default"
        );
    }

    #[test]
    fn s3_env_fills_the_sink() {
        let mut env = HashMap::new();
        for (k, v) in [
            ("S3_ENDPOINT", "http://127.0.0.1:3900"),
            ("S3_BUCKET", "b"),
            ("S3_REGION", "garage"),
            ("S3_PREFIX", "p"),
            ("AWS_ACCESS_KEY_ID", "id"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
        ] {
            env.insert(k.to_string(), v.to_string());
        }
        let src = Sources {
            env,
            flags: Flags {
                sink: Some(SinkKind::S3),
                ..Flags::default()
            },
            ..Sources::default()
        };
        let c = load(&src).unwrap();
        assert_eq!(c.sink.s3.bucket.as_deref(), Some("b"));
        assert_eq!(c.sink.s3.region, "garage");
        assert_eq!(c.keys.prefix, "p");
    }

    #[test]
    fn tls_flags_and_env_turn_tls_on_and_errors_name_key_and_file() {
        let mut env = HashMap::new();
        env.insert(
            "COREPOST_TLS_CLIENT_CA_FILE".to_string(),
            "/nonexistent/ca.pem".to_string(),
        );
        let mut src = Sources {
            env,
            flags: Flags {
                tls_cert: Some("/nonexistent/cert.pem".into()),
                ..Flags::default()
            },
            ..Sources::default()
        };
        let msg = load(&src).unwrap_err().to_string();
        assert_eq!(
            msg,
            "tls.key_file: required with [tls] (--tls-cert, --tls-key)"
        );
        src.flags.tls_key = Some("/nonexistent/key.pem".into());
        let msg = load(&src).unwrap_err().to_string();
        assert!(
            msg.starts_with("tls.cert_file: /nonexistent/cert.pem: cannot read"),
            "{msg}"
        );
        assert!(
            msg.contains("\ntls.client_ca_file: /nonexistent/ca.pem: cannot read"),
            "{msg}"
        );
        // Without any of them, no [tls] at all.
        assert_eq!(load(&Sources::default()).unwrap().tls, None);
    }

    #[test]
    fn tokens_file_layers_and_a_malformed_file_names_its_line() {
        let good = file("secret-a acme\n");
        let bad = file("# x\nsecret-b Not_A_Tenant\n");
        let conf = file(&format!(
            "[auth]\ntokens_file = {:?}\n",
            bad.path().to_str().unwrap()
        ));
        let mut env = HashMap::new();
        env.insert(
            "COREPOST_TOKENS_FILE".to_string(),
            good.path().to_str().unwrap().to_string(),
        );
        // The environment over the file: the good one is used.
        let src = Sources {
            config_file: Some(conf.path().into()),
            env: env.clone(),
            ..Sources::default()
        };
        let c = load(&src).unwrap();
        assert_eq!(c.auth.tokens_file.as_deref(), good.path().to_str());
        // The flag over the environment: the bad one, refused naming key and line.
        let src = Sources {
            env,
            flags: Flags {
                tokens_file: Some(bad.path().to_str().unwrap().into()),
                ..Flags::default()
            },
            ..Sources::default()
        };
        let msg = load(&src).unwrap_err().to_string();
        assert!(msg.starts_with("auth.tokens_file: "), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
        assert!(!msg.contains("secret-b"), "{msg}");
    }

    #[test]
    fn shipped_profiles_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let src = Sources {
                profile_file: Some(path.clone()),
                ..Sources::default()
            };
            load(&src).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
        assert!(
            n >= 4,
            "expected the dev, two-core, auto and bare-metal profiles"
        );
    }
}
