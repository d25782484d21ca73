//! Compressed request bodies (`Content-Encoding: gzip`, `deflate`, `zstd`) from real clients
//! (Python `requests`, curl), stored decoded; a compression bomb refused with `413` without
//! the server's memory growing past the decoded-body cap; unknown codings refused with `415`;
//! invalid JSON explained in words by both parsers.

mod common;

use common::*;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A one-shard server with the fs sink under `root`, plus `config` (TOML) when not empty.
fn start(root: &Path, config: &str) -> (Server, FsFiles) {
    fs_server(1, Some(root), config, &[], &[])
}

/// Payloads (as the bytes to send) tagged with `tag`, each different, with escapes and
/// non-ASCII text that must survive as sent.
fn payloads(tag: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"tag":"{tag}","n":{i},"s":"quote \" slash \\ \u00e9 ünï ✓","big":18446744073709551615,"pad":"{}"}}"#,
                "x".repeat(i * 37 % 500)
            )
        })
        .collect()
}

fn collection(p: &[String]) -> Vec<u8> {
    format!(r#"{{"version":"1","token":"t","data":[{}]}}"#, p.join(",")).into_bytes()
}

/// Every stored object under `root` (one `.json` file per payload by default), sorted.
fn stored(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = files_under(root)
        .iter()
        .map(|f| {
            assert!(f.to_string_lossy().ends_with(".json"), "{}", f.display());
            std::fs::read_to_string(f).unwrap()
        })
        .collect();
    out.sort();
    out
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// Posts each `(encoding, file)` with Python `requests`, compressing it with the standard
/// library (`gzip`, `zlib`) or `zstandard`; prints one `status body` line per request.
const REQUESTS_CLIENT: &str = r#"
import gzip, sys, zlib
import requests
try:
    import zstandard
except ImportError:
    sys.exit("the Python module zstandard is missing: python3 -m pip install requests zstandard (scripts/test.sh does)")
url = sys.argv[1]
for enc, path in zip(sys.argv[2::2], sys.argv[3::2]):
    raw = open(path, "rb").read()
    body = {"gzip": gzip.compress, "zstd": zstandard.ZstdCompressor().compress, "deflate": zlib.compress}[enc](raw)
    r = requests.post(url, data=body, headers={"Content-Type": "application/json", "Content-Encoding": enc}, timeout=30)
    print(r.status_code, r.text)
"#;

#[test]
fn python_requests_posts_gzip_and_zstd_bodies_that_are_stored_decoded() {
    let out = tempfile::tempdir().unwrap();
    let (s, _conf) = start(out.path(), "");
    let tmp = tempfile::tempdir().unwrap();
    let (gz, zst) = (payloads("gzip", 40), payloads("zstd", 25));
    let (gz_path, zst_path) = (tmp.path().join("gz.json"), tmp.path().join("zst.json"));
    std::fs::write(&gz_path, collection(&gz)).unwrap();
    std::fs::write(&zst_path, collection(&zst)).unwrap();
    let url = format!("http://{}/v1/payloads", s.addr);
    let run = Command::new("python3")
        .arg("-c")
        .arg(REQUESTS_CLIENT)
        .arg(&url)
        .args(["gzip", gz_path.to_str().unwrap()])
        .args(["zstd", zst_path.to_str().unwrap()])
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "python client failed: {}{}",
        stdout,
        String::from_utf8_lossy(&run.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [r#"200 {"accepted":40}"#, r#"200 {"accepted":25}"#],
        "{stdout}"
    );
    s.wait_drained(Duration::from_secs(30));
    assert_eq!(stored(out.path()), sorted([gz, zst].concat()));
}

#[test]
fn deflate_bodies_zlib_wrapped_from_curl_and_raw_are_stored_decoded() {
    let out = tempfile::tempdir().unwrap();
    let (s, _conf) = start(out.path(), "");
    // zlib-wrapped deflate (what RFC 9110 calls deflate), sent by curl from a file.
    let zlib_p = payloads("zlib", 12);
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(&collection(&zlib_p)).unwrap();
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), e.finish().unwrap()).unwrap();
    let curl = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-H"])
        .arg("Content-Type: application/json")
        .args(["-H", "Content-Encoding: deflate", "--data-binary"])
        .arg(format!("@{}", tmp.path().display()))
        .arg(format!("http://{}/v1/payloads", s.addr))
        .output()
        .expect("curl");
    let got = String::from_utf8_lossy(&curl.stdout);
    assert_eq!(got, "{\"accepted\":12}\n200", "{got}");
    // Raw deflate without the zlib wrapper (what some clients send), chunked, on `/`.
    let raw_p = payloads("raw", 7);
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&collection(&raw_p)).unwrap();
    let compressed = e.finish().unwrap();
    let mut chunked = Vec::new();
    for c in compressed.chunks(100) {
        chunked.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        chunked.extend_from_slice(c);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let r = request(
        s.addr,
        "POST",
        "/",
        &[
            ("Content-Encoding", "Deflate"),
            ("Transfer-Encoding", "chunked"),
        ],
        &chunked,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["accepted"], 7);
    s.wait_drained(Duration::from_secs(30));
    assert_eq!(stored(out.path()), sorted([zlib_p, raw_p].concat()));
}

/// Peak resident set of a process, in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Deflates all of `input` with `flush` at its end, returning what the compressor wrote.
fn deflate_all(c: &mut flate2::Compress, input: &[u8], flush: flate2::FlushCompress) -> Vec<u8> {
    let (start, mut out) = (c.total_in(), Vec::new());
    loop {
        out.reserve(64 << 10);
        let done = (c.total_in() - start) as usize;
        let status = c.compress_vec(&input[done..], &mut out, flush).unwrap();
        let done = (c.total_in() - start) as usize;
        // Done once all input is in and the compressor no longer fills the space it has.
        if status == flate2::Status::StreamEnd
            || (done == input.len() && out.len() < out.capacity())
        {
            return out;
        }
    }
}

/// One gzip member holding `{"data":["` and then 1 GiB of zero bytes, built without ever
/// holding (or compressing) the gigabyte: 1 MiB of zeros is deflated once, ending in a full
/// flush, which leaves no reference to earlier data and ends on a byte boundary, so the same
/// blocks can follow each other 1,024 times; then a final empty block and the gzip trailer
/// (the CRC of the whole, combined from the CRC of 1 MiB).
fn gzip_bomb() -> (Vec<u8>, u64) {
    use flate2::{Compress, Compression, Crc, FlushCompress};
    const MIB: usize = 1 << 20;
    let prefix = br#"{"data":[""#;
    let zeros = vec![0u8; MIB];
    // The prefix, flushed so that the zero blocks start on a byte boundary with no history.
    let mut c = Compress::new(Compression::default(), false);
    let head = deflate_all(&mut c, prefix, FlushCompress::Full);
    // 1 MiB of zeros from a fresh compressor (no history either way), fully flushed.
    let mut c = Compress::new(Compression::default(), false);
    let block = deflate_all(&mut c, &zeros, FlushCompress::Full);
    let mut c = Compress::new(Compression::default(), false);
    let tail = deflate_all(&mut c, &[], FlushCompress::Finish);
    let mut crc = Crc::new();
    crc.update(prefix);
    let mut mib = Crc::new();
    mib.update(&zeros);
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    out.extend_from_slice(&head);
    for _ in 0..1024 {
        out.extend_from_slice(&block);
        crc.combine(&mib);
    }
    out.extend_from_slice(&tail);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&crc.amount().to_le_bytes());
    (out, prefix.len() as u64 + (1024 * MIB) as u64)
}

