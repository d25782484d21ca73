//! Stage 1 of the fast path (`scan`), as simdjson's stage 1 does it: the body is classified 64
//! bytes at a time into bitmaps (quotes, backslashes, `{}[]:,`, whitespace, control and
//! non-ASCII bytes), from which the strings are found (escapes by carry arithmetic, the inside
//! of strings by a prefix XOR of the unescaped quotes) and the positions of the tokens that
//! stage 2 walks are written out: every `{}[]:,` outside strings, the opening quote of each
//! string, and the first byte of each other run outside strings (numbers and literals). A
//! closing quote is no token: only whitespace can follow it before the next token, so it is
//! the last byte before that token's whitespace. Faults that
//! need no grammar are found here: control characters in strings, anything but whitespace
//! below 0x20, backslashes or non-ASCII bytes outside strings, bad escapes, invalid UTF-8.
//!
//! The classification uses AVX2 or SSE2 (`std::arch`), AVX2 chosen at run time when the CPU
//! has it, or a scalar loop elsewhere. It is the only code here that needs `unsafe`: unaligned
//! vector loads, and the call into the AVX2 instance once the CPU is known to have AVX2.

/// Bitmaps of one 64-byte block: bit `i` stands for byte `i`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Masks {
    quote: u64,
    backslash: u64,
    /// `{ } [ ] : ,`
    op: u64,
    /// Space, tab, line feed, carriage return.
    ws: u64,
    /// Below 0x20 (tab, line feed and carriage return included).
    ctrl: u64,
    non_ascii: u64,
}

