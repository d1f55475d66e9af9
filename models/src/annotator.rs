//! The research code's `Annotator`: a GRU decoder whose first hidden state is a
//! linear map of the image features.

use tch::nn::{self, RNN};
use tch::{Kind, Tensor};

use crate::vocab::{END, PAD, START};

pub const EMBED_DIM: i64 = 64;
pub const HIDDEN_DIM: i64 = 512;

#[derive(Debug)]
pub struct Annotator {
    embed: nn::Embedding,
    rnn: nn::GRU,
    init: nn::Linear,
    project: nn::Linear,
}

impl Annotator {
    pub fn new(p: &nn::Path, n_vocab: i64, feature_dim: i64) -> Self {
        Self {
            embed: nn::embedding(p / "embed", n_vocab, EMBED_DIM, Default::default()),
            rnn: nn::gru(
                p / "rnn",
                EMBED_DIM,
                HIDDEN_DIM,
                nn::RNNConfig {
                    batch_first: true,
                    ..Default::default()
                },
            ),
            init: nn::linear(p / "init", feature_dim, HIDDEN_DIM, Default::default()),
            project: nn::linear(p / "project", HIDDEN_DIM, n_vocab, Default::default()),
        }
    }

    fn initial_state(&self, features: &Tensor) -> nn::GRUState {
        nn::GRUState(features.apply(&self.init).unsqueeze(0))
    }

    /// Teacher-forced loss on `[N, T]` token rows `<start> w… <end> <pad>…`.
    pub fn loss(&self, features: &Tensor, tokens: &Tensor) -> Tensor {
        let steps = tokens.size()[1];
        let inputs = tokens.narrow(1, 0, steps - 1).apply(&self.embed);
        let targets = tokens.narrow(1, 1, steps - 1);
        let (outputs, _) = self.rnn.seq_init(&inputs, &self.initial_state(features));
        let logits = outputs.apply(&self.project);
        let vocab = logits.size()[2];
        logits.view([-1, vocab]).cross_entropy_loss::<Tensor>(
            &targets.reshape([-1]),
            None,
            tch::Reduction::Mean,
            PAD,
            0.0,
        )
    }

    /// Greedy decoding from `<start>` until `<end>` or `max_len` tokens, per row.
    pub fn annotate(&self, features: &Tensor, max_len: usize) -> Vec<Vec<i64>> {
        let n = features.size()[0];
        let mut state = self.initial_state(features);
        let mut token = Tensor::full([n], START, (Kind::Int64, features.device()));
        let mut out = vec![Vec::new(); n as usize];
        let mut finished = vec![false; n as usize];
        for _ in 0..max_len {
            state = self.rnn.step(&token.apply(&self.embed), &state);
            let logits = state.0.squeeze_dim(0).apply(&self.project);
            token = logits.argmax(-1, false);
            let values: Vec<i64> = Vec::<i64>::try_from(&token).unwrap_or_default();
            for (row, &value) in values.iter().enumerate() {
                if !finished[row] {
                    if value == END {
                        finished[row] = true;
                    } else {
                        out[row].push(value);
                    }
                }
            }
            if finished.iter().all(|&f| f) {
                break;
            }
        }
        out
    }

    /// Beam search of width `beams` per row; returns the best finished sequence.
    pub fn beam_search(&self, features: &Tensor, beams: usize, max_len: usize) -> Vec<Vec<i64>> {
        let beams = beams.max(1) as i64;
        (0..features.size()[0])
            .map(|row| {
                let feature = features.narrow(0, row, 1).expand([beams, -1], false);
                self.beam_search_one(&feature, beams, max_len)
            })
            .collect()
    }

    fn beam_search_one(&self, features: &Tensor, k: i64, max_len: usize) -> Vec<i64> {
        let device = features.device();
        let mut state = self.initial_state(features);
        let mut tokens = Tensor::full([k], START, (Kind::Int64, device));
        // Only the first beam is live at the start, so the k beams do not start as copies.
        let mut scores: Vec<f64> = (0..k)
            .map(|i| if i == 0 { 0.0 } else { f64::NEG_INFINITY })
            .collect();
        let mut sequences: Vec<Vec<i64>> = vec![Vec::new(); k as usize];
        let mut done: Vec<(f64, Vec<i64>)> = Vec::new();
        for _ in 0..max_len {
            state = self.rnn.step(&tokens.apply(&self.embed), &state);
            let log_probs = state
                .0
                .squeeze_dim(0)
                .apply(&self.project)
                .log_softmax(-1, Kind::Float);
            let vocab = log_probs.size()[1];
            let totals = log_probs
                + Tensor::from_slice(&scores)
                    .to_kind(Kind::Float)
                    .to_device(device)
                    .unsqueeze(1);
            let (best, index) = totals.view([-1]).topk(k, -1, true, true);
            let best: Vec<f64> =
                Vec::<f64>::try_from(&best.to_kind(Kind::Double)).unwrap_or_default();
            let index: Vec<i64> = Vec::<i64>::try_from(&index).unwrap_or_default();
            let mut next_sequences = Vec::new();
            let mut next_scores = Vec::new();
            let mut parents = Vec::new();
            let mut next_tokens = Vec::new();
            for (&score, &flat) in best.iter().zip(&index) {
                let (parent, token) = (flat / vocab, flat % vocab);
                if !score.is_finite() {
                    continue;
                }
                if token == END {
                    done.push((score, sequences[parent as usize].clone()));
                    continue;
                }
                let mut sequence = sequences[parent as usize].clone();
                sequence.push(token);
                next_sequences.push(sequence);
                next_scores.push(score);
                parents.push(parent);
                next_tokens.push(token);
            }
            if next_sequences.is_empty() || done.len() >= k as usize {
                break;
            }
            while next_sequences.len() < k as usize {
                next_sequences.push(Vec::new());
                next_scores.push(f64::NEG_INFINITY);
                parents.push(0);
                next_tokens.push(START);
            }
            let parents = Tensor::from_slice(&parents).to_device(device);
            state = nn::GRUState(state.0.index_select(1, &parents));
            tokens = Tensor::from_slice(&next_tokens).to_device(device);
            sequences = next_sequences;
            scores = next_scores;
        }
        for (sequence, score) in sequences.into_iter().zip(scores) {
            if score.is_finite() {
                done.push((score, sequence));
            }
        }
        done.into_iter()
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, sequence)| sequence)
            .unwrap_or_default()
    }
}