#[test]
fn a_gzip_bomb_is_413_naming_the_cap_and_costs_no_more_memory_than_the_cap() {
    let (bomb, decoded_len) = gzip_bomb();
    assert!(bomb.len() < 2 << 20, "{} bytes", bomb.len());
    // The bomb is a valid gzip file of 1 GiB and a bit (checked by streaming it through a
    // decoder that only counts, so neither side holds the gigabyte).
    let mut count = CountingSink(0);
    let mut d = flate2::write::GzDecoder::new(&mut count);
    d.write_all(&bomb).unwrap();
    d.try_finish().unwrap();
    drop(d);
    assert_eq!(count.0, decoded_len);

    let out = tempfile::tempdir().unwrap();
    // The compressed body (about 1 MiB) is within max_body_bytes; only its decoded size is
    // too large. The default cap: 16 MiB.
    let (s, _conf) = start(out.path(), "[server]\nmax_body_bytes = 4194304\n");
    let before_mib = vm_hwm_kib(s.child.id()) / 1024;
    let r = request(
        s.addr,
        "POST",
        "/v1/payloads",
        &[("Content-Encoding", "gzip")],
        &bomb,
    );
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json()["error"],
        "decoded body larger than 16777216 bytes (server.max_decoded_bytes)"
    );
    let peak_mib = vm_hwm_kib(s.child.id()) / 1024;
    eprintln!(
        "peak RSS after a {} byte gzip bomb of {decoded_len} bytes: {peak_mib} MiB ({before_mib} MiB before it)",
        bomb.len()
    );
    assert!(peak_mib < 16 + 64, "peak RSS {peak_mib} MiB");
    // What the bomb added: the 16 MiB cap, plus decoder state, hyper's buffers and the
    // allocator's slack.
    assert!(
        peak_mib - before_mib <= 16 + 12,
        "the bomb added {} MiB",
        peak_mib - before_mib
    );
    // The server still serves, also compressed bodies within the cap.
    let p = payloads("after", 3);
    let r = request(
        s.addr,
        "POST",
        "/v1/payloads",
        &[("Content-Encoding", "gzip")],
        &gzip(&collection(&p)),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

struct CountingSink(u64);

impl Write for CountingSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn limits_count_compressed_bytes_on_the_wire_and_decoded_bytes_in_the_queue() {
    let out = tempfile::tempdir().unwrap();
    // A 3 MiB body compresses well below max_body_bytes, and decodes within
    // max_decoded_bytes, but is more than the shard's whole queue holds.
    let (s, _conf) = start(
        out.path(),
        "[server]\nmax_body_bytes = 65536\nmax_decoded_bytes = 8388608\n[queue]\nmax_bytes = 2097152\n",
    );
    let big = collection(&[format!(r#""{}""#, "a".repeat(3 << 20))]);
    let r = request(
        s.addr,
        "POST",
        "/v1/payloads",
        &[("Content-Encoding", "gzip")],
        &gzip(&big),
    );
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    let msg = r.json()["error"].as_str().unwrap().to_string();
    assert!(msg.contains("queue.max_bytes"), "{msg}");
    // max_body_bytes still limits what comes over the wire: 100 KiB of compressed bytes.
    let noise: Vec<u8> = (0..100u32 << 10)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let r = request(
        s.addr,
        "POST",
        "/v1/payloads",
        &[("Content-Encoding", "gzip")],
        &noise,
    );
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("body larger than 65536 bytes"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

#[test]
fn unknown_encodings_are_415_with_accept_encoding_and_identity_is_none() {
    let out = tempfile::tempdir().unwrap();
    let (s, _conf) = start(out.path(), "");
    for enc in ["br", "snappy", "compress", "gzip, zstd", "x-unknown"] {
        let r = request(
            s.addr,
            "POST",
            "/v1/payloads",
            &[("Content-Encoding", enc)],
            BODY10,
        );
        assert_eq!(r.status, 415, "{enc}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("accept-encoding"), Some("gzip, deflate, zstd"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        let msg = r.json()["error"].as_str().unwrap().to_string();
        assert!(msg.contains("Content-Encoding"), "{msg}");
    }
    let r = request(
        s.addr,
        "POST",
        "/v1/payloads",
        &[("Content-Encoding", "identity")],
        BODY10,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // Corrupt compressed data: 400 saying what could not be decoded.
    for (enc, body) in [
        ("gzip", b"\x1f\x8b\x08\x00garbage garbage".to_vec()),
        ("zstd", b"not zstd at all".to_vec()),
        ("deflate", b"\xff\xff\xff\xff".to_vec()),
        ("gzip", gzip(BODY10)[..40].to_vec()), // truncated
    ] {
        let r = request(
            s.addr,
            "POST",
            "/v1/payloads",
            &[("Content-Encoding", enc)],
            &body,
        );
        assert_eq!(r.status, 400, "{enc}: {}", String::from_utf8_lossy(&r.body));
        let msg = r.json()["error"].as_str().unwrap().to_string();
        assert!(msg.starts_with(&format!("invalid {enc} data")), "{msg}");
    }
    assert_eq!(post(s.addr, BODY10).status, 200);
}

#[test]
fn invalid_json_is_explained_in_words_by_both_parsers() {
    for parser in ["simd", "serde"] {
        let out = tempfile::tempdir().unwrap();
        let (s, _conf) = start(out.path(), &format!("[server]\nparser = \"{parser}\"\n"));
        for (body, want) in [
            (&b"nope"[..], "invalid JSON at byte 0: expected a value"),
            (b"", "invalid JSON at byte 0: unexpected end of the body"),
            (
                b"{\"data\":[1,]}",
                "invalid JSON at byte 11: trailing comma",
            ),
            (
                b"{\"data\":[1]} x",
                "invalid JSON at byte 13: unexpected data after the JSON value",
            ),
            (
                b"{\"data\":[\"\xff\"]}",
                "invalid JSON at byte 10: invalid UTF-8",
            ),
            (
                b"{\"data\":[1 2]}",
                "invalid JSON at byte 11: expected `,` or `]` after an array element",
            ),
        ] {
            let r = post(s.addr, body);
            assert_eq!(r.status, 400, "{parser}");
            assert_eq!(
                r.json()["error"],
                want,
                "{parser}: {:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