/// The reference classification and the fallback on CPUs without SSE2/AVX2.
#[cfg(any(test, not(target_arch = "x86_64")))]
fn classify_scalar(b: &[u8; 64]) -> Masks {
    let mut m = Masks::default();
    for (i, &c) in b.iter().enumerate() {
        let bit = 1u64 << i;
        match c {
            b'"' => m.quote |= bit,
            b'\\' => m.backslash |= bit,
            b'{' | b'}' | b'[' | b']' | b':' | b',' => m.op |= bit,
            b' ' | b'\t' | b'\n' | b'\r' => m.ws |= bit,
            _ => {}
        }
        if c < 0x20 {
            m.ctrl |= bit;
        }
        if c >= 0x80 {
            m.non_ascii |= bit;
        }
    }
    m
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Masks;
    use std::arch::x86_64::*;

    /// SSE2 is part of x86_64, so this needs no detection (but Rust still requires the
    /// attribute for its intrinsics to be safe to call).
    #[target_feature(enable = "sse2")]
    #[inline]
    pub(super) fn classify_sse2(b: &[u8; 64]) -> Masks {
        let mut m = Masks::default();
        for (k, chunk) in b.chunks_exact(16).enumerate() {
            // SAFETY: `chunk` is 16 readable bytes; `loadu` has no alignment requirement.
            #[allow(unsafe_code)]
            let v = unsafe { _mm_loadu_si128(chunk.as_ptr().cast()) };
            let eq = |c: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8));
            // `[` and `{` (0x5B, 0x7B), `]` and `}` (0x5D, 0x7D) differ only in bit 0x20.
            let folded = _mm_or_si128(v, _mm_set1_epi8(0x20));
            let brackets = _mm_or_si128(
                _mm_cmpeq_epi8(folded, _mm_set1_epi8(b'{' as i8)),
                _mm_cmpeq_epi8(folded, _mm_set1_epi8(b'}' as i8)),
            );
            let op = _mm_or_si128(brackets, _mm_or_si128(eq(b':'), eq(b',')));
            let ws = _mm_or_si128(
                _mm_or_si128(eq(b' '), eq(b'\t')),
                _mm_or_si128(eq(b'\n'), eq(b'\r')),
            );
            // Unsigned `v <= 0x1F`: SSE2 compares bytes as signed only.
            let ctrl = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1F)), v);
            let bits = |x: __m128i| (_mm_movemask_epi8(x) as u32 as u64) << (16 * k);
            m.quote |= bits(eq(b'"'));
            m.backslash |= bits(eq(b'\\'));
            m.op |= bits(op);
            m.ws |= bits(ws);
            m.ctrl |= bits(ctrl);
            m.non_ascii |= bits(v);
        }
        m
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    pub(super) fn classify_avx2(b: &[u8; 64]) -> Masks {
        let mut m = Masks::default();
        for (k, chunk) in b.chunks_exact(32).enumerate() {
            // SAFETY: `chunk` is 32 readable bytes; `loadu` has no alignment requirement.
            #[allow(unsafe_code)]
            let v = unsafe { _mm256_loadu_si256(chunk.as_ptr().cast()) };
            let eq = |c: u8| _mm256_cmpeq_epi8(v, _mm256_set1_epi8(c as i8));
            // simdjson's look-ups by the low nibble (`vpshufb` gives 0 for bytes >= 0x80):
            // each whitespace byte is the only byte that equals the table's entry at its low
            // nibble; `{}[]:,` with bit 0x20 set (`[` and `]` become `{` and `}`) likewise,
            // but so would 0x0C and 0x1A, control characters, which are taken out.
            let ws_table = _mm256_setr_epi8(
                32, 100, 100, 100, 17, 100, 113, 2, 100, 9, 10, 112, 100, 13, 100, 100, 32, 100,
                100, 100, 17, 100, 113, 2, 100, 9, 10, 112, 100, 13, 100, 100,
            );
            let op_table = _mm256_setr_epi8(
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 58, 123, 44, 125, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                58, 123, 44, 125, 0, 0,
            );
            let ws = _mm256_cmpeq_epi8(v, _mm256_shuffle_epi8(ws_table, v));
            let folded = _mm256_or_si256(v, _mm256_set1_epi8(0x20));
            let ctrl = _mm256_cmpeq_epi8(_mm256_min_epu8(v, _mm256_set1_epi8(0x1F)), v);
            let op = _mm256_andnot_si256(
                ctrl,
                _mm256_cmpeq_epi8(folded, _mm256_shuffle_epi8(op_table, v)),
            );
            let bits = |x: __m256i| (_mm256_movemask_epi8(x) as u32 as u64) << (32 * k);
            m.quote |= bits(eq(b'"'));
            m.backslash |= bits(eq(b'\\'));
            m.op |= bits(op);
            m.ws |= bits(ws);
            m.ctrl |= bits(ctrl);
            m.non_ascii |= bits(v);
        }
        m
    }

    /// One bit per byte of `w` (bit `k` for byte `k`) that is no ASCII digit.
    #[target_feature(enable = "sse2")]
    #[inline]
    pub(super) fn not_digits_sse2(w: &[u8; 16]) -> u32 {
        // SAFETY: `w` is 16 readable bytes; `loadu` has no alignment requirement.
        #[allow(unsafe_code)]
        let v = unsafe { _mm_loadu_si128(w.as_ptr().cast()) };
        let d = _mm_sub_epi8(v, _mm_set1_epi8(b'0' as i8));
        // Unsigned `d <= 9`.
        let digit = _mm_cmpeq_epi8(_mm_min_epu8(d, _mm_set1_epi8(9)), d);
        !(_mm_movemask_epi8(digit) as u32) & 0xFFFF
    }

    /// Stage 1 with SSE2: the generic loop inlined with the SSE2 classifier.
    #[target_feature(enable = "sse2")]
    pub(super) fn index_sse2(body: &[u8], idx: &mut Vec<u32>) -> Option<usize> {
        super::index_with(body, idx, |b| classify_sse2(b))
    }

    /// Stage 1 with AVX2: the generic loop inlined with the AVX2 classifier. BMI1 (`blsr`,
    /// `tzcnt`) and POPCNT shorten the loop that writes out the token positions, the larger
    /// part of stage 1 (every CPU with AVX2 has them; they are checked anyway).
    #[target_feature(enable = "avx2,bmi1,popcnt")]
    pub(super) fn index_avx2(body: &[u8], idx: &mut Vec<u32>) -> Option<usize> {
        super::index_with(body, idx, |b| classify_avx2(b))
    }
}

