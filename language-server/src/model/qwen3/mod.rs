//! The Qwen3 (dense or MoE) decoder: loading from any published layout and a batched forward
//! pass over sequences of different lengths, each with its own KV cache, on one device or over
//! the ranks of a tensor-parallel group ([`Parallelism`]): one [`ModelShard`] per rank, driven in
//! lockstep by a [`RankGroup`] (a thread per rank), behind the same interface.

mod shard;

use std::path::Path;
use std::sync::{Mutex, PoisonError};

use candle_core::{Device, Tensor};
use dvd_checkpoint::Checkpoint;
use dvd_nn::parallel::{RankFailure, RankGroup};
use dvd_nn::{LoadOptions, ModelError};

use super::config::LanguageConfig;
use super::kv_cache::{KvCache, SequenceCache};
use super::names::CheckpointLayout;
use super::parallel::{Parallelism, Partition, communicators};
use shard::{ModelShard, ShardStep};

/// One sequence's part of a batched forward step.
pub struct SequenceStep<'a> {
    /// Input embeddings of the new tokens, `[len, hidden]` (see [`LanguageModel::embed`]).
    pub embeds: Tensor,
    /// The sequence's cache; the new tokens are appended to it.
    pub cache: &'a mut (dyn SequenceCache + 'a),
}

/// A forward step under way, paused between two decoder layers (see
/// [`LanguageModel::start_forward`]).
#[derive(Debug)]
pub struct PartialForward {
    /// Each rank's part.
    steps: Vec<Mutex<ShardStep>>,
    /// Positions each sequence adds.
    lens: Vec<usize>,
    /// The layer to run next.
    next_layer: usize,
    /// The model's depth.
    layers: usize,
}

impl PartialForward {
    /// Whether every layer has run.
    pub fn is_done(&self) -> bool {
        self.next_layer >= self.layers
    }
}

/// Qwen3 / Qwen3-MoE, language tensors only, on one device or sharded over several ranks.
#[derive(Debug)]
pub struct LanguageModel {
    config: LanguageConfig,
    layout: CheckpointLayout,
    options: LoadOptions,
    tied: bool,
    partition: Partition,
    /// One per rank, in rank order.
    shards: Vec<ModelShard>,
    /// The ranks' threads and collectives (none with one rank).
    group: Option<RankGroup>,
}

impl LanguageModel {
    /// Loads the language tensors of the checkpoint in `dir`.
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Self, ModelError> {
        Self::load_parallel(dir, options, Parallelism::default(), &[])
    }

    /// Loads the checkpoint in `dir` split over `parallelism`'s ranks, rank `r` on `devices[r]`
    /// (empty: every rank on the CPU when `options.device` is the CPU, else on consecutive
    /// devices from `options.device`). A split the model's shapes do not allow is refused
    /// before any weight is read.
    pub fn load_parallel(
        dir: &Path,
        options: &LoadOptions,
        parallelism: Parallelism,
        devices: &[Device],
    ) -> Result<Self, ModelError> {
        let config = LanguageConfig::from_dir(dir)?;
        let checkpoint = Checkpoint::open(dir)?;
        Self::from_checkpoint_parallel(config, &checkpoint, options, parallelism, devices)
    }

    /// Loads the language tensors of an opened checkpoint described by `config`.
    pub fn from_checkpoint(
        config: LanguageConfig,
        checkpoint: &Checkpoint,
        options: &LoadOptions,
    ) -> Result<Self, ModelError> {
        Self::from_checkpoint_parallel(config, checkpoint, options, Parallelism::default(), &[])
    }

