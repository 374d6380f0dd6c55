"""Recipe screen by object fidelity: which generation recipe keeps the user's objects' colour?

    python benchmarks/recipes.py --run shifted:default shifted:base-ft embedded:long-personalize
    python benchmarks/recipes.py --summarise

For each (dataset, recipe) the pipeline runs up to `check-images@0` (no detector) in a scratch
clone of /work/main (`dvc exp run -S key=value ... check-images@0`; a target limits the run to
that stage and its upstream; the clone shares /work/main's DVC cache, so stages already run with
the same inputs are restored from the run cache). The clone's `src/` is the code that runs
(PYTHONPATH), at one torch thread (SYNTHDET_TORCH_THREADS=1). After each run the draw-0 check
(metrics/draws/draw0/images.json: `objects.*`, the object-level fidelity of
synthdet.image_checks.fidelity; the subject check; image KID/FID) and generate.json are read and
one JSON line is appended to `metrics/recipes/screen.jsonl` of this checkout (resumable: a
finished (dataset, recipe) is skipped). `--summarise` writes `metrics/recipes/screen.csv`.

Datasets: `embedded` (data/raw, the default) and `shifted` (benchmarks/colour_shift.py's copy
of data/raw with the apples hue-rotated from red to yellow-green, written into the clone as
data/raw-shifted and `dvc add`-ed there). `--record-default` records the embedded default from
/work/main's committed run (its metrics files) instead of rerunning it.

`--vae-floor` measures, for each (dataset, base model) in the log, what the VAE alone does to
the objects: the handful images encoded (latent mean) and decoded by the run's base VAE, at
`shared.resolution` as img2img sees them, then the same object crops and mean L*a*b* as the
check. Its shift from the handful (in val standard deviations) is the floor that img2img at any
strength above 0 starts from: what personalisation, strength or LoRA placement cannot undo.
Rows go to `metrics/recipes/vae_floor.jsonl`; the base-ft base is found in the clone's
experiment refs (`refs/exps`) by its params and read from the shared DVC cache.

What a row can show: one handful draw, one seed, one set of generated images; the only spread
is KID's standard deviation over crop subsets. A recipe whose shift or KID moves by less than
that, or by less than what another seed would move it (not measured here), is not different.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "metrics" / "recipes"
MAIN = Path("/work/main")
SCRATCH = Path("/work/scratch-recipes")
SHIFTED_DIR = "data/raw-shifted"

DATASETS = {"embedded": [], "shifted": [f"prepare.raw_dir={SHIFTED_DIR}"]}
WIDE_MODULES = "[to_q,to_k,to_v,to_out.0,proj_in,proj_out,ff.net.0.proj,ff.net.2]"
RECIPES = {
    # params.yaml as it is; the screen's "default" rows (metrics/recipes/) predate
    # generate.vae_residual's default, so they are what "plain" is now
    "default": [],
    "plain": ["generate.vae_residual=false", "generate.num_images=64"],
    # fine-tune the shipped builtin:orchard base on the (user's) train split first
    "base-ft": ["base.unet_steps=200", "base.vae_steps=100"],
    # base-ft with 10x the VAE steps: the VAE round trip alone gives the generated objects'
    # colour at strength 0.3 (see --vae-floor), so the VAE is where a colour drift can be fixed
    "vae-ft": ["base.unet_steps=200", "base.vae_steps=1000"],
    "long-personalize": ["personalize.max_train_steps=240"],
    "strength-0.2": ["generate.strength=0.2"],
    "strength-0.5": ["generate.strength=0.5"],
    # LoRA on the transformer blocks' feed-forward layers and the 1x1 conv projections too
    "lora-wide": [f"personalize.lora.target_modules={WIDE_MODULES}"],
    # the VAE left as it is, its round-trip loss taken out of each image (generate.vae_residual)
    "vae-residual": ["generate.vae_residual=true"],
    "vae-residual-0.5": ["generate.vae_residual=true", "generate.strength=0.5"],
}

COLUMNS = [
    "dataset",
    "recipe",
    "overrides",
    "l_shift_z",
    "a_shift_z",
    "b_shift_z",
    "val_l_shift_z",
    "val_a_shift_z",
    "val_b_shift_z",
    "kid_gen_vs_handful",
    "kid_gen_vs_handful_std",
    "kid_val_vs_handful",
    "kid_val_vs_handful_std",
    "drift",
    "subject_valid",
    "subject_generated_share",
    "subject_reference_share",
    "image_kid",
    "image_kid_std",
    "image_fid",
    "wall_s",
    "cpu_s",
    "vae_floor_l_shift_z",
    "vae_floor_a_shift_z",
    "vae_floor_b_shift_z",
]


def screen_row(dataset: str, recipe: str, overrides: list[str], images: dict, generate: dict):
    """One screen row from a run's images.json and generate.json (dicts as written by the
    check-images and generate stages). Raises KeyError naming a missing `objects.*` key (the
    check is older than the object-fidelity check, or its `objects.valid` is 0)."""
    if not images.get("objects.valid"):
        raise KeyError(
            f"objects.valid is {images.get('objects.valid')!r}: "
            f"{images.get('objects.invalid_reason')}; the object check did not run"
        )
    return {
        "dataset": dataset,
        "recipe": recipe,
        "overrides": " ".join(overrides),
        **{f"{c}_shift_z": images[f"objects.{c}_shift_z"] for c in "lab"},
        **{f"val_{c}_shift_z": images[f"objects.val_{c}_shift_z"] for c in "lab"},
        **{f"generated_{c}_mean": images[f"objects.generated_{c}_mean"] for c in "lab"},
        **{f"handful_{c}_mean": images[f"objects.handful_{c}_mean"] for c in "lab"},
        **{f"val_{c}_std": images[f"objects.val_{c}_std"] for c in "lab"},
        "kid_gen_vs_handful": images["objects.kid_generated_vs_handful"],
        "kid_gen_vs_handful_std": images["objects.kid_generated_vs_handful_std"],
        "kid_val_vs_handful": images["objects.kid_val_vs_handful"],
        "kid_val_vs_handful_std": images["objects.kid_val_vs_handful_std"],
        "kid_subset_size": images["objects.kid_subset_size"],
        "generated_crops": images["objects.generated_crops"],
        "drift": images["objects.drift"],
        "drift_reason": images["objects.drift_reason"],
        "subject_valid": images.get("subject.valid"),
        "subject_generated_share": images.get("subject.generated_share"),
        "subject_reference_share": images.get("subject.reference_share"),
        "image_kid": images.get("kid_mean"),
        "image_kid_std": images.get("kid_std"),
        "image_fid": images.get("fid"),
        "generated_images": generate.get("kept"),
        "generate_seconds": generate.get("seconds"),
    }


def finished(log: Path) -> set[tuple[str, str]]:
    """(dataset, recipe) pairs already in the screen log."""
    if not log.exists():
        return set()
    return {(r["dataset"], r["recipe"]) for r in map(json.loads, log.read_text().splitlines())}


def append(log: Path, row: dict) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as file:
        file.write(json.dumps(row, sort_keys=True) + "\n")
    print(json.dumps(row), flush=True)


def git_output(repo: Path, *args: str) -> str:
    """stdout of `git -C repo <args>`; CalledProcessError when git fails."""
    command = ["git", "-C", str(repo), *args]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def draw0_metrics(root: Path) -> tuple[dict, dict]:
    """(images.json, generate.json) of draw 0 in the project at `root`."""
    draw = root / "metrics/draws/draw0"
    return tuple(json.loads((draw / name).read_text()) for name in ("images.json", "generate.json"))


def record_default(log: Path) -> None:
    """The embedded default from /work/main's committed run (no rerun; wall time unknown)."""
    if ("embedded", "default") in finished(log):
        return
    images, generate = draw0_metrics(MAIN)
    commit = git_output(MAIN, "rev-parse", "--short", "HEAD").strip()
    row = screen_row("embedded", "default", [], images, generate)
    append(log, row | {"wall_s": None, "cpu_s": None, "source": f"/work/main@{commit} metrics"})


