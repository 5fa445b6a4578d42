"""The world generator's denoiser: a small pixel-space diffusers UNet at 32x32.

It reads the layout (generation/world_layout.py) twice: as a spatial map concatenated to the
noisy image, so drawing "red in the top left cell" is a local job for convolutions, and by
cross-attending the parser's slot states (one per grid cell and one for the scene) at the
lower resolutions. Sizes are data, not code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel

from generation.world_layout import MAP_CHANNELS


@dataclass(frozen=True)
class WorldUNetConfig:
    sample_size: int = 32
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    cross_attention_dim: int = 192  # the layout parser's slot width
    attention_head_dim: int = 8
    norm_num_groups: int = 16

    def to_dict(self) -> dict:
        return asdict(self)


TINY = WorldUNetConfig(block_out_channels=(16, 32), norm_num_groups=8,
                       cross_attention_dim=32)  # tests only


def build_unet(cfg: WorldUNetConfig) -> UNet2DConditionModel:
    # Full resolution has no attention (cheap, local detail); lower ones attend to the slots.
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(cfg.block_out_channels) - 1)
    up = tuple(reversed([b.replace("Down", "Up") for b in down]))
    return UNet2DConditionModel(
        sample_size=cfg.sample_size, in_channels=3 + MAP_CHANNELS, out_channels=3,
        block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
        down_block_types=down, up_block_types=up,
        cross_attention_dim=cfg.cross_attention_dim,
        attention_head_dim=cfg.attention_head_dim, norm_num_groups=cfg.norm_num_groups,
    )


def training_scheduler() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                         prediction_type="v_prediction")


def sampling_scheduler() -> DPMSolverMultistepScheduler:
    """Few-step sampler matching the training noise schedule."""
    return DPMSolverMultistepScheduler.from_config(
        training_scheduler().config, algorithm_type="dpmsolver++", timestep_spacing="trailing")
