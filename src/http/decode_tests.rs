//! Tests of `http::decode` (a file of their own to keep `decode.rs` short).

use super::*;
use crate::http::answer::body_status;
use crate::queue::Budget;
use crate::queue::NoRoom;
use std::sync::Arc;

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn zlib(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn raw_deflate(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn zstd(b: &[u8]) -> Vec<u8> {
    zstd::encode_all(b, 3).unwrap()
}

/// Decodes `data` fed in `chunk`-byte frames with a fresh 64 MiB budget.
fn decode(coding: Coding, data: &[u8], chunk: usize, cap: usize) -> Result<Vec<u8>, BodyError> {
    let budget = Arc::new(Budget::new(1000, 64 << 20));
    let mut room = budget.reserve_bytes(0).unwrap();
    let mut d = BodyDecoder::new(coding, cap, &mut room)?;
    for c in data.chunks(chunk.max(1)) {
        d.write(c)?;
    }
    let out = d.finish()?;
    assert!(
        room.bytes() >= out.len(),
        "the reservation holds the output"
    );
    Ok(out)
}

fn body(n: usize) -> Vec<u8> {
    (0..n).map(|i| b"{\"data\":[1,2,3]}  "[i % 18]).collect()
}

#[test]
fn each_coding_decodes_whatever_the_frame_sizes() {
    let plain = body(300_000);
    for (coding, data) in [
        (Coding::Gzip, gzip(&plain)),
        (Coding::Deflate, zlib(&plain)),
        (Coding::Deflate, raw_deflate(&plain)),
        (Coding::Zstd, zstd(&plain)),
    ] {
        for chunk in [1, 2, 3, 1000, usize::MAX] {
            let out = decode(coding, &data, chunk, 16 << 20)
                .unwrap_or_else(|e| panic!("{coding:?} in {chunk}-byte frames: {e}"));
            assert!(out == plain, "{coding:?} in {chunk}-byte frames");
        }
    }
}

#[test]
fn concatenated_gzip_members_and_zstd_frames_are_one_body() {
    let (a, b) = (b"{\"data\":[".to_vec(), b"1]}".to_vec());
    let two = [gzip(&a), gzip(&b)].concat();
    assert_eq!(
        decode(Coding::Gzip, &two, 7, 1 << 20).unwrap(),
        b"{\"data\":[1]}"
    );
    let two = [zstd(&a), zstd(&b)].concat();
    assert_eq!(
        decode(Coding::Zstd, &two, 7, 1 << 20).unwrap(),
        b"{\"data\":[1]}"
    );
}

#[test]
fn output_stops_at_the_cap_without_allocating_past_it() {
    // 64 MiB of zeros, about 64 KiB compressed, against a 1 MiB cap.
    let zeros = vec![0u8; 64 << 20];
    for (coding, data) in [
        (Coding::Gzip, gzip(&zeros)),
        (Coding::Deflate, zlib(&zeros)),
        (Coding::Zstd, zstd(&zeros)),
    ] {
        let budget = Arc::new(Budget::new(1000, 64 << 20));
        let mut room = budget.reserve_bytes(0).unwrap();
        let mut d = BodyDecoder::new(coding, 1 << 20, &mut room).unwrap();
        let e = data
            .chunks(16 << 10)
            .try_for_each(|c| d.write(c))
            .expect_err("over the cap");
        assert!(
            matches!(e, BodyError::DecodedTooLarge(c) if c == 1 << 20),
            "{coding:?}"
        );
        assert_eq!(body_status(&e), http::StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            e.to_string(),
            "decoded body larger than 1048576 bytes (server.max_decoded_bytes)"
        );
        let out = match &mut d.inner {
            Inner::Gzip(d) => d.get_mut(),
            Inner::Zlib(d) => d.get_mut(),
            Inner::Zstd(d) => d.get_mut(),
            _ => unreachable!(),
        };
        assert!(out.allocated <= 1 << 20, "{coding:?}: {}", out.allocated);
        drop(d);
        // The output, the decoder's state and (zstd) its window, filled up to the cap.
        assert!(room.bytes() <= (2 << 20) + (512 << 10), "{coding:?}");
    }
}

#[test]
fn decoder_memory_counts_against_the_budget() {
    let plain = body(1 << 20);
    let budget = Arc::new(Budget::new(1000, 64 << 20));
    // gzip: its state; zstd: its state and a window filled with the output.
    for (coding, data, extra) in [
        (Coding::Gzip, gzip(&plain), 128 << 10),
        (Coding::Zstd, zstd(&plain), (512 << 10) + plain.len()),
    ] {
        let mut room = budget.reserve_bytes(0).unwrap();
        let mut d = BodyDecoder::new(coding, 16 << 20, &mut room).unwrap();
        d.write(&data).unwrap();
        let out = d.finish().unwrap();
        assert!(
            room.bytes() >= out.len() + extra,
            "{coding:?}: {} bytes held for {} decoded",
            room.bytes(),
            out.len()
        );
    }
    assert_eq!(budget.depth(), (0, 0));
    // A queue of 1.5 MiB holds a 1 MiB gzip body, not a 1 MiB zstd body and its window.
    let budget = Arc::new(Budget::new(1000, 3 << 19));
    let mut room = budget.reserve_bytes(0).unwrap();
    let mut d = BodyDecoder::new(Coding::Gzip, 16 << 20, &mut room).unwrap();
    d.write(&gzip(&plain)).unwrap();
    assert_eq!(d.finish().unwrap(), plain);
    drop(room);
    let mut room = budget.reserve_bytes(0).unwrap();
    let mut d = BodyDecoder::new(Coding::Zstd, 16 << 20, &mut room).unwrap();
    let e = d.write(&zstd(&plain)).unwrap_err();
    assert!(
        matches!(e, BodyError::NoRoom(NoRoom::OverQueue { .. })),
        "{e}"
    );
}

#[test]
fn the_budget_counts_decoded_bytes() {
    let plain = body(1 << 20);
    // No room now: 503, as for a plain body.
    let budget = Arc::new(Budget::new(1000, 4 << 20));
    let held = budget.reserve_bytes(7 << 19).unwrap();
    let mut room = budget.reserve_bytes(0).unwrap();
    let mut d = BodyDecoder::new(Coding::Gzip, 16 << 20, &mut room).unwrap();
    assert!(matches!(
        d.write(&gzip(&plain)),
        Err(BodyError::NoRoom(NoRoom::Overloaded))
    ));
    drop(d);
    drop(room);
    drop(held);
    assert_eq!(budget.depth(), (0, 0), "all room returned");
    // More than the whole queue holds: 413 naming queue.max_bytes.
    let budget = Arc::new(Budget::new(1000, 512 << 10));
    let mut room = budget.reserve_bytes(0).unwrap();
    let mut d = BodyDecoder::new(Coding::Zstd, 16 << 20, &mut room).unwrap();
    let e = d.write(&zstd(&plain)).unwrap_err();
    assert!(
        matches!(e, BodyError::NoRoom(NoRoom::OverQueue { max, .. }) if max == 512 << 10),
        "{e}"
    );
    drop(d);
    // Within both: the reservation ends up holding the decoded length.
    let budget = Arc::new(Budget::new(1000, 4 << 20));
    let mut room = budget.reserve_bytes(1000).unwrap();
    let mut d = BodyDecoder::new(Coding::Deflate, 16 << 20, &mut room).unwrap();
    d.write(&zlib(&plain)).unwrap();
    let out = d.finish().unwrap();
    assert_eq!(out.len(), plain.len());
    room.shrink_to(out.len());
    assert_eq!(budget.depth().1, plain.len());
}

#[test]
fn corrupt_truncated_and_trailing_data_are_400() {
    let plain = body(10_000);
    let gz = gzip(&plain);
    let mut bad_crc = gz.clone();
    let n = bad_crc.len();
    bad_crc[n - 8] ^= 1;
    let z = zstd(&plain);
    for (coding, data, why) in [
        (Coding::Gzip, b"\x1f\x8b\x08\x00garbage".to_vec(), ""),
        (Coding::Gzip, b"not gzip".to_vec(), ""),
        (Coding::Gzip, gz[..gz.len() / 2].to_vec(), "ends early"),
        (Coding::Gzip, bad_crc, ""),
        (Coding::Gzip, [gz.clone(), b"junk".to_vec()].concat(), ""),
        (Coding::Deflate, b"\xff\xff\xff\xff".to_vec(), ""),
        (Coding::Deflate, zlib(&plain)[..30].to_vec(), "ends early"),
        (
            Coding::Deflate,
            [zlib(&plain), b"x".to_vec()].concat(),
            "after the end",
        ),
        (Coding::Deflate, b"x".to_vec(), "before the compressed data"),
        (Coding::Zstd, b"not zstd".to_vec(), ""),
        (Coding::Zstd, z[..z.len() - 3].to_vec(), ""),
        (Coding::Gzip, Vec::new(), ""),
        (Coding::Zstd, Vec::new(), ""),
    ] {
        let e = decode(coding, &data, 5, 1 << 20).expect_err("refused");
        assert_eq!(
            body_status(&e),
            http::StatusCode::BAD_REQUEST,
            "{coding:?} {e}"
        );
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("invalid {} data: ", coding.name())) && msg.contains(why),
            "{msg}"
        );
    }
}