def environment() -> dict[str, str]:
    venv = MAIN / ".venv/bin"
    return os.environ | {
        "PATH": f"{venv}:{os.environ['PATH']}",
        "PYTHONPATH": str(SCRATCH / "src"),
        "SYNTHDET_TORCH_THREADS": "1",
    }


def prepare_scratch() -> None:
    """Clone /work/main into SCRATCH (sharing its DVC cache) and write the shifted dataset
    there, tracked by DVC and committed, so that experiments see a clean baseline."""
    env = environment()
    if not SCRATCH.exists():
        subprocess.run(["git", "clone", "-q", str(MAIN), str(SCRATCH)], check=True)
        subprocess.run(
            ["dvc", "cache", "dir", "--local", str(MAIN / ".dvc/cache")],
            cwd=SCRATCH,
            env=env,
            check=True,
        )
    if not (SCRATCH / f"{SHIFTED_DIR}.dvc").exists():
        if not (SCRATCH / SHIFTED_DIR).exists():
            subprocess.run(
                [sys.executable, str(ROOT / "benchmarks/colour_shift.py"), "--out", SHIFTED_DIR],
                cwd=SCRATCH,
                env=env,
                check=True,
            )
        subprocess.run(["dvc", "add", "-q", SHIFTED_DIR], cwd=SCRATCH, env=env, check=True)
        subprocess.run(
            ["git", "add", f"{SHIFTED_DIR}.dvc", "data/.gitignore"], cwd=SCRATCH, check=True
        )
        subprocess.run(
            ["git", "commit", "-q", "-m", "recipe screen: colour-shifted dataset"],
            cwd=SCRATCH,
            check=True,
        )


