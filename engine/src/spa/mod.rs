//! Single-packet authorization, wire-compatible with fwknop 2.6 (AES-256-CBC with
//! OpenSSL's `Salted__` key derivation, HMAC-SHA256), plus an IPv6 access address as a
//! sesame extension. Pure: no I/O except the key file and the replay cache's file,
//! which live in their own modules. The format is described in `docs/spa.md`.
//!
//! [`verify`] runs the checks cheapest first: length, base64 alphabet, HMAC (constant
//! time), decrypt, digest, timestamp, message type, access request. Everything before
//! the HMAC allocates nothing, so random floods cost one HMAC per packet and no memory.

pub mod keys;
pub mod replay;

pub use keys::{KeyError, SpaKeys};
pub use replay::{ReplayCache, ReplayError};

use crate::config::{Port, L4};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use cbc::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use hmac::Mac;
use md5::Md5;
use sha2::{Digest, Sha256};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// fwknopd's bounds on a datagram's length.
pub const MIN_PACKET: usize = 140;
pub const MAX_PACKET: usize = 1500;
/// fwknop's default SPA port (UDP).
pub const DEFAULT_PORT: u16 = 62201;
/// fwknopd's default `MAX_SPA_PACKET_AGE`, seconds.
pub const DEFAULT_MAX_AGE: u32 = 120;

/// The base64 of `Salted__`, which the client strips and the HMAC covers.
const SALTED_B64: &[u8] = b"U2FsdGVkX1";
/// Base64 characters of an HMAC-SHA256 without padding.
const HMAC_B64_LEN: usize = 43;
const PROTOCOL_VERSION: &str = "3.0.0";

/// Standard alphabet; padding optional, non-canonical trailing bits refused.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;
type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;

/// Why a packet was refused. Counted and logged by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Shorter than 140 or longer than 1500 bytes.
    Length,
    /// A byte outside the base64 alphabet, or the `U2FsdGVkX1` prefix still there.
    Alphabet,
    /// The HMAC does not match (or the packet is not for these keys).
    Hmac,
    /// Decryption or PKCS#7 padding failed.
    Decrypt,
    /// The plaintext is not fwknop's field layout.
    Format,
    /// The SHA-256 digest in the message does not match.
    Digest,
    /// The timestamp is outside `spa_max_age`, either direction.
    Stale,
    /// The message was seen before inside its window.
    Replay,
    /// The replay cache is full: refused rather than forget a digest in its window.
    ReplayFull,
    /// A command or NAT message.
    MessageType,
    /// A port the door does not open.
    Port,
    /// An address other than the packet's source without `spa_allow_other_address`.
    Address,
}

impl Refusal {
    pub const ALL: [Refusal; 12] = [
        Refusal::Length,
        Refusal::Alphabet,
        Refusal::Hmac,
        Refusal::Decrypt,
        Refusal::Format,
        Refusal::Digest,
        Refusal::Stale,
        Refusal::Replay,
        Refusal::ReplayFull,
        Refusal::MessageType,
        Refusal::Port,
        Refusal::Address,
    ];

    /// The name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Length => "length",
            Refusal::Alphabet => "alphabet",
            Refusal::Hmac => "hmac",
            Refusal::Decrypt => "decrypt",
            Refusal::Format => "format",
            Refusal::Digest => "digest",
            Refusal::Stale => "stale",
            Refusal::Replay => "replay",
            Refusal::ReplayFull => "replay_cache_full",
            Refusal::MessageType => "message_type",
            Refusal::Port => "port",
            Refusal::Address => "address",
        }
    }

    /// Position in [`Refusal::ALL`].
    pub fn index(self) -> usize {
        Refusal::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a door allows.
#[derive(Clone, Copy, Debug)]
pub struct Policy<'a> {
    /// Seconds a timestamp may be off, either direction.
    pub max_age: u32,
    pub allow_other_address: bool,
    /// The door's `open` list: every port asked for must be in it.
    pub open: &'a [Port],
}

/// An authenticated, decrypted message (before the policy checks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// SHA-256 of the plaintext (what the replay cache keeps).
    pub digest: [u8; 32],
    pub user: String,
    pub timestamp: i64,
    pub version: String,
    pub kind: u8,
    /// The address as written: `0.0.0.0` (or `::`) means the packet's source.
    pub address: IpAddr,
    pub ports: Vec<Port>,
    pub client_timeout: Option<u32>,
}

/// An accepted request: what to open, for whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub message: Message,
    /// The address to open for.
    pub address: IpAddr,
}

/// The checks that need no key and no allocation: length, alphabet, prefix.
#[inline]
pub fn cheap_checks(packet: &[u8]) -> Result<(), Refusal> {
    if packet.len() < MIN_PACKET || packet.len() > MAX_PACKET {
        return Err(Refusal::Length);
    }
    if !packet.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=') {
        return Err(Refusal::Alphabet);
    }
    if packet.starts_with(SALTED_B64) {
        return Err(Refusal::Alphabet);
    }
    Ok(())
}

