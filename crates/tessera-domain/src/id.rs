//! Prefixed, sortable, random identifiers (`actor_01JD…`).
//!
//! An id is `<prefix>_<26 chars>`: 48 bits of milliseconds since the Unix epoch followed by 80
//! random bits, in Crockford base32 (lower case). Ids therefore sort by creation time, which is
//! what list cursors rely on, and cannot be guessed.

use crate::clock::Timestamp;

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
/// Length of the encoded body after the prefix and underscore.
pub const BODY_LEN: usize = 26;

/// Encodes 128 bits as 26 Crockford base32 characters, most significant first.
fn encode_u128(mut value: u128) -> String {
    let mut out = [0u8; BODY_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(value & 0x1f) as usize];
        value >>= 5;
    }
    out.iter().map(|&b| b as char).collect()
}

/// Encodes arbitrary bytes as lower-case Crockford base32 without padding.
pub fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 0x1f) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 0x1f) as usize] as char);
    }
    out
}

/// Fills `buf` from the operating system's CSPRNG.
///
/// The OS generator failing is not a condition the process can recover from safely (every
/// secret would be weak), so this aborts loudly instead of returning an error.
pub fn random_bytes(buf: &mut [u8]) {
    if let Err(err) = getrandom::fill(buf) {
        panic!("the operating system's random number generator failed: {err}");
    }
}

/// The last id value handed out by this process, to keep ids strictly increasing.
static LAST: std::sync::Mutex<u128> = std::sync::Mutex::new(0);

/// A fresh id body for `now`: timestamp-ordered, 80 bits of randomness.
///
/// Within one process ids are strictly increasing even when several are made in the same
/// millisecond (the later one is the earlier one plus a random step), so ordering by id
/// orders by creation.
pub fn new_body(now: Timestamp) -> String {
    let mut random = [0u8; 10];
    random_bytes(&mut random);
    let mut value = u128::from(now.as_millis().max(0) as u64 & 0xffff_ffff_ffff) << 80;
    for (i, byte) in random.iter().enumerate() {
        value |= u128::from(*byte) << (8 * (9 - i));
    }
    let mut last = LAST.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if value <= *last {
        // Same (or an earlier, clock stepped back) millisecond: step forward by 1..2^32 so the
        // id stays unpredictable while sorting after the previous one.
        let step = u128::from(u32::from_be_bytes([
            random[0], random[1], random[2], random[3],
        ])) + 1;
        value = last.saturating_add(step);
    }
    *last = value;
    encode_u128(value)
}

/// [`DIGIT`]'s entry for a byte outside [`ALPHABET`].
const NOT_A_DIGIT: u8 = u8::MAX;

