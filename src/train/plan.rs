//! What a training run does, as one typed value. [`TrainConfig`] is the flat form a user writes
//! and a checkpoint stores (flags map onto it one to one); [`TrainPlan::from_config`] is the one
//! place its fields are checked against each other. Past it an invalid combination (LoFi on
//! cached features, adapters on a rewired backbone, ...) cannot be expressed, and the trainer
//! reads only the plan.

use super::config::{BackboneConfig, TrainConfig, TrainMode};
use crate::backbone::Network;
use crate::data::augment::AugmentConfig;
use crate::data::lofi::{Fidelity, LoFiConfig, LoFiMode};
use crate::error::{Error, Result};
use crate::reversible::DriftMonitor;

/// What the data side does at every step where the backbone runs: LoFi-E2E's sampler (the
/// fidelity of each batch) and the clip augmentation.
#[derive(Debug, Clone)]
pub struct Sampling {
    /// Low-fidelity sampler.
    pub lofi: LoFiConfig,
    /// Clip augmentation.
    pub augment: AugmentConfig,
}

impl Sampling {
    /// The sampling fidelity of batch `batch` of `epoch`.
    pub fn fidelity(&self, epoch: usize, batch: usize) -> Fidelity {
        self.lofi.fidelity(epoch, batch)
    }
}

/// How a frozen backbone's outputs reach the parts that learn.
#[derive(Debug, Clone)]
pub enum FrozenFeatures {
    /// Extracted once at full fidelity, without augmentation, and kept in memory.
    Cached,
    /// The frozen backbone runs (no graph) at every step, with this sampling.
    PerStep(Sampling),
}

/// One training run's mode with exactly the settings that mode uses.
#[derive(Debug, Clone)]
pub enum TrainPlan {
    /// The backbone is frozen; the head learns.
    HeadOnly {
        /// The frozen backbone's network.
        network: Network,
        /// Where its features come from.
        features: FrozenFeatures,
    },
    /// Backbone and head learn with ordinary autodiff (every activation kept).
    Full {
        /// The backbone's network (rewired: the memory-hungry reference of `Reversible`).
        network: Network,
        /// Activation checkpointing per block (the plain network only).
        checkpointing: bool,
        /// The data side.
        sampling: Sampling,
    },
    /// Backbone and head learn; the rewired blocks' activations are reconstructed in the
    /// backward pass (Re2TAL).
    Reversible {
        /// Reconstruction checks and their fallback.
        drift: DriftMonitor,
        /// The data side.
        sampling: Sampling,
    },
    /// The plain backbone is frozen; LoSA adapters read its layers and learn with the head.
    Adapter {
        /// Where the backbone's outputs come from.
        features: FrozenFeatures,
    },
}

impl TrainConfig {
    /// Check the configuration: value ranges, then the settings that must go together (the
    /// plan is the one place that checks those).
    pub fn validate(&self) -> Result<()> {
        self.check_ranges()?;
        TrainPlan::from_config(self).map(|_| ())
    }
}

impl TrainPlan {
    /// The plan `cfg` describes, or [`Error::Config`] naming the settings that do not go
    /// together.
    pub fn from_config(cfg: &TrainConfig) -> Result<Self> {
        fn bad<T>(m: String) -> Result<T> {
            Err(Error::Config(m))
        }
        let sampling = Sampling {
            lofi: cfg.lofi.clone(),
            augment: cfg.augment.clone(),
        };
        let network = Network::rewired_if(cfg.rewired);
        let frozen = || -> Result<FrozenFeatures> {
            if !cfg.cache_features {
                return Ok(FrozenFeatures::PerStep(sampling.clone()));
            }
            if cfg.lofi.mode != LoFiMode::Full {
                return bad(format!(
                    "LoFi sampling needs a mode that runs the backbone every step; {} trains on \
                     features extracted once at full fidelity (cache_features false, \
                     --no-feature-cache, runs it per step)",
                    cfg.mode
                ));
            }
            if cfg.augment != AugmentConfig::new() {
                return bad(format!(
                    "augmentation needs a mode that runs the backbone every step; {} trains on \
                     features extracted once (cache_features false, --no-feature-cache, runs \
                     it per step)",
                    cfg.mode
                ));
            }
            Ok(FrozenFeatures::Cached)
        };
        let plan = match cfg.mode {
            TrainMode::HeadOnly => TrainPlan::HeadOnly {
                network,
                features: frozen()?,
            },
            TrainMode::Full if cfg.checkpointing && cfg.rewired => {
                return bad(
                    "checkpointing recomputes the plain network's blocks; the rewired one is \
                     trained without activations by mode reversible (drop `rewired`)"
                        .into(),
                );
            }
            TrainMode::Full => TrainPlan::Full {
                network,
                sampling,
                checkpointing: cfg.checkpointing,
            },
            _ if cfg.checkpointing => {
                return bad(format!(
                    "checkpointing applies to mode full (the backbone learning with autodiff), \
                     not {}",
                    cfg.mode
                ));
            }
            TrainMode::Reversible => TrainPlan::Reversible {
                drift: cfg.drift.clone(),
                sampling,
            },
            TrainMode::Adapter if cfg.rewired => {
                return bad(
                    "the adapter mode reads the ordinary backbone's layers; drop `rewired`".into(),
                );
            }
            TrainMode::Adapter => TrainPlan::Adapter {
                features: frozen()?,
            },
        };
        cfg.check_precision(cfg.precision)?;
        if cfg.checkpointing && matches!(cfg.backbone, BackboneConfig::ResNet(_)) {
            return bad(
                "activation checkpointing is implemented for ViT and Swin backbones (a \
                 recomputed training-mode BatchNorm would update its statistics twice)"
                    .into(),
            );
        }
        if plan.network() == Network::Rewired && matches!(cfg.backbone, BackboneConfig::ResNet(_)) {
            return bad(
                "rewired (reversible) training of whole models is implemented for ViT and Swin \
                 backbones; for ResNet chains (frozen BatchNorm) use `reversible::RevChain` \
                 directly (docs/reversible.md)"
                    .into(),
            );
        }
        Ok(plan)
    }

