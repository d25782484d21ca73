//! `docs/configuration.md` is generated from the configuration structs' doc comments
//! (`src/config/*.rs`), their defaults (`Config::default()`) and the environment variables and
//! flags `src/config/load.rs` applies. This test fails when the file is stale; regenerate it
//! with `UPDATE_CONFIG_DOCS=1 cargo test --test config_docs`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

const OUT: &str = "docs/configuration.md";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A struct or enum's doc comment and, for a struct, its fields; for an enum of unit variants,
/// its variants.
#[derive(Default)]
struct Item {
    doc: String,
    fields: Vec<Field>,
    variants: Vec<(String, String)>,
    lowercase: bool,
}

struct Field {
    name: String,
    doc: String,
    /// The type's last path segment, inside `Option<...>` or `Vec<...>`.
    ty: String,
}

fn doc_of(attrs: &[syn::Attribute]) -> String {
    let mut lines = Vec::new();
    for a in attrs {
        if let syn::Meta::NameValue(nv) = &a.meta {
            if nv.path.is_ident("doc") {
                if let syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(s),
                    ..
                }) = &nv.value
                {
                    lines.push(
                        s.value()
                            .strip_prefix(' ')
                            .unwrap_or(&s.value())
                            .to_string(),
                    );
                }
            }
        }
    }
    lines.join("\n")
}

fn serde_attr_has(attrs: &[syn::Attribute], needle: &str) -> bool {
    attrs
        .iter()
        .any(|a| a.path().is_ident("serde") && quote_tokens(&a.meta).contains(needle))
}

fn quote_tokens(m: &syn::Meta) -> String {
    match m {
        syn::Meta::List(l) => l.tokens.to_string(),
        _ => String::new(),
    }
}

fn inner_type(ty: &syn::Type) -> String {
    if let syn::Type::Path(p) = ty {
        if let Some(seg) = p.path.segments.last() {
            if let syn::PathArguments::AngleBracketed(args) = &seg.arguments {
                if let Some(syn::GenericArgument::Type(t)) = args.args.first() {
                    return inner_type(t);
                }
            }
            return seg.ident.to_string();
        }
    }
    String::new()
}

fn items() -> BTreeMap<String, Item> {
    let mut out = BTreeMap::new();
    let dir = repo().join("src/config");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let file = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for item in file.items {
            match item {
                syn::Item::Struct(s) => {
                    let fields = s
                        .fields
                        .iter()
                        .filter(|f| matches!(f.vis, syn::Visibility::Public(_)))
                        .filter_map(|f| {
                            Some(Field {
                                name: f.ident.as_ref()?.to_string(),
                                doc: doc_of(&f.attrs),
                                ty: inner_type(&f.ty),
                            })
                        })
                        .collect();
                    out.insert(
                        s.ident.to_string(),
                        Item {
                            doc: doc_of(&s.attrs),
                            fields,
                            ..Item::default()
                        },
                    );
                }
                syn::Item::Enum(e) => {
                    let unit = e.variants.iter().all(|v| v.fields.is_empty());
                    let variants = if unit {
                        e.variants
                            .iter()
                            .map(|v| (v.ident.to_string(), doc_of(&v.attrs)))
                            .collect()
                    } else {
                        Vec::new()
                    };
                    out.insert(
                        e.ident.to_string(),
                        Item {
                            doc: doc_of(&e.attrs),
                            variants,
                            lowercase: serde_attr_has(&e.attrs, "lowercase"),
                            ..Item::default()
                        },
                    );
                }
                _ => {}
            }
        }
    }
    out
}

/// Environment variables and flags `load.rs` applies, by configuration key: each `get("VAR")`
/// or `flags.name` condition is followed by the `cfg.section.key = ...` it sets (the first
/// assignment after the condition; later ones are consequences, such as `--cores` clearing
/// `shards.cpus`).
fn overrides() -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(repo().join("src/config/load.rs")).unwrap();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut pending: Vec<String> = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with("fn ") || l.starts_with("pub fn ") {
            pending.clear();
        }
        let names_an_input = l.contains("get(\"") || l.contains("flags.");
        if (l.starts_with("if ") || l.starts_with("} else if ")) && names_an_input {
            pending.clear();
            for part in l.split("get(\"").skip(1) {
                if let Some(name) = part.split('"').next() {
                    pending.push(format!("`{name}`"));
                }
            }
            if let Some(rest) = l.split("flags.").nth(1) {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                pending.push(format!("`--{}`", name.replace('_', "-")));
            }
        }
        if let Some(rest) = l.strip_prefix("cfg.") {
            // `cfg.tls.get_or_insert_with(Default::default).cert_file = ...` sets `tls.cert_file`.
            if let Some((key, _)) = rest.split_once(" = ") {
                let key = drop_calls(key);
                if !pending.is_empty() && !key.contains(' ') {
                    let entry = out.entry(key.to_string()).or_default();
                    for p in pending.drain(..) {
                        if !entry.contains(&p) {
                            entry.push(p);
                        }
                    }
                }
            }
        }
    }
    out
}

/// `a.f(x).b = y` without its method calls: `a.b = y`.
fn drop_calls(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(open) = rest.find('(') {
        let Some(close) = rest[open..].find(')') else {
            break;
        };
        let head = &rest[..open];
        // Drop `.name` before the parenthesis, and the call itself.
        out.push_str(head.rfind('.').map_or(head, |dot| &head[..dot]));
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

fn default_at<'a>(defaults: &'a toml::Value, key: &str) -> Option<&'a toml::Value> {
    key.split('.').try_fold(defaults, |v, k| v.get(k))
}