def exp_run(command: list[str], run_log: Path) -> tuple[int, float, float]:
    """Run `command` (a `dvc exp run`) in SCRATCH from the baseline's params and lock (the
    previous experiment leaves its own), its output in `run_log`; return (exit status, wall s,
    CPU s of the child processes)."""
    subprocess.run(
        ["git", "checkout", "-q", "--", "params.yaml", "dvc.lock"], cwd=SCRATCH, check=True
    )
    run_log.parent.mkdir(parents=True, exist_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    with run_log.open("w") as out:
        done = subprocess.run(
            command, cwd=SCRATCH, env=environment(), stdout=out, stderr=subprocess.STDOUT
        )
    wall = time.time() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return done.returncode, wall, cpu


def run_one(dataset: str, recipe: str, log: Path) -> bool:
    """Run the pipeline to check-images@0 with the dataset's and recipe's overrides in SCRATCH,
    then append the row. Returns False (and prints the log's tail) when `dvc exp run` fails."""
    overrides = DATASETS[dataset] + RECIPES[recipe]
    command = ["dvc", "exp", "run", *[a for o in overrides for a in ("-S", o)], "check-images@0"]
    run_log = OUT / "logs" / f"{dataset}-{recipe}.log"
    print(f"{dataset}:{recipe}: {' '.join(command)}", flush=True)
    done, wall, cpu = exp_run(command, run_log)
    if done != 0:
        tail = run_log.read_text().splitlines()[-30:]
        print(f"{dataset}:{recipe}: dvc exp run failed ({done}); {run_log}:", flush=True)
        print("\n".join(tail), flush=True)
        return False
    images, generate = draw0_metrics(SCRATCH)
    row = screen_row(dataset, recipe, overrides, images, generate)
    append(log, row | {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "source": "scratch run"})
    return True


def base_key(overrides: list[str] | str) -> str:
    """The `base.*` overrides of a row (its base model), '' for the shipped checkpoint as is."""
    items = overrides.split() if isinstance(overrides, str) else overrides
    return " ".join(sorted(o for o in items if o.startswith("base.")))


def experiment_base(raw_dir: str, key: str) -> Path:
    """models/base of the clone's experiment with `prepare.raw_dir` = raw_dir and the `base.*`
    values of `key`, linked from the shared DVC cache into a temporary folder. Raises
    LookupError when no experiment in SCRATCH's refs/exps matches (run the recipe first)."""
    refs = git_output(SCRATCH, "for-each-ref", "--format=%(refname)", "refs/exps").split()
    wanted = dict(item.split("=", 1) for item in key.split())
    for ref in (r for r in refs if "/exec/" not in r):

        def show(name: str, ref: str = ref) -> dict:
            return yaml.safe_load(git_output(SCRATCH, "show", f"{ref}:{name}"))

        params = show("params.yaml")
        if params["prepare"]["raw_dir"] != raw_dir or any(
            str(params["base"][k.split(".", 1)[1]]) != v for k, v in wanted.items()
        ):
            continue
        lock = show("dvc.lock")["stages"]["base"]["outs"]
        digest = next(out["md5"] for out in lock if out["path"] == "models/base")
        cache = MAIN / ".dvc/cache/files/md5"
        listing = json.loads((cache / digest[:2] / digest[2:]).read_text())
        folder = Path(tempfile.mkdtemp(prefix="recipes-base-"))
        for entry in listing:
            target = folder / entry["relpath"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(cache / entry["md5"][:2] / entry["md5"][2:])
        return folder
    raise LookupError(
        f"{SCRATCH}: no experiment with prepare.raw_dir={raw_dir} and {key}; run that recipe "
        "with --run first"
    )


def vae_round_trip_lab(vae_folder: Path, images: list[Path], labels: Path, resolution: int):
    """((3,) mean L*a*b* of the object crops of `images`, the same after a VAE round trip):
    each image fitted to `resolution` px as img2img loads it (synthdet.diffusion.images), encoded
    to its latent mean and decoded by the AutoencoderKL in `vae_folder`; crops and colour as
    synthdet.image_checks.fidelity.object_crops cuts them. `labels`: the YOLO label folder."""
    import torch
    from diffusers import AutoencoderKL

    from synthdet.core.data import Sample, read_yolo_folder
    from synthdet.diffusion.images import load_images
    from synthdet.image_checks.fidelity import object_crops

    vae = AutoencoderKL.from_pretrained(vae_folder).eval()
    boxes = {s.image.stem: s.boxes for s in read_yolo_folder(labels.parent, 1)}
    real = [Sample(path, boxes[path.stem]) for path in images]
    decoded = []
    with tempfile.TemporaryDirectory(prefix="recipes-vae-") as scratch:
        for sample in real:
            with torch.no_grad():
                latent = vae.encode(load_images([sample.image], resolution)).latent_dist.mean
                image = vae.decode(latent).sample[0]
            pixels = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
            path = Path(scratch) / f"{sample.image.stem}.png"
            Image.fromarray(pixels).save(path)
            decoded.append(Sample(path, sample.boxes))
        after = object_crops(decoded, resolution).lab.mean(axis=0)
    return object_crops(real, resolution).lab.mean(axis=0), after


def probe_base(dataset: str, recipe: str, log: Path) -> dict:
    """Run only the `base` stage of (dataset, recipe) in SCRATCH (`dvc exp run ... base`), so
    that --vae-floor can measure its VAE before the whole pipeline is paid for. Returns a
    pseudo-row for vae_floor: the recipe's overrides with the handful means and val spread of
    the dataset's first row in `log`. Raises SystemExit when the run fails (its log named) or
    the dataset has no row yet."""
    overrides = DATASETS[dataset] + RECIPES[recipe]
    reference = next(
        (r for r in map(json.loads, log.read_text().splitlines()) if r["dataset"] == dataset),
        None,
    )
    if reference is None:
        raise SystemExit(f"--probe-base {dataset}:{recipe}: run a recipe of {dataset} first")
    command = ["dvc", "exp", "run", *[a for o in overrides for a in ("-S", o)], "base"]
    run_log = OUT / "logs" / f"{dataset}-{recipe}-base.log"
    done, wall, _ = exp_run(command, run_log)
    if done != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done}); see {run_log}")
    print(f"{dataset}:{recipe}: base stage in {wall:.0f} s", flush=True)
    keep = ("dataset", *(f"handful_{c}_mean" for c in "lab"), *(f"val_{c}_std" for c in "lab"))
    return {k: reference[k] for k in keep} | {"overrides": " ".join(overrides)}