/// Writes the token positions of `body` to `idx` (grown as needed, never shrunk: its length
/// is not the count) and returns how many there are; `None` on a fault stage 1 can see (see
/// the module doc), or any other reason to leave the body to the full parser.
pub(super) fn index(body: &[u8], idx: &mut Vec<u32>) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("bmi1")
            && std::is_x86_feature_detected!("popcnt")
        {
            // SAFETY: the CPU has AVX2, BMI1 and POPCNT (checked just above), which is all
            // `index_avx2` needs.
            #[allow(unsafe_code)]
            return unsafe { x86::index_avx2(body, idx) };
        }
        // SAFETY: SSE2 is part of every x86_64 CPU, which is all `index_sse2` needs.
        #[allow(unsafe_code)]
        unsafe {
            x86::index_sse2(body, idx)
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    index_with(body, idx, classify_scalar)
}

/// One bit per byte of the 16 bytes at `i` of `b` (bit `k` for byte `i + k`) that is no ASCII
/// digit; `None` when fewer than 16 bytes are left. Stage 2 checks numbers with it.
#[inline(always)]
pub(super) fn not_digits16(b: &[u8], i: usize) -> Option<u32> {
    let w: &[u8; 16] = b.get(i..i + 16)?.try_into().ok()?;
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: SSE2 is part of every x86_64 CPU, which is all `not_digits_sse2` needs.
        #[allow(unsafe_code)]
        Some(unsafe { x86::not_digits_sse2(w) })
    }
    #[cfg(not(target_arch = "x86_64"))]
    Some(
        w.iter()
            .enumerate()
            .filter(|(_, c)| !c.is_ascii_digit())
            .fold(0, |m, (k, _)| m | 1 << k),
    )
}

const EVEN_BITS: u64 = 0x5555_5555_5555_5555;

/// Bit `i` set when an odd number of bits at or below `i` are set: the inside of the strings
/// from the quotes that delimit them (opening quote included, closing quote excluded).
#[inline(always)]
fn prefix_xor(mut x: u64) -> u64 {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    x
}

/// Carries from one block to the next.
#[derive(Debug, Default)]
struct Carry {
    /// 1 when the previous block ended in a backslash that escapes the next byte.
    escaped: u64,
    /// All ones when the previous block ended inside a string.
    in_string: u64,
    /// 1 when the previous block ended in a byte of a number or literal.
    scalar: u64,
}

/// The bytes escaped by a backslash (the byte after each backslash that is not itself
/// escaped): simdjson's odd-length backslash sequences, by carry arithmetic.
#[inline(always)]
fn escaped(backslash: u64, carry: &mut Carry) -> u64 {
    if backslash == 0 {
        return std::mem::take(&mut carry.escaped);
    }
    let backslash = backslash & !carry.escaped;
    let follows_escape = (backslash << 1) | carry.escaped;
    let odd_starts = backslash & !EVEN_BITS & !follows_escape;
    let (even_sequences, overflow) = odd_starts.overflowing_add(backslash);
    carry.escaped = u64::from(overflow);
    let invert = even_sequences << 1;
    (EVEN_BITS ^ invert) & follows_escape
}

/// Checks the escape whose escaped byte (the one after the backslash) is at `at`. A `\u`
/// escape of a surrogate is left to the full parser, as are escapes that run off the body.
#[inline(never)]
fn escape_ok(body: &[u8], at: usize) -> bool {
    match body.get(at) {
        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => true,
        Some(b'u') => {
            let Some(hex) = body.get(at + 1..at + 5) else {
                return false;
            };
            let mut v = 0u32;
            for &h in hex {
                match (h as char).to_digit(16) {
                    Some(d) => v = v * 16 + d,
                    None => return false,
                }
            }
            !(0xD800..=0xDFFF).contains(&v)
        }
        _ => false,
    }
}