fn show_default(v: Option<&toml::Value>) -> String {
    match v {
        None => "none".into(),
        Some(toml::Value::String(s)) if s.is_empty() => "`\"\"`".into(),
        Some(v) => format!("`{v}`"),
    }
}

fn section(
    out: &mut String,
    items: &BTreeMap<String, Item>,
    defaults: &toml::Value,
    env: &BTreeMap<String, Vec<String>>,
    prefix: &str,
    ty: &str,
) {
    let Some(item) = items.get(ty) else {
        return;
    };
    for f in &item.fields {
        let key = if prefix.is_empty() {
            f.name.clone()
        } else {
            format!("{prefix}.{}", f.name)
        };
        let sub = items.get(&f.ty).filter(|i| !i.fields.is_empty());
        if let Some(sub) = sub {
            let _ = writeln!(out, "## `[{key}]`\n\n{}\n", sub.doc);
            section(out, items, defaults, env, &key, &f.ty);
            continue;
        }
        let _ = write!(
            out,
            "### `{key}`\n\nDefault: {}",
            show_default(default_at(defaults, &key))
        );
        if let Some(names) = env.get(&key) {
            let _ = write!(out, ". Also set by: {}", names.join(", "));
        }
        let _ = writeln!(out, ".\n\n{}\n", f.doc);
        if let Some(e) = items.get(&f.ty).filter(|i| !i.variants.is_empty()) {
            for (v, doc) in &e.variants {
                let name = if e.lowercase {
                    v.to_lowercase()
                } else {
                    v.clone()
                };
                let doc = doc.replace('\n', " ");
                let _ = writeln!(out, "- `{name}`: {doc}");
            }
            out.push('\n');
        }
    }
}

fn render() -> String {
    let items = items();
    let defaults = toml::Value::try_from(corepost::config::Config::default()).unwrap();
    let env = overrides();
    let mut out = String::from(
        "<!-- Generated by `UPDATE_CONFIG_DOCS=1 cargo test --test config_docs` from the doc \
         comments in src/config/. Do not edit: edit the doc comments. -->\n\n\
         # Configuration reference\n\n",
    );
    let _ = writeln!(out, "{}\n", items["Config"].doc);
    out.push_str(
        "Layers, later wins: built-in defaults, `--config FILE` (TOML), `--profile FILE` \
         (a tuning profile: `[shards]`, `[queue]`, `[upload]`, `[glommio]` only), the \
         environment, flags. Unknown keys and impossible values are errors naming the key; \
         `corepost check-config [same flags]` prints the merged configuration (secrets \
         redacted) or every error.\n\n",
    );
    section(&mut out, &items, &defaults, &env, "", "Config");
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

#[test]
fn the_configuration_reference_is_generated_from_the_code() {
    let text = render();
    let path = repo().join(OUT);
    if std::env::var_os("UPDATE_CONFIG_DOCS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == text,
        "{OUT} is stale: regenerate it with `UPDATE_CONFIG_DOCS=1 cargo test --test config_docs`"
    );
}

#[test]
fn every_key_the_defaults_have_is_documented() {
    let text = render();
    fn walk(v: &toml::Value, prefix: &str, keys: &mut Vec<String>) {
        if let toml::Value::Table(t) = v {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    toml::Value::Table(_) => walk(v, &key, keys),
                    _ => keys.push(key),
                }
            }
        }
    }
    let mut keys = Vec::new();
    walk(
        &toml::Value::try_from(corepost::config::Config::default()).unwrap(),
        "",
        &mut keys,
    );
    assert!(keys.len() > 30, "{keys:?}");
    for k in keys {
        let entry = text
            .split(&format!("### `{k}`\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("{k} is not in the reference"));
        let body = entry.split("\n### ").next().unwrap_or("");
        let doc = body
            .split_once(".\n\n")
            .map(|(_, d)| d.trim())
            .unwrap_or("");
        assert!(!doc.is_empty(), "{k} has no doc comment");
    }
}

#[test]
fn the_environment_and_flags_found_in_load_rs_set_the_keys_they_are_listed_under() {
    let env = overrides();
    // The parse of load.rs must keep finding what the README promises.
    for (key, name) in [
        ("sink.s3.endpoint", "`S3_ENDPOINT`"),
        ("sink.s3.region", "`AWS_REGION`"),
        ("upload.max_in_flight", "`MAX_WORKERS`"),
        ("queue.max_payloads", "`MAX_QUEUE`"),
        ("server.listen", "`--listen`"),
        ("spool.dir", "`--spool-dir`"),
    ] {
        assert!(
            env.get(key).is_some_and(|n| n.iter().any(|x| x == name)),
            "{name} not found for {key}: {env:?}"
        );
    }
    // Every environment variable named in load.rs is listed under some key.
    let text = std::fs::read_to_string(repo().join("src/config/load.rs")).unwrap();
    let listed: Vec<&String> = env.values().flatten().collect();
    for part in text.split("get(\"").skip(1) {
        let name = format!("`{}`", part.split('"').next().unwrap());
        assert!(
            listed.contains(&&name),
            "{name} is read but not mapped to a key"
        );
    }
}
