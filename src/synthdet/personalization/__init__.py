"""Personalisation training: LoRA, DreamBooth, DreamBooth-LoRA and textual inversion.

`adapters`: what each method trains, saves and loads (the registry by weight format, see
`synthdet.params.methods`); `examples`: cached training examples; `training`: the loop;
`validation`: base vs personalised model.

One engine for SD 1.x/2.x (epsilon or v-prediction) and SDXL (two text encoders, size/crop
conditioning). What does not change during training is computed once: the VAE latent
distributions of the instance and class images (flipped copies included) and, when no text
encoder trains, the prompt embeddings. The reference recipe (diffusers' example scripts) encodes
both again at every step; `benchmarks/personalize.py` measures the difference.

accelerate handles the device, mixed precision, gradient accumulation, multi-GPU
(`accelerate launch`) and the resumable checkpoints; peft the LoRA layers; diffusers the noise
schedule, Min-SNR weighting, `cast_training_params` and the diffusers-native output files.
Batches, noise and timesteps of step k come from a generator seeded with (seed, k, process), so a
resumed run draws exactly what an uninterrupted one does.
"""
