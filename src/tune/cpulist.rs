//! The kernel's CPU list format (`0-3,8,10-11`) both ways, and the hexadecimal masks that
//! `rps_cpus` and `xps_cpus` take.

/// What is wrong with a CPU list: the part that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuListError {
    /// Neither a number nor `a-b`.
    #[error("{0:?} is not a CPU number or range")]
    NotACpu(String),
    /// `a-b` with `a` after `b`, or wider than 65,536 CPUs.
    #[error("{0:?} is not a CPU range")]
    BadRange(String),
}

/// Parses a CPU list such as `0-3,8,10-11` (an empty or blank list is empty). Returns the
/// CPUs ascending, without duplicates.
pub fn parse(text: &str) -> Result<Vec<usize>, CpuListError> {
    let text = text.trim();
    let mut cpus = Vec::new();
    if text.is_empty() {
        return Ok(cpus);
    }
    for part in text.split(',') {
        let part = part.trim();
        let num = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| CpuListError::NotACpu(part.to_string()))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b || b - a > 1 << 16 {
                    return Err(CpuListError::BadRange(part.to_string()));
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(num(part)?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Formats CPUs (in any order) as a kernel CPU list, ascending with ranges: `0-3,8`.
pub fn format(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if end == start {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{end}"));
        }
        i += 1;
    }
    out
}

/// Formats CPUs as the hexadecimal bitmap `/sys/class/net/*/queues/*/rps_cpus` takes: groups
/// of 32 bits, most significant first, separated by commas (`ffff0000,0000000f`).
pub fn hex_mask(cpus: &[usize]) -> String {
    let Some(&max) = cpus.iter().max() else {
        return "0".into();
    };
    let mut words = vec![0u32; max / 32 + 1];
    for &c in cpus {
        words[c / 32] |= 1 << (c % 32);
    }
    let mut groups: Vec<String> = words.iter().rev().map(|w| format!("{w:08x}")).collect();
    // The first group without its leading zeros, as the kernel prints it.
    if let Some(first) = groups.first_mut() {
        let trimmed = first.trim_start_matches('0');
        *first = if trimmed.is_empty() { "0" } else { trimmed }.to_string();
    }
    groups.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_format_both_ways() {
        assert_eq!(parse("0-3,8,10-11\n").unwrap(), [0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse(" \n").unwrap(), Vec::<usize>::new());
        assert_eq!(parse("5,1,1").unwrap(), [1, 5]);
        assert_eq!(format(&[11, 0, 1, 2, 3, 8, 10]), "0-3,8,10-11");
        assert_eq!(format(&[]), "");
        for bad in ["x", "3-1", "1-", "1,,2", "0-99999999"] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn masks_group_32_bits() {
        assert_eq!(hex_mask(&[0, 1, 2, 3]), "f");
        assert_eq!(hex_mask(&[1, 33]), "2,00000002");
        assert_eq!(hex_mask(&(0..64).collect::<Vec<_>>()), "ffffffff,ffffffff");
        assert_eq!(hex_mask(&[]), "0");
    }
}
