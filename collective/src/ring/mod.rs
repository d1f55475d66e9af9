//! The CPU backend: a ring all-reduce over TCP. Reduce-scatter, then
//! all-gather, each segment sent in chunks; a writer thread per collective
//! keeps sending while the caller receives and reduces, so a chunk goes on to
//! the next rank as soon as it has been added in.

mod connect;
mod wire;

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};

use crate::error::{CollectiveError, Result};
use crate::{Backend, Collective};
use wire::{as_bytes, as_bytes_mut, Element, Header, Hello, Op};
pub use wire::{RingSecret, SECRET_LEN};

#[derive(Debug, Clone, Copy)]
pub struct RingOptions {
    /// How long a peer may stay silent before the collective fails.
    pub timeout: Duration,
    pub chunk_bytes: usize,
    /// Names this gang, so that a rank of another one cannot join the ring.
    pub session: u64,
    /// The gang's secret, which every ring connection must carry.
    pub secret: RingSecret,
    /// All-reduce each gradient bucket while backward still runs. The ring
    /// copies and adds on the host, so this pays where it waits on a network
    /// (1.21x on a 1 Gbit/s link), not among ranks of one machine whose
    /// cores all compute (0.92x there; BENCHMARKS.md).
    pub overlap_backward: bool,
}

impl Default for RingOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            chunk_bytes: 256 << 10,
            session: 0,
            secret: RingSecret::default(),
            overlap_backward: false,
        }
    }
}

#[derive(Debug)]
pub struct RingCollective {
    rank: usize,
    world: usize,
    /// To rank + 1.
    next: Option<TcpStream>,
    /// From rank - 1.
    prev: Option<TcpStream>,
    options: RingOptions,
    seq: u64,
}

impl RingCollective {
    /// A listener for the ring on `host`, on a free port; its address goes to
    /// the other ranks through the rendezvous.
    pub fn bind(host: &str) -> Result<TcpListener> {
        TcpListener::bind((host, 0))
            .map_err(|e| CollectiveError::Setup(format!("binding a ring listener on {host}: {e}")))
    }

    /// Joins the ring: `peers[r]` is rank r's listener address.
    pub fn connect(
        rank: usize,
        listener: TcpListener,
        peers: &[String],
        options: RingOptions,
    ) -> Result<Self> {
        let world = peers.len();
        if rank >= world {
            return Err(CollectiveError::Setup(format!(
                "rank {rank} in a world of {world}"
            )));
        }
        let mut ring = Self {
            rank,
            world,
            next: None,
            prev: None,
            options,
            seq: 0,
        };
        if world == 1 {
            return Ok(ring);
        }
        let deadline = Instant::now() + options.timeout;
        let next_rank = (rank + 1) % world;
        let prev_rank = (rank + world - 1) % world;
        let hello = |rank: usize| Hello {
            session: options.session,
            rank: rank as u32,
            world: world as u32,
            secret: options.secret,
        };
        let (next, prev) = std::thread::scope(|scope| {
            let accepting = scope
                .spawn(|| connect::accept_prev(&listener, prev_rank, hello(prev_rank), deadline));
            let next = connect::connect_next(&peers[next_rank], next_rank, hello(rank), deadline);
            let prev = accepting.join().unwrap_or_else(|_| {
                Err(CollectiveError::Setup(
                    "the accepting thread panicked".into(),
                ))
            });
            (next, prev)
        });
        let (next, prev) = (next?, prev?);
        let setup = |e: std::io::Error| CollectiveError::Setup(format!("ring socket: {e}"));
        for stream in [&next, &prev] {
            stream.set_nodelay(true).map_err(setup)?;
            stream
                .set_read_timeout(Some(options.timeout))
                .map_err(setup)?;
            stream
                .set_write_timeout(Some(options.timeout))
                .map_err(setup)?;
        }
        ring.next = Some(next);
        ring.prev = Some(prev);
        tracing::debug!(rank, world, "ring connected");
        Ok(ring)
    }

