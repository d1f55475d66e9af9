//! What an epoch reads, in which order, and how it augments it.

use atelier_catalog::{Catalog, ReadRange};
use atelier_pipeline::{Augment, ImageLoader, ItemFilter, LoaderOptions, RandomAffine};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::runtime::Handle;

use crate::dataset::{in_validation, label_attributes, wanted_attributes};
use crate::error::Result;
use crate::sampler::single_row_groups;

use atelier_proto::TrainOptions;

use super::TrainSetup;

/// The loader of one epoch: training items in a seeded row-group order with
/// augmentation, or validation items in catalogue order.
pub fn epoch_loader(
    setup: &TrainSetup,
    catalog: &Catalog,
    handle: &Handle,
    epoch: usize,
    validation: bool,
) -> Result<ImageLoader> {
    let fraction = setup.options.val_fraction;
    let keep = ItemFilter::new(move |id| in_validation(id, fraction) == validation);
    loader_for(
        setup,
        catalog,
        handle,
        epoch,
        validation,
        keep,
        setup.options.shuffle_window,
    )
}

/// The epoch's training loader over only the items `keep` accepts (a
/// rank's share), in the epoch's group order without reshuffling, so that
/// batches follow the sampler's order exactly.
pub fn epoch_loader_with(
    setup: &TrainSetup,
    catalog: &Catalog,
    handle: &Handle,
    epoch: usize,
    keep: Option<ItemFilter>,
) -> Result<ImageLoader> {
    let fraction = setup.options.val_fraction;
    let keep = keep.unwrap_or_else(|| ItemFilter::new(move |id| !in_validation(id, fraction)));
    loader_for(setup, catalog, handle, epoch, false, keep, 0)
}

/// The order in which an epoch reads the catalogue's row groups: seeded and
/// shuffled per epoch, the same on every rank.
pub fn epoch_group_order(options: &TrainOptions, catalog: &Catalog, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..single_row_groups(catalog).len()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(
        options.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    order.shuffle(&mut rng);
    order
}

pub(super) fn loader_for(
    setup: &TrainSetup,
    catalog: &Catalog,
    handle: &Handle,
    epoch: usize,
    validation: bool,
    keep: ItemFilter,
    shuffle_window: usize,
) -> Result<ImageLoader> {
    let options = &setup.options;
    let groups = single_row_groups(catalog);
    let ranges: Vec<ReadRange> = if validation {
        groups
    } else {
        epoch_group_order(options, catalog, epoch)
            .into_iter()
            .map(|g| groups[g].clone())
            .collect()
    };
    let defaults = LoaderOptions::default();
    let loader_options = LoaderOptions {
        image_size: options.image_size,
        batch_size: options.batch_size,
        threads: setup.threads.max(1),
        prefetch: setup.threads.max(1) * 2,
        augment: if options.augment && !validation {
            train_augment(options)
        } else {
            Augment::CenterCrop
        },
        framing: options.framing,
        labels: {
            let (attributes, _) = wanted_attributes(options.task, &options.targets);
            label_attributes(attributes.iter().map(String::as_str))
        },
        seed: options.seed.wrapping_add(epoch as u64),
        keep: Some(keep),
        shuffle_window: if validation { 0 } else { shuffle_window },
        // A GPU gets bytes and normalises them itself (see upload_batch).
        raw_bytes: crate::device::parse_device(&setup.device).is_ok_and(|d| d.is_cuda()),
        decode_on_device: options.gpu_decode
            && crate::device::parse_device(&setup.device).is_ok_and(|d| d.is_cuda()),
        ..defaults
    };
    Ok(ImageLoader::new(
        catalog,
        ranges,
        loader_options,
        handle.clone(),
    )?)
}

fn train_augment(options: &TrainOptions) -> Augment {
    let affine = options.affine().then_some(RandomAffine {
        degrees: options.affine_degrees,
        translate: options.affine_translate,
        scale: options.affine_scale,
    });
    Augment::train(options.crop_scale, affine)
}