def vae_floor(log: Path, out: Path, extra: list[dict] = ()) -> None:
    """Append to `out` the VAE round trip of the handful's objects for every (dataset, base)
    of the log (and of the pseudo-rows `extra`, from probe_base) not yet in `out` (see the
    module docstring); shift z in the dataset's val stds (from the dataset's rows), from the
    handful mean that the check measured."""
    rows = [json.loads(line) for line in log.read_text().splitlines()] + list(extra)
    done = (
        {(r["dataset"], r["base"]) for r in map(json.loads, out.read_text().splitlines())}
        if out.exists()
        else set()
    )
    params = yaml.safe_load((MAIN / "params.yaml").read_text())
    resolution = params["shared"]["resolution"]
    stems = sorted(p.stem for p in (MAIN / "data/handfuls/draw0").glob("*/images/*"))
    for row in rows:
        key = base_key(row["overrides"])
        if (row["dataset"], key) in done:
            continue
        raw = SCRATCH / SHIFTED_DIR if row["dataset"] == "shifted" else MAIN / "data/raw"
        raw_dir = SHIFTED_DIR if row["dataset"] == "shifted" else "data/raw"
        base = experiment_base(raw_dir, key) if key else MAIN / "models/builtin/orchard"
        images = sorted(p for p in (raw / "images").iterdir() if p.stem in stems)
        before, after = vae_round_trip_lab(base / "vae", images, raw / "labels", resolution)
        handful = np.array([row[f"handful_{c}_mean"] for c in "lab"])
        if not np.allclose(before, handful, atol=1e-3):
            raise SystemExit(
                f"{row['dataset']}: the handful crops' mean L*a*b* here {before.round(4)} is not "
                f"the check's {handful}: not the same images or scale"
            )
        spread = np.array([row[f"val_{c}_std"] for c in "lab"])
        z = (after - before) / spread
        entry = {
            "dataset": row["dataset"],
            "base": key,
            "images": len(images),
            **{f"handful_{c}_mean": round(float(v), 4) for c, v in zip("lab", before, strict=True)},
            **{
                f"round_trip_{c}_mean": round(float(v), 4)
                for c, v in zip("lab", after, strict=True)
            },
            **{f"vae_floor_{c}_shift_z": round(float(v), 4) for c, v in zip("lab", z, strict=True)},
        }
        with out.open("a") as file:
            file.write(json.dumps(entry, sort_keys=True) + "\n")
        print(json.dumps(entry), flush=True)
        done.add((row["dataset"], key))