    /// All `world` ranks of a ring on loopback, by rank, for tests and
    /// benchmarks that run each rank on a thread of their own.
    pub fn loopback(world: usize, options: RingOptions) -> Result<Vec<Self>> {
        let listeners = (0..world)
            .map(|_| Self::bind("127.0.0.1"))
            .collect::<Result<Vec<_>>>()?;
        let peers = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.to_string()))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| CollectiveError::Setup(format!("listener address: {e}")))?;
        std::thread::scope(|scope| {
            let joining: Vec<_> = listeners
                .into_iter()
                .enumerate()
                .map(|(rank, listener)| {
                    let peers = &peers;
                    scope.spawn(move || Self::connect(rank, listener, peers, options))
                })
                .collect();
            joining
                .into_iter()
                .map(|j| {
                    j.join().unwrap_or_else(|_| {
                        Err(CollectiveError::Setup("a joining thread panicked".into()))
                    })
                })
                .collect()
        })
    }

    fn segment(&self, index: usize, len: usize) -> std::ops::Range<usize> {
        index * len / self.world..(index + 1) * len / self.world
    }

    fn chunks(&self, range: std::ops::Range<usize>, size: usize) -> Vec<std::ops::Range<usize>> {
        let step = (self.options.chunk_bytes / size).max(1);
        (range.start..range.end)
            .step_by(step)
            .map(|start| start..(start + step).min(range.end))
            .collect()
    }

    /// Runs `body` with a writer thread sending to the next rank; `body`
    /// queues buffers for it and reads from the previous rank.
    fn with_writer<F>(&mut self, op: &'static str, body: F) -> Result<()>
    where
        F: FnOnce(&Outbox, &mut TcpStream, &RingOptions) -> Result<()>,
    {
        let (Some(next), Some(prev)) = (self.next.as_ref(), self.prev.as_mut()) else {
            return Ok(());
        };
        let next_rank = (self.rank + 1) % self.world;
        let options = self.options;
        std::thread::scope(|scope| {
            // Unbounded on purpose: if queueing could block, every rank could
            // wait on a full socket at once and the ring would deadlock.
            let (queue, buffers) = mpsc::channel::<Vec<u8>>();
            let (spare_tx, spare) = mpsc::channel::<Vec<u8>>();
            let writer = scope.spawn(move || wire::write_all_from(next, buffers, spare_tx));
            let outbox = Outbox {
                queue,
                spare,
                op,
                next_rank,
            };
            let result = body(&outbox, prev, &options);
            drop(outbox);
            let written = writer
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("writer thread panicked")))
                .map_err(|e| CollectiveError::io(op, next_rank, options.timeout, e));
            // A failed read usually follows from the failed write; name the write.
            match (result, written) {
                (Ok(()), w) => w,
                (Err(_), Err(w)) => Err(w),
                (Err(r), Ok(())) => Err(r),
            }
        })
    }

    /// Sums `data` over all ranks, in place.
    pub fn all_reduce<T: Element>(&mut self, data: &mut [T]) -> Result<()> {
        if self.world == 1 {
            return Ok(());
        }
        const OP: &str = "all-reduce";
        self.seq += 1;
        let (rank, world, len) = (self.rank, self.world, data.len());
        let header = Header::new(Op::AllReduce, self.seq, len);
        let prev_rank = (rank + world - 1) % world;
        let segments: Vec<_> = (0..world).map(|i| self.segment(i, len)).collect();
        let chunked: Vec<Vec<_>> = segments
            .iter()
            .map(|s| self.chunks(s.clone(), T::SIZE))
            .collect();
        let longest = chunked.iter().flatten().map(|c| c.len()).max().unwrap_or(0);
        self.with_writer(OP, |outbox, prev, options| {
            let receive = |prev: &mut TcpStream, into: &mut [T]| {
                prev.read_exact(as_bytes_mut(into))
                    .map_err(|e| CollectiveError::io(OP, prev_rank, options.timeout, e))
            };
            outbox.send(&header.encode())?;
            for chunk in &chunked[rank] {
                outbox.send(as_bytes(&data[chunk.clone()]))?;
            }
            expect_header(prev, header, OP, prev_rank, options)?;
            let mut incoming = vec![T::default(); longest];
            // Reduce-scatter: after world - 1 steps this rank holds the full
            // sum of segment rank + 1; each reduced chunk goes straight on.
            for step in 0..world - 1 {
                let index = (rank + world - step - 1) % world;
                for chunk in &chunked[index] {
                    let incoming = &mut incoming[..chunk.len()];
                    receive(prev, incoming)?;
                    let target = &mut data[chunk.clone()];
                    for (value, other) in target.iter_mut().zip(incoming.iter()) {
                        *value += *other;
                    }
                    outbox.send(as_bytes(target))?;
                }
            }
            // All-gather: pass the finished segments around once.
            for step in 0..world - 1 {
                let index = (rank + world - step) % world;
                for chunk in &chunked[index] {
                    let target = &mut data[chunk.clone()];
                    receive(prev, target)?;
                    if step + 2 < world {
                        outbox.send(as_bytes(target))?;
                    }
                }
            }
            Ok(())
        })
    }

    /// Makes `data` on every rank equal to `root`'s.
    pub fn broadcast_slice<T: Element>(&mut self, data: &mut [T], root: usize) -> Result<()> {
        if self.world == 1 {
            return Ok(());
        }
        const OP: &str = "broadcast";
        if root >= self.world {
            return Err(CollectiveError::Setup(format!(
                "broadcast from rank {root} in a world of {}",
                self.world
            )));
        }
        self.seq += 1;
        let (rank, world, len) = (self.rank, self.world, data.len());
        let header = Header::new(Op::Broadcast, self.seq, len);
        let prev_rank = (rank + world - 1) % world;
        let forward = (rank + 1) % world != root;
        let chunks = self.chunks(0..len, T::SIZE);
        self.with_writer(OP, |outbox, prev, options| {
            if rank == root {
                outbox.send(&header.encode())?;
                for chunk in &chunks {
                    outbox.send(as_bytes(&data[chunk.clone()]))?;
                }
                return Ok(());
            }
            expect_header(prev, header, OP, prev_rank, options)?;
            if forward {
                outbox.send(&header.encode())?;
            }
            for chunk in &chunks {
                let target = &mut data[chunk.clone()];
                prev.read_exact(as_bytes_mut(target))
                    .map_err(|e| CollectiveError::io(OP, prev_rank, options.timeout, e))?;
                if forward {
                    outbox.send(as_bytes(target))?;
                }
            }
            Ok(())
        })
    }
}