/// Each byte's digit value in [`ALPHABET`], or [`NOT_A_DIGIT`] (ids are checked on every row
/// read, and ordered secrets decoded on every request that presents one).
const DIGIT: [u8; 256] = {
    let mut table = [NOT_A_DIGIT; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// True when `body` is a well-formed encoded id body.
pub fn is_valid_body(body: &str) -> bool {
    body.len() == BODY_LEN
        && body.bytes().all(|b| DIGIT[usize::from(b)] != NOT_A_DIGIT)
        // The first character carries only 3 bits (128 = 26 * 5 - 2).
        && body.as_bytes()[0] <= b'7'
}

/// The 128-bit value of a well-formed id body (see [`is_valid_body`]); `None` otherwise.
/// Bodies compare as their values do, so a body's value sorts by creation time too.
pub fn decode_body(body: &str) -> Option<u128> {
    if !is_valid_body(body) {
        return None;
    }
    Some(body.bytes().fold(0u128, |value, b| {
        (value << 5) | u128::from(DIGIT[usize::from(b)])
    }))
}

/// The id was not `<prefix>_<26 base32 chars>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid {expected} id")]
pub struct IdParseError {
    pub expected: &'static str,
}

macro_rules! define_id {
    ($(#[$meta:meta])* $name:ident, $prefix:literal) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The prefix every id of this kind starts with (before the underscore).
            pub const PREFIX: &'static str = $prefix;

            /// A new random id stamped with the current time.
            pub fn generate() -> Self {
                Self::generate_at($crate::clock::Timestamp::now())
            }

            /// A new random id stamped with `now`.
            pub fn generate_at(now: $crate::clock::Timestamp) -> Self {
                Self(format!("{}_{}", $prefix, $crate::id::new_body(now)))
            }

            /// Parses an id, checking its prefix and body.
            pub fn parse(raw: &str) -> Result<Self, $crate::id::IdParseError> {
                match raw.strip_prefix(concat!($prefix, "_")) {
                    Some(body) if $crate::id::is_valid_body(body) => Ok(Self(raw.to_owned())),
                    _ => Err($crate::id::IdParseError { expected: $prefix }),
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::id::IdParseError;
            fn from_str(raw: &str) -> Result<Self, Self::Err> {
                Self::parse(raw)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

define_id!(
    /// A deployment: the tenant every other object belongs to.
    DeploymentId,
    "dep"
);
define_id!(
    /// A backend secret key's record (not the key itself).
    SecretKeyId,
    "key"
);
define_id!(
    /// Who an agent works for.
    ActorId,
    "actor"
);
define_id!(
    /// An agent definition.
    AgentId,
    "agent"
);
define_id!(
    /// An actor project: binds one actor and one agent.
    ProjectId,
    "proj"
);
define_id!(
    /// A tool definition an agent may call.
    ToolId,
    "tool"
);
define_id!(
    /// A thread: a conversation or execution lane inside a project.
    ThreadId,
    "thread"
);
define_id!(
    /// A message of a thread.
    MessageId,
    "msg"
);
define_id!(
    /// A run: the agent loop answering one message.
    RunId,
    "run"
);
define_id!(
    /// A request, for correlating logs and error reports.
    RequestId,
    "req"
);
define_id!(
    /// A task board item of an actor project.
    BoardItemId,
    "item"
);

define_id!(
    /// The stored bytes of one version of a workspace file.
    BlobId,
    "blob"
);

define_id!(
    /// An end user of a deployment's app.
    UserId,
    "user"
);
define_id!(
    /// An organization of a deployment's end users.
    OrganizationId,
    "org"
);
define_id!(
    /// A user's membership of an organization.
    MembershipId,
    "mem"
);
define_id!(
    /// A browser session's record (not its cookie, which only exists hashed).
    SessionId,
    "sess"
);
define_id!(
    /// A token signing key; also its `kid` in token headers and the JWKS.
    SigningKeyId,
    "sig"
);
define_id!(
    /// An entry of the audit log.
    AuditEventId,
    "audit"
);
define_id!(
    /// A session ticket's record (not the ticket, which only exists hashed).
    TicketId,
    "tkt"
);
define_id!(
    /// An agent session: what a redeemed agent_access ticket opened.
    AgentSessionId,
    "asess"
);
define_id!(
    /// A console administrator of the installation.
    AdminId,
    "adm"
);
define_id!(
    /// A pending action: a tool call waiting for a person's confirmation.
    ActionId,
    "act"
);
define_id!(
    /// The handle of a confirmed action's execution (`resolvePendingAction`).
    CallbackId,
    "cb"
);
define_id!(
    /// A pool endpoint answer (`askAgentPool`). Its body is the body of the run it answers
    /// with, so the one id leads to the other without a table of its own.
    ResponseId,
    "resp"
);

define_id!(
    /// A platform event emitted by a `PlatformEvent` tool (stored, streamed, queued for
    /// webhooks).
    PlatformEventId,
    "pevt"
);

define_id!(
    /// An actor's connection to a third-party toolkit (its connected account at the toolkit
    /// provider).
    ConnectionId,
    "conn"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_and_sort_by_time() {
        let a = ActorId::generate_at(Timestamp::from_millis(1_000));
        let b = ActorId::generate_at(Timestamp::from_millis(2_000));
        assert!(a < b);
        assert_eq!(ActorId::parse(a.as_str()), Ok(a.clone()));
        assert!(a.as_str().starts_with("actor_"));
        assert_eq!(a.as_str().len(), "actor_".len() + BODY_LEN);
    }

    #[test]
    fn wrong_prefix_or_body_is_rejected() {
        let a = ActorId::generate();
        assert!(AgentId::parse(a.as_str()).is_err());
        assert!(ActorId::parse("actor_").is_err());
        assert!(ActorId::parse("actor_01jd0000000000000000000000x").is_err());
        assert!(ActorId::parse("actor_ILLEGALCHARSILLEGALCHARS").is_err());
        assert!(ActorId::parse("actor_8zzzzzzzzzzzzzzzzzzzzzzzzz").is_err());
    }

    #[test]
    fn a_body_may_hold_exactly_the_alphabets_bytes() {
        for byte in 0..=u8::MAX {
            assert_eq!(
                DIGIT[usize::from(byte)] != NOT_A_DIGIT,
                ALPHABET.contains(&byte),
                "byte {byte}"
            );
            if let Some(at) = ALPHABET.iter().position(|&a| a == byte) {
                assert_eq!(
                    usize::from(DIGIT[usize::from(byte)]),
                    at,
                    "byte {byte}'s value"
                );
            }
        }
        let valid = "01jd00000000000000000000zz";
        assert!(is_valid_body(valid));
        for bad in ['i', 'l', 'o', 'u', 'A', 'Z', '-', ' '] {
            let body = format!("{}{bad}", &valid[..BODY_LEN - 1]);
            assert!(!is_valid_body(&body), "{body}");
        }
    }

    #[test]
    fn ids_made_in_one_millisecond_still_increase() {
        let now = Timestamp::from_millis(10_000_000);
        let mut prev = ActorId::generate_at(now);
        for _ in 0..1000 {
            let next = ActorId::generate_at(now);
            assert!(next > prev);
            assert!(ActorId::parse(next.as_str()).is_ok());
            prev = next;
        }
    }

    #[test]
    fn bodies_decode_to_the_value_they_encode() {
        for value in [0, 1, 31, 32, u128::from(u64::MAX), u128::MAX] {
            assert_eq!(decode_body(&encode_u128(value)), Some(value));
        }
        let earlier = new_body(Timestamp::from_millis(1_700_000_000_000));
        let later = new_body(Timestamp::from_millis(1_700_000_000_001));
        assert!(decode_body(&earlier) < decode_body(&later));
        assert_eq!(
            decode_body("8zzzzzzzzzzzzzzzzzzzzzzzzz"),
            None,
            "over 128 bits"
        );
        assert_eq!(decode_body("0123"), None);
        assert_eq!(
            decode_body("0000000000000000000000000u"),
            None,
            "not in the alphabet"
        );
    }

    #[test]
    fn random_parts_differ() {
        let now = Timestamp::from_millis(5);
        assert_ne!(ActorId::generate_at(now), ActorId::generate_at(now));
    }

    #[test]
    fn base32_encodes_known_values() {
        assert_eq!(base32_encode(&[]), "");
        assert_eq!(base32_encode(&[0xff]), "zw");
        assert_eq!(base32_encode(&[0; 5]), "00000000");
        assert_eq!(base32_encode(&[0xff; 32]).len(), 52);
    }
}
