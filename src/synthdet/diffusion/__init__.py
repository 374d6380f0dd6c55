"""Stable Diffusion pieces shared by the base, personalize and generate stages.

- `builtin`: `builtin:tiny`, an offline stand-in for Stable Diffusion 1.5 (same diffusers classes,
  CPU size), and the shipped checkpoints; `vocabulary`: the real CLIP BPE tokenizer, offline.
- `loading`: pipelines of the SD 1.x/2.x and SDXL families, model fingerprints.
- `training`: the base stage's VAE and UNet loops; `loss_curve`: the curve they record.
- `images`: real images at model size; `hashing`: file / folder hashes and derived seeds.

Everything downstream (LoRA training, `load_lora_weights`, generation) is the code path a real
SD 1.5 model takes.
"""
