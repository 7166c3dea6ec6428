//! An instance's GPUs for one run: `GPUs=auto[:N]` chosen, a pinned list
//! checked (`GPUMemoryMin=`, GPU health), both reserved with the placer so
//! the next start sees them (see `gpu::placement`). Called from
//! `RunHooks::prepare`, on the supervisor task, before anything is leased.

use std::time::Instant;

use crate::gpu::placement::Want;
use crate::units::{GpuId, GpuSpec, Unit};

use super::InstanceContext;

/// The GPU indices this run gets (None: CPU only, or no GPU source to check
/// pinned ids against, in which case they go to CUDA as written).
pub fn place(unit: &Unit, ctx: &InstanceContext) -> Result<Option<Vec<u32>>, String> {
    let Some(instance) = unit.instance.as_ref() else { return Ok(None) };
    let min = instance.limits.gpu_memory_min;
    let Some(gpus) = ctx.gpus.as_ref() else {
        return match instance.gpus {
            GpuSpec::Auto(_) => Err("GPUs=auto: no GPU is known (no NVIDIA driver)".into()),
            GpuSpec::Pinned(_) => Ok(None),
        };
    };
    let want = match &instance.gpus {
        GpuSpec::Pinned(ids) if ids.is_empty() => {
            gpus.placer.release(&unit.name);
            return Ok(None);
        }
        GpuSpec::Pinned(ids) => {
            let known = gpus.ids();
            let resolved: Option<Vec<u32>> =
                ids.iter().map(|id| known.iter().find(|(i, u)| id.names(*i, u)).map(|(i, _)| *i)).collect();
            match resolved {
                Some(list) => Want::Pinned(list),
                // A MIG slice or an id the driver does not list: CUDA gets it as written (the API warns).
                None => {
                    gpus.placer.release(&unit.name);
                    return Ok(None);
                }
            }
        }
        GpuSpec::Auto(n) => Want::Auto(*n),
    };
    let samples = gpus.sample();
    let healthy = |g: u32| {
        let h = gpus.health.of(g);
        if h.healthy {
            Ok(())
        } else {
            Err(h.reason.unwrap_or_default())
        }
    };
    let placement =
        gpus.placer.place(&unit.name, &want, min, &samples, &healthy, Instant::now()).map_err(|e| e.to_string())?;
    if matches!(want, Want::Auto(_)) {
        tracing::info!(unit = %unit.name, gpus = ?placement.gpus, "GPUs=auto placed");
    }
    Ok(Some(placement.gpus))
}

/// CUDA_VISIBLE_DEVICES for a run: the placed GPUs, else the pinned ids as
/// written; empty (no GPU) for CPU only and for an auto instance not placed yet.
pub fn visible_devices(unit: &Unit, ctx: &InstanceContext) -> String {
    let Some(instance) = unit.instance.as_ref() else { return String::new() };
    match &instance.gpus {
        GpuSpec::Pinned(ids) => ids.iter().map(GpuId::to_string).collect::<Vec<_>>().join(","),
        GpuSpec::Auto(_) => ctx
            .gpus
            .as_ref()
            .and_then(|g| g.placer.placed_of(&unit.name))
            .map(|list| list.iter().map(u32::to_string).collect::<Vec<_>>().join(","))
            .unwrap_or_default(),
    }
}
