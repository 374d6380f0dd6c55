"""Generation at scale: the engine behind the generate stage.

Modules by concern: `plan` (subjects, units, keys), `modes` (txt2img / img2img / controlnet),
`engine` (the pipeline), `store` (PNGs with provenance), `filters` (features, memorisation,
outliers, FID) and `run` (the whole run, the manifest).

- **Plan.** Image i of subject s has a prompt (template i mod len), a seed derived from
  (shared.seed, s, i), a source train image for img2img / ControlNet (i mod the subject's train
  images) and a *key*: the sha256 of everything that decides its pixels (prompt, seed, source
  bytes, mode, steps, scheduler, resolution, batch size, base model and revision, adapter hash,
  ControlNet, dtype...). Images are computed in *units*, the aligned batches
  [k * batch_size, (k + 1) * batch_size), always full (padded past the count), so an image's bytes
  depend on its unit only: not on how many processes run, on a resume, or on the count.
- **Store.** Every PNG carries its provenance (key, seeds tried, blank scores) in a text chunk.
  `images/` holds kept images, `dropped/` the filtered ones, `pending/` what a run generated
  before its filters ran. A run reuses every file whose key matches, generates the rest (so raising
  `num_images` from N to M generates only the new images, and a killed run resumes), and
  regenerates any image whose prompt, seed, model, adapter... changed. Files appear by rename.
- **Engine.** Batched, prompt embeddings computed once per prompt, `torch.inference_mode`, SDPA
  attention, LoRA fused into the weights; channels_last, torch.compile and float16 / bfloat16 as
  options. txt2img, img2img (DA-Fusion-style variations of real train images) and ControlNet on
  Canny / Sobel maps of real train images, for the SD 1.x and SDXL families.
- **Filters.** Blank outputs (e.g. blacked out by a safety checker) are redone with the next
  derived seed; near-copies of the real personalisation images (Inception cosine similarity) are
  dropped; off-distribution images are dropped by KMeans on PCA-reduced Inception features
  (Genfusion) or by the k-NN realism score (Kynkäänniemi et al. 2019). FID before and after.
"""
