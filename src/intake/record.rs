//! The request record: what `ack = "durable"` spools per request (received time, optional
//! tenant, the header values the key template names, body), and its parse. Intake writes
//! it and replays it; to the spool it is opaque bytes.

/// Builds the record of one request: its arrival time (Unix seconds, for its keys' date
/// path, so a replay names its objects as the first run did), its tenant if it has one (so a
/// replay stores it under the same tenant), and its body.
///
/// Layout: the arrival time as a little-endian `u64`; if its top bit ([`TENANT_FLAG`]) is
/// set, a one-byte length and the tenant's bytes follow; then the body. Records written
/// before tenants existed have the bit clear (no arrival time reaches 2^63) and read as
/// records without a tenant.
#[cfg(test)]
pub fn request_record(received_secs: u64, tenant: Option<&str>, body: &[u8]) -> Vec<u8> {
    request_record_with(received_secs, tenant, &[], body)
}

/// As [`request_record`], with the values of the request headers the key template names
/// (`{header.NAME}`), so a replay puts its payloads in the same partitions.
///
/// When there are any, [`HEADERS_FLAG`] is set in the arrival-time word and, after the
/// tenant, a one-byte count follows, then per value a little-endian `u32` length
/// ([`ABSENT`] for a header the request did not have) and its bytes. At most 255 values
/// (a template names far fewer).
pub fn request_record_with(
    received_secs: u64,
    tenant: Option<&str>,
    headers: &[Option<Box<[u8]>>],
    body: &[u8],
) -> Vec<u8> {
    let tenant = tenant.filter(|t| !t.is_empty() && t.len() <= usize::from(u8::MAX));
    let headers = &headers[..headers.len().min(usize::from(u8::MAX))];
    let mut word = received_secs;
    let mut extra = 0;
    if let Some(t) = tenant {
        word |= TENANT_FLAG;
        extra += 1 + t.len();
    }
    if !headers.is_empty() {
        word |= HEADERS_FLAG;
        extra += 1 + headers
            .iter()
            .map(|v| 4 + v.as_ref().map_or(0, |v| v.len()))
            .sum::<usize>();
    }
    let mut rec = Vec::with_capacity(RECORD_HEADER + extra + body.len());
    rec.extend_from_slice(&word.to_le_bytes());
    if let Some(t) = tenant {
        rec.push(t.len() as u8);
        rec.extend_from_slice(t.as_bytes());
    }
    if !headers.is_empty() {
        rec.push(headers.len() as u8);
        for v in headers {
            // A header value is bounded by `server.max_header_bytes`, far below 4 GiB.
            let len = v.as_ref().map_or(ABSENT, |v| v.len() as u32);
            rec.extend_from_slice(&len.to_le_bytes());
            rec.extend_from_slice(v.as_deref().unwrap_or_default());
        }
    }
    rec.extend_from_slice(body);
    rec
}

/// Bytes before the body in a record made by [`request_record`] without a tenant (the
/// least any record has).
pub const RECORD_HEADER: usize = 8;

/// Set in a record's arrival-time word when a tenant follows it.
pub const TENANT_FLAG: u64 = 1 << 63;

/// Set in a record's arrival-time word when header values follow (after the tenant, if
/// any). Records written before it existed have it clear (no arrival time reaches 2^62).
pub const HEADERS_FLAG: u64 = 1 << 62;

/// The length written for a header the request did not have.
pub const ABSENT: u32 = u32::MAX;

/// A record made by [`request_record`], split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestRecord<'a> {
    /// Arrival time (Unix seconds).
    pub received_secs: u64,
    /// The tenant the request was accepted for.
    pub tenant: Option<&'a str>,
    /// The recorded header values, encoded (see [`request_record_with`]); empty if none.
    pub headers: &'a [u8],
    /// Bytes before the body.
    pub header_len: usize,
    /// The request body.
    pub body: &'a [u8],
}