#[test]
fn a_zstd_window_larger_than_the_cap_is_refused_not_allocated() {
    // Window log 27 (128 MiB) against a 1 MiB cap (which allows windows of 8 MiB).
    let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    e.window_log(27).unwrap();
    e.write_all(&body(2 << 20)).unwrap();
    let data = e.finish().unwrap();
    let err = decode(Coding::Zstd, &data, 1 << 20, 1 << 20).expect_err("refused");
    assert!(matches!(err, BodyError::WindowTooLarge(w) if w == 8 << 20));
    assert_eq!(body_status(&err), http::StatusCode::PAYLOAD_TOO_LARGE);
    // The same data with a cap that covers its window decodes.
    assert_eq!(
        decode(Coding::Zstd, &data, 1 << 20, 128 << 20).unwrap(),
        body(2 << 20)
    );
}

#[test]
fn content_encoding_headers() {
    let of = |values: &[&str]| {
        let mut h = http::HeaderMap::new();
        for v in values {
            h.append(CONTENT_ENCODING, http::HeaderValue::from_str(v).unwrap());
        }
        Coding::of_request(&h)
    };
    assert_eq!(of(&[]).ok(), Some(None));
    assert_eq!(of(&["identity"]).ok(), Some(None));
    assert_eq!(of(&[""]).ok(), Some(None));
    assert_eq!(of(&["GZIP"]).ok(), Some(Some(Coding::Gzip)));
    assert_eq!(of(&["x-gzip"]).ok(), Some(Some(Coding::Gzip)));
    assert_eq!(of(&[" deflate "]).ok(), Some(Some(Coding::Deflate)));
    assert_eq!(of(&["zstd", "identity"]).ok(), Some(Some(Coding::Zstd)));
    for bad in [
        &["br"][..],
        &["snappy"],
        &["gzip, zstd"],
        &["gzip", "gzip"],
        &["compress"],
    ] {
        let e = of(bad).expect_err("refused");
        assert_eq!(
            body_status(&e),
            http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{bad:?}"
        );
    }
    assert_eq!(
        of(&["br"]).unwrap_err().to_string(),
        "unsupported Content-Encoding \"br\"; request bodies may be gzip, deflate or zstd"
    );
}