def summarise(log: Path, out: Path) -> None:
    """metrics/recipes/screen.csv: COLUMNS of every row of the screen log, in log order, with
    the VAE floor of the row's (dataset, base) where --vae-floor measured it."""
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    floors_log = log.parent / "vae_floor.jsonl"
    floors = (
        {(f["dataset"], f["base"]): f for f in map(json.loads, floors_log.read_text().splitlines())}
        if floors_log.exists()
        else {}
    )
    rows = [floors.get((r["dataset"], base_key(r["overrides"])), {}) | r for r in rows]
    with out.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    print(f"{out}: {len(rows)} rows")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", nargs="*", default=[], help="dataset:recipe pairs, in order")
    parser.add_argument("--record-default", action="store_true", help="embedded default from main")
    parser.add_argument(
        "--max-cpu-minutes",
        type=float,
        default=45.0,
        help="start no new run once the log's runs used this much CPU (default: %(default)s)",
    )
    parser.add_argument("--vae-floor", action="store_true", help="VAE round trip per base")
    parser.add_argument(
        "--probe-base",
        nargs="*",
        default=[],
        help="dataset:recipe: run its base stage only, then"
        " measure its VAE floor (with --vae-floor)",
    )
    parser.add_argument("--summarise", action="store_true", help="write screen.csv")
    args = parser.parse_args()
    log = OUT / "screen.jsonl"
    if args.record_default:
        record_default(log)
    pairs = [tuple(text.split(":", 1)) for text in args.run]
    for pair in pairs:
        if len(pair) != 2 or pair[0] not in DATASETS or pair[1] not in RECIPES:
            raise SystemExit(
                f"--run {':'.join(pair)}: expected dataset:recipe with a dataset in "
                f"{sorted(DATASETS)} and a recipe in {sorted(RECIPES)}"
            )
    if pairs:
        prepare_scratch()
    for dataset, recipe in pairs:
        if (dataset, recipe) in finished(log):
            continue
        used = (
            sum(r.get("cpu_s") or 0 for r in map(json.loads, log.read_text().splitlines()))
            if log.exists()
            else 0.0
        )
        if used > args.max_cpu_minutes * 60:
            print(f"CPU budget spent ({used / 60:.1f} min): not starting {dataset}:{recipe}")
            break
        run_one(dataset, recipe, log)
    probes = [probe_base(*text.split(":", 1), log) for text in args.probe_base]
    if args.vae_floor or probes:
        vae_floor(log, OUT / "vae_floor.jsonl", probes)
    if args.summarise:
        summarise(log, OUT / "screen.csv")


if __name__ == "__main__":
    main()
