//! The CPU ring on loopback, one thread per rank.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::time::{Duration, Instant};

use atelier_collective::{
    broadcast_tensors, Collective, CollectiveError, GradientBuckets, RingCollective, RingOptions,
    RingSecret,
};
use tch::{Kind, Tensor};

/// Runs `body` on `world` ranks joined in a ring and returns their results by rank.
fn on_ring<T: Send>(
    world: usize,
    options: RingOptions,
    body: impl Fn(RingCollective) -> T + Sync,
) -> Vec<T> {
    let ranks = RingCollective::loopback(world, options).unwrap();
    std::thread::scope(|scope| {
        let handles: Vec<_> = ranks
            .into_iter()
            .map(|ring| {
                let body = &body;
                scope.spawn(move || body(ring))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// `small_chunks` with gradient buckets all-reduced while backward runs.
fn overlapping() -> RingOptions {
    RingOptions {
        overlap_backward: true,
        ..small_chunks()
    }
}

fn small_chunks() -> RingOptions {
    RingOptions {
        timeout: Duration::from_secs(20),
        // 16 floats per chunk, so long inputs span many chunks.
        chunk_bytes: 64,
        session: 7,
        secret: RingSecret([5; 32]),
        overlap_backward: false,
    }
}

/// Rank r contributes r * 1000 + i at index i; the exact sum is known.
fn contribution(rank: usize, len: usize) -> Vec<f32> {
    (0..len).map(|i| (rank * 1000 + i % 977) as f32).collect()
}

#[test]
fn all_reduce_is_exact_on_integers_of_awkward_lengths() {
    for world in [1, 2, 3, 4] {
        for len in [0, 1, 2, 3, 7, 13, 97, 1_009, 65_537] {
            let results = on_ring(world, small_chunks(), |mut ring| {
                let mut data = contribution(ring.rank(), len);
                ring.all_reduce(&mut data).unwrap();
                data
            });
            let expected: Vec<f32> = (0..len)
                .map(|i| (0..world).map(|r| (r * 1000 + i % 977) as f32).sum())
                .collect();
            for (rank, got) in results.iter().enumerate() {
                assert_eq!(got, &expected, "world {world}, length {len}, rank {rank}");
            }
        }
    }
}

#[test]
fn many_collectives_in_a_row_stay_in_step() {
    let results = on_ring(3, RingOptions::default(), |mut ring| {
        let mut last = Vec::new();
        for round in 0..50 {
            let mut data = vec![(ring.rank() + round) as f64; 1 + round * 31];
            ring.all_reduce(&mut data).unwrap();
            last = data;
        }
        last
    });
    // Round 49: ranks contribute 49, 50 and 51.
    assert!(results
        .iter()
        .all(|r| r.len() == 1 + 49 * 31 && r.iter().all(|&v| v == 150.0)));
}

#[test]
fn broadcast_copies_the_roots_data_to_every_rank() {
    for world in [2, 3, 5] {
        for root in 0..world {
            let results = on_ring(world, small_chunks(), |mut ring| {
                let mut data = contribution(ring.rank(), 301);
                ring.broadcast_slice(&mut data, root).unwrap();
                data
            });
            for got in &results {
                assert_eq!(got, &contribution(root, 301), "world {world}, root {root}");
            }
        }
    }
}

#[test]
fn tensors_reduce_through_the_trait_and_broadcast_in_buckets() {
    let results = on_ring(3, small_chunks(), |mut ring| {
        let rank = ring.rank() as f64;
        let mut doubles = Tensor::from_slice(&[rank, 2.0 * rank, 1.0]);
        ring.all_reduce_sum(&mut doubles).unwrap();
        let params = vec![
            Tensor::full([4, 3], rank, (Kind::Float, tch::Device::Cpu)),
            Tensor::full([5], 10.0 + rank, (Kind::Float, tch::Device::Cpu)),
        ];
        broadcast_tensors(&mut ring, &params, 2).unwrap();
        (
            Vec::<f64>::try_from(&doubles).unwrap(),
            params[0].sum(Kind::Double).double_value(&[]),
            params[1].sum(Kind::Double).double_value(&[]),
        )
    });
    for (doubles, first, second) in results {
        assert_eq!(doubles, [3.0, 6.0, 3.0]);
        assert_eq!((first, second), (12.0 * 2.0, 5.0 * 12.0));
    }
}

#[test]
fn gradient_sync_weights_each_rank_by_its_items() {
    // Rank 0 averaged its gradient over 3 items, rank 1 over 1 item: the
    // global mean is (3 * g0 + 1 * g1) / 4.
    let results = on_ring(2, small_chunks(), |mut ring| {
        let param = Tensor::zeros([3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let target = if ring.rank() == 0 {
            Tensor::from_slice(&[1.0f32, 2.0, 3.0])
        } else {
            Tensor::from_slice(&[5.0f32, 6.0, 7.0])
        };
        // d/dp sum(p * target) = target.
        (&param * &target).sum(Kind::Float).backward();
        let mut buckets = GradientBuckets::new(vec![param.shallow_clone()], 1 << 20);
        let items = if ring.rank() == 0 { 3 } else { 1 };
        let step = buckets.sync(&mut ring, items, 0.5 * items as f64).unwrap();
        let first = Vec::<f32>::try_from(&param.grad()).unwrap();
        // The next step: gradients zeroed in place, accumulated afresh (into
        // the bucket they now are views of), and averaged again.
        let _ = param.grad().zero_();
        (&param * &target * 2.0).sum(Kind::Float).backward();
        let again = buckets.sync(&mut ring, items, items as f64).unwrap();
        (
            first,
            (step.items, step.loss_sum),
            Vec::<f32>::try_from(&param.grad()).unwrap(),
            (again.items, again.loss_sum),
        )
    });
    for (first, counts, second, counts_again) in results {
        assert_eq!(first, [2.0, 3.0, 4.0]);
        assert_eq!(counts, (4.0, 2.0));
        assert_eq!(second, [4.0, 6.0, 8.0]);
        assert_eq!(counts_again, (4.0, 4.0));
    }
}

#[test]
fn overlapped_steps_average_like_the_plain_sync() {
    // Three parameters in buckets of their own, so the ranks hand several
    // buckets to the ring while backward runs; rank r has r + 1 items.
    let results = on_ring(3, overlapping(), |mut ring| {
        assert!(ring.overlaps_backward());
        let rank = ring.rank() as f32;
        let params: Vec<Tensor> = [5i64, 40, 1]
            .iter()
            .map(|&n| Tensor::ones([n], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true))
            .collect();
        let mut buckets =
            GradientBuckets::new(params.iter().map(Tensor::shallow_clone).collect(), 64);
        let items = ring.rank() + 1;
        let mut seen = Vec::new();
        for step in 1..=3 {
            for grad in params.iter().map(Tensor::grad).filter(Tensor::defined) {
                let _ = grad.shallow_clone().zero_();
            }
            // Gradient of parameter p: (p + 1) * (rank + 1) * step; loss 2 * step.
            let scale = (rank + 1.0) * step as f32;
            let loss = params
                .iter()
                .enumerate()
                .map(|(p, t)| (t * ((p + 1) as f64 * scale as f64)).sum(Kind::Float))
                .fold(
                    Tensor::zeros([], (Kind::Float, tch::Device::Cpu)),
                    |a, b| a + b,
                );
            let mean_loss = Tensor::from(2.0f32 * step as f32);
            let synced = buckets
                .backward_and_sync(&mut ring, items, Some(&mean_loss), || loss.backward())
                .unwrap();
            let grads: Vec<Vec<f32>> = params
                .iter()
                .map(|p| Vec::<f32>::try_from(&p.grad()).unwrap())
                .collect();
            seen.push((synced.items, synced.loss_sum, grads));
        }
        seen
    });
    // Weighted by items 1, 2, 3: sum(items * (rank + 1)) / sum(items) = 14 / 6.
    let mean = 14.0 / 6.0;
    for seen in results {
        for (step, (items, loss_sum, grads)) in seen.into_iter().enumerate() {
            let step = (step + 1) as f64;
            assert_eq!(items, 6.0);
            assert!((loss_sum - 2.0 * step * 6.0).abs() < 1e-4, "{loss_sum}");
            for (p, grad) in grads.iter().enumerate() {
                let want = ((p + 1) as f64 * mean * step) as f32;
                assert!(
                    grad.iter().all(|g| (g - want).abs() < 1e-4),
                    "param {p}: {grad:?} != {want}"
                );
            }
        }
    }
}

#[test]
fn a_silent_peer_is_a_timeout_not_a_hang() {
    let options = RingOptions {
        timeout: Duration::from_millis(500),
        ..small_chunks()
    };
    let results = on_ring(2, options, |mut ring| {
        if ring.rank() == 1 {
            // Alive but never takes part; keeps its sockets open meanwhile.
            std::thread::sleep(Duration::from_secs(3));
            return None;
        }
        let started = Instant::now();
        let error = ring.all_reduce(&mut [1.0f32; 10]).unwrap_err();
        Some((error, started.elapsed()))
    });
    let (error, waited) = results[0].as_ref().unwrap();
    assert!(
        matches!(error, CollectiveError::Timeout { peer: 1, .. }),
        "{error}"
    );
    assert!(error.is_retryable());
    assert!(waited < &Duration::from_secs(3), "waited {waited:?}");
}

#[test]
fn a_dead_peer_is_an_error_naming_it() {
    let results = on_ring(3, small_chunks(), |mut ring| {
        if ring.rank() == 2 {
            drop(ring);
            return None;
        }
        Some(ring.all_reduce(&mut vec![1.0f32; 1000]).unwrap_err())
    });
    for error in results.into_iter().flatten() {
        let message = error.to_string();
        assert!(error.is_retryable(), "{message}");
        assert!(message.contains("rank"), "{message}");
    }
}

#[test]
fn a_peer_dying_during_an_overlapped_step_is_an_error_not_a_hang() {
    let results = on_ring(2, overlapping(), |mut ring| {
        let param = Tensor::ones([64], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let mut buckets = GradientBuckets::new(vec![param.shallow_clone()], 1 << 20);
        let step = |ring: &mut RingCollective, buckets: &mut GradientBuckets| {
            let loss = param.sum(Kind::Float);
            buckets.backward_and_sync(ring, 1, Some(&loss), || loss.backward())
        };
        step(&mut ring, &mut buckets).unwrap();
        let _ = param.grad().zero_();
        if ring.rank() == 1 {
            // Gone before the second, overlapped step.
            drop(ring);
            return None;
        }
        let started = Instant::now();
        let error = step(&mut ring, &mut buckets).unwrap_err();
        Some((error, started.elapsed()))
    });
    let (error, waited) = results[0].as_ref().unwrap();
    assert!(error.is_retryable(), "{error}");
    assert!(error.to_string().contains("rank 1"), "{error}");
    // The closed connection answers at once, well inside the 20 s timeout.
    assert!(*waited < Duration::from_secs(10), "waited {waited:?}");
}

#[test]
fn joining_fails_in_time_when_a_rank_never_comes() {
    let listener = RingCollective::bind("127.0.0.1").unwrap();
    let ghost = RingCollective::bind("127.0.0.1").unwrap();
    let peers = vec![
        listener.local_addr().unwrap().to_string(),
        ghost.local_addr().unwrap().to_string(),
    ];
    let options = RingOptions {
        timeout: Duration::from_millis(300),
        ..RingOptions::default()
    };
    // The ghost's port accepts connections (the kernel queues them) but no
    // rank ever says hello back on ours.
    let error = RingCollective::connect(0, listener, &peers, options).unwrap_err();
    assert!(
        matches!(error, CollectiveError::Timeout { peer: 1, .. }),
        "{error}"
    );
    drop(ghost);
}

/// A hello as a rank sends it, carrying `secret`.
fn hello_bytes(session: u64, rank: u32, world: u32, secret: [u8; 32]) -> Vec<u8> {
    let mut bytes = 0x4154_5247u32.to_le_bytes().to_vec();
    bytes.extend(session.to_le_bytes());
    bytes.extend(rank.to_le_bytes());
    bytes.extend(world.to_le_bytes());
    bytes.extend(secret);
    bytes
}

#[test]
fn a_peer_without_the_gangs_secret_is_dropped_and_the_ring_forms() {
    use std::io::{Read, Write};
    let listeners = [
        RingCollective::bind("127.0.0.1").unwrap(),
        RingCollective::bind("127.0.0.1").unwrap(),
    ];
    let peers: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    let options = RingOptions {
        timeout: Duration::from_secs(10),
        session: 42,
        secret: RingSecret([9; 32]),
        ..RingOptions::default()
    };
    // Knows the session, rank and world (all guessable), not the secret;
    // it gets to rank 0's listener before rank 1 does.
    let mut intruder = std::net::TcpStream::connect(&peers[0]).unwrap();
    intruder.write_all(&hello_bytes(42, 1, 2, [0; 32])).unwrap();
    let sums = std::thread::scope(|scope| {
        let handles: Vec<_> = listeners
            .into_iter()
            .enumerate()
            .map(|(rank, listener)| {
                let peers = &peers;
                scope.spawn(move || {
                    let mut ring = RingCollective::connect(rank, listener, peers, options).unwrap();
                    let mut values = vec![rank as f32 + 1.0; 4];
                    ring.all_reduce(&mut values).unwrap();
                    values
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert_eq!(sums, vec![vec![3.0; 4], vec![3.0; 4]]);
    // The intruder's connection was closed without a word.
    intruder
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buffer = [0u8; 8];
    assert!(matches!(intruder.read(&mut buffer), Ok(0) | Err(_)));
}
