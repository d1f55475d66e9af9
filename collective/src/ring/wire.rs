//! What travels between ring neighbours: a hello per connection, a header per
//! collective (so ranks that fall out of step fail loudly instead of mixing
//! data), then raw little-endian elements.

use std::io::{Read, Write};

const HELLO_MAGIC: u32 = 0x4154_5247; // "ATRG"
const OP_MAGIC: u32 = 0x4154_4f50; // "ATOP"
pub const HELLO_LEN: usize = 20 + SECRET_LEN;
pub const SECRET_LEN: usize = 32;
pub const HEADER_LEN: usize = 21;

/// The gang's shared secret, handed to its ranks at rendezvous: a ring
/// connection that does not carry it is dropped, so no other TCP peer can
/// join a ring or feed it data. Never printed.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct RingSecret(pub [u8; SECRET_LEN]);

impl std::fmt::Debug for RingSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RingSecret(..)")
    }
}

impl RingSecret {
    /// Compares without stopping at the first difference, so timing does
    /// not reveal how much of a guess was right.
    fn matches(&self, other: &RingSecret) -> bool {
        self.0
            .iter()
            .zip(&other.0)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Hello {
    pub session: u64,
    pub rank: u32,
    pub world: u32,
    pub secret: RingSecret,
}

impl Hello {
    /// The hello a rank must send: same session, rank, world and secret.
    pub fn admits(&self, other: &Hello) -> bool {
        (self.session, self.rank, self.world) == (other.session, other.rank, other.world)
            && self.secret.matches(&other.secret)
    }

    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut out = [0u8; HELLO_LEN];
        out[..4].copy_from_slice(&HELLO_MAGIC.to_le_bytes());
        out[4..12].copy_from_slice(&self.session.to_le_bytes());
        out[12..16].copy_from_slice(&self.rank.to_le_bytes());
        out[16..20].copy_from_slice(&self.world.to_le_bytes());
        out[20..].copy_from_slice(&self.secret.0);
        out
    }

    pub fn read(stream: &mut impl Read) -> std::io::Result<Option<Self>> {
        let mut buf = [0u8; HELLO_LEN];
        stream.read_exact(&mut buf)?;
        if u32::from_le_bytes(word(&buf[..4])) != HELLO_MAGIC {
            return Ok(None);
        }
        Ok(Some(Self {
            session: u64::from_le_bytes(buf[4..12].try_into().unwrap_or_default()),
            rank: u32::from_le_bytes(word(&buf[12..16])),
            world: u32::from_le_bytes(word(&buf[16..20])),
            secret: RingSecret(buf[20..].try_into().unwrap_or_default()),
        }))
    }
}

fn word(bytes: &[u8]) -> [u8; 4] {
    bytes.try_into().unwrap_or_default()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    AllReduce = 1,
    Broadcast = 2,
}

/// Announces one collective: which, its sequence number and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub op: u8,
    pub seq: u64,
    pub len: u64,
}

impl Header {
    pub fn new(op: Op, seq: u64, len: usize) -> Self {
        Self {
            op: op as u8,
            seq,
            len: len as u64,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN);
        out.extend_from_slice(&OP_MAGIC.to_le_bytes());
        out.push(self.op);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        out
    }

    pub fn read(stream: &mut impl Read) -> std::io::Result<Option<Self>> {
        let mut buf = [0u8; HEADER_LEN];
        stream.read_exact(&mut buf)?;
        if u32::from_le_bytes(word(&buf[..4])) != OP_MAGIC {
            return Ok(None);
        }
        Ok(Some(Self {
            op: buf[4],
            seq: u64::from_le_bytes(buf[5..13].try_into().unwrap_or_default()),
            len: u64::from_le_bytes(buf[13..21].try_into().unwrap_or_default()),
        }))
    }
}

/// An element type the ring reduces: plain floats, sent in their in-memory
/// (little-endian) form, so buffers go to and from sockets without
/// per-element conversion.
pub trait Element:
    Copy + Default + Send + Sync + std::ops::AddAssign + sealed::Sealed + 'static
{
    const SIZE: usize = std::mem::size_of::<Self>();
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

impl Element for f32 {}
impl Element for f64 {}

#[cfg(target_endian = "big")]
compile_error!("the ring's wire format is little-endian memory order");

pub fn as_bytes<T: Element>(values: &[T]) -> &[u8] {
    // SAFETY: f32 and f64 (the only elements) have no padding; the slice
    // covers exactly their bytes for its lifetime.
    unsafe {
        std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values))
    }
}

pub fn as_bytes_mut<T: Element>(values: &mut [T]) -> &mut [u8] {
    // SAFETY: as above; and every bit pattern is a valid f32 or f64.
    unsafe {
        std::slice::from_raw_parts_mut(
            values.as_mut_ptr().cast::<u8>(),
            std::mem::size_of_val(values),
        )
    }
}

/// Writes every buffer it is sent, in order, until the sender is dropped;
/// written buffers go back through `spare` for reuse.
pub fn write_all_from(
    mut stream: impl Write,
    buffers: std::sync::mpsc::Receiver<Vec<u8>>,
    spare: std::sync::mpsc::Sender<Vec<u8>>,
) -> std::io::Result<()> {
    for buffer in buffers {
        stream.write_all(&buffer)?;
        let _ = spare.send(buffer);
    }
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_hellos_round_trip() {
        let header = Header::new(Op::Broadcast, 7, 1234);
        let read = Header::read(&mut header.encode().as_slice()).unwrap();
        assert_eq!(read, Some(header));
        let hello = Hello {
            session: 99,
            rank: 2,
            world: 3,
            secret: RingSecret([7; SECRET_LEN]),
        };
        let read = Hello::read(&mut hello.encode().as_slice())
            .unwrap()
            .unwrap();
        assert!(hello.admits(&read));
        let guessed = Hello {
            secret: RingSecret([8; SECRET_LEN]),
            ..hello
        };
        assert!(!hello.admits(&guessed));
        assert!(!format!("{hello:?}").contains("7, 7"));
        assert!(Hello::read(&mut [0u8; HELLO_LEN].as_slice())
            .unwrap()
            .is_none());
    }

    #[test]
    fn elements_travel_as_their_little_endian_bytes() {
        let values = [1.5f32, -2.0];
        let mut expected = 1.5f32.to_le_bytes().to_vec();
        expected.extend((-2.0f32).to_le_bytes());
        assert_eq!(as_bytes(&values), expected.as_slice());
        let mut back = [0.0f32; 2];
        as_bytes_mut(&mut back).copy_from_slice(&expected);
        assert_eq!(back, values);
    }
}