    /// [`LanguageModel::load_parallel`] of an opened checkpoint described by `config`.
    pub fn from_checkpoint_parallel(
        config: LanguageConfig,
        checkpoint: &Checkpoint,
        options: &LoadOptions,
        parallelism: Parallelism,
        devices: &[Device],
    ) -> Result<Self, ModelError> {
        let partition = Partition::new(&config, parallelism)
            .map_err(|e| ModelError::Unsupported(e.to_string()))?;
        let devices = super::parallel::rank_devices(&options.device, devices, partition.ranks())?;
        let layout = CheckpointLayout::detect(checkpoint)?;
        // Prefer a stored lm_head (InternVL3.5 ships one even for tied base models).
        let tied = if checkpoint.contains(&layout.lm_head()) {
            false
        } else if config.tie_word_embeddings {
            true
        } else {
            return Err(dvd_checkpoint::CheckpointError::MissingTensor {
                name: layout.lm_head(),
            }
            .into());
        };
        let comms = communicators(&devices)?;
        // Ranks load one after the other: host memory holds one rank's share at a time (plus
        // the tensor being sliced), whatever the group's size.
        let shards = partition
            .shards()
            .into_iter()
            .zip(&devices)
            .zip(&comms)
            .map(|((shard, device), comm)| {
                let options = LoadOptions {
                    dtype: options.dtype,
                    device: device.clone(),
                };
                ModelShard::load(
                    &config,
                    checkpoint,
                    layout,
                    tied,
                    shard,
                    comm.clone(),
                    &options,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let group = if partition.ranks() > 1 {
            Some(RankGroup::new(comms).map_err(|e| {
                ModelError::Unsupported(format!("could not start the rank threads: {e}"))
            })?)
        } else {
            None
        };
        Ok(Self {
            config,
            layout,
            options: LoadOptions {
                dtype: options.dtype,
                device: devices[0].clone(),
            },
            tied,
            partition,
            shards,
            group,
        })
    }

    /// The parsed configuration.
    pub fn config(&self) -> &LanguageConfig {
        &self.config
    }

    /// The tensor-naming layout of the checkpoint.
    pub fn layout(&self) -> CheckpointLayout {
        self.layout
    }

    /// Whether `lm_head` is the embedding matrix (no `lm_head` tensor in the checkpoint).
    pub fn tied_embeddings(&self) -> bool {
        self.tied
    }

    /// Compute dtype, and the device of rank 0 (where embeddings and logits are returned).
    pub fn options(&self) -> &LoadOptions {
        &self.options
    }

    /// How the model is split over its ranks.
    pub fn partition(&self) -> &Partition {
        &self.partition
    }

    /// Each rank's device, in rank order.
    pub fn rank_devices(&self) -> Vec<Device> {
        self.shards.iter().map(|s| s.device().clone()).collect()
    }

    /// Bytes of weights the most loaded rank holds.
    pub fn weight_bytes_per_rank(&self) -> u64 {
        let elements = self.shards.iter().map(ModelShard::weight_elements).max();
        (elements.unwrap_or(0) * self.options.dtype.size_in_bytes()) as u64
    }

    /// A fresh cache for one sequence (one part per rank).
    pub fn new_cache(&self) -> KvCache {
        KvCache::for_ranks(self.config.num_layers, self.shards.len())
    }

    /// Text embeddings of `ids`, with `image_features` (`[n, hidden]`, any dtype) written into
    /// the positions holding `image_token_id`, in order. The number of such positions must equal
    /// `n`: the prompt's `<IMG_CONTEXT>` runs are built from the vision side's tokens per tile.
    /// On rank 0's device.
    pub fn embed(
        &self,
        ids: &[u32],
        image_token_id: Option<u32>,
        image_features: Option<&Tensor>,
    ) -> Result<Tensor, ModelError> {
        let vocab = self.config.vocab_size as u32;
        if let Some(bad) = ids.iter().find(|&&t| t >= vocab) {
            return Err(ModelError::InvalidInput(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        let mut embeds =
            self.on_ranks(|shard, _| shard.embed(ids, image_token_id, image_features))?;
        Ok(embeds.swap_remove(0))
    }

    /// Runs one step for every sequence in `batch` (prefill chunks and decode tokens alike):
    /// appends their tokens to their caches and returns the logits of each sequence's last new
    /// token, f32 `[batch, vocab]`.
    pub fn forward(&self, batch: &mut [SequenceStep<'_>]) -> Result<Tensor, ModelError> {
        let mut step = self.start_forward(batch)?;
        while !step.is_done() {
            self.forward_layer(&mut step, &mut caches_of(batch))?;
        }
        self.finish_forward(step)
    }

    /// Starts a step for `batch` that runs one decoder layer per
    /// [`forward_layer`](Self::forward_layer) call, so the caller can run another step (for
    /// other sequences) between two layers of this one; [`finish_forward`](Self::finish_forward)
    /// gives the logits. A sequence's cache length advances only after its last layer, so a
    /// paused step's sequences are untouched by the other step. (The fused CUDA path runs every
    /// layer here at once: its launches are queued on the GPU anyway.)
    pub fn start_forward(
        &self,
        batch: &mut [SequenceStep<'_>],
    ) -> Result<PartialForward, ModelError> {
        if batch.is_empty() {
            return Err(ModelError::InvalidInput("empty batch".into()));
        }
        let mut lens = Vec::with_capacity(batch.len());
        for step in batch.iter() {
            let (len, width) = step.embeds.dims2()?;
            if len == 0 || width != self.config.hidden_size {
                return Err(ModelError::InvalidInput(format!(
                    "a sequence step must be [len > 0, {}], got [{len}, {width}]",
                    self.config.hidden_size
                )));
            }
            if step.cache.len() + len > self.config.max_position_embeddings {
                return Err(ModelError::InvalidInput(format!(
                    "sequence of {} positions exceeds max_position_embeddings {}",
                    step.cache.len() + len,
                    self.config.max_position_embeddings
                )));
            }
            lens.push(len);
        }
        let embeds: Vec<Tensor> = batch.iter().map(|s| s.embeds.clone()).collect();
        let mut caches = caches_of(batch);
        let steps = self.with_rank_caches(&mut caches, |shard, _, caches| {
            shard.start_forward(&embeds, caches)
        })?;
        let layers = self.config.num_layers;
        let mut step = PartialForward {
            next_layer: if steps[0].is_done() { layers } else { 0 },
            steps: steps.into_iter().map(Mutex::new).collect(),
            lens,
            layers,
        };
        if step.is_done() {
            self.advance_rank_caches(&mut step, &mut caches);
        }
        Ok(step)
    }

    /// Runs the next decoder layer of `step` over `caches`: those of the sequences
    /// [`start_forward`](Self::start_forward) was given, in the same order. Does nothing once
    /// every layer has run.
    pub fn forward_layer(
        &self,
        step: &mut PartialForward,
        caches: &mut [&mut dyn SequenceCache],
    ) -> Result<(), ModelError> {
        if step.is_done() {
            return Ok(());
        }
        if caches.len() != step.lens.len() {
            return Err(ModelError::InvalidInput(format!(
                "a step started with {} sequences continued with {}",
                step.lens.len(),
                caches.len()
            )));
        }
        let steps = &step.steps;
        self.with_rank_caches(caches, |shard, rank, caches| {
            let mut own = steps[rank].lock().unwrap_or_else(PoisonError::into_inner);
            shard.forward_layer(&mut own, caches)
        })?;
        step.next_layer += 1;
        if step.is_done() {
            self.advance_rank_caches(step, caches);
        }
        Ok(())
    }

    /// The logits of a step whose layers have all run, f32 `[batch, vocab]` (each sequence's
    /// last new token).
    pub fn finish_forward(&self, step: PartialForward) -> Result<Tensor, ModelError> {
        if !step.is_done() {
            return Err(ModelError::InvalidInput(format!(
                "the step stopped at layer {} of {}",
                step.next_layer, step.layers
            )));
        }
        let mut logits = self.on_ranks(|shard, rank| {
            let own = step.steps[rank]
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            shard.finish_forward(&own)
        })?;
        Ok(logits.swap_remove(0))
    }

    /// `f(shard, rank)` on every rank at once; the results in rank order.
    fn on_ranks<R: Send>(
        &self,
        f: impl Fn(&ModelShard, usize) -> Result<R, ModelError> + Sync,
    ) -> Result<Vec<R>, ModelError> {
        match &self.group {
            None => Ok(vec![f(&self.shards[0], 0)?]),
            Some(group) => collect(group.run(|rank| f(&self.shards[rank], rank))),
        }
    }

    /// `f(shard, caches)` on every rank, each with its own part of every cache in `caches`.
    fn with_rank_caches<R: Send>(
        &self,
        caches: &mut [&mut dyn SequenceCache],
        f: impl Fn(&ModelShard, usize, &mut [&mut dyn SequenceCache]) -> Result<R, ModelError> + Sync,
    ) -> Result<Vec<R>, ModelError> {
        let ranks = self.shards.len();
        let Some(group) = &self.group else {
            return Ok(vec![f(&self.shards[0], 0, caches)?]);
        };
        let mut per_rank: Vec<Vec<&mut (dyn SequenceCache + Send)>> = (0..ranks)
            .map(|_| Vec::with_capacity(caches.len()))
            .collect();
        for cache in caches.iter_mut() {
            let parts = cache.rank_caches(ranks).ok_or_else(|| {
                ModelError::InvalidInput(format!(
                    "a cache holding one rank's heads was given to a model over {ranks} ranks"
                ))
            })?;
            if parts.len() != ranks {
                return Err(ModelError::InvalidInput(format!(
                    "a cache of {} ranks was given to a model over {ranks} ranks",
                    parts.len()
                )));
            }
            for (rank, part) in parts.into_iter().enumerate() {
                per_rank[rank].push(part);
            }
        }
        let per_rank: Vec<Mutex<Vec<&mut (dyn SequenceCache + Send)>>> =
            per_rank.into_iter().map(Mutex::new).collect();
        collect(group.run(|rank| {
            let mut own = per_rank[rank]
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let mut caches: Vec<&mut dyn SequenceCache> = own
                .iter_mut()
                .map(|c| &mut **c as &mut dyn SequenceCache)
                .collect();
            f(&self.shards[rank], rank, &mut caches)
        }))
    }

    /// Records a finished step's positions in caches split over ranks (a single rank's cache
    /// advanced itself).
    fn advance_rank_caches(
        &self,
        step: &mut PartialForward,
        caches: &mut [&mut dyn SequenceCache],
    ) {
        if self.group.is_none() {
            return;
        }
        for (cache, &len) in caches.iter_mut().zip(&step.lens) {
            cache.advance_ranks(len);
        }
    }
}

/// The ranks' results, or the first rank's error (in rank order; a rank that panicked counts
/// after every rank that failed with an error).
fn collect<R>(results: Vec<Result<R, RankFailure<ModelError>>>) -> Result<Vec<R>, ModelError> {
    let mut panicked = None;
    let mut out = Vec::with_capacity(results.len());
    let mut first_error = None;
    for result in results {
        match result {
            Ok(r) => out.push(r),
            Err(RankFailure::Failed { error, .. }) => {
                first_error.get_or_insert(error);
            }
            Err(RankFailure::Panicked { rank }) => {
                panicked.get_or_insert(rank);
            }
        }
    }
    if let Some(error) = first_error {
        return Err(error);
    }
    if let Some(rank) = panicked {
        return Err(ModelError::Tensor(candle_core::Error::Msg(format!(
            "rank {rank} of the model panicked"
        ))));
    }
    Ok(out)
}

/// The caches of `batch`, in order.
fn caches_of<'b>(batch: &'b mut [SequenceStep<'_>]) -> Vec<&'b mut dyn SequenceCache> {
    batch
        .iter_mut()
        .map(|s| &mut *s.cache as &mut dyn SequenceCache)
        .collect()
}