/// Splits a record made by [`request_record`]; `None` if it is too short for its header or
/// its tenant is not a valid tenant name.
pub fn split_record(rec: &[u8]) -> Option<RequestRecord<'_>> {
    let (word, mut rest) = rec.split_at_checked(RECORD_HEADER)?;
    let word = u64::from_le_bytes(word.try_into().ok()?);
    let mut tenant = None;
    if word & TENANT_FLAG != 0 {
        let (&len, after) = rest.split_first()?;
        let (t, after) = after.split_at_checked(usize::from(len))?;
        let t = std::str::from_utf8(t)
            .ok()
            .filter(|t| crate::auth::valid_tenant(t))?;
        tenant = Some(t);
        rest = after;
    }
    let mut headers: &[u8] = &[];
    if word & HEADERS_FLAG != 0 {
        let start = rest;
        let (&count, mut after) = rest.split_first()?;
        for _ in 0..count {
            let (len, more) = after.split_at_checked(4)?;
            let len = u32::from_le_bytes(len.try_into().ok()?);
            let n = if len == ABSENT { 0 } else { len as usize };
            after = more.get(n..)?;
        }
        headers = &start[..start.len() - after.len()];
        rest = after;
    }
    Some(RequestRecord {
        received_secs: word & !(TENANT_FLAG | HEADERS_FLAG),
        tenant,
        headers,
        header_len: rec.len() - rest.len(),
        body: rest,
    })
}

impl RequestRecord<'_> {
    /// The recorded header values, in the order the record's key template names them.
    pub fn header_values(&self) -> crate::job::HeaderValues {
        let Some((&count, mut rest)) = self.headers.split_first() else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let Some((len, more)) = rest.split_at_checked(4) else {
                break;
            };
            let len = len.try_into().map_or(ABSENT, u32::from_le_bytes);
            if len == ABSENT {
                out.push(None);
                rest = more;
                continue;
            }
            let Some((v, more)) = more.split_at_checked(len as usize) else {
                break;
            };
            out.push(Some(v.into()));
            rest = more;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_records_carry_their_tenant_and_old_records_still_read() {
        // Written before tenants existed: the arrival time, then the body.
        let mut old = 1_795_910_399u64.to_le_bytes().to_vec();
        old.extend_from_slice(b"{\"data\":[1]}");
        let r = split_record(&old).unwrap();
        assert_eq!(
            (r.received_secs, r.tenant, r.header_len, r.body),
            (1_795_910_399, None, RECORD_HEADER, &b"{\"data\":[1]}"[..])
        );
        assert_eq!(request_record(1_795_910_399, None, b"{\"data\":[1]}"), old);
        let rec = request_record(1_795_910_399, Some("acme.eu-1"), b"{\"data\":[1]}");
        let r = split_record(&rec).unwrap();
        assert_eq!(
            (r.received_secs, r.tenant, r.body),
            (1_795_910_399, Some("acme.eu-1"), &b"{\"data\":[1]}"[..])
        );
        assert_eq!(r.header_len, RECORD_HEADER + 1 + 9);
        assert_eq!(&rec[r.header_len..], r.body);
        // Cut inside the tenant, or a tenant that is not one: unreadable, not a wrong tenant.
        assert!(split_record(&rec[..RECORD_HEADER + 4]).is_none());
        let mut bad = rec.clone();
        bad[RECORD_HEADER + 1] = b'/';
        assert!(split_record(&bad).is_none());
        assert!(split_record(&rec[..5]).is_none());
    }

    #[test]
    fn header_values_are_recorded_with_the_tenant_and_read_back() {
        let headers: crate::job::HeaderValues = vec![
            Some(b"app/v1".to_vec().into()),
            None,
            Some(Vec::new().into()),
        ];
        for tenant in [None, Some("acme")] {
            let rec = request_record_with(1_795_910_399, tenant, &headers, b"{\"data\":[1]}");
            let r = split_record(&rec).unwrap();
            assert_eq!(r.received_secs, 1_795_910_399);
            assert_eq!(r.tenant, tenant);
            assert_eq!(r.body, b"{\"data\":[1]}");
            assert_eq!(r.header_values(), headers);
            // Cut anywhere before the body: unreadable, never a panic.
            for end in 0..r.header_len {
                if let Some(cut) = split_record(&rec[..end]) {
                    assert!(cut.header_values().len() < headers.len() || cut.body.is_empty());
                }
            }
        }
        // Without header values the record is as before.
        let plain = request_record_with(5, Some("acme"), &[], b"x");
        assert_eq!(plain, request_record(5, Some("acme"), b"x"));
        assert!(split_record(&plain).unwrap().header_values().is_empty());
    }
}
