//! What travels between ring neighbours: a hello per connection, a header per
//! collective (so ranks that fall out of step fail loudly instead of mixing
//! data), then raw little-endian elements.

use std::io::{Read, Write};

const HELLO_MAGIC: u32 = 0x4154_5247; // "ATRG"
const OP_MAGIC: u32 = 0x4154_4f50; // "ATOP"
pub const HELLO_LEN: usize = 20;
pub const HEADER_LEN: usize = 21;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub session: u64,
    pub rank: u32,
    pub world: u32,
}

impl Hello {
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut out = [0u8; HELLO_LEN];
        out[..4].copy_from_slice(&HELLO_MAGIC.to_le_bytes());
        out[4..12].copy_from_slice(&self.session.to_le_bytes());
        out[12..16].copy_from_slice(&self.rank.to_le_bytes());
        out[16..20].copy_from_slice(&self.world.to_le_bytes());
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

/// An element type the ring reduces.
pub trait Element: Copy + Send + Sync + 'static {
    const SIZE: usize;
    fn to_bytes(values: &[Self]) -> Vec<u8>;
    fn add_from(values: &mut [Self], bytes: &[u8]);
    fn copy_from(values: &mut [Self], bytes: &[u8]);
}

macro_rules! element {
    ($t:ty) => {
        impl Element for $t {
            const SIZE: usize = std::mem::size_of::<$t>();

            fn to_bytes(values: &[Self]) -> Vec<u8> {
                let mut out = Vec::with_capacity(values.len() * Self::SIZE);
                for v in values {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out
            }

            fn add_from(values: &mut [Self], bytes: &[u8]) {
                for (v, b) in values.iter_mut().zip(bytes.chunks_exact(Self::SIZE)) {
                    *v += <$t>::from_le_bytes(b.try_into().unwrap_or_default());
                }
            }

            fn copy_from(values: &mut [Self], bytes: &[u8]) {
                for (v, b) in values.iter_mut().zip(bytes.chunks_exact(Self::SIZE)) {
                    *v = <$t>::from_le_bytes(b.try_into().unwrap_or_default());
                }
            }
        }
    };
}

element!(f32);
element!(f64);

/// Writes every buffer it is sent, in order, until the sender is dropped.
pub fn write_all_from(
    mut stream: impl Write,
    buffers: std::sync::mpsc::Receiver<Vec<u8>>,
) -> std::io::Result<()> {
    for buffer in buffers {
        stream.write_all(&buffer)?;
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
        };
        assert_eq!(
            Hello::read(&mut hello.encode().as_slice()).unwrap(),
            Some(hello)
        );
        assert_eq!(Hello::read(&mut [0u8; HELLO_LEN].as_slice()).unwrap(), None);
    }

    #[test]
    fn elements_add_and_copy_from_little_endian_bytes() {
        let mut values = [1.0f64, 2.0, 3.0];
        f64::add_from(&mut values, &f64::to_bytes(&[0.5, 0.25, -3.0]));
        assert_eq!(values, [1.5, 2.25, 0.0]);
        let mut floats = [0.0f32; 2];
        f32::copy_from(&mut floats, &f32::to_bytes(&[7.0, -1.5]));
        assert_eq!(floats, [7.0, -1.5]);
    }
}