/// The sending side of one collective: copies go to the writer thread in
/// buffers it hands back once written.
struct Outbox {
    queue: mpsc::Sender<Vec<u8>>,
    spare: mpsc::Receiver<Vec<u8>>,
    op: &'static str,
    next_rank: usize,
}

impl Outbox {
    fn send(&self, bytes: &[u8]) -> Result<()> {
        let mut buffer = self.spare.try_recv().unwrap_or_default();
        buffer.clear();
        buffer.extend_from_slice(bytes);
        self.queue.send(buffer).map_err(|_| CollectiveError::Peer {
            op: self.op,
            peer: self.next_rank,
            source: std::io::Error::other("the connection to the next rank failed"),
        })
    }
}

fn expect_header(
    prev: &mut TcpStream,
    expected: Header,
    op: &'static str,
    peer: usize,
    options: &RingOptions,
) -> Result<()> {
    let got = Header::read(prev).map_err(|e| CollectiveError::io(op, peer, options.timeout, e))?;
    if got == Some(expected) {
        return Ok(());
    }
    Err(CollectiveError::Mismatch {
        op,
        peer,
        detail: format!("expected {expected:?}, got {got:?}"),
    })
}

/// A contiguous CPU copy of a device or strided tensor, for the ring to
/// work on (GPU ranks without NCCL still train, at the cost of the copies).
fn staged_on_host(tensor: &Tensor) -> Option<Tensor> {
    (tensor.device() != Device::Cpu || !tensor.is_contiguous())
        .then(|| tensor.to_device(Device::Cpu).contiguous())
}

/// The tensor's elements as a mutable slice (CPU, contiguous).
fn host_slice<'t, T>(tensor: &'t mut Tensor, op: &'static str) -> Result<&'t mut [T]> {
    if tensor.device() != Device::Cpu || !tensor.is_contiguous() {
        return Err(CollectiveError::InvalidTensor {
            op,
            detail: format!(
                "the ring takes contiguous CPU tensors, not {:?} (contiguous: {})",
                tensor.device(),
                tensor.is_contiguous()
            ),
        });
    }
    let len = tensor.numel();
    if len == 0 {
        return Ok(&mut []);
    }
    // SAFETY: the tensor is contiguous on the CPU with `len` elements of `T`
    // (the caller checked the kind), and `&mut` keeps it borrowed meanwhile.
    Ok(unsafe { std::slice::from_raw_parts_mut(tensor.data_ptr().cast::<T>(), len) })
}

impl Collective for RingCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn backend(&self) -> Backend {
        Backend::Ring
    }

    fn overlaps_backward(&self) -> bool {
        self.options.overlap_backward
    }

    fn all_reduce_sum(&mut self, tensor: &mut Tensor) -> Result<()> {
        const OP: &str = "all-reduce";
        if let Some(mut host) = staged_on_host(tensor) {
            self.all_reduce_sum(&mut host)?;
            tch::no_grad(|| tensor.copy_(&host));
            return Ok(());
        }
        match tensor.kind() {
            Kind::Float => self.all_reduce(host_slice::<f32>(tensor, OP)?),
            Kind::Double => self.all_reduce(host_slice::<f64>(tensor, OP)?),
            kind => Err(CollectiveError::InvalidTensor {
                op: OP,
                detail: format!("kind {kind:?}; use float or double"),
            }),
        }
    }

    fn broadcast(&mut self, tensor: &mut Tensor, root: usize) -> Result<()> {
        const OP: &str = "broadcast";
        if let Some(mut host) = staged_on_host(tensor) {
            self.broadcast(&mut host, root)?;
            tch::no_grad(|| tensor.copy_(&host));
            return Ok(());
        }
        match tensor.kind() {
            Kind::Float => self.broadcast_slice(host_slice::<f32>(tensor, OP)?, root),
            Kind::Double => self.broadcast_slice(host_slice::<f64>(tensor, OP)?, root),
            kind => Err(CollectiveError::InvalidTensor {
                op: OP,
                detail: format!("kind {kind:?}; use float or double"),
            }),
        }
    }
}
