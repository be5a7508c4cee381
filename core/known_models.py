"""Well-known video models on the Hugging Face Hub, so `mavail add NAME` needs no TOML: repository, kind, capabilities,
and the VRAM figures their authors publish, each with where it is published.

A figure is the smallest GPU memory the authors give for single-GPU inference at that
resolution with their own code and its default options (offloading options lower it); the
`source` says where it is stated. Sizes and hashes are never shipped: `models.add` reads
them from the Hub when the entry is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

WAN22_README = "https://github.com/Wan-Video/Wan2.2 (README, single-GPU inference)"


@dataclass(frozen=True)
class KnownModel:
    """One shipped entry: the id `mavail add` gives it, its Hub repository and what the catalog should say of it."""

    name: str
    repo: str
    display_name: str
    model_type: str
    capabilities: tuple[str, ...]
    quality: str
    speed: str
    family: str
    vram_gb: dict[str, float] = field(default_factory=dict)
    vram_source: str = ""
    exclude: tuple[str, ...] = ()
    notes: str = ""

    @property
    def source(self) -> str:
        """The catalog source, on the repository's main branch."""
        return f"hf://{self.repo}@main"


KNOWN_MODELS: dict[str, KnownModel] = {m.name: m for m in (
    KnownModel("wan2.2-t2v-a14b", "Wan-AI/Wan2.2-T2V-A14B", "Wan2.2 T2V A14B", "text_to_video",
               ("text_to_video", "high_resolution", "high_quality"), "high", "slow", "wan2.2",
               {"1280x720": 80.0}, f"{WAN22_README}: \"This command can run on a GPU with at least 80GB VRAM\" (t2v-A14B, 1280*720, "
               "with --offload_model True --convert_model_dtype)",
               notes="MoE, 27B parameters with 14B active per step"),
    KnownModel("wan2.2-i2v-a14b", "Wan-AI/Wan2.2-I2V-A14B", "Wan2.2 I2V A14B", "image_to_video",
               ("image_to_video", "high_resolution", "high_quality"), "high", "slow", "wan2.2",
               {"1280x720": 80.0}, f"{WAN22_README}: \"This command can run on a GPU with at least 80GB VRAM\" (i2v-A14B, 1280*720, "
               "with --offload_model True --convert_model_dtype)",
               notes="MoE, 27B parameters with 14B active per step"),
    KnownModel("wan2.2-ti2v-5b", "Wan-AI/Wan2.2-TI2V-5B", "Wan2.2 TI2V 5B", "text_image_to_video",
               ("text_to_video", "image_to_video", "text_image_to_video", "high_resolution"), "medium", "fast", "wan2.2",
               {"1280x704": 24.0}, f"{WAN22_README}: \"This command can run on a GPU with at least 24GB VRAM (e.g, RTX 4090 GPU)\" "
               "(ti2v-5B, 1280*704, with --offload_model True --convert_model_dtype --t5_cpu)",
               notes="dense 5B with the high-compression Wan2.2 VAE"),
    KnownModel("wan2.2-s2v-14b", "Wan-AI/Wan2.2-S2V-14B", "Wan2.2 S2V 14B (speech to video)", "image_to_video",
               ("image_to_video", "high_quality"), "high", "slow", "wan2.2",
               {"1024x704": 80.0}, f"{WAN22_README}: \"This command can run on a GPU with at least 80GB VRAM\" "
               "(s2v-14B, 1024*704, with --offload_model True --convert_model_dtype)",
               notes="a reference image and an audio track drive the video"),
    KnownModel("wan2.2-animate-14b", "Wan-AI/Wan2.2-Animate-14B", "Wan2.2 Animate 14B", "image_to_video",
               ("image_to_video", "high_quality"), "high", "slow", "wan2.2",
               {}, f"{WAN22_README} gives no VRAM figure for animate-14B: measure it and set vram_gb in the entry",
               notes="character animation and replacement from a reference video"),
)}
"""The shipped list, by name."""
