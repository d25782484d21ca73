//! The request record: what `ack = "durable"` spools per request (received time, optional
//! tenant, body), and its parse.

/// Builds the record of one request: its arrival time (Unix seconds, for its keys' date
/// path, so a replay names its objects as the first run did), its tenant if it has one (so a
/// replay stores it under the same tenant), and its body.
///
/// Layout: the arrival time as a little-endian `u64`; if its top bit ([`TENANT_FLAG`]) is
/// set, a one-byte length and the tenant's bytes follow; then the body. Records written
/// before tenants existed have the bit clear (no arrival time reaches 2^63) and read as
/// records without a tenant.
pub fn request_record(received_secs: u64, tenant: Option<&str>, body: &[u8]) -> Vec<u8> {
    let tenant = tenant.filter(|t| !t.is_empty() && t.len() <= usize::from(u8::MAX));
    let extra = tenant.map_or(0, |t| 1 + t.len());
    let mut rec = Vec::with_capacity(RECORD_HEADER + extra + body.len());
    match tenant {
        Some(t) => {
            rec.extend_from_slice(&(received_secs | TENANT_FLAG).to_le_bytes());
            rec.push(t.len() as u8);
            rec.extend_from_slice(t.as_bytes());
        }
        None => rec.extend_from_slice(&received_secs.to_le_bytes()),
    }
    rec.extend_from_slice(body);
    rec
}

/// Bytes before the body in a record made by [`request_record`] without a tenant (the
/// least any record has).
pub const RECORD_HEADER: usize = 8;

/// Set in a record's arrival-time word when a tenant follows it.
pub const TENANT_FLAG: u64 = 1 << 63;

/// A record made by [`request_record`], split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestRecord<'a> {
    /// Arrival time (Unix seconds).
    pub received_secs: u64,
    /// The tenant the request was accepted for.
    pub tenant: Option<&'a str>,
    /// Bytes before the body.
    pub header_len: usize,
    /// The request body.
    pub body: &'a [u8],
}

/// Splits a record made by [`request_record`]; `None` if it is too short for its header or
/// its tenant is not a valid tenant name.
pub fn split_record(rec: &[u8]) -> Option<RequestRecord<'_>> {
    let (word, rest) = rec.split_at_checked(RECORD_HEADER)?;
    let word = u64::from_le_bytes(word.try_into().ok()?);
    if word & TENANT_FLAG == 0 {
        return Some(RequestRecord {
            received_secs: word,
            tenant: None,
            header_len: RECORD_HEADER,
            body: rest,
        });
    }
    let (&len, rest) = rest.split_first()?;
    let (tenant, body) = rest.split_at_checked(usize::from(len))?;
    let tenant = std::str::from_utf8(tenant)
        .ok()
        .filter(|t| crate::auth::valid_tenant(t))?;
    Some(RequestRecord {
        received_secs: word & !TENANT_FLAG,
        tenant: Some(tenant),
        header_len: RECORD_HEADER + 1 + usize::from(len),
        body,
    })
}