/// Checks the HMAC in constant time. No allocation.
pub fn check_hmac(packet: &[u8], keys: &SpaKeys) -> Result<(), Refusal> {
    let (body, tag) = packet.split_at(packet.len() - HMAC_B64_LEN);
    let mut want = [0u8; 33];
    let n = B64.decode_slice(tag, &mut want).map_err(|_| Refusal::Hmac)?;
    if n != 32 {
        return Err(Refusal::Hmac);
    }
    let mut mac = keys.keyed_hmac();
    mac.update(SALTED_B64);
    mac.update(body);
    mac.verify_slice(&want[..32]).map_err(|_| Refusal::Hmac)
}

/// Authenticates, decrypts and decodes a packet: everything but the clock and the
/// door's policy.
pub fn open(packet: &[u8], keys: &SpaKeys) -> Result<Message, Refusal> {
    cheap_checks(packet)?;
    check_hmac(packet, keys)?;
    let body = &packet[..packet.len() - HMAC_B64_LEN];
    let mut text = Vec::with_capacity(SALTED_B64.len() + body.len());
    text.extend_from_slice(SALTED_B64);
    text.extend_from_slice(body);
    let blob = B64.decode(&text).map_err(|_| Refusal::Decrypt)?;
    if blob.len() < 16 + 16 || &blob[..8] != b"Salted__" {
        return Err(Refusal::Decrypt);
    }
    let salt: [u8; 8] = blob[8..16].try_into().map_err(|_| Refusal::Decrypt)?;
    let (key, iv) = bytes_to_key(keys.encryption(), &salt);
    let plain = Aes256CbcDec::new(&key.into(), &iv.into())
        .decrypt_padded_vec_mut::<Pkcs7>(&blob[16..])
        .map_err(|_| Refusal::Decrypt)?;
    decode_plaintext(&plain)
}

/// The full check: [`open`], then the timestamp against `now` (Unix seconds), the
/// message type and the access request against the door. The replay cache is the
/// caller's (it is shared state): check [`Message::digest`] after this succeeds.
pub fn verify(
    packet: &[u8],
    source: IpAddr,
    keys: &SpaKeys,
    policy: &Policy<'_>,
    now: i64,
) -> Result<Grant, Refusal> {
    let message = open(packet, keys)?;
    check_policy(message, source, policy, now)
}

/// The checks after decryption.
pub fn check_policy(
    message: Message,
    source: IpAddr,
    policy: &Policy<'_>,
    now: i64,
) -> Result<Grant, Refusal> {
    if now.saturating_sub(message.timestamp).unsigned_abs() > u64::from(policy.max_age) {
        return Err(Refusal::Stale);
    }
    if message.kind != 1 && message.kind != 3 {
        return Err(Refusal::MessageType);
    }
    if message.ports.iter().any(|p| !policy.open.contains(p)) {
        return Err(Refusal::Port);
    }
    let address = if message.address.is_unspecified() { source } else { message.address };
    if address != source && !policy.allow_other_address {
        return Err(Refusal::Address);
    }
    Ok(Grant { message, address })
}

/// OpenSSL's EVP_BytesToKey with MD5 and one iteration: key 32 bytes, IV 16.
fn bytes_to_key(pw: &[u8], salt: &[u8; 8]) -> ([u8; 32], [u8; 16]) {
    let mut out = [0u8; 48];
    let mut prev: Option<[u8; 16]> = None;
    for chunk in out.chunks_mut(16) {
        let mut h = Md5::new();
        if let Some(p) = prev {
            h.update(p);
        }
        h.update(pw);
        h.update(salt);
        let d: [u8; 16] = h.finalize().into();
        chunk.copy_from_slice(&d);
        prev = Some(d);
    }
    let mut key = [0u8; 32];
    let mut iv = [0u8; 16];
    key.copy_from_slice(&out[..32]);
    iv.copy_from_slice(&out[32..]);
    (key, iv)
}

fn b64_field(field: &str) -> Result<String, Refusal> {
    let bytes = B64.decode(field.trim_end_matches('=')).map_err(|_| Refusal::Format)?;
    String::from_utf8(bytes).map_err(|_| Refusal::Format)
}