/// The loop of stage 1 over 64-byte blocks (the last one padded with spaces), with the given
/// classifier; inlined into each instance so that the classifier's vector code is.
#[inline(always)]
fn index_with(
    body: &[u8],
    idx: &mut Vec<u32>,
    classify: impl Fn(&[u8; 64]) -> Masks,
) -> Option<usize> {
    // Every token is a distinct byte, so there are at most `body.len()` of them.
    if idx.len() < body.len() + 64 {
        idx.resize(body.len() + 64, 0);
    }
    let mut n = 0usize;
    let mut carry = Carry::default();
    let mut fault = 0u64;
    let mut escapes_ok = true;
    let mut first_non_ascii = usize::MAX;
    let mut last = [b' '; 64];
    let mut base = 0usize;
    while base < body.len() {
        let block: &[u8; 64] = match body.get(base..base + 64) {
            Some(b) => b.try_into().ok()?,
            None => {
                let tail = &body[base..];
                last[..tail.len()].copy_from_slice(tail);
                &last
            }
        };
        let m = classify(block);
        let esc = escaped(m.backslash, &mut carry);
        let quote = m.quote & !esc;
        let in_string = prefix_xor(quote) ^ carry.in_string;
        carry.in_string = ((in_string as i64) >> 63) as u64;
        let outside = !in_string;
        // Control characters in strings; anything below 0x20 but whitespace outside them;
        // backslashes and non-ASCII bytes outside strings.
        fault |= (m.ctrl & (in_string | !m.ws)) | ((m.backslash | m.non_ascii) & outside);
        if m.non_ascii != 0 && first_non_ascii == usize::MAX {
            first_non_ascii = base + m.non_ascii.trailing_zeros() as usize;
        }
        let mut e = esc & in_string;
        while e != 0 {
            escapes_ok &= escape_ok(body, base + e.trailing_zeros() as usize);
            e &= e - 1;
        }
        // The first byte of each run of other bytes (numbers, literals, stray bytes).
        let scalar = !(m.op | m.ws | m.quote);
        let follows = (scalar << 1) | carry.scalar;
        carry.scalar = scalar >> 63;
        let mut tokens = ((m.op | (scalar & !follows)) & outside) | (quote & in_string);
        // Written eight at a time without a test per token (positions past the last token are
        // written and then overwritten, as simdjson does): `idx` has 64 slots of room past the
        // body's length, and there are fewer tokens before this block than bytes.
        let count = tokens.count_ones() as usize;
        let out = idx.get_mut(n..n + 64)?;
        for chunk in out.chunks_exact_mut(8) {
            for slot in chunk {
                *slot = (base as u32).wrapping_add(tokens.trailing_zeros());
                tokens &= tokens.wrapping_sub(1);
            }
            if tokens == 0 {
                break;
            }
        }
        n += count;
        base += 64;
    }
    if fault != 0 || !escapes_ok || carry.in_string != 0 || n > body.len() {
        return None;
    }
    // Non-ASCII bytes are all inside strings (checked above), and everything before the first
    // one is ASCII: UTF-8 is checked from there on, by std's validator (itself fast over
    // ASCII runs), not over the whole body.
    if let Some(rest) = body.get(first_non_ascii..) {
        std::str::from_utf8(rest).ok()?;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (xorshift), biased towards JSON's special bytes.
    fn blocks(count: usize) -> Vec<[u8; 64]> {
        const BYTES: &[u8] = b"\"\\{}[]:, \t\n\r\x00\x1f\x7f\x80\xff[{]};:+-09aeE/u";
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        (0..count)
            .map(|_| {
                std::array::from_fn(|_| {
                    let r = next();
                    if r & 1 == 0 {
                        BYTES[(r >> 8) as usize % BYTES.len()]
                    } else {
                        (r >> 16) as u8
                    }
                })
            })
            .collect()
    }

    /// The vector classifiers agree with the scalar one on every byte value, in every lane.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn vector_classifiers_agree_with_the_scalar_one() {
        let mut all = blocks(2000);
        for start in (0..256).step_by(64) {
            all.push(std::array::from_fn(|i| (start + i) as u8));
            all.push(std::array::from_fn(|i| (start + 63 - i) as u8));
        }
        for b in &all {
            let want = classify_scalar(b);
            // SAFETY: SSE2 is part of every x86_64 CPU.
            #[allow(unsafe_code)]
            let got = unsafe { x86::classify_sse2(b) };
            assert_eq!(got, want, "sse2 on {b:?}");
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2 (checked just above).
                #[allow(unsafe_code)]
                let got = unsafe { x86::classify_avx2(b) };
                assert_eq!(got, want, "avx2 on {b:?}");
            }
        }
    }

    /// The three instances of stage 1 (AVX2, SSE2, scalar) give the same answer and the same
    /// token positions on every one-byte deletion and replacement of two bodies, so
    /// that the instances this CPU does not run are tested through the one it does.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn every_instance_gives_the_same_tokens() {
        type Instance<'a> = &'a dyn Fn(&[u8], &mut Vec<u32>) -> Option<usize>;
        let run = |f: Instance<'_>, body: &[u8]| {
            let mut idx = Vec::new();
            f(body, &mut idx).map(|n| idx[..n].to_vec())
        };
        let bodies: [&[u8]; 2] = [
            include_bytes!("../../benches/workload/body1.json"),
            "{\"data\":[\"\\\\\\\"é漢\\u00e9\",1.5,true,{\"k\":[null,-0]}],\"token\":\"t\"}"
                .as_bytes(),
        ];
        let mut accepted = 0;
        for base in bodies {
            for i in 0..base.len() {
                let mut cut = base.to_vec();
                cut.remove(i);
                let mut variants = vec![cut];
                for c in *b"\"\\{}[]:, 1e\x01\xc3\xff" {
                    let mut v = base.to_vec();
                    v[i] = c;
                    variants.push(v);
                }
                for v in variants {
                    let scalar = run(&|b, i| index_with(b, i, classify_scalar), &v);
                    // SAFETY: SSE2 is part of every x86_64 CPU.
                    #[allow(unsafe_code)]
                    let sse2 = run(&|b, i| unsafe { x86::index_sse2(b, i) }, &v);
                    assert_eq!(sse2, scalar, "sse2 on {}", String::from_utf8_lossy(&v));
                    assert_eq!(index(&v, &mut Vec::new()), scalar.as_ref().map(Vec::len));
                    let mut idx = Vec::new();
                    if let Some(n) = index(&v, &mut idx) {
                        assert_eq!(Some(&idx[..n]), scalar.as_deref());
                    }
                    accepted += usize::from(scalar.is_some());
                }
            }
        }
        assert!(accepted > 100, "{accepted}");
    }

    /// The escaped bytes a byte-at-a-time reading finds.
    fn escaped_reference(bytes: &[u8]) -> Vec<bool> {
        let mut out = vec![false; bytes.len()];
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'\\' && i + 1 < bytes.len() {
                out[i + 1] = true;
                i += 2;
            } else {
                i += 1;
            }
        }
        out
    }

    /// Runs of backslashes of every length, ending at every offset around block boundaries:
    /// the carry arithmetic marks the same escaped bytes as a byte-at-a-time reading.
    #[test]
    fn escapes_match_a_byte_at_a_time_reading() {
        for run in 1..=130 {
            for at in 0..=130 {
                let mut bytes = vec![b'a'; 320];
                bytes[at..at + run].fill(b'\\');
                let want = escaped_reference(&bytes);
                let mut carry = Carry::default();
                let mut got = Vec::new();
                for block in bytes.chunks_exact(64) {
                    let block: &[u8; 64] = block.try_into().unwrap();
                    let e = escaped(classify_scalar(block).backslash, &mut carry);
                    got.extend((0..64).map(|i| e >> i & 1 == 1));
                }
                assert_eq!(got, want, "run {run} at {at}");
            }
        }
    }
}