    /// The mode's name.
    pub fn mode(&self) -> TrainMode {
        match self {
            TrainPlan::HeadOnly { .. } => TrainMode::HeadOnly,
            TrainPlan::Full { .. } => TrainMode::Full,
            TrainPlan::Reversible { .. } => TrainMode::Reversible,
            TrainPlan::Adapter { .. } => TrainMode::Adapter,
        }
    }

    /// The backbone's network.
    pub fn network(&self) -> Network {
        match self {
            TrainPlan::HeadOnly { network, .. } | TrainPlan::Full { network, .. } => *network,
            TrainPlan::Reversible { .. } => Network::Rewired,
            TrainPlan::Adapter { .. } => Network::Plain,
        }
    }

    /// The data side of steps that run the backbone; `None` when training reads cached
    /// features (full fidelity, no augmentation).
    pub fn sampling(&self) -> Option<&Sampling> {
        match self {
            TrainPlan::Full { sampling, .. } | TrainPlan::Reversible { sampling, .. } => {
                Some(sampling)
            }
            TrainPlan::HeadOnly { features, .. } | TrainPlan::Adapter { features } => {
                match features {
                    FrozenFeatures::PerStep(s) => Some(s),
                    FrozenFeatures::Cached => None,
                }
            }
        }
    }

    /// Whether the backbone's outputs are extracted once before training.
    pub fn caches_features(&self) -> bool {
        self.sampling().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::resnet3d::ResNet3dConfig;

    fn cfg(mode: TrainMode) -> TrainConfig {
        TrainConfig::new().with_mode(mode)
    }

    #[test]
    fn each_mode_maps_to_its_plan_with_only_the_settings_it_uses() {
        let p = TrainPlan::from_config(&cfg(TrainMode::HeadOnly)).unwrap();
        assert!(p.caches_features() && p.network() == Network::Plain);
        let p = TrainPlan::from_config(&cfg(TrainMode::HeadOnly).with_cache_features(false));
        assert!(!p.unwrap().caches_features());
        let p = TrainPlan::from_config(&cfg(TrainMode::Reversible)).unwrap();
        assert_eq!(p.network(), Network::Rewired);
        assert!(p.sampling().is_some());
        let p = TrainPlan::from_config(&cfg(TrainMode::Full).with_rewired(true)).unwrap();
        assert_eq!((p.mode(), p.network()), (TrainMode::Full, Network::Rewired));
        for m in TrainMode::ALL {
            assert_eq!(TrainPlan::from_config(&cfg(m)).unwrap().mode(), m);
        }
    }

    #[test]
    fn combinations_that_do_not_go_together_are_refused_with_the_reason() {
        let lofi = LoFiConfig::new().with_mode(LoFiMode::Spatial);
        let cases = [
            (cfg(TrainMode::HeadOnly).with_lofi(lofi.clone()), "LoFi"),
            (cfg(TrainMode::Adapter).with_lofi(lofi), "LoFi"),
            (
                cfg(TrainMode::HeadOnly).with_augment(AugmentConfig::synthetic()),
                "augmentation",
            ),
            (cfg(TrainMode::Adapter).with_rewired(true), "drop `rewired`"),
            (
                cfg(TrainMode::Reversible)
                    .with_backbone(BackboneConfig::ResNet(ResNet3dConfig::new())),
                "ViT and Swin",
            ),
            (
                cfg(TrainMode::Full)
                    .with_backbone(BackboneConfig::ResNet(ResNet3dConfig::new()))
                    .with_precision(crate::precision::Precision::Bf16),
                "transformer backbones",
            ),
        ];
        for (c, why) in cases {
            let e = TrainPlan::from_config(&c).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
        // The same settings are fine where the backbone runs every step.
        let c = cfg(TrainMode::HeadOnly)
            .with_cache_features(false)
            .with_augment(AugmentConfig::synthetic());
        assert!(TrainPlan::from_config(&c).is_ok());
    }
}