/// Decodes fwknop's colon-separated plaintext and checks its digest.
fn decode_plaintext(plain: &[u8]) -> Result<Message, Refusal> {
    let text = std::str::from_utf8(plain).map_err(|_| Refusal::Format)?;
    let (signed, digest_b64) = text.rsplit_once(':').ok_or(Refusal::Format)?;
    let mut got = [0u8; 33];
    let n = B64.decode_slice(digest_b64.trim_end_matches('='), &mut got).map_err(|_| Refusal::Format)?;
    if n != 32 {
        return Err(Refusal::Format);
    }
    let digest: [u8; 32] = Sha256::digest(signed.as_bytes()).into();
    if !bool::from(subtle::ConstantTimeEq::ct_eq(&digest[..], &got[..32])) {
        return Err(Refusal::Digest);
    }
    let fields: Vec<&str> = signed.split(':').collect();
    if fields.len() < 6 || fields.len() > 9 {
        return Err(Refusal::Format);
    }
    let random = fields[0];
    if random.len() != 16 || !random.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Refusal::Format);
    }
    let user = b64_field(fields[1])?;
    let timestamp: i64 = fields[2].parse().map_err(|_| Refusal::Format)?;
    let version = fields[3];
    if version.is_empty() || version.len() > 8 {
        return Err(Refusal::Format);
    }
    let kind: u8 = fields[4].parse().map_err(|_| Refusal::Format)?;
    if kind > 6 {
        return Err(Refusal::Format);
    }
    if kind != 1 && kind != 3 {
        // Command and NAT messages: refused whatever follows.
        return Err(Refusal::MessageType);
    }
    let access = b64_field(fields[5])?;
    let rest = &fields[6..];
    // Type 1: [server_auth]; type 3: [server_auth] client_timeout.
    let client_timeout = match (kind, rest.len()) {
        (1, 0 | 1) => None,
        (3, 1 | 2) => Some(rest[rest.len() - 1].parse().map_err(|_| Refusal::Format)?),
        _ => return Err(Refusal::Format),
    };
    let (address, ports) = parse_access(&access)?;
    Ok(Message { digest, user, timestamp, version: version.to_owned(), kind, address, ports, client_timeout })
}

/// `ADDR,proto/port[,proto/port...]`; ADDR IPv4, or IPv6 (sesame's extension).
fn parse_access(access: &str) -> Result<(IpAddr, Vec<Port>), Refusal> {
    let mut parts = access.split(',');
    let address: IpAddr = parts.next().unwrap_or("").trim().parse().map_err(|_| Refusal::Format)?;
    let mut ports = Vec::new();
    for part in parts {
        let (proto, port) = part.trim().split_once('/').ok_or(Refusal::Format)?;
        let proto = match proto.to_ascii_lowercase().as_str() {
            "tcp" => L4::Tcp,
            "udp" => L4::Udp,
            _ => return Err(Refusal::Port),
        };
        let port: u16 = port.parse().map_err(|_| Refusal::Format)?;
        if port == 0 {
            return Err(Refusal::Format);
        }
        ports.push(Port { port, proto });
    }
    if ports.is_empty() || ports.len() > 64 {
        return Err(Refusal::Format);
    }
    Ok((address, ports))
}

/// What the encoder puts in a message.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    pub user: &'a str,
    /// `None` asks for the packet's source (`0.0.0.0`, or `::` for IPv6).
    pub address: Option<IpAddr>,
    /// Which family `None` stands for.
    pub ipv6_source: bool,
    pub ports: &'a [Port],
    pub timestamp: i64,
    pub client_timeout: Option<u32>,
}

/// Builds a packet as fwknop 2.6.10 does. `random` supplies the salt (8 bytes) and
/// the 16-digit random field (the next 16 bytes); the caller draws them from the OS.
pub fn encode(keys: &SpaKeys, request: &Request<'_>, random: &[u8; 24]) -> String {
    let digits: String = random[8..].iter().map(|b| char::from(b'0' + b % 10)).collect();
    // fwknop's random number has no leading zero.
    let digits = match digits.strip_prefix('0') {
        Some(rest) => format!("1{rest}"),
        None => digits,
    };
    let address = match request.address {
        Some(a) => a,
        None if request.ipv6_source => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    let mut access = address.to_string();
    for p in request.ports {
        access.push_str(&format!(",{}/{}", p.proto.name(), p.port));
    }
    let kind = if request.client_timeout.is_some() { 3 } else { 1 };
    let mut signed = format!(
        "{digits}:{}:{}:{PROTOCOL_VERSION}:{kind}:{}",
        B64.encode(request.user),
        request.timestamp,
        B64.encode(access)
    );
    if let Some(t) = request.client_timeout {
        signed.push_str(&format!(":{t}"));
    }
    let digest = Sha256::digest(signed.as_bytes());
    let plain = format!("{signed}:{}", B64.encode(digest));
    let salt: [u8; 8] = random[..8].try_into().unwrap_or([0; 8]);
    seal(keys, plain.as_bytes(), salt)
}

/// The outer layers alone: encrypts and signs any plaintext as fwknop does (for the
/// encoder, and for fuzzing the plaintext decoder behind the HMAC).
pub fn seal(keys: &SpaKeys, plain: &[u8], salt: [u8; 8]) -> String {
    let (key, iv) = bytes_to_key(keys.encryption(), &salt);
    let ct = Aes256CbcEnc::new(&key.into(), &iv.into()).encrypt_padded_vec_mut::<Pkcs7>(plain);
    let mut blob = Vec::with_capacity(16 + ct.len());
    blob.extend_from_slice(b"Salted__");
    blob.extend_from_slice(&salt);
    blob.extend_from_slice(&ct);
    let text = B64.encode(&blob);
    let mut mac = keys.keyed_hmac();
    mac.update(text.as_bytes());
    let tag = B64.encode(mac.finalize().into_bytes());
    let mut wire = text[SALTED_B64.len()..].to_owned();
    wire.push_str(&tag);
    wire
}

#[cfg(test)]
mod tests;
